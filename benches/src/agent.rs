//! One simulated agent (or XMPP client): a tokio task that connects, negotiates, subscribes,
//! publishes its routes when told to, counts the routes it holds, and reconnects when the
//! scenario drops connections or the server closes the session.
//!
//! Writing and reading run in one `select!` over the two halves of the stream, so an agent
//! that publishes while routes pour in never stops reading (a writer that does not read can
//! deadlock against a server that does not read while it writes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use xmpp_core::contrail::pubsub::{write_route, write_subscribe};
use xmpp_core::contrail::{LoadBalance, Mobility, NextHop, Nlri, Prefix, RouteEntry};
use xmpp_core::stanza::ns;
use xmpp_core::stream::Dialect;
use xmpp_core::xml::{Element, Event, Style, XmlWriter};

use crate::client::{self, ClientTlsCfg, Login};
use crate::hist::Hist;
use crate::plan::{Plan, Profile};
use crate::scan::{Scanner, Token, route_prefix};

/// What the coordinator tells the agents, with the time (µs since the epoch) it did so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connect and subscribe, then wait.
    Connect,
    /// Publish.
    Go(u64),
    /// Drop the connection and reconnect at once (storm).
    Drop(u64),
    /// Close and end.
    Stop,
}

/// What an agent reports. `cycle` is 1 for the first connection, 2 after a storm drop.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// Negotiation finished (`start`: the first connect attempt of this cycle).
    Established {
        /// Cycle.
        cycle: u8,
        /// First attempt (µs since the epoch).
        start: u64,
        /// Established (µs since the epoch).
        at: u64,
        /// Connect attempts this cycle took.
        attempts: u32,
    },
    /// Subscribed (RFC: the subscription was confirmed).
    Ready {
        /// Cycle.
        cycle: u8,
        /// When.
        at: u64,
    },
    /// The publisher wrote (RFC: got results for) all its routes.
    Published {
        /// Cycle.
        cycle: u8,
        /// When.
        at: u64,
    },
    /// The agent holds every route it should.
    Converged {
        /// Cycle.
        cycle: u8,
        /// When.
        at: u64,
    },
    /// The agent gave up (deadline reached while reconnecting, or a fatal error).
    Failed {
        /// Why.
        error: String,
    },
}

/// State shared by the agents of one worker.
#[derive(Debug)]
pub struct Shared {
    /// The plan.
    pub plan: Plan,
    /// Publish-to-delivery latency (µs) per cycle (index 1, 2).
    pub latency: Mutex<[Hist; 3]>,
    /// Route items received per cycle.
    pub items: [AtomicU64; 3],
    /// Retracts received per cycle.
    pub retracts: [AtomicU64; 3],
    /// Sessions the server closed (not counting our own drops).
    pub server_closes: AtomicU64,
    /// RFC publish errors.
    pub publish_errors: AtomicU64,
    /// When the worker gives up.
    pub deadline: Instant,
}

/// µs since the plan's epoch.
pub fn now_us(epoch_us: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    now.saturating_sub(epoch_us)
}

/// The route entry agent `agent` publishes for route `index`, as the C++ agent fills it
/// (spec §6.4): its router id as next hop, an MPLS label, `gre`+`udp`, one security group,
/// local preference 200; `sequence-number` carries the publish time (control copies the
/// first path's attributes through, so the subscriber reads it back).
pub fn bench_route(plan: &Plan, agent: u32, index: u32, stamp: u32) -> RouteEntry {
    let v = plan.vrf_of(agent);
    RouteEntry {
        nlri: Nlri {
            af: 1,
            safi: 1,
            prefix: Prefix::host(route_prefix(index).into()),
        },
        next_hops: vec![NextHop {
            af: 1,
            address: std::net::Ipv4Addr::from(0x6440_0001 + agent).into(),
            mac: "52:54:00:aa:bb:cc".into(),
            label: 16 + index % 1_000_000,
            vni: 0,
            encapsulations: vec!["gre".into(), "udp".into()],
            virtual_network: format!("default-domain:bench:vn-{v}"),
            tags: vec![],
        }],
        version: 1,
        virtual_network: String::new(),
        mobility: Mobility::default(),
        sequence_number: stamp,
        security_groups: vec![8_000_002],
        community_tags: vec![],
        local_preference: 200,
        med: 0,
        load_balance: LoadBalance {
            fields: vec![],
            decision: "field-hash".into(),
        },
        sub_protocol: "interface".into(),
    }
}

