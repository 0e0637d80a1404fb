//! XEP-0060 publish-subscribe as standard peers speak it: the requests (`<pubsub
//! xmlns='http://jabber.org/protocol/pubsub'>` in an IQ), their results, and event
//! notifications (`<message><event xmlns='…pubsub#event'>`).
//!
//! The Contrail dialect reuses the same element names with its own rules (no `jid`, an
//! `<options><instance-id>` child, the `pubsub` namespace on events); those are parsed by
//! [`crate::contrail::pubsub`], not here.

use bytes::BytesMut;

use super::{Iq, IqType, StanzaCondition, StanzaError, ns};
use crate::xml::{Element, Style, XmlWriter};

/// One `<item>`: its id and its payload (the first child element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubItem {
    /// `id`.
    pub id: Option<String>,
    /// The payload element.
    pub payload: Option<Element>,
}

impl PubsubItem {
    fn from_element(el: &Element) -> Self {
        Self {
            id: el.get_attr("id").map(str::to_owned),
            payload: el.children().next().cloned(),
        }
    }

    fn to_element(&self) -> Element {
        let mut el = Element::new("item");
        if let Some(id) = &self.id {
            el.set_attr("id", id.clone());
        }
        if let Some(p) = &self.payload {
            el.push_child(p.clone());
        }
        el
    }
}

/// The requests of XEP-0060 this crate sends or serves (`type='set'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubsubRequest {
    /// `<create node='…'/>` (§8.1).
    Create {
        /// The node to create.
        node: String,
    },
    /// `<subscribe node='…' jid='…'/>` (§6.1).
    Subscribe {
        /// The node.
        node: String,
        /// The subscribing JID (the sender's bare or full JID).
        jid: String,
    },
    /// `<unsubscribe node='…' jid='…'/>` (§6.2).
    Unsubscribe {
        /// The node.
        node: String,
        /// The subscribed JID.
        jid: String,
    },
    /// `<publish node='…'><item id='…'>payload</item></publish>` (§7.1).
    Publish {
        /// The node.
        node: String,
        /// The items (normally one).
        items: Vec<PubsubItem>,
    },
    /// `<retract node='…'><item id='…'/></retract>` (§7.2).
    Retract {
        /// The node.
        node: String,
        /// The item ids.
        ids: Vec<String>,
    },
}

fn pubsub_error(condition: StanzaCondition, app: &str, text: &str) -> StanzaError {
    StanzaError::new(condition)
        .with_text(text)
        .with_app(Element::with_ns(app, ns::PUBSUB_ERRORS))
}

impl PubsubRequest {
    /// Reads a request: `None` when the IQ's payload is not `<pubsub>` in the XEP-0060
    /// namespace; `Some(Err)` with the XEP-0060 error for what is not served here (any
    /// `get`, other actions) or is malformed (no `node`).
    pub fn from_iq(iq: &Iq) -> Option<Result<Self, StanzaError>> {
        let pubsub = iq.payload().filter(|p| p.is("pubsub", ns::PUBSUB))?;
        Some(Self::parse(iq.kind, pubsub))
    }

    fn parse(kind: IqType, pubsub: &Element) -> Result<Self, StanzaError> {
        let Some(action) = pubsub.children().next() else {
            return Err(StanzaError::new(StanzaCondition::BadRequest).with_text("empty <pubsub/>"));
        };
        if kind != IqType::Set {
            return Err(pubsub_error(
                StanzaCondition::FeatureNotImplemented,
                "unsupported",
                "only publish, retract, subscribe and unsubscribe are served here",
            ));
        }
        let node = action.get_attr("node").unwrap_or("").to_owned();
        if node.is_empty() {
            return Err(pubsub_error(
                StanzaCondition::NotAcceptable,
                "nodeid-required",
                "the request names no node",
            ));
        }
        let jid = || action.get_attr("jid").unwrap_or("").to_owned();
        Ok(match action.local_name() {
            "create" => PubsubRequest::Create { node },
            "subscribe" => PubsubRequest::Subscribe { node, jid: jid() },
            "unsubscribe" => PubsubRequest::Unsubscribe { node, jid: jid() },
            "publish" => PubsubRequest::Publish {
                node,
                items: action
                    .children()
                    .filter(|c| c.local_name() == "item")
                    .map(PubsubItem::from_element)
                    .collect(),
            },
            "retract" => PubsubRequest::Retract {
                node,
                ids: action
                    .children()
                    .filter(|c| c.local_name() == "item")
                    .filter_map(|c| c.get_attr("id").map(str::to_owned))
                    .collect(),
            },
            other => {
                return Err(pubsub_error(
                    StanzaCondition::FeatureNotImplemented,
                    "unsupported",
                    &format!("<{other}/> is not served here"),
                ));
            }
        })
    }

