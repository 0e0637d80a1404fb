//! Starting and stopping the servers under test as child processes, pinned with `taskset`
//! and with their descriptor limit raised to the hard limit (`sh -c 'ulimit -n …; exec …'`):
//! our control node (`control-node-bench`, the daemon's `main.rs` built by this package),
//! Prosody and ejabberd (Debian packages, loopback only, configurations written here).
//! Every server is stopped by its process id, never by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::pki::Pki;
use crate::procstat;

/// Which server to run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// Our control node (Contrail dialect; the RFC profile when it offers one).
    ControlNode,
    /// Prosody 0.12 (Debian `prosody`, `prosody-modules` for `mod_auth_ccert`).
    Prosody,
    /// ejabberd 23.01 (Debian `ejabberd`).
    Ejabberd,
    /// Already running at `--connect`; CPU and memory are read from `--server-pid`.
    External,
}

impl ServerKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::ControlNode => "control-node",
            ServerKind::Prosody => "prosody",
            ServerKind::Ejabberd => "ejabberd",
            ServerKind::External => "external",
        }
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// Which.
    pub kind: ServerKind,
    /// `taskset -c` list for the server (empty: no pinning).
    pub cpus: String,
    /// The control node binary.
    pub control_bin: PathBuf,
    /// TLS on (control node: `xmpp_auth_enable`).
    pub tls: bool,
    /// Scratch directory for configurations and logs.
    pub work: PathBuf,
    /// The control node's `log_level`.
    pub log_level: String,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Which.
    pub kind: ServerKind,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The root of its process tree.
    pub pid: u32,
    child: Option<Child>,
    stop_cmd: Option<Vec<String>>,
    /// ejabberd: the private epmd port, which identifies the epmd it started.
    epmd_port: Option<u16>,
    /// Its log file.
    pub log: PathBuf,
}

/// A free loopback port (bound then released; the server binds it right after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `sh -c 'ulimit -n <hard>; exec [taskset -c CPUS] PROGRAM ARGS…'`.
pub fn wrapped(cpus: &str, program: &str, args: &[String]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$@\"")
        .arg("sh");
    if !cpus.is_empty() {
        c.arg("taskset").arg("-c").arg(cpus);
    }
    c.arg(program).args(args);
    c
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

async fn wait_port(addr: SocketAddr, child: &mut Child, limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the server exited during start-up ({status})");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the server did not open {addr} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chown(path: &Path, user: &str) -> Result<()> {
    let st = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()?;
    if !st.success() {
        bail!("chown {user} {} failed", path.display());
    }
    Ok(())
}

fn copy_pki(pki: &Pki, dir: &Path) -> Result<()> {
    let f = pki.server_files();
    std::fs::copy(&f.cert, dir.join("server.pem"))?;
    std::fs::copy(&f.key, dir.join("server.key"))?;
    std::fs::copy(pki.ca_cert(), dir.join("ca.pem"))?;
    Ok(())
}

