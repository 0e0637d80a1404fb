//! Agent → control IQs (spec §6.2, §6.3, §5.8): their parsing on the control side, the
//! publish/collection pairing, and the agent-side writers.
//!
//! Parsing follows `XmppProto::DecodeInternal` (spec §2.3): the first `iq` element; the
//! action is the first child of the first `pubsub` element (of `iq` when there is none);
//! `node` is the action's attribute; for `collection` the first `associate` (else
//! `dissociate`) anywhere gives the paired node. Names are compared by local name and
//! namespaces are not checked, as the C++ receivers do.
//!
//! Writers produce the C++ agent's bytes: pugixml indent format with an empty indent
//! string (one element per line, [`Style::Lines`]), no declaration, attributes in the
//! order `type from to id`, each stanza followed by `\n`.

use bytes::BytesMut;

use super::message::write_eor_message;
use super::route::RouteEntry;
use super::{Family, PayloadError, c_atoi, find_iq};
use crate::stanza::ns;
use crate::xml::{Element, Style, XmlWriter};

/// What an agent asks of the control node's BGP channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    /// Subscribe to a VRF (routing instance).
    Subscribe {
        /// The VRF's FQ name (`subscribe/@node`).
        vrf: String,
        /// `options/instance-id` (the agent's VRF index); `None` when absent — the C++
        /// keeps −1 then and later publishes count as "without subscribe" (§6.5).
        instance_id: Option<i64>,
        /// `options/no-ribout` (pugixml `as_bool`): suppress advertisements to this agent.
        no_ribout: bool,
    },
    /// Unsubscribe from a VRF (options are ignored there, as by the C++).
    Unsubscribe {
        /// The VRF's FQ name.
        vrf: String,
    },
    /// First half of a route update: buffered until its collection IQ arrives.
    Publish {
        /// `publish/@node`: `AFI/SAFI/<vrf>/<prefix>` etc. (§6.3).
        node: String,
        /// The first `<item>` in the IQ and its `<item>` siblings, unparsed: the family
        /// (from the node) decides how they parse. Empty = the end-of-RIB marker.
        items: Vec<Element>,
    },
    /// Second half of a route update.
    Collection {
        /// `collection/@node`: the VRF.
        vrf: String,
        /// Associate (add/change) or dissociate (delete); `None` when neither is present
        /// (the IQ form of the end-of-RIB marker).
        op: Option<CollectionOp>,
        /// `associate/@node` or `dissociate/@node` (`""` when absent).
        node: String,
    },
}

/// The operation a collection IQ applies to the buffered publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionOp {
    /// `<associate>`: add or change.
    Associate,
    /// `<dissociate>`: delete.
    Dissociate,
}

impl AgentRequest {
    /// Parses a whole `<iq>` stanza.
    pub fn from_iq(stanza: &Element) -> Result<Self, PayloadError> {
        let iq = find_iq(stanza).ok_or(PayloadError::Missing { element: "iq" })?;
        let iq_type = iq.get_attr("type").unwrap_or("");
        if iq_type != "set" {
            return Err(PayloadError::IqType {
                iq_type: iq_type.to_owned(),
            });
        }
        let parent = iq.find_descendant("pubsub").unwrap_or(iq);
        let Some(action) = parent.children().next() else {
            return Err(PayloadError::UnknownAction {
                action: String::new(),
            });
        };
        let node = action.get_attr("node").unwrap_or("").to_owned();
        match action.local_name() {
            "subscribe" => {
                let (instance_id, no_ribout) = parse_options(iq);
                Ok(AgentRequest::Subscribe {
                    vrf: node,
                    instance_id,
                    no_ribout,
                })
            }
            "unsubscribe" => Ok(AgentRequest::Unsubscribe { vrf: node }),
            "publish" => Ok(AgentRequest::Publish {
                node,
                items: find_items(iq),
            }),
            "collection" => {
                let (op, as_node) = if let Some(a) = iq.find_descendant("associate") {
                    (Some(CollectionOp::Associate), a.get_attr("node"))
                } else if let Some(d) = iq.find_descendant("dissociate") {
                    (Some(CollectionOp::Dissociate), d.get_attr("node"))
                } else {
                    (None, None)
                };
                Ok(AgentRequest::Collection {
                    vrf: node,
                    op,
                    node: as_node.unwrap_or("").to_owned(),
                })
            }
            other => Err(PayloadError::UnknownAction {
                action: other.to_owned(),
            }),
        }
    }

