//! Protocol tests of `xmpp_core::io::{accept, connect}`: stream negotiation in both
//! dialects, plain and STARTTLS (spec §3), TLS failures (spec §4), plaintext versus
//! TLS-required mismatches, hold and keepalive timers (spec §5.4), the STARTTLS boundary
//! hazard (spec §3.4) and the negotiation deadline.
//!
//! Transports: `tokio::io::duplex` where no real socket is needed (with paused time for
//! every timer test), loopback TCP on port 0 for TLS. Nothing sleeps to synchronise: every
//! wait is on an event, bounded by `tokio::time::timeout`. Raw peers that speak bytes by
//! hand use the exact layouts of the Contrail C++ daemons quoted in the spec.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{AGENT, Pki, TLS12_AND_13, TLS12_ONLY, raw_client_config, raw_server_config};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use xmpp_core::Error;
use xmpp_core::io::{Incoming, Timing, XmppStream, accept, connect};
use xmpp_core::negotiate::{ClientPolicy, ServerPolicy};
use xmpp_core::stanza::ns;
use xmpp_core::stream::{Condition, Dialect, StreamError};
use xmpp_core::tls::peer_identity;
use xmpp_core::xml::{Element, Event, Limits, Reader};

// ------------------------------------------------------------------ wire constants

/// Spec §3.1: the C++ agent's header for `compute-1`, no sub-cluster.
const SPEC_CLIENT_HEADER: &str = "<stream:stream from=\"compute-1\" \
    to=\"network-control@contrailsystems.com\" version=\"1.0\" xml:lang=\"en\" xmlns=\"\" \
    xmlns:stream=\"http://etherx.jabber.org/streams\"  >";

/// Spec §3.1: the C++ control node's response header (host `ctrl-host-1`).
const SPEC_SERVER_HEADER: &str = "<stream:stream from=\"ctrl-host-1\" to=\"compute-1\" \
    id=\"++123\" version=\"1.0\" xml:lang=\"en\" xmlns=\"jabber:client\" \
    xmlns:stream=\"http://etherx.jabber.org/streams\"  >";

/// Our server's response header in the same layout (host `ctrl-1`).
const OUR_SERVER_HEADER: &str = "<stream:stream from=\"ctrl-1\" to=\"compute-1\" \
    id=\"++123\" version=\"1.0\" xml:lang=\"en\" xmlns=\"jabber:client\" \
    xmlns:stream=\"http://etherx.jabber.org/streams\"  >";

/// Spec §3.3: TLS-required features as the C++ server writes them.
const SPEC_FEATURES: &str = "<?xml version=\"1.0\"?>\n<stream:features>\n\
    <starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\">\n<required />\n</starttls>\n\
    </stream:features>\n";

/// Spec §3.3/§3.4: starttls and proceed, with no trailing byte (what we must send).
const STARTTLS_NO_NL: &str =
    "<?xml version=\"1.0\"?>\n<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" />";
const PROCEED_NO_NL: &str =
    "<?xml version=\"1.0\"?>\n<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" />";

/// An RFC 6120 client header as a standard client writes it.
const RFC_CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='ctrl.example' from='compute-1' \
    version='1.0'>";

/// Our RFC client's header (`rfc_client`), namespaces first.
const OUR_RFC_CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream \
    xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" \
    from=\"compute-1\" to=\"ctrl.example\" version=\"1.0\" xml:lang=\"en\">";

/// A standard server's response header.
const RFC_SERVER_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' from='ctrl.example' to='compute-1' \
    id='4f2a' version='1.0'>";

const CONTRAIL_KEEPALIVE: &[u8] = &[0xC8, 0x80];

const SERVER_HOST: &str = "ctrl-1";
const CONTROL_JID: &str = "network-control@contrailsystems.com";
const RFC_DOMAIN: &str = "ctrl.example";

/// Bound on any one step of a real-time test, so a hang fails the test quickly.
const STEP: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ policies and helpers

fn server_policy(tls_required: bool) -> ServerPolicy {
    ServerPolicy {
        tls_required,
        host_name: SERVER_HOST.to_owned(),
        limits: Limits::default(),
    }
}

fn contrail_client(tls_required: bool) -> ClientPolicy {
    ClientPolicy {
        dialect: Dialect::Contrail,
        tls_required,
        from: AGENT.to_owned(),
        to: CONTROL_JID.to_owned(),
        default_ns: String::new(),
        limits: Limits::default(),
    }
}

fn rfc_client(tls_required: bool) -> ClientPolicy {
    ClientPolicy {
        dialect: Dialect::Rfc,
        tls_required,
        from: AGENT.to_owned(),
        to: RFC_DOMAIN.to_owned(),
        default_ns: ns::CLIENT.to_owned(),
        limits: Limits::default(),
    }
}

fn client_policy(dialect: Dialect, tls_required: bool) -> ClientPolicy {
    match dialect {
        Dialect::Contrail => contrail_client(tls_required),
        Dialect::Rfc => rfc_client(tls_required),
    }
}

fn timing(hold_secs: u64) -> Timing {
    Timing {
        hold_time: Duration::from_secs(hold_secs),
        negotiation_timeout: Duration::from_secs(15),
    }
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

/// A VRF subscribe IQ as the agent sends it (spec §6.2), which must be framed with an
/// explicit `</iq>`.
fn subscribe_iq(id: &str) -> Element {
    Element::new("iq")
        .attr("type", "set")
        .attr("from", AGENT)
        .attr("to", format!("{CONTROL_JID}/bgp-peer"))
        .attr("id", id)
        .child(
            Element::with_ns("pubsub", ns::PUBSUB)
                .child(Element::new("subscribe").attr("node", "default-domain:admin:vn1:vn1")),
        )
}

/// Checks that `el` is the IQ [`subscribe_iq`] built.
fn assert_subscribe_iq(el: &Element, id: &str) {
    assert_eq!(el.name(), "iq", "{el:?}");
    assert_eq!(el.get_attr("type"), Some("set"), "{el:?}");
    assert_eq!(el.get_attr("id"), Some(id), "{el:?}");
    let pubsub = el.get_child("pubsub").expect("pubsub child");
    assert_eq!(pubsub.ns(), ns::PUBSUB);
    let sub = pubsub.get_child("subscribe").expect("subscribe child");
    assert_eq!(sub.get_attr("node"), Some("default-domain:admin:vn1:vn1"));
}

/// The next element, skipping keepalives.
async fn next_element<T: AsyncRead + AsyncWrite + Unpin>(s: &mut XmppStream<T>) -> Element {
    within("next element", async {
        loop {
            match s.next().await {
                Ok(Incoming::Element(el)) => return el,
                Ok(Incoming::Keepalive) => {}
                Err(e) => panic!("expected an element, got error {e:?}"),
            }
        }
    })
    .await
}

/// Sends one IQ each way and checks both arrive intact.
async fn exchange_iqs<T, U>(server: &mut XmppStream<T>, client: &mut XmppStream<U>)
where
    T: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    client.queue(&subscribe_iq("c2s"));
    within("client flush", client.flush())
        .await
        .expect("client flush");
    assert_subscribe_iq(&next_element(server).await, "c2s");

    server.queue(&subscribe_iq("s2c"));
    within("server flush", server.flush())
        .await
        .expect("server flush");
    assert_subscribe_iq(&next_element(client).await, "s2c");
}

