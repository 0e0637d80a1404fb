//! One agent's session: negotiation, identity checks, the BGP channel (subscribe,
//! publish/collection, spec §6), fan-out delivery and end-of-RIB.
//!
//! A stream whose header says `jabber:client` is an RFC 6120 client instead: it
//! negotiates SASL EXTERNAL and binding ([`RfcProfile::Client`]), is known by its bound
//! JID, and speaks XEP-0060 ([`crate::rfc`]) to the same table.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use xmpp_core::contrail::message::{RouteChange, encode_changes, write_control_eor};
use xmpp_core::contrail::pubsub::{AgentRequest, PairOutcome, PublishPairer, RouteUpdate};
use xmpp_core::contrail::{Family, RouteEntry};
use xmpp_core::io::{Incoming, XmppStream, accept_with};
use xmpp_core::jid::Jid;
use xmpp_core::negotiate::{RfcProfile, ServerPolicy};
use xmpp_core::stanza::{Iq, Message, ns};
use xmpp_core::stream::{Condition, Dialect};
use xmpp_core::xml::Element;
use xmpp_core::{Error, tls};

use crate::rib::{Delivery, MembershipError, RouteKey, SessionId};
use crate::server::{Path, SessionHandle, SessionStats, Shared, lock};

/// The fabric VRF: the master instance, where unicast labels are zero (spec §6.4).
pub const FABRIC_VRF: &str = "default-domain:default-project:ip-fabric:__default__";

/// Deliveries drained from the queue into one write.
const BATCH: usize = 1024;

/// Runs one accepted connection to its end.
pub(crate) async fn run(shared: Arc<Shared>, tcp: TcpStream, remote: SocketAddr) {
    let id = shared.next_id();
    let span = info_span!("session", id, peer = %remote);
    async move {
        let local = tcp.local_addr().ok();
        let settings = &shared.settings;
        let policy = ServerPolicy {
            tls_required: settings.tls.is_some(),
            host_name: settings.hostname.clone(),
            limits: settings.limits,
        };
        let tls_cfg = settings.tls.as_ref().map(tls::ServerTls::current);
        let negotiated = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = accept_with(tcp, policy, RfcProfile::Client, tls_cfg, settings.timing) => r,
        };
        let mut stream = match negotiated {
            Ok(s) => s,
            Err(e) => {
                shared
                    .metrics
                    .negotiation_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, tls_required = settings.tls.is_some(),
                    "session refused during stream negotiation");
                return;
            }
        };
        let name = match admit(&shared, &stream, id, remote) {
            Ok(name) => name,
            Err(e) => {
                shared.metrics.identity_refusals.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "session refused");
                stream.close(Some(&e)).await;
                return;
            }
        };
        let (tx, rx) = mpsc::channel(settings.send_queue_len);
        let tls_version = stream
            .transport()
            .tls_version()
            .map(|v| format!("{v:?}"));
        let handle = Arc::new(SessionHandle {
            id,
            name: name.clone(),
            remote,
            local,
            tls: stream.negotiated().tls,
            tls_version,
            dialect: stream.negotiated().dialect,
            tx,
            kill: CancellationToken::new(),
            kill_reason: Mutex::new(None),
            stats: SessionStats {
                routes_received: Default::default(),
                routes_sent: Default::default(),
                stanzas_received: Default::default(),
                last_event: Mutex::new("xmsm::EvXmppOpen"),
                established_at: SystemTime::now(),
            },
        });
        shared.register(handle.clone());
        shared.metrics.established.fetch_add(1, Ordering::Relaxed);
        info!(agent = %name, tls = handle.tls, tls_version = handle.tls_version.as_deref().unwrap_or("-"),
            dialect = %handle.dialect, "session up");

        let rfc_jid = match handle.dialect {
            Dialect::Rfc => stream.negotiated().jid.clone(),
            Dialect::Contrail => None,
        };
        let mut session = Session {
            shared: &shared,
            handle: &handle,
            pairer: PublishPairer::new(),
            last_activity: Instant::now(),
            rfc_jid,
        };
        let result = session.serve(&mut stream, rx).await;
        let reason = match &result {
            Ok(()) => "shutdown".to_owned(),
            Err(e) => lock(&handle.kill_reason)
                .clone()
                .unwrap_or_else(|| e.to_string()),
        };
        // A kill from outside (slow consumer) is reported as a policy violation to the
        // peer but is counted under its own metric, not here.
        let violation = matches!(
            result,
            Err(Error::NotWellFormed(_)
                | Error::RestrictedXml(_)
                | Error::PolicyViolation(_)
                | Error::BadFormat(_)
                | Error::InvalidNamespace(_)
                | Error::Unexpected { .. })
        );
        if violation && !handle.kill.is_cancelled() {
            shared.metrics.violations.fetch_add(1, Ordering::Relaxed);
        }
        shared.unregister(&handle, &reason);
        info!(agent = %name, reason = %reason, "session down");
        let err = result.err().or(Some(Error::Shutdown));
        stream.close(err.as_ref()).await;
    }
    .instrument(span)
    .await;
}