    /// Writes the request as the C++ agent would, with sequence number `seq` in the id
    /// (`subscribe<N>`, `pubsub<N>`, `collection<N>`).
    pub fn write(&self, out: &mut BytesMut, agent: &str, seq: u64) {
        match self {
            AgentRequest::Subscribe {
                vrf,
                instance_id,
                no_ribout,
            } => write_subscription(out, agent, seq, "subscribe", vrf, *instance_id, *no_ribout),
            AgentRequest::Unsubscribe { vrf } => {
                write_subscription(out, agent, seq, "unsubscribe", vrf, None, false);
            }
            AgentRequest::Publish { node, items } => {
                write_publish_with(out, agent, seq, node, |w| {
                    for item in items {
                        item.write(w);
                    }
                });
            }
            AgentRequest::Collection { vrf, op, node } => {
                write_collection(out, agent, seq, vrf, op.map(|op| (op, node.as_str())));
            }
        }
    }
}

/// `options` anywhere in the IQ (the C++ `FindNode("options")`), read as the control node
/// does: the last `instance-id` child wins, pugixml `as_int` (`strtol`, junk → 0, empty → 0);
/// `no-ribout` with pugixml 1.2 `as_bool` (first character one of `1tTyY`).
fn parse_options(iq: &Element) -> (Option<i64>, bool) {
    let mut instance_id = None;
    let mut no_ribout = false;
    if let Some(options) = iq.find_descendant("options") {
        for c in options.children() {
            match c.local_name() {
                // `c_atoi` keeps the C `int`'s bits; reinterpret them as signed.
                "instance-id" => instance_id = Some(i64::from(c_atoi(&c.text()) as i32)),
                "no-ribout" => {
                    no_ribout = matches!(
                        c.text().bytes().next(),
                        Some(b'1' | b't' | b'T' | b'y' | b'Y')
                    );
                }
                _ => {}
            }
        }
    }
    (instance_id, no_ribout)
}

/// The C++ `FindNode("item")` and its `item` siblings (`BgpXmppChannel::ReceiveUpdate`).
fn find_items(iq: &Element) -> Vec<Element> {
    fn parent_of_first<'a>(el: &'a Element, name: &str) -> Option<&'a Element> {
        for c in el.children() {
            if c.local_name() == name {
                return Some(el);
            }
            if let Some(p) = parent_of_first(c, name) {
                return Some(p);
            }
        }
        None
    }
    let Some(parent) = parent_of_first(iq, "item") else {
        return Vec::new();
    };
    parent
        .children()
        .skip_while(|c| c.local_name() != "item")
        .filter(|c| c.local_name() == "item")
        .cloned()
        .collect()
}

/// A publish delivered by the pairing, as the control node's BGP channel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate {
    /// The effective node: the collection's node, i.e. the VRF.
    pub vrf: String,
    /// The "as-node": the original publish node (`AFI/SAFI/…`).
    pub node: String,
    /// Associate → true (add/change), dissociate (or neither) → false (delete).
    pub add: bool,
    /// The publish's items; empty for the end-of-RIB marker.
    pub items: Vec<Element>,
}

impl RouteUpdate {
    /// True for the IQ form of the end-of-RIB marker: a publish without any `<item>`.
    pub fn is_end_of_rib(&self) -> bool {
        self.items.is_empty()
    }

    /// The family of the publish node (its first two tokens).
    pub fn family(&self) -> Option<Family> {
        Family::from_node(&self.node)
    }

    /// The optional 6th `/`-token of an IPv4 publish node: the primary instance id used
    /// in the master instance (`GetPrimaryInstanceID`).
    pub fn primary_instance_id(&self) -> Option<u32> {
        let token = self.node.split('/').nth(5)?;
        token.parse().ok()
    }