/// Runs the next calls until an error; panics on any element (nothing may be delivered).
async fn expect_no_element<T: AsyncRead + AsyncWrite + Unpin>(s: &mut XmppStream<T>) -> Error {
    loop {
        match s.next().await {
            Ok(Incoming::Keepalive) => {}
            Ok(Incoming::Element(el)) => panic!("element delivered where none may be: {el:?}"),
            Err(e) => return e,
        }
    }
}

/// Reads until `buf` contains `pat`; returns everything up to and including it and keeps
/// the rest in `buf`. Panics on EOF.
async fn read_until<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>, pat: &[u8]) -> Vec<u8> {
    loop {
        if let Some(pos) = buf.windows(pat.len()).position(|w| w == pat) {
            let rest = buf.split_off(pos + pat.len());
            return std::mem::replace(buf, rest);
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.expect("raw read");
        assert!(
            n > 0,
            "EOF while waiting for {:?}; received {:?}",
            String::from_utf8_lossy(pat),
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until EOF (or a reset); returns everything received.
async fn read_to_close<R: AsyncRead + Unpin>(io: &mut R) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 on the wire")
}

/// A transport wrapper recording every byte written through it.
#[derive(Debug)]
struct Recorder<T> {
    inner: T,
    written: Arc<Mutex<Vec<u8>>>,
}

impl<T> Recorder<T> {
    fn new(inner: T) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                inner,
                written: written.clone(),
            },
            written,
        )
    }
}

fn recorded(written: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    written.lock().expect("recorder lock").clone()
}

impl<T: AsyncRead + Unpin> AsyncRead for Recorder<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Recorder<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written
                .lock()
                .expect("recorder lock")
                .extend_from_slice(&buf[..*n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type ClientTlsArg = Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>;
type Outcome = (
    Result<XmppStream<TcpStream>, Error>,
    Result<XmppStream<TcpStream>, Error>,
);

/// Negotiates one server and one client over loopback TCP (port 0); returns (server,
/// client) outcomes. Each side runs in its own task, as in the daemons: sharing one task
/// would also share tokio's cooperative budget, and tokio-rustls drops a fatal alert whose
/// "last-gasp" write is refused for budget, leaving the peer with a bare EOF.
async fn tcp_pair(
    sp: ServerPolicy,
    server_tls: Option<Arc<rustls::ServerConfig>>,
    cp: ClientPolicy,
    client_tls: ClientTlsArg,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("tcp accept");
        accept(sock, sp, server_tls, timing(90)).await
    });
    let client = tokio::spawn(async move {
        let sock = TcpStream::connect(addr).await.expect("tcp connect");
        connect(sock, cp, client_tls, timing(90)).await
    });
    let (server, client) = within("negotiation over TCP", async {
        tokio::join!(server, client)
    })
    .await;
    (server.expect("server task"), client.expect("client task"))
}

fn expect_ok<T>(side: &str, r: Result<XmppStream<T>, Error>) -> XmppStream<T> {
    r.unwrap_or_else(|e| panic!("{side} negotiation failed: {e}"))
}

fn expect_err<T>(side: &str, r: Result<XmppStream<T>, Error>) -> Error {
    match r {
        Ok(_) => panic!("{side} negotiation succeeded where it must fail"),
        Err(e) => e,
    }
}

/// Asserts a `TlsHandshake` error whose text names the reason (one of `needles`).
fn assert_handshake_error(side: &str, e: &Error, needles: &[&str]) {
    assert!(
        matches!(e, Error::TlsHandshake(_)),
        "{side}: expected Error::TlsHandshake, got {e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("TLS handshake failed: "),
        "{side}: {shown}"
    );
    assert!(
        needles.iter().any(|n| shown.contains(n)),
        "{side}: {shown:?} names none of {needles:?}"
    );
}

// ============================================================== 1. Contrail plain, duplex

#[tokio::test]
async fn contrail_plain_session_over_duplex() {
    let (c_io, s_io) = duplex(64 * 1024);
    let (c_io, c_written) = Recorder::new(c_io);
    let (s_io, s_written) = Recorder::new(s_io);
    let (server, client) = within("negotiation", async {
        tokio::join!(
            accept(s_io, server_policy(false), None, timing(90)),
            connect(c_io, contrail_client(false), None, timing(90)),
        )
    })
    .await;
    let mut server = expect_ok("server", server);
    let mut client = expect_ok("client", client);

    let sn = server.negotiated();
    assert_eq!(sn.dialect, Dialect::Contrail);
    assert!(!sn.tls);
    assert_eq!(sn.peer_header.from.as_deref(), Some(AGENT));
    assert_eq!(sn.peer_header.to.as_deref(), Some(CONTROL_JID));
    assert_eq!(sn.peer_header.default_ns.as_deref(), Some(""));
    let cn = client.negotiated();
    assert_eq!(cn.dialect, Dialect::Contrail);
    assert!(!cn.tls);
    assert_eq!(cn.peer_header.from.as_deref(), Some(SERVER_HOST));
    assert_eq!(cn.peer_header.id.as_deref(), Some("++123"));
    assert_eq!(cn.features, None, "Contrail plain mode has no features");

    // Spec §3.1/§3.2: exact header, then the immediate keepalive; nothing else yet.
    assert_eq!(
        text(&recorded(&c_written)),
        format!("{SPEC_CLIENT_HEADER}\u{200}")
    );
    // Our server: the response header in the C++ layout plus one keepalive at once.
    assert_eq!(
        text(&recorded(&s_written)),
        format!("{OUR_SERVER_HEADER}\u{200}")
    );

    // The first thing the server reads after negotiation is the client's keepalive.
    let first = within("server next", server.next())
        .await
        .expect("server next");
    assert_eq!(first, Incoming::Keepalive);

    let before = recorded(&c_written).len();
    exchange_iqs(&mut server, &mut client).await;
    // Spec §2.2/§2.4: pugixml-like lines, explicit `</iq>` (never a self-closing iq).
    assert_eq!(
        text(&recorded(&c_written)[before..]),
        "<iq type=\"set\" from=\"compute-1\" \
         to=\"network-control@contrailsystems.com/bgp-peer\" id=\"c2s\">\n\
         <pubsub xmlns=\"http://jabber.org/protocol/pubsub\">\n\
         <subscribe node=\"default-domain:admin:vn1:vn1\" />\n</pubsub>\n</iq>\n"
    );

    // Contrail close: the socket just closes (spec §3.5); the peer sees Closed.
    client.close(None).await;
    let e = within("server after close", expect_no_element(&mut server)).await;
    assert!(matches!(e, Error::Closed), "{e:?}");
}

/// A raw peer speaking the C++ control node's bytes: the client sends its header, then
/// nothing until the server's header arrives, then exactly `C8 80`.
#[tokio::test(start_paused = true)]
async fn contrail_client_against_cxx_server_bytes() {
    let (c_io, mut raw) = duplex(64 * 1024);
    let raw_server = async {
        let mut header = vec![0u8; SPEC_CLIENT_HEADER.len()];
        raw.read_exact(&mut header).await.expect("client header");
        assert_eq!(text(&header), SPEC_CLIENT_HEADER);
        // Nothing more until the server answers (a virtual second of silence).
        let mut one = [0u8; 1];
        assert!(
            timeout(Duration::from_secs(1), raw.read(&mut one))
                .await
                .is_err(),
            "the client sent something before the server header"
        );
        raw.write_all(SPEC_SERVER_HEADER.as_bytes())
            .await
            .expect("write header");
        let mut ka = [0u8; 2];
        raw.read_exact(&mut ka).await.expect("keepalive");
        assert_eq!(
            ka, CONTRAIL_KEEPALIVE,
            "first bytes after the server header"
        );
        raw
    };
    let (raw, client) = tokio::join!(
        raw_server,
        connect(c_io, contrail_client(false), None, timing(90))
    );
    let client = expect_ok("client", client);
    assert_eq!(
        client.negotiated().peer_header.from.as_deref(),
        Some("ctrl-host-1")
    );
    assert!(!client.negotiated().tls);
    drop(raw);
}

