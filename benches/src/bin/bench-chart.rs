//! `bench-chart`: draws the side-by-side chart (deliveries/s and server CPU-seconds per
//! 100k deliveries against subscriber count, one line per server, median of the runs) from
//! the JSON lines `loadgen compare --json FILE` appends.
//!
//! `bench-chart RESULTS.jsonl OUT-PREFIX` writes `OUT-PREFIX-deliveries.svg` and
//! `OUT-PREFIX-cpu.svg`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use benches::chart::{line_chart, median_series};
use benches::report::RunResult;

fn run(input: &str, prefix: &str) -> Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?;
    let runs: Vec<RunResult> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &RunResult| r.label == "compare" && r.scenario == "fanout" && r.ok)
        .collect();
    anyhow::ensure!(!runs.is_empty(), "no completed `compare` runs in {input}");
    let name = |r: &RunResult| format!("{} ({})", r.server, r.profile);
    let dps: Vec<_> = runs
        .iter()
        .map(|r| (name(r), f64::from(r.subscribers), r.deliveries_per_s))
        .collect();
    let cpu: Vec<_> = runs
        .iter()
        .map(|r| (name(r), f64::from(r.subscribers), r.server_cpu_per_100k))
        .collect();
    let a = line_chart(
        "Fan-out: deliveries per second (server on 1 core, TLS)",
        "subscribers (log scale)",
        "deliveries/s (log scale)",
        &median_series(&dps),
        true,
    );
    let b = line_chart(
        "Fan-out: server CPU-seconds per 100k deliveries",
        "subscribers (log scale)",
        "CPU-s per 100k deliveries (log scale)",
        &median_series(&cpu),
        true,
    );
    for (suffix, svg) in [("deliveries", a), ("cpu", b)] {
        let path = format!("{prefix}-{suffix}.svg");
        std::fs::write(&path, svg).with_context(|| format!("writing {path}"))?;
        println!("wrote {path}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, prefix] = args.as_slice() else {
        eprintln!("usage: bench-chart RESULTS.jsonl OUT-PREFIX");
        return ExitCode::from(2);
    };
    match run(input, prefix) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-chart: {e:#}");
            ExitCode::FAILURE
        }
    }
}
