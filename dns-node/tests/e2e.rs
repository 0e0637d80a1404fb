//! End-to-end tests of the DNS node in process: the real node on port 0 (XMPP, DNS over UDP
//! and TCP, introspect), agents speaking the Contrail dialect with `xmpp_core::io::connect`,
//! updates written with `DnsUpdate::write`, and queries with hickory's DNS client. Every
//! wait polls with a deadline; no test sleeps to synchronise. Nothing leaves loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dns_node::records::{TYPE_A, TYPE_AAAA};
use dns_node::{Settings, Shared};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{DnsResponse, ResponseCode};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use xmpp_core::contrail::dns::{CLASS_ANY, CLASS_IN, CLASS_NONE, DnsEntry, DnsUpdate};
use xmpp_core::io::{Incoming, Timing, XmppStream, connect};
use xmpp_core::negotiate::ClientPolicy;
use xmpp_core::stanza::ns;
use xmpp_core::stream::Dialect;
use xmpp_core::tls::{ClientTls, ClientTlsOptions, ServerTls, ServerTlsOptions, TlsFiles};
use xmpp_core::xml::Limits;

/// Bound on any one wait.
const DEADLINE: Duration = Duration::from_secs(10);
const ZONE: &str = "demo.example";
const REVERSE_ZONE: &str = "1.1.10.in-addr.arpa";
const VDNS: &str = "default-domain:vdns-1";

// ------------------------------------------------------------------ the node

struct Node {
    shared: Arc<Shared>,
    xmpp: SocketAddr,
    dns: SocketAddr,
    http: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(tls: Option<ServerTls>, grace: Duration) -> Node {
        let xmpp = TcpListener::bind("127.0.0.1:0").await.expect("bind xmpp");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        // DNS on one port for UDP and TCP, as a real server; retry if the TCP port is taken.
        let (udp, tcp) = {
            let mut tries = 0;
            loop {
                let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
                let port = udp.local_addr().expect("udp addr").port();
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(tcp) => break (udp, tcp),
                    Err(e) if tries < 20 => {
                        tries += 1;
                        eprintln!("TCP port {port} taken ({e}), retrying");
                    }
                    Err(e) => panic!("no port free for UDP and TCP: {e}"),
                }
            }
        };
        let settings = Settings {
            hostname: "dns-1".into(),
            tls,
            check_peer_name: true,
            timing: Timing {
                hold_time: Duration::from_secs(90),
                negotiation_timeout: Duration::from_secs(10),
            },
            limits: Limits::default(),
            max_connections: 64,
            record_grace: grace,
            max_records_per_agent: 1000,
            drain_timeout: Duration::from_secs(2),
        };
        let addrs = (
            xmpp.local_addr().expect("xmpp addr"),
            udp.local_addr().expect("dns addr"),
            http.local_addr().expect("http addr"),
        );
        let shutdown = CancellationToken::new();
        let (shared, task) =
            dns_node::spawn(settings, xmpp, udp, tcp, Some(http), shutdown.clone());
        Node {
            shared,
            xmpp: addrs.0,
            dns: addrs.1,
            http: addrs.2,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("node stops within the deadline")
            .expect("node task");
    }

    fn connected(&self, agent: &str) -> bool {
        self.shared.sessions().iter().any(|s| s.name == agent)
    }
}

// ------------------------------------------------------------------ agents

struct Agent {
    name: String,
    stream: XmppStream<TcpStream>,
    transid: u32,
}

async fn try_agent(
    node: &Node,
    name: &str,
    tls: Option<&ClientTls>,
) -> Result<XmppStream<TcpStream>, xmpp_core::Error> {
    let tcp = TcpStream::connect(node.xmpp).await.expect("tcp connect");
    let policy = ClientPolicy {
        dialect: Dialect::Contrail,
        tls_required: tls.is_some(),
        from: format!("{name}/dns"),
        to: ns::DNS_JID.to_owned(),
        default_ns: String::new(),
        limits: Limits::default(),
    };
    let tls = tls.map(|t| {
        (
            t.current(),
            xmpp_core::tls::server_name("127.0.0.1").expect("server name"),
        )
    });
    let timing = Timing {
        hold_time: Duration::from_secs(90),
        negotiation_timeout: Duration::from_secs(10),
    };
    tokio::time::timeout(DEADLINE, connect(tcp, policy, tls, timing))
        .await
        .expect("negotiation within the deadline")
}

