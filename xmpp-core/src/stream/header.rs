//! The stream header (`<stream:stream …>`) and the two dialects.

use bytes::{BufMut, BytesMut};

use crate::error::Error;
use crate::stanza::ns;
use crate::xml::{Element, escape_into};

/// The two ways of speaking XMPP on these sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// The Contrail C++ daemons' dialect (spec §3, §11): exact header layout, `C8 80`
    /// keepalives, no features after TLS, no SASL, no stream errors.
    Contrail,
    /// RFC 6120: features after every stream (re)start, stream errors, single-space
    /// keepalives.
    Rfc,
}

impl Dialect {
    /// The whitespace keepalive of the dialect: `C8 80` (U+0200) for Contrail (spec §2.2),
    /// one space for RFC 6120 peers.
    pub fn keepalive(self) -> &'static [u8] {
        match self {
            Dialect::Contrail => &[0xC8, 0x80],
            Dialect::Rfc => b" ",
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dialect::Contrail => "contrail",
            Dialect::Rfc => "rfc6120",
        })
    }
}

/// The id the Contrail server always sends (spec §3.1).
pub const CONTRAIL_STREAM_ID: &str = "++123";

/// A stream header's attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// `from`: the sender's name (Contrail: the agent host name, or `host/dns`).
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `id` (server → client).
    pub id: Option<String>,
    /// `version`, `1.0` when present.
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// The default namespace as written (`xmlns`): `jabber:client`/`jabber:server` for
    /// standard peers, the sub-cluster name or `""` for Contrail agents.
    pub default_ns: Option<String>,
}

impl StreamHeader {
    /// Reads the header element produced by the reader.
    pub fn from_element(el: &Element) -> Result<Self, Error> {
        if !el.is("stream", ns::STREAM) {
            return Err(Error::InvalidNamespace(format!(
                "<{}> is not a stream header",
                el.name()
            )));
        }
        let get = |k: &str| el.get_attr(k).map(str::to_owned);
        Ok(Self {
            from: get("from"),
            to: get("to"),
            id: get("id"),
            version: get("version"),
            lang: get("xml:lang"),
            default_ns: get("xmlns"),
        })
    }

    /// How a server tells the dialects apart: the client header's default namespace is
    /// `jabber:client` or `jabber:server` for RFC 6120 peers; Contrail agents send the
    /// sub-cluster name or an empty namespace (spec §3.1).
    pub fn dialect(&self) -> Dialect {
        match self.default_ns.as_deref() {
            Some(ns::CLIENT) | Some(ns::SERVER) => Dialect::Rfc,
            _ => Dialect::Contrail,
        }
    }

    /// Writes the header in the layout of `dialect`.
    ///
    /// Contrail (spec §3.1, §11.2): double quotes, attribute order `from to id version
    /// xml:lang xmlns xmlns:stream`, `xmlns:stream` last followed by two spaces and `>`, no
    /// declaration, no trailing newline — the C++ framing only recognises a header that
    /// ends with the streams namespace, a quote, optional whitespace and `>`.
    /// RFC: declaration, then the namespaces first (some tools look for them there).
    pub fn write(&self, out: &mut BytesMut, dialect: Dialect) {
        let attr = |out: &mut BytesMut, k: &str, v: &str| {
            out.put_u8(b' ');
            out.put_slice(k.as_bytes());
            out.put_slice(b"=\"");
            escape_into(out, v, true);
            out.put_u8(b'"');
        };
        match dialect {
            Dialect::Contrail => {
                out.put_slice(b"<stream:stream");
                for (k, v) in [
                    ("from", &self.from),
                    ("to", &self.to),
                    ("id", &self.id),
                    ("version", &self.version),
                    ("xml:lang", &self.lang),
                ] {
                    if let Some(v) = v {
                        attr(out, k, v);
                    }
                }
                attr(out, "xmlns", self.default_ns.as_deref().unwrap_or(""));
                attr(out, "xmlns:stream", ns::STREAM);
                out.put_slice(b"  >");
            }
            Dialect::Rfc => {
                out.put_slice(b"<?xml version='1.0'?><stream:stream");
                attr(
                    out,
                    "xmlns",
                    self.default_ns.as_deref().unwrap_or(ns::CLIENT),
                );
                attr(out, "xmlns:stream", ns::STREAM);
                for (k, v) in [
                    ("from", &self.from),
                    ("to", &self.to),
                    ("id", &self.id),
                    ("version", &self.version),
                    ("xml:lang", &self.lang),
                ] {
                    if let Some(v) = v {
                        attr(out, k, v);
                    }
                }
                out.put_u8(b'>');
            }
        }
    }
}

/// `</stream:stream>`.
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";
