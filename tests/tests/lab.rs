//! The one-command lab (`contrail-kit lab`), run as a real process on the current code:
//! three agents with TLS on both channels, and `--plain`; both must converge (every agent
//! learns every other agent's routes, every VM name resolves through the DNS node) and stop
//! every daemon cleanly. Bad input (missing binary) must fail clearly and leave no process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn kit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_contrail-kit-e2e"))
}

fn daemons() -> [String; 6] {
    [
        "--control-node-bin".into(),
        env!("CARGO_BIN_EXE_control-node-e2e").into(),
        "--dns-node-bin".into(),
        env!("CARGO_BIN_EXE_dns-node-e2e").into(),
        "--vrouter-agent-bin".into(),
        env!("CARGO_BIN_EXE_vrouter-agent-e2e").into(),
    ]
}

fn state_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lab-test-{name}-{}", std::process::id()))
}

/// Labs pick free ports by binding and releasing them; two labs at once could pick the
/// same one. Run them one at a time.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the lab to convergence and back; returns its stdout.
fn run_lab(extra: &[&str], name: &str) -> String {
    let _one = ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = state_dir(name);
    let mut child = Command::new(kit())
        .arg("lab")
        .args([
            "--agents",
            "3",
            "--routes",
            "2",
            "--timeout",
            "60",
            "--exit-after-converge",
        ])
        .arg("--dir")
        .arg(&dir)
        .args(daemons())
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start contrail-kit lab");
    // The lab bounds itself (--timeout 60); this only guards against a hang of the tool.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("lab did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lab failed:\n{stdout}\n{stderr}");
    assert!(!dir.exists(), "state directory left behind without --keep");
    stdout
}

#[test]
fn lab_with_tls_converges_and_stops_cleanly() {
    let out = run_lab(&[], "tls");
    assert!(out.contains("agents converged 3/3"), "{out}");
    assert!(out.contains("names resolving 6/6"), "{out}");
    assert!(out.contains("TLS:                  on"), "{out}");
    for agent in ["compute-1", "compute-2", "compute-3"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(agent) && l.contains("control"))
            .unwrap_or_else(|| panic!("no channel line for {agent}:\n{out}"));
        assert!(
            line.contains("control TLS") && line.contains("dns TLS"),
            "{line}"
        );
    }
    assert!(
        out.contains("-> Some(Ok([\"vm-1-1.lab.example.\"]))"),
        "{out}"
    );
    assert_eq!(out.matches("stopped (exit status: 0)").count(), 5, "{out}");
}

#[test]
fn lab_plain_converges() {
    let out = run_lab(&["--plain"], "plain");
    assert!(out.contains("agents converged 3/3"), "{out}");
    assert!(out.contains("names resolving 6/6"), "{out}");
    assert!(
        out.contains("control NIL") && out.contains("dns NIL"),
        "{out}"
    );
    assert_eq!(out.matches("stopped (exit status: 0)").count(), 5, "{out}");
}

#[test]
fn missing_binary_is_a_clear_error() {
    let dir = state_dir("missing");
    let out = Command::new(kit())
        .arg("lab")
        .arg("--dir")
        .arg(&dir)
        .args(["--control-node-bin", "/nonexistent/control-node"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/control-node") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn unwritable_state_dir_fails_clearly() {
    // An unwritable state directory: a file where the directory should be.
    let file = state_dir("unwritable");
    std::fs::write(&file, b"x").expect("write");
    let out = Command::new(kit())
        .arg("lab")
        .arg("--dir")
        .arg(file.join("sub"))
        .args(daemons())
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sub"), "{stderr}");
}