impl Server {
    /// Starts a server and waits until it accepts connections.
    pub async fn start(opts: &ServerOpts, pki: Option<&Pki>) -> Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = opts.work.join(opts.kind.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("server.log");
        let logf = std::fs::File::create(&log)?;
        let mut epmd_port = None;
        let (mut cmd, stop_cmd, limit) = match opts.kind {
            ServerKind::ControlNode => {
                let conf = dir.join("contrail-control.conf");
                let mut text = format!(
                    "[DEFAULT]\nhostip=127.0.0.1\nhostname=bench-control\nxmpp_server_port={port}\n\
                     xmpp_auth_enable={}\nxmpp_check_peer_name=true\nxmpp_max_connections=60000\n\
                     http_server_port=0\nlog_level={}\n",
                    opts.tls, opts.log_level
                );
                if let Some(pki) = pki {
                    let f = pki.server_files();
                    text.push_str(&format!(
                        "xmpp_server_cert={}\nxmpp_server_key={}\nxmpp_ca_cert={}\n",
                        f.cert.display(),
                        f.key.display(),
                        f.ca.display()
                    ));
                }
                std::fs::write(&conf, text)?;
                let args = vec!["--conf-file".to_owned(), conf.display().to_string()];
                let bin = opts.control_bin.display().to_string();
                (
                    wrapped(&opts.cpus, &bin, &args),
                    None,
                    Duration::from_secs(10),
                )
            }
            ServerKind::Prosody => {
                let pki = pki.context("Prosody needs the PKI (TLS)")?;
                copy_pki(pki, &dir)?;
                std::fs::create_dir_all(dir.join("data"))?;
                let d = dir.display();
                let cfg = format!(
                    r#"-- written by loadgen: loopback only, memory pubsub storage
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
plugin_paths = {{ "/usr/lib/prosody/modules" }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "saslauth"; "tls"; "disco"; "ping" }}
modules_disabled = {{ "offline"; "c2s_direct_tls"; "s2s" }}
c2s_require_encryption = true
allow_registration = false
authentication = "internal_hashed"
default_storage = "internal"
storage = {{ pubsub_nodes = "memory"; pubsub_data = "memory" }}
log = {{ warn = "*console" }}
c2s_ssl = {{
  certificate = "{d}/server.pem";
  key = "{d}/server.key";
  cafile = "{d}/ca.pem";
  capath = false;
  verify = {{ "peer"; "client_once" }};
  verifyext = {{ lsec_ignore_purpose = false }};
}}
VirtualHost "ccert.localhost"
  authentication = "ccert"
  certificate_match = "xmppaddr"
Component "pubsub.localhost" "pubsub"
  admins = {{ "bench-agent-0@ccert.localhost" }}
  pubsub_max_items = 256
"#
                );
                let conf = dir.join("prosody.cfg.lua");
                std::fs::write(&conf, cfg)?;
                chown(&dir, "prosody")?;
                let args = [
                    "--reuid=prosody",
                    "--regid=prosody",
                    "--init-groups",
                    "prosody",
                    "-F",
                    "--config",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .chain([conf.display().to_string()])
                .collect::<Vec<_>>();
                (
                    wrapped(&opts.cpus, "setpriv", &args),
                    None,
                    Duration::from_secs(10),
                )
            }
            ServerKind::Ejabberd => {
                let pki = pki.context("ejabberd needs the PKI (TLS)")?;
                copy_pki(pki, &dir)?;
                for sub in ["spool", "logs"] {
                    std::fs::create_dir_all(dir.join(sub))?;
                }
                let d = dir.display();
                let yml = format!(
                    r#"# written by loadgen: loopback only
hosts:
  - ccert.localhost
loglevel: warning
certfiles:
  - {d}/server.pem
  - {d}/server.key
ca_file: {d}/ca.pem
c2s_cafile: {d}/ca.pem
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
    tls_verify: true
    shaper: none
    access: c2s
    backlog: 1024
    max_stanza_size: 262144
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
  pubsub_createnode:
    allow: all
shaper_rules:
  max_user_sessions: 10
  c2s_shaper: none
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_pubsub:
    host: pubsub.localhost
    access_createnode: pubsub_createnode
    plugins:
      - flat
    max_items_node: 256
"#
                );
                std::fs::write(dir.join("ejabberd.yml"), yml)?;
                let node = format!("ejbench{port}@localhost");
                std::fs::write(
                    dir.join("ejabberdctl.cfg"),
                    format!(
                        "ERLANG_NODE={node}\nERL_EPMD_ADDRESS=127.0.0.1\n\
                         INET_DIST_INTERFACE=127.0.0.1\nERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\n"
                    ),
                )?;
                chown(&dir, "ejabberd")?;
                let base: Vec<String> = vec![
                    "--ctl-config".into(),
                    dir.join("ejabberdctl.cfg").display().to_string(),
                    "--config".into(),
                    dir.join("ejabberd.yml").display().to_string(),
                    "--spool".into(),
                    dir.join("spool").display().to_string(),
                    "--logs".into(),
                    dir.join("logs").display().to_string(),
                    "--node".into(),
                    node,
                ];
                // Run ejabberdctl as the ejabberd user with setpriv: as root it would `su`,
                // and PAM resets the descriptor limit to 1024 there (accept fails with
                // EMFILE past ~1000 clients); setpriv keeps the raised limit.
                let as_ejabberd: Vec<String> = [
                    "--reuid=ejabberd",
                    "--regid=ejabberd",
                    "--init-groups",
                    "/usr/sbin/ejabberdctl",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                let mut args = as_ejabberd.clone();
                args.extend(base.clone());
                args.push("foreground".into());
                let mut stop = vec!["setpriv".to_owned()];
                stop.extend(as_ejabberd);
                stop.extend(base);
                stop.push("stop".into());
                let mut c = wrapped(&opts.cpus, "setpriv", &args);
                c.env("HOME", "/var/lib/ejabberd");
                // A private epmd port: ejabberd's epmd then never meets another one, and
                // the port in its environment tells which epmd is ours to stop.
                let ep = free_port()?;
                epmd_port = Some(ep);
                c.env("ERL_EPMD_ADDRESS", "127.0.0.1")
                    .env("ERL_EPMD_PORT", ep.to_string());
                (c, Some(stop), Duration::from_secs(30))
            }
            ServerKind::External => bail!("an external server is not started here"),
        };
        cmd.stdout(logf.try_clone()?)
            .stderr(logf)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.kind.name()))?;
        let pid = child.id().context("server pid")?;
        if let Err(e) = wait_port(addr, &mut child, limit).await {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = text.lines().rev().take(15).collect::<Vec<_>>().join("\n");
            let mut s = Server {
                kind: opts.kind,
                addr,
                pid,
                child: Some(child),
                stop_cmd,
                epmd_port,
                log: log.clone(),
            };
            s.stop().await;
            bail!("{e}; log {} ends with:\n{tail}", log.display());
        }
        Ok(Server {
            kind: opts.kind,
            addr,
            pid,
            child: Some(child),
            stop_cmd,
            epmd_port,
            log,
        })
    }

    /// Stops the server: its own stop command (ejabberd) or SIGTERM, then SIGKILL to the
    /// processes of its tree that are left after 10 s. An `epmd` that ejabberd's scripts
    /// started (it detaches, so it is not in the tree) is ended too, by its id.
    pub async fn stop(&mut self) {
        let tree = procstat::tree(self.pid);
        if let Some(cmd) = &self.stop_cmd {
            let _ = tokio::time::timeout(
                Duration::from_secs(15),
                Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                    .env("ERL_EPMD_PORT", self.epmd_port.unwrap_or(4369).to_string())
                    .env("HOME", "/var/lib/ejabberd")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status(),
            )
            .await;
        } else {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status()
                .await;
        }
        if let Some(child) = &mut self.child
            && tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
        {
            let _ = child.start_kill();
        }
        for pid in tree.into_iter().skip(1) {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        if let Some(port) = self.epmd_port {
            stop_epmd(port).await;
        }
    }
}

/// Ends the `epmd` whose environment holds `ERL_EPMD_PORT=port` (the one our ejabberd
/// start spawned; it detaches from the tree).
async fn stop_epmd(port: u16) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = format!("ERL_EPMD_PORT={port}");
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if comm(pid) != "epmd" {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
    }
}
