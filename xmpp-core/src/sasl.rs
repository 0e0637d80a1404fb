//! SASL for the RFC 6120 profile (RFC 6120 §6, RFC 4422): the `<auth>`, `<challenge>`,
//! `<response>`, `<abort>`, `<success>` and `<failure>` nonzas, the two mechanisms this
//! crate speaks, and the identity rule of SASL EXTERNAL with certificates (XEP-0178).
//!
//! * EXTERNAL (both roles): the TLS client certificate is the credential. The identity is
//!   the certificate's xmppAddr SAN when it has one, else its subject CN, made a bare JID
//!   at the stream's domain (see [`external_identity`]).
//! * PLAIN (initiator only, RFC 4616): for servers without certificate login. Only ever
//!   sent inside TLS ([`Credentials::allowed_without_tls`]).
//!
//! SCRAM is deliberately absent: the control plane authenticates with certificates, and
//! PLAIN over verified TLS covers servers that only know passwords.

use bytes::BytesMut;

use crate::jid::Jid;
use crate::stanza::ns;
use crate::tls::PeerIdentity;
use crate::xml::{Element, Style, XmlWriter};

/// The SASL mechanism names used here.
pub const EXTERNAL: &str = "EXTERNAL";
/// RFC 4616.
pub const PLAIN: &str = "PLAIN";

macro_rules! sasl_conditions {
    ($($variant:ident => $name:literal,)*) => {
        /// SASL failure conditions (RFC 6120 §6.5).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum SaslCondition {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        impl SaslCondition {
            /// The element name.
            pub fn as_str(self) -> &'static str {
                match self { $(SaslCondition::$variant => $name,)* }
            }

            /// The condition for an element name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(SaslCondition::$variant),)* _ => None }
            }
        }
    };
}

sasl_conditions! {
    Aborted => "aborted",
    AccountDisabled => "account-disabled",
    CredentialsExpired => "credentials-expired",
    EncryptionRequired => "encryption-required",
    IncorrectEncoding => "incorrect-encoding",
    InvalidAuthzid => "invalid-authzid",
    InvalidMechanism => "invalid-mechanism",
    MalformedRequest => "malformed-request",
    MechanismTooWeak => "mechanism-too-weak",
    NotAuthorized => "not-authorized",
    TemporaryAuthFailure => "temporary-auth-failure",
}

impl std::fmt::Display for SaslCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `<failure>`: the condition and an optional text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslFailure {
    /// The defined condition (`not-authorized` when the peer's is unknown).
    pub condition: SaslCondition,
    /// The `<text>` child.
    pub text: Option<String>,
}

impl SaslFailure {
    /// A failure with a text.
    pub fn new(condition: SaslCondition, text: impl Into<String>) -> Self {
        Self {
            condition,
            text: Some(text.into()),
        }
    }
}

impl std::fmt::Display for SaslFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.text {
            Some(t) => write!(f, "{} ({t})", self.condition),
            None => write!(f, "{}", self.condition),
        }
    }
}

/// The SASL nonzas (RFC 6120 §6.4). Data is carried decoded; `None` is "no data" (no
/// text at all), `Some(vec![])` the empty response written as `=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslNonza {
    /// Initiator → responder: the mechanism and the initial response.
    Auth {
        /// The mechanism name.
        mechanism: String,
        /// The initial response.
        initial: Option<Vec<u8>>,
    },
    /// Responder → initiator.
    Challenge(Option<Vec<u8>>),
    /// Initiator → responder.
    Response(Option<Vec<u8>>),
    /// Initiator → responder: give up.
    Abort,
    /// Responder → initiator: authenticated (additional data, if any).
    Success(Option<Vec<u8>>),
    /// Responder → initiator: refused.
    Failure(SaslFailure),
}

