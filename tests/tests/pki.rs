//! The PKI command's output (`contrail-kit pki`): accepted by `openssl verify` and by the
//! daemons; certificates rotated under a running control node with `pki issue --force` and
//! SIGHUP keep the live session and give new sessions the new certificate.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xmpp_core::io::{Incoming, Timing, connect};
use xmpp_core::negotiate::ClientPolicy;
use xmpp_core::stanza::ns;
use xmpp_core::stream::Dialect;
use xmpp_core::tls::{ClientTls, ClientTlsOptions, TlsFiles};
use xmpp_core::xml::Limits;

fn kit(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_contrail-kit-e2e"))
        .args(args)
        .output()
        .expect("run contrail-kit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "contrail-kit {args:?} failed:\n{text}"
    );
    text
}

fn node_files(dir: &Path) -> TlsFiles {
    TlsFiles::new(
        dir.join("certs/server.pem"),
        dir.join("private/server-privkey.pem"),
        dir.join("certs/ca-cert.pem"),
    )
}

/// `openssl` is on every machine of this project's kind and `.ci/run` installs it; outside
/// CI a missing one skips loudly.
fn openssl_available() -> bool {
    let ok = Command::new("openssl").arg("version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl missing in CI"
        );
        eprintln!("SKIP: openssl not installed");
    }
    ok
}

#[test]
fn pki_output_verifies_with_openssl_and_has_tight_modes() {
    let dir = common::TempDir::new("pki-openssl");
    let d = |s: &str| dir.path().join(s).display().to_string();
    let out = kit(&["pki", "init", "--dir", &d("ca")]);
    assert!(out.contains("never copy it"), "{out}");
    kit(&[
        "pki",
        "issue",
        "--ca",
        &d("ca"),
        "--role",
        "control",
        "--name",
        "control-1",
        "--ip",
        "127.0.0.1",
        "--out",
        &d("control-1"),
    ]);
    kit(&[
        "pki",
        "issue",
        "--ca",
        &d("ca"),
        "--role",
        "dns",
        "--name",
        "dns-1",
        "--ip",
        "127.0.0.1",
        "--out",
        &d("dns-1"),
    ]);
    let shown = kit(&[
        "pki",
        "issue",
        "--ca",
        &d("ca"),
        "--role",
        "compute",
        "--name",
        "compute-1",
        "--out",
        &d("compute-1"),
    ]);
    assert!(
        shown.contains("clientAuth") && shown.contains("DNS:compute-1"),
        "{shown}"
    );
    for node in ["control-1", "dns-1", "compute-1"] {
        let f = node_files(&dir.path().join(node));
        let mode = std::fs::metadata(&f.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{node} key mode");
        // Loads as the daemons load it (the chain, key match, validity).
        ClientTls::load(&f, &ClientTlsOptions::default()).unwrap_or_else(|e| panic!("{node}: {e}"));
        if openssl_available() {
            let v = Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&f.ca)
                .arg(&f.cert)
                .output()
                .expect("openssl verify");
            let text = String::from_utf8_lossy(&v.stdout);
            assert!(
                v.status.success() && text.contains(": OK"),
                "{node}: {text}"
            );
        }
    }
    let shown = kit(&["pki", "show", &d("control-1/certs/server.pem")]);
    assert!(
        shown.contains("serverAuth") && shown.contains("IP:127.0.0.1"),
        "{shown}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn session(
    addr: SocketAddr,
    name: &str,
    tls: &ClientTls,
) -> Result<xmpp_core::io::XmppStream<tokio::net::TcpStream>, xmpp_core::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let policy = ClientPolicy {
        dialect: Dialect::Contrail,
        tls_required: true,
        from: name.into(),
        to: ns::CONTROL_JID.into(),
        default_ns: String::new(),
        limits: Limits::default(),
    };
    let server_name = xmpp_core::tls::server_name("127.0.0.1").expect("name");
    connect(
        tcp,
        policy,
        Some((tls.current(), server_name)),
        Timing::default(),
    )
    .await
}

