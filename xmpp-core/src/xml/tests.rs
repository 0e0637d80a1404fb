//! Unit tests of the XML layer: framing (every split of real transcripts), bounds,
//! restricted XML, well-formedness, the Contrail quirks, namespaces, the writer's exact
//! bytes, and (read-only) the stream elements built on top of it.

// A panic is how a test reports failure; `unwrap` on the value under test is the point.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;

use super::{
    Element, Event, Limits, Node, NsScope, Reader, Style, XmlWriter, escape_into, is_filler,
};
use crate::error::Error;
use crate::stanza::ns;
use crate::stream::{
    CONTRAIL_STREAM_ID, Condition, Dialect, Features, STREAM_CLOSE, StreamError, StreamHeader,
    TlsNonza,
};

// ---------------------------------------------------------------------------------------
// Transcripts (spec §3.1, §3.3, §6.2, §6.4, §6.6)
// ---------------------------------------------------------------------------------------

/// Agent header, spec §3.1: two spaces before `>`, `xmlns=""`, no trailing newline.
const CLIENT_HEADER: &[u8] = b"<stream:stream from=\"compute-1\" to=\"network-control@contrailsystems.com\" version=\"1.0\" xml:lang=\"en\" xmlns=\"\" xmlns:stream=\"http://etherx.jabber.org/streams\"  >";

/// Control node header, spec §3.1.
const SERVER_HEADER: &[u8] = b"<stream:stream from=\"ctrl-host-1\" to=\"compute-1\" id=\"++123\" version=\"1.0\" xml:lang=\"en\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\"  >";

/// Features with declaration, spec §3.3.
const CONTRAIL_FEATURES: &[u8] = b"<?xml version=\"1.0\"?>\n<stream:features>\n<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\">\n<required />\n</starttls>\n</stream:features>\n";

const KEEPALIVE: &[u8] = &[0xC8, 0x80];

/// Agent subscribe, spec §6.2, as C++ prints it: one element per line, no indentation.
const SUBSCRIBE_IQ: &str = "<iq type=\"set\" from=\"compute-1\" to=\"network-control@contrailsystems.com/bgp-peer\" id=\"subscribe4\">
<pubsub xmlns=\"http://jabber.org/protocol/pubsub\">
<subscribe node=\"default-domain:demo:net-a:net-a\">
<options>
<instance-id>7</instance-id>
</options>
</subscribe>
</pubsub>
</iq>
";

/// Publish + collection pair, spec §6.4.
const PUBLISH_PAIR: &str = r#"<iq type="set" from="compute-1" to="network-control@contrailsystems.com/bgp-peer" id="pubsub12">
<pubsub xmlns="http://jabber.org/protocol/pubsub">
<publish node="1/1/default-domain:demo:net-a:net-a/10.1.1.3/32">
<item>
<entry>
<nlri><af>1</af><safi>1</safi><address>10.1.1.3/32</address></nlri>
<next-hops>
<next-hop>
<af>1</af><address>192.168.0.11</address><mac>52:54:00:aa:bb:cc</mac><label>25</label><vni>0</vni>
<tunnel-encapsulation-list><tunnel-encapsulation>gre</tunnel-encapsulation><tunnel-encapsulation>udp</tunnel-encapsulation></tunnel-encapsulation-list>
<virtual-network>default-domain:demo:net-a</virtual-network>
<tag-list />
</next-hop>
</next-hops>
<version>1</version>
<virtual-network></virtual-network>
<mobility sticky="false" seqno="0" />
<sequence-number>3</sequence-number>
<security-group-list><security-group>8000002</security-group></security-group-list>
<community-tag-list />
<local-preference>200</local-preference>
<med>0</med>
<load-balance><load-balance-fields /><load-balance-decision>field-hash</load-balance-decision></load-balance>
<sub-protocol>interface</sub-protocol>
</entry>
</item>
</publish>
</pubsub>
</iq>
<iq type="set" from="compute-1" to="network-control@contrailsystems.com/bgp-peer" id="collection12">
<pubsub xmlns="http://jabber.org/protocol/pubsub">
<collection node="default-domain:demo:net-a:net-a">
<associate node="1/1/default-domain:demo:net-a:net-a/10.1.1.3/32" />
</collection>
</pubsub>
</iq>
"#;

/// Control route message, spec §6.6: tab-indented body (the pugixml Tabs layout), without
/// the leading and trailing `\n` the sender adds around it.
const ROUTE_MESSAGE_BODY: &str =
    "<message from=\"network-control@contrailsystems.com\" to=\"compute-1/bgp-peer\">
\t<event xmlns=\"http://jabber.org/protocol/pubsub\">
\t\t<items node=\"1/1/default-domain:demo:net-a:net-a\">
\t\t\t<item id=\"10.1.1.4/32\">
\t\t\t\t<entry>
\t\t\t\t\t<nlri>
\t\t\t\t\t\t<af>1</af>
\t\t\t\t\t\t<safi>1</safi>
\t\t\t\t\t\t<address>10.1.1.4/32</address>
\t\t\t\t\t</nlri>
\t\t\t\t\t<next-hops>
\t\t\t\t\t\t<next-hop>
\t\t\t\t\t\t\t<af>1</af>
\t\t\t\t\t\t\t<address>192.168.0.12</address>
\t\t\t\t\t\t\t<mac></mac>
\t\t\t\t\t\t\t<label>30</label>
\t\t\t\t\t\t\t<vni>0</vni>
\t\t\t\t\t\t\t<tunnel-encapsulation-list>
\t\t\t\t\t\t\t\t<tunnel-encapsulation>gre</tunnel-encapsulation>
\t\t\t\t\t\t\t</tunnel-encapsulation-list>
\t\t\t\t\t\t\t<virtual-network>default-domain:demo:net-a</virtual-network>
\t\t\t\t\t\t\t<tag-list />
\t\t\t\t\t\t</next-hop>
\t\t\t\t\t</next-hops>
\t\t\t\t\t<version>1</version>
\t\t\t\t\t<virtual-network>default-domain:demo:net-a</virtual-network>
\t\t\t\t\t<mobility seqno=\"0\" sticky=\"false\" />
\t\t\t\t\t<local-preference>100</local-preference>
\t\t\t\t</entry>
\t\t\t</item>
\t\t</items>
\t</event>
</message>
";

const RETRACT_MESSAGE_BODY: &str =
    "<message from=\"network-control@contrailsystems.com\" to=\"compute-1/bgp-peer\">
\t<event xmlns=\"http://jabber.org/protocol/pubsub\">
\t\t<items node=\"1/1/default-domain:demo:net-a:net-a\">
\t\t\t<retract id=\"10.1.1.4/32\" />
\t\t</items>
\t</event>
</message>
";

/// What the control node reads from an agent (plain mode, spec §3.2).
fn agent_to_control() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(CLIENT_HEADER);
    t.extend_from_slice(KEEPALIVE);
    t.extend_from_slice(SUBSCRIBE_IQ.as_bytes());
    t.extend_from_slice(PUBLISH_PAIR.as_bytes());
    t.extend_from_slice(KEEPALIVE);
    t.extend_from_slice(STREAM_CLOSE);
    t
}

/// What an agent reads from the control node: header, features (§3.3), keepalive, a route
/// and a retract message (§6.6, each with its leading and trailing `\n`), close.
fn control_to_agent() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(SERVER_HEADER);
    t.extend_from_slice(CONTRAIL_FEATURES);
    t.extend_from_slice(KEEPALIVE);
    for body in [ROUTE_MESSAGE_BODY, RETRACT_MESSAGE_BODY] {
        t.push(b'\n');
        t.extend_from_slice(body.as_bytes());
    }
    t.extend_from_slice(KEEPALIVE);
    t.extend_from_slice(STREAM_CLOSE);
    t
}

/// An RFC 6120 client, as `openssl s_client -starttls xmpp` talks: single quotes, no
/// `from`, a declaration in front of the header.
const RFC_TRANSCRIPT: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to='example.com' version='1.0'> <iq type='get' id='ping1' to='example.com'><ping xmlns='urn:xmpp:ping'/></iq>\n<message to='juliet@example.com' type='chat'><body>hi &amp; &lt;bye&gt;</body></message> </stream:stream>";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn drain(r: &mut Reader, out: &mut Vec<Event>) -> Result<(), Error> {
    while let Some(ev) = r.next_event()? {
        out.push(ev);
    }
    Ok(())
}

