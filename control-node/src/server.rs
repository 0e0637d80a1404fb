//! The accept loop and the state shared by all sessions: the route table, the session
//! registry (for fan-out and introspection), agent-name claims and counters.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use xmpp_core::contrail::RouteEntry;
use xmpp_core::io::Timing;
use xmpp_core::stream::Dialect;
use xmpp_core::tls::ServerTls;
use xmpp_core::xml::Limits;

use crate::rib::{Delivery, MembershipError, Rib, SessionId};

/// A path in the table: the item an agent published, shared by every delivery.
pub type Path = Arc<RouteEntry>;

/// Runtime settings of the XMPP server (built from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our host name (`from` of our stream headers).
    pub hostname: String,
    /// TLS material; `Some` exactly when `xmpp_auth_enable=true`.
    pub tls: Option<ServerTls>,
    /// Refuse agents whose stream `from` does not match their certificate.
    pub check_peer_name: bool,
    /// Hold time and negotiation deadline.
    pub timing: Timing,
    /// Stanza bounds.
    pub limits: Limits,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Per-agent queue bound (route deliveries).
    pub send_queue_len: usize,
    /// How long the channel must be quiet before we send our end-of-RIB marker (spec §5.8:
    /// 6 s), and the latest we send it anyway (300 s).
    pub eor_quiet: Duration,
    /// See `eor_quiet`.
    pub eor_max: Duration,
    /// How long shutdown waits for sessions to close.
    pub drain_timeout: Duration,
}

/// Process-wide counters, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed at accept because of `xmpp_max_connections`.
    pub refused_limit: AtomicU64,
    /// Sessions that failed negotiation (TLS, header, timeout).
    pub negotiation_failures: AtomicU64,
    /// Sessions refused after negotiation (name/certificate mismatch, duplicate name).
    pub identity_refusals: AtomicU64,
    /// Sessions that reached Established.
    pub established: AtomicU64,
    /// Sessions closed for a protocol or membership violation.
    pub violations: AtomicU64,
    /// Sessions closed because their send queue was full.
    pub slow_consumers: AtomicU64,
    /// Route items accepted from agents.
    pub routes_received: AtomicU64,
    /// Route items and retracts sent to agents.
    pub routes_sent: AtomicU64,
    /// Items dropped as invalid.
    pub items_rejected: AtomicU64,
}

/// Per-session counters and state, read by introspection.
#[derive(Debug)]
pub struct SessionStats {
    /// Route items accepted from this agent.
    pub routes_received: AtomicU64,
    /// Route items and retracts sent to it.
    pub routes_sent: AtomicU64,
    /// Stanzas received.
    pub stanzas_received: AtomicU64,
    /// The last event, Contrail-style names (`xmsm::EvXmppIqStanza`…).
    pub last_event: Mutex<&'static str>,
    /// When the session reached Established.
    pub established_at: SystemTime,
}

/// A live session as the rest of the node sees it.
#[derive(Debug)]
pub struct SessionHandle {
    /// Session id.
    pub id: SessionId,
    /// Agent name (stream `from`).
    pub name: String,
    /// Remote address.
    pub remote: SocketAddr,
    /// Local address.
    pub local: Option<SocketAddr>,
    /// Whether the stream runs in TLS.
    pub tls: bool,
    /// The negotiated TLS version, e.g. `TLSv1_3`.
    pub tls_version: Option<String>,
    /// The dialect.
    pub dialect: Dialect,
    /// Route deliveries to this agent (bounded).
    pub(crate) tx: mpsc::Sender<Delivery<Path>>,
    /// Cancelled to close the session from outside (slow consumer, shutdown).
    pub(crate) kill: CancellationToken,
    /// Why `kill` was cancelled.
    pub(crate) kill_reason: Mutex<Option<String>>,
    /// Counters.
    pub stats: SessionStats,
}

impl SessionHandle {
    pub(crate) fn kill(&self, reason: &str) {
        let mut r = lock(&self.kill_reason);
        if r.is_none() {
            *r = Some(reason.to_owned());
        }
        self.kill.cancel();
    }
}

/// What introspection remembers about an agent name across sessions.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PeerHistory {
    /// Times a session of this name left Established.
    pub flap_count: u64,
    /// When it last did (seconds since the epoch).
    pub flap_time: Option<u64>,
    /// Why the last session ended.
    pub last_close_reason: Option<String>,
}