/// Checks who the peer says it is: a name is required; with TLS, the name must be the
/// certificate's CN or a subject alternative name (unless `xmpp_check_peer_name=false`);
/// and the name must not be held by another live session (spec §5.6).
///
/// An RFC client's name is its bound full JID: SASL EXTERNAL already tied it to the
/// certificate, so only the uniqueness claim remains (a second session with the same full
/// JID is refused with `conflict`, RFC 6120 §4.9.3.3, as a duplicate agent is).
fn admit(
    shared: &Shared,
    stream: &XmppStream<TcpStream>,
    id: SessionId,
    remote: SocketAddr,
) -> Result<String, Error> {
    if let Some(jid) = &stream.negotiated().jid {
        let name = jid.to_string();
        shared
            .claim_name(&name, id, remote.ip())
            .map_err(|detail| Error::Identity {
                detail,
                condition: Condition::Conflict,
            })?;
        return Ok(name);
    }
    let header = &stream.negotiated().peer_header;
    let name = header.from.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(Error::Identity {
            detail: "the stream header has no 'from' (agent name)".into(),
            condition: Condition::InvalidFrom,
        });
    }
    if stream.negotiated().tls && shared.settings.check_peer_name {
        let certs = stream.transport().peer_certificates().unwrap_or(&[]);
        let identity = tls::peer_identity(certs).map_err(|e| Error::Identity {
            detail: e.to_string(),
            condition: Condition::InvalidFrom,
        })?;
        if !identity.matches_name(&name) {
            return Err(Error::Identity {
                detail: format!(
                    "agent name {name:?} matches neither the CN nor a subject alternative name \
                     of its certificate ({identity:?}); set xmpp_check_peer_name=false only for \
                     legacy certificates"
                ),
                condition: Condition::InvalidFrom,
            });
        }
    }
    shared
        .claim_name(&name, id, remote.ip())
        .map_err(|detail| Error::Identity {
            detail,
            condition: Condition::Conflict,
        })?;
    Ok(name)
}

enum Ev {
    In(Result<Incoming, Error>),
    Out(Option<Delivery<Path>>),
    EorCheck,
    Killed,
    Shutdown,
}

