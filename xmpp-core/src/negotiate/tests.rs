//! Negotiation state tests: a client and a server negotiator wired back to back, with the
//! TLS handshake simulated (both sides reach `StartTls`, then both are told it succeeded).

use bytes::{Bytes, BytesMut};

use super::*;
use crate::error::Error;
use crate::sasl::Credentials;
use crate::stream::{Condition, Dialect, Features, StreamHeader, TlsNonza};
use crate::tls::PeerIdentity;
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
fn run(c: ClientNegotiator, s: ServerNegotiator) -> Outcome {
    run_with(c, s, None)
}

/// Runs both negotiators to completion; `peer` is the client certificate identity the
/// simulated handshake hands the server.
fn run_with(
    mut c: ClientNegotiator,
    mut s: ServerNegotiator,
    peer: Option<PeerIdentity>,
) -> Outcome {
    let mut c2s = Vec::new();
    let mut s2c = Vec::new();
    let (mut c_done, mut s_done) = (None, None);
    let (mut c_tls, mut s_tls) = (false, false);
    let mut tls_started = false;
    for _ in 0..40 {
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
            s.tls_established(peer.clone()).expect("server tls");
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

// ---------------------------------------------------------------- RFC 6120 client profile

/// Feeds `bytes` and processes until the server needs more input; returns what it sent,
/// whether it asked for TLS and whether it finished.
fn pump(s: &mut ServerNegotiator, bytes: &[u8]) -> Result<(String, Drained), Error> {
    s.feed(bytes)?;
    let mut all = Drained::default();
    loop {
        let d = drain(|| s.poll_action());
        if d.sent.is_empty() && !d.start_tls && d.established.is_none() {
            break;
        }
        all.sent.extend(d.sent);
        all.start_tls |= d.start_tls;
        if d.established.is_some() {
            all.established = d.established;
            break;
        }
        if d.start_tls {
            break;
        }
        s.process()?;
    }
    let text = String::from_utf8(all.sent.concat()).expect("utf8");
    Ok((text, all))
}

/// A server negotiator after STARTTLS and the handshake, the post-TLS header sent.
fn server_after_tls(peer: Option<PeerIdentity>) -> ServerNegotiator {
    let mut s = profile_server(true);
    pump(&mut s, RFC_HEADER).expect("header");
    let (_, d) = pump(
        &mut s,
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )
    .expect("starttls");
    assert!(d.start_tls);
    s.tls_established(peer).expect("tls");
    let (sent, _) = pump(&mut s, RFC_HEADER).expect("header");
    assert!(sent.contains("<mechanism>EXTERNAL</mechanism>"), "{sent}");
    s
}

fn profile_server(tls: bool) -> ServerNegotiator {
    ServerNegotiator::with_profile(
        ServerPolicy {
            tls_required: tls,
            host_name: "ctrl-1".into(),
            limits: Limits::default(),
        },
        RfcProfile::Client,
    )
}

fn rfc_login_client(
    tls: bool,
    creds: Vec<Credentials>,
    resource: Option<&str>,
) -> ClientNegotiator {
    ClientNegotiator::with_login(
        ClientPolicy {
            dialect: Dialect::Rfc,
            tls_required: tls,
            from: String::new(),
            to: "localhost".into(),
            default_ns: "jabber:client".into(),
            limits: Limits::default(),
        },
        Login {
            credentials: creds,
            resource: resource.map(str::to_owned),
        },
    )
}

fn external() -> Vec<Credentials> {
    vec![Credentials::External { authzid: None }]
}

fn cert(cn: &str, addrs: &[&str]) -> PeerIdentity {
    PeerIdentity {
        common_names: vec![cn.to_owned()],
        xmpp_addrs: addrs.iter().map(|s| s.to_string()).collect(),
        ..PeerIdentity::default()
    }
}

#[test]
fn rfc_profile_external_restart_and_bind() {
    let (c, s, c2s, s2c, tls) = run_with(
        rfc_login_client(true, external(), Some("probe")),
        profile_server(true),
        Some(cert("agent1", &["agent1@localhost"])),
    );
    let (c, s) = (c.expect("client"), s.expect("server"));
    assert!(tls && c.tls && s.tls);
    assert_eq!(
        c.jid.as_ref().map(ToString::to_string).as_deref(),
        Some("agent1@localhost/probe")
    );
    assert_eq!(c.jid, s.jid);
    assert!(
        c.features.as_ref().is_some_and(|f| f.bind),
        "{:?}",
        c.features
    );
    let s2c = String::from_utf8(s2c).expect("utf8");
    // Three stream starts: plain, after TLS (SASL), after SASL (bind).
    assert_eq!(s2c.matches("<stream:features>").count(), 3, "{s2c}");
    assert!(s2c.contains("<mechanisms xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"><mechanism>EXTERNAL</mechanism></mechanisms>"), "{s2c}");
    assert!(
        s2c.contains("<success xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/>"),
        "{s2c}"
    );
    assert!(s2c.contains("<jid>agent1@localhost/probe</jid>"), "{s2c}");
    let c2s = String::from_utf8(c2s).expect("utf8");
    assert!(c2s.contains("mechanism=\"EXTERNAL\">=</auth>"), "{c2s}");
    assert_eq!(c2s.matches("<stream:stream").count(), 3, "{c2s}");
}

#[test]
fn rfc_profile_cn_identity_and_generated_resource() {
    let (c, _, _, _, _) = run_with(
        rfc_login_client(true, external(), None),
        profile_server(true),
        Some(cert("compute-1", &[])),
    );
    let jid = c.expect("client").jid.expect("bound");
    assert_eq!(jid.to_bare().to_string(), "compute-1@localhost");
    assert!(jid.resource().is_some_and(|r| !r.is_empty()));
}

#[test]
fn rfc_profile_refuses_foreign_identity_then_closes() {
    let (c, _, _, s2c, _) = run_with(
        rfc_login_client(true, external(), None),
        profile_server(true),
        Some(cert("x", &["agent1@elsewhere"])),
    );
    let e = c.expect_err("refused");
    assert!(
        matches!(
            e,
            Error::Identity {
                condition: Condition::NotAuthorized,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not-authorized"), "{e}");
    let s2c = String::from_utf8(s2c).expect("utf8");
    assert!(
        s2c.contains("<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"><not-authorized/>"),
        "{s2c}"
    );

    // A raw client that keeps trying is cut off after three attempts.
    let mut s = server_after_tls(None);
    let auth = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>";
    let (f1, _) = pump(&mut s, auth).expect("first failure");
    assert!(f1.contains("no client certificate"), "{f1}");
    pump(&mut s, auth).expect("second failure");
    let e = pump(&mut s, auth).expect_err("third failure closes");
    assert_eq!(e.stream_condition(), Some(Condition::NotAuthorized));
    let sent = drain(|| s.poll_action()).sent.concat();
    assert_eq!(
        String::from_utf8_lossy(&sent).matches("<failure").count(),
        1
    );
}

const RFC_HEADER: &[u8] = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='localhost' version='1.0'>";

#[test]
fn rfc_profile_pipelined_client_and_no_initial_response() {
    // What a scripted peer (s_client with a prepared stdin) may send: everything at once,
    // and EXTERNAL without an initial response (the server asks with an empty challenge).
    let mut s = profile_server(true);
    let (first, _) = pump(&mut s, RFC_HEADER).expect("header");
    // openssl s_client -starttls xmpp looks for exactly this, in one read.
    assert!(
        first.contains("<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\">"),
        "{first}"
    );
    let (proceed, d) = pump(
        &mut s,
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    )
    .expect("starttls");
    assert!(d.start_tls);
    assert_eq!(d.sent.len(), 1, "proceed in one write");
    assert!(proceed.starts_with("<proceed"), "{proceed}");
    s.tls_established(Some(cert("agent1", &["agent1@localhost"])))
        .expect("tls");
    let mut all = RFC_HEADER.to_vec();
    all.extend_from_slice(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'/>");
    let (sent, _) = pump(&mut s, &all).expect("auth without data");
    assert!(
        sent.ends_with("<challenge xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/>"),
        "{sent}"
    );
    let mut rest = b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>".to_vec();
    rest.extend_from_slice(RFC_HEADER);
    rest.extend_from_slice(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>s_client</resource></bind></iq><iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    let (sent, d) = pump(&mut s, &rest).expect("response, restart, bind");
    let n = d.established.expect("established");
    assert_eq!(n.jid.expect("jid").to_string(), "agent1@localhost/s_client");
    assert!(
        sent.contains("<success xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/>"),
        "{sent}"
    );
    assert!(sent.contains("<iq type=\"result\" id=\"b1\"><bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"><jid>agent1@localhost/s_client</jid></bind></iq>"), "{sent}");
    // The ping is left for the session.
    let mut reader = s.into_reader();
    match reader.next_event().expect("event") {
        Some(crate::xml::Event::Element(el)) => assert_eq!(el.get_attr("id"), Some("p1")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc_profile_stanza_before_auth_is_not_authorized() {
    let mut s = server_after_tls(None);
    let e = pump(
        &mut s,
        b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .expect_err("before auth");
    assert_eq!(e.stream_condition(), Some(Condition::NotAuthorized));
    let mut s = server_after_tls(Some(cert("agent1", &[])));
    let (sent, _) = pump(
        &mut s,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
    )
    .expect("failure, not fatal");
    assert!(sent.contains("<invalid-mechanism/>"), "{sent}");
    // The client may try again, with the right mechanism.
    let (sent, _) = pump(
        &mut s,
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
    )
    .expect("success");
    assert!(sent.contains("<success"), "{sent}");
}

#[test]
fn rfc_profile_plain_binds_the_claimed_name() {
    let mut c = rfc_login_client(false, external(), Some("r"));
    // Claim a name in the header, as a Contrail-minded client would.
    c = {
        let _ = c;
        ClientNegotiator::with_login(
            ClientPolicy {
                dialect: Dialect::Rfc,
                tls_required: false,
                from: "compute-7".into(),
                to: "ctrl.example".into(),
                default_ns: "jabber:client".into(),
                limits: Limits::default(),
            },
            Login {
                credentials: external(),
                resource: Some("r".into()),
            },
        )
    };
    let (c, s, _, s2c, tls) = run(c, profile_server(false));
    assert!(!tls);
    let (c, s) = (c.expect("client"), s.expect("server"));
    assert_eq!(s.jid.expect("jid").to_string(), "compute-7@ctrl.example/r");
    assert_eq!(c.jid.expect("jid").to_string(), "compute-7@ctrl.example/r");
    let s2c = String::from_utf8(s2c).expect("utf8");
    assert!(!s2c.contains("mechanisms"), "no SASL without TLS: {s2c}");
}

#[test]
fn rfc_profile_bad_domain_is_host_unknown() {
    let mut s = profile_server(true);
    let e = s
        .feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='a b'>")
        .expect_err("bad to");
    assert_eq!(e.stream_condition(), Some(Condition::HostUnknown));
}

#[test]
fn plain_credentials_are_never_sent_outside_tls() {
    let mut c = rfc_login_client(
        false,
        vec![Credentials::Plain {
            authzid: None,
            username: "alice".into(),
            password: "secret".into(),
        }],
        None,
    );
    drain(|| c.poll_action());
    let e = c
        .feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' from='localhost' id='1' version='1.0'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>")
        .expect_err("refused");
    assert!(e.to_string().contains("PLAIN only inside TLS"), "{e}");
    let sent = drain(|| c.poll_action()).sent.concat();
    assert!(!String::from_utf8_lossy(&sent).contains("auth"));
}
