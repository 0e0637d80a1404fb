//! Negotiation state tests: a client and a server negotiator wired back to back, with the
//! TLS handshake simulated (both sides reach `StartTls`, then both are told it succeeded).

use bytes::{Bytes, BytesMut};

use super::*;
use crate::error::Error;
use crate::stream::{Condition, Dialect, Features, StreamHeader, TlsNonza};
use crate::xml::Limits;

fn server(tls: bool) -> ServerNegotiator {
    ServerNegotiator::new(ServerPolicy {
        tls_required: tls,
        host_name: "ctrl-1".into(),
        limits: Limits::default(),
    })
}

fn client(dialect: Dialect, tls: bool) -> ClientNegotiator {
    ClientNegotiator::new(ClientPolicy {
        dialect,
        tls_required: tls,
        from: "compute-1".into(),
        to: "network-control@contrailsystems.com".into(),
        default_ns: match dialect {
            Dialect::Contrail => String::new(),
            Dialect::Rfc => "jabber:client".into(),
        },
        limits: Limits::default(),
    })
}

/// What one side did during a pump step.
#[derive(Debug, Default)]
struct Drained {
    sent: Vec<Bytes>,
    start_tls: bool,
    established: Option<Negotiated>,
}

fn drain(actions: impl FnMut() -> Option<Action>) -> Drained {
    let mut d = Drained::default();
    let mut actions = actions;
    while let Some(a) = actions() {
        match a {
            Action::Send(b) => d.sent.push(b),
            Action::StartTls => d.start_tls = true,
            Action::Established(n) => d.established = Some(*n),
        }
    }
    d
}

/// (client result, server result, client→server bytes, server→client bytes, TLS started).
type Outcome = (
    Result<Negotiated, Error>,
    Result<Negotiated, Error>,
    Vec<u8>,
    Vec<u8>,
    bool,
);

/// Runs both negotiators to completion.
fn run(mut c: ClientNegotiator, mut s: ServerNegotiator) -> Outcome {
    let mut c2s = Vec::new();
    let mut s2c = Vec::new();
    let (mut c_done, mut s_done) = (None, None);
    let (mut c_tls, mut s_tls) = (false, false);
    let mut tls_started = false;
    for _ in 0..20 {
        let dc = drain(|| c.poll_action());
        for b in &dc.sent {
            c2s.extend_from_slice(b);
            if s_done.is_none()
                && let Err(e) = s.feed(b)
            {
                return (Err(Error::Closed), Err(e), c2s, s2c, tls_started);
            }
        }
        c_tls |= dc.start_tls;
        if dc.established.is_some() {
            c_done = dc.established;
        }
        let ds = drain(|| s.poll_action());
        for b in &ds.sent {
            s2c.extend_from_slice(b);
            if c_done.is_none()
                && let Err(e) = c.feed(b)
            {
                return (Err(e), Err(Error::Closed), c2s, s2c, tls_started);
            }
        }
        s_tls |= ds.start_tls;
        if ds.established.is_some() {
            s_done = ds.established;
        }
        if c_tls && s_tls {
            tls_started = true;
            c_tls = false;
            s_tls = false;
            s.tls_established().expect("server tls");
            c.tls_established().expect("client tls");
        }
        if let (Some(cn), Some(sn)) = (&c_done, &s_done) {
            return (Ok(cn.clone()), Ok(sn.clone()), c2s, s2c, tls_started);
        }
    }
    panic!("negotiation did not finish: client {c_done:?} server {s_done:?}");
}

#[test]
fn contrail_plain() {
    let (c, s, c2s, s2c, tls) = run(client(Dialect::Contrail, false), server(false));
    let (c, s) = (c.expect("client"), s.expect("server"));
    assert!(!tls);
    assert_eq!(s.dialect, Dialect::Contrail);
    assert_eq!(s.peer_header.from.as_deref(), Some("compute-1"));
    assert_eq!(c.peer_header.from.as_deref(), Some("ctrl-1"));
    assert_eq!(c.peer_header.id.as_deref(), Some("++123"));
    assert_eq!(
        c2s,
        b"<stream:stream from=\"compute-1\" to=\"network-control@contrailsystems.com\" \
version=\"1.0\" xml:lang=\"en\" xmlns=\"\" xmlns:stream=\"http://etherx.jabber.org/streams\"  >"
    );
    let mut expect =
        b"<stream:stream from=\"ctrl-1\" to=\"compute-1\" id=\"++123\" version=\"1.0\" \
xml:lang=\"en\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\"  >"
            .to_vec();
    expect.extend_from_slice(&[0xC8, 0x80]);
    assert_eq!(s2c, expect);
}