// ============================================================== 2. RFC plain, duplex

#[tokio::test]
async fn rfc_plain_session_over_duplex() {
    let (c_io, s_io) = duplex(64 * 1024);
    let (s_io, s_written) = Recorder::new(s_io);
    let (server, client) = within("negotiation", async {
        tokio::join!(
            accept(s_io, server_policy(false), None, timing(90)),
            connect(c_io, rfc_client(false), None, timing(90)),
        )
    })
    .await;
    let mut server = expect_ok("server", server);
    let mut client = expect_ok("client", client);

    let sn = server.negotiated();
    assert_eq!(sn.dialect, Dialect::Rfc);
    assert!(!sn.tls);
    assert_eq!(sn.peer_header.from.as_deref(), Some(AGENT));
    assert_eq!(sn.peer_header.default_ns.as_deref(), Some(ns::CLIENT));
    let cn = client.negotiated();
    assert_eq!(cn.dialect, Dialect::Rfc);
    let features = cn.features.as_ref().expect("RFC client receives features");
    assert_eq!(features.starttls, None, "a plain server offers no STARTTLS");
    // RFC 6120 §4.7.1: the response `from` is the domain the client asked for.
    assert_eq!(cn.peer_header.from.as_deref(), Some(RFC_DOMAIN));
    assert_eq!(cn.peer_header.to.as_deref(), Some(AGENT));
    let id = cn.peer_header.id.as_deref().expect("stream id");
    assert!(!id.is_empty() && id != "++123", "RFC stream id {id:?}");

    let written = text(&recorded(&s_written));
    assert!(
        written.starts_with("<?xml version='1.0'?><stream:stream xmlns=\"jabber:client\""),
        "{written}"
    );
    assert!(
        !written.contains('\u{200}'),
        "no Contrail keepalive to an RFC peer: {written:?}"
    );

    // No keepalive at establishment in the RFC dialect: the IQ is the first thing read.
    client.queue(&subscribe_iq("c2s"));
    client.flush().await.expect("flush");
    let first = within("server next", server.next())
        .await
        .expect("server next");
    match first {
        Incoming::Element(el) => assert_subscribe_iq(&el, "c2s"),
        other => panic!("expected the IQ, got {other:?}"),
    }
    server.queue(&subscribe_iq("s2c"));
    server.flush().await.expect("flush");
    assert_subscribe_iq(&next_element(&mut client).await, "s2c");

    // RFC close with a reason: the peer receives the `<stream:error>`.
    client.close(Some(&Error::Shutdown)).await;
    let e = within("server after close", expect_no_element(&mut server)).await;
    match e {
        Error::Peer(se) => assert_eq!(se.condition, Condition::SystemShutdown),
        other => panic!("expected Error::Peer(system-shutdown), got {other:?}"),
    }
}

// ============================================================== 3. TLS over TCP

async fn tls_session(dialect: Dialect) {
    let pki = Pki::new("tls-ok");
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(pki.server_tls()),
        client_policy(dialect, true),
        Some(pki.client_tls(&pki.client_files, true, "localhost")),
    )
    .await;
    let mut server = expect_ok("server", server);
    let mut client = expect_ok("client", client);

    assert_eq!(server.negotiated().dialect, dialect);
    assert_eq!(client.negotiated().dialect, dialect);
    assert!(server.negotiated().tls, "server not in TLS");
    assert!(client.negotiated().tls, "client not in TLS");
    assert_eq!(server.negotiated().peer_header.from.as_deref(), Some(AGENT));
    if dialect == Dialect::Rfc {
        // Features again after the restart, without STARTTLS this time.
        let f = client.negotiated().features.as_ref().expect("features");
        assert_eq!(f.starttls, None);
    } else {
        assert_eq!(client.negotiated().features, None, "spec §3.3");
    }
    assert!(server.transport().tls_version().is_some());

    let certs = server
        .transport()
        .peer_certificates()
        .expect("server sees the client certificate");
    let id = peer_identity(certs).expect("client identity");
    assert_eq!(id.common_names, vec![AGENT.to_owned()]);
    let certs = client
        .transport()
        .peer_certificates()
        .expect("client sees the server certificate");
    let id = peer_identity(certs).expect("server identity");
    assert!(id.dns_names.iter().any(|n| n == "localhost"), "{id:?}");

    exchange_iqs(&mut server, &mut client).await;
}

#[tokio::test]
async fn contrail_tls_session_over_tcp() {
    tls_session(Dialect::Contrail).await;
}

#[tokio::test]
async fn rfc_tls_session_over_tcp() {
    tls_session(Dialect::Rfc).await;
}

// ============================================================== 4. TLS failures
//
// Each case runs in both dialects (`X` is Contrail, `rfc_X` RFC 6120): the handshake is the
// same, but the negotiation around it differs.

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    client_certificate_from_another_ca_is_refused_in(Dialect::Contrail).await;
}

#[tokio::test]
async fn rfc_client_certificate_from_another_ca_is_refused() {
    client_certificate_from_another_ca_is_refused_in(Dialect::Rfc).await;
}

async fn client_certificate_from_another_ca_is_refused_in(dialect: Dialect) {
    let pki = Pki::new("other-ca");
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(pki.server_tls()),
        client_policy(dialect, true),
        Some(pki.client_tls(&pki.client_other_ca_files, true, "localhost")),
    )
    .await;
    let se = expect_err("server", server);
    assert_handshake_error("server", &se, &["UnknownIssuer"]);
    let ce = expect_err("client", client);
    assert_client_refused("client", &ce, "UnknownCA");
}

#[tokio::test]
async fn refused_client_certificate_is_a_handshake_error_on_the_client() {
    let pki = Pki::new("other-ca-class");
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(pki.server_tls()),
        contrail_client(true),
        Some(pki.client_tls(&pki.client_other_ca_files, true, "localhost")),
    )
    .await;
    assert_handshake_error("server", &expect_err("server", server), &["UnknownIssuer"]);
    assert_handshake_error("client", &expect_err("client", client), &["UnknownCA"]);
}

/// The client side of a refused client certificate. With TLS 1.3 the client's handshake
/// has already completed when the server verifies its certificate, so the refusal is the
/// server's alert on the first read after it: today an `Error::Io` (see the ignored
/// `refused_client_certificate_is_a_handshake_error_on_the_client`), `TlsHandshake` once
/// that is fixed. Either way the text must name the alert, and it must not be a timeout.
fn assert_client_refused(side: &str, e: &Error, alert: &str) {
    assert!(
        matches!(e, Error::TlsHandshake(_) | Error::Io(_)),
        "{side}: expected a TLS failure, got {e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("alert") && shown.contains(alert),
        "{side}: {shown:?} does not name the {alert} alert"
    );
}

