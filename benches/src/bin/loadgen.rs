//! `loadgen`: the end-to-end load generator. See `benches/README.md`.
//!
//! ```text
//! loadgen run --scenario fanout --agents 100 --routes 1000      # one scenario
//! loadgen suite                                                  # every scenario, documented sizes
//! loadgen compare --repeat 3                                     # fan-out vs Prosody and ejabberd
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use benches::coord::{RunOpts, default_control_bin, run_once};
use benches::plan::{Plan, Profile, Scenario};
use benches::report::{RunResult, median};
use benches::servers::{ServerKind, ServerOpts};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Load generator for the control node (and Prosody/ejabberd side by side)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one scenario and print its figures.
    Run(RunArgs),
    /// Run every scenario at the sizes in the README, one after the other.
    Suite {
        /// Smaller sizes (a quick look, about a minute).
        #[arg(long)]
        quick: bool,
        /// Tiny sizes, every scenario in a few seconds (CI: the generator cannot rot).
        #[arg(long, conflicts_with = "quick")]
        smoke: bool,
        #[command(flatten)]
        common: Common,
    },
    /// The fan-out workload against our control node, Prosody and ejabberd, median of runs.
    Compare(CompareArgs),
    /// Internal: one worker process (started by the coordinator).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        plan_json: String,
    },
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// CPUs for the server (`taskset -c` list; empty: no pinning).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs for the generator's worker processes.
    #[arg(long, default_value = "1")]
    gen_cpus: String,
    /// The control node binary (default: `control-node-bench` next to this program).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Certificate cache.
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// Scratch directory (server configurations and logs, worker logs).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Every run ends after this many seconds, converged or not.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Append each run's JSON object (one line) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The control node's `log_level`.
    #[arg(long, default_value = "SYS_NOTICE")]
    log_level: String,
    /// Progress on stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// fanout | mesh | vrfs | storm | idle.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Agents (fan-out: subscribers; the publisher is one more). Default per scenario.
    #[arg(long, short = 'n')]
    agents: Option<u32>,
    /// Routes per publishing agent. Default per scenario.
    #[arg(long, short = 'm')]
    routes: Option<u32>,
    /// VRFs for vrfs/storm/idle.
    #[arg(long, default_value_t = 100)]
    vrfs: u32,
    /// No TLS (plain TCP; the storm always uses mutual TLS).
    #[arg(long)]
    plain: bool,
    /// contrail (agents) | rfc (SASL EXTERNAL + XEP-0060; fan-out only).
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// control-node | prosody | ejabberd | external.
    #[arg(long, value_enum, default_value = "control-node")]
    server: ServerKind,
    /// With `--server external`: its address.
    #[arg(long)]
    connect: Option<std::net::SocketAddr>,
    /// With `--server external`: its pid, for CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Generator processes (default: one per 5000 agents).
    #[arg(long)]
    procs: Option<u32>,
    /// RFC: publishes in flight.
    #[arg(long, default_value_t = 50)]
    window: u32,
    /// Publisher pacing, routes/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Seconds to wait once all are subscribed before reading memory.
    #[arg(long)]
    settle: Option<f64>,
    /// Label stored in the JSON.
    #[arg(long, default_value = "")]
    label: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Args)]
struct CompareArgs {
    /// Subscriber counts.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    subscribers: Vec<u32>,
    /// Servers.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "control-node,prosody,ejabberd"
    )]
    servers: Vec<ServerKind>,
    /// Items published (per run).
    #[arg(long, default_value_t = 200)]
    routes: u32,
    /// Runs per point (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Profile for our control node (`rfc` once it offers SASL EXTERNAL + XEP-0060).
    #[arg(long, value_enum, default_value = "contrail")]
    control_profile: Profile,
    /// RFC: publishes in flight.
    #[arg(long, default_value_t = 50)]
    window: u32,
    #[command(flatten)]
    common: Common,
}

fn defaults(s: Scenario) -> (u32, u32) {
    match s {
        Scenario::Fanout => (100, 1000),
        Scenario::Mesh => (100, 10),
        Scenario::Vrfs => (1000, 10),
        Scenario::Storm => (2000, 5),
        Scenario::Idle => (10_000, 0),
    }
}

