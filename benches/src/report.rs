//! The figures of one run, as JSON (one object per line, for the chart and the results
//! document) and as a table on stdout.

use serde::{Deserialize, Serialize};

/// Everything measured in one run. Fields missing from older JSON lines read as zero.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    /// Free-form label (`--label`).
    pub label: String,
    /// Scenario name.
    pub scenario: String,
    /// Server name.
    pub server: String,
    /// Client profile.
    pub profile: String,
    /// STARTTLS with client certificates.
    pub tls: bool,
    /// Agents (fan-out: subscribers + 1 publisher).
    pub agents: u32,
    /// Subscribers (agents that must receive routes).
    pub subscribers: u32,
    /// Routes per publisher.
    pub routes: u32,
    /// VRFs.
    pub vrfs: u32,
    /// Generator processes.
    pub procs: u32,
    /// Whether every agent converged (and nothing failed).
    pub ok: bool,

    /// First connect → last established (s).
    pub established_s: f64,
    /// Agents / `established_s`.
    pub setup_rate_per_s: f64,
    /// First connect → last subscribed (s).
    pub ready_s: f64,
    /// Per-agent connect → established, median and 99th percentile (ms).
    pub setup_p50_ms: f64,
    /// See `setup_p50_ms`.
    pub setup_p99_ms: f64,
    /// Connect attempts over agents (1.0: nobody retried).
    pub attempts_per_agent: f64,

    /// Go → every agent holds every route (s).
    pub converge_s: f64,
    /// Route items received by all agents.
    pub deliveries: u64,
    /// Deliveries the plan expects.
    pub expected: u64,
    /// `deliveries / converge_s`.
    pub deliveries_per_s: f64,
    /// Publish → delivery (ms).
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_max_ms: f64,

    /// Storm: drop → every agent reconnected and subscribed (s).
    pub storm_reestablished_s: f64,
    /// Storm: drop → every agent holds every route again (s).
    pub storm_converge_s: f64,
    /// Storm: connect attempts per agent in the reconnect.
    pub storm_attempts_per_agent: f64,
    /// Storm: per-agent reconnect → established, median and 99th percentile (ms).
    pub storm_setup_p50_ms: f64,
    /// See `storm_setup_p50_ms`.
    pub storm_setup_p99_ms: f64,
    /// Storm: server CPU seconds from the drop to convergence.
    pub storm_server_cpu_s: f64,
    /// Sessions the server closed (storm: name still held by the old session, retried).
    pub server_closes: u64,

    /// Server CPU seconds while agents connected (start → all subscribed).
    pub server_cpu_setup_s: f64,
    /// Server CPU seconds from go to convergence (and, storm, through the reconnect).
    pub server_cpu_run_s: f64,
    /// `server_cpu_run_s` per 100 000 deliveries.
    pub server_cpu_per_100k: f64,
    /// Server RSS before agents connected (KiB).
    pub server_rss_start_kib: u64,
    /// Server RSS with every agent subscribed (KiB).
    pub server_rss_ready_kib: u64,
    /// Server peak RSS, VmHWM (KiB).
    pub server_hwm_kib: u64,
    /// `(rss_ready − rss_start) / agents` (KiB).
    pub rss_per_session_kib: f64,

    /// TCP bytes the agents received (TLS records included).
    pub bytes_in: u64,
    /// TCP bytes the agents sent.
    pub bytes_out: u64,
    /// `bytes_in / deliveries` during the run phase.
    pub wire_bytes_per_delivery: f64,
    /// Generator CPU seconds (all workers).
    pub generator_cpu_s: f64,
    /// The machine's 1-minute load average when the run started (other work on the box
    /// competes with the pinned server and generator).
    pub loadavg_start: f64,
    /// Failures, first few.
    pub errors: Vec<String>,
}

fn f(v: f64, digits: usize) -> String {
    if v == 0.0 {
        "-".into()
    } else {
        format!("{v:.digits$}")
    }
}

impl RunResult {
    /// A compact human table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            (
                "run",
                format!(
                    "{} on {} ({}{}), {} agents, {} routes/publisher, {} VRFs, {} generator procs",
                    self.scenario,
                    self.server,
                    self.profile,
                    if self.tls { ", TLS" } else { ", plain" },
                    self.agents,
                    self.routes,
                    self.vrfs,
                    self.procs
                ),
            ),
            ("ok", self.ok.to_string()),
            (
                "all established",
                format!(
                    "{} s ({} /s; per agent p50 {} ms, p99 {} ms; {} attempts/agent)",
                    f(self.established_s, 3),
                    f(self.setup_rate_per_s, 0),
                    f(self.setup_p50_ms, 1),
                    f(self.setup_p99_ms, 1),
                    f(self.attempts_per_agent, 2)
                ),
            ),
            ("all subscribed", format!("{} s", f(self.ready_s, 3))),
        ];
        if self.expected > 0 {
            rows.extend([
                (
                    "full convergence",
                    format!(
                        "{} s ({} of {} deliveries)",
                        f(self.converge_s, 3),
                        self.deliveries,
                        self.expected
                    ),
                ),
                ("deliveries/s", f(self.deliveries_per_s, 0)),
                (
                    "publish→delivery",
                    format!(
                        "p50 {} ms, p99 {} ms, max {} ms",
                        f(self.latency_p50_ms, 2),
                        f(self.latency_p99_ms, 2),
                        f(self.latency_max_ms, 2)
                    ),
                ),
            ]);
        }
        if self.storm_converge_s > 0.0 {
            rows.extend([
                (
                    "storm reconnect",
                    format!(
                        "all re-subscribed {} s (per agent p50 {} ms, p99 {} ms), all converged {} s, server CPU {} s, {} attempts/agent, {} server closes",
                        f(self.storm_reestablished_s, 3),
                        f(self.storm_setup_p50_ms, 1),
                        f(self.storm_setup_p99_ms, 1),
                        f(self.storm_converge_s, 3),
                        f(self.storm_server_cpu_s, 2),
                        f(self.storm_attempts_per_agent, 2),
                        self.server_closes
                    ),
                ),
            ]);
        }
        rows.extend([
            (
                "server CPU",
                format!(
                    "set-up {} s, run {} s, {} s per 100k deliveries",
                    f(self.server_cpu_setup_s, 2),
                    f(self.server_cpu_run_s, 2),
                    f(self.server_cpu_per_100k, 3)
                ),
            ),
            (
                "server memory",
                format!(
                    "RSS start {} KiB, all subscribed {} KiB, peak {} KiB, {} KiB/session",
                    self.server_rss_start_kib,
                    self.server_rss_ready_kib,
                    self.server_hwm_kib,
                    f(self.rss_per_session_kib, 1)
                ),
            ),
            (
                "wire",
                format!(
                    "agents received {} B, sent {} B, {} B per delivery",
                    self.bytes_in,
                    self.bytes_out,
                    f(self.wire_bytes_per_delivery, 0)
                ),
            ),
            (
                "generator CPU",
                format!(
                    "{} s (load average at start {:.2})",
                    f(self.generator_cpu_s, 2),
                    self.loadavg_start
                ),
            ),
        ]);
        for e in &self.errors {
            rows.push(("error", e.clone()));
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("  {k:<w$}  {v}\n"))
            .collect()
    }
}

/// The median of `v` (by value; the middle run of an odd count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