    /// The request as a `set` IQ with `id` to the pubsub service `to`.
    pub fn to_iq(&self, id: &str, to: Option<&str>) -> Iq {
        let (name, node) = match self {
            PubsubRequest::Create { node } => ("create", node),
            PubsubRequest::Subscribe { node, .. } => ("subscribe", node),
            PubsubRequest::Unsubscribe { node, .. } => ("unsubscribe", node),
            PubsubRequest::Publish { node, .. } => ("publish", node),
            PubsubRequest::Retract { node, .. } => ("retract", node),
        };
        let mut action = Element::new(name).attr("node", node.clone());
        match self {
            PubsubRequest::Subscribe { jid, .. } | PubsubRequest::Unsubscribe { jid, .. } => {
                action.set_attr("jid", jid.clone());
            }
            PubsubRequest::Publish { items, .. } => {
                for i in items {
                    action.push_child(i.to_element());
                }
            }
            PubsubRequest::Retract { ids, .. } => {
                for id in ids {
                    action.push_child(Element::new("item").attr("id", id.clone()));
                }
            }
            PubsubRequest::Create { .. } => {}
        }
        Iq::request(
            IqType::Set,
            id,
            to,
            Element::with_ns("pubsub", ns::PUBSUB).child(action),
        )
    }
}

/// The payload of a subscribe result (§6.1.2): `<subscription subscription='subscribed'/>`.
pub fn subscription_result(node: &str, jid: &str) -> Element {
    Element::with_ns("pubsub", ns::PUBSUB).child(
        Element::new("subscription")
            .attr("node", node)
            .attr("jid", jid)
            .attr("subscription", "subscribed"),
    )
}

/// The payload of a publish result (§7.1.2): the node and the ids of the items.
pub fn publish_result(node: &str, ids: &[String]) -> Element {
    let mut publish = Element::new("publish").attr("node", node);
    for id in ids {
        publish.push_child(Element::new("item").attr("id", id.clone()));
    }
    Element::with_ns("pubsub", ns::PUBSUB).child(publish)
}

/// The `<not-subscribed/>` error of an unsubscribe without subscription (§6.2.3.2).
pub fn not_subscribed() -> StanzaError {
    pubsub_error(
        StanzaCondition::UnexpectedRequest,
        "not-subscribed",
        "no subscription to this node",
    )
}

/// Writes an event notification `<message from to><event xmlns='…#event'><items node>`,
/// with `body` writing the `<item>`s or `<retract>`s, compact (§7.1.2.1, §7.2.2.1).
pub fn write_event(
    out: &mut BytesMut,
    from: &str,
    to: &str,
    node: &str,
    body: impl FnOnce(&mut XmlWriter<'_>),
) {
    let mut w = XmlWriter::new(out, Style::Compact);
    w.start("message");
    w.attr("from", from);
    w.attr("to", to);
    w.start("event");
    w.attr("xmlns", ns::PUBSUB_EVENT);
    w.start("items");
    w.attr("node", node);
    body(&mut w);
    w.end();
    w.end();
    w.end();
}

/// An event notification as a subscriber reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubEvent {
    /// `items/@node`.
    pub node: String,
    /// The published items.
    pub items: Vec<PubsubItem>,
    /// The retracted item ids.
    pub retracts: Vec<String>,
}