    /// The items parsed as unicast entries (inet, labeled inet, inet6). Each item parses
    /// or fails on its own: a failure drops only that item.
    pub fn route_entries(&self) -> impl Iterator<Item = Result<RouteEntry, PayloadError>> + '_ {
        self.items.iter().map(RouteEntry::from_item)
    }
}

/// Why the pairing discarded IQs (logged as a warning by the C++ control node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// The collection's associate/dissociate node differs from the buffered publish's
    /// node: both are discarded.
    NodeMismatch {
        /// The buffered publish's node.
        publish_node: String,
        /// The collection's associate/dissociate node.
        collection_node: String,
    },
    /// A collection without a buffered publish.
    NoPublish {
        /// The collection's associate/dissociate node.
        collection_node: String,
    },
}

/// What the pairing did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairOutcome {
    /// Subscribe or unsubscribe: not part of the pairing, handle it now (the buffer is
    /// left as it is).
    Pass(AgentRequest),
    /// A publish was buffered; `replaced` is the node of an earlier unmatched publish it
    /// replaced (that one is dropped).
    Buffered {
        /// The dropped publish's node, if any.
        replaced: Option<String>,
    },
    /// A publish/collection pair matched.
    Deliver(RouteUpdate),
    /// The request (and possibly the buffered publish) was dropped.
    Discarded(Discard),
}

/// The control node's publish/collection pairing (`XmppConnection::XmppDecode`, §6.3).
///
/// Bounded by construction: at most one publish is buffered per connection.
#[derive(Debug, Default)]
pub struct PublishPairer {
    pending: Option<(String, Vec<Element>)>,
}

impl PublishPairer {
    /// An empty pairing.
    pub fn new() -> Self {
        Self::default()
    }

    /// True while a publish waits for its collection.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Feeds one request.
    pub fn push(&mut self, req: AgentRequest) -> PairOutcome {
        match req {
            AgentRequest::Publish { node, items } => {
                let replaced = self.pending.replace((node, items)).map(|(n, _)| n);
                PairOutcome::Buffered { replaced }
            }
            AgentRequest::Collection { vrf, op, node } => match self.pending.take() {
                None => PairOutcome::Discarded(Discard::NoPublish {
                    collection_node: node,
                }),
                Some((publish_node, _)) if publish_node != node => {
                    PairOutcome::Discarded(Discard::NodeMismatch {
                        publish_node,
                        collection_node: node,
                    })
                }
                Some((publish_node, items)) => PairOutcome::Deliver(RouteUpdate {
                    vrf,
                    node: publish_node,
                    add: op == Some(CollectionOp::Associate),
                    items,
                }),
            },
            other => PairOutcome::Pass(other),
        }
    }
}

/// `<vrf>`'s publish node for a unicast entry: `AFI/SAFI/<vrf>/<prefix>` from the entry's
/// `nlri` (spec §6.3 table).
pub fn publish_node(vrf: &str, entry: &RouteEntry) -> String {
    format!(
        "{}/{}/{}/{}",
        entry.nlri.af, entry.nlri.safi, vrf, entry.nlri.prefix
    )
}

fn bgp_peer_jid() -> String {
    format!("{}/{}", ns::CONTROL_JID, ns::RESOURCE_BGP)
}

/// Opens `<iq type="set" from to id>` in the agent layout.
fn start_iq(w: &mut XmlWriter<'_>, agent: &str, id: &str) {
    w.start("iq");
    w.attr("type", "set");
    w.attr("from", agent);
    w.attr("to", &bgp_peer_jid());
    w.attr("id", id);
    w.start("pubsub");
    w.attr("xmlns", ns::PUBSUB);
}

fn end_iq(w: &mut XmlWriter<'_>) {
    w.end(); // pubsub
    w.end(); // iq
}

