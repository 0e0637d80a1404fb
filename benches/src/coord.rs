//! The coordinator: prepares certificates, starts the server, starts the worker processes,
//! steps them through the phases (connect → go → [drop] → stop), samples the server's
//! `/proc` figures between phases, and turns the workers' reports into a [`RunResult`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use xmpp_core::stanza::ns;
use xmpp_core::tls::{ClientTls, ClientTlsOptions, server_name};
use xmpp_core::xml::Element;

use crate::agent::now_us;
use crate::client::{self, Login};
use crate::hist::Hist;
use crate::pki::Pki;
use crate::plan::{Plan, Profile, Scenario};
use crate::procstat::{self, Sample};
use crate::report::RunResult;
use crate::servers::{Server, ServerKind, ServerOpts, wrapped};
use crate::worker::Report;

/// The XEP-0060 owner namespace (node deletion).
const PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";

/// One run's settings (from the command line).
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// The plan template (`lo`, `hi`, `server`, `epoch_us` are filled per run).
    pub plan: Plan,
    /// Server to start (or `External`).
    pub server: ServerOpts,
    /// External server address.
    pub connect: Option<std::net::SocketAddr>,
    /// External server pid (for `/proc` figures).
    pub server_pid: Option<u32>,
    /// Worker processes.
    pub procs: u32,
    /// `taskset -c` list for the workers.
    pub gen_cpus: String,
    /// Seconds to wait after all subscribed before reading memory (idle).
    pub settle_s: f64,
    /// Label.
    pub label: String,
    /// Print progress lines on stderr.
    pub verbose: bool,
}

struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: mpsc::UnboundedReceiver<(usize, Report)>,
}

impl Workers {
    async fn send(&mut self, line: &str) {
        for s in &mut self.stdins {
            let _ = s.write_all(format!("{line}\n").as_bytes()).await;
            let _ = s.flush().await;
        }
    }

    /// Waits until every worker reported `ev` for `cycle`; a `failed` report or the
    /// deadline ends the wait with an error.
    async fn wait_all(&mut self, ev: &str, cycle: u8, deadline: Instant) -> Result<Vec<Report>> {
        let n = self.children.len();
        let mut got: Vec<Option<Report>> = vec![None; n];
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = tokio::time::timeout(left, self.rx.recv())
                .await
                .map_err(|_| anyhow!("timed out waiting for all workers to be {ev}"))?;
            let Some((w, r)) = r else {
                bail!("workers exited before all were {ev}");
            };
            if r.ev == "failed" || r.ev == "done" {
                bail!("worker {w} ended early ({}): {:?}", r.ev, r.errors);
            }
            if r.ev == ev && r.cycle == cycle {
                got[w] = Some(r);
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    async fn stop(mut self) -> Vec<Report> {
        self.send("stop").await;
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < self.children.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some((_, r))) if r.ev == "done" || r.ev == "failed" => done.push(r),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        drop(self.stdins);
        for mut c in self.children {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.start_kill();
            }
        }
        done
    }
}

fn spawn_workers(opts: &RunOpts, plan: &Plan, log_dir: &std::path::Path) -> Result<Workers> {
    let exe = std::env::current_exe()?.display().to_string();
    let procs = opts.procs.clamp(1, plan.agents.max(1));
    let per = plan.agents.div_ceil(procs);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    for w in 0..procs {
        let mut p = plan.clone();
        p.lo = w * per;
        p.hi = ((w + 1) * per).min(plan.agents);
        if p.lo >= p.hi {
            break;
        }
        let args = vec![
            "worker".to_owned(),
            "--plan-json".to_owned(),
            serde_json::to_string(&p)?,
        ];
        let log = std::fs::File::create(log_dir.join(format!("worker-{w}.log")))?;
        let mut child = wrapped(&opts.gen_cpus, &exe, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        stdins.push(child.stdin.take().context("worker stdin")?);
        let tx = tx.clone();
        let idx = children.len();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(r) = serde_json::from_str::<Report>(&l) {
                    let _ = tx.send((idx, r));
                }
            }
        });
        children.push(child);
    }
    Ok(Workers {
        children,
        stdins,
        rx,
    })
}

