//! The agent's shared state: local ports (and what they ask to advertise), learned routes,
//! channel status, counters; and the tasks that run the channels.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use xmpp_core::io::Timing;
use xmpp_core::tls::ClientTls;

use crate::dns_channel::{DnsChannelSettings, DnsDefaults, DnsSource, RecordSet};
use crate::fib::Fib;
use crate::ports::{self, Desired, Port, PortTable};

/// At most this many control nodes get a channel (spec §5.7, `MAX_XMPP_SERVERS`).
pub const MAX_CONTROL_CHANNELS: usize = 2;
/// At most this many DNS nodes get a channel (spec §5.7: the first two, in order).
pub const MAX_DNS_CHANNELS: usize = 2;

/// Runtime settings (built from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our name (stream `from`).
    pub hostname: String,
    /// Sub-cluster name (stream namespace).
    pub subcluster_name: String,
    /// Control nodes in the order to use them (already shuffled by the caller).
    pub control_servers: Vec<SocketAddr>,
    /// TLS to control nodes: `Some` exactly when `xmpp_auth_enable=true`.
    pub control_tls: Option<ClientTls>,
    /// Timers.
    pub timing: Timing,
    /// Grace period for learned routes of a channel that went down.
    pub route_grace: Duration,
    /// Next-hop address of our routes.
    pub vhost_ip: IpAddr,
    /// Where ports are persisted; `None` keeps them in memory only.
    pub ports_dir: Option<PathBuf>,
    /// The DNS channels.
    pub dns: DnsSettings,
}

/// DNS channel settings (spec §7, §8.3).
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// DNS nodes' XMPP addresses, in configured order (the first two are used).
    pub servers: Vec<SocketAddr>,
    /// TLS to DNS nodes: `Some` exactly when `xmpp_dns_auth_enable=true`.
    pub tls: Option<ClientTls>,
    /// Virtual DNS and zone for ports that name none.
    pub defaults: DnsDefaults,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            tls: None,
            defaults: DnsDefaults {
                virtual_dns: "default-domain:default-vdns".into(),
                domain: "contrail.local".into(),
            },
        }
    }
}

/// The state of one channel, for introspection (spec §9 names).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelStatus {
    /// Slot (0, 1).
    pub slot: usize,
    /// The control node it talks to.
    pub controller_ip: String,
    /// `Idle Active Connect OpenSent OpenConfirm Established`.
    pub state: &'static str,
    /// The previous state.
    pub last_state: &'static str,
    /// When the state last changed (seconds since the epoch).
    pub last_state_at: u64,
    /// The last event (`xmsm::EvXmppOpen`, …).
    pub last_event: &'static str,
    /// The control node's name (its stream `from`).
    pub peer_name: Option<String>,
    /// Times the channel left Established.
    pub flap_count: u64,
    /// `TLS` or `NIL`.
    pub xmpp_auth_type: &'static str,
    /// Connection attempts since the last success.
    pub connect_attempts: u32,
    /// Why the last attempt or session failed.
    pub last_error: Option<String>,
    /// Route messages received.
    pub rx_updates: u64,
    /// Keepalives received.
    pub rx_keepalives: u64,
    /// Subscribe/publish IQs sent.
    pub tx_updates: u64,
    /// Routes held from this channel.
    pub routes: usize,
}

impl ChannelStatus {
    fn new(slot: usize, server: SocketAddr, tls: bool) -> Self {
        Self {
            slot,
            controller_ip: server.to_string(),
            state: "Idle",
            last_state: "Idle",
            last_state_at: epoch_secs(),
            last_event: "xmsm::EvStart",
            peer_name: None,
            flap_count: 0,
            xmpp_auth_type: if tls { "TLS" } else { "NIL" },
            connect_attempts: 0,
            last_error: None,
            rx_updates: 0,
            rx_keepalives: 0,
            tx_updates: 0,
            routes: 0,
        }
    }
}

