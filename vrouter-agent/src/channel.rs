//! One XMPP channel to a control node: an actor that owns its connection. It connects with
//! the backoff of spec §5.4, negotiates (STARTTLS when enabled, never a plaintext fallback),
//! subscribes every local VRF, publishes every local route and the end-of-RIB marker after
//! each (re)connect, then keeps the control node in step with the local ports and stores
//! the routes it learns.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tracing::{Instrument, debug, info, info_span, warn};
use xmpp_core::Error;
use xmpp_core::contrail::message::RouteEvent;
use xmpp_core::contrail::pubsub::{
    write_eor_message_from_agent, write_route, write_subscribe, write_unsubscribe,
};
use xmpp_core::io::{Incoming, XmppStream, connect};
use xmpp_core::negotiate::ClientPolicy;
use xmpp_core::stanza::{Message, ns};
use xmpp_core::stream::Dialect;
use xmpp_core::xml::Limits;

use crate::agent::{Agent, lock};
use crate::ports::Desired;

/// Failed attempts after which a channel reports TIMEDOUT and, with spare servers, rotates
/// to the next one (spec §5.2 `kMaxAttempts`).
pub const MAX_ATTEMPTS: u32 = 4;

/// Keepalives received in Established after which the attempt counter resets (spec §5.2).
const KEEPALIVES_TO_RESET: u32 = 3;

/// The connect backoff of spec §5.4: attempt `a` waits `min(2^(min(a,6)−1), 30)` s, the
/// first (a = 0) 50 ms; with jitter of −10 % … +7 %.
pub fn backoff(attempts: u32) -> Duration {
    let base = if attempts == 0 {
        Duration::from_millis(50)
    } else {
        Duration::from_secs((1u64 << (attempts.min(6) - 1)).min(30))
    };
    let r = random_unit();
    // 0.90 + r·0.17 → 0.90 … 1.07
    base.mul_f64(0.90 + r * 0.17)
}

/// A uniformly distributed number in [0, 1) from the standard library's random hasher
/// keys (no extra dependency; this is jitter, not cryptography).
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Shuffles a server list (spec §5.7: the agent shuffles `CONTROL-NODE.servers`).
pub fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = (random_unit() * (i + 1) as f64) as usize;
        v.swap(i, j.min(i));
    }
}

/// The configured servers: the first `active` are in use, the rest are spares a timed-out
/// channel rotates to.
#[derive(Debug)]
pub struct ServerPool {
    servers: Vec<SocketAddr>,
    spares: std::sync::Mutex<VecDeque<SocketAddr>>,
}

impl ServerPool {
    /// A pool over `servers` with `active` in use.
    pub fn new(servers: Vec<SocketAddr>, active: usize) -> Self {
        let spares = servers.iter().skip(active).copied().collect();
        Self {
            servers,
            spares: std::sync::Mutex::new(spares),
        }
    }

    fn initial(&self, slot: usize) -> Option<SocketAddr> {
        self.servers.get(slot).copied()
    }

    /// Gives back `current` and takes the next spare, if there is one.
    fn rotate(&self, current: SocketAddr) -> SocketAddr {
        let mut s = lock(&self.spares);
        match s.pop_front() {
            Some(next) => {
                s.push_back(current);
                next
            }
            None => current,
        }
    }
}

/// Runs channel `slot` until shutdown.
pub async fn run(agent: Arc<Agent>, slot: usize, pool: Arc<ServerPool>) {
    let Some(mut server) = pool.initial(slot) else {
        return;
    };
    let mut attempts: u32 = 0;
    loop {
        let span = info_span!("channel", slot, server = %server);
        agent.set_state(slot, "Active", "xmsm::EvStart");
        if attempts >= MAX_ATTEMPTS {
            let next = pool.rotate(server);
            if next != server {
                warn!(slot, from = %server, to = %next, attempts,
                    "control node timed out; rotating to the next configured server");
                server = next;
                attempts = 0;
                agent.update_channel(slot, |c| c.controller_ip = server.to_string());
            }
        }
        let wait = backoff(attempts);
        tokio::select! {
            () = agent.shutdown.cancelled() => return,
            () = sleep(wait) => {}
        }
        attempts += 1;
        agent.update_channel(slot, |c| c.connect_attempts = attempts);
        let outcome = session(&agent, slot, server, attempts, &mut attempts)
            .instrument(span)
            .await;
        match outcome {
            Outcome::Shutdown => return,
            Outcome::Failed(e) => {
                agent
                    .metrics
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                agent.update_channel(slot, |c| c.last_error = Some(e.clone()));
            }
            Outcome::Down(e) => {
                agent.update_channel(slot, |c| {
                    c.last_error = Some(e.clone());
                    c.flap_count += 1;
                });
            }
        }
    }
}

enum Outcome {
    Shutdown,
    /// Never reached Established.
    Failed(String),
    /// Was established, then ended.
    Down(String),
}