/// Writes the RFC publish IQ for one route: the same `<item>`/`<entry>` bytes as the agent's
/// Contrail publish (Lines layout), with the prefix as item id.
pub fn write_rfc_publish(out: &mut BytesMut, plan: &Plan, id: u64, entry: &RouteEntry) {
    let mut w = XmlWriter::new(out, Style::Lines);
    w.start("iq");
    w.attr("type", "set");
    w.attr("to", &plan.pubsub);
    w.attr("id", &format!("p{id}"));
    w.start("pubsub");
    w.attr("xmlns", ns::PUBSUB);
    w.start("publish");
    w.attr("node", &plan.publish_node);
    entry.write_item(&mut w, Some(&entry.nlri.prefix.to_string()));
    w.end();
    w.end();
    w.end();
}

/// The routes this agent holds (a bitmap over the run's route indexes).
struct Held {
    bits: Vec<u64>,
    count: u64,
}

impl Held {
    fn new(total: u32) -> Self {
        Self {
            bits: vec![0; (total as usize).div_ceil(64)],
            count: 0,
        }
    }
    fn set(&mut self, i: u32, on: bool) {
        let Some(w) = self.bits.get_mut(i as usize / 64) else {
            return;
        };
        let m = 1u64 << (i % 64);
        if on && *w & m == 0 {
            *w |= m;
            self.count += 1;
        } else if !on && *w & m != 0 {
            *w &= !m;
            self.count -= 1;
        }
    }
    fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.count = 0;
    }
}

enum End {
    Stop,
    Reconnect,
}

