//! Resource binding (RFC 6120 §7): the bind request and its result.

use super::{Iq, IqType, ns};
use crate::jid::Jid;
use crate::xml::Element;

/// A bind request: `<iq type='set'><bind xmlns='…bind'><resource>R</resource></bind></iq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    /// The resource the client asks for; `None` lets the server choose.
    pub resource: Option<String>,
}

impl BindRequest {
    /// Reads a bind request: `None` when the IQ is not a `set` with a `<bind/>` payload.
    pub fn from_iq(iq: &Iq) -> Option<Self> {
        if iq.kind != IqType::Set {
            return None;
        }
        let bind = iq.payload().filter(|p| p.is("bind", ns::BIND))?;
        let resource = bind
            .get_child("resource")
            .map(|r| r.text().trim().to_owned())
            .filter(|r| !r.is_empty());
        Some(Self { resource })
    }

    /// The request IQ with `id`.
    pub fn to_iq(&self, id: &str) -> Iq {
        let mut bind = Element::with_ns("bind", ns::BIND);
        if let Some(r) = &self.resource {
            bind.push_child(Element::new("resource").text_node(r.clone()));
        }
        Iq::request(IqType::Set, id, None, bind)
    }
}

/// The result of a bind request: `<bind><jid>full JID</jid></bind>`.
pub fn bind_result(request: &Iq, jid: &Jid) -> Iq {
    let mut r = request.result();
    r.from = None;
    r.children.push(
        Element::with_ns("bind", ns::BIND).child(Element::new("jid").text_node(jid.to_string())),
    );
    r
}

/// The full JID in a bind result, if it is one.
pub fn bound_jid(result: &Iq) -> Option<Jid> {
    if result.kind != IqType::Result {
        return None;
    }
    let jid = result
        .payload()
        .filter(|p| p.is("bind", ns::BIND))?
        .get_child("jid")?;
    Jid::parse(jid.text().trim()).ok()
}