struct Session<'a> {
    shared: &'a Shared,
    handle: &'a SessionHandle,
    pairer: PublishPairer,
    /// Last IQ or message received or sent (the end-of-RIB quiet period, spec §5.8).
    last_activity: Instant,
    /// The bound JID of an RFC 6120 client; `None` for a Contrail agent.
    rfc_jid: Option<Jid>,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        stream: &mut XmppStream<TcpStream>,
        mut rx: mpsc::Receiver<Delivery<Path>>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        // End-of-RIB is a Contrail marker (spec §5.8); XEP-0060 has no such notion, so RFC
        // clients never get one.
        let mut eor_sent = self.rfc_jid.is_some();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let ev = tokio::select! {
                biased;
                () = self.handle.kill.cancelled() => Ev::Killed,
                () = self.shared.shutdown.cancelled() => Ev::Shutdown,
                d = rx.recv() => Ev::Out(d),
                r = stream.next() => Ev::In(r),
                _ = tick.tick(), if !eor_sent => Ev::EorCheck,
            };
            match ev {
                Ev::Killed => return Err(self.killed()),
                Ev::Shutdown => return Ok(()),
                Ev::Out(None) => return Ok(()),
                Ev::Out(Some(first)) => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(d) => batch.push(d),
                            Err(_) => break,
                        }
                    }
                    self.send_deliveries(stream, &batch);
                    self.flush(stream).await?;
                }
                Ev::In(r) => match r? {
                    Incoming::Keepalive => self.event("xmsm::EvXmppKeepalive"),
                    Incoming::Element(el) => {
                        self.handle
                            .stats
                            .stanzas_received
                            .fetch_add(1, Ordering::Relaxed);
                        self.last_activity = Instant::now();
                        let (reply, mine) = match &self.rfc_jid {
                            Some(jid) => {
                                let peer = crate::rfc::RfcPeer {
                                    shared: self.shared,
                                    handle: self.handle,
                                    jid,
                                };
                                let o = peer.on_element(&el)?;
                                (o.reply, o.mine)
                            }
                            None => (None, self.on_element(&el)?),
                        };
                        if let Some(reply) = &reply {
                            stream.queue(&reply.to_element());
                        }
                        if !mine.is_empty() {
                            self.send_deliveries(stream, &mine);
                        }
                        if reply.is_some() || !mine.is_empty() {
                            self.flush(stream).await?;
                        }
                    }
                },
                Ev::EorCheck => {
                    let now = Instant::now();
                    let s = &self.shared.settings;
                    if now.duration_since(self.last_activity) >= s.eor_quiet
                        || now.duration_since(started) >= s.eor_max
                    {
                        write_control_eor(stream.out_mut(), &self.handle.name);
                        self.flush(stream).await?;
                        eor_sent = true;
                        debug!("end-of-RIB sent");
                    }
                }
            }
        }
    }

    /// Writes what is queued unless the session is killed or the node shuts down first.
    /// `XmppStream::flush` waits up to the hold time for a peer that stopped reading; a
    /// session stuck there would notice neither its kill (slow consumer) nor shutdown,
    /// and would keep its name, its routes and its queue until then.
    async fn flush(&self, stream: &mut XmppStream<TcpStream>) -> Result<(), Error> {
        tokio::select! {
            biased;
            () = self.handle.kill.cancelled() => Err(self.killed()),
            () = self.shared.shutdown.cancelled() => Err(Error::Shutdown),
            r = stream.flush() => r,
        }
    }

    fn killed(&self) -> Error {
        let reason = lock(&self.handle.kill_reason).clone().unwrap_or_default();
        Error::PolicyViolation(reason)
    }

    fn event(&self, name: &'static str) {
        *lock(&self.handle.stats.last_event) = name;
    }

    /// Handles one received element; returns deliveries for this session itself (the
    /// initial dump of a subscribed VRF).
    fn on_element(&mut self, el: &Element) -> Result<Vec<Delivery<Path>>, Error> {
        if Iq::matches(el) {
            self.event("xmsm::EvXmppIqStanza");
            if el.get_attr("type") != Some("set") {
                debug!(iq_type = ?el.get_attr("type"), "ignoring iq that is not a set");
                return Ok(Vec::new());
            }
            let req = match AgentRequest::from_iq(el) {
                Ok(r) => r,
                Err(e) => {
                    // The C++ control node aborts on an IQ it cannot parse; we drop it.
                    warn!(error = %e, "dropping iq");
                    return Ok(Vec::new());
                }
            };
            return match self.pairer.push(req) {
                PairOutcome::Pass(req) => self.on_membership(req),
                PairOutcome::Deliver(update) => self.on_update(update).map(|()| Vec::new()),
                PairOutcome::Buffered { replaced } => {
                    if let Some(node) = replaced {
                        warn!(%node, "publish without collection replaced by a newer one");
                    }
                    Ok(Vec::new())
                }
                PairOutcome::Discarded(d) => {
                    warn!(discard = ?d, "discarding publish/collection");
                    Ok(Vec::new())
                }
            };
        }
        if Message::matches(el) {
            self.event("xmsm::EvXmppMessageStanza");
            let eor = el
                .find_descendant("items")
                .is_some_and(|i| i.get_attr("node") == Some(ns::EOR_NODE));
            if eor {
                info!("agent end-of-RIB received");
            } else {
                debug!("ignoring message from agent");
            }
            return Ok(Vec::new());
        }
        debug!(element = el.name(), "ignoring element");
        Ok(Vec::new())
    }

    fn on_membership(&mut self, req: AgentRequest) -> Result<Vec<Delivery<Path>>, Error> {
        let id = self.handle.id;
        let result = match req {
            AgentRequest::Subscribe {
                vrf, instance_id, ..
            } => {
                info!(%vrf, ?instance_id, "subscribe");
                self.shared
                    .with_rib(id, |rib| rib.subscribe(id, &vrf, instance_id))
            }
            AgentRequest::Unsubscribe { vrf } => {
                info!(%vrf, "unsubscribe");
                self.shared.with_rib(id, |rib| rib.unsubscribe(id, &vrf))
            }
            AgentRequest::Publish { .. } | AgentRequest::Collection { .. } => Ok(Vec::new()),
        };
        result.map_err(membership)
    }

    fn on_update(&mut self, update: RouteUpdate) -> Result<(), Error> {
        if update.is_end_of_rib() {
            info!("agent end-of-RIB received (iq form)");
            return Ok(());
        }
        let Some(family) = update.family() else {
            warn!(node = %update.node, "dropping publish with an unknown family");
            return Ok(());
        };
        if !matches!(family, Family::Inet | Family::Inet6) {
            warn!(node = %update.node, %family, "dropping publish: family not supported");
            return Ok(());
        }
        let master = update.vrf == FABRIC_VRF;
        for item in update.route_entries() {
            let checked = item.and_then(|e| {
                if update.add {
                    e.validate_publish(family, master)?;
                } else {
                    e.validate_withdraw(family)?;
                }
                Ok(e)
            });
            let entry = match checked {
                Ok(e) => e,
                Err(e) => {
                    self.shared
                        .metrics
                        .items_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(vrf = %update.vrf, node = %update.node, error = %e, "dropping route item");
                    continue;
                }
            };
            let key = RouteKey {
                family,
                prefix: entry.nlri.prefix,
            };
            let path = update.add.then(|| Arc::new(entry));
            update_route(self.shared, self.handle, &update.vrf, key, path).map_err(membership)?;
        }
        Ok(())
    }

    /// Encodes deliveries into route messages (≤ 32 items / ≤ 256 retracts each, one VRF
    /// and family per message, spec §6.6) in the stream's output buffer.
    fn send_deliveries(&mut self, stream: &mut XmppStream<TcpStream>, batch: &[Delivery<Path>]) {
        let sent = match &self.rfc_jid {
            Some(jid) => {
                crate::rfc::write_events(stream.out_mut(), jid.domain(), &jid.to_string(), batch)
            }
            None => encode_deliveries(stream.out_mut(), &self.handle.name, batch),
        };
        if sent > 0 {
            // Spec §5.8: the end-of-RIB waits for a channel quiet in both directions.
            self.last_activity = Instant::now();
        }
        self.handle
            .stats
            .routes_sent
            .fetch_add(sent, Ordering::Relaxed);
        self.shared
            .metrics
            .routes_sent
            .fetch_add(sent, Ordering::Relaxed);
    }
}

