//! Decode and encode throughput of a realistic Contrail route stream.
//!
//! The stream is what a control node sends an agent: `<message>`s of 32 route items
//! (spec §6.6, tab-indented, about 850 bytes per route), built here with the library's own
//! encoder. Decoding runs it through `xmpp_core::xml::Reader` (framing, restricted-XML
//! checks, element trees) in 16 KiB reads, beside a bare quick-xml event loop over the same
//! bytes (no framing, no tree): the reader's target is at least 0.8x the bare loop. A second
//! baseline adds what any consumer of the events does (attribute values, text decoding).
//! The ratios are printed first, from interleaved runs (see `print_ratios`).
//!
//! Run: `cargo bench -p benches --bench stream_decode`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quick_xml::events::Event as QxEvent;
use xmpp_core::contrail::message::write_items;
use xmpp_core::contrail::route::{LoadBalance, Mobility, NextHop, Nlri};
use xmpp_core::contrail::{Family, Prefix, RouteEntry};
use xmpp_core::xml::{Event, Limits, Reader};

const VRF: &str = "default-domain:admin-project:vn-blue-frontend:vn-blue-frontend";
const MESSAGES: u32 = 200;

fn route(i: u32) -> RouteEntry {
    let addr = Ipv4Addr::from(0x0a00_0000 + i);
    RouteEntry {
        nlri: Nlri {
            af: 1,
            safi: 1,
            prefix: Prefix::host(IpAddr::V4(addr)),
        },
        next_hops: vec![NextHop {
            af: 1,
            address: IpAddr::V4(Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8)),
            mac: String::new(),
            label: 16 + i % 100_000,
            vni: 0,
            encapsulations: vec!["gre".into(), "udp".into()],
            virtual_network: "default-domain:admin-project:vn-blue-frontend".into(),
            tags: vec![],
        }],
        version: 1,
        virtual_network: "default-domain:admin-project:vn-blue-frontend".into(),
        mobility: Mobility {
            seqno: 0,
            sticky: false,
        },
        sequence_number: 0,
        security_groups: vec![8_000_002, 8_000_017],
        community_tags: vec![],
        local_preference: 100,
        med: 200,
        load_balance: LoadBalance {
            fields: vec![],
            decision: "field-hash".into(),
        },
        sub_protocol: "interface".into(),
    }
}

/// `MESSAGES` route messages of 32 items each, as one byte stream.
fn route_stream() -> (Vec<u8>, usize) {
    let mut out = BytesMut::new();
    let mut routes = 0;
    for m in 0..MESSAGES {
        let entries: Vec<RouteEntry> = (0..32).map(|i| route(m * 32 + i)).collect();
        routes += entries.len();
        write_items(&mut out, "compute-17", Family::Inet, VRF, &entries).expect("32 items");
    }
    (out.to_vec(), routes)
}

const HEADER: &[u8] =
    b"<stream:stream from=\"ctrl-1\" to=\"compute-17\" id=\"++123\" version=\"1.0\" \
xml:lang=\"en\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\"  >";

fn decode_reader(body: &[u8]) -> usize {
    let mut r = Reader::new(Limits::default());
    r.feed(HEADER);
    let mut elements = 0;
    for chunk in body.chunks(16 * 1024) {
        r.feed(chunk);
        while let Some(ev) = r.next_event().expect("valid stream") {
            if let Event::Element(el) = ev {
                elements += el.nodes().len();
            }
        }
    }
    elements
}

fn decode_bare(body: &[u8]) -> usize {
    let mut r = quick_xml::Reader::from_reader(body);
    let mut n = 0;
    loop {
        match r.read_event() {
            Ok(QxEvent::Eof) => break,
            Ok(QxEvent::Start(_)) => n += 1,
            Ok(_) => {}
            Err(e) => panic!("bare loop: {e}"),
        }
    }
    n
}

