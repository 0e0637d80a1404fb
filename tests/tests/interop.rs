//! Interoperability with real third-party XMPP software (the RFC 6120 profile, and the
//! Contrail dialect seen by a foreign XML stack):
//!
//! * `openssl s_client -starttls xmpp` against our control node: STARTTLS framing, the
//!   server certificate verified (name and CA), the client certificate presented and
//!   accepted, then SASL EXTERNAL + bind + ping + a XEP-0060 subscribe typed by hand;
//!   refused without a client certificate or with one from another CA; a plaintext
//!   stanza before STARTTLS refused with a stream error.
//! * slixmpp (PyPI) against our control node: SASL EXTERNAL, bind, ping, XEP-0060
//!   subscribe, a route event published by our vrouter agent, a route published back and
//!   learned by the agent, the retract when the agent withdraws; and the Contrail dialect
//!   (no SASL, no bind) with slixmpp's XML stack.
//! * Our client (`xmpp_core::io::connect_with`, `Client`) against Prosody and ejabberd:
//!   STARTTLS with the server name verified, SASL EXTERNAL, bind, XEP-0060 publish received
//!   by a slixmpp subscriber, and the reverse.
//!
//! Each test starts its peers itself, on free loopback ports, with a PKI generated for it
//! (client certificates carry exactly one xmppAddr), waits for ports with a deadline and
//! stops what it started by PID (drop guards). A missing peer skips the test with a loud
//! message outside CI; with `CI=true` it fails: `.ci/run` installs the peers.

mod common;

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Ca, TempDir, xmpp_addr_san};
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use xmpp_core::contrail::{LoadBalance, Mobility, NextHop, Nlri, RouteEntry};
use xmpp_core::io::{Client, Timing, connect_with};
use xmpp_core::negotiate::{ClientPolicy, Login};
use xmpp_core::sasl::Credentials;
use xmpp_core::stanza::pubsub::{PubsubEvent, PubsubItem, PubsubRequest};
use xmpp_core::stanza::{IqType, ns, ping};
use xmpp_core::stream::Dialect;
use xmpp_core::tls::{ClientTls, ClientTlsOptions, ServerTls, ServerTlsOptions, TlsFiles};
use xmpp_core::xml::{Element, Limits, Style, XmlWriter};

/// Bound on any one step (a login, an event, a peer's start).
const STEP: Duration = Duration::from_secs(20);
/// Poll period of port and state waits (each bounded by a deadline).
const POLL: Duration = Duration::from_millis(20);

const VN: &str = "default-domain:demo:net-a";
const VRF: &str = "default-domain:demo:net-a:net-a";
const AGENT: &str = "compute-1";

// ============================================================== gating

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `true` when the test must stop here because `peer` is missing: a loud skip outside CI,
/// a failure in CI.
fn skip_without(test: &str, peer: &str, present: bool) -> bool {
    if present {
        return false;
    }
    assert!(
        !in_ci(),
        "{test}: interop peer {peer} is not installed, and CI=true requires it (.ci/run installs it)"
    );
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and
    // a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n########## SKIP {test}: {peer} is not installed. Run .ci/run (or install it) to \
         exercise this interop test. ##########\n"
    );
    true
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_openssl() -> bool {
    runs("openssl", &["version"])
}

fn have_slixmpp() -> bool {
    runs("python3", &["-c", "import slixmpp"])
}

fn have_prosody() -> bool {
    Path::new("/usr/bin/prosody").exists()
        && Path::new("/usr/lib/prosody/modules/mod_auth_ccert/mod_auth_ccert.lua").exists()
        && system_user("prosody").is_some()
}

fn have_ejabberd() -> bool {
    Path::new("/usr/sbin/ejabberdctl").exists() && system_user("ejabberd").is_some()
}

// ============================================================== PKI

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
struct Cred {
    cert: PathBuf,
    key: PathBuf,
}

/// The test PKI: a CA, a server certificate for every name the peers use, client
/// certificates on demand, and a second CA whose clients nobody trusts.
struct Pki {
    dir: TempDir,
    ca: Ca,
    other: Ca,
    ca_path: PathBuf,
    server: Cred,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let ca = Ca::new_bounded("Interop CA");
        let other = Ca::new_bounded("Other CA");
        let ca_path = dir.write("ca.pem", &ca.pem);
        let leaf = ca.leaf_bounded(
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into().expect("dns")),
                SanType::DnsName("ccert.localhost".try_into().expect("dns")),
                SanType::DnsName("pubsub.localhost".try_into().expect("dns")),
                SanType::IpAddress("127.0.0.1".parse().expect("ip")),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let server = Cred {
            cert: dir.write("server.pem", &leaf.cert_pem),
            key: dir.write("server.key", &leaf.key_pem),
        };
        Self {
            dir,
            ca,
            other,
            ca_path,
            server,
        }
    }

    /// A client certificate (EKU clientAuth) with subject CN `cn` and, when given, exactly
    /// one xmppAddr.
    fn client(&self, tag: &str, cn: &str, xmpp_addr: Option<&str>) -> Cred {
        self.client_of(&self.ca, tag, cn, xmpp_addr)
    }

    fn client_of(&self, ca: &Ca, tag: &str, cn: &str, xmpp_addr: Option<&str>) -> Cred {
        let sans = xmpp_addr.map(xmpp_addr_san).into_iter().collect();
        let leaf = ca.leaf_bounded(cn, sans, ExtendedKeyUsagePurpose::ClientAuth);
        Cred {
            cert: self.dir.write(&format!("{tag}.pem"), &leaf.cert_pem),
            key: self.dir.write(&format!("{tag}.key"), &leaf.key_pem),
        }
    }

    fn files(&self, c: &Cred) -> TlsFiles {
        TlsFiles::new(&c.cert, &c.key, &self.ca_path)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Hands the directory to a system user (Prosody and ejabberd refuse to run as root
    /// and must read the keys).
    fn give_to(&self, user: &User) {
        chown_tree(self.path(), user);
    }
}

// ============================================================== processes

#[derive(Debug, Clone)]
struct User {
    uid: u32,
    gid: u32,
    home: String,
}

/// A system account from /etc/passwd.
fn system_user(name: &str) -> Option<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 6 || f[0] != name {
            return None;
        }
        Some(User {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_owned(),
        })
    })
}

