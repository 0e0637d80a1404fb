//! End-to-end tests of the vrouter agent against the real control node: two agents on one
//! VRF learn each other's routes (plain and with STARTTLS, spec §3.2/§3.3), ports driven
//! through the HTTP port API, withdrawal, a control node restarted on the same port
//! (reconnect with backoff, spec §5.2/§5.4), two control nodes with one killed (learned
//! routes kept through the other, grace period, spec §5.8), TLS configuration mismatches
//! (spec §4), and the agent's bytes checked against the C++ framing rules (spec §2.2, §11)
//! by a raw "fake control node".
//!
//! Everything runs on loopback, port 0. Nothing sleeps to synchronise: every wait polls a
//! condition (routes, channel status, introspection) against a deadline and fails with
//! what was last seen.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{AGENT, Pki, http_request};
use quick_xml::events::{BytesStart, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use vrouter_agent::agent::ChannelStatus;
use vrouter_agent::fib::RouteView;
use vrouter_agent::ports::Port;
use vrouter_agent::{Agent, Settings};
use xmpp_core::io::Timing;
use xmpp_core::tls::{ClientTls, ClientTlsOptions, ServerTls, ServerTlsOptions};
use xmpp_core::xml::Limits;

// ------------------------------------------------------------------ constants

/// Bound on any single wait; a hang fails the test instead of stalling the suite.
const STEP: Duration = Duration::from_secs(10);
/// Poll interval of [`eventually`] (a polling period, not a synchronisation sleep).
const POLL: Duration = Duration::from_millis(10);
/// Hold time 9 s (keepalives every 3 s), negotiation deadline 5 s: short enough that a
/// broken peer ends a test quickly, long enough never to fire in a healthy one.
const TIMING: Timing = Timing {
    hold_time: Duration::from_secs(9),
    negotiation_timeout: Duration::from_secs(5),
};
/// Learned-route grace period for most tests.
const GRACE: Duration = Duration::from_millis(500);

const AGENT_2: &str = "compute-2";
const AGENT_3: &str = "compute-3";
const VHOST_1: &str = "192.168.0.11";
const VHOST_2: &str = "192.168.0.12";
const VHOST_3: &str = "192.168.0.13";

const VN_A: &str = "default-domain:demo:net-a";
const VRF_A: &str = "default-domain:demo:net-a:net-a";
const VN_B: &str = "default-domain:demo:net-b";
const VRF_B: &str = "default-domain:demo:net-b:net-b";
const VN_C: &str = "default-domain:demo:net-c";
const VRF_C: &str = "default-domain:demo:net-c:net-c";
const VN_PRIVATE: &str = "default-domain:demo:private";

const CONTROL_JID: &str = "network-control@contrailsystems.com";
const STREAM_NS: &str = "http://etherx.jabber.org/streams";

/// Spec §3.1: the C++ control node's response header, byte for byte.
const CXX_SERVER_HEADER: &str = "<stream:stream from=\"ctrl\" to=\"compute-1\" id=\"++123\" \
    version=\"1.0\" xml:lang=\"en\" xmlns=\"jabber:client\" \
    xmlns:stream=\"http://etherx.jabber.org/streams\"  >";

// ------------------------------------------------------------------ waiting

/// Polls `check` until it returns `Ok`, failing after `limit` with its last complaint.
async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not reached within {limit:?}; last seen: {why}")
            }
            Err(_) => sleep(POLL).await,
        }
    }
}

/// [`eventually`] for checks that need to await (HTTP introspection).
async fn eventually_async<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not reached within {limit:?}; last seen: {why}")
            }
            Err(_) => sleep(POLL).await,
        }
    }
}

// ------------------------------------------------------------------ control node harness

/// A control node running in this process, with its introspection listener.
struct Control {
    shared: Arc<control_node::Shared>,
    task: JoinHandle<()>,
    token: CancellationToken,
    addr: SocketAddr,
    http: SocketAddr,
}

fn control_settings(tls: Option<ServerTls>) -> control_node::Settings {
    control_node::Settings {
        hostname: "ctrl-1".into(),
        tls,
        check_peer_name: true,
        timing: TIMING,
        limits: Limits::default(),
        max_connections: 64,
        send_queue_len: 4096,
        eor_quiet: Duration::from_secs(1),
        eor_max: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(2),
    }
}

impl Control {
    async fn start(tls: Option<ServerTls>) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), tls).await
    }

    /// Starts a control node whose XMPP listener is bound to `addr` (a fixed port to
    /// restart on the same address).
    async fn start_on(addr: SocketAddr, tls: Option<ServerTls>) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind control node on {addr}: {e}"));
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind introspect");
        let addr = listener.local_addr().expect("xmpp addr");
        let http_addr = http.local_addr().expect("http addr");
        let token = CancellationToken::new();
        let (shared, task) =
            control_node::spawn(control_settings(tls), listener, Some(http), token.clone());
        Self {
            shared,
            task,
            token,
            addr,
            http: http_addr,
        }
    }

    /// Cancels the node and waits for its task to end (sessions closed, listener
    /// dropped); returns the address it listened on.
    async fn kill(self) -> SocketAddr {
        self.token.cancel();
        timeout(STEP, self.task)
            .await
            .expect("control node stops within the deadline")
            .expect("control node task");
        self.addr
    }

    async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_request(self.http, "GET", path, None).await;
        let json = if status == 200 {
            serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {body}"))
        } else {
            serde_json::Value::Null
        };
        (status, json)
    }

    /// `GET /vrfs/{vrf}` as (prefix, publishing agent) pairs; a 404 is the empty set.
    async fn vrf_paths(&self, vrf: &str) -> BTreeSet<(String, String)> {
        let (status, json) = self.get_json(&format!("/vrfs/{vrf}")).await;
        if status == 404 {
            return BTreeSet::new();
        }
        assert_eq!(status, 200, "GET /vrfs/{vrf}");
        let mut out = BTreeSet::new();
        for route in json.as_array().expect("route list") {
            let prefix = route["prefix"].as_str().expect("prefix").to_owned();
            for path in route["paths"].as_array().expect("paths") {
                out.insert((prefix.clone(), path["peer"].as_str().expect("peer").into()));
            }
        }
        out
    }

    /// `GET /vrfs`: the VRF summaries.
    async fn vrfs(&self) -> Vec<serde_json::Value> {
        let (status, json) = self.get_json("/vrfs").await;
        assert_eq!(status, 200, "GET /vrfs");
        json.as_array().expect("vrf list").clone()
    }

    fn routes_received(&self) -> u64 {
        self.shared.metrics.routes_received.load(Ordering::Relaxed)
    }
}

/// What the control node should hold for `vrf`: every agent's desired routes there.
fn control_expected(vrf: &str, agents: &[&TestAgent]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for a in agents {
        for (v, prefix) in a.agent.desired().routes.keys() {
            if v == vrf {
                out.insert((prefix.to_string(), a.agent.settings.hostname.clone()));
            }
        }
    }
    out
}