fn write_subscription(
    out: &mut BytesMut,
    agent: &str,
    seq: u64,
    action: &'static str,
    vrf: &str,
    instance_id: Option<i64>,
    no_ribout: bool,
) {
    let mut w = XmlWriter::new(out, Style::Lines);
    // The C++ agent uses the `subscribe` counter for both actions.
    start_iq(&mut w, agent, &format!("subscribe{seq}"));
    w.start(action);
    w.attr("node", vrf);
    if instance_id.is_some() || no_ribout {
        // A child of subscribe in the C++ agent (fixtures put it beside; both parse).
        w.start("options");
        if let Some(id) = instance_id {
            w.text_element("instance-id", &id.to_string());
        }
        if no_ribout {
            w.text_element("no-ribout", "true");
        }
        w.end();
    }
    w.end();
    end_iq(&mut w);
}

/// Writes a subscribe IQ: `<subscribe node=vrf><options><instance-id>N</instance-id>…`.
pub fn write_subscribe(out: &mut BytesMut, agent: &str, seq: u64, vrf: &str, instance_id: i64) {
    write_subscription(out, agent, seq, "subscribe", vrf, Some(instance_id), false);
}

/// Writes an unsubscribe IQ; the C++ agent repeats the options there (ignored by control).
pub fn write_unsubscribe(out: &mut BytesMut, agent: &str, seq: u64, vrf: &str, instance_id: i64) {
    write_subscription(
        out,
        agent,
        seq,
        "unsubscribe",
        vrf,
        Some(instance_id),
        false,
    );
}