fn chown_tree(path: &Path, user: &User) {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read dir") {
            chown_tree(&e.expect("dir entry").path(), user);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The PIDs of `pid`'s descendants (from /proc), deepest last.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // Field 4 (ppid) follows the parenthesised command name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parent_of {
            if *pp == p {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// A server started for one test, stopped by PID (with its descendants) when dropped.
struct Server {
    name: &'static str,
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or(&text).to_owned()
    }

    /// Waits until the port accepts connections; fails with the log if the server exits
    /// or the deadline passes.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {} within {STEP:?}:\n{}",
                self.name,
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id();
        let mut pids = descendants(pid);
        pids.push(pid);
        signal("TERM", &pids);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)))
                && pids
                    .iter()
                    .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            {
                return;
            }
            std::thread::sleep(POLL);
        }
        signal("KILL", &pids);
        let _ = self.child.wait();
    }
}

/// Prosody 0.12 (`prosody` + `prosody-modules` for `mod_auth_ccert`): c2s on a free port,
/// STARTTLS required, client certificates requested and checked against the test CA,
/// `ccert.localhost` authenticating by xmppAddr (SASL EXTERNAL), XEP-0060 on
/// `pubsub.localhost` where both test JIDs are admins (only admins create nodes).
fn start_prosody(pki: &Pki, admins: &[&str]) -> Server {
    let user = system_user("prosody").expect("prosody user");
    let dir = pki.path();
    let port = free_port();
    std::fs::create_dir_all(dir.join("data")).expect("data dir");
    let d = dir.display();
    let (cert, key, ca) = (
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca_path.display(),
    );
    let admins = admins
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join("; ");
    let config = format!(
        r#"-- generated by tests/tests/interop.rs
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping" }}
modules_disabled = {{ "offline"; "c2s_direct_tls"; "s2s" }}
c2s_require_encryption = true
allow_registration = false
default_storage = "memory"
storage = {{ accounts = "internal" }} -- prosodyctl registers into data_path
log = {{ debug = "{d}/prosody.log" }}
ssl = {{ certificate = "{cert}"; key = "{key}" }}
c2s_ssl = {{
  certificate = "{cert}"; key = "{key}"; cafile = "{ca}"; capath = false;
  verify = {{ "peer"; "client_once" }};
  -- LuaSec checks client certificates for the serverAuth purpose unless told otherwise
  verifyext = {{ lsec_ignore_purpose = false }};
}}
VirtualHost "localhost"
  authentication = "internal_hashed"
VirtualHost "ccert.localhost"
  authentication = "ccert"
  certificate_match = "xmppaddr"
Component "pubsub.localhost" "pubsub"
  admins = {{ {admins} }}
"#
    );
    std::fs::write(dir.join("prosody.cfg.lua"), config).expect("write prosody config");
    pki.give_to(&user);
    // A password account for the PLAIN login (non-interactive, ~60 ms).
    let registered = Command::new("/usr/bin/prosodyctl")
        .arg("--config")
        .arg(dir.join("prosody.cfg.lua"))
        .args(["register", "alice", "localhost", PLAIN_PASSWORD])
        .uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .stdin(Stdio::null())
        .output()
        .expect("run prosodyctl");
    assert!(
        registered.status.success(),
        "prosodyctl register: {}",
        String::from_utf8_lossy(&registered.stderr)
    );
    let out = File::create(dir.join("prosody.out")).expect("out file");
    let child = Command::new("/usr/bin/prosody")
        .arg("-F")
        .arg("--config")
        .arg(dir.join("prosody.cfg.lua"))
        .uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn prosody");
    Server {
        name: "prosody",
        child,
        port,
        log: dir.join("prosody.log"),
    }
}

