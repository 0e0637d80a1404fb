//! The control node's default listen address (`::`) takes IPv4 and IPv6 agents.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use xmpp_core::io::{Timing, connect};
use xmpp_core::negotiate::ClientPolicy;
use xmpp_core::stanza::ns;
use xmpp_core::stream::Dialect;
use xmpp_core::xml::Limits;

async fn agent(addr: SocketAddr, name: &str) -> Result<(), xmpp_core::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let policy = ClientPolicy {
        dialect: Dialect::Contrail,
        tls_required: false,
        from: name.into(),
        to: ns::CONTROL_JID.into(),
        default_ns: String::new(),
        limits: Limits::default(),
    };
    let s = connect(tcp, policy, None, Timing::default()).await?;
    assert_eq!(
        s.negotiated().peer_header.from.as_deref(),
        Some("control-1")
    );
    Ok(())
}

#[tokio::test]
async fn unspecified_address_serves_ipv4_and_ipv6() {
    let listener = xmpp_core::io::bind_dual_stack("[::]:0".parse().expect("addr"))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let token = CancellationToken::new();
    let (_shared, task) = control_node::spawn(
        control_node::Settings {
            hostname: "control-1".into(),
            tls: None,
            check_peer_name: true,
            timing: Timing::default(),
            limits: Limits::default(),
            max_connections: 8,
            send_queue_len: 64,
            eor_quiet: Duration::from_secs(6),
            eor_max: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(2),
        },
        listener,
        None,
        token.clone(),
    );
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    tokio::time::timeout(Duration::from_secs(5), agent(v4, "compute-v4"))
        .await
        .expect("in time")
        .expect("IPv4 agent");
    let v6: SocketAddr = format!("[::1]:{port}").parse().expect("addr");
    match tokio::time::timeout(Duration::from_secs(5), agent(v6, "compute-v6")).await {
        Ok(Ok(())) => {}
        Ok(Err(xmpp_core::Error::Io(e))) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIP: IPv6 loopback unavailable here: {e}");
        }
        other => panic!("IPv6 agent: {other:?}"),
    }
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}