/// A more realistic baseline: the bare loop plus what any consumer of the events does,
/// attribute iteration with value normalisation and text decoding (EOL normalisation,
/// entity resolution), still without framing, checks or a tree.
fn decode_quick_xml_attrs_text(body: &[u8]) -> usize {
    let mut r = quick_xml::Reader::from_reader(body);
    let mut n = 0;
    loop {
        match r.read_event() {
            Ok(QxEvent::Eof) => break,
            Ok(QxEvent::Start(s) | QxEvent::Empty(s)) => {
                n += s.name().as_ref().len();
                for a in s.attributes() {
                    let a = a.expect("attribute");
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .expect("value");
                    n += a.key.as_ref().len() + v.len();
                }
            }
            Ok(QxEvent::Text(t)) => n += t.xml10_content().len(),
            Ok(QxEvent::GeneralRef(r)) => n += r.len(),
            Ok(_) => {}
            Err(e) => panic!("attrs+text loop: {e}"),
        }
    }
    n
}

/// One of the decoders compared: the body in, a count out (so that nothing is optimised
/// away).
type Decoder = fn(&[u8]) -> usize;

/// Runs the decoders interleaved, `ROUNDS` times each, and prints the best throughput of
/// each and the reader's ratios to the two baselines: the median of the per-round ratios,
/// and the ratio of the best runs. Interleaving keeps the ratio meaningful on a busy
/// machine, where criterion's separate measurements of each function can see different
/// loads.
fn print_ratios(body: &[u8]) {
    const ROUNDS: usize = 15;
    let decoders: [(&str, Decoder); 3] = [
        ("xmpp_core_reader", decode_reader),
        ("bare_quick_xml_events", decode_bare),
        ("quick_xml_attrs_text", decode_quick_xml_attrs_text),
    ];
    let mut best = [f64::INFINITY; 3];
    // Per round, each baseline's time over the reader's: the median of these is the
    // figure least moved by other load (the runs compared are seconds apart at most).
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        let mut times = [0.0; 3];
        for (i, (_, f)) in decoders.iter().enumerate() {
            let t = Instant::now();
            black_box(f(black_box(body)));
            times[i] = t.elapsed().as_secs_f64();
            best[i] = best[i].min(times[i]);
        }
        ratios[0].push(times[1] / times[0]);
        ratios[1].push(times[2] / times[0]);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mib = body.len() as f64 / (1024.0 * 1024.0);
    for (i, (name, _)) in decoders.iter().enumerate() {
        eprintln!("best of {ROUNDS}: {name:<24} {:7.1} MiB/s", mib / best[i]);
    }
    eprintln!(
        "reader / bare quick-xml events: {:.2}x (best of each {:.2}x); \
         reader / quick-xml + attributes + text: {:.2}x (best of each {:.2}x)",
        median(&mut ratios[0]),
        best[1] / best[0],
        median(&mut ratios[1]),
        best[2] / best[0]
    );
}

fn bench(c: &mut Criterion) {
    let (body, routes) = route_stream();
    eprintln!(
        "route stream: {} messages, {routes} routes, {} bytes ({} bytes/route)",
        MESSAGES,
        body.len(),
        body.len() / routes
    );
    // Not when profiling one function (`--profile-time`): the other decoders would show.
    if !std::env::args().any(|a| a == "--profile-time") {
        print_ratios(&body);
    }
    let mut g = c.benchmark_group("route_stream");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("decode/xmpp_core_reader", |b| {
        b.iter(|| black_box(decode_reader(black_box(&body))))
    });
    g.bench_function("decode/bare_quick_xml_events", |b| {
        b.iter(|| black_box(decode_bare(black_box(&body))))
    });
    g.bench_function("decode/quick_xml_attrs_text", |b| {
        b.iter(|| black_box(decode_quick_xml_attrs_text(black_box(&body))))
    });
    let entries: Vec<Vec<RouteEntry>> = (0..MESSAGES)
        .map(|m| (0..32).map(|i| route(m * 32 + i)).collect())
        .collect();
    g.bench_function("encode/route_messages", |b| {
        let mut out = BytesMut::with_capacity(body.len() + 4096);
        b.iter(|| {
            out.clear();
            for e in &entries {
                write_items(&mut out, "compute-17", Family::Inet, VRF, e).expect("32 items");
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
