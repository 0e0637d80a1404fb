//! The agent's DNS channel against the real DNS node, end to end: an agent registers two
//! ports; real DNS queries (`dig`) get the A, AAAA and PTR answers; a deleted port stops
//! resolving; an agent that goes away stops resolving after the grace period; all four
//! combinations of `xmpp_auth_enable` × `xmpp_dns_auth_enable` work, each channel encrypted
//! exactly when its own flag says so (checked from both servers' introspection).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Pki;
use tokio_util::sync::CancellationToken;
use vrouter_agent::agent::DnsSettings;
use vrouter_agent::dns_channel::DnsDefaults;
use vrouter_agent::ports::Port;
use xmpp_core::io::Timing;
use xmpp_core::tls::{ClientTls, ClientTlsOptions, ServerTls, ServerTlsOptions};
use xmpp_core::xml::Limits;

const ZONE: &str = "demo.example";
const DEADLINE: Duration = Duration::from_secs(15);
const TIMING: Timing = Timing {
    hold_time: Duration::from_secs(30),
    negotiation_timeout: Duration::from_secs(5),
};

fn dig_available() -> bool {
    if Command::new("dig").arg("-v").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "dig is missing in CI (.ci/run installs dnsutils)"
    );
    eprintln!("SKIP: dig not installed (apt-get install dnsutils)");
    false
}

/// `dig +short`: the answers' data, empty for NXDOMAIN/REFUSED.
fn dig(server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "+short",
            "+tries=1",
            "+time=1",
        ])
        .args([name, rtype])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Lab {
    control_http: SocketAddr,
    dns_http: SocketAddr,
    dns: SocketAddr,
    agent: Arc<vrouter_agent::Agent>,
    agent_token: CancellationToken,
    servers_token: CancellationToken,
}

async fn dns_sockets() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

async fn start(pki: &Pki, auth: bool, dns_auth: bool) -> Lab {
    let server_tls =
        || ServerTls::load(&pki.server_files, &ServerTlsOptions::default()).expect("server tls");
    let servers_token = CancellationToken::new();
    let control_xmpp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let control_http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (control_addr, control_http_addr) = (
        control_xmpp.local_addr().expect("addr"),
        control_http.local_addr().expect("addr"),
    );
    control_node::spawn(
        control_node::Settings {
            hostname: "control-1".into(),
            tls: auth.then(server_tls),
            check_peer_name: true,
            timing: TIMING,
            limits: Limits::default(),
            max_connections: 64,
            send_queue_len: 4096,
            eor_quiet: Duration::from_secs(1),
            eor_max: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(2),
        },
        control_xmpp,
        Some(control_http),
        servers_token.clone(),
    );
    let dns_xmpp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dns_http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (udp, tcp) = dns_sockets().await;
    let (dns_xmpp_addr, dns_http_addr, dns_addr) = (
        dns_xmpp.local_addr().expect("addr"),
        dns_http.local_addr().expect("addr"),
        udp.local_addr().expect("addr"),
    );
    dns_node::spawn(
        dns_node::Settings {
            hostname: "dns-1".into(),
            tls: dns_auth.then(server_tls),
            check_peer_name: true,
            timing: TIMING,
            limits: Limits::default(),
            max_connections: 64,
            record_grace: Duration::from_millis(500),
            max_records_per_agent: 1000,
            drain_timeout: Duration::from_secs(2),
        },
        dns_xmpp,
        udp,
        tcp,
        Some(dns_http),
        servers_token.clone(),
    );
    let (_, agent_files) = pki.client_leaf("dns-agent", "compute-1", vec![]);
    let client_tls = || ClientTls::load(&agent_files, &ClientTlsOptions::default()).expect("tls");
    let agent_token = CancellationToken::new();
    let (agent, _) = vrouter_agent::spawn(
        vrouter_agent::Settings {
            hostname: "compute-1".into(),
            subcluster_name: String::new(),
            control_servers: vec![control_addr],
            control_tls: auth.then(client_tls),
            timing: TIMING,
            route_grace: Duration::from_secs(5),
            vhost_ip: "127.0.0.1".parse().expect("ip"),
            ports_dir: None,
            dns: DnsSettings {
                servers: vec![dns_xmpp_addr],
                tls: dns_auth.then(client_tls),
                defaults: DnsDefaults {
                    virtual_dns: "default-domain:vdns-1".into(),
                    domain: ZONE.into(),
                },
            },
        },
        None,
        None,
        agent_token.clone(),
    );
    Lab {
        control_http: control_http_addr,
        dns_http: dns_http_addr,
        dns: dns_addr,
        agent,
        agent_token,
        servers_token,
    }
}