/// With TLS 1.2 the server verifies the client certificate before its Finished, so both
/// handshakes fail and both errors are `TlsHandshake` naming the reason.
#[tokio::test]
async fn client_certificate_from_another_ca_is_refused_tls12() {
    client_certificate_from_another_ca_is_refused_tls12_in(Dialect::Contrail).await;
}

#[tokio::test]
async fn rfc_client_certificate_from_another_ca_is_refused_tls12() {
    client_certificate_from_another_ca_is_refused_tls12_in(Dialect::Rfc).await;
}

async fn client_certificate_from_another_ca_is_refused_tls12_in(dialect: Dialect) {
    let pki = Pki::new("other-ca-12");
    let client_cfg = raw_client_config(pki.ca.roots(), Some(&pki.client_other_ca), TLS12_ONLY);
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(pki.server_tls()),
        client_policy(dialect, true),
        Some((client_cfg, ServerName::try_from("localhost").expect("name"))),
    )
    .await;
    assert_handshake_error("server", &expect_err("server", server), &["UnknownIssuer"]);
    assert_handshake_error(
        "client",
        &expect_err("client", client),
        &["UnknownCA", "alert"],
    );
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    expired_client_certificate_is_refused_in(Dialect::Contrail).await;
}

#[tokio::test]
async fn rfc_expired_client_certificate_is_refused() {
    expired_client_certificate_is_refused_in(Dialect::Rfc).await;
}

async fn expired_client_certificate_is_refused_in(dialect: Dialect) {
    let pki = Pki::new("client-expired");
    // The production loader refuses to load an expired certificate at all.
    let load = xmpp_core::tls::ClientTls::load(
        &pki.client_expired_files,
        &xmpp_core::tls::ClientTlsOptions::default(),
    );
    let le = load.expect_err("ClientTls::load accepted an expired certificate");
    assert!(
        le.to_string().contains("xmpp_server_cert"),
        "load error should name the option: {le}"
    );

    // So put it on the wire with a configuration built directly.
    for versions in [TLS12_AND_13, TLS12_ONLY] {
        let client_cfg = raw_client_config(pki.ca.roots(), Some(&pki.client_expired), versions);
        let (server, client) = tcp_pair(
            server_policy(true),
            Some(pki.server_tls()),
            client_policy(dialect, true),
            Some((client_cfg, ServerName::try_from("localhost").expect("name"))),
        )
        .await;
        assert_handshake_error(
            "server",
            &expect_err("server", server),
            &["certificate expired"],
        );
        let ce = expect_err("client", client);
        if versions == TLS12_ONLY {
            assert_handshake_error("client (TLS 1.2)", &ce, &["CertificateExpired"]);
        } else {
            assert_client_refused("client", &ce, "CertificateExpired");
        }
    }
}

#[tokio::test]
async fn expired_server_certificate_is_refused() {
    expired_server_certificate_is_refused_in(Dialect::Contrail).await;
}

#[tokio::test]
async fn rfc_expired_server_certificate_is_refused() {
    expired_server_certificate_is_refused_in(Dialect::Rfc).await;
}

async fn expired_server_certificate_is_refused_in(dialect: Dialect) {
    let pki = Pki::new("server-expired");
    let load = xmpp_core::tls::ServerTls::load(
        &pki.server_expired_files,
        &xmpp_core::tls::ServerTlsOptions::default(),
    );
    assert!(
        load.is_err(),
        "ServerTls::load accepted an expired certificate"
    );

    let server_cfg = raw_server_config(&pki.server_expired, pki.ca.roots());
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(server_cfg),
        client_policy(dialect, true),
        Some(pki.client_tls(&pki.client_files, true, "localhost")),
    )
    .await;
    assert_handshake_error(
        "client",
        &expect_err("client", client),
        &["certificate expired"],
    );
    assert_handshake_error(
        "server",
        &expect_err("server", server),
        // "eof": the alert can be lost, see `tls_alert_passes_through_skip_filler`.
        &["CertificateExpired", "BadCertificate", "alert", "eof"],
    );
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    missing_client_certificate_is_refused_in(Dialect::Contrail).await;
}

#[tokio::test]
async fn rfc_missing_client_certificate_is_refused() {
    missing_client_certificate_is_refused_in(Dialect::Rfc).await;
}

async fn missing_client_certificate_is_refused_in(dialect: Dialect) {
    let pki = Pki::new("no-client-cert");
    for versions in [TLS12_AND_13, TLS12_ONLY] {
        let client_cfg = raw_client_config(pki.ca.roots(), None, versions);
        let (server, client) = tcp_pair(
            server_policy(true),
            Some(pki.server_tls()),
            client_policy(dialect, true),
            Some((client_cfg, ServerName::try_from("localhost").expect("name"))),
        )
        .await;
        assert_handshake_error(
            "server",
            &expect_err("server", server),
            &["no certificates", "NoCertificates"],
        );
        let ce = expect_err("client", client);
        if versions == TLS12_ONLY {
            assert_handshake_error("client (TLS 1.2)", &ce, &["alert"]);
        } else {
            assert_client_refused("client", &ce, "CertificateRequired");
        }
    }
}

#[tokio::test]
async fn wrong_server_name_is_refused_unless_name_check_is_off() {
    wrong_server_name_is_refused_unless_name_check_is_off_in(Dialect::Contrail).await;
}

#[tokio::test]
async fn rfc_wrong_server_name_is_refused_unless_name_check_is_off() {
    wrong_server_name_is_refused_unless_name_check_is_off_in(Dialect::Rfc).await;
}

async fn wrong_server_name_is_refused_unless_name_check_is_off_in(dialect: Dialect) {
    let pki = Pki::new("wrong-name");
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(pki.server_tls()),
        client_policy(dialect, true),
        Some(pki.client_tls(&pki.client_files, true, "control.example.net")),
    )
    .await;
    assert_handshake_error(
        "client",
        &expect_err("client", client),
        &["not valid for name \"control.example.net\""],
    );
    assert_handshake_error(
        "server",
        &expect_err("server", server),
        // "eof": the alert can be lost, see `tls_alert_passes_through_skip_filler`.
        &["BadCertificate", "alert", "eof"],
    );

    // verify_server_name = false: the chain is still verified, the name mismatch forgiven.
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(pki.server_tls()),
        client_policy(dialect, true),
        Some(pki.client_tls(&pki.client_files, false, "control.example.net")),
    )
    .await;
    let mut server = expect_ok("server", server);
    let mut client = expect_ok("client", client);
    assert!(server.negotiated().tls && client.negotiated().tls);
    exchange_iqs(&mut server, &mut client).await;

    // ... and a server from another CA is still refused with the name check off.
    let other = pki.ca2.leaf(
        "ctrl-1",
        vec![rcgen::SanType::DnsName(
            "localhost".try_into().expect("dns SAN"),
        )],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    let (server, client) = tcp_pair(
        server_policy(true),
        Some(raw_server_config(&other, pki.ca.roots())),
        client_policy(dialect, true),
        Some(pki.client_tls(&pki.client_files, false, "control.example.net")),
    )
    .await;
    assert_handshake_error("client", &expect_err("client", client), &["UnknownIssuer"]);
    assert!(matches!(
        expect_err("server", server),
        Error::TlsHandshake(_)
    ));
}