fn write_publish_with(
    out: &mut BytesMut,
    agent: &str,
    seq: u64,
    node: &str,
    body: impl FnOnce(&mut XmlWriter<'_>),
) {
    let mut w = XmlWriter::new(out, Style::Lines);
    start_iq(&mut w, agent, &format!("pubsub{seq}"));
    w.start("publish");
    if !node.is_empty() {
        w.attr("node", node);
    }
    body(&mut w);
    w.end();
    end_iq(&mut w);
}

/// Writes a publish IQ `pubsub<seq>` for `node`, with `entry` as its one `<item>` (none:
/// the end-of-RIB marker).
pub fn write_publish(
    out: &mut BytesMut,
    agent: &str,
    seq: u64,
    node: &str,
    entry: Option<&RouteEntry>,
) {
    write_publish_with(out, agent, seq, node, |w| {
        if let Some(entry) = entry {
            entry.write_item(w, None);
        }
    });
}

/// Writes a collection IQ `collection<seq>` for `vrf` with `<associate node=…/>` or
/// `<dissociate node=…/>` (none: the end-of-RIB marker's empty collection).
pub fn write_collection(
    out: &mut BytesMut,
    agent: &str,
    seq: u64,
    vrf: &str,
    op: Option<(CollectionOp, &str)>,
) {
    let mut w = XmlWriter::new(out, Style::Lines);
    start_iq(&mut w, agent, &format!("collection{seq}"));
    w.start("collection");
    if !vrf.is_empty() {
        w.attr("node", vrf);
    }
    if let Some((op, node)) = op {
        w.start(match op {
            CollectionOp::Associate => "associate",
            CollectionOp::Dissociate => "dissociate",
        });
        w.attr("node", node);
        w.end();
    }
    w.end();
    end_iq(&mut w);
}

/// Writes the publish + collection pair for a unicast route add (`add`) or delete, with
/// ids `pubsub<seq>` / `collection<seq>` and node `AFI/SAFI/<vrf>/<prefix>`. The full
/// item is sent for deletes too (§6.3).
pub fn write_route(
    out: &mut BytesMut,
    agent: &str,
    seq: u64,
    vrf: &str,
    entry: &RouteEntry,
    add: bool,
) {
    let node = publish_node(vrf, entry);
    write_publish(out, agent, seq, &node, Some(entry));
    let op = if add {
        CollectionOp::Associate
    } else {
        CollectionOp::Dissociate
    };
    write_collection(out, agent, seq, vrf, Some((op, &node)));
}

/// Writes the IQ form of the end-of-RIB marker (the one control recognises, §5.8): an
/// empty publish followed by an empty collection.
pub fn write_eor_iq(out: &mut BytesMut, agent: &str, seq: u64) {
    write_publish(out, agent, seq, "", None);
    write_collection(out, agent, seq, "", None);
}

/// Writes the message form of the agent's end-of-RIB marker (what the C++ agent sends,
/// §5.8): `from` = the agent, `to` = `network-control@contrailsystems.com/bgp-peer`.
pub fn write_eor_message_from_agent(out: &mut BytesMut, agent: &str) {
    write_eor_message(out, agent, &bgp_peer_jid());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contrail::route::tests::{parse, sample_entry};
    use crate::xml::NsScope;

    const VRF: &str = "default-domain:demo:net-a:net-a";

    fn parse_all(bytes: &[u8]) -> Vec<AgentRequest> {
        // Stanzas are concatenated; each ends with "</iq>\n".
        let text = std::str::from_utf8(bytes).expect("utf8");
        text.split_inclusive("</iq>\n")
            .map(|s| AgentRequest::from_iq(&parse(s)).expect("valid request"))
            .collect()
    }

    /// The spec's §6.4 sample (publish + collection), shown compacted there.
    const SPEC_PUBLISH: &str = r#"<iq type="set" from="compute-1" to="network-control@contrailsystems.com/bgp-peer" id="pubsub12">
<pubsub xmlns="http://jabber.org/protocol/pubsub">
<publish node="1/1/default-domain:demo:net-a:net-a/10.1.1.3/32">
<item>
<entry>
<nlri><af>1</af><safi>1</safi><address>10.1.1.3/32</address></nlri>
<next-hops>
<next-hop>
<af>1</af><address>192.168.0.11</address><mac>52:54:00:aa:bb:cc</mac><label>25</label><vni>0</vni>
<tunnel-encapsulation-list><tunnel-encapsulation>gre</tunnel-encapsulation><tunnel-encapsulation>udp</tunnel-encapsulation></tunnel-encapsulation-list>
<virtual-network>default-domain:demo:net-a</virtual-network>
<tag-list />
</next-hop>
</next-hops>
<version>1</version>
<virtual-network></virtual-network>
<mobility sticky="false" seqno="0" />
<sequence-number>3</sequence-number>
<security-group-list><security-group>8000002</security-group></security-group-list>
<community-tag-list />
<local-preference>200</local-preference>
<med>0</med>
<load-balance><load-balance-fields /><load-balance-decision>field-hash</load-balance-decision></load-balance>
<sub-protocol>interface</sub-protocol>
</entry>
</item>
</publish>
</pubsub>
</iq>
<iq type="set" from="compute-1" to="network-control@contrailsystems.com/bgp-peer" id="collection12">
<pubsub xmlns="http://jabber.org/protocol/pubsub">
<collection node="default-domain:demo:net-a:net-a">
<associate node="1/1/default-domain:demo:net-a:net-a/10.1.1.3/32" />
</collection>
</pubsub>
</iq>
"#;

    #[test]
    fn publish_pair_matches_spec_sample() {
        let mut out = BytesMut::new();
        write_route(&mut out, "compute-1", 12, VRF, &sample_entry(), true);
        let ours: String = std::str::from_utf8(&out).expect("utf8").replace('\n', "");
        assert_eq!(ours, SPEC_PUBLISH.replace('\n', ""));
    }

    #[test]
    fn agent_layout_is_one_element_per_line() {
        let mut out = BytesMut::new();
        write_route(&mut out, "compute-1", 12, VRF, &sample_entry(), false);
        let text = std::str::from_utf8(&out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..6],
            [
                r#"<iq type="set" from="compute-1" to="network-control@contrailsystems.com/bgp-peer" id="pubsub12">"#,
                r#"<pubsub xmlns="http://jabber.org/protocol/pubsub">"#,
                r#"<publish node="1/1/default-domain:demo:net-a:net-a/10.1.1.3/32">"#,
                "<item>",
                "<entry>",
                "<nlri>",
            ]
        );
        assert!(text.ends_with(
            "<iq type=\"set\" from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\" id=\"collection12\">\n\
             <pubsub xmlns=\"http://jabber.org/protocol/pubsub\">\n\
             <collection node=\"default-domain:demo:net-a:net-a\">\n\
             <dissociate node=\"1/1/default-domain:demo:net-a:net-a/10.1.1.3/32\" />\n\
             </collection>\n</pubsub>\n</iq>\n"
        ));
        // No indentation, one tag per line (text-only elements keep their text inline).
        for line in &lines {
            assert!(line.starts_with('<') && line.ends_with('>'), "{line:?}");
            assert!(line.matches('<').count() <= 2, "{line:?}");
        }
    }

    #[test]
    fn pair_round_trips_through_pairer() {
        let mut out = BytesMut::new();
        let entry = sample_entry();
        write_route(&mut out, "compute-1", 3, VRF, &entry, true);
        let reqs = parse_all(&out);
        assert_eq!(reqs.len(), 2);
        let mut pairer = PublishPairer::new();
        let mut it = reqs.into_iter();
        assert_eq!(
            pairer.push(it.next().expect("publish")),
            PairOutcome::Buffered { replaced: None }
        );
        let PairOutcome::Deliver(update) = pairer.push(it.next().expect("collection")) else {
            panic!("expected delivery");
        };
        assert_eq!(update.vrf, VRF);
        assert_eq!(update.node, format!("1/1/{VRF}/10.1.1.3/32"));
        assert!(update.add);
        assert!(!update.is_end_of_rib());
        assert_eq!(update.family(), Some(Family::Inet));
        let entries: Vec<_> = update.route_entries().collect();
        assert_eq!(entries, vec![Ok(entry)]);
        assert!(!pairer.has_pending());
    }

    #[test]
    fn subscribe_round_trip_and_layout() {
        let mut out = BytesMut::new();
        write_subscribe(&mut out, "compute-1", 4, VRF, 7);
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            "<iq type=\"set\" from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\" id=\"subscribe4\">\n\
             <pubsub xmlns=\"http://jabber.org/protocol/pubsub\">\n\
             <subscribe node=\"default-domain:demo:net-a:net-a\">\n\
             <options>\n<instance-id>7</instance-id>\n</options>\n\
             </subscribe>\n</pubsub>\n</iq>\n"
        );
        assert_eq!(
            parse_all(&out),
            vec![AgentRequest::Subscribe {
                vrf: VRF.into(),
                instance_id: Some(7),
                no_ribout: false
            }]
        );
        out.clear();
        write_unsubscribe(&mut out, "compute-1", 5, VRF, 7);
        assert!(
            std::str::from_utf8(&out)
                .expect("utf8")
                .contains("<unsubscribe node=")
        );
        assert_eq!(
            parse_all(&out),
            vec![AgentRequest::Unsubscribe { vrf: VRF.into() }]
        );
    }

    #[test]
    fn every_request_round_trips() {
        let item = parse("<item><entry><version>1</version></entry></item>");
        let reqs = [
            AgentRequest::Subscribe {
                vrf: "blue".into(),
                instance_id: Some(-1),
                no_ribout: true,
            },
            AgentRequest::Subscribe {
                vrf: "blue".into(),
                instance_id: None,
                no_ribout: false,
            },
            AgentRequest::Unsubscribe { vrf: "blue".into() },
            AgentRequest::Publish {
                node: "1/1/blue/10.0.0.1/32".into(),
                items: vec![item.clone(), item],
            },
            AgentRequest::Publish {
                node: String::new(),
                items: vec![],
            },
            AgentRequest::Collection {
                vrf: "blue".into(),
                op: Some(CollectionOp::Dissociate),
                node: "1/1/blue/10.0.0.1/32".into(),
            },
            AgentRequest::Collection {
                vrf: String::new(),
                op: None,
                node: String::new(),
            },
        ];
        for req in reqs {
            let mut out = BytesMut::new();
            req.write(&mut out, "compute-1", 9);
            let parsed = AgentRequest::from_iq(
                &Element::parse(&out, &NsScope::default()).expect("well-formed"),
            )
            .expect("valid");
            // Items come back with the writer's whitespace; compare them as entries.
            match (&req, &parsed) {
                (
                    AgentRequest::Publish { node: a, items: ia },
                    AgentRequest::Publish { node: b, items: ib },
                ) => {
                    assert_eq!(a, b);
                    assert_eq!(ia.len(), ib.len());
                }
                _ => assert_eq!(parsed, req),
            }
        }
    }

    #[test]
    fn fixture_forms() {
        // src/bgp/testdata/pubsub_sub.xml shape: options as a sibling of subscribe.
        let sub = parse(
            "<iq type='set' from='agent@vnsw.contrailsystems.com' to='network-control@contrailsystems.com/bgp-peer' id='sub1'>\n\
             <pubsub xmlns='http://jabber.org/protocol/pubsub'>\n\
               <subscribe node='blue'/>\n\
               <options>\n  <instance-id>1</instance-id>\n</options>\n\
             </pubsub>\n</iq>",
        );
        assert_eq!(
            AgentRequest::from_iq(&sub).expect("valid"),
            AgentRequest::Subscribe {
                vrf: "blue".into(),
                instance_id: Some(1),
                no_ribout: false
            }
        );
        // pugixml as_int: junk reads as 0, an empty element as 0, the last one wins.
        let sub = parse(
            "<iq type='set'><pubsub><subscribe node='red'><options><instance-id>x</instance-id>\
             <instance-id> 12abc</instance-id><no-ribout>yes</no-ribout></options></subscribe></pubsub></iq>",
        );
        assert_eq!(
            AgentRequest::from_iq(&sub).expect("valid"),
            AgentRequest::Subscribe {
                vrf: "red".into(),
                instance_id: Some(12),
                no_ribout: true
            }
        );
        // No pubsub: the action is the iq's first child.
        let bare = parse("<iq type='set'><unsubscribe node='blue'/></iq>");
        assert_eq!(
            AgentRequest::from_iq(&bare).expect("valid"),
            AgentRequest::Unsubscribe { vrf: "blue".into() }
        );
        // pubsub_pub.xml shape: publish IQ then associate IQ, legacy node naming.
        let publish = parse(
            "<iq type='set' id='pub1'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='1/1/10.1.2.1'><item><entry/></item></publish></pubsub></iq>",
        );
        let AgentRequest::Publish { node, items } = AgentRequest::from_iq(&publish).expect("valid")
        else {
            panic!("publish expected");
        };
        assert_eq!(node, "1/1/10.1.2.1");
        assert_eq!(items.len(), 1);
        let collection = parse(
            "<iq type='set' id='coll1'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <collection node='blue'><dissociate node='1/1/10.1.2.1'/></collection></pubsub></iq>",
        );
        assert_eq!(
            AgentRequest::from_iq(&collection).expect("valid"),
            AgentRequest::Collection {
                vrf: "blue".into(),
                op: Some(CollectionOp::Dissociate),
                node: "1/1/10.1.2.1".into()
            }
        );
    }

    #[test]
    fn rejected_iqs() {
        let get = parse("<iq type='get'><pubsub><subscribe node='a'/></pubsub></iq>");
        assert_eq!(
            AgentRequest::from_iq(&get),
            Err(PayloadError::IqType {
                iq_type: "get".into()
            })
        );
        let unknown = parse("<iq type='set'><pubsub><retract node='a'/></pubsub></iq>");
        assert_eq!(
            AgentRequest::from_iq(&unknown),
            Err(PayloadError::UnknownAction {
                action: "retract".into()
            })
        );
        let empty = parse("<iq type='set'><pubsub/></iq>");
        assert!(matches!(
            AgentRequest::from_iq(&empty),
            Err(PayloadError::UnknownAction { .. })
        ));
        let not_iq = parse("<message/>");
        assert_eq!(
            AgentRequest::from_iq(&not_iq),
            Err(PayloadError::Missing { element: "iq" })
        );
    }

    fn publish(node: &str) -> AgentRequest {
        AgentRequest::Publish {
            node: node.into(),
            items: vec![parse("<item/>")],
        }
    }

    fn collection(vrf: &str, op: CollectionOp, node: &str) -> AgentRequest {
        AgentRequest::Collection {
            vrf: vrf.into(),
            op: Some(op),
            node: node.into(),
        }
    }

    #[test]
    fn pairer_cases() {
        let mut p = PublishPairer::new();

        // Match (dissociate → delete).
        assert_eq!(
            p.push(publish("1/1/blue/a")),
            PairOutcome::Buffered { replaced: None }
        );
        let PairOutcome::Deliver(u) =
            p.push(collection("blue", CollectionOp::Dissociate, "1/1/blue/a"))
        else {
            panic!("delivery expected");
        };
        assert_eq!(
            (u.vrf.as_str(), u.node.as_str(), u.add),
            ("blue", "1/1/blue/a", false)
        );

        // Mismatch: both discarded, nothing left buffered.
        p.push(publish("1/1/blue/a"));
        assert_eq!(
            p.push(collection("blue", CollectionOp::Associate, "1/1/blue/b")),
            PairOutcome::Discarded(Discard::NodeMismatch {
                publish_node: "1/1/blue/a".into(),
                collection_node: "1/1/blue/b".into()
            })
        );
        assert!(!p.has_pending());

        // Collection alone.
        assert_eq!(
            p.push(collection("blue", CollectionOp::Associate, "1/1/blue/a")),
            PairOutcome::Discarded(Discard::NoPublish {
                collection_node: "1/1/blue/a".into()
            })
        );

        // A later publish replaces the earlier one.
        p.push(publish("1/1/blue/a"));
        assert_eq!(
            p.push(publish("1/1/blue/b")),
            PairOutcome::Buffered {
                replaced: Some("1/1/blue/a".into())
            }
        );
        assert!(matches!(
            p.push(collection("blue", CollectionOp::Associate, "1/1/blue/a")),
            PairOutcome::Discarded(Discard::NodeMismatch { .. })
        ));

        // Interleaved subscribe passes through and leaves the buffer alone.
        p.push(publish("1/1/blue/c"));
        let sub = AgentRequest::Subscribe {
            vrf: "red".into(),
            instance_id: Some(2),
            no_ribout: false,
        };
        assert_eq!(p.push(sub.clone()), PairOutcome::Pass(sub));
        assert!(p.has_pending());
        let PairOutcome::Deliver(u) =
            p.push(collection("blue", CollectionOp::Associate, "1/1/blue/c"))
        else {
            panic!("delivery expected");
        };
        assert!(u.add);
    }

    #[test]
    fn eor_iq_form_pairs_into_end_of_rib() {
        let mut out = BytesMut::new();
        write_eor_iq(&mut out, "compute-1", 1);
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(text.contains("<publish />\n"));
        assert!(text.contains("<collection />\n"));
        let reqs = parse_all(&out);
        let mut p = PublishPairer::new();
        let mut outcomes = reqs.into_iter().map(|r| p.push(r));
        assert_eq!(
            outcomes.next(),
            Some(PairOutcome::Buffered { replaced: None })
        );
        let Some(PairOutcome::Deliver(u)) = outcomes.next() else {
            panic!("delivery expected");
        };
        assert!(u.is_end_of_rib());
        assert_eq!(u.family(), None);
    }

    #[test]
    fn eor_message_from_agent() {
        let mut out = BytesMut::new();
        write_eor_message_from_agent(&mut out, "compute-1");
        assert_eq!(
            &out[..],
            b"\n<message from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\">\n\t<event xmlns=\"http://jabber.org/protocol/pubsub\">\n<items node=\"0/0/EndOfRib\"></items>\n\t</event>\n</message>\n"
        );
    }

    #[test]
    fn node_helpers() {
        let u = RouteUpdate {
            vrf: "default-domain:default-project:ip-fabric:__default__".into(),
            node: "1/1/default-domain:default-project:ip-fabric:__default__/10.0.0.1/32/7".into(),
            add: true,
            items: vec![],
        };
        assert_eq!(u.primary_instance_id(), Some(7));
        let mut entry = sample_entry();
        entry.nlri.af = 2;
        entry.nlri.prefix = "fd00::1/128".parse().expect("prefix");
        assert_eq!(publish_node("blue", &entry), "2/1/blue/fd00::1/128");
    }
}