fn pem_der(path: &PathBuf) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .expect("pem")
        .next()
        .expect("one cert")
        .expect("cert")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_with_pki_issue_and_sighup_keeps_live_sessions() {
    let dir = common::TempDir::new("pki-rotate");
    let d = |s: &str| dir.path().join(s).display().to_string();
    kit(&["pki", "init", "--dir", &d("ca")]);
    let issue_control = || {
        kit(&[
            "pki",
            "issue",
            "--ca",
            &d("ca"),
            "--role",
            "control",
            "--name",
            "control-1",
            "--ip",
            "127.0.0.1",
            "--out",
            &d("control-1"),
            "--force",
        ])
    };
    issue_control();
    for agent in ["compute-1", "compute-2"] {
        kit(&[
            "pki",
            "issue",
            "--ca",
            &d("ca"),
            "--role",
            "compute",
            "--name",
            agent,
            "--out",
            &d(agent),
        ]);
    }
    let control = node_files(&dir.path().join("control-1"));
    let port = free_port();
    let conf = dir.write(
        "contrail-control.conf",
        &format!(
            "[DEFAULT]\nhostip=127.0.0.1\nhostname=control-1\nxmpp_server_port={port}\n\
             xmpp_auth_enable=true\nxmpp_server_cert={}\nxmpp_server_key={}\nxmpp_ca_cert={}\n\
             http_server_port=0\nlog_level=SYS_INFO\n",
            control.cert.display(),
            control.key.display(),
            control.ca.display()
        ),
    );
    let log = dir.path().join("control.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_control-node-e2e"))
        .arg("--conf-file")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("start control-node");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tls1 = ClientTls::load(
        &node_files(&dir.path().join("compute-1")),
        &ClientTlsOptions::default(),
    )
    .expect("tls");
    let tls2 = ClientTls::load(
        &node_files(&dir.path().join("compute-2")),
        &ClientTlsOptions::default(),
    )
    .expect("tls");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut a = loop {
        match session(addr, "compute-1", &tls1).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!(
                "no session: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };
    let first = pem_der(&control.cert);
    let seen = a.transport().peer_certificates().expect("certs")[0].to_vec();
    assert_eq!(seen, first);

    // Rotate: a new certificate in the same files, then SIGHUP; wait for the reload line.
    issue_control();
    let second = pem_der(&control.cert);
    assert_ne!(first, second);
    let pid = child.id().expect("pid");
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("certificates reloaded")
    {
        assert!(
            Instant::now() < deadline,
            "no reload:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut b = session(addr, "compute-2", &tls2)
        .await
        .expect("new session");
    assert_eq!(
        b.transport().peer_certificates().expect("certs")[0].to_vec(),
        second
    );

    // The live session still works: a route B publishes reaches A.
    let vrf = "default-domain:demo:net-a:net-a";
    xmpp_core::contrail::pubsub::write_subscribe(a.out_mut(), "compute-1", 1, vrf, 1);
    a.flush().await.expect("a");
    xmpp_core::contrail::pubsub::write_subscribe(b.out_mut(), "compute-2", 1, vrf, 1);
    let entry = {
        use xmpp_core::contrail::{LoadBalance, Mobility, NextHop, Nlri, RouteEntry};
        RouteEntry {
            nlri: Nlri {
                af: 1,
                safi: 1,
                prefix: "10.7.0.2/32".parse().expect("prefix"),
            },
            next_hops: vec![NextHop {
                af: 1,
                address: "192.168.0.12".parse().expect("ip"),
                mac: String::new(),
                label: 30,
                vni: 0,
                encapsulations: vec!["gre".into()],
                virtual_network: "default-domain:demo:net-a".into(),
                tags: vec![],
            }],
            version: 1,
            virtual_network: "default-domain:demo:net-a".into(),
            mobility: Mobility::default(),
            sequence_number: 0,
            security_groups: vec![],
            community_tags: vec![],
            local_preference: 100,
            med: 0,
            load_balance: LoadBalance::default(),
            sub_protocol: "interface".into(),
        }
    };
    // Let the control node see A's subscription before B publishes: B's publish goes out
    // after A's subscribe was flushed, and the node handles each session in order, but the
    // two sessions are independent; poll A until the route arrives (B re-publishes it with
    // a changed label on each round, which the node reflects).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut label = 30;
    loop {
        let mut e = entry.clone();
        e.next_hops[0].label = label;
        xmpp_core::contrail::pubsub::write_route(
            b.out_mut(),
            "compute-2",
            u64::from(label),
            vrf,
            &e,
            true,
        );
        b.flush().await.expect("b");
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match a.next().await {
                    Ok(Incoming::Element(el)) => {
                        if let Ok(xmpp_core::contrail::message::RouteEvent::Routes {
                            items, ..
                        }) = xmpp_core::contrail::message::RouteEvent::from_message(&el)
                            && items.iter().any(|(id, _)| id == "10.7.0.2/32")
                        {
                            return true;
                        }
                    }
                    Ok(Incoming::Keepalive) => {}
                    Err(e) => panic!("live session ended after the reload: {e}"),
                }
            }
        })
        .await;
        if got == Ok(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "route never reached the live session"
        );
        label += 1;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exit within 5 s")
        .expect("wait");
    assert!(status.success());
}