/// tokio-rustls reports a handshake failure to the peer with a single "last-gasp" write of
/// the queued records (e.g. TLS 1.3's middlebox-compatibility ChangeCipherSpec plus the
/// alert). Over a transport without vectored writes only the first record goes out, so the
/// peer sees a bare EOF ("tls handshake eof") instead of the reason. `SkipFiller` wraps
/// every TLS socket; a client rejecting the server certificate over it must still tell
/// the server why.
#[tokio::test]
async fn tls_alert_passes_through_skip_filler() {
    let pki = Pki::new("skip-filler-alert");
    let server_cfg = raw_server_config(&pki.server_expired, pki.ca.roots());
    let (client_cfg, name) = pki.client_tls(&pki.client_files, true, "localhost");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        tokio_rustls::TlsAcceptor::from(server_cfg)
            .accept(sock)
            .await
            .map(drop)
    });
    let client = tokio::spawn(async move {
        let sock = TcpStream::connect(addr).await.expect("connect");
        tokio_rustls::TlsConnector::from(client_cfg)
            .connect(name, xmpp_core::io::SkipFiller::new(sock))
            .await
            .map(drop)
    });
    let (server, client) = within("handshake", async { tokio::join!(server, client) }).await;
    let ce = client
        .expect("client task")
        .expect_err("client accepted an expired cert");
    assert!(ce.to_string().contains("certificate expired"), "{ce}");
    let se = server.expect("server task").expect_err("server handshake");
    assert!(
        se.to_string().contains("CertificateExpired"),
        "the server was not told why: {se}"
    );
}

// ============================================================== 5. plaintext vs TLS

