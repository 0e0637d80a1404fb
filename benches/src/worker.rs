//! A worker process: runs agents `lo..hi` of a plan on a single-threaded runtime and talks
//! to the coordinator in lines: commands on stdin (`go T`, `drop T`, `stop`), reports on
//! stdout (one JSON [`Report`] per line). Several workers split a large run so no process
//! needs more file descriptors than its limit allows.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use xmpp_core::tls::{ClientTls, ClientTlsOptions, server_name};

use crate::agent::{self, AgentEvent, Phase, Shared};
use crate::client::{BYTES_IN, BYTES_OUT, ClientTlsCfg};
use crate::hist::{Hist, SparseHist};
use crate::pki::Pki;
use crate::plan::Plan;
use crate::procstat;

/// One line from a worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// `ready`, `converged`, `done`, `failed`.
    pub ev: String,
    /// 1: first connection; 2: after the storm's drop.
    pub cycle: u8,
    /// Agents of this worker.
    pub agents: u32,
    /// Agents that reached this state.
    pub count: u32,
    /// Earliest connect start (µs since the epoch).
    pub first_start: u64,
    /// Latest established.
    pub last_established: u64,
    /// Latest ready (subscribed).
    pub last_ready: u64,
    /// Latest publisher finish.
    pub last_published: u64,
    /// Latest convergence.
    pub last_converged: u64,
    /// Connect attempts (all agents, this cycle).
    pub attempts: u64,
    /// Connect start → established per agent (µs).
    pub setup: SparseHist,
    /// Publish → delivery (µs).
    pub latency: SparseHist,
    /// Route items received this cycle.
    pub items: u64,
    /// Retracts received this cycle.
    pub retracts: u64,
    /// Sessions closed by the server.
    pub server_closes: u64,
    /// RFC publish errors.
    pub publish_errors: u64,
    /// TCP bytes in and out so far (this process).
    pub bytes_in: u64,
    /// See `bytes_in`.
    pub bytes_out: u64,
    /// This process's CPU seconds so far.
    pub cpu_s: f64,
    /// First few failures.
    pub errors: Vec<String>,
}

#[derive(Default)]
struct CycleState {
    established: HashMap<u32, (u64, u64, u32)>,
    ready: HashMap<u32, u64>,
    published: HashMap<u32, u64>,
    converged: HashMap<u32, u64>,
}

fn client_tls(pki: &Pki, name: &str) -> Result<ClientTlsCfg> {
    let tls = ClientTls::load(&pki.client_files(name), &ClientTlsOptions::default())
        .with_context(|| format!("client TLS for {name}"))?;
    Ok((tls.current(), server_name("localhost")?))
}

fn emit(r: &Report) {
    if let Ok(s) = serde_json::to_string(r) {
        println!("{s}");
    }
}

/// Runs a worker to its end.
pub fn main(plan: Plan) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(plan))
}