impl PubsubEvent {
    /// Reads `<message><event xmlns='…#event'><items>`; `None` for any other message.
    pub fn from_message(msg: &Element) -> Option<Self> {
        let items = msg
            .get_child_ns("event", ns::PUBSUB_EVENT)?
            .get_child("items")?;
        Some(Self {
            node: items.get_attr("node").unwrap_or("").to_owned(),
            items: items
                .children()
                .filter(|c| c.local_name() == "item")
                .map(PubsubItem::from_element)
                .collect(),
            retracts: items
                .children()
                .filter(|c| c.local_name() == "retract")
                .filter_map(|c| c.get_attr("id").map(str::to_owned))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::NsScope;

    fn reparse(iq: &Iq) -> Iq {
        let mut out = BytesMut::new();
        iq.write(&mut XmlWriter::new(&mut out, Style::Compact));
        Iq::from_element(&Element::parse(&out, &NsScope::default()).expect("xml")).expect("iq")
    }

    #[test]
    fn requests_round_trip() {
        let payload = Element::with_ns("entry", "urn:example").text_node("x");
        for req in [
            PubsubRequest::Create { node: "n".into() },
            PubsubRequest::Subscribe {
                node: "vrf".into(),
                jid: "a@b/c".into(),
            },
            PubsubRequest::Unsubscribe {
                node: "vrf".into(),
                jid: "a@b".into(),
            },
            PubsubRequest::Publish {
                node: "n".into(),
                items: vec![PubsubItem {
                    id: Some("1".into()),
                    payload: Some(payload.clone()),
                }],
            },
            PubsubRequest::Retract {
                node: "n".into(),
                ids: vec!["1".into(), "2".into()],
            },
        ] {
            let iq = reparse(&req.to_iq("id1", Some("pubsub.localhost")));
            let back = PubsubRequest::from_iq(&iq).expect("pubsub").expect("valid");
            assert_eq!(back, req);
        }
    }

    #[test]
    fn unserved_requests_get_errors() {
        let get = Iq::request(
            IqType::Get,
            "1",
            None,
            Element::with_ns("pubsub", ns::PUBSUB).child(Element::new("items").attr("node", "n")),
        );
        let e = PubsubRequest::from_iq(&reparse(&get))
            .expect("pubsub")
            .expect_err("get");
        assert_eq!(e.condition, StanzaCondition::FeatureNotImplemented);
        let no_node = Iq::request(
            IqType::Set,
            "1",
            None,
            Element::with_ns("pubsub", ns::PUBSUB).child(Element::new("subscribe")),
        );
        let e = PubsubRequest::from_iq(&reparse(&no_node))
            .expect("pubsub")
            .expect_err("no node");
        assert_eq!(e.condition, StanzaCondition::NotAcceptable);
        let other = Iq::request(IqType::Set, "1", None, Element::with_ns("query", "x"));
        assert!(PubsubRequest::from_iq(&other).is_none());
    }

    #[test]
    fn event_round_trip() {
        let mut out = BytesMut::new();
        write_event(&mut out, "ctrl", "a@b/c", "1/1/vrf", |w| {
            w.start("item");
            w.attr("id", "10.0.0.1/32");
            w.start("entry");
            w.end();
            w.end();
            w.start("retract");
            w.attr("id", "10.0.0.2/32");
            w.end();
        });
        let el = Element::parse(&out, &NsScope::default()).expect("xml");
        let ev = PubsubEvent::from_message(&el).expect("event");
        assert_eq!(ev.node, "1/1/vrf");
        assert_eq!(ev.items.len(), 1);
        assert_eq!(ev.items[0].id.as_deref(), Some("10.0.0.1/32"));
        assert_eq!(ev.retracts, vec!["10.0.0.2/32".to_owned()]);
    }
}