fn read_chunks<'a>(
    limits: Limits,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Event>, Error> {
    let mut r = Reader::new(limits);
    let mut out = Vec::new();
    for c in chunks {
        r.feed(c);
        drain(&mut r, &mut out)?;
    }
    Ok(out)
}

fn read_all(input: &[u8]) -> Result<Vec<Event>, Error> {
    read_chunks(Limits::default(), [input])
}

/// Adjacent filler runs merged: a keepalive split by TCP is reported per piece (the hold
/// timer must be reset as soon as any byte arrives), so only the total per gap is
/// independent of the split.
fn merge_ws(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    for ev in events {
        if let (Event::Whitespace(n), Some(Event::Whitespace(m))) = (&ev, out.last_mut()) {
            *m += n;
            continue;
        }
        out.push(ev);
    }
    out
}

/// Feeds `input` whole, in two chunks at every split point, and one byte at a time; the
/// events must be the same every way. Returns them.
fn assert_split_invariant(input: &[u8]) -> Vec<Event> {
    let whole = read_all(input).expect("whole input");
    let merged = merge_ws(whole.clone());
    for i in 0..=input.len() {
        let split = read_chunks(Limits::default(), [&input[..i], &input[i..]])
            .unwrap_or_else(|e| panic!("split at {i}: {e}"));
        assert_eq!(merge_ws(split), merged, "split at {i}");
    }
    let bytewise = read_chunks(Limits::default(), input.chunks(1)).expect("one byte at a time");
    assert_eq!(merge_ws(bytewise), merged, "one byte at a time");
    whole
}

/// The error for `input` fed whole, and the same condition at every split point.
fn assert_error_all_splits(limits: Limits, input: &[u8]) -> Condition {
    let whole = read_chunks(limits, [input]).expect_err("must fail fed whole");
    let cond = whole.stream_condition().expect("a stream condition");
    for i in 0..=input.len() {
        let e = read_chunks(limits, [&input[..i], &input[i..]])
            .expect_err(&format!("must fail split at {i}"));
        assert_eq!(e.stream_condition(), Some(cond), "split at {i}: {e}");
    }
    let e = read_chunks(limits, input.chunks(1)).expect_err("must fail byte by byte");
    assert_eq!(e.stream_condition(), Some(cond), "byte by byte: {e}");
    cond
}

/// A reader that has consumed `header`.
fn opened(limits: Limits, header: &[u8]) -> Reader {
    let mut r = Reader::new(limits);
    r.feed(header);
    match r.next_event() {
        Ok(Some(Event::StreamOpen(_))) => {}
        other => panic!("expected the header, got {other:?}"),
    }
    assert_eq!(r.buffered(), 0);
    r
}

/// Events after the (server) header for `body`, fed whole.
fn after_header(body: &[u8]) -> Result<Vec<Event>, Error> {
    let mut r = opened(Limits::default(), SERVER_HEADER);
    r.feed(body);
    let mut out = Vec::new();
    drain(&mut r, &mut out)?;
    Ok(out)
}

/// The condition of the error for `body` after the header, at every split of the body.
fn body_error(body: &[u8]) -> Condition {
    let mut input = SERVER_HEADER.to_vec();
    input.extend_from_slice(body);
    assert_error_all_splits(Limits::default(), &input)
}

fn element(ev: &Event) -> &Element {
    match ev {
        Event::Element(e) => e,
        other => panic!("expected an element, got {other:?}"),
    }
}

fn only_element(events: &[Event]) -> &Element {
    let els: Vec<&Element> = events
        .iter()
        .filter_map(|e| match e {
            Event::Element(el) => Some(el),
            _ => None,
        })
        .collect();
    assert_eq!(els.len(), 1, "{events:?}");
    els[0]
}

fn write(el: &Element, style: Style) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut w = XmlWriter::new(&mut out, style);
    el.write(&mut w);
    assert_eq!(w.depth(), 0);
    out.to_vec()
}

fn escaped(text: &str, attr: bool) -> String {
    let mut out = BytesMut::new();
    escape_into(&mut out, text, attr);
    String::from_utf8(out.to_vec()).expect("escaped output is UTF-8")
}

fn stream_scope(default_ns: &str) -> NsScope {
    NsScope {
        default: default_ns.into(),
        prefixes: vec![("stream".to_owned(), ns::STREAM.into())],
    }
}

fn text(s: &str) -> String {
    s.to_owned()
}

// ---------------------------------------------------------------------------------------
// Transcripts at every split
// ---------------------------------------------------------------------------------------

#[test]
fn contrail_agent_transcript_every_split() {
    let events = assert_split_invariant(&agent_to_control());
    let merged = merge_ws(events.clone());
    assert_eq!(merged.len(), 9, "{merged:?}");

    let Event::StreamOpen(h) = &merged[0] else {
        panic!("{:?}", merged[0])
    };
    assert_eq!(h.name(), "stream:stream");
    assert_eq!(h.ns(), ns::STREAM);
    assert_eq!(h.get_attr("from"), Some("compute-1"));
    assert_eq!(h.get_attr("xmlns"), Some(""));
    assert_eq!(h.get_attr("xml:lang"), Some("en"));
    assert!(h.nodes().is_empty());
    assert_eq!(merged[1], Event::Whitespace(2));

    let sub = element(&merged[2]);
    assert_eq!(sub.name(), "iq");
    assert_eq!(
        sub.ns(),
        "",
        "the agent stream's default namespace is empty"
    );
    assert_eq!(sub.get_attr("id"), Some("subscribe4"));
    let pubsub = sub.get_child("pubsub").expect("pubsub");
    assert_eq!(pubsub.ns(), ns::PUBSUB);
    let subscribe = pubsub.get_child("subscribe").expect("subscribe");
    assert_eq!(subscribe.ns(), ns::PUBSUB, "inherited from <pubsub>");
    assert_eq!(
        subscribe.get_attr("node"),
        Some("default-domain:demo:net-a:net-a")
    );
    assert_eq!(
        sub.find_descendant("instance-id")
            .map(|e| e.text().into_owned()),
        Some(text("7"))
    );
    assert_eq!(merged[3], Event::Whitespace(1));

    let publish = element(&merged[4]);
    assert_eq!(publish.get_attr("id"), Some("pubsub12"));
    let entry = publish.find_descendant("entry").expect("entry");
    assert_eq!(
        entry
            .get_child("nlri")
            .and_then(|n| n.child_text("address"))
            .as_deref(),
        Some("10.1.1.3/32")
    );
    assert_eq!(entry.child_text("virtual-network").as_deref(), Some(""));
    assert_eq!(
        entry
            .get_child("mobility")
            .and_then(|m| m.get_attr("seqno")),
        Some("0")
    );
    let encaps: Vec<String> = publish
        .find_descendant("tunnel-encapsulation-list")
        .expect("encaps")
        .children()
        .map(|c| c.text().into_owned())
        .collect();
    assert_eq!(encaps, ["gre", "udp"]);
    assert_eq!(merged[5], Event::Whitespace(1));

    let collection = element(&merged[6]);
    assert_eq!(collection.get_attr("id"), Some("collection12"));
    assert_eq!(
        collection
            .find_descendant("associate")
            .and_then(|a| a.get_attr("node")),
        Some("1/1/default-domain:demo:net-a:net-a/10.1.1.3/32")
    );
    // The trailing "\n" of the collection and the keepalive form one filler run.
    assert_eq!(merged[7], Event::Whitespace(3));
    assert_eq!(merged[8], Event::StreamClose);
}

