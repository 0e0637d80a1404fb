//! Control → agent route advertisements (spec §6.6) and the end-of-RIB message (§5.8).
//!
//! Layout (`BgpXmppMessage`, `src/bgp/xmpp_message_builder.cc`): a leading `\n`, the
//! `<message from=… to=…>` line, a tab-indented body ([`Style::Tabs`]), a trailing `\n`.
//! One message carries one table (family + VRF) and either only `<item>`s (≤ 32) or only
//! `<retract>`s (≤ 256).

use bytes::BytesMut;

use super::route::{Prefix, RouteEntry};
use super::{Family, PayloadError, c_atoi, split_node};
use crate::stanza::ns;
use crate::xml::{Element, Style, XmlWriter};

/// At most this many reachable items per message (`xmpp_message_builder.h`): bounds the
/// per-message encode buffer and keeps one slow agent's queue entries small.
pub const MAX_ITEMS_PER_MESSAGE: usize = 32;
/// At most this many retracts per message (same source).
pub const MAX_RETRACTS_PER_MESSAGE: usize = 256;

/// One change to advertise to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// The route is reachable (add or change): an `<item>`. Boxed: an entry is ten times
    /// the size of a prefix.
    Reach(Box<RouteEntry>),
    /// The route is gone: a `<retract>` with the prefix as id.
    Unreach(Prefix),
}

fn agent_jid(agent: &str) -> String {
    format!("{agent}/{}", ns::RESOURCE_BGP)
}

/// Writes `\n<message from to>\n\t<event xmlns>\n\t\t<items node="AFI/SAFI/vrf">`, calls
/// `body`, and closes everything.
fn write_message(
    out: &mut BytesMut,
    agent: &str,
    family: Family,
    vrf: &str,
    body: impl FnOnce(&mut XmlWriter<'_>),
) {
    let mut w = XmlWriter::new(out, Style::Tabs);
    w.raw(b"\n");
    w.start("message");
    w.attr("from", ns::CONTROL_JID);
    w.attr("to", &agent_jid(agent));
    w.start("event");
    w.attr("xmlns", ns::PUBSUB);
    w.start("items");
    w.attr("node", &format!("{}/{}/{vrf}", family.afi(), family.safi()));
    body(&mut w);
    w.end();
    w.end();
    w.end();
}

fn write_items_refs(
    out: &mut BytesMut,
    agent: &str,
    family: Family,
    vrf: &str,
    entries: &[&RouteEntry],
) -> Result<(), PayloadError> {
    check_len("items", entries.len(), MAX_ITEMS_PER_MESSAGE)?;
    write_message(out, agent, family, vrf, |w| {
        for e in entries {
            e.write_item(w, Some(&e.nlri.prefix.to_string()));
        }
    });
    Ok(())
}

fn write_retracts_refs(
    out: &mut BytesMut,
    agent: &str,
    family: Family,
    vrf: &str,
    prefixes: &[&Prefix],
) -> Result<(), PayloadError> {
    check_len("retracts", prefixes.len(), MAX_RETRACTS_PER_MESSAGE)?;
    write_message(out, agent, family, vrf, |w| {
        for p in prefixes {
            w.start("retract");
            w.attr("id", &p.to_string());
            w.end();
        }
    });
    Ok(())
}

fn check_len(what: &'static str, count: usize, max: usize) -> Result<(), PayloadError> {
    if count > max {
        Err(PayloadError::TooMany { what, count, max })
    } else {
        Ok(())
    }
}

/// Writes one route message with `entries` as `<item id="prefix">` (at most 32).
pub fn write_items(
    out: &mut BytesMut,
    agent: &str,
    family: Family,
    vrf: &str,
    entries: &[RouteEntry],
) -> Result<(), PayloadError> {
    let refs: Vec<&RouteEntry> = entries.iter().collect();
    write_items_refs(out, agent, family, vrf, &refs)
}

/// Writes one route message with `prefixes` as `<retract id="prefix" />` (at most 256).
pub fn write_retracts(
    out: &mut BytesMut,
    agent: &str,
    family: Family,
    vrf: &str,
    prefixes: &[Prefix],
) -> Result<(), PayloadError> {
    let refs: Vec<&Prefix> = prefixes.iter().collect();
    write_retracts_refs(out, agent, family, vrf, &refs)
}

/// Encodes `changes` for one table into messages: consecutive reaches are grouped into
/// item messages of ≤ 32, consecutive unreaches into retract messages of ≤ 256, in order
/// (so an add followed by a delete of the same prefix keeps its meaning). One buffer per
/// message, ready to send.
pub fn encode_changes(
    agent: &str,
    family: Family,
    vrf: &str,
    changes: &[RouteChange],
) -> Vec<BytesMut> {
    let mut messages = Vec::new();
    let mut i = 0;
    while i < changes.len() {
        let mut out = BytesMut::new();
        match &changes[i] {
            RouteChange::Reach(_) => {
                let run: Vec<&RouteEntry> = changes[i..]
                    .iter()
                    .map_while(|c| match c {
                        RouteChange::Reach(e) => Some(&**e),
                        RouteChange::Unreach(_) => None,
                    })
                    .take(MAX_ITEMS_PER_MESSAGE)
                    .collect();
                i += run.len();
                // The run is bounded by `take`, the length check cannot fail.
                let _ = write_items_refs(&mut out, agent, family, vrf, &run);
            }
            RouteChange::Unreach(_) => {
                let run: Vec<&Prefix> = changes[i..]
                    .iter()
                    .map_while(|c| match c {
                        RouteChange::Unreach(p) => Some(p),
                        RouteChange::Reach(_) => None,
                    })
                    .take(MAX_RETRACTS_PER_MESSAGE)
                    .collect();
                i += run.len();
                let _ = write_retracts_refs(&mut out, agent, family, vrf, &run);
            }
        }
        messages.push(out);
    }
    messages
}

/// Writes an end-of-RIB `<message>` (§5.8) in the C++ layout, whose `<items>` line is not
/// indented and has an explicit end tag:
/// `\n<message from to>\n\t<event xmlns>\n<items node="0/0/EndOfRib"></items>\n\t</event>\n</message>\n`.
pub(crate) fn write_eor_message(out: &mut BytesMut, from: &str, to: &str) {
    // Lines style gives the unindented `<items>` line; the two tabs are written raw.
    let mut w = XmlWriter::new(out, Style::Lines);
    w.raw(b"\n");
    w.start("message");
    w.attr("from", from);
    w.attr("to", to);
    w.raw(b"\n\t");
    w.start("event");
    w.attr("xmlns", ns::PUBSUB);
    w.start("items");
    w.attr("node", ns::EOR_NODE);
    w.text("");
    w.end();
    w.raw(b"\t");
    w.end();
    w.end();
}

/// Writes control's end-of-RIB message to `agent` (`to` = `<agent>/bgp-peer`).
pub fn write_control_eor(out: &mut BytesMut, agent: &str) {
    write_eor_message(out, ns::CONTROL_JID, &agent_jid(agent));
}

/// A route `<message>` as the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// Routes for one table.
    Routes {
        /// The routing instance (`items/@node` after `AFI/SAFI/`).
        vrf: String,
        /// inet, labeled inet or inet6.
        family: Family,
        /// `(item/@id, entry)`, empty when any retract is present.
        items: Vec<(String, RouteEntry)>,
        /// The retracted prefixes.
        retracts: Vec<Prefix>,
    },
    /// End of RIB: `items/@node` = `0/0/EndOfRib`, or no `<items>` at all.
    EndOfRib,
}