pub(crate) fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Route messages received.
    pub route_messages_received: AtomicU64,
    /// Route messages that failed to parse (dropped).
    pub route_messages_rejected: AtomicU64,
    /// Sessions established.
    pub sessions_established: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    /// Settings.
    pub settings: Settings,
    ports: Mutex<PortTable>,
    /// Bumped whenever the desired state changes; channels reconcile on it.
    pub(crate) desired_version: watch::Sender<u64>,
    pub(crate) fib: Mutex<Fib>,
    pub(crate) channels: Mutex<Vec<ChannelStatus>>,
    pub(crate) dns_channels: Mutex<Vec<ChannelStatus>>,
    /// IQ id counter shared by all channels (the C++ agent's is process-wide too).
    pub(crate) seq: AtomicU64,
    /// Counters.
    pub metrics: Metrics,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
}

/// A port API failure.
#[derive(Debug, thiserror::Error)]
pub enum PortApiError {
    /// The port was refused.
    #[error(transparent)]
    Invalid(#[from] ports::PortError),
    /// The ports directory could not be written; nothing was changed.
    #[error("cannot persist the port: {0}")]
    Persist(std::io::Error),
}

impl Agent {
    /// New state; loads the ports directory when configured. Returns the agent and the
    /// problems found in port files (logged by the caller).
    pub fn new(settings: Settings, shutdown: CancellationToken) -> (Arc<Agent>, Vec<String>) {
        let mut table = PortTable::new(settings.vhost_ip);
        let mut problems = Vec::new();
        if let Some(dir) = &settings.ports_dir {
            let (loaded, errors) = ports::load_dir(dir);
            problems = errors;
            for p in loaded {
                table.upsert(p);
            }
        }
        let tls = settings.control_tls.is_some();
        let channels = settings
            .control_servers
            .iter()
            .take(MAX_CONTROL_CHANNELS)
            .enumerate()
            .map(|(i, s)| ChannelStatus::new(i, *s, tls))
            .collect();
        let dns_tls = settings.dns.tls.is_some();
        let dns_channels = settings
            .dns
            .servers
            .iter()
            .take(MAX_DNS_CHANNELS)
            .enumerate()
            .map(|(i, s)| ChannelStatus::new(i, *s, dns_tls))
            .collect();
        let (tx, _) = watch::channel(0);
        let agent = Arc::new(Agent {
            settings,
            ports: Mutex::new(table),
            desired_version: tx,
            fib: Mutex::new(Fib::new()),
            channels: Mutex::new(channels),
            dns_channels: Mutex::new(dns_channels),
            seq: AtomicU64::new(1),
            metrics: Metrics::default(),
            shutdown,
        });
        (agent, problems)
    }

    /// What every control node should know now.
    pub fn desired(&self) -> Desired {
        lock(&self.ports).desired()
    }

    /// The local ports.
    pub fn ports(&self) -> Vec<(Port, Option<u32>)> {
        let t = lock(&self.ports);
        t.ports().map(|p| (p.clone(), t.label(&p.id))).collect()
    }