impl SaslNonza {
    /// Reads a SASL nonza: `None` when `el` is not one (other namespace or name),
    /// `Some(Err)` when it is one with undecodable data (`incorrect-encoding`) or no
    /// mechanism (`invalid-mechanism`).
    pub fn from_element(el: &Element) -> Option<Result<Self, SaslFailure>> {
        if el.ns() != ns::SASL {
            return None;
        }
        let data = || decode_data(&el.text());
        Some(match el.local_name() {
            "auth" => match el.get_attr("mechanism") {
                Some(m) if !m.is_empty() => data().map(|initial| SaslNonza::Auth {
                    mechanism: m.to_owned(),
                    initial,
                }),
                _ => Err(SaslFailure::new(
                    SaslCondition::InvalidMechanism,
                    "<auth/> without a mechanism",
                )),
            },
            "challenge" => data().map(SaslNonza::Challenge),
            "response" => data().map(SaslNonza::Response),
            "abort" => Ok(SaslNonza::Abort),
            "success" => data().map(SaslNonza::Success),
            "failure" => {
                let mut f = SaslFailure {
                    condition: SaslCondition::NotAuthorized,
                    text: None,
                };
                for c in el.children() {
                    if c.local_name() == "text" {
                        f.text = Some(c.text().into_owned());
                    } else if let Some(cond) = SaslCondition::from_name(c.local_name()) {
                        f.condition = cond;
                    }
                }
                Ok(SaslNonza::Failure(f))
            }
            _ => return None,
        })
    }

    /// Writes the nonza, compact, with `xmlns` as its first attribute.
    pub fn write(&self, out: &mut BytesMut) {
        let mut w = XmlWriter::new(out, Style::Compact);
        let (name, data) = match self {
            SaslNonza::Auth { initial, .. } => ("auth", initial.as_deref()),
            SaslNonza::Challenge(d) => ("challenge", d.as_deref()),
            SaslNonza::Response(d) => ("response", d.as_deref()),
            SaslNonza::Abort => ("abort", None),
            SaslNonza::Success(d) => ("success", d.as_deref()),
            SaslNonza::Failure(_) => ("failure", None),
        };
        w.start(name);
        w.attr("xmlns", ns::SASL);
        if let SaslNonza::Auth { mechanism, .. } = self {
            w.attr("mechanism", mechanism);
        }
        if let Some(d) = data {
            w.text(&encode_data(d));
        }
        if let SaslNonza::Failure(f) = self {
            w.start(f.condition.as_str());
            w.end();
            if let Some(t) = &f.text {
                w.start("text");
                w.attr("xml:lang", "en");
                w.text(t);
                w.end();
            }
        }
        w.end();
    }
}

/// RFC 6120 §6.4.2: data is base64; an empty payload is a single `=`.
fn encode_data(d: &[u8]) -> String {
    if d.is_empty() {
        "=".to_owned()
    } else {
        base64_encode(d)
    }
}

fn decode_data(text: &str) -> Result<Option<Vec<u8>>, SaslFailure> {
    let t = text.trim();
    match t {
        "" => Ok(None),
        "=" => Ok(Some(Vec::new())),
        _ => base64_decode(t).map(Some).ok_or_else(|| {
            SaslFailure::new(SaslCondition::IncorrectEncoding, "data is not base64")
        }),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decodes standard base64; whitespace is ignored (RFC 6120 lets line breaks through),
/// padding is required and nothing may follow it. `None` when malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let last = clean.len() / 4;
    for (i, quad) in clean.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            let v = B64.iter().position(|&x| x == c)? as u32;
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// What the initiator authenticates with, in preference order when several are given.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// SASL EXTERNAL with the TLS client certificate (XEP-0178). `authzid`: the JID to act
    /// as, for certificates with several xmppAddrs; `None` sends `=` (the server derives
    /// the identity from the certificate).
    External {
        /// The authorization identity, usually `None`.
        authzid: Option<String>,
    },
    /// SASL PLAIN (RFC 4616), for servers without certificate login. Sent only in TLS.
    Plain {
        /// The authorization identity, usually `None`.
        authzid: Option<String>,
        /// The user name (the JID's localpart).
        username: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::External { authzid } => f
                .debug_struct("External")
                .field("authzid", authzid)
                .finish(),
            Credentials::Plain {
                authzid, username, ..
            } => f
                .debug_struct("Plain")
                .field("authzid", authzid)
                .field("username", username)
                .finish_non_exhaustive(),
        }
    }
}