#[test]
fn contrail_control_transcript_every_split() {
    let events = assert_split_invariant(&control_to_agent());
    let merged = merge_ws(events);
    // header, features (the "\n" after its declaration is part of it, not a keepalive:
    // a client waiting for features must not take it for one), "\n" C8 80 "\n", route,
    // "\n" "\n", retract, "\n" C8 80, close
    assert_eq!(merged.len(), 8, "{merged:?}");
    let Event::StreamOpen(h) = &merged[0] else {
        panic!("{:?}", merged[0])
    };
    assert_eq!(h.get_attr("id"), Some(CONTRAIL_STREAM_ID));
    assert_eq!(h.get_attr("xmlns"), Some(ns::CLIENT));

    let features = element(&merged[1]);
    assert!(Features::matches(features));
    let starttls = features.get_child("starttls").expect("starttls");
    assert_eq!(starttls.ns(), ns::TLS);
    assert!(starttls.get_child("required").is_some());
    assert_eq!(merged[2], Event::Whitespace(4));

    let route = element(&merged[3]);
    assert_eq!(route.name(), "message");
    assert_eq!(route.ns(), ns::CLIENT);
    assert_eq!(route.get_attr("to"), Some("compute-1/bgp-peer"));
    let event = route.get_child("event").expect("event");
    assert_eq!(event.ns(), ns::PUBSUB);
    let item = route.find_descendant("item").expect("item");
    assert_eq!(item.get_attr("id"), Some("10.1.1.4/32"));
    assert_eq!(item.ns(), ns::PUBSUB);
    assert_eq!(
        route
            .find_descendant("next-hop")
            .and_then(|n| n.child_text("address"))
            .as_deref(),
        Some("192.168.0.12"),
        "text values are verbatim, without the indentation around them"
    );
    assert_eq!(merged[4], Event::Whitespace(2));

    let retract = element(&merged[5]);
    assert_eq!(
        retract
            .find_descendant("retract")
            .and_then(|r| r.get_attr("id")),
        Some("10.1.1.4/32")
    );
    assert_eq!(merged[6], Event::Whitespace(3));
    assert_eq!(merged[7], Event::StreamClose);
}

#[test]
fn rfc_transcript_every_split() {
    let events = assert_split_invariant(RFC_TRANSCRIPT);
    let merged = merge_ws(events);
    assert_eq!(merged.len(), 7, "{merged:?}");
    let Event::StreamOpen(h) = &merged[0] else {
        panic!("{:?}", merged[0])
    };
    assert_eq!(h.get_attr("from"), None);
    assert_eq!(h.get_attr("to"), Some("example.com"));
    assert_eq!(
        StreamHeader::from_element(h).expect("header").dialect(),
        Dialect::Rfc
    );
    assert_eq!(merged[1], Event::Whitespace(1));
    let iq = element(&merged[2]);
    assert!(iq.is("iq", ns::CLIENT));
    let ping = iq.get_child("ping").expect("self-closing child");
    assert!(ping.is("ping", ns::PING));
    assert!(ping.nodes().is_empty());
    assert_eq!(merged[3], Event::Whitespace(1));
    let msg = element(&merged[4]);
    assert_eq!(msg.child_text("body").as_deref(), Some("hi & <bye>"));
    assert_eq!(merged[5], Event::Whitespace(1));
    assert_eq!(merged[6], Event::StreamClose);
}