/// RFC profile: agent 0 (the publisher, an admin on Prosody) deletes and re-creates the
/// node so every run starts empty and agent 0 owns it.
async fn rfc_setup(plan: &Plan, pki: &Pki) -> Result<()> {
    let name = Plan::agent_name(0);
    let tls = ClientTls::load(&pki.client_files(&name), &ClientTlsOptions::default())?;
    let login = Login::Rfc {
        user: name,
        domain: plan.domain.clone(),
        resource: "setup".into(),
    };
    let mut s = client::open(
        plan.server,
        &login,
        Some((tls.current(), server_name("localhost")?)),
        Duration::from_secs(15),
    )
    .await
    .context("RFC setup login")?;
    s.reader.feed(&s.leftover);
    let del = Element::new("iq")
        .attr("type", "set")
        .attr("to", plan.pubsub.clone())
        .attr("id", "del1")
        .child(
            Element::with_ns("pubsub", PUBSUB_OWNER)
                .child(Element::new("delete").attr("node", plan.node.clone())),
        );
    client::send_el(s.io.as_mut(), &del).await?;
    // A missing node answers with an error: fine.
    let _ = client::iq_result(s.io.as_mut(), &mut s.reader, "del1").await;
    let create = Element::new("iq")
        .attr("type", "set")
        .attr("to", plan.pubsub.clone())
        .attr("id", "create1")
        .child(
            Element::with_ns("pubsub", ns::PUBSUB)
                .child(Element::new("create").attr("node", plan.node.clone())),
        );
    client::send_el(s.io.as_mut(), &create).await?;
    client::iq_result(s.io.as_mut(), &mut s.reader, "create1")
        .await
        .context("creating the pubsub node")?;
    client::send_el(
        s.io.as_mut(),
        &Element::new("presence").attr("type", "unavailable"),
    )
    .await?;
    Ok(())
}

fn ms(us: Option<u64>) -> f64 {
    us.map_or(0.0, |v| v as f64 / 1000.0)
}

fn merge(reports: &[Report], f: impl Fn(&Report) -> &crate::hist::SparseHist) -> Hist {
    let mut h = Hist::default();
    for r in reports {
        h.merge(&Hist::from_sparse(f(r)));
    }
    h
}