/// Runs agent `i` until the coordinator says stop or the deadline passes.
pub async fn run(
    i: u32,
    shared: Arc<Shared>,
    tls: Option<ClientTlsCfg>,
    mut phase: watch::Receiver<Phase>,
    ev: mpsc::UnboundedSender<AgentEvent>,
) {
    let plan = &shared.plan;
    let name = Plan::agent_name(i);
    let login = match plan.profile {
        Profile::Contrail => Login::Contrail { name: name.clone() },
        Profile::Rfc => Login::Rfc {
            user: name.clone(),
            domain: plan.domain.clone(),
            resource: "bench".into(),
        },
    };
    let mut cycle = 1u8;
    let mut held = Held::new(if plan.expected(i) > 0 {
        plan.total_routes()
    } else {
        0
    });
    loop {
        if *phase.borrow() == Phase::Stop {
            return;
        }
        let start = now_us(plan.epoch_us);
        let mut attempts = 0;
        let mut backoff = Duration::from_millis(50);
        let session = loop {
            attempts += 1;
            let limit = shared
                .deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(15));
            match client::open(plan.server, &login, tls.clone(), limit).await {
                Ok(s) => break s,
                Err(e) => {
                    if Instant::now() + backoff >= shared.deadline || *phase.borrow() == Phase::Stop
                    {
                        let _ = ev.send(AgentEvent::Failed {
                            error: format!("{name}: {e:#} (after {attempts} attempts)"),
                        });
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        };
        let _ = ev.send(AgentEvent::Established {
            cycle,
            start,
            at: now_us(plan.epoch_us),
            attempts,
        });
        held.clear();
        match session_loop(i, &shared, session, cycle, &mut held, &mut phase, &ev).await {
            Ok(End::Stop) => return,
            Ok(End::Reconnect) => {
                if matches!(*phase.borrow(), Phase::Drop(_)) {
                    cycle = 2;
                }
            }
            Err(e) => {
                let _ = ev.send(AgentEvent::Failed {
                    error: format!("{name}: {e:#}"),
                });
                return;
            }
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn session_loop(
    i: u32,
    shared: &Shared,
    mut session: client::Session,
    cycle: u8,
    held: &mut Held,
    phase: &mut watch::Receiver<Phase>,
    ev: &mpsc::UnboundedSender<AgentEvent>,
) -> Result<End> {
    let plan = &shared.plan;
    let name = Plan::agent_name(i);
    let expected = plan.expected(i);
    let to_publish = plan.publishes(i);
    let rfc = plan.profile == Profile::Rfc;
    let publisher = to_publish > 0;
    let mut out = BytesMut::with_capacity(4096);
    let mut seq = 1u64;

    // Join: subscribe to the VRF (Contrail: no answer comes) or to the node (RFC: wait for
    // the result, reading with the element parser).
    if rfc {
        if !publisher || plan.publisher_subscribes {
            let jid = session.jid.clone().unwrap_or_default();
            let sub = Element::new("iq")
                .attr("type", "set")
                .attr("to", plan.pubsub.clone())
                .attr("id", "sub1")
                .child(
                    Element::with_ns("pubsub", ns::PUBSUB).child(
                        Element::new("subscribe")
                            .attr("node", plan.node.clone())
                            .attr("jid", jid),
                    ),
                );
            client::send_el(session.io.as_mut(), &sub).await?;
            session.reader.feed(&session.leftover);
            client::iq_result(session.io.as_mut(), &mut session.reader, "sub1").await?;
            session.leftover = session.reader.take_buffered();
        }
    } else {
        let v = plan.vrf_of(i);
        write_subscribe(&mut out, &name, seq, &Plan::vrf_name(v), i64::from(v) + 1);
        seq += 1;
    }
    let _ = ev.send(AgentEvent::Ready {
        cycle,
        at: now_us(plan.epoch_us),
    });

    let (mut rd, mut wr) = tokio::io::split(session.io);
    let mut scanner = Scanner::new();
    let mut converged = expected == 0 && cycle == 1;
    let mut origin = match *phase.borrow() {
        Phase::Go(t) | Phase::Drop(t) => t,
        _ => u64::MAX,
    };
    // Publishing starts at Go, or at once after a storm reconnect (as an agent re-publishes
    // everything after each reconnect, spec §6.5).
    let mut next_route = 0u32;
    let mut publishing = publisher && (cycle > 1 || matches!(*phase.borrow(), Phase::Go(_)));
    let mut published_reported = false;
    let mut acked = 0u32;
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let keepalive = match plan.profile {
        Profile::Contrail => Dialect::Contrail.keepalive(),
        Profile::Rfc => Dialect::Rfc.keepalive(),
    };
    let ka_period = Duration::from_secs(plan.keepalive_s.max(1));
    let mut ka = tokio::time::interval_at(Instant::now() + ka_period, ka_period);
    let pace_period = Duration::from_millis(10);
    let mut pace = tokio::time::interval(pace_period);
    let per_tick = if plan.rate == 0 {
        u32::MAX
    } else {
        (plan.rate / 100).max(1)
    };
    let mut scanned_leftover = false;

    loop {
        if !scanned_leftover {
            scanned_leftover = true;
            if !(session.leftover.is_empty() || rfc && publisher) {
                let data = std::mem::take(&mut session.leftover);
                on_data(&data, &mut scanner, held, shared, cycle, origin);
            }
        }
        if !converged && expected > 0 && held.count >= expected {
            converged = true;
            let _ = ev.send(AgentEvent::Converged {
                cycle,
                at: now_us(plan.epoch_us),
            });
        }
        // Queue more publishes: Contrail up to the pacing budget; RFC within the window.
        if publishing && next_route < to_publish && out.len() < 256 * 1024 {
            let budget = if rfc {
                (acked + plan.window).saturating_sub(next_route)
            } else {
                per_tick
            };
            let n = budget.min(to_publish - next_route);
            if n > 0 && (plan.rate == 0 || rfc) {
                queue_routes(plan, i, &name, &mut out, &mut next_route, n, &mut seq);
            }
        }
        if publishing && !published_reported {
            let done = if rfc {
                acked >= to_publish
            } else {
                next_route >= to_publish && out.is_empty()
            };
            if done {
                published_reported = true;
                let _ = ev.send(AgentEvent::Published {
                    cycle,
                    at: now_us(plan.epoch_us),
                });
            }
        }
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() {
                    return Ok(End::Stop);
                }
                let p = *phase.borrow();
                match p {
                    Phase::Go(t) => {
                        origin = t;
                        if publisher {
                            publishing = true;
                        }
                    }
                    Phase::Drop(t) if cycle == 1 => {
                        let _ = t;
                        // Drop both halves: the socket closes without a stream close, as
                        // when an agent's host loses its link.
                        return Ok(End::Reconnect);
                    }
                    Phase::Stop => {
                        if rfc {
                            out.extend_from_slice(xmpp_core::stream::STREAM_CLOSE);
                        }
                        let _ = tokio::time::timeout(Duration::from_millis(200), async {
                            let _ = wr.write_all(&out).await;
                            let _ = wr.shutdown().await;
                        })
                        .await;
                        return Ok(End::Stop);
                    }
                    _ => {}
                }
            }
            r = rd.read_buf(&mut rbuf) => {
                let n: usize = r.unwrap_or_default();
                if n == 0 {
                    shared.server_closes.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= shared.deadline {
                        anyhow::bail!("closed by the server");
                    }
                    return Ok(End::Reconnect);
                }
                if rfc && publisher {
                    session.reader.feed(&rbuf);
                    while let Some(e) = session
                        .reader
                        .next_event()
                        .map_err(|e| anyhow::anyhow!("parse: {e}"))?
                    {
                        if let Event::Element(el) = e
                            && el.local_name() == "iq"
                        {
                            acked += 1;
                            if el.get_attr("type") != Some("result") {
                                shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                } else {
                    on_data(&rbuf, &mut scanner, held, shared, cycle, origin);
                }
                rbuf.clear();
            }
            r = wr.write(&out), if !out.is_empty() => {
                // A write error is the server closing the session (the storm's name
                // refusals, spec §5.6): reconnect, as an agent does.
                let n = match r {
                    Ok(n) if n > 0 => n,
                    _ => {
                        shared.server_closes.fetch_add(1, Ordering::Relaxed);
                        return Ok(End::Reconnect);
                    }
                };
                out.advance(n);
                if out.is_empty() && wr.flush().await.is_err() {
                    shared.server_closes.fetch_add(1, Ordering::Relaxed);
                    return Ok(End::Reconnect);
                }
            }
            _ = pace.tick(), if publishing && plan.rate > 0 && !rfc && next_route < to_publish => {
                let n = per_tick.min(to_publish - next_route);
                queue_routes(plan, i, &name, &mut out, &mut next_route, n, &mut seq);
            }
            _ = ka.tick() => {
                if out.is_empty() {
                    out.extend_from_slice(keepalive);
                }
            }
            () = tokio::time::sleep_until(shared.deadline) => {
                anyhow::bail!("deadline reached ({} of {expected} routes held)", held.count);
            }
        }
    }
}

fn queue_routes(
    plan: &Plan,
    i: u32,
    name: &str,
    out: &mut BytesMut,
    next_route: &mut u32,
    n: u32,
    seq: &mut u64,
) {
    let vrf = Plan::vrf_name(plan.vrf_of(i));
    let stamp = now_us(plan.epoch_us) as u32;
    for _ in 0..n {
        let index = plan.route_base(i) + *next_route;
        let entry = bench_route(plan, i, index, stamp);
        match plan.profile {
            Profile::Contrail => write_route(out, name, *seq, &vrf, &entry, true),
            Profile::Rfc => write_rfc_publish(out, plan, *seq, &entry),
        }
        *seq += 1;
        *next_route += 1;
    }
}

fn on_data(
    data: &[u8],
    scanner: &mut Scanner,
    held: &mut Held,
    shared: &Shared,
    cycle: u8,
    origin: u64,
) {
    let now = now_us(shared.plan.epoch_us);
    let mut items = 0;
    let mut retracts = 0;
    let mut lat = Vec::new();
    scanner.feed(data, |t| match t {
        Token::Item(k) => {
            items += 1;
            held.set(k, true);
        }
        Token::Retract(k) => {
            retracts += 1;
            held.set(k, false);
        }
        Token::Seq(stamp) => {
            let stamp = u64::from(stamp);
            // Only routes published in this phase: a dump of routes from before the
            // phase would measure how old they are, not how fast they travelled.
            if stamp >= origin && now >= stamp {
                lat.push(now - stamp);
            }
        }
    });
    let c = usize::from(cycle.min(2));
    shared.items[c].fetch_add(items, Ordering::Relaxed);
    shared.retracts[c].fetch_add(retracts, Ordering::Relaxed);
    if !lat.is_empty()
        && let Ok(mut h) = shared.latency.lock()
    {
        for v in lat {
            h[c].record(v);
        }
    }
}