#[test]
fn contrail_tls() {
    let (c, s, c2s, s2c, tls) = run(client(Dialect::Contrail, true), server(true));
    let (c, s) = (c.expect("client"), s.expect("server"));
    assert!(tls && c.tls && s.tls);
    assert_eq!(s.dialect, Dialect::Contrail);
    // The server sent header, features, proceed, then its second header (no features
    // after TLS in the Contrail dialect).
    let s2c = String::from_utf8(s2c).expect("utf8");
    assert!(s2c.contains(
        "<?xml version=\"1.0\"?>\n<stream:features>\n<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\">\n<required />\n</starttls>\n</stream:features>\n"
    ));
    assert!(s2c.contains("<?xml version=\"1.0\"?>\n<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" /><stream:stream"));
    assert_eq!(s2c.matches("<stream:features").count(), 1);
    let c2s = String::from_utf8(c2s).expect("utf8");
    assert_eq!(c2s.matches("<stream:stream ").count(), 2);
    assert!(c2s.contains("<?xml version=\"1.0\"?>\n<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" /><stream:stream"));
}

#[test]
fn rfc_tls_gets_features_after_restart() {
    let (c, s, _, s2c, tls) = run(client(Dialect::Rfc, true), server(true));
    let (c, s) = (c.expect("client"), s.expect("server"));
    assert!(tls && c.tls);
    assert_eq!(s.dialect, Dialect::Rfc);
    assert_eq!(c.features, Some(Features::default()));
    let s2c = String::from_utf8(s2c).expect("utf8");
    assert_eq!(s2c.matches("<stream:features").count(), 2, "{s2c}");
    // What openssl s_client -starttls xmpp looks for.
    assert!(s2c.contains("<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\">"));
}

#[test]
fn rfc_plain() {
    let (c, s, _, _, tls) = run(client(Dialect::Rfc, false), server(false));
    assert!(!tls);
    assert_eq!(s.expect("server").dialect, Dialect::Rfc);
    assert!(c.expect("client").features.is_some());
}

#[test]
fn client_requiring_tls_refuses_plain_contrail_server() {
    let (c, _, _, _, _) = run(client(Dialect::Contrail, true), server(false));
    let err = c.expect_err("must fail");
    assert!(matches!(err, Error::TlsRequired(_)), "{err}");
}

#[test]
fn client_requiring_tls_refuses_plain_rfc_server() {
    let (c, _, _, _, _) = run(client(Dialect::Rfc, true), server(false));
    assert!(matches!(c.expect_err("must fail"), Error::TlsRequired(_)));
}

#[test]
fn plain_rfc_client_refuses_server_requiring_tls() {
    let (c, _, _, _, _) = run(client(Dialect::Rfc, false), server(true));
    assert!(matches!(c.expect_err("must fail"), Error::TlsRequired(_)));
}

#[test]
fn stanza_before_starttls_is_refused() {
    let mut s = server(true);
    s.feed(
        b"<stream:stream from='a' to='b' xmlns='' xmlns:stream='http://etherx.jabber.org/streams'>",
    )
    .expect("header");
    let d = drain(|| s.poll_action());
    assert_eq!(d.sent.len(), 1);
    let err = s
        .feed(b"\xC8\x80<iq type='set'><pubsub/></iq>")
        .expect_err("iq before TLS");
    assert_eq!(err.stream_condition(), Some(Condition::PolicyViolation));
    assert!(err.to_string().contains("before STARTTLS"), "{err}");
}

#[test]
fn filler_after_starttls_is_discarded_but_data_is_refused() {
    let header =
        b"<stream:stream from='a' xmlns='' xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut s = server(true);
    s.feed(header).expect("header");
    drain(|| s.poll_action());
    s.feed(b"<?xml version=\"1.0\"?>\n<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" />\n")
        .expect("starttls");
    let d = drain(|| s.poll_action());
    assert!(d.start_tls);
    let mut proceed = BytesMut::new();
    TlsNonza::Proceed.write(&mut proceed, Dialect::Contrail);
    assert_eq!(d.sent, vec![proceed.freeze()]);

    let mut s = server(true);
    s.feed(header).expect("header");
    drain(|| s.poll_action());
    let err = s
        .feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01")
        .expect_err("bytes after starttls");
    assert!(matches!(err, Error::NotWellFormed(_)), "{err}");
}

#[test]
fn failure_answer_is_a_clear_error() {
    let mut c = client(Dialect::Rfc, true);
    drain(|| c.poll_action());
    c.feed(b"<stream:stream from='s' id='1' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
        .expect("features");
    let d = drain(|| c.poll_action());
    assert_eq!(d.sent.len(), 1);
    let err = c
        .feed(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .expect_err("failure");
    assert!(
        matches!(err, Error::TlsRequired(ref m) if m.contains("failure")),
        "{err}"
    );
}

#[test]
fn header_split_at_every_byte() {
    let bytes = b"<?xml version='1.0'?><stream:stream to='ctrl' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
    let mut s = server(false);
    for b in bytes.iter() {
        s.feed(std::slice::from_ref(b)).expect("byte");
    }
    let d = drain(|| s.poll_action());
    let n = d.established.expect("established");
    assert_eq!(n.dialect, Dialect::Rfc);
    assert_eq!(n.peer_header.to.as_deref(), Some("ctrl"));
    let _ = StreamHeader::default();
}