    /// Adds or replaces a port: persisted first (a failure changes nothing), then
    /// advertised.
    pub fn add_port(&self, port: Port) -> Result<(), PortApiError> {
        port.validate()?;
        if let Some(dir) = &self.settings.ports_dir {
            ports::save(dir, &port).map_err(PortApiError::Persist)?;
        }
        info!(port = %port.id, vm = %port.vm_name, vrf = %port.vrf(), "port added");
        lock(&self.ports).upsert(port);
        self.desired_version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Removes a port; `Ok(false)` when unknown.
    pub fn remove_port(&self, id: &str) -> Result<bool, PortApiError> {
        if lock(&self.ports).label(id).is_none() {
            return Ok(false);
        }
        if let Some(dir) = &self.settings.ports_dir {
            ports::remove(dir, id).map_err(PortApiError::Persist)?;
        }
        let removed = lock(&self.ports).remove(id).is_some();
        if removed {
            info!(port = %id, "port removed");
            self.desired_version.send_modify(|v| *v += 1);
        }
        Ok(removed)
    }

    /// Channel status snapshot.
    pub fn channels(&self) -> Vec<ChannelStatus> {
        let fib = lock(&self.fib);
        let mut v = lock(&self.channels).clone();
        for c in &mut v {
            c.routes = fib.count(c.slot);
        }
        v
    }

    /// DNS channel status snapshot.
    pub fn dns_channels(&self) -> Vec<ChannelStatus> {
        lock(&self.dns_channels).clone()
    }

    /// The DNS records the agent registers.
    pub fn dns_records(&self) -> RecordSet {
        let t = lock(&self.ports);
        crate::dns_channel::desired_records(t.ports(), &self.settings.dns.defaults)
    }

    /// Learned routes per VRF.
    pub fn routes(&self) -> std::collections::BTreeMap<String, Vec<crate::fib::RouteView>> {
        lock(&self.fib).view()
    }

    pub(crate) fn update_channel(&self, slot: usize, f: impl FnOnce(&mut ChannelStatus)) {
        if let Some(c) = lock(&self.channels).get_mut(slot) {
            f(c);
        }
    }

    pub(crate) fn set_state(&self, slot: usize, state: &'static str, event: &'static str) {
        self.update_channel(slot, |c| {
            if c.state != state {
                c.last_state = c.state;
                c.state = state;
                c.last_state_at = epoch_secs();
            }
            c.last_event = event;
        });
    }
}

/// Starts the agent: one channel per control node (at most two), the stale-route sweeper,
/// introspection and the port API when listeners are given. The task ends after shutdown.
pub fn spawn(
    settings: Settings,
    http: Option<TcpListener>,
    port_api: Option<TcpListener>,
    shutdown: CancellationToken,
) -> (Arc<Agent>, JoinHandle<()>) {
    let (agent, problems) = Agent::new(settings, shutdown);
    for p in problems {
        warn!("skipping port file: {p}");
    }
    let a = agent.clone();
    let task = tokio::spawn(async move {
        let tracker = TaskTracker::new();
        let pool = Arc::new(crate::channel::ServerPool::new(
            a.settings.control_servers.clone(),
            MAX_CONTROL_CHANNELS,
        ));
        for slot in 0..a.settings.control_servers.len().min(MAX_CONTROL_CHANNELS) {
            tracker.spawn(crate::channel::run(a.clone(), slot, pool.clone()));
        }
        let transid = Arc::new(std::sync::atomic::AtomicU32::new(1));
        for (slot, server) in a
            .settings
            .dns
            .servers
            .iter()
            .take(MAX_DNS_CHANNELS)
            .enumerate()
        {
            let s = DnsChannelSettings {
                slot,
                server: *server,
                hostname: a.settings.hostname.clone(),
                tls: a.settings.dns.tls.clone(),
                timing: a.settings.timing,
            };
            let src: Arc<dyn DnsSource> = a.clone();
            tracker.spawn(crate::dns_channel::run(
                s,
                src,
                transid.clone(),
                a.shutdown.clone(),
            ));
        }
        tracker.spawn(sweeper(a.clone()));
        if let Some(l) = http {
            tracker.spawn(crate::http::serve(
                a.clone(),
                l,
                crate::http::introspect_router,
            ));
        }
        if let Some(l) = port_api {
            tracker.spawn(crate::http::serve(
                a.clone(),
                l,
                crate::http::port_api_router,
            ));
        }
        tracker.close();
        tracker.wait().await;
    });
    (agent, task)
}

/// Removes learned routes whose grace period has passed, once a second.
async fn sweeper(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(
        Duration::from_millis(250).min(agent.settings.route_grace.max(Duration::from_millis(10))),
    );
    loop {
        tokio::select! {
            () = agent.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let removed = lock(&agent.fib).sweep(std::time::Instant::now(), agent.settings.route_grace);
        if removed > 0 {
            info!(removed, "stale routes removed after the grace period");
        }
    }
}

/// Counts for `/metrics`.
pub(crate) fn counter(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl DnsSource for Agent {
    fn records(&self) -> RecordSet {
        self.dns_records()
    }

    fn changed(&self) -> watch::Receiver<u64> {
        self.desired_version.subscribe()
    }

    fn report(&self, slot: usize, state: &'static str, error: Option<String>, flapped: bool) {
        if let Some(c) = lock(&self.dns_channels).get_mut(slot) {
            if c.state != state {
                c.last_state = c.state;
                c.state = state;
                c.last_state_at = epoch_secs();
            }
            if state == "Connect" {
                c.connect_attempts += 1;
            }
            if state == "Established" {
                c.connect_attempts = 0;
                c.last_error = None;
            }
            if error.is_some() {
                c.last_error = error;
            }
            if flapped {
                c.flap_count += 1;
            }
        }
    }
}
