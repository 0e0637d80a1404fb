//! Sessions in the RFC 6120 profile: standard XMPP clients (slixmpp, our own RFC client)
//! that authenticated with SASL EXTERNAL and bound a resource.
//!
//! What such a client can do:
//! * every IQ `get`/`set` gets exactly one `result` or `error` (RFC 6120 §8.2.3): XEP-0199
//!   ping and the legacy session IQ are answered with a result, payloads served nowhere
//!   with `service-unavailable` (§8.4);
//! * XEP-0060 on VRF nodes, the node name being the VRF (routing instance):
//!   `subscribe` → the subscription result, then the VRF's current routes and every later
//!   change as event notifications; `unsubscribe`; `publish` with `<item><entry>…` route
//!   items (exactly what an agent publishes, spec §6.4) to node `AFI/SAFI/VRF[/prefix]`,
//!   taken into the table as an agent's publish + collection(associate) pair; `retract`
//!   of item ids (prefixes) on node `AFI/SAFI/VRF`, a collection(dissociate);
//! * messages and presence are accepted and ignored (RFC 6120 §10.3.1 lets a server
//!   ignore a message it has no handler for).
//!
//! The table's rules are the agents' (spec §6.5): routes are accepted only in a VRF the
//! client subscribed to. A violation that closes an agent's session here gets the IQ a
//! `forbidden` error instead: a standard client can recover from that.
//!
//! Event layout (a decision, see `write_events`): the standard XEP-0060 form, namespace
//! `http://jabber.org/protocol/pubsub#event`, compact, `from` = the stream domain, `to` =
//! the client's full JID, so any XMPP library dispatches it as a pubsub event; the body is
//! the one agents get — `items/@node` = `AFI/SAFI/VRF`, `<item id='prefix'><entry>`, or
//! `<retract id='prefix'/>`, at most 32 items or 256 retracts per message.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tracing::{debug, info, warn};
use xmpp_core::Error;
use xmpp_core::contrail::message::{MAX_ITEMS_PER_MESSAGE, MAX_RETRACTS_PER_MESSAGE, RouteChange};
use xmpp_core::contrail::{Family, Prefix, RouteEntry};
use xmpp_core::jid::Jid;
use xmpp_core::stanza::pubsub::{
    PubsubRequest, not_subscribed, publish_result, subscription_result, write_event,
};
use xmpp_core::stanza::{Iq, Message, StanzaCondition, StanzaError, ns, ping};
use xmpp_core::stream::Condition;
use xmpp_core::xml::Element;

use crate::rib::{Delivery, MembershipError, RouteKey};
use crate::server::{Path, SessionHandle, Shared};
use crate::session::{FABRIC_VRF, group_deliveries, update_route};

/// The instance id recorded for RFC subscribers. Agents send their VRF index
/// (`<instance-id>`), which the table only uses to allow publishing in the VRF; a standard
/// client has no such index, and any value grants the same right.
const RFC_INSTANCE_ID: i64 = 0;

/// What one received element asks of the session.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The IQ answer to write first.
    pub reply: Option<Iq>,
    /// Deliveries for this session itself (the initial dump of a subscribed VRF), written
    /// after the reply.
    pub mine: Vec<Delivery<Path>>,
}

impl Outcome {
    fn reply(iq: Iq) -> Self {
        Self {
            reply: Some(iq),
            mine: Vec::new(),
        }
    }
}

/// One RFC client's view: its JID and the session it runs in.
pub(crate) struct RfcPeer<'a> {
    pub shared: &'a Shared,
    pub handle: &'a SessionHandle,
    /// The bound full JID.
    pub jid: &'a Jid,
}