/// State shared by the accept loop, the sessions and introspection.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub settings: Settings,
    /// The route table.
    pub(crate) rib: Mutex<Rib<Path>>,
    /// Live sessions.
    pub(crate) sessions: RwLock<HashMap<SessionId, Arc<SessionHandle>>>,
    /// Agent name → the session that holds it.
    names: Mutex<HashMap<String, (SessionId, IpAddr)>>,
    /// Per agent name history.
    pub(crate) history: Mutex<HashMap<String, PeerHistory>>,
    next_id: AtomicU64,
    /// Counters.
    pub metrics: Metrics,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// When the node started.
    pub started: SystemTime,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// New shared state.
    pub fn new(settings: Settings, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            settings,
            rib: Mutex::new(Rib::new()),
            sessions: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics: Metrics::default(),
            shutdown,
            started: SystemTime::now(),
        })
    }

    pub(crate) fn next_id(&self) -> SessionId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Claims an agent name for a session (spec §5.6): a name held by a live session is
    /// refused, from another address outright, from the same address until the old session
    /// is gone (its hold timer or TCP close ends it; the agent retries).
    pub(crate) fn claim_name(&self, name: &str, id: SessionId, ip: IpAddr) -> Result<(), String> {
        let mut names = lock(&self.names);
        match names.get(name) {
            Some((_, other_ip)) if *other_ip != ip => Err(format!(
                "agent name {name:?} is already connected from {other_ip}"
            )),
            Some(_) => Err(format!(
                "agent name {name:?} still has a session from the same address; it is \
                 accepted once the old session ends (hold timer or TCP close)"
            )),
            None => {
                names.insert(name.to_owned(), (id, ip));
                Ok(())
            }
        }
    }

    pub(crate) fn register(&self, handle: Arc<SessionHandle>) {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handle.id, handle);
    }

    /// Removes a session: its name claim, its registry entry, and its routes and
    /// subscriptions (withdrawn from every other subscriber).
    pub(crate) fn unregister(&self, handle: &SessionHandle, reason: &str) {
        {
            let mut names = lock(&self.names);
            if names
                .get(&handle.name)
                .is_some_and(|(id, _)| *id == handle.id)
            {
                names.remove(&handle.name);
            }
        }
        {
            let mut h = lock(&self.history);
            let e = h.entry(handle.name.clone()).or_default();
            e.flap_count += 1;
            e.flap_time = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
            e.last_close_reason = Some(reason.to_owned());
        }
        let _ = self.with_rib(handle.id, |rib| Ok(rib.remove_session(handle.id)));
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&handle.id);
    }

    /// Runs `f` on the table and hands every resulting delivery for another session to
    /// that session's queue, under the table lock so deliveries keep the table's order.
    /// Deliveries for `me` are returned to the caller. A session whose queue is full is
    /// closed: it is not reading, and queuing more would grow memory without bound.
    pub(crate) fn with_rib(
        &self,
        me: SessionId,
        f: impl FnOnce(&mut Rib<Path>) -> Result<Vec<Delivery<Path>>, MembershipError>,
    ) -> Result<Vec<Delivery<Path>>, MembershipError> {
        let mut rib = lock(&self.rib);
        let deliveries = f(&mut rib)?;
        if deliveries.is_empty() {
            return Ok(deliveries);
        }
        let sessions = self.sessions.read().unwrap_or_else(PoisonError::into_inner);
        let mut mine = Vec::new();
        for d in deliveries {
            let to = d.to();
            if to == me {
                mine.push(d);
                continue;
            }
            let Some(h) = sessions.get(&to) else { continue };
            if let Err(mpsc::error::TrySendError::Full(_)) = h.tx.try_send(d) {
                if !h.kill.is_cancelled() {
                    self.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %h.name, queue = self.settings.send_queue_len,
                        "closing session: its send queue is full (agent not reading)");
                }
                h.kill("send queue full (agent not reading)");
            }
        }
        Ok(mine)
    }

    /// A snapshot of the live sessions.
    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        let mut v: Vec<_> = self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Accepts connections until `shutdown`, then waits (bounded) for sessions to close.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let loop_ = xmpp_core::io::AcceptLoop {
        max_connections: shared.settings.max_connections,
        drain_timeout: shared.settings.drain_timeout,
        shutdown: &shared.shutdown,
        accepted: &shared.metrics.accepted,
        refused: &shared.metrics.refused_limit,
        tls: shared.settings.tls.is_some(),
    };
    let s = shared.clone();
    loop_
        .run(listener, move |tcp, addr| {
            crate::session::run(s.clone(), tcp, addr)
        })
        .await;
}