fn port(id: &str, vm: &str, v4: &str, v6: Option<&str>) -> Port {
    let v6 = v6
        .map(|a| format!(r#","ip6-address":"{a}""#))
        .unwrap_or_default();
    Port::from_json(
        format!(
            r#"{{"id":"{id}","vm-name":"{vm}","mac-address":"02:00:00:00:00:0{}","ip-address":"{v4}"{v6},"vn-name":"default-domain:demo:net-a"}}"#,
            id.len() % 10
        )
        .as_bytes(),
    )
    .expect("port")
}

async fn auth_type(addr: SocketAddr, path: &str, name: &str) -> Option<String> {
    let (status, body) = common::http_request(addr, "GET", path, None).await;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.as_array()?
        .iter()
        .find(|c| c["name"] == name && c["state"] == "Established")
        .and_then(|c| c["auth_type"].as_str().map(str::to_owned))
}

async fn combination(auth: bool, dns_auth: bool) {
    if !dig_available() {
        return;
    }
    let pki = Pki::new(&format!("dns-{auth}-{dns_auth}"));
    let lab = start(&pki, auth, dns_auth).await;
    lab.agent
        .add_port(port("p1", "vm-a", "10.1.1.3", Some("fd00::3")))
        .expect("p1");
    lab.agent
        .add_port(port("p22", "vm-b", "10.1.1.4", None))
        .expect("p2");

    let dns = lab.dns;
    eventually("vm-a to resolve", || {
        dig(dns, "vm-a.demo.example", "A") == ["10.1.1.3"]
    })
    .await;
    assert_eq!(dig(dns, "vm-a.demo.example", "AAAA"), ["fd00::3"]);
    assert_eq!(dig(dns, "vm-b.demo.example", "A"), ["10.1.1.4"]);
    assert_eq!(
        dig(dns, "3.1.1.10.in-addr.arpa", "PTR"),
        ["vm-a.demo.example."]
    );
    let v6_ptr = "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
    assert_eq!(dig(dns, v6_ptr, "PTR"), ["vm-a.demo.example."]);
    assert!(dig(dns, "nobody.demo.example", "A").is_empty());

    // Each channel is encrypted exactly when its own flag says so, seen by each server.
    let want = |on: bool| Some(if on { "TLS" } else { "NIL" }.to_owned());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let c = auth_type(lab.control_http, "/connections", "compute-1").await;
        let d = auth_type(lab.dns_http, "/agents", "compute-1").await;
        if c == want(auth) && d == want(dns_auth) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "auth types: control {c:?}, dns {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A deleted port stops resolving.
    assert!(lab.agent.remove_port("p22").expect("remove"));
    eventually("vm-b to stop resolving", || {
        dig(dns, "vm-b.demo.example", "A").is_empty()
    })
    .await;
    assert_eq!(dig(dns, "vm-a.demo.example", "A"), ["10.1.1.3"]);

    // The agent goes away and does not come back: its names go after the grace period
    // (500 ms), not at once.
    lab.agent_token.cancel();
    let gone = Instant::now();
    eventually("vm-a to stop resolving after the grace period", || {
        dig(dns, "vm-a.demo.example", "A").is_empty()
    })
    .await;
    assert!(
        gone.elapsed() >= Duration::from_millis(400),
        "records withdrawn before the grace period: {:?}",
        gone.elapsed()
    );
    lab.servers_token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_both_channels_plain() {
    combination(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_tls_only_on_the_dns_channel() {
    combination(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_tls_only_on_the_control_channel() {
    combination(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_both_channels_tls() {
    combination(true, true).await;
}