/// ejabberd 23.01: one c2s listener with STARTTLS required and `tls_verify` (client
/// certificate demanded, SASL EXTERNAL offered), `c2s_cafile` for the test CA, XEP-0060
/// on `pubsub.localhost`. Erlang distribution gets its own port (`ERL_DIST_PORT`), so no
/// epmd is started at all, and listens on loopback only.
fn start_ejabberd(pki: &Pki) -> Server {
    let user = system_user("ejabberd").expect("ejabberd user");
    let dir = pki.path();
    let (port, dist) = (free_port(), free_port());
    for sub in ["spool", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).expect("dir");
    }
    let (cert, key, ca) = (
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca_path.display(),
    );
    let yml = format!(
        r#"# generated by tests/tests/interop.rs
hosts:
  - localhost
loglevel: info
certfiles:
  - "{cert}"
  - "{key}"
ca_file: "{ca}"
c2s_cafile: "{ca}"
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
    tls_verify: true
    shaper: none
    access: c2s
auth_method: internal
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  pubsub_createnode:
    allow: local
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_pubsub:
    host: pubsub.localhost
    access_createnode: pubsub_createnode
    plugins:
      - flat
"#
    );
    let node = format!("ejabberd{port}@localhost");
    let ctl = format!(
        "ERLANG_NODE={node}\nERL_EPMD_ADDRESS=127.0.0.1\nINET_DIST_INTERFACE=127.0.0.1\n\
         ERL_DIST_PORT={dist}\nERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\n"
    );
    std::fs::write(dir.join("ejabberd.yml"), yml).expect("write ejabberd.yml");
    std::fs::write(dir.join("ejabberdctl.cfg"), ctl).expect("write ejabberdctl.cfg");
    pki.give_to(&user);
    let out = File::create(dir.join("ejabberd.out")).expect("out file");
    let child = Command::new("/usr/sbin/ejabberdctl")
        .arg("--ctl-config")
        .arg(dir.join("ejabberdctl.cfg"))
        .arg("--config")
        .arg(dir.join("ejabberd.yml"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--logs")
        .arg(dir.join("logs"))
        .arg("--node")
        .arg(&node)
        .arg("foreground")
        .current_dir(dir)
        .uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn ejabberd");
    Server {
        name: "ejabberd",
        child,
        port,
        log: dir.join("logs/ejabberd.log"),
    }
}

/// The password of the Prosody account `alice@localhost` (test-only).
const PLAIN_PASSWORD: &str = "secret-alice";

// ============================================================== slixmpp

/// A slixmpp peer (`tests/interop/slix_peer.py`): JSON commands in, JSON events out.
struct Slix {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    stderr: PathBuf,
}

fn slix_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/slix_peer.py")
}

impl Slix {
    /// Starts the peer and waits until it is online (its `online` event).
    async fn online(name: &str, dir: &Path, args: &[String]) -> (Self, Value) {
        let stderr = dir.join(format!("slix-{name}.err"));
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(slix_script())
            .args(args)
            .arg("--timeout")
            .arg(STEP.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true);
        if std::env::var_os("INTEROP_VERBOSE").is_some() {
            cmd.arg("-v");
        }
        let mut child = cmd.spawn().expect("spawn python3");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut s = Self {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
        };
        let online = s.event("online", |_| true).await;
        (s, online)
    }