#[allow(clippy::too_many_lines)]
async fn run(plan: Plan) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(plan.timeout_s);
    let pki = if plan.tls {
        Some(Pki::open(&plan.pki_dir)?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        latency: Mutex::new(Default::default()),
        items: Default::default(),
        retracts: Default::default(),
        server_closes: Default::default(),
        publish_errors: Default::default(),
        deadline,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<(u32, AgentEvent)>();
    let mut tasks = tokio::task::JoinSet::new();
    for i in plan.lo..plan.hi {
        let tls = match &pki {
            Some(p) => Some(client_tls(p, &Plan::agent_name(i))?),
            None => None,
        };
        let (shared, phase, ev_tx) = (shared.clone(), phase_rx.clone(), ev_tx.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Tag events with the agent index.
        tasks.spawn(async move {
            let fwd = async {
                while let Some(e) = rx.recv().await {
                    let _ = ev_tx.send((i, e));
                }
            };
            tokio::join!(agent::run(i, shared, tls, phase, tx), fwd);
        });
    }
    drop(ev_tx);
    let n = plan.hi - plan.lo;
    let must_converge = (plan.lo..plan.hi).filter(|i| plan.expected(*i) > 0).count() as u32;
    let publishers = (plan.lo..plan.hi)
        .filter(|i| plan.publishes(*i) > 0)
        .count() as u32;

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut cycles: [CycleState; 3] = Default::default();
    let mut setup: [Hist; 3] = Default::default();
    let mut reported_ready = [false; 3];
    let mut reported_converged = [false; 3];
    let mut cycle = 1usize;
    let mut errors = Vec::new();
    let mut failed = 0u32;
    let mut stdin_open = true;

    let report = |ev: &str, c: usize, st: &CycleState, setup: &Hist, errors: &[String]| {
        let lat = shared
            .latency
            .lock()
            .map(|h| h[c].to_sparse())
            .unwrap_or_default();
        Report {
            ev: ev.into(),
            cycle: c as u8,
            agents: n,
            count: match ev {
                "ready" => st.ready.len() as u32,
                "converged" => st.converged.len() as u32,
                _ => st.established.len() as u32,
            },
            first_start: st.established.values().map(|v| v.0).min().unwrap_or(0),
            last_established: st.established.values().map(|v| v.1).max().unwrap_or(0),
            last_ready: st.ready.values().copied().max().unwrap_or(0),
            last_published: st.published.values().copied().max().unwrap_or(0),
            last_converged: st.converged.values().copied().max().unwrap_or(0),
            attempts: st.established.values().map(|v| u64::from(v.2)).sum(),
            setup: setup.to_sparse(),
            latency: lat,
            items: shared.items[c].load(Ordering::Relaxed),
            retracts: shared.retracts[c].load(Ordering::Relaxed),
            server_closes: shared.server_closes.load(Ordering::Relaxed),
            publish_errors: shared.publish_errors.load(Ordering::Relaxed),
            bytes_in: BYTES_IN.load(Ordering::Relaxed),
            bytes_out: BYTES_OUT.load(Ordering::Relaxed),
            cpu_s: procstat::self_cpu(),
            errors: errors.iter().take(5).cloned().collect(),
        }
    };

    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => {
                let line = match line {
                    Ok(Some(l)) => l,
                    _ => {
                        // The coordinator is gone: stop.
                        stdin_open = false;
                        "stop".to_owned()
                    }
                };
                let mut parts = line.split_whitespace();
                let cmd = parts.next().unwrap_or("");
                let t = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                match cmd {
                    "go" => {
                        let _ = phase_tx.send(Phase::Go(t));
                    }
                    "drop" => {
                        cycle = 2;
                        let _ = phase_tx.send(Phase::Drop(t));
                    }
                    "stop" => {
                        let _ = phase_tx.send(Phase::Stop);
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            while tasks.join_next().await.is_some() {}
                        })
                        .await;
                        tasks.abort_all();
                        emit(&report("done", cycle, &cycles[cycle], &setup[cycle], &errors));
                        return Ok(());
                    }
                    _ => {}
                }
            }
            e = ev_rx.recv() => {
                let Some((i, e)) = e else {
                    emit(&report("done", cycle, &cycles[cycle], &setup[cycle], &errors));
                    return Ok(());
                };
                match e {
                    AgentEvent::Established { cycle: c, start, at, attempts } => {
                        let c = usize::from(c.min(2));
                        let first = cycles[c].established.get(&i).map_or(start, |v| v.0);
                        let total = cycles[c].established.get(&i).map_or(0, |v| v.2) + attempts;
                        if !cycles[c].established.contains_key(&i) {
                            setup[c].record(at.saturating_sub(start));
                        }
                        cycles[c].established.insert(i, (first, at, total));
                    }
                    AgentEvent::Ready { cycle: c, at } => {
                        cycles[usize::from(c.min(2))].ready.insert(i, at);
                    }
                    AgentEvent::Published { cycle: c, at } => {
                        cycles[usize::from(c.min(2))].published.insert(i, at);
                    }
                    AgentEvent::Converged { cycle: c, at } => {
                        cycles[usize::from(c.min(2))].converged.insert(i, at);
                    }
                    AgentEvent::Failed { error } => {
                        failed += 1;
                        if errors.len() < 5 {
                            errors.push(error);
                        }
                    }
                }
                for c in 1..=2 {
                    if !reported_ready[c] && cycles[c].ready.len() as u32 + failed >= n {
                        reported_ready[c] = true;
                        emit(&report("ready", c, &cycles[c], &setup[c], &errors));
                    }
                    let done = cycles[c].converged.len() as u32;
                    let published = cycles[c].published.len() as u32;
                    if !reported_converged[c]
                        && (c == 1 || cycle == 2)
                        && reported_ready[c]
                        && done + failed >= must_converge
                        && published + failed >= publishers
                    {
                        reported_converged[c] = true;
                        emit(&report("converged", c, &cycles[c], &setup[c], &errors));
                    }
                }
            }
            () = tokio::time::sleep_until(deadline + Duration::from_secs(2)) => {
                errors.push("worker deadline reached".into());
                emit(&report("failed", cycle, &cycles[cycle], &setup[cycle], &errors));
                return Ok(());
            }
        }
    }
}