#[test]
fn events_after_close_are_none() {
    let mut input = SERVER_HEADER.to_vec();
    input.extend_from_slice(b"</stream:stream >");
    let mut r = Reader::default();
    r.feed(&input);
    assert!(matches!(r.next_event(), Ok(Some(Event::StreamOpen(_)))));
    assert_eq!(r.next_event().unwrap(), Some(Event::StreamClose));
    assert!(r.is_closed());
    r.feed(b"<iq>");
    assert_eq!(r.next_event().unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// Bounds
// ---------------------------------------------------------------------------------------

fn expect_policy(res: Result<Option<Event>, Error>) {
    match res {
        Err(e @ Error::PolicyViolation(_)) => {
            assert_eq!(e.stream_condition(), Some(Condition::PolicyViolation));
        }
        other => panic!("expected a policy violation, got {other:?}"),
    }
}

#[test]
fn element_exactly_at_limit_passes() {
    let limits = Limits {
        max_element_bytes: 100,
        ..Limits::default()
    };
    let stanza = format!("<iq>{}</iq>", "x".repeat(91));
    assert_eq!(stanza.len(), 100);
    // Whole, with filler around it (filler is not part of the element).
    let mut r = opened(limits, SERVER_HEADER);
    r.feed(b"\n\n");
    r.feed(stanza.as_bytes());
    r.feed(b"\n");
    let mut out = Vec::new();
    drain(&mut r, &mut out).expect("at the limit");
    assert_eq!(merge_ws(out.clone()).len(), 3, "{out:?}");
    // One byte at a time.
    let mut r = opened(limits, SERVER_HEADER);
    let mut out = Vec::new();
    for b in stanza.as_bytes() {
        r.feed(std::slice::from_ref(b));
        drain(&mut r, &mut out).expect("at the limit, byte by byte");
    }
    assert_eq!(element(&out[0]).text(), "x".repeat(91));
}

#[test]
fn element_over_limit_detected_while_arriving() {
    let limits = Limits {
        max_element_bytes: 100,
        ..Limits::default()
    };
    let mut r = opened(limits, SERVER_HEADER);
    r.feed(b"<iq>");
    r.feed("x".repeat(96).as_bytes());
    assert_eq!(r.buffered(), 100);
    assert_eq!(r.next_event().unwrap(), None);
    r.feed(b"x");
    expect_policy(r.next_event());

    // Byte by byte, inside a start tag this time: fails on exactly the 101st byte.
    let stanza = format!("<iq id='{}'>", "y".repeat(200));
    let mut r = opened(limits, SERVER_HEADER);
    for (i, b) in stanza.as_bytes().iter().enumerate() {
        r.feed(std::slice::from_ref(b));
        let res = r.next_event();
        if i < 100 {
            assert_eq!(res.unwrap(), None, "byte {i}");
        } else {
            expect_policy(res);
            break;
        }
    }

    // Complete in one read, one byte over.
    let mut r = opened(limits, SERVER_HEADER);
    r.feed(format!("<iq>{}</iq>", "x".repeat(92)).as_bytes());
    expect_policy(r.next_event());
}

#[test]
fn depth_limit() {
    let limits = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    // Exactly at the limit.
    let mut r = opened(limits, SERVER_HEADER);
    r.feed(b"<a><b><c>t</c><c/></b></a>");
    assert_eq!(element(&r.next_event().unwrap().unwrap()).name(), "a");

    // One deeper, detected at the start tag, before anything closes.
    let mut r = opened(limits, SERVER_HEADER);
    r.feed(b"<a><b><c><d");
    assert_eq!(r.next_event().unwrap(), None);
    r.feed(b">");
    expect_policy(r.next_event());

    // A self-closing element is as deep as any other.
    let mut r = opened(limits, SERVER_HEADER);
    r.feed(b"<a><b><c><d/></c></b></a>");
    expect_policy(r.next_event());

    // The limit applies per stanza, not to the stream.
    let mut r = opened(limits, SERVER_HEADER);
    r.feed(b"<a><b><c/></b></a><a><b><c/></b></a>");
    let mut out = Vec::new();
    drain(&mut r, &mut out).expect("two stanzas at the limit");
    assert_eq!(out.len(), 2);
}

#[test]
fn header_limit() {
    let exact = Limits {
        max_header_bytes: SERVER_HEADER.len(),
        ..Limits::default()
    };
    let out = read_chunks(exact, SERVER_HEADER.chunks(1)).expect("header at the limit");
    assert!(matches!(out[..], [Event::StreamOpen(_)]));

    let short = Limits {
        max_header_bytes: SERVER_HEADER.len() - 1,
        ..Limits::default()
    };
    let mut r = Reader::new(short);
    r.feed(SERVER_HEADER);
    expect_policy(r.next_event());

    // The declaration in front counts with the header.
    let decl = b"<?xml version=\"1.0\"?>";
    let with_decl = [&decl[..], CLIENT_HEADER].concat();
    let exact = Limits {
        max_header_bytes: with_decl.len(),
        ..Limits::default()
    };
    let out = read_chunks(exact, with_decl.chunks(7)).expect("decl + header at the limit");
    assert!(matches!(out[..], [Event::StreamOpen(_)]));
    let short = Limits {
        max_header_bytes: with_decl.len() - 1,
        ..Limits::default()
    };
    let mut r = Reader::new(short);
    r.feed(&with_decl);
    expect_policy(r.next_event());
}

#[test]
fn header_garbage_without_gt_detected_while_arriving() {
    let limits = Limits {
        max_header_bytes: 64,
        ..Limits::default()
    };
    for (start, fill) in [
        (&b"<stream:stream "[..], b'a'),
        (&b"<stream:stream a='"[..], b'>'),
    ] {
        let mut r = Reader::new(limits);
        r.feed(start);
        let mut fed = start.len();
        loop {
            let res = r.next_event();
            if fed <= 64 {
                assert_eq!(res.unwrap(), None, "at {fed} bytes");
            } else {
                expect_policy(res);
                break;
            }
            r.feed(&[fill]);
            fed += 1;
        }
    }
    // Unterminated declaration before the header.
    let mut r = Reader::new(limits);
    r.feed(b"<?xml version='1.0' ");
    r.feed(&[b' '; 44]);
    assert_eq!(r.next_event().unwrap(), None);
    r.feed(b" ");
    expect_policy(r.next_event());
}

#[test]
fn unterminated_pi_and_end_tag_bounded_by_element_limit() {
    let limits = Limits {
        max_element_bytes: 64,
        ..Limits::default()
    };
    for start in [&b"<?xml "[..], &b"</stream:stream"[..]] {
        let mut r = opened(limits, SERVER_HEADER);
        r.feed(start);
        r.feed(&vec![b' '; 64 - start.len()]);
        assert_eq!(r.next_event().unwrap(), None);
        r.feed(b" ");
        expect_policy(r.next_event());
    }
}

// ---------------------------------------------------------------------------------------
// Restricted XML
// ---------------------------------------------------------------------------------------

#[test]
fn restricted_doctype_before_header() {
    let input = [&b"<!DOCTYPE stream:stream>"[..], SERVER_HEADER].concat();
    assert_eq!(
        assert_error_all_splits(Limits::default(), &input),
        Condition::RestrictedXml
    );
    let input = [
        &b"<?xml version='1.0'?>\n<!DOCTYPE x [<!ENTITY a 'b'>]>"[..],
        SERVER_HEADER,
    ]
    .concat();
    assert_eq!(
        assert_error_all_splits(Limits::default(), &input),
        Condition::RestrictedXml
    );
}

#[test]
fn restricted_comments() {
    assert_eq!(
        body_error(b"<iq/><!-- between --><iq/>"),
        Condition::RestrictedXml
    );
    assert_eq!(
        body_error(b"<iq><!-- inside --></iq>"),
        Condition::RestrictedXml
    );
    assert_eq!(
        body_error(b"<iq><a><!----></a></iq>"),
        Condition::RestrictedXml
    );
    // Detected at once, not when the stanza ends.
    let mut r = opened(Limits::default(), SERVER_HEADER);
    r.feed(b"<iq><!--");
    assert!(matches!(r.next_event(), Err(Error::RestrictedXml(_))));
}

#[test]
fn restricted_processing_instructions() {
    assert_eq!(
        body_error(b"<iq><?foo bar?></iq>"),
        Condition::RestrictedXml
    );
    assert_eq!(body_error(b"<?foo bar?><iq/>"), Condition::RestrictedXml);
    assert_eq!(
        body_error(b"<?xml-stylesheet href='a'?><iq/>"),
        Condition::RestrictedXml
    );
    assert_eq!(
        body_error(b"<?XML version='1.0'?>"),
        Condition::RestrictedXml
    );
    // Refused as soon as the target shows it is not a declaration.
    let mut r = opened(Limits::default(), SERVER_HEADER);
    r.feed(b"<?foo");
    assert!(matches!(r.next_event(), Err(Error::RestrictedXml(_))));
    // A PI before the header.
    let input = [&b"<?foo?>"[..], SERVER_HEADER].concat();
    assert_eq!(
        assert_error_all_splits(Limits::default(), &input),
        Condition::RestrictedXml
    );
}

#[test]
fn restricted_entities() {
    assert_eq!(body_error(b"<iq>&foo;</iq>"), Condition::RestrictedXml);
    assert_eq!(body_error(b"<iq a='&foo;'/>"), Condition::RestrictedXml);
    assert_eq!(
        body_error(b"<iq><b c='x&foo;y'/></iq>"),
        Condition::RestrictedXml
    );
    assert_eq!(
        body_error(b"<iq><![CDATA[x]]><!ENTITY a 'b'></iq>"),
        Condition::RestrictedXml
    );
}

#[test]
fn predefined_entities_and_char_refs_expanded() {
    let out = after_header(
        b"<iq a='&lt;&gt;&amp;&quot;&apos;&#65;&#x41;'>&lt;&gt;&amp;&quot;&apos;&#65;&#x41;&#x20AC;</iq>",
    )
    .expect("predefined entities");
    let iq = only_element(&out);
    assert_eq!(iq.get_attr("a"), Some("<>&\"'AA"));
    assert_eq!(iq.text(), "<>&\"'AA\u{20AC}");
    assert_eq!(iq.nodes().len(), 1, "adjacent text is one node");
}

#[test]
fn char_ref_to_non_xml_char_rejected() {
    assert_eq!(body_error(b"<iq>&#1;</iq>"), Condition::NotWellFormed);
    assert_eq!(body_error(b"<iq>&#xFFFE;</iq>"), Condition::NotWellFormed);
}

// ---------------------------------------------------------------------------------------
// Not well-formed
// ---------------------------------------------------------------------------------------

#[test]
fn not_well_formed() {
    for body in [
        &b"<a><b></a></b>"[..],
        b"<a></b>",
        b"hello",
        b"<iq/>hello",
        b"<iq a='x<y'/>",
        b"<iq a=\"x<y\">t</iq>",
        b"<foo:bar/>",
        b"<iq><x:y/></iq>",
        b"<iq>\xff\xfe</iq>",
        b"<iq a='\xc3\x28'/>",
        b"<i\xffq/>",
        b"</foo>",
        b"<iq/></iq>",
        b"<iq a='1' a='2'/>",
        b"<iq a=1/>",
        b"<iq>a & b</iq>",
        b"<iq a='a & b'/>",
        b"<iq>]]></iq>",
        // Characters XML 1.0 does not allow, literal or referenced.
        b"<iq>\x01</iq>",
        b"<iq a='\x1f'/>",
        b"<iq a='&#1;'/>",
        b"<iq a='&#x0B;'/>",
        b"<iq>\xef\xbf\xbf</iq>",
        b"<iq a='&#xFFFE;'/>",
        b"<iq><![CDATA[\x02]]></iq>",
        // Names and namespace declarations.
        b"<1iq/>",
        b"<iq\x01/>",
        b"<iq a\x01='1'/>",
        b"<a:b:c xmlns:a='urn:a'/>",
        b"<iq xmlns:p=''/>",
        b"<iq p:a='1'/>",
        b"<iq><x p:a='1'/></iq>",
    ] {
        let mut input = SERVER_HEADER.to_vec();
        input.extend_from_slice(body);
        let cond = assert_error_all_splits(Limits::default(), &input);
        assert_eq!(
            cond,
            Condition::NotWellFormed,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn stray_end_tag_before_header() {
    assert_eq!(
        assert_error_all_splits(Limits::default(), b"</stream:stream>"),
        Condition::NotWellFormed
    );
    assert_eq!(
        assert_error_all_splits(Limits::default(), b"junk<stream:stream>"),
        Condition::NotWellFormed
    );
}

#[test]
fn header_must_be_a_stream_header() {
    let mut r = Reader::default();
    r.feed(b"<iq xmlns='jabber:client'>");
    let e = r.next_event().unwrap_err();
    assert_eq!(e.stream_condition(), Some(Condition::InvalidNamespace));
    let mut r = Reader::default();
    r.feed(b"<stream:stream xmlns:stream='urn:wrong'>");
    assert!(matches!(r.next_event(), Err(Error::InvalidNamespace(_))));
}

// ---------------------------------------------------------------------------------------
// Contrail quirks (spec §2.2, §11)
// ---------------------------------------------------------------------------------------

#[test]
fn filler_set() {
    for b in [0x20, 0x0A, 0x0D, 0x09, 0xC8, 0x80] {
        assert!(is_filler(b), "{b:#x}");
    }
    for b in [b'<', b'a', 0x00, 0xC9, 0x81, 0x0B, 0x0C] {
        assert!(!is_filler(b), "{b:#x}");
    }
}

#[test]
fn keepalives_between_elements() {
    let out = after_header(b"\xC8\x80<iq/>\x20\x0A\x0D\x09<iq/>\xC8\x80\xC8\x80").unwrap();
    assert_eq!(out.len(), 5, "{out:?}");
    assert_eq!(out[0], Event::Whitespace(2));
    assert_eq!(element(&out[1]).name(), "iq");
    assert_eq!(out[2], Event::Whitespace(4));
    assert_eq!(out[4], Event::Whitespace(4));
    // Before the header too (a peer may send keepalives early).
    let input = [&b"\xC8\x80\n"[..], CLIENT_HEADER].concat();
    let out = read_all(&input).unwrap();
    assert_eq!(out[0], Event::Whitespace(3));
    assert!(matches!(out[1], Event::StreamOpen(_)));
}

#[test]
fn mid_stream_declaration_accepted() {
    let body = b"<?xml version=\"1.0\"?>\n<iq type=\"set\"><config/></iq><?xml version='1.0' encoding='UTF-8'?><message/>";
    let mut input = SERVER_HEADER.to_vec();
    input.extend_from_slice(body);
    let events = merge_ws(assert_split_invariant(&input));
    // The filler after a declaration is the declaration's newline, not a keepalive.
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(element(&events[1]).name(), "iq");
    assert_eq!(element(&events[2]).name(), "message");

    // Only directly after it: filler after the stanza is a keepalive again.
    let out = after_header(b"<?xml version=\"1.0\"?>\n \n<iq/>\n\xC8\x80").unwrap();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1], Event::Whitespace(3));
    // A client waiting for features sees them first (spec §3.3 bytes), at every split.
    let input = [SERVER_HEADER, CONTRAIL_FEATURES].concat();
    let events = merge_ws(assert_split_invariant(&input));
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(Features::matches(element(&events[1])));
    assert_eq!(events[2], Event::Whitespace(1));
}

#[test]
fn header_with_empty_xmlns() {
    let mut r = opened(Limits::default(), CLIENT_HEADER);
    assert_eq!(&*r.scope().default, "");
    r.feed(b"<iq><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>");
    let iq = element(&r.next_event().unwrap().unwrap()).clone();
    assert_eq!(iq.ns(), "");
    assert_eq!(iq.get_child("pubsub").unwrap().ns(), ns::PUBSUB);
}

#[test]
fn header_with_subcluster_xmlns() {
    let header = b"<stream:stream from=\"compute-1\" to=\"network-control@contrailsystems.com\" version=\"1.0\" xml:lang=\"en\" xmlns=\"sub-cluster-7\" xmlns:stream=\"http://etherx.jabber.org/streams\"  >";
    let mut r = Reader::default();
    r.feed(header);
    let Some(Event::StreamOpen(h)) = r.next_event().unwrap() else {
        panic!("no header")
    };
    let parsed = StreamHeader::from_element(&h).unwrap();
    assert_eq!(parsed.default_ns.as_deref(), Some("sub-cluster-7"));
    assert_eq!(parsed.dialect(), Dialect::Contrail);
    r.feed(b"<iq/>");
    assert_eq!(
        element(&r.next_event().unwrap().unwrap()).ns(),
        "sub-cluster-7"
    );
}

#[test]
fn gt_inside_attribute_values() {
    let header = b"<stream:stream from='a>b' to=\"c>'d\" xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut input = header.to_vec();
    input.extend_from_slice(b"<iq to='x>y' id=\"a/>\"><b c='>' d=\"/>\"/></iq>");
    let events = assert_split_invariant(&input);
    let Event::StreamOpen(h) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(h.get_attr("from"), Some("a>b"));
    assert_eq!(h.get_attr("to"), Some("c>'d"));
    let iq = element(&events[1]);
    assert_eq!(iq.get_attr("to"), Some("x>y"));
    assert_eq!(iq.get_attr("id"), Some("a/>"));
    let b = iq.get_child("b").unwrap();
    assert_eq!(b.get_attr("c"), Some(">"));
    assert_eq!(b.get_attr("d"), Some("/>"));
}

#[test]
fn cdata_with_lt_and_brackets_across_chunks() {
    let body = b"<iq><a><![CDATA[x < y ]] z ]]]]><![CDATA[</iq>]]>&lt;<b/></a></iq>";
    let mut input = SERVER_HEADER.to_vec();
    input.extend_from_slice(body);
    let events = assert_split_invariant(&input);
    assert_eq!(events.len(), 2, "{events:?}");
    let a = element(&events[1]).get_child("a").unwrap();
    assert_eq!(a.text(), "x < y ]] z ]]</iq><");
    assert!(a.get_child("b").is_some());
}

#[test]
fn self_closing_header_rejected() {
    let mut r = Reader::default();
    r.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'/>",
    );
    let e = r.next_event().unwrap_err();
    assert!(matches!(e, Error::BadFormat(_)), "{e}");
    assert_eq!(e.stream_condition(), Some(Condition::BadFormat));
}

// ---------------------------------------------------------------------------------------
// Restart and TLS handover
// ---------------------------------------------------------------------------------------

#[test]
fn restart_keeps_buffered_bytes_and_expects_a_header() {
    let mut input = SERVER_HEADER.to_vec();
    input.extend_from_slice(
        b"<?xml version=\"1.0\"?>\n<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" />",
    );
    let second = b"<stream:stream from=\"ctrl-host-2\" to=\"compute-1\" id=\"++123\" version=\"1.0\" xml:lang=\"en\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\"  ><iq/>";
    input.extend_from_slice(second);
    let mut r = Reader::default();
    r.feed(&input);
    assert!(matches!(r.next_event(), Ok(Some(Event::StreamOpen(_)))));
    let proceed = r.next_event().unwrap().unwrap();
    assert_eq!(
        TlsNonza::from_element(element(&proceed)),
        Some(TlsNonza::Proceed)
    );
    assert_eq!(r.buffered(), second.len());

    r.restart();
    assert_eq!(r.buffered(), second.len(), "restart keeps the buffer");
    assert_eq!(r.scope(), &NsScope::default());
    let Some(Event::StreamOpen(h)) = r.next_event().unwrap() else {
        panic!("a new header is expected after restart")
    };
    assert_eq!(h.get_attr("from"), Some("ctrl-host-2"));
    assert!(element(&r.next_event().unwrap().unwrap()).is("iq", ns::CLIENT));

    // Without the restart the second header is just an element that never ends.
    let mut r = Reader::default();
    r.feed(&input);
    let mut out = Vec::new();
    drain(&mut r, &mut out).unwrap();
    assert_eq!(out.len(), 2, "{out:?}");
}

#[test]
fn restart_after_close() {
    let mut r = opened(Limits::default(), SERVER_HEADER);
    r.feed(b"</stream:stream>");
    assert_eq!(r.next_event().unwrap(), Some(Event::StreamClose));
    r.restart();
    assert!(!r.is_closed());
    r.feed(CLIENT_HEADER);
    assert!(matches!(r.next_event(), Ok(Some(Event::StreamOpen(_)))));
}

#[test]
fn take_buffered_returns_what_follows_proceed() {
    let tls_hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03<!--";
    let mut input = SERVER_HEADER.to_vec();
    input.extend_from_slice(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\n");
    input.extend_from_slice(tls_hello);
    for i in 0..=input.len() {
        let mut r = Reader::default();
        let mut out = Vec::new();
        let mut fed = 0;
        // Feed until the proceed is seen, as a negotiator would.
        for chunk in [&input[..i], &input[i..]] {
            r.feed(chunk);
            fed += chunk.len();
            while let Some(ev) = r.next_event().unwrap() {
                let stop = matches!(&ev, Event::Element(_));
                out.push(ev);
                if stop {
                    break;
                }
            }
            if matches!(out.last(), Some(Event::Element(_))) {
                break;
            }
        }
        assert!(matches!(out.last(), Some(Event::Element(e)) if e.local_name() == "proceed"));
        let rest = r.take_buffered();
        let expected = &input[input.len() - tls_hello.len() - 1..fed];
        assert_eq!(&rest[..], expected, "split at {i}");
        assert_eq!(r.buffered(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------

#[test]
fn namespaces() {
    let out = after_header(
        b"<iq><query xmlns='jabber:iq:roster'><item/></query><after/></iq>\
          <stream:features><x:y xmlns:x='urn:x'><x:z/><w/></x:y></stream:features>\
          <stream:error><bad-format xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    )
    .unwrap();
    assert_eq!(out.len(), 3);
    let iq = element(&out[0]);
    assert!(
        iq.is("iq", ns::CLIENT),
        "stanzas inherit the stream namespace"
    );
    let query = iq.get_child("query").unwrap();
    assert!(query.is("query", "jabber:iq:roster"));
    assert!(
        query
            .get_child("item")
            .unwrap()
            .is("item", "jabber:iq:roster")
    );
    assert!(
        iq.get_child("after").unwrap().is("after", ns::CLIENT),
        "a sibling is back in the parent's namespace"
    );
    assert!(iq.get_child_ns("query", ns::CLIENT).is_none());

    let features = element(&out[1]);
    assert!(features.is("features", ns::STREAM));
    assert_eq!(features.prefix(), Some("stream"));
    let y = features.get_child("y").unwrap();
    assert!(y.is("y", "urn:x"));
    assert!(y.get_child("z").unwrap().is("z", "urn:x"));
    assert!(y.get_child("w").unwrap().is("w", ns::CLIENT));

    let err = element(&out[2]);
    assert!(StreamError::matches(err));
    assert_eq!(
        StreamError::from_element(err).condition,
        Condition::BadFormat
    );
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

fn nested() -> Element {
    Element::new("a")
        .child(Element::new("b").text_node("text"))
        .child(Element::new("c"))
}

#[test]
fn writer_lines_is_pugixml_indent_without_indent_string() {
    assert_eq!(
        String::from_utf8(write(&nested(), Style::Lines)).unwrap(),
        "<a>\n<b>text</b>\n<c />\n</a>\n"
    );
    let mut out = BytesMut::new();
    let mut w = XmlWriter::new(&mut out, Style::Lines);
    w.start("a");
    w.attr("k", "v");
    w.text_element("b", "text");
    w.text_element("e", "");
    w.int_element("n", 18_446_744_073_709_551_615);
    w.int_element("z", 0);
    w.start("c");
    w.end();
    w.end();
    assert_eq!(
        &out[..],
        &b"<a k=\"v\">\n<b>text</b>\n<e></e>\n<n>18446744073709551615</n>\n<z>0</z>\n<c />\n</a>\n"
            [..]
    );
}

#[test]
fn writer_tabs_is_pugixml_indent_with_tabs() {
    let el = Element::new("a").child(Element::new("b").child(Element::new("c")));
    assert_eq!(
        String::from_utf8(write(&el, Style::Tabs)).unwrap(),
        "<a>\n\t<b>\n\t\t<c />\n\t</b>\n</a>\n"
    );
    assert_eq!(
        String::from_utf8(write(&nested(), Style::Tabs)).unwrap(),
        "<a>\n\t<b>text</b>\n\t<c />\n</a>\n"
    );
}

#[test]
fn writer_compact() {
    let el = Element::new("a")
        .child(Element::new("b").text_node("t"))
        .child(Element::new("c"));
    assert_eq!(write(&el, Style::Compact), b"<a><b>t</b><c/></a>");
    assert_eq!(write(&Element::new("e"), Style::Compact), b"<e/>");
    assert_eq!(
        write(&Element::new("e").text_node(""), Style::Compact),
        b"<e></e>"
    );
}

#[test]
fn writer_reproduces_the_control_route_message() {
    // Parse the C++ bytes, write them back in the Tabs layout: byte for byte the same.
    // Only `<mac></mac>` comes back as `<mac />`: XML does not tell them apart, and
    // neither do the C++ receivers.
    for body in [ROUTE_MESSAGE_BODY, RETRACT_MESSAGE_BODY] {
        let el = Element::parse(body.as_bytes(), &stream_scope(ns::CLIENT)).unwrap();
        assert_eq!(
            String::from_utf8(write(&el, Style::Tabs)).unwrap(),
            body.replace("<mac></mac>", "<mac />")
        );
    }
    // A built element with an empty text node is written the generated encoders' way.
    let el = Element::new("next-hop")
        .child(Element::new("mac").text_node(""))
        .child(Element::new("tag-list").text_node(" \n\t"));
    for (style, expected) in [
        (
            Style::Tabs,
            "<next-hop>\n\t<mac></mac>\n\t<tag-list />\n</next-hop>\n",
        ),
        (
            Style::Lines,
            "<next-hop>\n<mac></mac>\n<tag-list />\n</next-hop>\n",
        ),
        (
            Style::Compact,
            "<next-hop><mac></mac><tag-list> \n\t</tag-list></next-hop>",
        ),
    ] {
        assert_eq!(String::from_utf8(write(&el, style)).unwrap(), expected);
    }
    // And the agent's subscribe in the Lines layout.
    let el = Element::parse(SUBSCRIBE_IQ.as_bytes(), &stream_scope("")).unwrap();
    assert_eq!(
        String::from_utf8(write(&el, Style::Lines)).unwrap(),
        SUBSCRIBE_IQ
    );
}

#[test]
fn escaping() {
    assert_eq!(
        escaped("a&b<c>d\"e'f\tg\nh\ri", true),
        "a&amp;b&lt;c&gt;d&quot;e'f&#9;g&#10;h&#13;i"
    );
    assert_eq!(
        escaped("a&b<c>d\"e'f\tg\nh", false),
        "a&amp;b&lt;c&gt;d\"e'f\tg\nh"
    );
    assert_eq!(escaped("x\ry", false), "x&#13;y");
    assert_eq!(escaped("x\u{1}y\u{1f}", false), "x\u{FFFD}y\u{FFFD}");
    assert_eq!(escaped("\u{0}", true), "\u{FFFD}");
    assert_eq!(
        escaped("a\u{FFFF}b\u{FFFE}\u{FFFD}\u{20AC}", false),
        "a\u{FFFD}b\u{FFFD}\u{FFFD}\u{20AC}"
    );
    assert_eq!(escaped("plain \u{e9}t\u{e9}", true), "plain \u{e9}t\u{e9}");

    let el = Element::new("m")
        .attr("a", "1 & 2 < 3 > 0 \"q\"\t\n")
        .text_node("x & y < z > w \"q\"");
    assert_eq!(
        write(&el, Style::Compact),
        b"<m a=\"1 &amp; 2 &lt; 3 &gt; 0 &quot;q&quot;&#9;&#10;\">x &amp; y &lt; z &gt; w \"q\"</m>"
    );
}

#[test]
fn element_round_trip() {
    let scope = stream_scope(ns::CLIENT);
    let sources: [&[u8]; 4] = [
        PUBLISH_PAIR.split("\n<iq").next().unwrap().as_bytes(),
        b"<iq a='&lt;&amp;&quot;&#9;&#10;&#13;' b='\xc3\xa9'><x xmlns='urn:x'><y>t&#13;u\r\nv</y><![CDATA[<c>]]></x><z/> </iq>",
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
        b"<p:q xmlns:p='urn:p' p:attr='1'><p:r/>text&#x1F600;</p:q>",
    ];
    for src in sources {
        let el = Element::parse(src, &scope).unwrap();
        let compact = write(&el, Style::Compact);
        let again = Element::parse(&compact, &scope)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&compact)));
        assert_eq!(again, el, "{}", String::from_utf8_lossy(&compact));
    }
    let el = Element::parse(sources[1], &scope).unwrap();
    assert_eq!(el.get_attr("a"), Some("<&\"\t\n\r"));
    let y = el.find_descendant("y").unwrap();
    assert_eq!(
        y.text(),
        "t\ru\nv",
        "a literal CR LF is one LF; &#13; stays"
    );
    assert!(matches!(el.nodes().last(), Some(Node::Text(t)) if t == " "));
}

// ---------------------------------------------------------------------------------------
// Tree layout: indentation, text-only and mixed content; the fast path
// ---------------------------------------------------------------------------------------

/// The element `body` (after the server header) decodes to, checked to be the same at
/// every split of the input and the same as `Element::parse` gives.
fn decoded(body: &str) -> Element {
    let mut input = SERVER_HEADER.to_vec();
    input.extend_from_slice(body.as_bytes());
    let events = assert_split_invariant(&input);
    let el = only_element(&events).clone();
    let parsed = Element::parse(body.trim().as_bytes(), &stream_scope("jabber:client")).unwrap();
    assert_eq!(el, parsed, "reader and Element::parse differ");
    el
}

fn is_text(n: &Node, expected: &str) -> bool {
    matches!(n, Node::Text(t) if t == expected)
}

#[test]
fn indentation_is_dropped_in_element_content() {
    let el = decoded("<a>\n\t<b>x</b>\n\t<c/>\r\n\t<d>\n\t\t<e/>\n\t</d>\n</a>");
    assert_eq!(el.nodes().len(), 3);
    assert!(el.nodes().iter().all(|n| matches!(n, Node::Element(_))));
    let d = el.get_child("d").unwrap();
    assert_eq!(d.nodes().len(), 1);
    assert_eq!(d.text(), "");
    assert_eq!(el.get_child("b").unwrap().text(), "x");

    // The Contrail layouts parse to the tree their typed values build.
    let msg = decoded(ROUTE_MESSAGE_BODY);
    let item = msg.find_descendant("item").unwrap();
    assert!(item.nodes().iter().all(|n| matches!(n, Node::Element(_))));
    let nlri = item.find_descendant("nlri").unwrap();
    assert_eq!(nlri.nodes().len(), 3);
    assert_eq!(nlri.child_text("address").unwrap(), "10.1.1.4/32");
}

#[test]
fn whitespace_of_text_only_elements_is_kept() {
    for text in [" ", "\n", "\n\t\t", " \n "] {
        let el = decoded(&format!("<iq><name>{text}</name><other/></iq>"));
        let name = el.get_child("name").unwrap();
        assert_eq!(name.text(), text);
        assert_eq!(name.nodes().len(), 1);
        assert!(is_text(&name.nodes()[0], text));
    }
    // Also when the text-only element is indented itself.
    let el = decoded("<iq>\n\t<name>\n\t</name>\n</iq>");
    assert_eq!(el.nodes().len(), 1);
    assert_eq!(el.get_child("name").unwrap().text(), "\n\t");
}

#[test]
fn whitespace_of_mixed_content_is_kept() {
    // Text before the whitespace: known to be mixed when the runs arrive.
    let el = decoded("<p>x<b/>\n<c/>\n</p>");
    let nodes = el.nodes();
    assert_eq!(nodes.len(), 5, "{nodes:?}");
    assert!(is_text(&nodes[0], "x") && is_text(&nodes[2], "\n") && is_text(&nodes[4], "\n"));
    assert_eq!(el.text(), "x\n\n");

    // Text after the whitespace: found mixed at the end, parsed again keeping the runs.
    let el = decoded("<p>\n<b/>\n  <c/>\ny &amp; z<d/>\n</p>");
    let nodes = el.nodes();
    assert_eq!(nodes.len(), 7, "{nodes:?}");
    assert!(is_text(&nodes[0], "\n"));
    assert!(is_text(&nodes[2], "\n  "));
    assert!(is_text(&nodes[4], "\ny & z"));
    assert!(is_text(&nodes[6], "\n"));
    assert_eq!(el.text(), "\n\n  \ny & z\n");

    // A reference right after a run makes it text, merged into one node.
    let el = decoded("<p><b/>\n&#65;<c/></p>");
    assert_eq!(el.nodes().len(), 3);
    assert!(is_text(&el.nodes()[1], "\nA"));

    // Whitespace without a line break is kept, as in the round trip test.
    let el = decoded("<p><b/> <c/></p>");
    assert_eq!(el.nodes().len(), 3);
    assert!(is_text(&el.nodes()[1], " "));
}

#[test]
fn byte_order_mark_in_text_at_a_read_boundary_is_kept() {
    let el = decoded("<p><b/>\u{FEFF}x\u{FEFF}</p>");
    assert_eq!(el.text(), "\u{FEFF}x\u{FEFF}");
    let el = decoded("<p>\u{FEFF}</p>");
    assert_eq!(el.text(), "\u{FEFF}");
    // Several in a row: each would be dropped, and not counted, by a fresh quick-xml.
    let el = decoded("<p><b/>\u{FEFF}\u{FEFF}\u{FEFF}x</p>");
    assert_eq!(el.text(), "\u{FEFF}\u{FEFF}\u{FEFF}x");
}

#[test]
fn invalid_names_are_refused_after_valid_ones() {
    // Names are cached once checked; a different name in the same slot is checked anew.
    let mut body = Vec::new();
    for i in 0..300 {
        body.extend_from_slice(format!("<iq><n{i}/><m-{i}.x/></iq>").as_bytes());
    }
    let out = after_header(&body).unwrap();
    assert_eq!(out.len(), 300);
    for bad in [
        "<iq><1n/></iq>",
        "<iq><n:/></iq>",
        "<iq><a:b:c/></iq>",
        "<iq><-x/></iq>",
    ] {
        body.extend_from_slice(bad.as_bytes());
        let mut r = opened(Limits::default(), SERVER_HEADER);
        r.feed(&body);
        let mut out = Vec::new();
        let err = drain(&mut r, &mut out).expect_err(bad);
        assert_eq!(
            err.stream_condition(),
            Some(Condition::NotWellFormed),
            "{bad}"
        );
        body.truncate(body.len() - bad.len());
    }
}

#[test]
fn built_and_parsed_trees_compare_by_content() {
    let parsed = Element::parse(b"<a><b>x</b><c/></a>", &NsScope::default()).unwrap();
    let built = Element::new("a")
        .child(Element::new("b").text_node("x"))
        .child(Element::new("c"));
    assert_eq!(parsed, built);
    assert_eq!(parsed.nodes(), built.nodes());
    let b = parsed.get_child("b").unwrap();
    assert_eq!(b.nodes().len(), 1);
    assert!(is_text(&b.nodes()[0], "x"));
    assert_eq!(b.clone(), *b);
    assert_eq!(b.nodes(), b.clone().nodes());

    // Two text nodes stay two; a child after text keeps both.
    let two = Element::new("t").text_node("x").text_node("y");
    assert_eq!(two.nodes().len(), 2);
    assert_eq!(two.text(), "xy");
    let mut mixed = Element::new("m").text_node("x");
    mixed.push_child(Element::new("e"));
    assert_eq!(mixed.nodes().len(), 2);
    assert_eq!(mixed.text(), "x");
    assert_eq!(mixed.children().count(), 1);
    // An empty text node is kept (it writes `<e></e>`).
    let empty = Element::new("e").text_node("");
    assert_eq!(empty.nodes().len(), 1);
    assert_eq!(write(&empty, Style::Compact), b"<e></e>");
}

/// Random bodies from valid and invalid pieces: fed whole, split anywhere and byte by
/// byte, the reader (fast path, with its fallback) must give the same elements or the
/// same error condition, and the same elements as `Element::parse`.
#[test]
fn fast_path_agrees_with_itself_and_the_parser_on_random_input() {
    let mut seed: u64 = 0x1234_5678_9abc_def0;
    let mut rnd = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let pieces: &[&str] = &[
        "<a>",
        "</a>",
        "<b x='1'>",
        "</b>",
        "<c/>",
        "<d y=\"a>b\" z='&lt;'/>",
        "text",
        " ",
        "\n",
        "\n\t\t",
        "&amp;",
        "&#65;",
        "&foo;",
        "<![CDATA[x<y]]>",
        "<!-- c -->",
        "<?pi x?>",
        "\u{FEFF}",
        "\r\n",
        "]]>",
        "<e:f/>",
        "<p:q xmlns:p='urn:p'>",
        "</p:q>",
        "<1x/>",
        "&",
        "<g xmlns='urn:g'>",
        "</g>",
        "\u{e9}",
        "\t",
        "<h>\n</h>",
        "<i>  </i>",
        "&#xD;",
        "&#1;",
        "<![CDATA[]]>",
        "\r",
        "<j a='1' a='2'/>",
        "<k xmlns:p=''/>",
        "</n>",
        "<o",
        "p>",
        "<q r='<'/>",
        "<a>x<c/>\n<c/>\n</a>",
        "<a>\n<c/>\n<c/>y</a>",
    ];
    let scope = stream_scope("jabber:client");
    for _ in 0..1000 {
        let mut body = String::from("<iq>");
        for _ in 0..rnd(14) {
            body.push_str(pieces[rnd(pieces.len())]);
        }
        body.push_str("</iq>");
        let mut input = SERVER_HEADER.to_vec();
        input.extend_from_slice(body.as_bytes());
        let whole = read_chunks(Limits::default(), [&input[..]]).map(merge_ws);
        // (The element may also still be incomplete: a piece can open a tag it never ends.)
        if let Ok(events) = &whole
            && events.iter().any(|e| matches!(e, Event::Element(_)))
        {
            let parsed = Element::parse(body.as_bytes(), &scope).unwrap();
            assert_eq!(only_element(events), &parsed, "{body:?}");
        }
        let same = |other: Result<Vec<Event>, Error>, how: &str| match (&whole, other) {
            (Ok(a), Ok(b)) => assert_eq!(a, &merge_ws(b), "{body:?} {how}"),
            (Err(a), Err(b)) => {
                assert_eq!(a.stream_condition(), b.stream_condition(), "{body:?} {how}");
            }
            (a, b) => panic!("{body:?} {how}: {a:?} / {b:?}"),
        };
        for i in (SERVER_HEADER.len()..=input.len()).step_by(1 + rnd(4)) {
            same(
                read_chunks(Limits::default(), [&input[..i], &input[i..]]),
                &format!("split at {i}"),
            );
        }
        same(
            read_chunks(Limits::default(), input.chunks(1)),
            "byte by byte",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Performance sanity: linear scans
// ---------------------------------------------------------------------------------------

#[test]
fn large_stanza_one_byte_at_a_time() {
    let mut stanza = b"<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'>".to_vec();
    while stanza.len() < 400 * 1024 {
        stanza.extend_from_slice(
            b"<item id='10.1.1.4/32'><entry><![CDATA[a]]b]]>&amp;</entry></item>\n",
        );
    }
    stanza.extend_from_slice(b"</pubsub></iq>");
    let mut r = opened(Limits::default(), SERVER_HEADER);
    let mut out = Vec::new();
    for b in &stanza {
        r.feed(std::slice::from_ref(b));
        drain(&mut r, &mut out).unwrap();
    }
    assert_eq!(out.len(), 1);
    let pubsub = element(&out[0]).get_child("pubsub").unwrap();
    assert!(pubsub.children().count() > 5000);

    // Declarations and end tags between stanzas resume their scan too.
    let mut r = opened(Limits::default(), SERVER_HEADER);
    let mut decl = b"<?xml version='1.0'".to_vec();
    decl.resize(400 * 1024, b' ');
    decl.extend_from_slice(b"?></stream:stream");
    decl.resize(800 * 1024, b' ');
    decl.push(b'>');
    let mut out = Vec::new();
    for b in &decl {
        r.feed(std::slice::from_ref(b));
        drain(&mut r, &mut out).unwrap();
    }
    assert_eq!(out, [Event::StreamClose]);
}

// ---------------------------------------------------------------------------------------
// Stream elements (read-only checks of `stream/`)
// ---------------------------------------------------------------------------------------

fn contrail_client_header() -> StreamHeader {
    StreamHeader {
        from: Some("compute-1".into()),
        to: Some(ns::CONTROL_JID.into()),
        id: None,
        version: Some("1.0".into()),
        lang: Some("en".into()),
        default_ns: Some(String::new()),
    }
}

fn contrail_server_header() -> StreamHeader {
    StreamHeader {
        from: Some("ctrl-host-1".into()),
        to: Some("compute-1".into()),
        id: Some(CONTRAIL_STREAM_ID.into()),
        version: Some("1.0".into()),
        lang: Some("en".into()),
        default_ns: Some(ns::CLIENT.into()),
    }
}

#[test]
fn stream_header_contrail_bytes() {
    let mut out = BytesMut::new();
    contrail_client_header().write(&mut out, Dialect::Contrail);
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(CLIENT_HEADER)
    );
    let mut out = BytesMut::new();
    contrail_server_header().write(&mut out, Dialect::Contrail);
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(SERVER_HEADER)
    );
}

#[test]
fn stream_header_round_trip_both_dialects() {
    for (h, dialect) in [
        (contrail_client_header(), Dialect::Contrail),
        (contrail_server_header(), Dialect::Contrail),
        (contrail_server_header(), Dialect::Rfc),
    ] {
        let mut out = BytesMut::new();
        h.write(&mut out, dialect);
        let events = read_all(&out).unwrap();
        let Some(Event::StreamOpen(el)) = events.last() else {
            panic!("{events:?}")
        };
        assert_eq!(StreamHeader::from_element(el).unwrap(), h, "{dialect}");
    }
}

#[test]
fn stream_header_dialect() {
    let with = |ns: Option<&str>| StreamHeader {
        default_ns: ns.map(str::to_owned),
        ..StreamHeader::default()
    };
    assert_eq!(with(Some("jabber:client")).dialect(), Dialect::Rfc);
    assert_eq!(with(Some("jabber:server")).dialect(), Dialect::Rfc);
    assert_eq!(with(Some("")).dialect(), Dialect::Contrail);
    assert_eq!(with(Some("sub-cluster-7")).dialect(), Dialect::Contrail);
    assert_eq!(Dialect::Contrail.keepalive(), KEEPALIVE);
}

#[test]
fn contrail_features_bytes() {
    let f = Features {
        starttls: Some(true),
        ..Features::default()
    };
    let mut out = BytesMut::new();
    f.write(&mut out, Dialect::Contrail);
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(CONTRAIL_FEATURES)
    );
    // And they read back.
    let input = [SERVER_HEADER, &out[..]].concat();
    let events = read_all(&input).unwrap();
    let parsed = Features::from_element(only_element(&events)).unwrap();
    assert_eq!(parsed, f);
}

#[test]
fn rfc_features_bytes_match_s_client() {
    let f = Features {
        starttls: Some(true),
        ..Features::default()
    };
    let mut out = BytesMut::new();
    f.write(&mut out, Dialect::Rfc);
    let s = String::from_utf8(out.to_vec()).unwrap();
    // openssl s_client -starttls xmpp looks for either quoting of exactly this prefix.
    assert!(
        s.contains("<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"")
            || s.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'"),
        "{s}"
    );
    assert!(s.starts_with("<stream:features>"), "{s}");
    let input = [SERVER_HEADER, &out[..]].concat();
    let events = read_all(&input).unwrap();
    assert_eq!(Features::from_element(only_element(&events)).unwrap(), f);
}

#[test]
fn contrail_tls_nonzas_bytes() {
    let mut out = BytesMut::new();
    TlsNonza::Proceed.write(&mut out, Dialect::Contrail);
    assert_eq!(
        &out[..],
        &b"<?xml version=\"1.0\"?>\n<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" />"[..]
    );
    let mut out = BytesMut::new();
    TlsNonza::StartTls.write(&mut out, Dialect::Contrail);
    assert_eq!(
        &out[..],
        &b"<?xml version=\"1.0\"?>\n<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\" />"[..]
    );
    let mut out = BytesMut::new();
    TlsNonza::Proceed.write(&mut out, Dialect::Rfc);
    assert_eq!(
        &out[..],
        &b"<proceed xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"/>"[..]
    );
}

#[test]
fn stream_error_round_trip() {
    for err in [
        StreamError::new(
            Condition::PolicyViolation,
            "stanza larger than 512 bytes & <more>",
        ),
        StreamError {
            condition: Condition::NotWellFormed,
            text: None,
        },
    ] {
        for style in [Style::Compact, Style::Lines] {
            let mut out = BytesMut::new();
            let mut w = XmlWriter::new(&mut out, style);
            err.write(&mut w);
            let el = Element::parse(&out, &stream_scope(ns::CLIENT)).unwrap();
            assert!(StreamError::matches(&el));
            assert_eq!(StreamError::from_element(&el), err);
        }
    }
    // An unknown condition.
    let el = Element::parse(
        b"<stream:error><x-new xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        &stream_scope(ns::CLIENT),
    )
    .unwrap();
    assert_eq!(
        StreamError::from_element(&el).condition,
        Condition::UndefinedCondition
    );
}

#[test]
fn error_conditions() {
    let cases = [
        (
            Error::NotWellFormed(String::new()),
            Condition::NotWellFormed,
        ),
        (
            Error::RestrictedXml(String::new()),
            Condition::RestrictedXml,
        ),
        (
            Error::PolicyViolation(String::new()),
            Condition::PolicyViolation,
        ),
        (Error::BadFormat(String::new()), Condition::BadFormat),
        (
            Error::InvalidNamespace(String::new()),
            Condition::InvalidNamespace,
        ),
    ];
    for (e, c) in cases {
        assert_eq!(e.stream_condition(), Some(c), "{e}");
    }
    assert_eq!(Error::Closed.stream_condition(), None);
}