fn membership(e: MembershipError) -> Error {
    Error::Unexpected {
        element: "iq".into(),
        context: match e {
            MembershipError::DuplicateSubscribe(_) => "membership violation: duplicate subscribe",
            MembershipError::NotSubscribed(_) => {
                "membership violation: unsubscribe without subscribe"
            }
            MembershipError::PublishWithoutSubscribe(_) => {
                "membership violation: publish without subscribe"
            }
            MembershipError::NoInstanceId(_) => {
                "membership violation: publish in a VRF subscribed without instance-id"
            }
        },
        condition: Condition::PolicyViolation,
    }
}

/// The entry sent for a route as one subscriber sees it: the first path's attributes with
/// one next-hop per path (ECMP), router MACs cleared as contrail-control does (§6.6).
fn merged_entry(paths: &[(SessionId, Path)]) -> Option<RouteEntry> {
    let (_, first) = paths.first()?;
    let mut entry = RouteEntry::clone(first);
    entry.next_hops = paths
        .iter()
        .flat_map(|(_, p)| p.next_hops.iter().cloned())
        .map(|mut nh| {
            nh.mac.clear();
            nh
        })
        .collect();
    Some(entry)
}

/// Applies one path change of `handle`'s session to the table (fan-out included) and
/// counts an accepted add: the common step of an agent's publish/collection pair and an
/// RFC client's XEP-0060 publish or retract.
pub(crate) fn update_route(
    shared: &Shared,
    handle: &SessionHandle,
    vrf: &str,
    key: RouteKey,
    path: Option<Path>,
) -> Result<(), MembershipError> {
    let id = handle.id;
    let add = path.is_some();
    shared.with_rib(id, |rib| rib.update(id, vrf, key, path))?;
    // Counted once the table took it: a route refused for membership is not "received".
    if add {
        handle.stats.routes_received.fetch_add(1, Ordering::Relaxed);
        shared
            .metrics
            .routes_received
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Groups consecutive deliveries by (VRF, family) and writes them as route messages.
/// Returns how many items and retracts were written.
pub fn encode_deliveries(out: &mut BytesMut, agent: &str, batch: &[Delivery<Path>]) -> u64 {
    group_deliveries(batch, |vrf, family, changes| {
        for m in encode_changes(agent, family, vrf, changes) {
            out.extend_from_slice(&m);
        }
    })
}

/// Splits a batch of deliveries into runs of one (VRF, family), turns each into the
/// changes one subscriber sees (ECMP paths merged), and hands each run to `write`.
/// Returns how many changes there were.
pub(crate) fn group_deliveries(
    batch: &[Delivery<Path>],
    mut write: impl FnMut(&str, Family, &[RouteChange]),
) -> u64 {
    let mut sent = 0;
    let mut i = 0;
    while i < batch.len() {
        let (vrf, family) = match &batch[i] {
            Delivery::Reach { vrf, key, .. } | Delivery::Unreach { vrf, key, .. } => {
                (vrf.clone(), key.family)
            }
        };
        let mut changes = Vec::new();
        while let Some(d) = batch.get(i) {
            let (v, k) = match d {
                Delivery::Reach { vrf, key, .. } | Delivery::Unreach { vrf, key, .. } => (vrf, key),
            };
            if *v != vrf || k.family != family {
                break;
            }
            match d {
                Delivery::Reach { paths, .. } => {
                    if let Some(e) = merged_entry(paths) {
                        changes.push(RouteChange::Reach(Box::new(e)));
                    }
                }
                Delivery::Unreach { key, .. } => changes.push(RouteChange::Unreach(key.prefix)),
            }
            i += 1;
        }
        sent += changes.len() as u64;
        write(&vrf, family, &changes);
    }
    sent
}