    /// The next event named `kind` for which `pred` holds (others are remembered for the
    /// failure message).
    async fn event(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let line = match timeout(deadline - Instant::now(), self.lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                other => panic!(
                    "slixmpp {}: no {kind:?} event ({other:?}); saw {:#?}\nstderr:\n{}",
                    self.name,
                    self.seen,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            };
            self.seen.push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["event"] == "error" {
                panic!(
                    "slixmpp {}: {}\nstderr:\n{}",
                    self.name,
                    v["detail"],
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            if v["event"] == kind && pred(&v) {
                return v;
            }
        }
    }

    async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to slixmpp");
    }

    /// Runs a command and returns its `result`, which must be `ok`.
    async fn ok(&mut self, cmd: Value) -> Value {
        let op = cmd["op"].as_str().unwrap_or("").to_owned();
        self.send(cmd).await;
        let r = self.event("result", |v| v["op"] == op.as_str()).await;
        assert_eq!(r["ok"], true, "slixmpp {}: {op} failed: {r}", self.name);
        r
    }

    async fn quit(mut self) {
        self.send(json!({"op": "quit"})).await;
        let status = timeout(STEP, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("slixmpp {} did not exit", self.name))
            .expect("wait");
        assert!(
            status.success(),
            "slixmpp {} exited with {status}",
            self.name
        );
    }
}

fn slix_args(addr: SocketAddr, jid: &str, pki: &Pki, cred: &Cred) -> Vec<String> {
    vec![
        "--host".into(),
        addr.ip().to_string(),
        "--port".into(),
        addr.port().to_string(),
        "--jid".into(),
        jid.into(),
        "--ca".into(),
        pki.ca_path.display().to_string(),
        "--cert".into(),
        cred.cert.display().to_string(),
        "--key".into(),
        cred.key.display().to_string(),
    ]
}

// ============================================================== our daemons

struct Node {
    shared: Arc<control_node::Shared>,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_node(pki: &Pki) -> Node {
    let tls = ServerTls::load(
        &TlsFiles::new(&pki.server.cert, &pki.server.key, &pki.ca_path),
        &ServerTlsOptions::default(),
    )
    .expect("server TLS");
    let settings = control_node::Settings {
        hostname: "ctrl-1".into(),
        tls: Some(tls),
        check_peer_name: true,
        timing: Timing::default(),
        limits: Limits::default(),
        max_connections: 64,
        send_queue_len: 4096,
        eor_quiet: Duration::from_secs(1),
        eor_max: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(2),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let (shared, _task) = control_node::spawn(settings, listener, None, shutdown.clone());
    Node {
        shared,
        addr,
        shutdown,
    }
}

/// Our vrouter agent (in process), with a client certificate whose CN is its name.
struct Agent {
    agent: Arc<vrouter_agent::Agent>,
    shutdown: CancellationToken,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start_agent(pki: &Pki, node: &Node) -> Agent {
    let cred = pki.client("agent", AGENT, None);
    let tls = ClientTls::load(&pki.files(&cred), &ClientTlsOptions::default()).expect("client TLS");
    let settings = vrouter_agent::Settings {
        hostname: AGENT.into(),
        subcluster_name: String::new(),
        control_servers: vec![node.addr],
        control_tls: Some(tls),
        timing: Timing {
            hold_time: Duration::from_secs(9),
            negotiation_timeout: Duration::from_secs(5),
        },
        route_grace: Duration::from_millis(500),
        vhost_ip: "192.168.0.11".parse().expect("ip"),
        ports_dir: None,
        dns: vrouter_agent::agent::DnsSettings::default(),
    };
    let shutdown = CancellationToken::new();
    let (agent, _task) = vrouter_agent::spawn(settings, None, None, shutdown.clone());
    Agent { agent, shutdown }
}

fn vm_port(id: &str, ip: &str) -> vrouter_agent::ports::Port {
    vrouter_agent::ports::Port {
        id: id.into(),
        vm_name: format!("vm-{id}"),
        mac: "02:00:00:00:00:01".into(),
        ipv4: Some(ip.parse().expect("ip")),
        ipv6: None,
        vn_name: VN.into(),
        virtual_dns: None,
        dns_domain: None,
    }
}

/// A route item as an agent publishes it (spec §6.4), compact XML (the `<entry>`).
fn route_entry_xml(prefix: &str, nh: &str, label: u32) -> String {
    let entry = RouteEntry {
        nlri: Nlri {
            af: 1,
            safi: 1,
            prefix: prefix.parse().expect("prefix"),
        },
        next_hops: vec![NextHop {
            af: 1,
            address: nh.parse::<IpAddr>().expect("nh"),
            mac: String::new(),
            label,
            vni: 0,
            encapsulations: vec!["gre".into(), "udp".into()],
            virtual_network: VN.into(),
            tags: vec![],
        }],
        version: 1,
        virtual_network: String::new(),
        mobility: Mobility::default(),
        sequence_number: 0,
        security_groups: vec![],
        community_tags: vec![],
        local_preference: 100,
        med: 0,
        load_balance: LoadBalance::default(),
        sub_protocol: String::new(),
    };
    let mut out = bytes::BytesMut::new();
    entry.write(&mut XmlWriter::new(&mut out, Style::Compact));
    String::from_utf8(out.to_vec()).expect("utf8")
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        tokio::time::sleep(POLL).await;
    }
}

// ============================================================== openssl s_client

/// `openssl s_client -starttls xmpp` with stdin/stdout piped, stderr to a file.
struct SClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    buf: Vec<u8>,
    stderr: PathBuf,
}

impl SClient {
    fn start(node: &Node, pki: &Pki, cred: Option<&Cred>, tag: &str) -> Self {
        let stderr = pki.path().join(format!("s_client-{tag}.err"));
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.args(["s_client", "-connect"])
            .arg(node.addr.to_string())
            .args(["-starttls", "xmpp", "-xmpphost", "localhost", "-CAfile"])
            .arg(&pki.ca_path)
            .args([
                "-verify_return_error",
                "-verify_hostname",
                "localhost",
                "-brief",
                "-ign_eof",
            ]);
        if let Some(c) = cred {
            cmd.arg("-cert").arg(&c.cert).arg("-key").arg(&c.key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn openssl");
        Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().expect("stdout"),
            child,
            buf: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn write(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(s.as_bytes())
            .await
            .expect("write to s_client");
        stdin.flush().await.expect("flush");
    }

    /// Reads what the server sent (decrypted by s_client) until `pat`; returns everything
    /// up to and including it.
    async fn until(&mut self, pat: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(i) = find(&self.buf, pat.as_bytes()) {
                let rest = self.buf.split_off(i + pat.len());
                let got = std::mem::replace(&mut self.buf, rest);
                return String::from_utf8_lossy(&got).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = match timeout(deadline - Instant::now(), self.stdout.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => n,
                other => panic!(
                    "s_client: no {pat:?} ({other:?}); got {:?}\nstderr:\n{}",
                    String::from_utf8_lossy(&self.buf),
                    self.stderr()
                ),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits for s_client to end (the server closed) and returns its stderr.
    async fn finish(mut self) -> String {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        let _ = timeout(STEP, self.stdout.read_to_end(&mut rest)).await;
        timeout(STEP, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("s_client did not exit; stderr:\n{}", self.stderr()))
            .expect("wait");
        self.stderr()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What s_client sends as its first header (apps/s_client.c), reused after TLS.
const S_CLIENT_HEADER: &str = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
    xmlns='jabber:client' to='localhost' version='1.0'>";

#[tokio::test]
async fn s_client_verifies_tls_and_logs_in_with_sasl_external() {
    if skip_without("s_client_verifies_tls", "openssl", have_openssl()) {
        return;
    }
    let started = Instant::now();
    let pki = Pki::new("s-client-ok");
    let node = start_node(&pki).await;
    let cred = pki.client("s-client", "agent1", Some("agent1@localhost"));
    let mut s = SClient::start(&node, &pki, Some(&cred), "ok");

    // Inside TLS s_client is a raw pipe: the RFC 6120 steps are typed by hand.
    s.write(S_CLIENT_HEADER).await;
    let features = s.until("</stream:features>").await;
    assert!(
        features.contains("<mechanism>EXTERNAL</mechanism>"),
        "SASL EXTERNAL offered after TLS: {features}"
    );
    s.write("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await;
    s.until("<success xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/>")
        .await;
    s.write(S_CLIENT_HEADER).await;
    let features = s.until("</stream:features>").await;
    assert!(features.contains("<bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"/>"));
    s.write(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>s_client</resource></bind></iq>",
    )
    .await;
    let bound = s.until("</iq>").await;
    assert!(
        bound.contains("<jid>agent1@localhost/s_client</jid>"),
        "the xmppAddr of the certificate is the JID: {bound}"
    );
    s.write("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = s.until("id=\"p1\"/>").await;
    assert!(
        pong.contains("type=\"result\"") && pong.contains("id=\"p1\""),
        "{pong}"
    );
    s.write("<iq type='get' id='u1'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    let unknown = s.until("</iq>").await;
    assert!(unknown.contains("<service-unavailable"), "{unknown}");
    s.write(&format!(
        "<iq type='set' id='s1' to='localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
         <subscribe node='{VRF}' jid='agent1@localhost'/></pubsub></iq>"
    ))
    .await;
    let sub = s.until("</iq>").await;
    assert!(sub.contains("subscription=\"subscribed\""), "{sub}");

    // The node sees an authenticated RFC session under that JID.
    let shared = node.shared.clone();
    let session = eventually("the RFC session", || {
        shared
            .sessions()
            .into_iter()
            .find(|h| h.name == "agent1@localhost/s_client")
    })
    .await;
    assert!(session.tls && session.dialect == Dialect::Rfc);

    s.write("</stream:stream>").await;
    let stderr = s.finish().await;
    assert!(
        stderr.contains("Verification: OK"),
        "server certificate verified:\n{stderr}"
    );
    assert!(
        stderr.contains("Peer certificate: CN = localhost"),
        "{stderr}"
    );
    eprintln!("s_client login: {:?}", started.elapsed());
}

async fn s_client_refused(tag: &str, cred: impl FnOnce(&Pki) -> Option<Cred>, alert: &str) {
    let pki = Pki::new(tag);
    let node = start_node(&pki).await;
    let cred = cred(&pki);
    let mut s = SClient::start(&node, &pki, cred.as_ref(), tag);
    s.write(S_CLIENT_HEADER).await;
    let stderr = s.finish().await;
    assert!(
        stderr.to_lowercase().contains(alert),
        "s_client should report the {alert:?} alert:\n{stderr}"
    );
    let shared = node.shared.clone();
    eventually("the refusal is counted", || {
        (shared
            .metrics
            .negotiation_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1)
            .then_some(())
    })
    .await;
    assert!(node.shared.sessions().is_empty());
}

#[tokio::test]
async fn s_client_without_client_certificate_is_refused() {
    if skip_without(
        "s_client_without_client_certificate",
        "openssl",
        have_openssl(),
    ) {
        return;
    }
    s_client_refused("s-client-nocert", |_| None, "certificate required").await;
}

#[tokio::test]
async fn s_client_with_certificate_from_another_ca_is_refused() {
    if skip_without("s_client_with_other_ca", "openssl", have_openssl()) {
        return;
    }
    s_client_refused(
        "s-client-other-ca",
        |pki| Some(pki.client_of(&pki.other, "foreign", "agent1", Some("agent1@localhost"))),
        "unknown ca",
    )
    .await;
}

#[tokio::test]
async fn plaintext_stanza_before_starttls_is_refused() {
    // No TLS library needed: the bytes s_client sends first, then a stanza in clear.
    let pki = Pki::new("plaintext");
    let node = start_node(&pki).await;
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    tcp.write_all(S_CLIENT_HEADER.as_bytes())
        .await
        .expect("header");
    tcp.write_all(b"<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await
        .expect("stanza");
    let mut got = Vec::new();
    timeout(STEP, tcp.read_to_end(&mut got))
        .await
        .expect("the node closes the connection")
        .expect("read");
    let text = String::from_utf8_lossy(&got);
    // What s_client matches literally, and the refusal (RFC 6120 §5.3.1).
    assert!(
        text.contains("<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"><required/></starttls>"),
        "{text}"
    );
    assert!(
        text.contains(
            "<stream:error><policy-violation xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>"
        ),
        "{text}"
    );
    assert!(text.ends_with("</stream:stream>"), "{text}");
    assert!(
        !text.contains("type=\"result\""),
        "nothing answered in clear: {text}"
    );
}

// ============================================================== slixmpp → our node

#[tokio::test]
async fn slixmpp_external_bind_and_pubsub_with_our_agent() {
    if skip_without(
        "slixmpp_external_pubsub",
        "slixmpp (pip slixmpp==1.17.0)",
        have_slixmpp(),
    ) {
        return;
    }
    let started = Instant::now();
    let pki = Pki::new("slix-rfc");
    let node = start_node(&pki).await;
    let cred = pki.client("watcher", "watcher", Some("watcher@localhost"));
    let args = slix_args(node.addr, "watcher@localhost", &pki, &cred);
    let (mut slix, online) = Slix::online("watcher", pki.path(), &args).await;
    let jid = online["jid"].as_str().unwrap_or_default().to_owned();
    assert!(jid.starts_with("watcher@localhost/"), "bound JID: {online}");
    assert_eq!(online["tls"], "TLSv1.3", "{online}");
    eprintln!("slixmpp online after {:?}", started.elapsed());
    slix.ok(json!({"op": "ping", "to": "localhost"})).await;
    let sub = slix
        .ok(json!({"op": "subscribe", "service": "localhost", "node": VRF}))
        .await;
    assert_eq!(sub["detail"], "subscribed");

    // Our agent comes up, subscribes to the VRF and publishes its VM's route.
    let agent = start_agent(&pki, &node);
    agent
        .agent
        .add_port(vm_port("p1", "10.1.1.3"))
        .expect("add port");
    let item = slix.event("item", |v| v["id"] == "10.1.1.3/32").await;
    assert_eq!(item["node"], format!("1/1/{VRF}"));
    let payload = item["payload"].as_str().unwrap_or_default();
    assert!(
        payload.contains("10.1.1.3/32") && payload.contains("192.168.0.11"),
        "{payload}"
    );

    // slixmpp publishes a route; the agent learns it like one from another agent.
    let published = slix
        .ok(json!({
            "op": "publish", "service": "localhost",
            "node": format!("1/1/{VRF}/10.1.1.99/32"),
            "payload": route_entry_xml("10.1.1.99/32", "192.168.0.99", 42),
        }))
        .await;
    assert_eq!(published["detail"], "10.1.1.99/32");
    let a = agent.agent.clone();
    eventually("the agent learns the route slixmpp published", || {
        a.routes()
            .get(VRF)
            .and_then(|r| r.iter().find(|v| v.prefix == "10.1.1.99/32").cloned())
    })
    .await;

    // The agent withdraws: slixmpp gets the retract.
    agent.agent.remove_port("p1").expect("remove port");
    slix.event("retract", |v| v["id"] == "10.1.1.3/32").await;
    slix.quit().await;
    eprintln!("slixmpp RFC profile test: {:?}", started.elapsed());
}

#[tokio::test]
async fn slixmpp_contrail_dialect_without_sasl() {
    if skip_without(
        "slixmpp_contrail_dialect",
        "slixmpp (pip slixmpp==1.17.0)",
        have_slixmpp(),
    ) {
        return;
    }
    let pki = Pki::new("slix-contrail");
    let node = start_node(&pki).await;
    // A Contrail agent certificate: the name is the CN, no xmppAddr.
    let cred = pki.client("compute-9", "compute-9", None);
    let mut args = slix_args(node.addr, "compute-9@localhost", &pki, &cred);
    args.extend(["--contrail".into(), "compute-9".into()]);
    let (mut slix, _) = Slix::online("compute-9", pki.path(), &args).await;
    let shared = node.shared.clone();
    let session = eventually("the Contrail session", || {
        shared
            .sessions()
            .into_iter()
            .find(|h| h.name == "compute-9")
    })
    .await;
    assert!(session.tls && session.dialect == Dialect::Contrail);
    // The agent's subscribe IQ (spec §6.2), sent by slixmpp's stream.
    slix.ok(json!({"op": "raw", "xml": format!(
        "<iq type='set' from='compute-9' to='network-control@contrailsystems.com/bgp-peer' \
         id='subscribe1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe \
         node='{VRF}'><options><instance-id>3</instance-id></options></subscribe></pubsub></iq>"
    )}))
    .await;
    let agent = start_agent(&pki, &node);
    agent
        .agent
        .add_port(vm_port("p1", "10.1.1.3"))
        .expect("add port");
    let ev = slix
        .event("contrail", |v| {
            v["ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == "10.1.1.3/32"))
        })
        .await;
    assert_eq!(ev["node"], format!("1/1/{VRF}"));
    slix.quit().await;
}

// ============================================================== our client → real servers

/// Our client in the RFC profile: STARTTLS (server name `domain` verified against the test
/// CA), SASL EXTERNAL with `cred`, bind.
/// `diagnose` tells what the server logged, for the failure message.
async fn our_client(
    port: u16,
    diagnose: impl FnOnce() -> String,
    domain: &str,
    pki: &Pki,
    cred: &Cred,
) -> (Client, tokio::sync::mpsc::Receiver<Element>) {
    our_client_with(
        port,
        diagnose,
        domain,
        pki,
        cred,
        Credentials::External { authzid: None },
    )
    .await
}

/// [`our_client`] authenticating with `credentials` (the TLS client certificate `cred` is
/// presented in any case).
async fn our_client_with(
    port: u16,
    diagnose: impl FnOnce() -> String,
    domain: &str,
    pki: &Pki,
    cred: &Cred,
    credentials: Credentials,
) -> (Client, tokio::sync::mpsc::Receiver<Element>) {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let tls = ClientTls::load(&pki.files(cred), &ClientTlsOptions::default()).expect("client TLS");
    let policy = ClientPolicy {
        dialect: Dialect::Rfc,
        tls_required: true,
        from: String::new(),
        to: domain.into(),
        default_ns: ns::CLIENT.into(),
        limits: Limits::default(),
    };
    let login = Login {
        credentials: vec![credentials],
        resource: Some("rust".into()),
    };
    let name = xmpp_core::tls::server_name(domain).expect("name");
    let stream = timeout(
        STEP,
        connect_with(
            tcp,
            policy,
            login,
            Some((tls.current(), name)),
            Timing::default(),
        ),
    )
    .await
    .expect("login within STEP")
    .unwrap_or_else(|e| {
        panic!(
            "our client could not log in to {domain}: {e}\n{}",
            diagnose()
        )
    });
    assert!(stream.negotiated().tls);
    let (client, inbound) = Client::spawn(stream, 64);
    // Initial presence: notifications to our bare JID reach available resources only
    // (RFC 6121 §8.5.2.1.1).
    client
        .send(Element::new("presence"))
        .await
        .expect("send presence");
    (client, inbound)
}

/// Both directions of XEP-0060 between our client and a slixmpp client through `server`.
async fn pubsub_both_ways(server: &Server, pki: &Pki, domain: &str, ours: &str, theirs: &str) {
    let started = Instant::now();
    let service = "pubsub.localhost";
    let our_cred = pki.client("ours", "agent1", Some(ours));
    let (client, mut inbound) = our_client(
        server.port,
        || format!("{} log:\n{}", server.name, server.log_tail()),
        domain,
        pki,
        &our_cred,
    )
    .await;
    assert_eq!(
        client.jid().map(ToString::to_string),
        Some(format!("{ours}/rust")),
        "bound JID"
    );
    let pong = client
        .iq(ping::ping("ping1", None), STEP)
        .await
        .expect("ping answered");
    assert_eq!(pong.kind, IqType::Result, "{pong:?}");
    eprintln!(
        "{}: our client logged in after {:?}",
        server.name,
        started.elapsed()
    );

    let their_cred = pki.client("theirs", "watcher", Some(theirs));
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let (mut slix, _) = Slix::online(
        server.name,
        pki.path(),
        &slix_args(addr, theirs, pki, &their_cred),
    )
    .await;

    // Ours → slixmpp.
    let r = client
        .iq(
            PubsubRequest::Create {
                node: "routes-ours".into(),
            }
            .to_iq("c1", Some(service)),
            STEP,
        )
        .await
        .expect("create answered");
    assert_eq!(r.kind, IqType::Result, "create: {:?}", r.stanza_error());
    slix.ok(json!({"op": "subscribe", "service": service, "node": "routes-ours"}))
        .await;
    let payload = Element::with_ns("route", "urn:xmpp-core:interop")
        .child(Element::new("prefix").text_node("10.9.9.9/32"));
    let publish = PubsubRequest::Publish {
        node: "routes-ours".into(),
        items: vec![PubsubItem {
            id: Some("item-1".into()),
            payload: Some(payload),
        }],
    };
    let r = client
        .iq(publish.to_iq("pub1", Some(service)), STEP)
        .await
        .expect("publish answered");
    assert_eq!(r.kind, IqType::Result, "publish: {:?}", r.stanza_error());
    let item = slix.event("item", |v| v["id"] == "item-1").await;
    assert!(
        item["payload"]
            .as_str()
            .unwrap_or_default()
            .contains("10.9.9.9/32"),
        "{item}"
    );

    // slixmpp → ours.
    slix.ok(json!({"op": "create", "service": service, "node": "routes-theirs"}))
        .await;
    let r = client
        .iq(
            PubsubRequest::Subscribe {
                node: "routes-theirs".into(),
                jid: ours.into(),
            }
            .to_iq("sub1", Some(service)),
            STEP,
        )
        .await
        .expect("subscribe answered");
    assert_eq!(r.kind, IqType::Result, "subscribe: {:?}", r.stanza_error());
    slix.ok(json!({
        "op": "publish", "service": service, "node": "routes-theirs", "id": "item-2",
        "payload": "<route xmlns='urn:xmpp-core:interop'><prefix>10.8.8.8/32</prefix></route>",
    }))
    .await;
    let event = timeout(STEP, async {
        while let Some(el) = inbound.recv().await {
            if let Some(ev) = PubsubEvent::from_message(&el)
                && ev.items.iter().any(|i| i.id.as_deref() == Some("item-2"))
            {
                return Some(ev);
            }
        }
        None
    })
    .await
    .expect("event within STEP")
    .expect("stream open");
    assert_eq!(event.node, "routes-theirs");
    let text = event.items[0]
        .payload
        .as_ref()
        .and_then(|p| p.find_descendant("prefix"))
        .map(|p| p.text().into_owned());
    assert_eq!(text.as_deref(), Some("10.8.8.8/32"));

    slix.quit().await;
    client.close().await.expect("clean close");
    eprintln!(
        "{}: both directions done after {:?}",
        server.name,
        started.elapsed()
    );
}

#[tokio::test]
async fn our_client_and_slixmpp_through_prosody() {
    if skip_without("prosody", "prosody + prosody-modules", have_prosody())
        || skip_without("prosody", "slixmpp (pip slixmpp==1.17.0)", have_slixmpp())
    {
        return;
    }
    let pki = Pki::new("prosody");
    let mut server = start_prosody(&pki, &["agent1@ccert.localhost", "watcher@ccert.localhost"]);
    let t = Instant::now();
    server.wait_ready().await;
    eprintln!("prosody listening after {:?}", t.elapsed());
    pubsub_both_ways(
        &server,
        &pki,
        "ccert.localhost",
        "agent1@ccert.localhost",
        "watcher@ccert.localhost",
    )
    .await;

    // SASL PLAIN inside TLS, for servers without certificate login.
    let cred = pki.client("plain", "alice", None);
    let (client, _inbound) = our_client_with(
        server.port,
        || server.log_tail(),
        "localhost",
        &pki,
        &cred,
        Credentials::Plain {
            authzid: None,
            username: "alice".into(),
            password: PLAIN_PASSWORD.into(),
        },
    )
    .await;
    assert_eq!(
        client.jid().map(ToString::to_string).as_deref(),
        Some("alice@localhost/rust")
    );
    let pong = client
        .iq(ping::ping("ping-plain", None), STEP)
        .await
        .expect("ping answered");
    assert_eq!(pong.kind, IqType::Result);
    client.close().await.expect("clean close");
}

#[tokio::test]
async fn our_client_and_slixmpp_through_ejabberd() {
    if skip_without("ejabberd", "ejabberd", have_ejabberd())
        || skip_without("ejabberd", "slixmpp (pip slixmpp==1.17.0)", have_slixmpp())
    {
        return;
    }
    let pki = Pki::new("ejabberd");
    let mut server = start_ejabberd(&pki);
    let t = Instant::now();
    server.wait_ready().await;
    eprintln!("ejabberd listening after {:?}", t.elapsed());
    pubsub_both_ways(
        &server,
        &pki,
        "localhost",
        "agent1@localhost",
        "watcher@localhost",
    )
    .await;
}

// ============================================================== our client → our node

#[tokio::test]
async fn our_rfc_client_against_our_node() {
    // No third-party peer: the RFC profile end to end on both sides, including the stanza
    // errors a standard client gets where an agent would be disconnected.
    let pki = Pki::new("rfc-self");
    let node = start_node(&pki).await;
    let cred = pki.client("self", "agent7", Some("agent7@localhost"));
    let (client, mut inbound) = our_client(
        node.addr.port(),
        || "(in-process control node: see the test's log output)".into(),
        "localhost",
        &pki,
        &cred,
    )
    .await;
    assert_eq!(
        client.jid().map(ToString::to_string).as_deref(),
        Some("agent7@localhost/rust")
    );
    let node_name = format!("1/1/{VRF}/10.7.7.7/32");
    let publish = |id: &str| {
        PubsubRequest::Publish {
            node: node_name.clone(),
            items: vec![PubsubItem {
                id: None,
                payload: Some(
                    Element::parse(
                        route_entry_xml("10.7.7.7/32", "192.168.0.77", 77).as_bytes(),
                        &Default::default(),
                    )
                    .expect("entry"),
                ),
            }],
        }
        .to_iq(id, None)
    };
    // Spec §6.5 as a stanza error: publish before subscribe is forbidden, the stream stays.
    let r = client.iq(publish("pub0"), STEP).await.expect("answered");
    let e = r.stanza_error().expect("error");
    assert_eq!(
        e.condition,
        xmpp_core::stanza::StanzaCondition::Forbidden,
        "{e}"
    );
    let r = client
        .iq(
            PubsubRequest::Subscribe {
                node: VRF.into(),
                jid: String::new(),
            }
            .to_iq("sub1", None),
            STEP,
        )
        .await
        .expect("answered");
    assert_eq!(r.kind, IqType::Result, "{:?}", r.stanza_error());
    let r = client.iq(publish("pub1"), STEP).await.expect("answered");
    assert_eq!(r.kind, IqType::Result, "{:?}", r.stanza_error());
    // Our agent learns it, and its own route comes back to us as an event.
    let agent = start_agent(&pki, &node);
    agent
        .agent
        .add_port(vm_port("p1", "10.1.1.3"))
        .expect("add port");
    let a = agent.agent.clone();
    eventually("the agent learns the RFC client's route", || {
        a.routes()
            .get(VRF)
            .and_then(|r| r.iter().find(|v| v.prefix == "10.7.7.7/32").cloned())
    })
    .await;
    let ev = timeout(STEP, async {
        while let Some(el) = inbound.recv().await {
            if let Some(ev) = PubsubEvent::from_message(&el) {
                return Some((el, ev));
            }
        }
        None
    })
    .await
    .expect("event within STEP")
    .expect("stream open");
    assert_eq!(ev.1.node, format!("1/1/{VRF}"));
    assert_eq!(ev.1.items[0].id.as_deref(), Some("10.1.1.3/32"));
    assert_eq!(ev.0.get_attr("to"), Some("agent7@localhost/rust"));
    client.close().await.expect("clean close");
}

#[tokio::test]
async fn our_rfc_client_against_our_dns_node() {
    // The DNS node serves the same RFC profile: SASL EXTERNAL, bind, and an answer to
    // every IQ (a DNS update gets a result instead of the Contrail silence).
    use xmpp_core::contrail::dns::{DnsEntry, DnsUpdate};
    let pki = Pki::new("rfc-dns");
    let tls = ServerTls::load(
        &TlsFiles::new(&pki.server.cert, &pki.server.key, &pki.ca_path),
        &ServerTlsOptions::default(),
    )
    .expect("server TLS");
    let settings = dns_node::Settings {
        hostname: "dns-1".into(),
        tls: Some(tls),
        check_peer_name: true,
        timing: Timing::default(),
        limits: Limits::default(),
        max_connections: 16,
        record_grace: Duration::from_secs(60),
        max_records_per_agent: 100,
        drain_timeout: Duration::from_secs(2),
    };
    let xmpp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = xmpp.local_addr().expect("addr").port();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp");
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    let (shared, _task) = dns_node::spawn(settings, xmpp, udp, tcp, None, shutdown);
    let cred = pki.client("dns-self", "compute-5", Some("compute-5@localhost"));
    let (client, _inbound) = our_client(
        port,
        || "(in-process dns node)".into(),
        "localhost",
        &pki,
        &cred,
    )
    .await;
    let update = DnsUpdate {
        transid: 5,
        virtual_dns: "default-domain:default-vdns".into(),
        zone: "contrail.local".into(),
        entries: vec![DnsEntry {
            class: 1,
            rtype: 1,
            name: "vm1.contrail.local".into(),
            data: "10.1.1.3".into(),
            ttl: Some(300),
            priority: None,
        }],
    };
    let mut out = bytes::BytesMut::new();
    update.write(&mut out, "compute-5").expect("write update");
    let text = String::from_utf8(out.to_vec()).expect("utf8");
    let xml = text.trim_start_matches("<?xml version=\"1.0\"?>\n");
    let el = Element::parse(xml.as_bytes(), &Default::default()).expect("update xml");
    let iq = xmpp_core::stanza::Iq::from_element(&el).expect("iq");
    let r = client.iq(iq, STEP).await.expect("update answered");
    assert_eq!(r.kind, IqType::Result, "{:?}", r.stanza_error());
    assert_eq!(
        shared
            .metrics
            .updates
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let r = client
        .iq(ping::ping("p1", None), STEP)
        .await
        .expect("ping answered");
    assert_eq!(r.kind, IqType::Result);
    let unknown = xmpp_core::stanza::Iq::request(
        IqType::Get,
        "v1",
        None,
        Element::with_ns("query", "jabber:iq:version"),
    );
    let r = client.iq(unknown, STEP).await.expect("answered");
    assert_eq!(
        r.stanza_error().map(|e| e.condition),
        Some(xmpp_core::stanza::StanzaCondition::ServiceUnavailable)
    );
    client.close().await.expect("clean close");
}