/// A client that requires TLS against a plain server fails at once (no features, a
/// keepalive instead in Contrail; features without STARTTLS in RFC), never by timer.
#[tokio::test(start_paused = true)]
async fn tls_required_client_against_plain_server_fails_fast() {
    for dialect in [Dialect::Contrail, Dialect::Rfc] {
        let pki = Pki::new("req-client");
        let (c_io, s_io) = duplex(64 * 1024);
        let start = Instant::now();
        let (server, client) = tokio::join!(
            accept(s_io, server_policy(false), None, timing(90)),
            connect(
                c_io,
                client_policy(dialect, true),
                Some(pki.client_tls(&pki.client_files, true, "localhost")),
                timing(90),
            ),
        );
        let ce = expect_err("client", client);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{dialect}: client failed only after {:?}",
            start.elapsed()
        );
        assert!(matches!(ce, Error::TlsRequired(_)), "{dialect}: {ce:?}");
        let shown = ce.to_string();
        assert!(
            shown.starts_with("TLS required: ") && shown.contains("STARTTLS"),
            "{dialect}: {shown}"
        );
        // The plain server established; it sees the client go away, and nothing else.
        let mut server = expect_ok("server", server);
        let se = expect_no_element(&mut server).await;
        assert!(matches!(se, Error::Closed), "{dialect}: {se:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}

/// Contrail: a plain agent goes Established on the server header (spec §4, mismatched
/// configuration); its first IQ makes the TLS-required server fail with `Unexpected`, and
/// the agent reads the features as `TlsRequired` (or sees the close). Nothing is delivered.
#[tokio::test(start_paused = true)]
async fn plain_contrail_client_against_tls_required_server() {
    let pki = Pki::new("req-server");
    let (c_io, s_io) = duplex(64 * 1024);
    let server = tokio::spawn(accept(
        s_io,
        server_policy(true),
        Some(pki.server_tls()),
        timing(90),
    ));
    let mut client = expect_ok(
        "client",
        connect(c_io, contrail_client(false), None, timing(90)).await,
    );
    assert!(!client.negotiated().tls);

    client.queue(&subscribe_iq("plaintext"));
    // The write itself may or may not race the server's close; the result is what counts.
    let _ = client.flush().await;
    let se = expect_err("server", server.await.expect("server task"));
    match &se {
        Error::Unexpected {
            element, context, ..
        } => {
            assert_eq!(element, "iq");
            assert!(context.contains("STARTTLS"), "{context}");
        }
        other => panic!("server: expected Error::Unexpected, got {other:?}"),
    }
    assert_eq!(se.stream_condition(), Some(Condition::PolicyViolation));
    assert!(se.to_string().contains("<iq>"), "{se}");

    let ce = expect_no_element(&mut client).await;
    assert!(
        matches!(ce, Error::TlsRequired(_) | Error::Closed),
        "client: {ce:?}"
    );
}

/// RFC: a plain client reads the required STARTTLS in the features and refuses during
/// negotiation; the server sees the close. Nothing is delivered.
#[tokio::test(start_paused = true)]
async fn plain_rfc_client_against_tls_required_server() {
    let pki = Pki::new("req-server-rfc");
    let (c_io, s_io) = duplex(64 * 1024);
    let (server, client) = tokio::join!(
        accept(
            s_io,
            server_policy(true),
            Some(pki.server_tls()),
            timing(90)
        ),
        connect(c_io, rfc_client(false), None, timing(90)),
    );
    let ce = expect_err("client", client);
    assert!(matches!(ce, Error::TlsRequired(_)), "{ce:?}");
    assert!(ce.to_string().contains("requires STARTTLS"), "{ce}");
    let se = expect_err("server", server);
    assert!(matches!(se, Error::Closed), "{se:?}");
}

/// Sends an RFC header and a stanza before STARTTLS to a TLS-required server; returns the
/// server's error and everything the raw client received.
async fn rfc_stanza_before_starttls() -> (Error, Vec<u8>) {
    let pki = Pki::new("rfc-early-iq");
    let (mut raw, s_io) = duplex(64 * 1024);
    let raw_client = async {
        raw.write_all(RFC_CLIENT_HEADER.as_bytes())
            .await
            .expect("header");
        let mut buf = Vec::new();
        let mut got = read_until(&mut raw, &mut buf, b"</stream:features>").await;
        raw.write_all(b"<iq type='set' id='early'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await
            .expect("iq");
        got.extend_from_slice(&buf);
        got.extend_from_slice(&read_to_close(&mut raw).await);
        got
    };
    let (server, received) = tokio::join!(
        async {
            let r = accept(
                s_io,
                server_policy(true),
                Some(pki.server_tls()),
                timing(90),
            )
            .await;
            expect_err("server", r)
        },
        raw_client
    );
    (server, received)
}

/// The parts of a received byte stream, through the xmpp-core reader.
fn parse_stream(bytes: &[u8]) -> Vec<Event> {
    let mut reader = Reader::new(Limits::default());
    reader.feed(bytes);
    let mut events = Vec::new();
    while let Ok(Some(ev)) = reader.next_event() {
        events.push(ev);
    }
    events
}

#[tokio::test(start_paused = true)]
async fn rfc_stanza_before_starttls_is_a_policy_violation() {
    let (se, received) = rfc_stanza_before_starttls().await;
    match &se {
        Error::Unexpected { element, .. } => assert_eq!(element, "iq"),
        other => panic!("server: expected Error::Unexpected, got {other:?}"),
    }
    assert_eq!(se.stream_condition(), Some(Condition::PolicyViolation));
    // The raw client saw only the header and the features, then the close: the stanza
    // was neither answered nor processed.
    let events = parse_stream(&received);
    assert!(
        matches!(events.first(), Some(Event::StreamOpen(_))),
        "{events:?}"
    );
    let iq_answered = events
        .iter()
        .any(|e| matches!(e, Event::Element(el) if el.name() == "iq"));
    assert!(!iq_answered, "{events:?}");
}

/// RFC 6120 §4.9: the server must tell the RFC peer why with a `<stream:error>`.
#[tokio::test(start_paused = true)]
async fn rfc_stanza_before_starttls_gets_stream_error() {
    let (_, received) = rfc_stanza_before_starttls().await;
    let events = parse_stream(&received);
    let se = events
        .iter()
        .find_map(|e| match e {
            Event::Element(el) if StreamError::matches(el) => Some(StreamError::from_element(el)),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "no <stream:error> received; bytes: {:?}",
                String::from_utf8_lossy(&received)
            )
        });
    assert_eq!(se.condition, Condition::PolicyViolation);
    assert!(
        events.iter().any(|e| matches!(e, Event::StreamClose)),
        "no </stream:stream>"
    );
}

// ============================================================== 6. timers

/// A server with a 9 s hold time facing a peer that negotiates and then stays silent:
/// keepalives go out every 3 s, the hold timer fires at 9 s.
async fn hold_timer_against_silent_peer(dialect: Dialect) {
    let (mut raw, s_io) = duplex(64 * 1024);
    let (keepalive, header_end): (&[u8], &[u8]) = match dialect {
        Dialect::Contrail => (CONTRAIL_KEEPALIVE, b"streams\"  >"),
        Dialect::Rfc => (b" ", b"<stream:features/>"),
    };
    let client_header = match dialect {
        Dialect::Contrail => SPEC_CLIENT_HEADER,
        Dialect::Rfc => RFC_CLIENT_HEADER,
    };
    let start = Instant::now();
    let raw_peer = async {
        raw.write_all(client_header.as_bytes())
            .await
            .expect("header");
        let mut buf = Vec::new();
        read_until(&mut raw, &mut buf, header_end).await;
        // Every byte after negotiation is a keepalive; note when each arrived.
        let mut times = Vec::new();
        let mut bytes = 0;
        let mut chunk = [0u8; 64];
        loop {
            let at = start.elapsed();
            if !buf.is_empty() {
                assert!(
                    buf.chunks(keepalive.len()).all(|c| c == keepalive),
                    "{buf:?}"
                );
                bytes += buf.len();
                times.extend(std::iter::repeat_n(at, buf.len() / keepalive.len()));
                buf.clear();
            }
            match raw.read(&mut chunk).await {
                Ok(0) | Err(_) => return (times, bytes),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let server = async {
        let mut s = expect_ok(
            "server",
            accept(s_io, server_policy(false), None, timing(9)).await,
        );
        let e = expect_no_element(&mut s).await;
        let at = start.elapsed();
        drop(s);
        (e, at)
    };
    let ((times, bytes), (e, failed_at)) = tokio::join!(raw_peer, server);
    assert!(
        matches!(e, Error::Timeout("hold timer")),
        "{dialect}: expected the hold timer, got {e:?}"
    );
    assert_eq!(e.to_string(), "hold timer expired");
    assert_eq!(e.stream_condition(), Some(Condition::ConnectionTimeout));
    assert!(
        failed_at >= Duration::from_secs(9) && failed_at < Duration::from_millis(9100),
        "{dialect}: hold timer fired at {failed_at:?}"
    );
    assert_eq!(bytes % keepalive.len(), 0);
    // Contrail's server also sends one keepalive at establishment (time 0).
    let periodic: Vec<Duration> = times
        .into_iter()
        .filter(|t| *t >= Duration::from_secs(1))
        .collect();
    assert!(
        (2..=3).contains(&periodic.len()),
        "{dialect}: keepalives at {periodic:?}"
    );
    for (i, t) in periodic.iter().enumerate() {
        let due = Duration::from_secs(3 * (i as u64 + 1));
        assert!(
            *t >= due && *t < due + Duration::from_millis(100),
            "{dialect}: keepalive {i} at {t:?}, due {due:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn contrail_hold_timer_and_keepalives_against_silent_peer() {
    hold_timer_against_silent_peer(Dialect::Contrail).await;
}

#[tokio::test(start_paused = true)]
async fn rfc_hold_timer_and_keepalives_against_silent_peer() {
    hold_timer_against_silent_peer(Dialect::Rfc).await;
}

/// Two streams: the server holds 9 s, the client 90 s (its keepalives are due only every
/// 30 s). The client counts the server's keepalives as `Incoming::Keepalive`; the server's
/// hold timer fires at 9 s and the client then sees the close.
#[tokio::test(start_paused = true)]
async fn keepalives_arrive_as_incoming_and_hold_timer_fires() {
    let (c_io, s_io) = duplex(64 * 1024);
    let start = Instant::now();
    let (server, client) = tokio::join!(
        accept(s_io, server_policy(false), None, timing(9)),
        connect(c_io, contrail_client(false), None, timing(90)),
    );
    let mut server = expect_ok("server", server);
    let mut client = expect_ok("client", client);
    let server_side = async {
        let e = expect_no_element(&mut server).await;
        let at = start.elapsed();
        drop(server);
        (e, at)
    };
    let client_side = async {
        let mut keepalives = 0;
        loop {
            match client.next().await {
                Ok(Incoming::Keepalive) => keepalives += 1,
                Ok(Incoming::Element(el)) => panic!("unexpected {el:?}"),
                Err(e) => return (keepalives, e, start.elapsed()),
            }
        }
    };
    let ((se, s_at), (keepalives, ce, c_at)) = tokio::join!(server_side, client_side);
    assert!(matches!(se, Error::Timeout("hold timer")), "{se:?}");
    assert!(
        s_at >= Duration::from_secs(9) && s_at < Duration::from_millis(9100),
        "{s_at:?}"
    );
    // One at establishment, at 3 s and 6 s, perhaps one more at 9 s.
    assert!((3..=4).contains(&keepalives), "{keepalives} keepalives");
    assert!(matches!(ce, Error::Closed), "{ce:?}");
    assert!(c_at >= s_at, "{c_at:?} < {s_at:?}");
}

/// Both sides with a 9 s hold time keep each other alive indefinitely with keepalives.
#[tokio::test(start_paused = true)]
async fn mutual_keepalives_keep_the_stream_up() {
    for dialect in [Dialect::Contrail, Dialect::Rfc] {
        let (c_io, s_io) = duplex(64 * 1024);
        let (server, client) = tokio::join!(
            accept(s_io, server_policy(false), None, timing(9)),
            connect(c_io, client_policy(dialect, false), None, timing(9)),
        );
        let mut server = expect_ok("server", server);
        let mut client = expect_ok("client", client);
        let mut counts = (0u32, 0u32);
        let ran = timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    r = server.next() => match r {
                        Ok(Incoming::Keepalive) => counts.0 += 1,
                        other => return ("server", other),
                    },
                    r = client.next() => match r {
                        Ok(Incoming::Keepalive) => counts.1 += 1,
                        other => return ("client", other),
                    },
                }
            }
        })
        .await;
        if let Ok((side, r)) = ran {
            panic!("{dialect}: {side} stream ended within 60 s: {r:?}");
        }
        // One every 3 s for 60 s, each way (plus the Contrail establishment ones).
        assert!(counts.0 >= 19 && counts.1 >= 19, "{dialect}: {counts:?}");
    }
}

// ============================================================== 7. the §3.4 hazard

/// How a raw peer delivers the `\n` the C++ daemons write after `<starttls/>` /
/// `<proceed/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Newline {
    /// In the same write as the nonza (the usual C++ case).
    SameWrite,
    /// In a separate write, once the peer has started its TLS handshake: it can then only
    /// reach the peer's TLS layer, never its XML reader.
    Late,
}

/// Reads a client stream header: the Contrail layout ends with the streams namespace, two
/// spaces and `>` (spec §3.1); an RFC header is read up to its first `>`.
async fn read_client_header<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    dialect: Dialect,
) -> Vec<u8> {
    match dialect {
        Dialect::Contrail => read_until(io, buf, b"streams\"  >").await,
        Dialect::Rfc => {
            let mut h = read_until(io, buf, b"<stream:stream").await;
            h.extend(read_until(io, buf, b">").await);
            h
        }
    }
}

/// The byte script of a server that requires STARTTLS: the C++ control node's exact
/// output for Contrail (spec §3.3), a standard compact server for RFC.
#[derive(Debug)]
struct ServerScript {
    client_header: String,
    header_and_features: String,
    starttls: &'static str,
    proceed: &'static str,
    header_after_tls: String,
}

fn server_script(dialect: Dialect) -> ServerScript {
    match dialect {
        Dialect::Contrail => ServerScript {
            client_header: SPEC_CLIENT_HEADER.to_owned(),
            header_and_features: format!("{SPEC_SERVER_HEADER}{SPEC_FEATURES}"),
            starttls: STARTTLS_NO_NL,
            proceed: PROCEED_NO_NL,
            header_after_tls: SPEC_SERVER_HEADER.to_owned(),
        },
        Dialect::Rfc => ServerScript {
            client_header: OUR_RFC_CLIENT_HEADER.to_owned(),
            header_and_features: format!(
                "{RFC_SERVER_HEADER}<stream:features><starttls \
                 xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
                 </stream:features>"
            ),
            starttls: "<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>",
            proceed: "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            header_after_tls: format!("{RFC_SERVER_HEADER}<stream:features/>"),
        },
    }
}

/// The C++ server's header and TLS-required features (spec §3.3: a declaration and a
/// newline in front of `<stream:features>`) are answered with `<starttls/>`: the newline
/// belongs to the declaration and is not a plain-mode keepalive (a regression test: an
/// earlier reader reported it as one and the client failed with `TlsRequired`).
#[tokio::test(start_paused = true)]
async fn contrail_tls_client_answers_cxx_features_with_starttls() {
    let pki = Pki::new("cxx-features");
    let (c_io, mut raw) = duplex(64 * 1024);
    let client = tokio::spawn(connect(
        c_io,
        contrail_client(true),
        Some(pki.client_tls(&pki.client_files, true, "localhost")),
        timing(90),
    ));
    let mut buf = Vec::new();
    read_until(&mut raw, &mut buf, b"streams\"  >").await;
    raw.write_all(format!("{SPEC_SERVER_HEADER}{SPEC_FEATURES}").as_bytes())
        .await
        .expect("header + features");
    let mut got = buf;
    got.extend_from_slice(&read_to_close_or(&mut raw, STARTTLS_NO_NL.len()).await);
    if got != STARTTLS_NO_NL.as_bytes() {
        drop(raw);
        let r = client.await.expect("client task").map(|_| "established");
        panic!(
            "expected <starttls/>, got {:?}; client: {r:?}",
            String::from_utf8_lossy(&got)
        );
    }
    client.abort();
}

/// Reads until `n` bytes arrived or the peer closed.
async fn read_to_close_or<R: AsyncRead + Unpin>(io: &mut R, n: usize) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    while all.len() < n {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(k) => all.extend_from_slice(&chunk[..k]),
        }
    }
    all
}