fn opts(a: &RunArgs) -> RunOpts {
    let c = &a.common;
    let (n, m) = defaults(a.scenario);
    let n = a.agents.unwrap_or(n);
    let agents = if a.scenario == Scenario::Fanout {
        n + 1
    } else {
        n
    };
    let tls = a.scenario == Scenario::Storm || !a.plain;
    let profile = a.profile.unwrap_or(match a.server {
        ServerKind::Prosody | ServerKind::Ejabberd => Profile::Rfc,
        _ => Profile::Contrail,
    });
    let work = c.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("contrail-loadgen-{}", std::process::id()))
    });
    let pki_dir = c.pki_dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm.join("contrail-bench-pki")
        } else {
            std::env::temp_dir().join("contrail-bench-pki")
        }
    });
    RunOpts {
        plan: Plan {
            scenario: a.scenario,
            agents,
            routes: if a.scenario == Scenario::Idle {
                0
            } else {
                a.routes.unwrap_or(m)
            },
            vrfs: a.vrfs,
            tls,
            profile,
            server: ([127, 0, 0, 1], 0).into(),
            epoch_us: 0,
            pki_dir,
            domain: "ccert.localhost".into(),
            pubsub: "pubsub.localhost".into(),
            // Our control node serves VRFs as nodes (subscribe to the VRF, publish to
            // `AFI/SAFI/VRF`); Prosody and ejabberd get one node `bench`, created first.
            node: if a.server == ServerKind::ControlNode {
                Plan::vrf_name(0)
            } else {
                "bench".into()
            },
            publish_node: if a.server == ServerKind::ControlNode {
                format!("1/1/{}", Plan::vrf_name(0))
            } else {
                "bench".into()
            },
            publisher_subscribes: a.server == ServerKind::ControlNode,
            window: a.window.max(1),
            rate: a.rate,
            timeout_s: c.timeout,
            keepalive_s: 30,
            lo: 0,
            hi: 0,
        },
        server: ServerOpts {
            kind: a.server,
            cpus: c.server_cpus.clone(),
            control_bin: c.server_bin.clone().unwrap_or_else(default_control_bin),
            tls,
            work,
            log_level: c.log_level.clone(),
        },
        connect: a.connect,
        server_pid: a.server_pid,
        procs: a.procs.unwrap_or(agents.div_ceil(5000)).max(1),
        gen_cpus: c.gen_cpus.clone(),
        settle_s: a.settle.unwrap_or(if a.scenario == Scenario::Idle {
            2.0
        } else {
            0.0
        }),
        label: a.label.clone(),
        verbose: c.verbose,
    }
}

fn save(json: Option<&PathBuf>, r: &RunResult) -> Result<()> {
    if let Some(path) = json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{}", serde_json::to_string(r)?)?;
    }
    Ok(())
}

async fn run_and_print(a: &RunArgs) -> Result<RunResult> {
    let o = opts(a);
    let r = run_once(&o).await?;
    println!("{}", r.table());
    println!("{}", serde_json::to_string(&r)?);
    save(a.common.json.as_ref(), &r)?;
    let _ = std::fs::remove_dir_all(&o.server.work);
    Ok(r)
}

fn run_args(common: &Common, scenario: Scenario, agents: u32, routes: u32, vrfs: u32) -> RunArgs {
    RunArgs {
        scenario,
        agents: Some(agents),
        routes: Some(routes),
        vrfs,
        plain: false,
        profile: None,
        server: ServerKind::ControlNode,
        connect: None,
        server_pid: None,
        procs: None,
        window: 50,
        rate: 0,
        settle: None,
        label: "suite".into(),
        common: common.clone(),
    }
}