impl RfcPeer<'_> {
    /// Handles one top-level element from the client.
    pub fn on_element(&self, el: &Element) -> Result<Outcome, Error> {
        if Iq::matches(el) {
            let iq = Iq::from_element(el)?;
            if !iq.is_request() {
                debug!(id = ?iq.id, kind = iq.kind.as_str(), "ignoring iq response");
                return Ok(Outcome::default());
            }
            return Ok(self.on_request(&iq));
        }
        if Message::matches(el) || el.local_name() == "presence" {
            debug!(element = el.name(), "ignoring message or presence");
            return Ok(Outcome::default());
        }
        // RFC 6120 §4.9.3.22: only iq, message and presence are stanzas of jabber:client.
        Err(Error::Unexpected {
            element: el.name().to_owned(),
            context: "in a jabber:client stream",
            condition: Condition::UnsupportedStanzaType,
        })
    }

    fn on_request(&self, iq: &Iq) -> Outcome {
        if ping::is_ping(iq) || ping::is_session(iq) {
            return Outcome::reply(iq.result());
        }
        match PubsubRequest::from_iq(iq) {
            Some(Ok(req)) => self.on_pubsub(iq, req),
            Some(Err(e)) => Outcome::reply(iq.error(&e)),
            None => {
                debug!(payload = ?iq.payload().map(Element::name), "no handler for iq");
                Outcome::reply(iq.error(&StanzaError::new(StanzaCondition::ServiceUnavailable)))
            }
        }
    }

    fn on_pubsub(&self, iq: &Iq, req: PubsubRequest) -> Outcome {
        let result = match req {
            PubsubRequest::Subscribe { node, jid } => self.subscribe(iq, &node, &jid),
            PubsubRequest::Unsubscribe { node, .. } => self.unsubscribe(iq, &node),
            PubsubRequest::Publish { node, items } => self.publish(iq, &node, items),
            PubsubRequest::Retract { node, ids } => self.retract(iq, &node, &ids),
            PubsubRequest::Create { .. } => {
                Err(StanzaError::new(StanzaCondition::FeatureNotImplemented)
                    .with_text("VRF nodes exist implicitly: subscribe or publish to them")
                    .with_app(
                        Element::with_ns("unsupported", ns::PUBSUB_ERRORS)
                            .attr("feature", "create-nodes"),
                    ))
            }
        };
        match result {
            Ok(o) => o,
            Err(e) => Outcome::reply(iq.error(&e)),
        }
    }

    fn subscribe(&self, iq: &Iq, vrf: &str, jid: &str) -> Result<Outcome, StanzaError> {
        // XEP-0060 §6.1.3.1: one may only subscribe oneself (bare or full JID).
        if !jid.is_empty() {
            let ok = Jid::parse(jid).is_ok_and(|j| j == *self.jid || j == self.jid.to_bare());
            if !ok {
                return Err(StanzaError::new(StanzaCondition::BadRequest)
                    .with_text(format!("{jid} is not this session's JID"))
                    .with_app(Element::with_ns("invalid-jid", ns::PUBSUB_ERRORS)));
            }
        }
        let id = self.handle.id;
        let mine = match self
            .shared
            .with_rib(id, |rib| rib.subscribe(id, vrf, Some(RFC_INSTANCE_ID)))
        {
            Ok(mine) => mine,
            // XEP-0060 §6.1.6: a repeated subscription returns the existing one.
            Err(MembershipError::DuplicateSubscribe(_)) => Vec::new(),
            Err(e) => return Err(forbidden(&e)),
        };
        info!(%vrf, routes = mine.len(), "subscribe (XEP-0060)");
        let mut reply = iq.result();
        reply
            .children
            .push(subscription_result(vrf, &self.jid.to_string()));
        Ok(Outcome {
            reply: Some(reply),
            mine,
        })
    }

    fn unsubscribe(&self, iq: &Iq, vrf: &str) -> Result<Outcome, StanzaError> {
        let id = self.handle.id;
        match self.shared.with_rib(id, |rib| rib.unsubscribe(id, vrf)) {
            Ok(_) => {
                info!(%vrf, "unsubscribe (XEP-0060)");
                Ok(Outcome::reply(iq.result()))
            }
            Err(MembershipError::NotSubscribed(_)) => Err(not_subscribed()),
            Err(e) => Err(forbidden(&e)),
        }
    }

    fn publish(
        &self,
        iq: &Iq,
        node: &str,
        items: Vec<xmpp_core::stanza::pubsub::PubsubItem>,
    ) -> Result<Outcome, StanzaError> {
        let (family, vrf) = table_of(node)?;
        if items.is_empty() {
            return Err(pubsub_error(
                StanzaCondition::BadRequest,
                "item-required",
                "a route publish carries one <item><entry>",
            ));
        }
        let master = vrf == FABRIC_VRF;
        let mut ids = Vec::with_capacity(items.len());
        // Validate every item first: a publish is taken whole or not at all.
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            let mut el = Element::new("item");
            if let Some(p) = item.payload {
                el.push_child(p);
            }
            let entry = RouteEntry::from_item(&el)
                .and_then(|e| e.validate_publish(family, master).map(|()| e));
            match entry {
                Ok(e) => entries.push(e),
                Err(e) => {
                    self.shared
                        .metrics
                        .items_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(%vrf, %node, error = %e, "refusing published route item");
                    return Err(pubsub_error(
                        StanzaCondition::BadRequest,
                        "invalid-payload",
                        &e.to_string(),
                    ));
                }
            }
        }
        for entry in entries {
            let key = RouteKey {
                family,
                prefix: entry.nlri.prefix,
            };
            ids.push(entry.nlri.prefix.to_string());
            update_route(self.shared, self.handle, vrf, key, Some(Arc::new(entry)))
                .map_err(|e| forbidden(&e))?;
        }
        debug!(%vrf, %family, items = ids.len(), "publish (XEP-0060)");
        let mut reply = iq.result();
        reply.children.push(publish_result(node, &ids));
        Ok(Outcome::reply(reply))
    }

    fn retract(&self, iq: &Iq, node: &str, ids: &[String]) -> Result<Outcome, StanzaError> {
        let (family, vrf) = table_of(node)?;
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let prefix: Prefix = id.parse().map_err(|e: xmpp_core::contrail::PayloadError| {
                pubsub_error(StanzaCondition::BadRequest, "item-required", &e.to_string())
            })?;
            keys.push(RouteKey { family, prefix });
        }
        for key in keys {
            update_route(self.shared, self.handle, vrf, key, None).map_err(|e| forbidden(&e))?;
        }
        Ok(Outcome::reply(iq.result()))
    }
}

