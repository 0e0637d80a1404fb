//! XEP-0199 ping: `<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>`, answered by an
//! empty result.

use super::{Iq, IqType, ns};
use crate::xml::Element;

/// Whether `iq` is a ping request.
pub fn is_ping(iq: &Iq) -> bool {
    iq.kind == IqType::Get && iq.payload().is_some_and(|p| p.is("ping", ns::PING))
}

/// A ping request to `to` (`None`: the server we are connected to).
pub fn ping(id: &str, to: Option<&str>) -> Iq {
    Iq::request(IqType::Get, id, to, Element::with_ns("ping", ns::PING))
}

/// Whether `iq` is the legacy session establishment request (RFC 3921 §3, kept as a no-op
/// in RFC 6121 Appendix E): clients that still send it expect an empty result.
pub fn is_session(iq: &Iq) -> bool {
    iq.kind == IqType::Set && iq.payload().is_some_and(|p| p.is("session", ns::SESSION))
}
