//! CPU time and memory of a server process tree, read from `/proc` (Linux only).
//!
//! A server may run under a wrapper (`setpriv` for Prosody, `ejabberdctl` → `su` →
//! `beam.smp` for ejabberd), so every figure is the sum over the process and its
//! descendants at the time of the read.

use std::fs;

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds of the tree.
    pub cpu_s: f64,
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident memory (`VmHWM`), KiB, summed over the tree.
    pub hwm_kib: u64,
    /// Processes counted.
    pub procs: usize,
}

fn clock_ticks() -> f64 {
    // `getconf CLK_TCK` is 100 on every Linux this runs on; reading it needs libc.
    100.0
}

/// `(ppid, utime+stime ticks)` of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `root` and all its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((ppid, _)) = stat(pid)
            {
                all.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Reads the tree under `root`.
/// CPU nanoseconds of a process's live threads (`/proc/PID/task/*/schedstat`, first field):
/// nanosecond resolution, where `stat` counts 10 ms ticks (a short run of a fast server
/// uses only a few ticks). Threads that already exited are not counted.
fn schedstat_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let s = fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Reads the tree under `root`. CPU is the nanosecond figure of the live threads, unless
/// threads that have exited make the tick count larger (then the ticks).
pub fn sample(root: u32) -> Sample {
    let mut s = Sample::default();
    for pid in tree(root) {
        let Some((_, ticks)) = stat(pid) else {
            continue;
        };
        let by_ticks = ticks as f64 / clock_ticks();
        s.cpu_s += match schedstat_ns(pid) {
            Some(ns) if ns as f64 / 1e9 + 0.02 >= by_ticks => ns as f64 / 1e9,
            _ => by_ticks,
        };
        s.rss_kib += status_kib(pid, "VmRSS:");
        s.hwm_kib += status_kib(pid, "VmHWM:");
        s.procs += 1;
    }
    s
}

/// This process's own CPU seconds.
pub fn self_cpu() -> f64 {
    stat(std::process::id()).map_or(0.0, |(_, t)| t as f64 / clock_ticks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id());
        assert!(s.procs >= 1);
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