/// A raw TLS-requiring server (C++ control node bytes for Contrail) against our
/// `connect`, sending the `\n` after `<proceed/>` as `newline` says.
async fn raw_tls_server_against_our_client(dialect: Dialect, newline: Newline) {
    let pki = Pki::new("raw-server");
    let script = server_script(dialect);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_tls());
    let raw_server = async {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let mut buf = Vec::new();
        let header = read_client_header(&mut tcp, &mut buf, dialect).await;
        assert_eq!(text(&header), script.client_header);
        tcp.write_all(script.header_and_features.as_bytes())
            .await
            .expect("header + features");
        let starttls = read_until(&mut tcp, &mut buf, b"/>").await;
        // Spec §3.4: ours carries no trailing byte.
        assert_eq!(text(&starttls), script.starttls);
        assert!(buf.is_empty(), "bytes after <starttls/>: {buf:?}");
        match newline {
            Newline::SameWrite => tcp
                .write_all(format!("{}\n", script.proceed).as_bytes())
                .await
                .expect("proceed"),
            Newline::Late => {
                tcp.write_all(script.proceed.as_bytes())
                    .await
                    .expect("proceed");
                // Wait (without consuming it) until the ClientHello arrives: the client
                // is inside its TLS handshake now, so this "\n" can only meet its TLS
                // layer, as when the C++ "\n" arrives in a later TCP segment.
                let mut peek = [0u8; 1];
                let n = tcp.peek(&mut peek).await.expect("peek");
                assert_eq!((n, peek[0]), (1, 0x16), "a TLS handshake record");
                tcp.write_all(b"\n").await.expect("late newline");
            }
        }
        let mut tls = acceptor.accept(tcp).await.expect("server TLS handshake");
        let mut buf = Vec::new();
        let header = read_client_header(&mut tls, &mut buf, dialect).await;
        assert_eq!(text(&header), script.client_header, "header inside TLS");
        tls.write_all(script.header_after_tls.as_bytes())
            .await
            .expect("header inside TLS");
        tls.flush().await.expect("flush");
        if dialect == Dialect::Contrail {
            let ka = read_until(&mut tls, &mut buf, CONTRAIL_KEEPALIVE).await;
            assert_eq!(ka, CONTRAIL_KEEPALIVE, "client established after TLS");
        }
        tls
    };
    let client = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        connect(
            tcp,
            client_policy(dialect, true),
            Some(pki.client_tls(&pki.client_files, true, "127.0.0.1")),
            timing(90),
        )
        .await
    };
    let (_tls, client) = within("raw server exchange", async {
        tokio::join!(raw_server, client)
    })
    .await;
    let client = expect_ok("client", client);
    assert!(client.negotiated().tls);
    let expected_from = match dialect {
        Dialect::Contrail => "ctrl-host-1",
        Dialect::Rfc => RFC_DOMAIN,
    };
    assert_eq!(
        client.negotiated().peer_header.from.as_deref(),
        Some(expected_from)
    );
}

#[tokio::test]
async fn proceed_followed_by_newline_in_same_write() {
    raw_tls_server_against_our_client(Dialect::Contrail, Newline::SameWrite).await;
}

#[tokio::test]
async fn proceed_followed_by_late_newline() {
    raw_tls_server_against_our_client(Dialect::Contrail, Newline::Late).await;
}

#[tokio::test]
async fn rfc_proceed_followed_by_newline_in_same_write() {
    raw_tls_server_against_our_client(Dialect::Rfc, Newline::SameWrite).await;
}

#[tokio::test]
async fn rfc_proceed_followed_by_late_newline() {
    raw_tls_server_against_our_client(Dialect::Rfc, Newline::Late).await;
}