async fn suite(quick: bool, smoke: bool, common: &Common) -> Result<bool> {
    let sizes: Vec<(Scenario, u32, u32, u32)> = if smoke {
        vec![
            (Scenario::Fanout, 5, 20, 1),
            (Scenario::Mesh, 5, 5, 1),
            (Scenario::Vrfs, 20, 2, 4),
            (Scenario::Storm, 20, 2, 4),
            (Scenario::Idle, 20, 0, 4),
        ]
    } else if quick {
        vec![
            (Scenario::Fanout, 10, 1000, 1),
            (Scenario::Fanout, 100, 1000, 1),
            (Scenario::Mesh, 100, 10, 1),
            (Scenario::Vrfs, 1000, 10, 100),
            (Scenario::Storm, 500, 5, 100),
            (Scenario::Idle, 2000, 0, 100),
        ]
    } else {
        vec![
            (Scenario::Fanout, 10, 1000, 1),
            (Scenario::Fanout, 100, 1000, 1),
            (Scenario::Fanout, 1000, 1000, 1),
            (Scenario::Mesh, 100, 10, 1),
            (Scenario::Mesh, 1000, 1, 1),
            (Scenario::Vrfs, 1000, 10, 100),
            (Scenario::Storm, 2000, 5, 100),
            (Scenario::Idle, 10_000, 0, 100),
        ]
    };
    let mut all_ok = true;
    for (s, n, m, v) in sizes {
        match run_and_print(&run_args(common, s, n, m, v)).await {
            Ok(r) => all_ok &= r.ok,
            Err(e) => {
                eprintln!("loadgen: {} n={n}: {e:#}", s.name());
                all_ok = false;
            }
        }
    }
    Ok(all_ok)
}

async fn compare(a: &CompareArgs) -> Result<bool> {
    let mut rows = Vec::new();
    let mut all_ok = true;
    for &n in &a.subscribers {
        let mut per: Vec<(ServerKind, Vec<RunResult>)> =
            a.servers.iter().map(|s| (*s, Vec::new())).collect();
        // Interleave the servers run by run, so slow drift of the machine hits all alike.
        for rep in 0..a.repeat {
            for (server, results) in &mut per {
                let mut ra = run_args(&a.common, Scenario::Fanout, n, a.routes, 1);
                ra.server = *server;
                ra.window = a.window;
                ra.profile = Some(match server {
                    ServerKind::ControlNode => a.control_profile,
                    _ => Profile::Rfc,
                });
                ra.label = "compare".into();
                eprintln!(
                    "loadgen: compare {} subscribers={n} run {}",
                    server.name(),
                    rep + 1
                );
                match run_and_print(&ra).await {
                    Ok(r) => {
                        all_ok &= r.ok;
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("loadgen: {} n={n}: {e:#}", server.name());
                        all_ok = false;
                    }
                }
            }
        }
        for (server, results) in per {
            let dps = median(results.iter().map(|r| r.deliveries_per_s).collect());
            let cpu = median(results.iter().map(|r| r.server_cpu_per_100k).collect());
            let p50 = median(results.iter().map(|r| r.latency_p50_ms).collect());
            let p99 = median(results.iter().map(|r| r.latency_p99_ms).collect());
            rows.push((n, server, dps, cpu, p50, p99, results.len()));
        }
    }
    println!(
        "\nfan-out, {} items, median of {} runs:",
        a.routes, a.repeat
    );
    println!(
        "  {:>11}  {:<13} {:>13} {:>20} {:>9} {:>9} {:>10} {:>10}",
        "subscribers",
        "server",
        "deliveries/s",
        "CPU-s/100k deliv.",
        "p50 ms",
        "p99 ms",
        "ours/this",
        "CPU ratio"
    );
    for &(n, server, dps, cpu, p50, p99, runs) in &rows {
        let ours = rows
            .iter()
            .find(|r| r.0 == n && r.1 == ServerKind::ControlNode)
            .map(|r| (r.2, r.3));
        let (ratio, cpu_ratio) = match ours {
            Some((o, oc)) if dps > 0.0 && oc > 0.0 => (o / dps, cpu / oc),
            _ => (0.0, 0.0),
        };
        println!(
            "  {n:>11}  {:<13} {dps:>13.0} {cpu:>20.3} {p50:>9.2} {p99:>9.2} {ratio:>10.2} {cpu_ratio:>10.2}{}",
            server.name(),
            if runs < a.repeat as usize {
                "  (incomplete)"
            } else {
                ""
            }
        );
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Worker { plan_json } = &cli.cmd {
        let plan: Plan = match serde_json::from_str(plan_json) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("loadgen worker: bad plan: {e}");
                return ExitCode::from(2);
            }
        };
        return match benches::worker::main(plan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen worker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &cli.cmd {
            Cmd::Run(a) => run_and_print(a).await.map(|r| r.ok),
            Cmd::Suite {
                quick,
                smoke,
                common,
            } => suite(*quick, *smoke, common).await,
            Cmd::Compare(a) => compare(a).await,
            Cmd::Worker { .. } => Ok(true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loadgen: some runs did not converge (see the errors above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
