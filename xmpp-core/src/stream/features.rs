//! `<stream:features>` and the STARTTLS nonzas (`<starttls/>`, `<proceed/>`, `<failure/>`).

use bytes::BytesMut;

use super::header::Dialect;
use crate::error::Error;
use crate::stanza::ns;
use crate::xml::{Element, Style, XmlWriter};

/// The XML declaration the C++ senders put in front of negotiation elements (spec §11.22).
const CONTRAIL_DECL: &[u8] = b"<?xml version=\"1.0\"?>\n";

/// Stream features, as far as negotiation needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// `<starttls>` offered; `Some(true)` when `<required/>`.
    pub starttls: Option<bool>,
    /// SASL mechanisms offered (RFC dialect).
    pub mechanisms: Vec<String>,
    /// Resource binding offered (RFC dialect).
    pub bind: bool,
    /// Other features, kept as received.
    pub other: Vec<Element>,
}

impl Features {
    /// Whether `el` is `<stream:features>`.
    pub fn matches(el: &Element) -> bool {
        el.is("features", ns::STREAM)
    }

    /// Reads `<stream:features>`. The Contrail C++ sender omits namespaces on nothing that
    /// matters here, but its receivers compare names literally; we accept `starttls` in the
    /// TLS namespace or (Contrail tolerance) with no namespace at all.
    pub fn from_element(el: &Element) -> Result<Self, Error> {
        if !Self::matches(el) {
            return Err(Error::BadFormat(format!(
                "expected <stream:features>, got <{}>",
                el.name()
            )));
        }
        let mut f = Features::default();
        for c in el.children() {
            match (c.local_name(), c.ns()) {
                ("starttls", ns::TLS) | ("starttls", "") => {
                    f.starttls = Some(c.get_child("required").is_some());
                }
                ("mechanisms", ns::SASL) => {
                    f.mechanisms = c
                        .children()
                        .filter(|m| m.local_name() == "mechanism")
                        .map(|m| m.text().trim().to_owned())
                        .collect();
                }
                ("bind", ns::BIND) => f.bind = true,
                _ => f.other.push(c.clone()),
            }
        }
        Ok(f)
    }

    /// Writes the features element.
    ///
    /// Contrail: exactly `<?xml version="1.0"?>\n<stream:features>\n<starttls
    /// xmlns="…">\n<required />\n</starttls>\n</stream:features>\n` (spec §3.3).
    /// RFC: compact, `<starttls xmlns='…'>` with `xmlns` as its first attribute, which
    /// `openssl s_client -starttls xmpp` matches literally.
    pub fn write(&self, out: &mut BytesMut, dialect: Dialect) {
        let style = match dialect {
            Dialect::Contrail => {
                out.extend_from_slice(CONTRAIL_DECL);
                Style::Lines
            }
            Dialect::Rfc => Style::Compact,
        };
        let mut w = XmlWriter::new(out, style);
        w.start("stream:features");
        if let Some(required) = self.starttls {
            w.start("starttls");
            w.attr("xmlns", ns::TLS);
            if required {
                w.start("required");
                w.end();
            }
            w.end();
        }
        if !self.mechanisms.is_empty() {
            w.start("mechanisms");
            w.attr("xmlns", ns::SASL);
            for m in &self.mechanisms {
                w.text_element("mechanism", m);
            }
            w.end();
        }
        if self.bind {
            w.start("bind");
            w.attr("xmlns", ns::BIND);
            w.end();
        }
        for o in &self.other {
            o.write(&mut w);
        }
        w.end();
    }
}

/// The STARTTLS nonzas (RFC 6120 §5.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsNonza {
    /// `<starttls/>` (initiator → responder).
    StartTls,
    /// `<proceed/>` (responder → initiator).
    Proceed,
    /// `<failure/>` (responder → initiator; never sent by Contrail).
    Failure,
}

impl TlsNonza {
    /// Reads a STARTTLS nonza (TLS namespace, or none at all as Contrail tolerance).
    pub fn from_element(el: &Element) -> Option<Self> {
        if el.ns() != ns::TLS && !el.ns().is_empty() {
            return None;
        }
        match el.local_name() {
            "starttls" => Some(TlsNonza::StartTls),
            "proceed" => Some(TlsNonza::Proceed),
            "failure" => Some(TlsNonza::Failure),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TlsNonza::StartTls => "starttls",
            TlsNonza::Proceed => "proceed",
            TlsNonza::Failure => "failure",
        }
    }

    /// Writes the nonza. Contrail: declaration, newline, `<name xmlns="…" />`, and no
    /// trailing byte (spec §3.4: a byte after it could reach the peer's TLS engine).
    pub fn write(self, out: &mut BytesMut, dialect: Dialect) {
        let style = match dialect {
            Dialect::Contrail => {
                out.extend_from_slice(CONTRAIL_DECL);
                Style::Lines
            }
            Dialect::Rfc => Style::Compact,
        };
        let mut w = XmlWriter::new(out, style);
        w.start(self.name());
        w.attr("xmlns", ns::TLS);
        w.end();
        if dialect == Dialect::Contrail && out.last() == Some(&b'\n') {
            out.truncate(out.len() - 1);
        }
    }
}