/// A raw client speaking the C++ agent's bytes, TLS mode, against our `accept`.
async fn cxx_tls_client_against_our_server(newline: Newline) {
    let pki = Pki::new("cxx-client");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client_cfg, name) = pki.client_tls(&pki.client_files, true, "localhost");
    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let raw_client = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.write_all(SPEC_CLIENT_HEADER.as_bytes())
            .await
            .expect("header");
        let mut buf = Vec::new();
        let got = read_until(&mut tcp, &mut buf, b"</stream:features>\n").await;
        // Spec §3.3: header, then the features exactly as the C++ server writes them.
        assert_eq!(text(&got), format!("{OUR_SERVER_HEADER}{SPEC_FEATURES}"));
        match newline {
            Newline::SameWrite => {
                tcp.write_all(format!("{STARTTLS_NO_NL}\n").as_bytes())
                    .await
                    .expect("starttls");
            }
            Newline::Late => {
                tcp.write_all(STARTTLS_NO_NL.as_bytes())
                    .await
                    .expect("starttls");
            }
        }
        let proceed = read_until(&mut tcp, &mut buf, b"/>").await;
        assert_eq!(text(&proceed), PROCEED_NO_NL);
        assert!(buf.is_empty(), "bytes after <proceed/>: {buf:?}");
        if newline == Newline::Late {
            // The server has handed the socket to TLS: this "\n" reaches its TLS layer.
            tcp.write_all(b"\n").await.expect("late newline");
        }
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("client TLS handshake");
        tls.write_all(SPEC_CLIENT_HEADER.as_bytes())
            .await
            .expect("header inside TLS");
        let mut buf = Vec::new();
        let header = read_until(&mut tls, &mut buf, b"streams\"  >").await;
        assert_eq!(text(&header), OUR_SERVER_HEADER, "no features after TLS");
        assert!(
            buf.is_empty(),
            "nothing after the header inside TLS: {buf:?}"
        );
        tls.write_all(CONTRAIL_KEEPALIVE).await.expect("keepalive");
        tls.write_all(
            b"<iq type=\"set\" from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\" id=\"c2s\">\n<pubsub xmlns=\"http://jabber.org/protocol/pubsub\">\n<subscribe node=\"default-domain:admin:vn1:vn1\" />\n</pubsub>\n</iq>\n",
        )
        .await
        .expect("iq");
        tls.flush().await.expect("flush");
        tls
    };
    let server = async {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut s = expect_ok(
            "server",
            accept(tcp, server_policy(true), Some(pki.server_tls()), timing(90)).await,
        );
        assert!(s.negotiated().tls);
        let el = next_element(&mut s).await;
        (s, el)
    };
    let (_tls, (_server, el)) = within("C++ client exchange", async {
        tokio::join!(raw_client, server)
    })
    .await;
    assert_subscribe_iq(&el, "c2s");
}

#[tokio::test]
async fn starttls_followed_by_newline_in_same_write() {
    cxx_tls_client_against_our_server(Newline::SameWrite).await;
}

#[tokio::test]
async fn starttls_followed_by_late_newline() {
    cxx_tls_client_against_our_server(Newline::Late).await;
}

/// Anything but filler after `<proceed/>` would be read by the TLS engine: refused.
async fn data_after_proceed(dialect: Dialect) {
    let pki = Pki::new("junk-proceed");
    let script = server_script(dialect);
    let (c_io, mut raw) = duplex(64 * 1024);
    let raw_server = async {
        let mut buf = Vec::new();
        read_client_header(&mut raw, &mut buf, dialect).await;
        raw.write_all(script.header_and_features.as_bytes())
            .await
            .expect("features");
        read_until(&mut raw, &mut buf, b"/>").await;
        raw.write_all(format!("{}\n<iq>", script.proceed).as_bytes())
            .await
            .expect("proceed");
        raw
    };
    let (_raw, client) = tokio::join!(
        raw_server,
        connect(
            c_io,
            client_policy(dialect, true),
            Some(pki.client_tls(&pki.client_files, true, "localhost")),
            timing(90),
        )
    );
    let e = expect_err("client", client);
    assert!(matches!(e, Error::NotWellFormed(_)), "{dialect}: {e:?}");
    assert!(e.to_string().contains("after <proceed/>"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn data_after_proceed_is_refused() {
    data_after_proceed(Dialect::Contrail).await;
}

#[tokio::test(start_paused = true)]
async fn rfc_data_after_proceed_is_refused() {
    data_after_proceed(Dialect::Rfc).await;
}

#[tokio::test(start_paused = true)]
async fn data_after_starttls_is_refused() {
    let pki = Pki::new("junk-starttls");
    let (mut raw, s_io) = duplex(64 * 1024);
    let raw_client = async {
        raw.write_all(SPEC_CLIENT_HEADER.as_bytes())
            .await
            .expect("header");
        let mut buf = Vec::new();
        read_until(&mut raw, &mut buf, b"</stream:features>").await;
        raw.write_all(format!("{STARTTLS_NO_NL}\n\x16\x03\x01").as_bytes())
            .await
            .expect("starttls");
        let rest = read_to_close(&mut raw).await;
        assert!(
            !String::from_utf8_lossy(&rest).contains("proceed"),
            "the server proceeded: {rest:?}"
        );
    };
    let (server, ()) = tokio::join!(
        accept(
            s_io,
            server_policy(true),
            Some(pki.server_tls()),
            timing(90)
        ),
        raw_client
    );
    let e = expect_err("server", server);
    assert!(matches!(e, Error::NotWellFormed(_)), "{e:?}");
    assert!(e.to_string().contains("after <starttls/>"), "{e}");
}

// ============================================================== 8. negotiation deadline

#[tokio::test(start_paused = true)]
async fn silent_peer_hits_the_negotiation_timer() {
    // Server side: a client that connects and sends nothing, or only half a header.
    for opening in [&b""[..], b"<stream:stream from=\"compute-1\" to=\"x\""] {
        let (mut peer, io) = duplex(1024);
        peer.write_all(opening).await.expect("write");
        let start = Instant::now();
        let e = expect_err(
            "server",
            accept(io, server_policy(false), None, timing(90)).await,
        );
        assert!(matches!(e, Error::Timeout("negotiation timer")), "{e:?}");
        assert_eq!(e.to_string(), "negotiation timer expired");
        assert_eq!(e.stream_condition(), Some(Condition::ConnectionTimeout));
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        drop(peer);
    }

    // Client side: a server that accepts and never answers.
    let (peer, io) = duplex(1024);
    let start = Instant::now();
    let e = expect_err(
        "client",
        connect(io, contrail_client(false), None, timing(90)).await,
    );
    assert!(matches!(e, Error::Timeout("negotiation timer")), "{e:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    drop(peer);
}

/// The deadline covers the TLS handshake too: a client that sends `<starttls/>` and then
/// no ClientHello cannot hold the server past it.
#[tokio::test(start_paused = true)]
async fn stalled_tls_handshake_hits_the_negotiation_timer() {
    let pki = Pki::new("stall");
    let (mut raw, s_io) = duplex(64 * 1024);
    let start = Instant::now();
    let raw_client = async {
        raw.write_all(SPEC_CLIENT_HEADER.as_bytes())
            .await
            .expect("header");
        let mut buf = Vec::new();
        read_until(&mut raw, &mut buf, b"</stream:features>").await;
        raw.write_all(STARTTLS_NO_NL.as_bytes())
            .await
            .expect("starttls");
        read_until(&mut raw, &mut buf, b"/>").await;
        raw
    };
    let (server, _raw) = tokio::join!(
        accept(
            s_io,
            server_policy(true),
            Some(pki.server_tls()),
            timing(90)
        ),
        raw_client
    );
    let e = expect_err("server", server);
    assert!(matches!(e, Error::Timeout("negotiation timer")), "{e:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(15));
}