impl Agent {
    async fn connect(node: &Node, name: &str, tls: Option<&ClientTls>) -> Agent {
        let stream = try_agent(node, name, tls)
            .await
            .unwrap_or_else(|e| panic!("{name}: negotiation failed: {e}"));
        // The server registers the session after its side of the negotiation completes.
        eventually(&format!("{name} registered"), async || {
            node.connected(name).then_some(())
        })
        .await;
        Agent {
            name: name.to_owned(),
            stream,
            transid: 0,
        }
    }

    async fn send(&mut self, zone: &str, entries: Vec<DnsEntry>) {
        self.transid += 1;
        let update = DnsUpdate {
            transid: self.transid,
            virtual_dns: VDNS.into(),
            zone: zone.into(),
            entries,
        };
        update
            .write(self.stream.out_mut(), &self.name)
            .expect("update fits");
        self.stream.flush().await.expect("send update");
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.out_mut().extend_from_slice(bytes);
        self.stream.flush().await.expect("send raw");
    }

    /// Waits until the server closes the stream.
    async fn closed_by_server(mut self) {
        let r = tokio::time::timeout(DEADLINE, async {
            loop {
                match self.stream.next().await {
                    Ok(Incoming::Keepalive | Incoming::Element(_)) => continue,
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("server closes the session within the deadline");
        eprintln!("{}: session ended: {r}", self.name);
    }

    async fn disconnect(self) {
        self.stream.close(None).await;
    }
}

fn record(class: u16, rtype: u16, name: &str, data: &str, ttl: u32) -> DnsEntry {
    DnsEntry {
        class,
        rtype,
        name: name.into(),
        data: data.into(),
        ttl: Some(ttl),
        priority: Some(0),
    }
}

fn a(name: &str, ip: &str) -> DnsEntry {
    record(CLASS_IN, TYPE_A, name, ip, 300)
}

fn aaaa(name: &str, ip: &str) -> DnsEntry {
    record(CLASS_IN, TYPE_AAAA, name, ip, 600)
}

fn ptr(name: &str, host: &str) -> DnsEntry {
    record(CLASS_IN, 12, name, host, 900)
}

// ------------------------------------------------------------------ DNS client

struct Resolver {
    udp: Client<TokioRuntimeProvider>,
    tcp: Client<TokioRuntimeProvider>,
}

impl Resolver {
    async fn new(server: SocketAddr) -> Resolver {
        let provider = TokioRuntimeProvider::default();
        let conn = UdpClientStream::builder(server, provider.clone())
            .with_timeout(Some(Duration::from_secs(2)))
            .build();
        let (udp, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
        tokio::spawn(bg);
        let (stream, sender) =
            TcpClientStream::new(server, None, Some(Duration::from_secs(2)), provider);
        let stream = tokio::time::timeout(DEADLINE, stream)
            .await
            .expect("tcp connect in time")
            .expect("tcp connect");
        let (tcp, bg) = Client::<TokioRuntimeProvider>::new(stream, sender);
        tokio::spawn(bg);
        Resolver { udp, tcp }
    }

    async fn udp(&mut self, name: &str, rtype: RecordType) -> DnsResponse {
        query(&mut self.udp, name, rtype).await
    }

    async fn tcp(&mut self, name: &str, rtype: RecordType) -> DnsResponse {
        query(&mut self.tcp, name, rtype).await
    }
}

async fn query(
    client: &mut Client<TokioRuntimeProvider>,
    name: &str,
    rtype: RecordType,
) -> DnsResponse {
    // from_ascii keeps the case (from_str goes through IDNA, which lower-cases).
    let name = Name::from_ascii(name).expect("query name");
    tokio::time::timeout(DEADLINE, client.query(name.clone(), DNSClass::IN, rtype))
        .await
        .unwrap_or_else(|_| panic!("no answer for {name} {rtype} in time"))
        .unwrap_or_else(|e| panic!("query {name} {rtype} failed: {e}"))
}

fn rcode(r: &DnsResponse) -> ResponseCode {
    r.metadata.response_code
}

/// The answers' data as text, sorted.
fn data(r: &DnsResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .answers
        .iter()
        .map(|rec| match &rec.data {
            RData::A(a) => a.to_string(),
            RData::AAAA(a) => a.to_string(),
            RData::PTR(p) => p.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    v.sort();
    v
}

/// Polls `f` until it yields a value, failing after [`DEADLINE`].
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `name` `rtype` has exactly `want` (data, sorted) over UDP.
async fn wait_answer(res: &mut Resolver, name: &str, rtype: RecordType, want: &[&str]) {
    eventually(&format!("{name} {rtype} = {want:?}"), async || {
        let r = res.udp(name, rtype).await;
        (rcode(&r) == ResponseCode::NoError && data(&r) == want).then_some(())
    })
    .await;
}

/// Waits until `name` is NXDOMAIN.
async fn wait_nxdomain(res: &mut Resolver, name: &str) -> DnsResponse {
    eventually(&format!("{name} NXDOMAIN"), async || {
        let r = res.udp(name, RecordType::A).await;
        (rcode(&r) == ResponseCode::NXDomain).then_some(r)
    })
    .await
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("http write");
    let mut body = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut body))
        .await
        .expect("http in time")
        .expect("http read");
    body
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_updates_are_served_over_udp_and_tcp() {
    let node = Node::start(None, Duration::from_millis(300)).await;
    let mut res = Resolver::new(node.dns).await;
    let mut agent = Agent::connect(&node, "compute-1", None).await;
    assert!(!node.shared.sessions()[0].tls);
    assert_eq!(node.shared.sessions()[0].jid, "compute-1/dns");

    // Outside any served zone: REFUSED, before and after.
    let r = res.udp("vm-a.demo.example.", RecordType::A).await;
    assert_eq!(rcode(&r), ResponseCode::Refused);

    agent
        .send(
            ZONE,
            vec![
                a("vm-a", "10.1.1.3"),
                aaaa("vm-a", "fd00:1::3"),
                a("vm-b", "10.1.1.4"),
            ],
        )
        .await;
    agent
        .send(
            REVERSE_ZONE,
            vec![ptr("3.1.1.10.in-addr.arpa", "vm-a.demo.example")],
        )
        .await;
    wait_answer(&mut res, "vm-a.demo.example.", RecordType::A, &["10.1.1.3"]).await;

    let r = res.udp("VM-A.Demo.Example.", RecordType::A).await;
    assert!(r.metadata.authoritative);
    assert_eq!(r.answers[0].ttl, 300, "answer TTL is the record's");
    assert_eq!(
        r.answers[0].name.to_string(),
        "VM-A.Demo.Example.",
        "owner name keeps the query's case"
    );
    let r = res.udp("vm-a.demo.example.", RecordType::AAAA).await;
    assert_eq!(data(&r), ["fd00:1::3"]);
    assert_eq!(r.answers[0].ttl, 600);
    // TCP too.
    let r = res.tcp("vm-b.demo.example.", RecordType::A).await;
    assert_eq!(data(&r), ["10.1.1.4"]);
    wait_answer(
        &mut res,
        "3.1.1.10.in-addr.arpa.",
        RecordType::PTR,
        &["vm-a.demo.example."],
    )
    .await;
    let r = res.tcp("3.1.1.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(data(&r), ["vm-a.demo.example."]);

    // Unknown name in a served zone: NXDOMAIN with the zone's SOA.
    let r = res.udp("vm-z.demo.example.", RecordType::A).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
    assert!(
        r.authorities
            .iter()
            .any(|rec| matches!(rec.data, RData::SOA(_)) && rec.name.to_string() == "demo.example."),
        "{:?}",
        r.authorities
    );
    let r = res.udp("9.1.1.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);
    // NODATA: the name exists without that type.
    let r = res.udp("vm-b.demo.example.", RecordType::AAAA).await;
    assert_eq!(rcode(&r), ResponseCode::NoError);
    assert!(r.answers.is_empty());
    // The apex SOA.
    let r = res.udp("demo.example.", RecordType::SOA).await;
    assert!(matches!(r.answers[0].data, RData::SOA(_)));
    // Not ours: REFUSED.
    let r = res.udp("www.example.com.", RecordType::A).await;
    assert_eq!(rcode(&r), ResponseCode::Refused);
    let r = res.tcp("example.", RecordType::A).await;
    assert_eq!(rcode(&r), ResponseCode::Refused);

    // Delete the A record (class NONE, ttl 0): the AAAA keeps the name (NODATA)…
    agent
        .send(
            ZONE,
            vec![record(CLASS_NONE, TYPE_A, "vm-a", "10.1.1.3", 0)],
        )
        .await;
    eventually("vm-a A deleted", async || {
        let r = res.udp("vm-a.demo.example.", RecordType::A).await;
        (rcode(&r) == ResponseCode::NoError && r.answers.is_empty()).then_some(())
    })
    .await;
    // …deleting everything at the name (class ANY, type ANY) makes it NXDOMAIN.
    agent
        .send(ZONE, vec![record(CLASS_ANY, 255, "vm-a", "", 0)])
        .await;
    wait_nxdomain(&mut res, "vm-a.demo.example.").await;
    let r = res.udp("vm-a.demo.example.", RecordType::AAAA).await;
    assert_eq!(rcode(&r), ResponseCode::NXDomain);

    // Introspection.
    let agents = http_get(node.http, "/agents").await;
    assert!(agents.contains("\"name\":\"compute-1\""), "{agents}");
    assert!(agents.contains("\"auth_type\":\"NIL\""), "{agents}");
    assert!(agents.contains("\"state\":\"Established\""), "{agents}");
    let zones = http_get(node.http, "/zones").await;
    assert!(
        zones.contains("demo.example") && zones.contains(REVERSE_ZONE),
        "{zones}"
    );
    let zone = http_get(node.http, "/zones/demo.example").await;
    assert!(zone.contains("vm-b.demo.example."), "{zone}");
    assert!(zone.contains("\"agent\":\"compute-1\""), "{zone}");
    let missing = http_get(node.http, "/zones/nope.example").await;
    assert!(missing.starts_with("HTTP/1.0 404"), "{missing}");
    let metrics = http_get(node.http, "/metrics").await;
    assert!(metrics.contains("dns_records 2\n"), "{metrics}");
    assert!(metrics.contains("xmpp_sessions 1\n"), "{metrics}");

    agent.disconnect().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_outlive_a_session_for_the_grace_period_then_go() {
    // Long enough that "still answered right after the disconnect" cannot race the
    // deadline on a loaded machine, short enough to keep the test quick.
    let grace = Duration::from_millis(1500);
    let node = Node::start(None, grace).await;
    let mut res = Resolver::new(node.dns).await;
    let mut agent = Agent::connect(&node, "compute-1", None).await;
    agent.send(ZONE, vec![a("vm-a", "10.1.1.3")]).await;
    wait_answer(&mut res, "vm-a.demo.example.", RecordType::A, &["10.1.1.3"]).await;

    agent.disconnect().await;
    eventually("session down", async || {
        (!node.connected("compute-1")).then_some(())
    })
    .await;
    let down = Instant::now();
    // Still answered during the grace period, marked stale.
    let r = res.udp("vm-a.demo.example.", RecordType::A).await;
    assert_eq!(data(&r), ["10.1.1.3"]);
    let counts = node.shared.agent_counts("compute-1").expect("records kept");
    assert_eq!((counts.records, counts.stale), (1, 1));
    let agents = http_get(node.http, "/agents").await;
    assert!(agents.contains("\"state\":\"Idle\""), "{agents}");

    // Gone after it: the zone is no longer served.
    eventually("vm-a withdrawn", async || {
        let r = res.udp("vm-a.demo.example.", RecordType::A).await;
        (rcode(&r) == ResponseCode::Refused).then_some(())
    })
    .await;
    assert!(
        down.elapsed() >= grace - Duration::from_millis(100),
        "withdrawn after {:?}, before the grace period",
        down.elapsed()
    );
    assert!(node.shared.agent_counts("compute-1").is_none());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_agent_replaces_its_records() {
    let node = Node::start(None, Duration::from_millis(300)).await;
    let mut res = Resolver::new(node.dns).await;
    let mut agent = Agent::connect(&node, "compute-1", None).await;
    agent
        .send(ZONE, vec![a("vm-a", "10.1.1.3"), a("vm-b", "10.1.1.4")])
        .await;
    wait_answer(&mut res, "vm-b.demo.example.", RecordType::A, &["10.1.1.4"]).await;
    agent.disconnect().await;
    eventually("session down", async || {
        (!node.connected("compute-1")).then_some(())
    })
    .await;

    // Back (within or after the grace period, both must end the same way): re-sends only
    // vm-a, with a new address.
    let mut agent = Agent::connect(&node, "compute-1", None).await;
    agent
        .send(ZONE, vec![a("vm-a", "10.1.1.3"), a("vm-c", "10.1.1.5")])
        .await;
    wait_answer(&mut res, "vm-c.demo.example.", RecordType::A, &["10.1.1.5"]).await;
    // vm-b was not re-sent: withdrawn at the end of the replacement period.
    wait_nxdomain(&mut res, "vm-b.demo.example.").await;
    let r = res.udp("vm-a.demo.example.", RecordType::A).await;
    assert_eq!(data(&r), ["10.1.1.3"]);
    let counts = node.shared.agent_counts("compute-1").expect("counts");
    assert_eq!((counts.records, counts.stale), (2, 0));
    agent.disconnect().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_dns_iq_closes_only_that_session() {
    let node = Node::start(None, Duration::from_millis(300)).await;
    let mut res = Resolver::new(node.dns).await;
    let mut good = Agent::connect(&node, "compute-1", None).await;
    let mut bad = Agent::connect(&node, "compute-2", None).await;
    good.send(ZONE, vec![a("vm-a", "10.1.1.3")]).await;
    bad.send(ZONE, vec![a("vm-b", "10.1.1.4")]).await;
    wait_answer(&mut res, "vm-b.demo.example.", RecordType::A, &["10.1.1.4"]).await;

    // An entry with an unknown child is not a DNS update (the C++ decoder rejects it too).
    bad.send_raw(
        b"<?xml version=\"1.0\"?>\n<iq type=\"set\" from=\"compute-2/dns\" \
          to=\"network-dns@contrailsystems.com/dns-peer\" id=\"9\">\n<dns transid=\"9\">\n\
          <update>\n<virtual-dns>default-domain:vdns-1</virtual-dns>\n<zone>demo.example</zone>\n\
          <entry>\n<class>1</class>\n<type>1</type>\n<name>vm-x</name>\n<weight>3</weight>\n\
          </entry>\n</update>\n</dns>\n</iq>\n",
    )
    .await;
    bad.closed_by_server().await;
    assert_eq!(
        node.shared
            .metrics
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(node.connected("compute-1"));
    assert!(!node.connected("compute-2"));

    // The other agent keeps working.
    good.send(ZONE, vec![a("vm-c", "10.1.1.5")]).await;
    wait_answer(&mut res, "vm-c.demo.example.", RecordType::A, &["10.1.1.5"]).await;
    // The closed agent's records follow the grace rule like any session end.
    wait_nxdomain(&mut res, "vm-b.demo.example.").await;
    let r = res.udp("vm-a.demo.example.", RecordType::A).await;
    assert_eq!(data(&r), ["10.1.1.3"]);
    assert!(node.connected("compute-1"));

    // An update with an empty zone is ignored, as contrail-dns does (spec §7).
    good.send("", vec![a("vm-d", "10.1.1.6")]).await;
    good.send(ZONE, vec![a("vm-e", "10.1.1.7")]).await;
    wait_answer(&mut res, "vm-e.demo.example.", RecordType::A, &["10.1.1.7"]).await;
    assert!(node.connected("compute-1"));
    good.disconnect().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_agents_in_one_zone_are_answered_together() {
    let node = Node::start(None, Duration::from_millis(300)).await;
    let mut res = Resolver::new(node.dns).await;
    let mut c1 = Agent::connect(&node, "compute-1", None).await;
    let mut c2 = Agent::connect(&node, "compute-2", None).await;
    c1.send(ZONE, vec![a("vm", "10.1.1.3")]).await;
    c2.send(ZONE, vec![a("vm", "10.1.1.4")]).await;
    wait_answer(
        &mut res,
        "vm.demo.example.",
        RecordType::A,
        &["10.1.1.3", "10.1.1.4"],
    )
    .await;
    // A second session with a name already connected is refused (spec §5.6).
    let dup = try_agent(&node, "compute-1", None).await;
    if let Ok(s) = dup {
        // The server closes it right after its negotiation.
        let a = Agent {
            name: "compute-1 (duplicate)".into(),
            stream: s,
            transid: 0,
        };
        a.closed_by_server().await;
    }
    eventually("duplicate refused", async || {
        (node
            .shared
            .metrics
            .identity_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    })
    .await;
    c2.disconnect().await;
    wait_answer(&mut res, "vm.demo.example.", RecordType::A, &["10.1.1.3"]).await;
    c1.disconnect().await;
    node.stop().await;
}

// ------------------------------------------------------------------ TLS

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dns-node-e2e-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(name);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        Self {
            dir: TempDir::new("pki"),
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        }
    }

    /// A leaf for `cn` (server and client use), written as PEM files with the CA bundle.
    fn files(&self, cn: &str, sans: Vec<SanType>) -> TlsFiles {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        TlsFiles::new(
            self.dir.write(&format!("{cn}-cert.pem"), &cert.pem()),
            self.dir
                .write(&format!("{cn}-key.pem"), &key.serialize_pem()),
            self.dir.write(&format!("{cn}-ca.pem"), &self.ca_pem),
        )
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_when_auth_is_enabled() {
    let pki = Pki::new();
    let server_files = pki.files(
        "dns-1",
        vec![SanType::IpAddress("127.0.0.1".parse().expect("ip"))],
    );
    let server = ServerTls::load(&server_files, &ServerTlsOptions::default()).expect("server tls");
    let agent_tls = ClientTls::load(
        &pki.files("compute-1", Vec::new()),
        &ClientTlsOptions::default(),
    )
    .expect("agent tls");
    let node = Node::start(Some(server), Duration::from_millis(300)).await;
    let mut res = Resolver::new(node.dns).await;

    // The agent's certificate names compute-1; its stream says compute-1/dns: accepted.
    let mut agent = Agent::connect(&node, "compute-1", Some(&agent_tls)).await;
    let session = node.shared.sessions().pop().expect("session");
    assert!(session.tls);
    assert_eq!(session.name, "compute-1");
    agent
        .send(ZONE, vec![a("vm-a", "10.1.1.3"), aaaa("vm-a", "fd00:1::3")])
        .await;
    agent
        .send(
            REVERSE_ZONE,
            vec![ptr("3.1.1.10.in-addr.arpa", "vm-a.demo.example")],
        )
        .await;
    wait_answer(&mut res, "vm-a.demo.example.", RecordType::A, &["10.1.1.3"]).await;
    wait_answer(
        &mut res,
        "3.1.1.10.in-addr.arpa.",
        RecordType::PTR,
        &["vm-a.demo.example."],
    )
    .await;
    let r = res.tcp("vm-a.demo.example.", RecordType::AAAA).await;
    assert_eq!(data(&r), ["fd00:1::3"]);
    let agents = http_get(node.http, "/agents").await;
    assert!(agents.contains("\"auth_type\":\"TLS\""), "{agents}");

    // A certificate for compute-1 cannot speak for compute-9.
    let imposter = try_agent(&node, "compute-9", Some(&agent_tls)).await;
    if let Ok(s) = imposter {
        let a = Agent {
            name: "compute-9".into(),
            stream: s,
            transid: 0,
        };
        a.closed_by_server().await;
    }
    // Plaintext is never accepted when TLS is required.
    let plain = try_agent(&node, "compute-3", None).await;
    if let Ok(s) = plain {
        Agent {
            name: "compute-3 (plain)".into(),
            stream: s,
            transid: 0,
        }
        .closed_by_server()
        .await;
    }
    eventually("imposter refused", async || {
        (node
            .shared
            .metrics
            .identity_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    })
    .await;
    eventually("plaintext agent refused", async || {
        (node
            .shared
            .metrics
            .negotiation_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(node.shared.sessions().len(), 1);
    assert_eq!(
        node.shared
            .metrics
            .established
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    agent.disconnect().await;
    node.stop().await;
}