/// Runs one scenario end to end.
#[allow(clippy::too_many_lines)]
pub async fn run_once(opts: &RunOpts) -> Result<RunResult> {
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let mut plan = opts.plan.clone();
    let work = opts.server.work.clone();
    std::fs::create_dir_all(&work)?;
    let needs_pki = plan.tls || plan.profile == Profile::Rfc;
    let pki = if needs_pki {
        let p = Pki::open(&plan.pki_dir)?;
        let names: Vec<String> = (0..plan.agents).map(Plan::agent_name).collect();
        let t = Instant::now();
        let issued = p.ensure_clients(&names, &plan.domain)?;
        if issued > 0 && opts.verbose {
            eprintln!(
                "loadgen: issued {issued} client certificates in {:.1} s (cached in {})",
                t.elapsed().as_secs_f64(),
                p.dir().display()
            );
        }
        Some(p)
    } else {
        None
    };
    let mut server = match opts.server.kind {
        ServerKind::External => None,
        _ => Some(Server::start(&opts.server, pki.as_ref()).await?),
    };
    let result = async {
        let (addr, pid) = match &server {
            Some(s) => (s.addr, Some(s.pid)),
            None => (
                opts.connect
                    .context("--connect is required with --server external")?,
                opts.server_pid,
            ),
        };
        plan.server = addr;
        plan.epoch_us = now_us(0);
        let sample = || pid.map(procstat::sample).unwrap_or_default();
        if plan.profile == Profile::Rfc && !plan.publisher_subscribes {
            rfc_setup(&plan, pki.as_ref().context("PKI")?).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(plan.timeout_s + 5);
        let s_start = sample();
        let mut workers = spawn_workers(opts, &plan, &work)?;
        let res = drive(opts, &plan, &mut workers, deadline, &sample).await;
        let done = workers.stop().await;
        let (mut r, samples) = res?;
        r.generator_cpu_s = done.iter().map(|d| d.cpu_s).sum();
        if let Some(last) = done
            .iter()
            .map(|d| (d.bytes_in, d.bytes_out))
            .reduce(|a, b| (a.0 + b.0, a.1 + b.1))
        {
            r.bytes_in = last.0;
            r.bytes_out = last.1;
        }
        let end = sample();
        r.server_rss_start_kib = s_start.rss_kib;
        r.server_cpu_setup_s = samples.0.cpu_s - s_start.cpu_s;
        r.server_rss_ready_kib = samples.0.rss_kib;
        r.server_hwm_kib = end.hwm_kib.max(samples.1.hwm_kib);
        r.server_cpu_run_s = samples.1.cpu_s - samples.0.cpu_s;
        if r.deliveries > 0 {
            r.server_cpu_per_100k = r.server_cpu_run_s / r.deliveries as f64 * 100_000.0;
        }
        if plan.agents > 0 && samples.0.rss_kib > s_start.rss_kib {
            r.rss_per_session_kib =
                (samples.0.rss_kib - s_start.rss_kib) as f64 / f64::from(plan.agents);
        }
        Ok::<_, anyhow::Error>(r)
    }
    .await;
    if let Some(s) = &mut server {
        s.stop().await;
    }
    let mut r = result?;
    r.loadavg_start = loadavg;
    r.label = opts.label.clone();
    r.scenario = plan.scenario.name().into();
    r.server = opts.server.kind.name().into();
    r.profile = match plan.profile {
        Profile::Contrail => "contrail".into(),
        Profile::Rfc => "rfc".into(),
    };
    r.tls = plan.tls;
    r.agents = plan.agents;
    r.subscribers = (0..plan.agents).filter(|i| plan.expected(*i) > 0).count() as u32;
    r.routes = plan.routes;
    r.vrfs = match plan.scenario {
        Scenario::Fanout | Scenario::Mesh => 1,
        _ => plan.vrfs,
    };
    r.procs = opts.procs;
    Ok(r)
}

type Samples = (Sample, Sample);

#[allow(clippy::too_many_lines)]
async fn drive(
    opts: &RunOpts,
    plan: &Plan,
    workers: &mut Workers,
    deadline: Instant,
    sample: &impl Fn() -> Sample,
) -> Result<(RunResult, Samples)> {
    let mut r = RunResult::default();
    let progress = |s: &str| {
        if opts.verbose {
            eprintln!("loadgen: {s}");
        }
    };
    let ready = workers.wait_all("ready", 1, deadline).await?;
    let first = ready
        .iter()
        .map(|x| x.first_start)
        .filter(|v| *v > 0)
        .min()
        .unwrap_or(0);
    let last_est = ready.iter().map(|x| x.last_established).max().unwrap_or(0);
    let last_ready = ready.iter().map(|x| x.last_ready).max().unwrap_or(0);
    let count: u32 = ready.iter().map(|x| x.count).sum();
    let mut errors: Vec<String> = ready.iter().flat_map(|x| x.errors.clone()).collect();
    r.established_s = last_est.saturating_sub(first) as f64 / 1e6;
    if r.established_s > 0.0 {
        r.setup_rate_per_s = f64::from(count) / r.established_s;
    }
    r.ready_s = last_ready.saturating_sub(first) as f64 / 1e6;
    let setup = merge(&ready, |x| &x.setup);
    r.setup_p50_ms = ms(setup.quantile(0.5));
    r.setup_p99_ms = ms(setup.quantile(0.99));
    r.attempts_per_agent =
        ready.iter().map(|x| x.attempts).sum::<u64>() as f64 / f64::from(count.max(1));
    progress(&format!("{count} agents subscribed in {:.3} s", r.ready_s));
    if opts.settle_s > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(opts.settle_s)).await;
    }
    let s_ready = sample();
    let bytes_ready: u64 = ready.iter().map(|x| x.bytes_in).sum();
    r.expected = plan.total_expected();
    let t_go = now_us(plan.epoch_us);
    workers.send(&format!("go {t_go}")).await;
    let mut s_end = s_ready;
    let mut ok = count == plan.agents;
    if plan.scenario != Scenario::Idle {
        let conv = workers.wait_all("converged", 1, deadline).await?;
        s_end = sample();
        let last = conv
            .iter()
            .map(|x| x.last_converged.max(x.last_published))
            .max()
            .unwrap_or(0);
        r.converge_s = last.saturating_sub(t_go) as f64 / 1e6;
        r.deliveries = conv.iter().map(|x| x.items).sum();
        if r.converge_s > 0.0 {
            r.deliveries_per_s = r.deliveries as f64 / r.converge_s;
        }
        let lat = merge(&conv, |x| &x.latency);
        r.latency_p50_ms = ms(lat.quantile(0.5));
        r.latency_p99_ms = ms(lat.quantile(0.99));
        r.latency_max_ms = ms(lat.quantile(1.0));
        let bytes_conv: u64 = conv.iter().map(|x| x.bytes_in).sum();
        if r.deliveries > 0 {
            r.wire_bytes_per_delivery =
                bytes_conv.saturating_sub(bytes_ready) as f64 / r.deliveries as f64;
        }
        r.server_closes = conv.iter().map(|x| x.server_closes).sum();
        errors.extend(conv.iter().flat_map(|x| x.errors.clone()));
        ok &= r.deliveries >= r.expected;
        progress(&format!(
            "converged in {:.3} s: {} deliveries, {:.0}/s",
            r.converge_s, r.deliveries, r.deliveries_per_s
        ));
        if plan.scenario == Scenario::Storm {
            let s_before = s_end;
            let t_drop = now_us(plan.epoch_us);
            workers.send(&format!("drop {t_drop}")).await;
            let re = workers.wait_all("ready", 2, deadline).await?;
            let conv2 = workers.wait_all("converged", 2, deadline).await?;
            r.storm_server_cpu_s = sample().cpu_s - s_before.cpu_s;
            let last_ready2 = re.iter().map(|x| x.last_ready).max().unwrap_or(0);
            let last_conv2 = conv2.iter().map(|x| x.last_converged).max().unwrap_or(0);
            let setup2 = merge(&re, |x| &x.setup);
            r.storm_setup_p50_ms = ms(setup2.quantile(0.5));
            r.storm_setup_p99_ms = ms(setup2.quantile(0.99));
            r.storm_reestablished_s = last_ready2.saturating_sub(t_drop) as f64 / 1e6;
            r.storm_converge_s = last_conv2.saturating_sub(t_drop) as f64 / 1e6;
            r.storm_attempts_per_agent = conv2.iter().map(|x| x.attempts).sum::<u64>() as f64
                / f64::from(plan.agents.max(1));
            r.server_closes = conv2.iter().map(|x| x.server_closes).sum();
            errors.extend(conv2.iter().flat_map(|x| x.errors.clone()));
            progress(&format!(
                "storm: re-subscribed in {:.3} s, converged in {:.3} s",
                r.storm_reestablished_s, r.storm_converge_s
            ));
        }
    }
    errors.truncate(5);
    ok &= errors.is_empty();
    r.ok = ok;
    r.errors = errors;
    Ok((r, (s_ready, s_end)))
}

/// Where the control node binary is: `--server-bin`, else `control-node-bench` next to
/// this executable.
pub fn default_control_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("control-node-bench")))
        .unwrap_or_else(|| PathBuf::from("control-node-bench"))
}