async fn session(
    agent: &Arc<Agent>,
    slot: usize,
    server: SocketAddr,
    attempt: u32,
    attempts: &mut u32,
) -> Outcome {
    let s = &agent.settings;
    agent.set_state(slot, "Connect", "xmsm::EvConnectTimerExpired");
    // The TCP connect must complete within the next backoff step (spec §5.4).
    let budget = backoff(attempt).max(Duration::from_secs(1));
    let tcp = tokio::select! {
        () = agent.shutdown.cancelled() => return Outcome::Shutdown,
        r = timeout(budget, TcpStream::connect(server)) => r,
    };
    let tcp = match tcp {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            debug!(error = %e, "connect failed");
            return Outcome::Failed(format!("connect: {e}"));
        }
        Err(_) => return Outcome::Failed("connect timed out".into()),
    };
    agent.set_state(slot, "OpenSent", "xmsm::EvTcpConnected");
    let policy = ClientPolicy {
        dialect: Dialect::Contrail,
        tls_required: s.control_tls.is_some(),
        from: s.hostname.clone(),
        to: ns::CONTROL_JID.to_owned(),
        default_ns: s.subcluster_name.clone(),
        limits: Limits::default(),
    };
    let tls = match &s.control_tls {
        None => None,
        Some(t) => match xmpp_core::tls::server_name(&server.ip().to_string()) {
            Ok(name) => Some((t.current(), name)),
            Err(e) => return Outcome::Failed(e.to_string()),
        },
    };
    let negotiated = tokio::select! {
        () = agent.shutdown.cancelled() => return Outcome::Shutdown,
        r = connect(tcp, policy, tls, s.timing) => r,
    };
    let mut stream = match negotiated {
        Ok(st) => st,
        Err(e) => {
            warn!(error = %e, tls = s.control_tls.is_some(), "stream negotiation failed");
            return Outcome::Failed(e.to_string());
        }
    };
    let peer = stream.negotiated().peer_header.from.clone();
    info!(
        peer = peer.as_deref().unwrap_or("?"),
        tls = stream.negotiated().tls,
        "channel up"
    );
    agent
        .metrics
        .sessions_established
        .fetch_add(1, Ordering::Relaxed);
    agent.set_state(slot, "Established", "xmsm::EvXmppOpen");
    agent.update_channel(slot, |c| {
        c.peer_name = peer;
        c.last_error = None;
    });
    lock(&agent.fib).channel_up(slot);

    let result = established(agent, slot, &mut stream, attempts).await;
    lock(&agent.fib).channel_down(slot, std::time::Instant::now());
    match result {
        Ok(()) => {
            stream.close(None).await;
            Outcome::Shutdown
        }
        Err(e) => {
            warn!(error = %e, "channel down");
            agent.set_state(slot, "Active", "xmsm::EvTcpClose");
            stream.close(Some(&e)).await;
            Outcome::Down(e.to_string())
        }
    }
}

/// The established session: initial sync, then events until the stream ends.
async fn established(
    agent: &Arc<Agent>,
    slot: usize,
    stream: &mut XmppStream<TcpStream>,
    attempts: &mut u32,
) -> Result<(), Error> {
    let me = agent.settings.hostname.clone();
    let mut desired_rx = agent.desired_version.subscribe();
    let mut published = Desired::default();
    // Spec §5.8/§6.5: subscribe every VRF, then publish every route, then end-of-RIB.
    let want = agent.desired();
    let sent = reconcile(agent, stream.out_mut(), &me, &mut published, want);
    forget_unsubscribed(agent, slot, &published);
    write_eor_message_from_agent(stream.out_mut(), &me);
    stream.flush().await?;
    agent.update_channel(slot, |c| c.tx_updates += sent);
    let mut keepalives = 0u32;
    loop {
        tokio::select! {
            () = agent.shutdown.cancelled() => return Ok(()),
            changed = desired_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let want = agent.desired();
                let sent = reconcile(agent, stream.out_mut(), &me, &mut published, want);
                forget_unsubscribed(agent, slot, &published);
                stream.flush().await?;
                agent.update_channel(slot, |c| c.tx_updates += sent);
            }
            r = stream.next() => match r? {
                Incoming::Keepalive => {
                    keepalives += 1;
                    if keepalives == KEEPALIVES_TO_RESET {
                        *attempts = 0;
                    }
                    agent.update_channel(slot, |c| {
                        c.rx_keepalives += 1;
                        c.last_event = "xmsm::EvXmppKeepalive";
                    });
                }
                Incoming::Element(el) => {
                    if !Message::matches(&el) {
                        debug!(element = el.name(), "ignoring element from control");
                        continue;
                    }
                    match RouteEvent::from_message(&el) {
                        Ok(RouteEvent::Routes { vrf, .. }) if !published.vrfs.contains_key(&vrf) => {
                            // Sent before control processed our unsubscribe.
                            debug!(%vrf, "ignoring routes of a VRF we are not subscribed to");
                        }
                        Ok(ev) => {
                            if matches!(ev, RouteEvent::EndOfRib) {
                                info!("end-of-RIB received from control");
                            }
                            lock(&agent.fib).apply(slot, &ev);
                            agent.metrics.route_messages_received.fetch_add(1, Ordering::Relaxed);
                            agent.update_channel(slot, |c| {
                                c.rx_updates += 1;
                                c.last_event = "xmsm::EvXmppMessageStanza";
                            });
                        }
                        Err(e) => {
                            agent.metrics.route_messages_rejected.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, "dropping route message");
                        }
                    }
                }
            }
        }
    }
}

