//! The XMPP accept loop and the state shared by sessions, the DNS listener and
//! introspection: the record store, the session registry, agent-name claims, the record
//! expiry task and counters.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use xmpp_core::io::Timing;
use xmpp_core::stream::Dialect;
use xmpp_core::tls::ServerTls;
use xmpp_core::xml::Limits;

use crate::records::{AgentCounts, Lookup, RecordStore};

/// Identifies one XMPP session (a connection: a reconnect is a new one).
pub type SessionId = u64;

/// Runtime settings (built from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our host name (`from` of our stream headers, SOA primary name server).
    pub hostname: String,
    /// TLS material; `Some` exactly when `xmpp_dns_auth_enable=true`.
    pub tls: Option<ServerTls>,
    /// Refuse agents whose name does not match their certificate.
    pub check_peer_name: bool,
    /// Hold time and negotiation deadline.
    pub timing: Timing,
    /// Stanza bounds.
    pub limits: Limits,
    /// Most concurrent XMPP connections.
    pub max_connections: usize,
    /// How long an agent's records outlive its session.
    pub record_grace: Duration,
    /// Most records per agent.
    pub max_records_per_agent: usize,
    /// How long shutdown waits for sessions to close.
    pub drain_timeout: Duration,
}

/// Process-wide counters, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted on the XMPP port.
    pub accepted: AtomicU64,
    /// Connections closed at accept because of `xmpp_max_connections`.
    pub refused_limit: AtomicU64,
    /// Sessions that failed negotiation (TLS, header, timeout).
    pub negotiation_failures: AtomicU64,
    /// Sessions refused after negotiation (name/certificate mismatch, duplicate name).
    pub identity_refusals: AtomicU64,
    /// Sessions that reached Established.
    pub established: AtomicU64,
    /// Sessions closed because of a malformed DNS IQ.
    pub malformed: AtomicU64,
    /// DNS updates applied.
    pub updates: AtomicU64,
    /// DNS updates ignored (empty virtual-dns or zone, spec §7).
    pub updates_ignored: AtomicU64,
    /// Records added.
    pub records_added: AtomicU64,
    /// Records deleted by agents.
    pub records_deleted: AtomicU64,
    /// Entries refused (bad name, data, type, class, bound).
    pub entries_rejected: AtomicU64,
    /// Records withdrawn at the end of a grace period.
    pub records_withdrawn: AtomicU64,
    /// DNS queries over UDP.
    pub dns_udp: AtomicU64,
    /// DNS queries over TCP.
    pub dns_tcp: AtomicU64,
    /// Answers with records (NOERROR).
    pub dns_answered: AtomicU64,
    /// NOERROR without records (NODATA).
    pub dns_nodata: AtomicU64,
    /// NXDOMAIN.
    pub dns_nxdomain: AtomicU64,
    /// REFUSED (outside our zones, DNS UPDATE, other classes).
    pub dns_refused: AtomicU64,
    /// FORMERR, NOTIMP, BADVERS.
    pub dns_errors: AtomicU64,
}

/// Per-session counters and state, read by introspection.
#[derive(Debug)]
pub struct SessionStats {
    /// Stanzas received.
    pub stanzas_received: AtomicU64,
    /// DNS updates applied.
    pub updates: AtomicU64,
    /// Entries refused.
    pub entries_rejected: AtomicU64,
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
    /// Agent name: the stream `from` before `/` (`compute-1` for `compute-1/dns`).
    pub name: String,
    /// The stream `from` as sent.
    pub jid: String,
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
    /// Counters.
    pub stats: SessionStats,
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

/// State shared by the accept loop, the sessions, the DNS listener and introspection.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub settings: Settings,
    /// The records. Writers (sessions, expiry) and readers (DNS queries) hold the lock for
    /// in-memory work only, never across an await.
    records: RwLock<RecordStore>,
    /// Live sessions.
    sessions: RwLock<HashMap<SessionId, Arc<SessionHandle>>>,
    /// Agent name → the session that holds it.
    names: Mutex<HashMap<String, (SessionId, IpAddr)>>,
    /// Per agent name history.
    pub(crate) history: Mutex<HashMap<String, PeerHistory>>,
    /// Wakes the expiry task when a new deadline may be earlier than the one it sleeps to.
    expiry: Notify,
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

/// Now, on tokio's clock (so paused-time tests drive grace periods), as a std instant for
/// the pure store.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Shared {
    /// New shared state.
    pub fn new(settings: Settings, shutdown: CancellationToken) -> Arc<Self> {
        let store = RecordStore::new(settings.record_grace, settings.max_records_per_agent);
        Arc::new(Self {
            settings,
            records: RwLock::new(store),
            sessions: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            expiry: Notify::new(),
            next_id: AtomicU64::new(1),
            metrics: Metrics::default(),
            shutdown,
            started: SystemTime::now(),
        })
    }