impl RouteEvent {
    /// Parses a `<message>` from control the way the agent does (`ReceiveBgpMessage`,
    /// `ReceiveV4V6Update`): no `<items>` → end-of-RIB; a `<retract>` anywhere → retract
    /// mode, items ignored, each retract's first attribute is the prefix; otherwise all
    /// `<item>`s must parse or the whole message is dropped (generated `ItemsType`).
    ///
    /// Deviations: the EoR node `0/0/EndOfRib` is recognised (the C++ agent's in-place
    /// tokenising defeats its own test, §5.8), and a retract id that is not a prefix
    /// rejects the message instead of being skipped with a log line.
    pub fn from_message(msg: &Element) -> Result<Self, PayloadError> {
        let Some(items) = msg.find_descendant("items") else {
            return Ok(RouteEvent::EndOfRib);
        };
        let node = items.get_attr("node").unwrap_or("");
        if node == ns::EOR_NODE {
            return Ok(RouteEvent::EndOfRib);
        }
        let (afi, safi, vrf) = split_node(node);
        let family = Family::from_afi_safi(c_atoi(afi), c_atoi(safi))
            .filter(|f| f.is_unicast())
            .ok_or_else(|| PayloadError::UnsupportedFamily {
                node: node.to_owned(),
            })?;
        let vrf = vrf.to_owned();
        if msg.find_descendant("retract").is_some() {
            let retracts = items
                .children()
                .filter(|c| c.local_name() == "retract")
                .map(|r| {
                    let id = r.attrs().next().map_or("", |(_, v)| v);
                    Prefix::parse_field("retract/@id", id)
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(RouteEvent::Routes {
                vrf,
                family,
                items: Vec::new(),
                retracts,
            });
        }
        let items = items
            .children()
            .filter(|c| c.local_name() == "item")
            .map(|item| {
                let id = item.get_attr("id").unwrap_or("").to_owned();
                RouteEntry::from_item(item).map(|e| (id, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteEvent::Routes {
            vrf,
            family,
            items,
            retracts: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contrail::Disposition;
    use crate::contrail::route::tests::{parse, sample_entry};
    use crate::xml::NsScope;

    const VRF: &str = "default-domain:demo:net-a:net-a";

    fn event(bytes: &[u8]) -> RouteEvent {
        let el = Element::parse(bytes, &NsScope::default()).expect("well-formed");
        RouteEvent::from_message(&el).expect("valid")
    }

    fn entry_for(i: u32) -> RouteEntry {
        let mut e = sample_entry();
        e.nlri.prefix = Prefix::host(std::net::IpAddr::V4((0x0a01_0000 + i).into()));
        e
    }

    #[test]
    fn retract_message_is_byte_exact() {
        let mut out = BytesMut::new();
        let p: Prefix = "10.1.1.4/32".parse().expect("prefix");
        write_retracts(&mut out, "compute-1", Family::Inet, VRF, &[p]).expect("fits");
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            "\n<message from=\"network-control@contrailsystems.com\" to=\"compute-1/bgp-peer\">\n\
             \t<event xmlns=\"http://jabber.org/protocol/pubsub\">\n\
             \t\t<items node=\"1/1/default-domain:demo:net-a:net-a\">\n\
             \t\t\t<retract id=\"10.1.1.4/32\" />\n\
             \t\t</items>\n\
             \t</event>\n\
             </message>\n"
        );
        assert_eq!(
            event(&out),
            RouteEvent::Routes {
                vrf: VRF.into(),
                family: Family::Inet,
                items: vec![],
                retracts: vec![p]
            }
        );
    }

    #[test]
    fn item_message_layout_and_round_trip() {
        let mut out = BytesMut::new();
        let mut e = sample_entry();
        e.nlri.prefix = "10.1.1.4/32".parse().expect("prefix");
        write_items(
            &mut out,
            "compute-1",
            Family::Inet,
            VRF,
            std::slice::from_ref(&e),
        )
        .expect("fits");
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(text.starts_with(
            "\n<message from=\"network-control@contrailsystems.com\" to=\"compute-1/bgp-peer\">\n\
             \t<event xmlns=\"http://jabber.org/protocol/pubsub\">\n\
             \t\t<items node=\"1/1/default-domain:demo:net-a:net-a\">\n\
             \t\t\t<item id=\"10.1.1.4/32\">\n\
             \t\t\t\t<entry>\n\
             \t\t\t\t\t<nlri>\n\
             \t\t\t\t\t\t<af>1</af>\n"
        ));
        assert!(text.contains("\t\t\t\t\t<mobility sticky=\"false\" seqno=\"0\" />\n"));
        assert!(text.ends_with(
            "\t\t\t\t\t<sub-protocol>interface</sub-protocol>\n\
             \t\t\t\t</entry>\n\
             \t\t\t</item>\n\
             \t\t</items>\n\
             \t</event>\n\
             </message>\n"
        ));
        assert_eq!(
            event(&out),
            RouteEvent::Routes {
                vrf: VRF.into(),
                family: Family::Inet,
                items: vec![("10.1.1.4/32".into(), e)],
                retracts: vec![]
            }
        );
    }

    #[test]
    fn inet6_round_trip() {
        let mut e = sample_entry();
        e.nlri.af = 2;
        e.nlri.prefix = "fd00::4/128".parse().expect("prefix");
        let mut out = BytesMut::new();
        write_items(
            &mut out,
            "c",
            Family::Inet6,
            "blue",
            std::slice::from_ref(&e),
        )
        .expect("fits");
        assert!(
            std::str::from_utf8(&out)
                .expect("utf8")
                .contains("<item id=\"fd00::4/128\">")
        );
        let RouteEvent::Routes {
            family, items, vrf, ..
        } = event(&out)
        else {
            panic!("routes expected");
        };
        assert_eq!((family, vrf.as_str()), (Family::Inet6, "blue"));
        assert_eq!(items, vec![("fd00::4/128".to_owned(), e)]);
    }

    #[test]
    fn control_eor_is_byte_exact() {
        let mut out = BytesMut::new();
        write_control_eor(&mut out, "compute-1");
        assert_eq!(
            &out[..],
            b"\n<message from=\"network-control@contrailsystems.com\" to=\"compute-1/bgp-peer\">\n\t<event xmlns=\"http://jabber.org/protocol/pubsub\">\n<items node=\"0/0/EndOfRib\"></items>\n\t</event>\n</message>\n"
        );
        assert_eq!(event(&out), RouteEvent::EndOfRib);
        assert_eq!(event(b"<message><event/></message>"), RouteEvent::EndOfRib);
    }

    #[test]
    fn retract_wins_over_items() {
        let msg = parse(
            "<message><event><items node='1/1/blue'>\
             <item id='10.0.0.1/32'><entry><nlri><af>1</af><safi>1</safi><address>10.0.0.1/32</address></nlri></entry></item>\
             <retract id='10.0.0.2/32'/></items></event></message>",
        );
        assert_eq!(
            RouteEvent::from_message(&msg).expect("valid"),
            RouteEvent::Routes {
                vrf: "blue".into(),
                family: Family::Inet,
                items: vec![],
                retracts: vec!["10.0.0.2/32".parse().expect("prefix")]
            }
        );
    }

    #[test]
    fn bad_messages_dropped_whole() {
        // One bad item rejects the whole message (generated ItemsType parse).
        let msg = parse(
            "<message><event><items node='1/1/blue'>\
             <item id='a'><entry><nlri><af>1</af><safi>1</safi><address>10.0.0.1/32</address></nlri></entry></item>\
             <item id='b'><entry><nlri><af>1</af><safi>1</safi><address>10.0.0.2/32</address></nlri><med>x</med></entry></item>\
             </items></event></message>",
        );
        let err = RouteEvent::from_message(&msg).expect_err("bad med");
        assert!(matches!(
            err,
            PayloadError::Integer {
                field: "entry/med",
                ..
            }
        ));
        let evpn = parse("<message><event><items node='25/242/blue'/></event></message>");
        let err = RouteEvent::from_message(&evpn).expect_err("evpn not handled here");
        assert_eq!(err.disposition(), Disposition::DropStanza);
        let bad_retract = parse(
            "<message><event><items node='1/1/blue'><retract id='x'/></items></event></message>",
        );
        assert!(matches!(
            RouteEvent::from_message(&bad_retract),
            Err(PayloadError::Prefix {
                field: "retract/@id",
                ..
            })
        ));
    }

    #[test]
    fn chunking_limits() {
        let reach = |n: u32| (0..n).map(|i| RouteChange::Reach(Box::new(entry_for(i))));
        let unreach = |n: u32| (0..n).map(|i| RouteChange::Unreach(entry_for(i).nlri.prefix));

        assert!(encode_changes("c", Family::Inet, "blue", &[]).is_empty());

        let msgs = encode_changes("c", Family::Inet, "blue", &reach(32).collect::<Vec<_>>());
        assert_eq!(msgs.len(), 1);

        let msgs = encode_changes("c", Family::Inet, "blue", &reach(33).collect::<Vec<_>>());
        assert_eq!(msgs.len(), 2);
        let counts: Vec<usize> = msgs
            .iter()
            .map(|m| match event(m) {
                RouteEvent::Routes { items, .. } => items.len(),
                RouteEvent::EndOfRib => 0,
            })
            .collect();
        assert_eq!(counts, [32, 1]);

        let msgs = encode_changes("c", Family::Inet, "blue", &unreach(256).collect::<Vec<_>>());
        assert_eq!(msgs.len(), 1);
        let msgs = encode_changes("c", Family::Inet, "blue", &unreach(257).collect::<Vec<_>>());
        let counts: Vec<usize> = msgs
            .iter()
            .map(|m| match event(m) {
                RouteEvent::Routes { retracts, .. } => retracts.len(),
                RouteEvent::EndOfRib => 0,
            })
            .collect();
        assert_eq!(counts, [256, 1]);

        // Mixed: order kept, never both kinds in one message.
        let mixed: Vec<RouteChange> = reach(2).chain(unreach(3)).chain(reach(1)).collect();
        let kinds: Vec<(usize, usize)> = encode_changes("c", Family::Inet, "blue", &mixed)
            .iter()
            .map(|m| match event(m) {
                RouteEvent::Routes {
                    items, retracts, ..
                } => (items.len(), retracts.len()),
                RouteEvent::EndOfRib => (0, 0),
            })
            .collect();
        assert_eq!(kinds, [(2, 0), (0, 3), (1, 0)]);

        // The single-message writers refuse more than the bound.
        let mut out = BytesMut::new();
        let too_many: Vec<RouteEntry> = (0..33).map(entry_for).collect();
        assert_eq!(
            write_items(&mut out, "c", Family::Inet, "blue", &too_many),
            Err(PayloadError::TooMany {
                what: "items",
                count: 33,
                max: 32
            })
        );
        assert!(out.is_empty());
    }
}