impl Credentials {
    /// The mechanism name.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Credentials::External { .. } => EXTERNAL,
            Credentials::Plain { .. } => PLAIN,
        }
    }

    /// PLAIN carries the password in the clear: never outside TLS (RFC 6120 §13.8).
    pub fn allowed_without_tls(&self) -> bool {
        matches!(self, Credentials::External { .. })
    }

    /// The `<auth>` nonza with the initial response.
    pub fn auth(&self) -> SaslNonza {
        let initial = match self {
            Credentials::External { authzid } => authzid.clone().unwrap_or_default().into_bytes(),
            Credentials::Plain {
                authzid,
                username,
                password,
            } => {
                let mut v = authzid.clone().unwrap_or_default().into_bytes();
                v.push(0);
                v.extend_from_slice(username.as_bytes());
                v.push(0);
                v.extend_from_slice(password.as_bytes());
                v
            }
        };
        SaslNonza::Auth {
            mechanism: self.mechanism().to_owned(),
            initial: Some(initial),
        }
    }
}

/// The identity a client certificate authenticates with SASL EXTERNAL (XEP-0178 §3), as a
/// bare JID at `domain` (the domain the client opened its stream to).
///
/// * The certificate's xmppAddr SANs, if any, are the candidates; otherwise its subject CN
///   is the localpart of one (Contrail certificates carry the agent name as CN).
/// * `authzid` (decoded, empty = none) must be one of the candidates; without one, the
///   certificate must name exactly one (several xmppAddrs are ambiguous: `invalid-authzid`).
/// * The chosen JID's domain must be `domain`: we only bind JIDs of the stream's domain.
pub fn external_identity(
    peer: Option<&PeerIdentity>,
    authzid: &str,
    domain: &str,
) -> Result<Jid, SaslFailure> {
    let Some(peer) = peer else {
        return Err(SaslFailure::new(
            SaslCondition::NotAuthorized,
            "no client certificate was presented in TLS",
        ));
    };
    let candidates: Vec<Jid> = if peer.xmpp_addrs.is_empty() {
        peer.common_names
            .iter()
            .filter_map(|cn| Jid::bare(cn, domain))
            .collect()
    } else {
        peer.xmpp_addrs
            .iter()
            .filter_map(|a| Jid::parse(a).ok().filter(Jid::is_bare))
            .collect()
    };
    let chosen = if authzid.is_empty() {
        match candidates.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(SaslFailure::new(
                    SaslCondition::NotAuthorized,
                    "the certificate has neither an xmppAddr nor a usable CN",
                ));
            }
            _ => {
                return Err(SaslFailure::new(
                    SaslCondition::InvalidAuthzid,
                    "the certificate names several xmppAddrs: send the one to use as authzid",
                ));
            }
        }
    } else {
        let wanted = Jid::parse(authzid).map_err(|e| {
            SaslFailure::new(SaslCondition::InvalidAuthzid, format!("authzid: {e}"))
        })?;
        candidates
            .into_iter()
            .find(|c| *c == wanted)
            .ok_or_else(|| {
                SaslFailure::new(
                    SaslCondition::InvalidAuthzid,
                    format!("the certificate does not name {wanted}"),
                )
            })?
    };
    if !chosen
        .domain()
        .eq_ignore_ascii_case(domain.trim_end_matches('.'))
    {
        return Err(SaslFailure::new(
            SaslCondition::NotAuthorized,
            format!("the certificate identity {chosen} is not in this stream's domain {domain}"),
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::NsScope;

    fn parse(s: &str) -> Element {
        Element::parse(s.as_bytes(), &NsScope::default()).expect("xml")
    }

    #[test]
    fn base64_round_trip() {
        for (plain, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\0agent\0secret", "AGFnZW50AHNlY3JldA=="),
        ] {
            assert_eq!(base64_encode(plain), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(plain));
        }
        assert_eq!(base64_decode("Zm9v\r\nYg==").as_deref(), Some(&b"foob"[..]));
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "Zg=a"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn nonzas_round_trip() {
        let cases = [
            SaslNonza::Auth {
                mechanism: EXTERNAL.into(),
                initial: Some(Vec::new()),
            },
            SaslNonza::Auth {
                mechanism: EXTERNAL.into(),
                initial: None,
            },
            SaslNonza::Challenge(None),
            SaslNonza::Response(Some(b"a@b".to_vec())),
            SaslNonza::Abort,
            SaslNonza::Success(None),
            SaslNonza::Failure(SaslFailure::new(SaslCondition::NotAuthorized, "no")),
        ];
        for n in cases {
            let mut out = BytesMut::new();
            n.write(&mut out);
            let text = std::str::from_utf8(&out).expect("utf8");
            let el = parse(text);
            let back = SaslNonza::from_element(&el).expect("sasl").expect("valid");
            assert_eq!(back, n, "{text}");
        }
        let mut out = BytesMut::new();
        Credentials::External { authzid: None }
            .auth()
            .write(&mut out);
        assert_eq!(
            &out[..],
            b"<auth xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\" mechanism=\"EXTERNAL\">=</auth>"
        );
    }

    #[test]
    fn foreign_and_bad_nonzas() {
        assert!(SaslNonza::from_element(&parse("<auth/>")).is_none());
        let bad =
            parse("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!</auth>");
        let f = SaslNonza::from_element(&bad)
            .expect("sasl")
            .expect_err("bad");
        assert_eq!(f.condition, SaslCondition::IncorrectEncoding);
        let none = parse("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        let f = SaslNonza::from_element(&none)
            .expect("sasl")
            .expect_err("bad");
        assert_eq!(f.condition, SaslCondition::InvalidMechanism);
    }

    fn id(cns: &[&str], addrs: &[&str]) -> PeerIdentity {
        PeerIdentity {
            common_names: cns.iter().map(|s| s.to_string()).collect(),
            xmpp_addrs: addrs.iter().map(|s| s.to_string()).collect(),
            ..PeerIdentity::default()
        }
    }

    #[test]
    fn external_identity_rule() {
        let one = id(&["agent1"], &["agent1@localhost"]);
        let got = external_identity(Some(&one), "", "LocalHost").expect("ok");
        assert_eq!(got.to_string(), "agent1@localhost");
        // xmppAddr wins over CN.
        let other = id(&["cn-name"], &["x@localhost"]);
        assert_eq!(
            external_identity(Some(&other), "", "localhost")
                .expect("ok")
                .to_string(),
            "x@localhost"
        );
        // CN only: localpart at the stream domain.
        let cn = id(&["compute-1"], &[]);
        assert_eq!(
            external_identity(Some(&cn), "", "ctrl")
                .expect("ok")
                .to_string(),
            "compute-1@ctrl"
        );
        assert_eq!(
            external_identity(Some(&cn), "compute-1@ctrl", "ctrl")
                .expect("ok")
                .to_string(),
            "compute-1@ctrl"
        );
        // Two xmppAddrs need an authzid.
        let two = id(&[], &["a@localhost", "b@localhost"]);
        let e = external_identity(Some(&two), "", "localhost").expect_err("ambiguous");
        assert_eq!(e.condition, SaslCondition::InvalidAuthzid);
        assert_eq!(
            external_identity(Some(&two), "b@localhost", "localhost")
                .expect("ok")
                .to_string(),
            "b@localhost"
        );
        let e = external_identity(Some(&two), "c@localhost", "localhost").expect_err("not named");
        assert_eq!(e.condition, SaslCondition::InvalidAuthzid);
        // Domain mismatch, no certificate.
        let e = external_identity(Some(&one), "", "other").expect_err("domain");
        assert_eq!(e.condition, SaslCondition::NotAuthorized);
        let e = external_identity(None, "", "localhost").expect_err("no cert");
        assert_eq!(e.condition, SaslCondition::NotAuthorized);
    }
}