    pub(crate) fn next_id(&self) -> SessionId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Read access to the records.
    pub fn records(&self) -> RwLockReadGuard<'_, RecordStore> {
        self.records.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn records_mut(&self) -> RwLockWriteGuard<'_, RecordStore> {
        self.records.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers a query from the records (name without the trailing dot, any case).
    pub fn lookup(&self, name: &str, qtype: u16) -> Lookup {
        self.records().lookup(&name.to_ascii_lowercase(), qtype)
    }

    /// An agent's record figures, `None` when the node holds nothing of it.
    pub fn agent_counts(&self, agent: &str) -> Option<AgentCounts> {
        self.records().agent_counts(agent)
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

    /// Makes a session visible and tells the store its agent is back.
    pub(crate) fn register(&self, handle: Arc<SessionHandle>) {
        self.records_mut().agent_up(&handle.name);
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handle.id, handle);
    }

    /// Removes a session. The store learns first that the agent is gone (its records start
    /// their grace period), then the name is released: a reconnect of the same agent cannot
    /// overtake the withdrawal of its previous session.
    pub(crate) fn unregister(&self, handle: &SessionHandle, reason: &str) {
        let deadline = self.records_mut().agent_down(&handle.name, now());
        if deadline.is_some() {
            self.expiry.notify_one();
        }
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&handle.id);
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
        let mut names = lock(&self.names);
        if names
            .get(&handle.name)
            .is_some_and(|(id, _)| *id == handle.id)
        {
            names.remove(&handle.name);
        }
    }

    /// A snapshot of the live sessions, by agent name.
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

/// Withdraws records whose grace period is over, sleeping until the next deadline (or a
/// notification that an earlier one may exist) in between.
pub async fn expire_records(shared: Arc<Shared>) {
    loop {
        let next = shared.records().next_expiry();
        let sleep = async {
            match next {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = shared.expiry.notified() => continue,
            () = sleep => {}
        }
        let removed = shared.records_mut().expire(now());
        if removed > 0 {
            shared
                .metrics
                .records_withdrawn
                .fetch_add(removed as u64, Ordering::Relaxed);
            info!(
                records = removed,
                "withdrew records of agents whose grace period ended"
            );
        } else {
            debug!("expiry pass: nothing due");
        }
    }
}

/// Accepts XMPP connections until `shutdown`, then waits (bounded) for sessions to close.
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

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_core::contrail::dns::{CLASS_IN, DnsEntry, DnsUpdate};

    use crate::records::TYPE_A;

    fn settings(grace: Duration) -> Settings {
        Settings {
            hostname: "dns-1".into(),
            tls: None,
            check_peer_name: true,
            timing: Timing::default(),
            limits: Limits::default(),
            max_connections: 8,
            record_grace: grace,
            max_records_per_agent: 100,
            drain_timeout: Duration::from_secs(1),
        }
    }

    fn update(name: &str) -> DnsUpdate {
        DnsUpdate {
            transid: 1,
            virtual_dns: "v".into(),
            zone: "z.example".into(),
            entries: vec![DnsEntry {
                class: CLASS_IN,
                rtype: TYPE_A,
                name: name.into(),
                data: "10.0.0.1".into(),
                ttl: Some(60),
                priority: None,
            }],
        }
    }

    fn answered(shared: &Shared, name: &str) -> bool {
        matches!(shared.lookup(name, TYPE_A), Lookup::Records { .. })
    }

    /// The expiry task sleeps to the earliest deadline, is woken by a new one, and withdraws
    /// exactly at it (paused clock: no real waiting, no race).
    #[tokio::test(start_paused = true)]
    async fn expiry_task_withdraws_at_the_deadline() {
        let grace = Duration::from_secs(30);
        let shared = Shared::new(settings(grace), CancellationToken::new());
        let task = tokio::spawn(expire_records(shared.clone()));
        for agent in ["c1", "c2"] {
            shared.records_mut().agent_up(agent);
            shared
                .records_mut()
                .apply(agent, &update(&format!("{agent}-vm")), now());
        }
        let down = |agent: &str| {
            shared.records_mut().agent_down(agent, now());
            shared.expiry.notify_one();
        };
        down("c1");
        tokio::time::sleep(Duration::from_secs(10)).await;
        down("c2");
        tokio::time::sleep(Duration::from_secs(19)).await;
        assert!(answered(&shared, "c1-vm.z.example"), "29 s: still in grace");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!answered(&shared, "c1-vm.z.example"), "31 s: withdrawn");
        assert!(
            answered(&shared, "c2-vm.z.example"),
            "c2 went down 10 s later"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!answered(&shared, "c2-vm.z.example"));
        assert_eq!(shared.metrics.records_withdrawn.load(Ordering::Relaxed), 2);
        shared.shutdown.cancel();
        task.await.expect("expiry task ends on shutdown");
    }
}