/// Drops the routes this channel learned in VRFs it is no longer subscribed to.
fn forget_unsubscribed(agent: &Agent, slot: usize, published: &Desired) {
    let removed = lock(&agent.fib).retain_vrfs(slot, |v| published.vrfs.contains_key(v));
    if removed > 0 {
        debug!(removed, "forgot the routes of unsubscribed VRFs");
    }
}

/// Writes what brings the control node from `published` to `want`: subscriptions first
/// (a route may only be published in a subscribed VRF, spec §6.5), then route adds and
/// changes, then withdrawals, then unsubscriptions. Returns the IQs written.
fn reconcile(
    agent: &Agent,
    out: &mut BytesMut,
    me: &str,
    published: &mut Desired,
    want: Desired,
) -> u64 {
    let mut n = 0;
    let mut seq = || agent.seq.fetch_add(1, Ordering::Relaxed);
    // A VRF whose instance id changed was removed and re-created: resubscribe.
    let moved: Vec<String> = published
        .vrfs
        .iter()
        .filter(|(v, id)| want.vrfs.get(*v).is_some_and(|w| w != *id))
        .map(|(v, _)| v.clone())
        .collect();
    for vrf in &moved {
        withdraw_vrf(out, me, published, vrf, &mut seq, &mut n);
    }
    for (vrf, id) in &want.vrfs {
        if !published.vrfs.contains_key(vrf) {
            write_subscribe(out, me, seq(), vrf, *id);
            published.vrfs.insert(vrf.clone(), *id);
            n += 1;
        }
    }
    for (key, entry) in &want.routes {
        if published.routes.get(key) != Some(entry) {
            write_route(out, me, seq(), &key.0, entry, true);
            published.routes.insert(key.clone(), entry.clone());
            n += 2;
        }
    }
    let gone: Vec<_> = published
        .routes
        .keys()
        .filter(|k| !want.routes.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        if let Some(entry) = published.routes.remove(&key) {
            write_route(out, me, seq(), &key.0, &entry, false);
            n += 2;
        }
    }
    let old_vrfs: Vec<String> = published
        .vrfs
        .keys()
        .filter(|v| !want.vrfs.contains_key(*v))
        .cloned()
        .collect();
    for vrf in old_vrfs {
        withdraw_vrf(out, me, published, &vrf, &mut seq, &mut n);
    }
    n
}

/// Withdraws every published route of `vrf` and unsubscribes from it.
fn withdraw_vrf(
    out: &mut BytesMut,
    me: &str,
    published: &mut Desired,
    vrf: &str,
    seq: &mut impl FnMut() -> u64,
    n: &mut u64,
) {
    let keys: Vec<_> = published
        .routes
        .keys()
        .filter(|(v, _)| v == vrf)
        .cloned()
        .collect();
    for key in keys {
        if let Some(entry) = published.routes.remove(&key) {
            write_route(out, me, seq(), vrf, &entry, false);
            *n += 2;
        }
    }
    if let Some(id) = published.vrfs.remove(vrf) {
        write_unsubscribe(out, me, seq(), vrf, id);
        *n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_contrail_schedule() {
        let within = |d: Duration, base: f64| {
            let s = d.as_secs_f64();
            s >= base * 0.899 && s <= base * 1.071
        };
        assert!(within(backoff(0), 0.05));
        for (a, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (5, 16.0),
            (6, 30.0),
            (9, 30.0),
        ] {
            for _ in 0..20 {
                assert!(within(backoff(a), base), "attempt {a}: {:?}", backoff(a));
            }
        }
    }

    #[test]
    fn pool_rotates_through_spares() {
        let s: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 5269)))
            .collect();
        let pool = ServerPool::new(s.clone(), 2);
        assert_eq!(pool.initial(0), Some(s[0]));
        assert_eq!(pool.initial(1), Some(s[1]));
        assert_eq!(pool.rotate(s[0]), s[2]);
        assert_eq!(pool.rotate(s[1]), s[3]);
        assert_eq!(pool.rotate(s[2]), s[0]);
        let single = ServerPool::new(vec![s[0]], 2);
        assert_eq!(single.rotate(s[0]), s[0]);
    }

    #[test]
    fn shuffle_keeps_elements() {
        let mut v: Vec<u32> = (0..10).collect();
        shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
}