fn pubsub_error(condition: StanzaCondition, app: &str, text: &str) -> StanzaError {
    StanzaError::new(condition)
        .with_text(text)
        .with_app(Element::with_ns(app, ns::PUBSUB_ERRORS))
}

fn forbidden(e: &MembershipError) -> StanzaError {
    StanzaError::new(StanzaCondition::Forbidden).with_text(format!(
        "{e} (spec §6.5: subscribe to the VRF before publishing)"
    ))
}

/// The family and VRF named by a publish or retract node: `AFI/SAFI/VRF`, optionally
/// followed by `/prefix` (the agents' publish-node form, spec §6.3). VRF names are
/// `domain:project:network:instance` and never contain `/`.
fn table_of(node: &str) -> Result<(Family, &str), StanzaError> {
    let mut tokens = node.splitn(4, '/');
    let (afi, safi, vrf) = (tokens.next(), tokens.next(), tokens.next());
    let family = afi
        .zip(safi)
        .and_then(|(a, s)| Some((a.parse().ok()?, s.parse().ok()?)))
        .and_then(|(a, s)| Family::from_afi_safi(a, s));
    match (family, vrf) {
        (Some(f @ (Family::Inet | Family::Inet6)), Some(vrf)) if !vrf.is_empty() => Ok((f, vrf)),
        (Some(f), Some(_)) => Err(pubsub_error(
            StanzaCondition::FeatureNotImplemented,
            "unsupported",
            &format!("the {f} family is not served (inet 1/1 and inet6 2/1 are)"),
        )),
        _ => Err(
            StanzaError::new(StanzaCondition::ItemNotFound).with_text(format!(
                "node {node:?} is not AFI/SAFI/VRF[/prefix], e.g. 1/1/domain:project:net:net"
            )),
        ),
    }
}

/// Writes deliveries to an RFC subscriber as XEP-0060 event notifications (layout in the
/// module documentation). Returns how many items and retracts were written.
pub(crate) fn write_events(
    out: &mut BytesMut,
    from: &str,
    to: &str,
    batch: &[Delivery<Path>],
) -> u64 {
    group_deliveries(batch, |vrf, family, changes| {
        let node = format!("{}/{}/{vrf}", family.afi(), family.safi());
        let mut i = 0;
        // Same chunking as the agents' messages: runs of reaches (≤ 32) and of unreaches
        // (≤ 256), in order, so an add then a delete of one prefix keeps its meaning.
        while i < changes.len() {
            let reach = matches!(changes[i], RouteChange::Reach(_));
            let max = if reach {
                MAX_ITEMS_PER_MESSAGE
            } else {
                MAX_RETRACTS_PER_MESSAGE
            };
            let run: Vec<&RouteChange> = changes[i..]
                .iter()
                .take_while(|c| matches!(c, RouteChange::Reach(_)) == reach)
                .take(max)
                .collect();
            i += run.len();
            write_event(out, from, to, &node, |w| {
                for c in run {
                    match c {
                        RouteChange::Reach(e) => {
                            e.write_item(w, Some(&e.nlri.prefix.to_string()));
                        }
                        RouteChange::Unreach(p) => {
                            w.start("retract");
                            w.attr("id", &p.to_string());
                            w.end();
                        }
                    }
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_name_a_table() {
        let vrf = "default-domain:demo:net-a:net-a";
        for node in [
            format!("1/1/{vrf}"),
            format!("1/1/{vrf}/10.1.1.3/32"),
            format!("1/1/{vrf}/10.1.1.3/32/7"),
        ] {
            assert_eq!(table_of(&node).expect("table"), (Family::Inet, vrf));
        }
        assert_eq!(
            table_of(&format!("2/1/{vrf}/fd00::1/128")).expect("table"),
            (Family::Inet6, vrf)
        );
        let e = table_of(&format!("25/242/{vrf}")).expect_err("evpn");
        assert_eq!(e.condition, StanzaCondition::FeatureNotImplemented);
        for bad in ["", "1/1", "1/1/", "x/y/vrf", "9/9/vrf"] {
            assert!(table_of(bad).is_err(), "{bad}");
        }
    }
}