async fn control_converged(ctl: &Control, vrf: &str, agents: &[&TestAgent]) {
    let want = control_expected(vrf, agents);
    eventually_async(&format!("control node's {vrf}"), STEP, async || {
        let got = ctl.vrf_paths(vrf).await;
        if got == want {
            Ok(())
        } else {
            Err(format!("have {got:?}, want {want:?}"))
        }
    })
    .await;
}

// ------------------------------------------------------------------ agent harness

struct TestAgent {
    agent: Arc<Agent>,
    task: JoinHandle<()>,
    token: CancellationToken,
    /// The port API address, when started with one.
    api: Option<SocketAddr>,
}

fn settings(
    host: &str,
    vhost: &str,
    servers: Vec<SocketAddr>,
    tls: Option<ClientTls>,
    grace: Duration,
) -> Settings {
    Settings {
        hostname: host.into(),
        subcluster_name: String::new(),
        control_servers: servers,
        control_tls: tls,
        timing: TIMING,
        route_grace: grace,
        vhost_ip: vhost.parse().expect("vhost ip"),
        ports_dir: None,
        dns: vrouter_agent::agent::DnsSettings::default(),
    }
}

impl TestAgent {
    async fn start(settings: Settings, port_api: bool) -> Self {
        let (api_listener, api) = if port_api {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind port API");
            let a = l.local_addr().expect("port API addr");
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let token = CancellationToken::new();
        let (agent, task) = vrouter_agent::spawn(settings, None, api_listener, token.clone());
        Self {
            agent,
            task,
            token,
            api,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        timeout(STEP, self.task)
            .await
            .expect("agent stops within the deadline")
            .expect("agent task");
    }

    fn add(&self, json: &str) {
        let port = Port::from_json(json.as_bytes()).expect("test port JSON");
        self.agent.add_port(port).expect("add port");
    }

    fn channel(&self, slot: usize) -> ChannelStatus {
        self.agent.channels()[slot].clone()
    }

    async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_request(
            self.api.expect("started with a port API"),
            method,
            path,
            body,
        )
        .await
    }

    fn label(&self, id: &str) -> u32 {
        self.agent
            .ports()
            .into_iter()
            .find(|(p, _)| p.id == id)
            .and_then(|(_, l)| l)
            .unwrap_or_else(|| panic!("port {id} has a label"))
    }
}

fn port_json(id: &str, mac_last: u8, ip: &str, ip6: Option<&str>, vn: &str) -> String {
    let ip6 = ip6.map_or(String::new(), |a| format!(r#","ip6-address":"{a}""#));
    format!(
        r#"{{"id":"{id}","vm-name":"vm-{id}","mac-address":"02:00:00:00:00:{mac_last:02x}","ip-address":"{ip}"{ip6},"vn-name":"{vn}"}}"#
    )
}

/// A learned table reduced to what convergence means: per VRF, (prefix, next-hop,
/// label) triples.
type Table = BTreeMap<String, BTreeSet<(String, IpAddr, u32)>>;

fn learned(a: &Agent) -> Table {
    a.routes()
        .into_iter()
        .map(|(vrf, views)| {
            let set = views
                .iter()
                .flat_map(|v| {
                    v.next_hops
                        .iter()
                        .map(|nh| (v.prefix.clone(), nh.address, nh.label))
                })
                .collect();
            (vrf, set)
        })
        .collect()
}

/// What `me` must learn: the others' routes in the VRFs `me` has ports in (control
/// sends only subscribed VRFs, and never an agent's own routes back).
fn expected(me: &Agent, others: &[&TestAgent]) -> Table {
    let mine = me.desired().vrfs;
    let mut t = Table::new();
    for o in others {
        for ((vrf, prefix), entry) in o.agent.desired().routes {
            if !mine.contains_key(&vrf) {
                continue;
            }
            for nh in &entry.next_hops {
                t.entry(vrf.clone()).or_default().insert((
                    prefix.to_string(),
                    nh.address,
                    nh.label,
                ));
            }
        }
    }
    t
}

async fn converged(me: &TestAgent, others: &[&TestAgent]) -> Table {
    let want = expected(&me.agent, others);
    eventually(
        &format!("{} converged", me.agent.settings.hostname),
        STEP,
        || {
            let got = learned(&me.agent);
            if got == want {
                Ok(got)
            } else {
                Err(format!("have {got:?}, want {want:?}"))
            }
        },
    )
    .await
}

fn view(a: &Agent, vrf: &str, prefix: &str) -> Option<RouteView> {
    a.routes()
        .get(vrf)?
        .iter()
        .find(|v| v.prefix == prefix)
        .cloned()
}

fn client_tls(files: &xmpp_core::tls::TlsFiles) -> ClientTls {
    ClientTls::load(files, &ClientTlsOptions::default()).expect("load client TLS")
}

fn server_tls(pki: &Pki) -> ServerTls {
    ServerTls::load(&pki.server_files, &ServerTlsOptions::default()).expect("load server TLS")
}

// ============================================================== 1. two agents, one VRF

/// Plain (`xmpp_auth_enable=false`) control node; both agents' ports go through the HTTP
/// port API. Bad JSON gets 400 with the reason and changes nothing; a port deleted through
/// the API is withdrawn from the other agent and from the control node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_learn_each_others_routes_plain_through_the_port_api() {
    let ctl = Control::start(None).await;
    let a = TestAgent::start(settings(AGENT, VHOST_1, vec![ctl.addr], None, GRACE), true).await;
    let b = TestAgent::start(
        settings(AGENT_2, VHOST_2, vec![ctl.addr], None, GRACE),
        true,
    )
    .await;

    // Bad input before anything exists: 400, the reason, nothing stored.
    let bad = [
        (
            port_json("a1", 1, "10.1.1.300", None, VN_A),
            "ip-address",
        ),
        (
            r#"{"id":"a1","mac-address":"zz","ip-address":"10.1.1.3","vn-name":"d:p:n"}"#.into(),
            "mac-address",
        ),
        (
            r#"{"id":"a1","mac-address":"02:00:00:00:00:01","ip-address":"10.1.1.3","vn-name":"d:p:n","bogus":1}"#
                .into(),
            "bogus",
        ),
        ("not json".to_owned(), "JSON"),
    ];
    for (body, needle) in &bad {
        let (status, text) = a.api("POST", "/port", Some(body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            text.contains(needle),
            "{body}: reason {text:?} lacks {needle:?}"
        );
    }
    assert!(a.agent.ports().is_empty(), "a refused port was stored");
    let (status, text) = a.api("GET", "/ports", None).await;
    assert_eq!((status, text.trim()), (200, "[]"));

    for (agent, body) in [
        (&a, port_json("a1", 1, "10.1.1.3", Some("fd00:a::3"), VN_A)),
        (&a, port_json("a2", 2, "10.1.1.4", None, VN_A)),
        (&a, port_json("a3", 3, "10.2.2.3", None, VN_B)),
        (&b, port_json("b1", 4, "10.1.1.5", Some("fd00:a::5"), VN_A)),
        (&b, port_json("b2", 5, "10.9.9.5", None, VN_PRIVATE)),
    ] {
        let (status, text) = agent.api("POST", "/port", Some(&body)).await;
        assert_eq!(status, 200, "{body}: {text}");
        assert!(text.contains("added"), "{text}");
    }
    let a_table = converged(&a, &[&b]).await;
    let b_table = converged(&b, &[&a]).await;
    // Only the shared VRF is exchanged; next-hop and label are the other agent's.
    assert_eq!(a_table.keys().collect::<Vec<_>>(), vec![VRF_A]);
    assert_eq!(b_table.keys().collect::<Vec<_>>(), vec![VRF_A]);
    assert!(a_table[VRF_A].contains(&(
        "10.1.1.5/32".into(),
        VHOST_2.parse().expect("ip"),
        b.label("b1")
    )));
    assert!(a_table[VRF_A].contains(&(
        "fd00:a::5/128".into(),
        VHOST_2.parse().expect("ip"),
        b.label("b1")
    )));
    for c in [a.channel(0), b.channel(0)] {
        assert_eq!(c.state, "Established", "{c:?}");
        assert_eq!(c.xmpp_auth_type, "NIL", "{c:?}");
        assert_eq!(c.peer_name.as_deref(), Some("ctrl-1"), "{c:?}");
    }
    control_converged(&ctl, VRF_A, &[&a, &b]).await;

    // A bad replacement of an existing port changes nothing, here or anywhere.
    let ports_before = a.agent.ports();
    let (status, text) = a
        .api(
            "POST",
            "/port",
            Some(&port_json("a1", 1, "224.0.0.1", None, VN_A)),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("ip-address"), "{text}");
    assert_eq!(a.agent.ports(), ports_before);
    assert_eq!(learned(&b.agent), b_table);

    // A good replacement (same id, new address) moves the route: the old prefix is
    // withdrawn, the new one published with the port's label.
    let label = a.label("a1");
    let (status, text) = a
        .api(
            "POST",
            "/port",
            Some(&port_json("a1", 1, "10.1.1.13", Some("fd00:a::3"), VN_A)),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(a.label("a1"), label);
    let b_table = converged(&b, &[&a]).await;
    let prefixes: BTreeSet<&str> = b_table[VRF_A].iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(
        prefixes.contains("10.1.1.13/32") && !prefixes.contains("10.1.1.3/32"),
        "{b_table:?}"
    );
    control_converged(&ctl, VRF_A, &[&a, &b]).await;

    // DELETE through the API: withdrawn from the other agent and the control node.
    let (status, text) = a.api("DELETE", "/port/a2", None).await;
    assert_eq!(status, 200, "{text}");
    let b_table = converged(&b, &[&a]).await;
    assert!(
        !b_table[VRF_A].iter().any(|(p, _, _)| p == "10.1.1.4/32"),
        "{b_table:?}"
    );
    control_converged(&ctl, VRF_A, &[&a, &b]).await;
    assert!(
        !ctl.vrf_paths(VRF_A)
            .await
            .iter()
            .any(|(p, _)| p == "10.1.1.4/32")
    );
    let (status, text) = a.api("DELETE", "/port/a2", None).await;
    assert_eq!(status, 404, "{text}");

    // The last port of a VRF: its routes go and the agent unsubscribes.
    let (status, _) = a.api("DELETE", "/port/a3", None).await;
    assert_eq!(status, 200);
    eventually_async("net-b gone from the control node", STEP, async || {
        let vrfs = ctl.vrfs().await;
        if vrfs.iter().any(|v| v["name"] == VRF_B) {
            Err(format!("{vrfs:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(learned(&b.agent), b_table, "b never had net-b");

    // An agent that stops closes its stream: the control node withdraws its routes from
    // the other agent at once (no grace period applies to routes that are retracted).
    a.stop().await;
    eventually("a's routes withdrawn from b", STEP, || {
        let t = b.agent.routes();
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;
    control_converged(&ctl, VRF_A, &[&b]).await;
    b.stop().await;
    ctl.kill().await;
}

/// The last port of a VRF removed: the agent withdraws its routes there and unsubscribes;
/// the other agent and the control node lose them, and the agent itself forgets what it
/// had learned in that VRF (control sends no retracts to an agent that unsubscribes; the
/// C++ agent deletes the VRF with its routes). A port added back re-subscribes and gets
/// the VRF's routes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_port_of_a_vrf_removed_unsubscribes_and_forgets_its_routes() {
    let ctl = Control::start(None).await;
    let a = TestAgent::start(settings(AGENT, VHOST_1, vec![ctl.addr], None, GRACE), false).await;
    let b = TestAgent::start(
        settings(AGENT_2, VHOST_2, vec![ctl.addr], None, GRACE),
        false,
    )
    .await;
    a.add(&port_json("a1", 1, "10.1.1.3", None, VN_A));
    a.add(&port_json("a2", 2, "10.2.2.3", Some("fd00:b::3"), VN_B));
    b.add(&port_json("b1", 3, "10.1.1.5", None, VN_A));
    b.add(&port_json("b2", 4, "10.2.2.5", None, VN_B));
    let t = converged(&a, &[&b]).await;
    assert_eq!(t.keys().collect::<Vec<_>>(), vec![VRF_A, VRF_B]);
    converged(&b, &[&a]).await;

    assert!(a.agent.remove_port("a2").expect("remove"));
    let b_table = converged(&b, &[&a]).await;
    assert!(!b_table.contains_key(VRF_B), "{b_table:?}");
    control_converged(&ctl, VRF_B, &[&a, &b]).await;
    let a_table = converged(&a, &[&b]).await;
    assert_eq!(
        a_table.keys().collect::<Vec<_>>(),
        vec![VRF_A],
        "{a_table:?}"
    );
    assert!(view(&a.agent, VRF_B, "10.2.2.5/32").is_none());

    a.add(&port_json("a2", 2, "10.2.2.3", None, VN_B));
    let a_table = converged(&a, &[&b]).await;
    assert_eq!(a_table.keys().collect::<Vec<_>>(), vec![VRF_A, VRF_B]);
    converged(&b, &[&a]).await;
    control_converged(&ctl, VRF_B, &[&a, &b]).await;

    a.stop().await;
    b.stop().await;
    ctl.kill().await;
}

/// `xmpp_auth_enable=true` on both sides: STARTTLS with certificates whose CN is the agent
/// name and a control certificate with IP SAN 127.0.0.1 (the agent verifies the address
/// it dials). Routes are exchanged and a removed port is withdrawn everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_learn_each_others_routes_over_tls() {
    let pki = Pki::new("agent-tls");
    let (_, files_2) = pki.client_leaf("client-2", AGENT_2, vec![]);
    let ctl = Control::start(Some(server_tls(&pki))).await;
    let a = TestAgent::start(
        settings(
            AGENT,
            VHOST_1,
            vec![ctl.addr],
            Some(client_tls(&pki.client_files)),
            GRACE,
        ),
        false,
    )
    .await;
    let b = TestAgent::start(
        settings(
            AGENT_2,
            VHOST_2,
            vec![ctl.addr],
            Some(client_tls(&files_2)),
            GRACE,
        ),
        false,
    )
    .await;
    a.add(&port_json("a1", 1, "10.1.1.3", Some("fd00:a::3"), VN_A));
    a.add(&port_json("a2", 2, "10.1.1.4", None, VN_A));
    b.add(&port_json("b1", 3, "10.1.1.5", None, VN_A));
    b.add(&port_json("b2", 4, "10.2.2.5", None, VN_B));

    converged(&a, &[&b]).await;
    converged(&b, &[&a]).await;
    for c in [a.channel(0), b.channel(0)] {
        assert_eq!(c.state, "Established", "{c:?}");
        assert_eq!(c.xmpp_auth_type, "TLS", "{c:?}");
    }
    let (_, conns) = ctl.get_json("/connections").await;
    let auth: BTreeMap<String, String> = conns
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_owned(),
                c["auth_type"].as_str().expect("auth").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        auth,
        BTreeMap::from([
            (AGENT.to_owned(), "TLS".to_owned()),
            (AGENT_2.to_owned(), "TLS".to_owned())
        ])
    );
    control_converged(&ctl, VRF_A, &[&a, &b]).await;

    // Removed: gone from the other agent's table and from the control node's VRF.
    assert!(b.agent.remove_port("b1").expect("remove"));
    let a_table = converged(&a, &[&b]).await;
    assert!(!a_table.contains_key(VRF_A), "{a_table:?}");
    assert!(view(&a.agent, VRF_A, "10.1.1.5/32").is_none());
    control_converged(&ctl, VRF_A, &[&a, &b]).await;
    assert!(
        !ctl.vrf_paths(VRF_A)
            .await
            .iter()
            .any(|(_, peer)| peer == AGENT_2)
    );

    a.stop().await;
    b.stop().await;
    ctl.kill().await;
}

// ============================================================== 2. control node restart

/// A control node killed and restarted on the same port: both agents notice, retry on the
/// backoff schedule (1 s, then 2 s, spec §5.4) while nothing listens, reconnect to the new
/// node, re-subscribe and re-publish, and end with the same tables as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_node_restarted_on_the_same_port_agents_reconverge() {
    let ctl = Control::start(None).await;
    let a = TestAgent::start(settings(AGENT, VHOST_1, vec![ctl.addr], None, GRACE), false).await;
    let b = TestAgent::start(
        settings(AGENT_2, VHOST_2, vec![ctl.addr], None, GRACE),
        false,
    )
    .await;
    a.add(&port_json("a1", 1, "10.1.1.3", Some("fd00:a::3"), VN_A));
    a.add(&port_json("a2", 2, "10.2.2.3", None, VN_B));
    b.add(&port_json("b1", 3, "10.1.1.5", None, VN_A));
    b.add(&port_json("b2", 4, "10.2.2.5", Some("fd00:b::5"), VN_B));
    converged(&a, &[&b]).await;
    converged(&b, &[&a]).await;
    let before = [a.agent.routes(), b.agent.routes()];
    let attempts = [a.channel(0).connect_attempts, b.channel(0).connect_attempts];

    let killed_at = Instant::now();
    let addr = ctl.kill().await;
    // Down, then a failed attempt while nothing listens (the restart must be a reconnect,
    // not a lucky first try).
    for (agent, before) in [(&a, attempts[0]), (&b, attempts[1])] {
        eventually("a failed reconnect attempt", STEP, || {
            let c = agent.channel(0);
            // `connect: …` is a failed TCP connect (not the "connection closed" of the
            // session that ended).
            let refused = c
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("connect: "));
            if c.state != "Established" && c.connect_attempts > before && refused {
                Ok(())
            } else {
                Err(format!("{c:?}"))
            }
        })
        .await;
    }
    let ctl = Control::start_on(addr, None).await;
    assert_eq!(ctl.addr, addr);
    for (agent, before) in [(&a, &before[0]), (&b, &before[1])] {
        eventually("the same table after the restart", STEP, || {
            let c = agent.channel(0);
            let now = agent.agent.routes();
            if c.state == "Established" && now == *before {
                Ok(())
            } else {
                Err(format!("{c:?}; routes {now:?}"))
            }
        })
        .await;
        let c = agent.channel(0);
        assert!(c.flap_count >= 1, "{c:?}");
    }
    // Waits of ≈1 s and ≈2 s (−10 % jitter) lie between the kill and the reconnect.
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "reconnected after {took:?}: no backoff"
    );
    control_converged(&ctl, VRF_A, &[&a, &b]).await;
    control_converged(&ctl, VRF_B, &[&a, &b]).await;

    a.stop().await;
    b.stop().await;
    ctl.kill().await;
}

// ============================================================== 3. two control nodes

/// Agents a and b talk to both control nodes; agent c only to the first. When the first
/// dies: routes a and b learned through both stay, through the second, after the grace
/// period; c's routes, which a and b learned only through the dead node, are kept (stale)
/// during the grace period and removed after it. (With every agent on both control nodes
/// no route is learned through one node only, so the third agent is what makes the second
/// case observable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_nodes_one_killed_routes_kept_through_the_other() {
    let grace = Duration::from_millis(1000);
    let c1 = Control::start(None).await;
    let c2 = Control::start(None).await;
    let a = TestAgent::start(
        settings(AGENT, VHOST_1, vec![c1.addr, c2.addr], None, grace),
        false,
    )
    .await;
    let b = TestAgent::start(
        settings(AGENT_2, VHOST_2, vec![c1.addr, c2.addr], None, grace),
        false,
    )
    .await;
    let c = TestAgent::start(
        settings(AGENT_3, VHOST_3, vec![c1.addr], None, grace),
        false,
    )
    .await;
    a.add(&port_json("a1", 1, "10.1.1.3", None, VN_A));
    b.add(&port_json("b1", 2, "10.1.1.5", Some("fd00:a::5"), VN_A));
    c.add(&port_json("c1", 3, "10.1.1.7", None, VN_A));
    converged(&a, &[&b, &c]).await;
    converged(&b, &[&a, &c]).await;
    converged(&c, &[&a, &b]).await;
    // Channel sets settle after convergence of the merged view: wait for both copies.
    for (agent, other) in [(&a, "10.1.1.5/32"), (&b, "10.1.1.3/32")] {
        eventually("learned through both control nodes", STEP, || {
            let v = view(&agent.agent, VRF_A, other).ok_or("missing")?;
            if v.channels == vec![0, 1] {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        })
        .await;
        let v = view(&agent.agent, VRF_A, "10.1.1.7/32").expect("c's route");
        assert_eq!(v.channels, vec![0], "{v:?}");
    }
    control_converged(&c2, VRF_A, &[&a, &b]).await;

    let killed_at = Instant::now();
    c1.kill().await;
    for agent in [&a, &b] {
        eventually("channel 0 down", STEP, || {
            let ch = agent.channel(0);
            if ch.state == "Established" {
                Err(format!("{ch:?}"))
            } else {
                Ok(())
            }
        })
        .await;
        // Within the grace period: c's route is kept, marked stale; the other's is fresh
        // through channel 1.
        let v = view(&agent.agent, VRF_A, "10.1.1.7/32");
        if killed_at.elapsed() < grace {
            let v = v.expect("c's route kept during the grace period");
            assert!(v.stale, "{v:?}");
        }
        assert_eq!(agent.channel(1).state, "Established");
    }
    // After the grace period.
    for (agent, other, other_agent) in [(&a, "10.1.1.5/32", &b), (&b, "10.1.1.3/32", &a)] {
        eventually(
            "c's route removed after the grace period",
            STEP,
            || match view(&agent.agent, VRF_A, "10.1.1.7/32") {
                None => Ok(()),
                Some(v) => Err(format!("{v:?}")),
            },
        )
        .await;
        assert!(
            killed_at.elapsed() >= grace,
            "removed after {:?}, before the grace period",
            killed_at.elapsed()
        );
        let v = view(&agent.agent, VRF_A, other).expect("route learned through both is kept");
        assert_eq!(v.channels, vec![1], "{v:?}");
        assert!(!v.stale, "{v:?}");
        let ip = other_agent.agent.settings.vhost_ip;
        assert!(v.next_hops.iter().all(|nh| nh.address == ip), "{v:?}");
        assert_eq!(
            learned(&agent.agent),
            expected(&agent.agent, &[other_agent])
        );
    }
    // c talked only to the dead node: after the grace period it has nothing left.
    eventually("c's table empty after the grace period", STEP, || {
        let t = c.agent.routes();
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;

    a.stop().await;
    b.stop().await;
    c.stop().await;
    c2.kill().await;
}

// ============================================================== 4. TLS mismatches

/// `xmpp_auth_enable=true` on the agent against a plain control node: the negotiation
/// fails with an error naming STARTTLS, the agent never goes Established nor sends an IQ,
/// and the control node learns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_agent_against_plain_control_node_fails_clearly() {
    let pki = Pki::new("agent-tls-plain-ctl");
    let ctl = Control::start(None).await;
    let a = TestAgent::start(
        settings(
            AGENT,
            VHOST_1,
            vec![ctl.addr],
            Some(client_tls(&pki.client_files)),
            GRACE,
        ),
        false,
    )
    .await;
    a.add(&port_json("a1", 1, "10.1.1.3", None, VN_A));
    let c = eventually("a clear TLS error, twice", STEP, || {
        let c = a.channel(0);
        let clear = c
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("TLS") && e.contains("STARTTLS"));
        if clear && c.connect_attempts >= 2 {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    assert_ne!(c.state, "Established", "{c:?}");
    assert_eq!(c.tx_updates, 0, "{c:?}");
    assert_eq!(
        a.agent.metrics.sessions_established.load(Ordering::Relaxed),
        0
    );
    assert!(ctl.vrfs().await.is_empty());
    assert_eq!(ctl.routes_received(), 0);
    assert!(a.agent.routes().is_empty());

    a.stop().await;
    ctl.kill().await;
}

/// A plain agent against a TLS-required control node: the agent's first stanza is refused
/// by the control node, the agent reports the STARTTLS requirement, and no route is
/// exchanged in plaintext (the control node's table stays empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_agent_against_tls_control_node_fails_clearly() {
    let pki = Pki::new("agent-plain-tls-ctl");
    let ctl = Control::start(Some(server_tls(&pki))).await;
    // A TLS agent on the same node proves the node works and gives it routes to leak.
    let (_, files_2) = pki.client_leaf("client-2", AGENT_2, vec![]);
    let b = TestAgent::start(
        settings(
            AGENT_2,
            VHOST_2,
            vec![ctl.addr],
            Some(client_tls(&files_2)),
            GRACE,
        ),
        false,
    )
    .await;
    b.add(&port_json("b1", 2, "10.1.1.5", None, VN_A));
    control_converged(&ctl, VRF_A, &[&b]).await;

    let a = TestAgent::start(settings(AGENT, VHOST_1, vec![ctl.addr], None, GRACE), false).await;
    a.add(&port_json("a1", 1, "10.1.1.3", None, VN_A));
    let c = eventually("a clear TLS error, twice", STEP, || {
        let c = a.channel(0);
        let clear = c
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("TLS") && e.contains("STARTTLS"));
        if clear && c.connect_attempts >= 2 {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    assert_eq!(c.xmpp_auth_type, "NIL");
    // Nothing crossed in plaintext: the control node holds only b's TLS route, and a
    // learned nothing.
    assert_eq!(ctl.vrf_paths(VRF_A).await, control_expected(VRF_A, &[&b]));
    let vrfs = ctl.vrfs().await;
    assert_eq!(vrfs.len(), 1, "{vrfs:?}");
    assert_eq!(vrfs[0]["subscribers"], 1, "{vrfs:?}");
    assert_eq!(ctl.routes_received(), 1);
    assert!(a.agent.routes().is_empty(), "{:?}", a.agent.routes());
    assert!(
        learned(&b.agent).is_empty(),
        "b learned a's plaintext route"
    );

    a.stop().await;
    b.stop().await;
    ctl.kill().await;
}

// ============================================================== 5. reconnect backoff

/// Against a port where nothing listens the channel retries on the Contrail schedule: a
/// first attempt after ≈50 ms, then waits of ≈1 s and ≈2 s (−10 %/+7 % jitter), in states
/// Active/Connect, with the connect error recorded. Real time: the agent dials real
/// sockets and its jitter and sweeper read the system clock, so paused time does not
/// apply; the schedule costs about 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_backoff_against_a_closed_port() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind probe");
        l.local_addr().expect("addr")
    };
    let started = Instant::now();
    let a = TestAgent::start(settings(AGENT, VHOST_1, vec![closed], None, GRACE), false).await;
    let mut seen_at: Vec<Instant> = Vec::new();
    let mut states = BTreeSet::new();
    eventually("three connection attempts", STEP, || {
        let c = a.channel(0);
        states.insert(c.state);
        while seen_at.len() < c.connect_attempts as usize {
            seen_at.push(Instant::now());
        }
        if c.connect_attempts >= 3 {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    let c = a.channel(0);
    assert_eq!(c.connect_attempts, 3, "{c:?}");
    assert!(
        states
            .iter()
            .all(|s| ["Idle", "Active", "Connect"].contains(s)),
        "{states:?}"
    );
    assert!(
        states.contains("Active") || states.contains("Connect"),
        "{states:?}"
    );
    assert!(
        c.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("connect: ")),
        "{c:?}"
    );
    assert!(a.agent.metrics.connect_failures.load(Ordering::Relaxed) >= 2);
    let first = seen_at[0] - started;
    let gap1 = seen_at[1] - seen_at[0];
    let gap2 = seen_at[2] - seen_at[1];
    assert!(
        first < Duration::from_millis(800),
        "first attempt after {first:?}"
    );
    assert!(
        gap1 >= Duration::from_millis(700) && gap1 < Duration::from_millis(1800),
        "second attempt {gap1:?} after the first (≈1 s)"
    );
    assert!(
        gap2 >= Duration::from_millis(1500) && gap2 < Duration::from_millis(3000),
        "third attempt {gap2:?} after the second (≈2 s)"
    );
    a.stop().await;
}

// ============================================================== 6. C++ framing of our bytes

/// Spec §2.2: the bytes `XmppSession::Match` counts as whitespace (" \n\r\t" + U+0200).
const CXX_WS: &[u8] = b" \n\r\t\xC8\x80";

/// One message as the C++ receiver cuts it out of the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// A whitespace run (keepalive).
    Keepalive(Vec<u8>),
    /// The stream header text (including anything before `<stream:stream`).
    Header(String),
    /// `<iq …>…</iq>` (including anything before `<iq`).
    Iq(String),
    /// `<message …>…</message>`.
    Message(String),
}

/// Finds `pat` in `hay` from `from`.
fn find(hay: &[u8], pat: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// boost `\s` (space, \t, \n, \v, \f, \r).
fn is_regex_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// The end of the first match of `lit` + `tail`-rule at or after `from`: `lit`, then (for a
/// header) a quote, then `[\s]*`, then `>`. `None` when more bytes are needed.
fn find_end(buf: &[u8], from: usize, lit: &[u8], quote: bool) -> Option<usize> {
    let mut at = from;
    while let Some(p) = find(buf, lit, at) {
        let mut i = p + lit.len();
        let ok_quote = !quote || matches!(buf.get(i), Some(b'"' | b'\''));
        if quote && buf.get(i).is_none() {
            return None;
        }
        if ok_quote {
            if quote {
                i += 1;
            }
            while buf.get(i).is_some_and(|b| is_regex_space(*b)) {
                i += 1;
            }
            match buf.get(i) {
                None => return None,
                Some(b'>') => return Some(i + 1),
                Some(_) => {}
            }
        }
        at = p + 1;
    }
    None
}

/// Cuts `buf` the way `XmppSession::Match` does for a server (spec §2.2): first the
/// header (Active state), then — the plain session being Established — whitespace runs,
/// `<iq`…first `</iq>` and `<message`…first `</message>`. Returns the frames and the
/// unconsumed rest.
fn cxx_frames(buf: &[u8]) -> (Vec<Frame>, &[u8]) {
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut established = false;
    loop {
        let ws = buf[pos..].iter().take_while(|b| CXX_WS.contains(b)).count();
        if ws > 0 {
            frames.push(Frame::Keepalive(buf[pos..pos + ws].to_vec()));
            pos += ws;
            continue;
        }
        if !established {
            let Some(begin) = find(buf, b"<stream:stream", pos) else {
                break;
            };
            let Some(end) = find_end(buf, begin, STREAM_NS.as_bytes(), true) else {
                break;
            };
            frames.push(Frame::Header(
                String::from_utf8_lossy(&buf[pos..end]).into_owned(),
            ));
            pos = end;
            established = true;
            continue;
        }
        let iq = find(buf, b"<iq", pos);
        let msg = find(buf, b"<message", pos);
        let (begin, is_iq) = match (iq, msg) {
            (Some(i), Some(m)) if i < m => (i, true),
            (Some(i), None) => (i, true),
            (_, Some(m)) => (m, false),
            (None, None) => break,
        };
        let close: &[u8] = if is_iq { b"</iq" } else { b"</message" };
        let Some(end) = find_end(buf, begin, close, false) else {
            break;
        };
        let text = String::from_utf8_lossy(&buf[pos..end]).into_owned();
        frames.push(if is_iq {
            Frame::Iq(text)
        } else {
            Frame::Message(text)
        });
        pos = end;
    }
    (frames, &buf[pos..])
}

/// A parsed element: what pugixml gives the C++ receiver (whitespace-only text dropped).
#[derive(Debug, Clone, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
    self_closing: bool,
}

impl Node {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn descendants(&self, name: &str) -> Vec<&Node> {
        let mut out = Vec::new();
        for c in &self.children {
            if c.name == name {
                out.push(c);
            }
            out.extend(c.descendants(name));
        }
        out
    }
}

fn node_from(s: &BytesStart<'_>, self_closing: bool) -> Result<Node, String> {
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| format!("attribute: {e}"))?;
        let v = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| format!("attribute value: {e}"))?;
        attrs.push((a.key.0.to_owned(), v.into_owned()));
    }
    Ok(Node {
        name: s.name().0.to_owned(),
        attrs,
        self_closing,
        ..Node::default()
    })
}

/// Parses one cut-out message as a standalone document: exactly one root element, at
/// most a declaration and whitespace around it.
fn parse_standalone(text: &str) -> Result<Node, String> {
    let mut r = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let attach = |stack: &mut Vec<Node>, n: Node, root: &mut Option<Node>| {
        if let Some(p) = stack.last_mut() {
            p.children.push(n);
            Ok(())
        } else if root.is_some() {
            Err(format!("a second root element <{}>", n.name))
        } else {
            *root = Some(n);
            Ok(())
        }
    };
    loop {
        let ev = r
            .read_event()
            .map_err(|e| format!("{e} at byte {}", r.buffer_position()))?;
        match ev {
            Event::Start(s) => {
                if stack.is_empty() && root.is_some() {
                    return Err("a second root element".into());
                }
                stack.push(node_from(&s, false)?);
            }
            Event::Empty(s) => attach(&mut stack, node_from(&s, true)?, &mut root)?,
            Event::End(_) => {
                let n = stack.pop().ok_or("an end tag without a start")?;
                attach(&mut stack, n, &mut root)?;
            }
            Event::Text(t) => match stack.last_mut() {
                Some(p) if !t.trim().is_empty() => p.text.push_str(&t),
                None if !t.trim().is_empty() => {
                    return Err(format!("text outside the root: {t:?}"));
                }
                _ => {}
            },
            Event::GeneralRef(g) => {
                let c = match g.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c,
                    None => match &*g {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(format!("unknown entity &{other};")),
                    },
                };
                stack
                    .last_mut()
                    .ok_or("a reference outside the root")?
                    .text
                    .push(c);
            }
            Event::CData(c) => stack
                .last_mut()
                .ok_or("CDATA outside the root")?
                .text
                .push_str(&c),
            Event::Decl(_) if root.is_none() && stack.is_empty() => {}
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                return Err(format!("unexpected {ev:?}"));
            }
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{}> is not closed", open.name));
    }
    root.ok_or_else(|| "no element".into())
}

/// The header as `XmppProto::DecodeInternal` reads it (spec §2.3 rule 3): newlines removed,
/// must start with `<stream:stream`, must not be self-closing; the last `>` becomes `/>`
/// and the result must parse.
fn parse_cxx_header(text: &str) -> Result<Node, String> {
    let flat: String = text.chars().filter(|c| *c != '\n').collect();
    if !flat.starts_with("<stream:stream") {
        return Err(format!("does not start with <stream:stream: {flat:?}"));
    }
    let last = flat.rfind('>').ok_or("no '>'")?;
    if flat[..last].trim_end().ends_with('/') {
        return Err(format!("self-closing header: {flat:?}"));
    }
    let closed = format!("{}/>{}", &flat[..last], &flat[last + 1..]);
    parse_standalone(&closed)
}

/// What the checks found in the agent's stanzas.
#[derive(Debug, Default)]
struct Observed {
    /// (VRF, instance id) in order of subscription.
    subscribed: Vec<(String, String)>,
    unsubscribed: Vec<String>,
    /// (publish node, associate?) in order.
    routes: Vec<(String, bool)>,
    eor_messages: usize,
}

/// Checks a capture of what an agent sent a control node against the C++ receiver's rules
/// (spec §2.2, §2.3, §3.1, §6.2, §6.3, §6.5, §11); returns what it saw, or the first
/// violation.
fn check_capture(capture: &[u8], hostname: &str) -> Result<Observed, String> {
    let (frames, rest) = cxx_frames(capture);
    if !rest.is_empty() {
        return Err(format!(
            "bytes the C++ framer cannot cut: {:?}",
            String::from_utf8_lossy(rest)
        ));
    }
    let mut it = frames.iter().peekable();
    // §3.1: the header first, exactly; then §3.2: the C8 80 keepalive.
    let Some(Frame::Header(h)) = it.next() else {
        return Err(format!(
            "the capture does not start with a header: {frames:?}"
        ));
    };
    if h.len() >= 1024 {
        return Err(format!("header of {} bytes", h.len()));
    }
    let header = parse_cxx_header(h).map_err(|e| format!("header {h:?}: {e}"))?;
    let names: Vec<&str> = header.attrs.iter().map(|(k, _)| k.as_str()).collect();
    if names != ["from", "to", "version", "xml:lang", "xmlns", "xmlns:stream"] {
        return Err(format!("header attribute order {names:?}: {h:?}"));
    }
    for (k, v) in [
        ("from", hostname),
        ("to", CONTROL_JID),
        ("version", "1.0"),
        ("xmlns", ""),
        ("xmlns:stream", STREAM_NS),
    ] {
        if header.attr(k) != Some(v) {
            return Err(format!("header {k}={:?}, want {v:?}", header.attr(k)));
        }
    }
    if it.next() != Some(&Frame::Keepalive(vec![0xC8, 0x80])) {
        return Err(format!(
            "the header is not followed by exactly C8 80: {frames:?}"
        ));
    }
    let mut seen = Observed::default();
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    // A publish waiting for its collection: (node, VRF, iq sequence number).
    let mut pending: Option<(String, String, String)> = None;
    for frame in it {
        let (text, want) = match frame {
            Frame::Keepalive(_) => continue,
            Frame::Header(h) => return Err(format!("a second header: {h:?}")),
            Frame::Iq(t) => (t, "iq"),
            Frame::Message(t) => (t, "message"),
        };
        if !text.starts_with(&format!("<{want}")) {
            return Err(format!(
                "junk before a stanza (prefixed to it by C++): {text:?}"
            ));
        }
        // §2.3: classification is by substring, `<iq` first.
        if want == "message" && text.contains("<iq") {
            return Err(format!(
                "a message the C++ side would take for an IQ: {text:?}"
            ));
        }
        let el = parse_standalone(text).map_err(|e| format!("{e}: {text:?}"))?;
        if el.name != want || el.self_closing {
            return Err(format!("not an explicitly closed <{want}>: {text:?}"));
        }
        if el.attr("from") != Some(hostname)
            || !el.attr("to").is_some_and(|t| t.contains("bgp-peer"))
        {
            return Err(format!("from/to: {text:?}"));
        }
        if want == "message" {
            if pending.is_some() {
                return Err(format!(
                    "a message between publish and collection: {text:?}"
                ));
            }
            let eor = el
                .descendants("items")
                .iter()
                .any(|i| i.attr("node") == Some("0/0/EndOfRib"));
            if !eor {
                return Err(format!("unexpected message: {text:?}"));
            }
            seen.eor_messages += 1;
            continue;
        }
        if el.attr("type") != Some("set") {
            return Err(format!("iq type: {text:?}"));
        }
        let id = el.attr("id").unwrap_or_default();
        let pubsub = el.child("pubsub").ok_or(format!("no pubsub: {text:?}"))?;
        let action = pubsub
            .children
            .first()
            .ok_or(format!("empty pubsub: {text:?}"))?;
        let node = action.attr("node").unwrap_or_default().to_owned();
        if pending.is_some() && action.name != "collection" {
            return Err(format!("publish not followed by its collection: {text:?}"));
        }
        match action.name.as_str() {
            "subscribe" => {
                let instance = action
                    .child("options")
                    .and_then(|o| o.child("instance-id"))
                    .map(|i| i.text.clone())
                    .ok_or(format!("subscribe without instance-id: {text:?}"))?;
                if instance.parse::<u32>().is_err() || !id.starts_with("subscribe") {
                    return Err(format!("subscribe id/instance-id: {text:?}"));
                }
                if !subscribed.insert(node.clone()) {
                    return Err(format!("duplicate subscribe (control closes): {text:?}"));
                }
                seen.subscribed.push((node, instance));
            }
            "unsubscribe" => {
                if !subscribed.remove(&node) {
                    return Err(format!("unsubscribe without subscribe: {text:?}"));
                }
                seen.unsubscribed.push(node);
            }
            "publish" => {
                let seq = id
                    .strip_prefix("pubsub")
                    .ok_or(format!("publish id: {text:?}"))?;
                // `AFI/SAFI/<vrf>/<prefix>`; the prefix holds one '/'.
                let rest = node.splitn(3, '/').nth(2).unwrap_or_default();
                let vrf = rest.rsplitn(3, '/').nth(2).unwrap_or_default().to_owned();
                if !subscribed.contains(&vrf) {
                    return Err(format!("publish in {vrf:?} before its subscribe: {text:?}"));
                }
                let items = action.descendants("item");
                let hops = action.descendants("next-hop");
                let label = hops
                    .first()
                    .and_then(|h| h.child("label"))
                    .map(|l| l.text.as_str());
                if items.len() != 1 || hops.len() != 1 || matches!(label, None | Some("0")) {
                    return Err(format!("not one item with one labelled next-hop: {text:?}"));
                }
                pending = Some((node, vrf, seq.to_owned()));
            }
            "collection" => {
                let (pnode, vrf, seq) = pending
                    .take()
                    .ok_or(format!("collection without a publish: {text:?}"))?;
                let assoc = action.child("associate");
                let dissoc = action.child("dissociate");
                let (target, add) = match (assoc, dissoc) {
                    (Some(a), None) => (a, true),
                    (None, Some(d)) => (d, false),
                    _ => return Err(format!("collection op: {text:?}")),
                };
                if node != vrf
                    || target.attr("node") != Some(pnode.as_str())
                    || id != format!("collection{seq}")
                {
                    return Err(format!(
                        "collection does not match publish {pnode:?} ({vrf}, {seq}): {text:?}"
                    ));
                }
                seen.routes.push((pnode, add));
            }
            other => return Err(format!("unexpected pubsub action {other}: {text:?}")),
        }
    }
    if let Some((node, _, _)) = pending {
        return Err(format!("publish {node} never followed by its collection"));
    }
    Ok(seen)
}

/// Reads from `tcp` into `capture` until `done` holds for the C++ framing of it.
async fn read_until(
    tcp: &mut TcpStream,
    capture: &mut Vec<u8>,
    what: &str,
    done: impl Fn(&[Frame], &[u8]) -> bool,
) {
    let step = async {
        loop {
            let (frames, rest) = cxx_frames(capture);
            if done(&frames, rest) {
                return;
            }
            let mut buf = [0u8; 16 * 1024];
            let n = tcp.read(&mut buf).await.expect("read from the agent");
            assert!(n > 0, "{what}: the agent closed; so far {frames:?}");
            capture.extend_from_slice(&buf[..n]);
        }
    };
    timeout(STEP, step).await.unwrap_or_else(|_| {
        panic!(
            "{what}: not within {STEP:?}; capture {:?}",
            String::from_utf8_lossy(capture)
        )
    });
}

fn has_iq_with(frames: &[Frame], needle: &str) -> bool {
    frames
        .iter()
        .any(|f| matches!(f, Frame::Iq(t) if t.contains(needle)))
}

/// The agent's bytes, captured by a raw fake control node that answers with the C++
/// server header, pass the C++ receiver's framing and decoding rules: the header layout,
/// the C8 80 keepalive, explicit end tags, subscribe before publish, publish + collection
/// pairs, withdraw before unsubscribe, and the end-of-RIB message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_bytes_follow_the_cxx_framing_rules() {
    let fake = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake control");
    let addr = fake.local_addr().expect("addr");
    let a = TestAgent::start(settings(AGENT, VHOST_1, vec![addr], None, GRACE), false).await;
    // Before the first connect (≈50 ms): part of the initial sync.
    a.add(&port_json("p1", 1, "10.1.1.3", Some("fd00:a::3"), VN_A));
    a.add(&port_json("p2", 2, "10.2.2.3", None, VN_B));
    let (mut tcp, _) = timeout(STEP, fake.accept())
        .await
        .expect("the agent connects")
        .expect("accept");
    let mut capture = Vec::new();
    read_until(&mut tcp, &mut capture, "the agent's header", |f, _| {
        f.iter().any(|f| matches!(f, Frame::Header(_)))
    })
    .await;
    tcp.write_all(CXX_SERVER_HEADER.as_bytes())
        .await
        .expect("send header");
    read_until(&mut tcp, &mut capture, "initial sync and EoR", |f, rest| {
        rest.is_empty() && f.iter().any(|f| matches!(f, Frame::Message(_)))
    })
    .await;
    let c = a.channel(0);
    assert_eq!(c.state, "Established", "{c:?}");
    assert_eq!(c.peer_name.as_deref(), Some("ctrl"), "{c:?}");

    // Changes while established: a route in a subscribed VRF, a new VRF, and the last
    // port of a VRF removed (withdraw, then unsubscribe).
    a.add(&port_json("p3", 3, "10.1.1.4", None, VN_A));
    a.add(&port_json("p4", 4, "10.3.3.3", None, VN_C));
    assert!(a.agent.remove_port("p2").expect("remove"));
    read_until(&mut tcp, &mut capture, "the changes", |f, rest| {
        rest.is_empty()
            && has_iq_with(f, "<unsubscribe")
            && has_iq_with(f, "10.3.3.3/32")
            && has_iq_with(f, "10.1.1.4/32")
    })
    .await;

    let seen = check_capture(&capture, AGENT).unwrap_or_else(|e| {
        panic!(
            "C++ framing violation: {e}\ncapture: {:?}",
            String::from_utf8_lossy(&capture)
        )
    });
    let vrfs: Vec<&str> = seen.subscribed.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(vrfs, vec![VRF_A, VRF_B, VRF_C], "{seen:?}");
    assert_eq!(seen.unsubscribed, vec![VRF_B.to_owned()]);
    assert_eq!(seen.eor_messages, 1, "{seen:?}");
    let node = |vrf: &str, p: &str| {
        let afi = if p.contains(':') { 2 } else { 1 };
        format!("{afi}/1/{vrf}/{p}")
    };
    let mut want = vec![
        (node(VRF_A, "10.1.1.3/32"), true),
        (node(VRF_A, "fd00:a::3/128"), true),
        (node(VRF_B, "10.2.2.3/32"), true),
        (node(VRF_A, "10.1.1.4/32"), true),
        (node(VRF_C, "10.3.3.3/32"), true),
        (node(VRF_B, "10.2.2.3/32"), false),
    ];
    let mut got = seen.routes.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{seen:?}");
    // The EoR comes after the initial publishes (spec §5.8).
    let (frames, _) = cxx_frames(&capture);
    let eor_at = frames
        .iter()
        .position(|f| matches!(f, Frame::Message(_)))
        .expect("EoR");
    let initial_publishes = frames[..eor_at]
        .iter()
        .filter(|f| matches!(f, Frame::Iq(t) if t.contains("<publish")))
        .count();
    assert_eq!(initial_publishes, 3, "{frames:?}");

    a.stop().await;
}

/// The checker itself catches what the C++ receiver chokes on (so a passing capture
/// means something): a self-closing IQ, a self-closing header, junk between stanzas, a
/// publish without its collection, a publish before the subscribe, a wrong attribute order.
#[test]
fn cxx_framing_checker_rejects_what_cxx_rejects() {
    let header = "<stream:stream from=\"compute-1\" to=\"network-control@contrailsystems.com\" \
        version=\"1.0\" xml:lang=\"en\" xmlns=\"\" \
        xmlns:stream=\"http://etherx.jabber.org/streams\"  >";
    let sub = "<iq type=\"set\" from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\" id=\"subscribe1\">\n<pubsub xmlns=\"http://jabber.org/protocol/pubsub\">\n<subscribe node=\"v:v:n:n\">\n<options>\n<instance-id>1</instance-id>\n</options>\n</subscribe>\n</pubsub>\n</iq>\n";
    let publish = "<iq type=\"set\" from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\" id=\"pubsub2\"><pubsub><publish node=\"1/1/v:v:n:n/10.0.0.1/32\"><item><entry><next-hops><next-hop><label>16</label></next-hop></next-hops></entry></item></publish></pubsub></iq>\n";
    let collection = "<iq type=\"set\" from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\" id=\"collection2\"><pubsub><collection node=\"v:v:n:n\"><associate node=\"1/1/v:v:n:n/10.0.0.1/32\" /></collection></pubsub></iq>\n";
    let ka = "\u{200}";
    let good = format!("{header}{ka}{sub}{publish}{collection}");
    let seen = check_capture(good.as_bytes(), AGENT).expect("the good capture passes");
    assert_eq!(seen.routes.len(), 1);

    let self_closing_iq = "<iq type=\"set\" from=\"compute-1\" to=\"x/bgp-peer\" id=\"x\"/>";
    let swapped = header.replace(
        "version=\"1.0\" xml:lang=\"en\"",
        "xml:lang=\"en\" version=\"1.0\"",
    );
    for (bad, why) in [
        (
            format!("{header}{ka}{self_closing_iq}{sub}"),
            "self-closing iq",
        ),
        (
            format!("{}{ka}{sub}", header.replace("  >", "/>")),
            "self-closing header",
        ),
        (format!("{header}{ka}junk{sub}"), "junk"),
        (format!("{header}{ka}{sub}{publish}{sub}"), "no collection"),
        (format!("{header}{ka}{publish}{collection}"), "no subscribe"),
        (format!("{swapped}{ka}{sub}"), "attribute order"),
        (format!("{header}\n{sub}"), "newline keepalive"),
        (format!("{header}{ka}{sub}{sub}"), "duplicate subscribe"),
    ] {
        assert!(
            check_capture(bad.as_bytes(), AGENT).is_err(),
            "{why}: accepted {bad:?}"
        );
    }
}
