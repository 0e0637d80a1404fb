//! The one-command local lab: a PKI, Contrail-style INI files, one control node, one DNS
//! node and N agents started as real processes on free loopback ports, ports registered on
//! every agent through its HTTP API, live progress until every agent has learned every
//! other agent's routes and every VM name resolves through the DNS node, a summary, then
//! running until Ctrl-C.
//!
//! Every child process is killed when the lab ends, also on errors (`kill_on_drop`), and
//! stopped with SIGTERM first on a normal stop.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};

use crate::pki::{self, IssueRequest, Role};

/// Lab options.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of agents.
    pub agents: usize,
    /// Ports (VMs, one IPv4 route and one DNS name each) per agent.
    pub routes: usize,
    /// TLS off on both channels.
    pub plain: bool,
    /// State directory (PKI, configs, logs, ports).
    pub dir: PathBuf,
    /// Keep the state directory at the end.
    pub keep: bool,
    /// Where the daemon binaries are (default: next to this executable).
    pub bin_dir: Option<PathBuf>,
    /// Explicit paths of the three daemons, overriding `bin_dir` (control node, DNS node,
    /// agent).
    pub binaries: [Option<PathBuf>; 3],
    /// Give up converging after this long.
    pub timeout: Duration,
    /// Stop after printing the summary instead of waiting for Ctrl-C (tests).
    pub exit_after_converge: bool,
}

/// The VRF every lab port is in: all agents learn each other's routes.
const VN: &str = "default-domain:lab:net-a";
const VRF: &str = "default-domain:lab:net-a:net-a";
const ZONE: &str = "lab.example";
const VDNS: &str = "default-domain:lab-vdns";

struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Children, killed on drop unless stopped cleanly.
struct Fleet {
    daemons: Vec<Daemon>,
}

impl Fleet {
    async fn stop(&mut self) {
        for d in &self.daemons {
            if let Some(pid) = d.child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        for d in &mut self.daemons {
            match tokio::time::timeout(Duration::from_secs(10), d.child.wait()).await {
                Ok(Ok(status)) => println!("  {:<14} stopped ({status})", d.name),
                _ => {
                    let _ = d.child.kill().await;
                    println!("  {:<14} killed (did not stop within 10 s)", d.name);
                }
            }
        }
    }

    /// A daemon that exited early, with the tail of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for d in &mut self.daemons {
            if let Ok(Some(status)) = d.child.try_wait() {
                let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{} exited ({status}); last log lines from {}:\n{}",
                    d.name,
                    d.log.display(),
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }
}

/// Picks a free loopback TCP port (bound and released; a small race remains, reported
/// clearly by the daemon if it happens).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A free port usable for both TCP and UDP (the DNS server listens on both).
fn free_tcp_udp_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let p = free_port()?;
        if std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no port free for both TCP and UDP on 127.0.0.1")
}

fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "daemon binary {} not found; build the workspace first: cargo build --release",
            p.display()
        );
    }
    Ok(p)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn start(
    fleet: &mut Fleet,
    dir: &Path,
    name: &str,
    exe: &Path,
    conf: &Path,
) -> anyhow::Result<()> {
    let log = dir.join("logs").join(format!("{name}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(exe)
        .arg("--conf-file")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    fleet.daemons.push(Daemon {
        name: name.to_owned(),
        child,
        log,
    });
    Ok(())
}

/// A minimal HTTP/1.1 exchange (`Connection: close`); returns status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("{addr}{path}: no answer"))??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{addr}{path}: not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies from axum: drop the chunk-size lines.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http(addr, "GET", path, "").await?;
    if status != 200 {
        bail!("GET {addr}{path}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {addr}{path}: not JSON"))
}

/// One DNS query over UDP; returns the answers' data as text, or the response code.
async fn resolve(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> anyhow::Result<Result<Vec<String>, ResponseCode>> {
    let mut m = Message::new(0x5a5a, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, rtype));
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    sock.send_to(&m.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf))
        .await
        .map_err(|_| anyhow!("no DNS answer"))??;
    let r = Message::from_vec(&buf[..n])?;
    if r.metadata.response_code != ResponseCode::NoError {
        return Ok(Err(r.metadata.response_code));
    }
    Ok(Ok(r
        .answers
        .iter()
        .map(|a| match &a.data {
            RData::A(x) => x.to_string(),
            RData::AAAA(x) => x.to_string(),
            RData::PTR(x) => x.to_string(),
            other => format!("{other:?}"),
        })
        .collect()))
}

struct AgentInfo {
    name: String,
    http: SocketAddr,
    api: SocketAddr,
    vms: Vec<(String, Ipv4Addr)>,
}

/// Runs the lab. Returns after Ctrl-C (or at once after the summary with
/// `exit_after_converge`).
pub async fn run(opts: LabOptions) -> anyhow::Result<()> {
    if opts.agents == 0 || opts.agents > 200 {
        bail!("--agents must be between 1 and 200");
    }
    if opts.routes == 0 || opts.routes > 250 {
        bail!("--routes must be between 1 and 250");
    }
    let bin_dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("cannot locate the daemon binaries"))?,
    };
    let pick = |i: usize, name: &str| match &opts.binaries[i] {
        Some(p) if p.is_file() => Ok(p.clone()),
        Some(p) => Err(anyhow!("daemon binary {} not found", p.display())),
        None => bin(&bin_dir, name),
    };
    let exe_control = pick(0, "control-node")?;
    let exe_dns = pick(1, "dns-node")?;
    let exe_agent = pick(2, "vrouter-agent")?;

    let dir = &opts.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("clearing the state directory {}", dir.display()))?;
    }
    for sub in ["logs", "conf"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {} (is it writable?)", dir.join(sub).display()))?;
    }
    let tls = !opts.plain;
    let t0 = Instant::now();
    println!("lab: state in {}", dir.display());

    // PKI.
    let ca = dir.join("pki/ca");
    if tls {
        pki::init(&ca, "Contrail lab CA", 30, true)?;
        let issue = |role, name: &str, ips: Vec<std::net::IpAddr>| -> anyhow::Result<PathBuf> {
            let out = dir.join("pki").join(name);
            pki::issue(
                &ca,
                &IssueRequest {
                    role,
                    name: name.to_owned(),
                    dns: vec!["localhost".into()],
                    ips,
                    days: 7,
                },
                &out,
                true,
            )?;
            Ok(out)
        };
        let lo = vec![std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)];
        issue(Role::Control, "control-1", lo.clone())?;
        issue(Role::Dns, "dns-1", lo)?;
        for i in 1..=opts.agents {
            issue(Role::Compute, &format!("compute-{i}"), vec![])?;
        }
        println!(
            "lab: PKI ready (CA + {} node certificates)",
            opts.agents + 2
        );
    }
    let tls_keys = |name: &str| -> String {
        if !tls {
            return String::new();
        }
        let p = dir.join("pki").join(name);
        format!(
            "xmpp_server_cert={}\nxmpp_server_key={}\nxmpp_ca_cert={}\n",
            p.join("certs/server.pem").display(),
            p.join("private/server-privkey.pem").display(),
            p.join("certs/ca-cert.pem").display()
        )
    };

    // Ports and configs.
    let control_xmpp = free_port()?;
    let control_http = free_port()?;
    let dns_xmpp = free_port()?;
    let dns_port = free_tcp_udp_port()?;
    let dns_http = free_port()?;
    let control_conf = dir.join("conf/contrail-control.conf");
    write(
        &control_conf,
        &format!(
            "[DEFAULT]\nhostip=127.0.0.1\nhostname=control-1\nxmpp_server_port={control_xmpp}\n\
             xmpp_auth_enable={tls}\n{}http_server_port={control_http}\nlog_level=SYS_NOTICE\n",
            tls_keys("control-1")
        ),
    )?;
    let dns_conf = dir.join("conf/contrail-dns.conf");
    write(
        &dns_conf,
        &format!(
            "[DEFAULT]\nhostip=127.0.0.1\nhostname=dns-1\nxmpp_dns_server_port={dns_xmpp}\n\
             xmpp_dns_auth_enable={tls}\n{}dns_server_port={dns_port}\nhttp_server_port={dns_http}\n\
             log_level=SYS_NOTICE\n",
            tls_keys("dns-1")
        ),
    )?;
    let mut agents = Vec::new();
    for i in 1..=opts.agents {
        let name = format!("compute-{i}");
        let http_port = free_port()?;
        let api_port = free_port()?;
        let conf = dir.join(format!("conf/{name}.conf"));
        write(
            &conf,
            &format!(
                "[DEFAULT]\nhostname={name}\nxmpp_auth_enable={tls}\nxmpp_dns_auth_enable={tls}\n{}\
                 http_server_ip=127.0.0.1\nhttp_server_port={http_port}\nport_ipc_port={api_port}\n\
                 ports_dir={}\nroute_grace_time=5\nlog_level=SYS_NOTICE\n\n\
                 [CONTROL-NODE]\nservers=127.0.0.1:{control_xmpp}\n\n\
                 [DNS]\nservers=127.0.0.1:{dns_port}\nxmpp_port={dns_xmpp}\nvirtual_dns={VDNS}\ndomain={ZONE}\n\n\
                 [VIRTUAL-HOST-INTERFACE]\nip=127.0.0.{}/8\n",
                tls_keys(&name),
                dir.join(format!("ports/{name}")).display(),
                (i % 250) + 1
            ),
        )?;
        let vms = (1..=opts.routes)
            .map(|j| {
                (
                    format!("vm-{i}-{j}"),
                    Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, j as u8),
                )
            })
            .collect();
        agents.push((
            conf,
            AgentInfo {
                name,
                http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
                api: SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
                vms,
            },
        ));
    }

    // Daemons.
    let mut fleet = Fleet {
        daemons: Vec::new(),
    };
    let result = async {
        start(&mut fleet, dir, "control-1", &exe_control, &control_conf).await?;
        start(&mut fleet, dir, "dns-1", &exe_dns, &dns_conf).await?;
        for (conf, a) in &agents {
            start(&mut fleet, dir, &a.name, &exe_agent, conf).await?;
        }
        println!(
            "lab: started control-1, dns-1 and {} agents (TLS {})",
            agents.len(),
            if tls { "on" } else { "off" }
        );
        converge(
            &mut fleet,
            &opts,
            &agents,
            control_http,
            dns_http,
            dns_port,
            t0,
        )
        .await
    }
    .await;
    match result {
        Ok(()) => {
            if !opts.exit_after_converge {
                println!("lab: running; press Ctrl-C to stop");
                wait_for_stop().await;
            }
            println!("lab: stopping");
            fleet.stop().await;
        }
        Err(e) => {
            println!("lab: failed; stopping every daemon");
            fleet.stop().await;
            if !opts.keep {
                println!("lab: logs kept in {}", dir.join("logs").display());
            }
            return Err(e);
        }
    }
    if !opts.keep {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("lab: state directory removed (use --keep to keep it)");
    }
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn converge(
    fleet: &mut Fleet,
    opts: &LabOptions,
    agents: &[(PathBuf, AgentInfo)],
    control_http: u16,
    dns_http: u16,
    dns_port: u16,
    t0: Instant,
) -> anyhow::Result<()> {
    let control = SocketAddr::from((Ipv4Addr::LOCALHOST, control_http));
    let dnsh = SocketAddr::from((Ipv4Addr::LOCALHOST, dns_http));
    let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, dns_port));
    let deadline = t0 + opts.timeout;
    let tick = Duration::from_millis(200);

    // Every agent's port API answers: register its VMs.
    for (_, a) in agents {
        loop {
            fleet.check_alive()?;
            if Instant::now() > deadline {
                bail!("{}: port API at {} did not come up", a.name, a.api);
            }
            if http(a.api, "GET", "/ports", "").await.is_ok() {
                break;
            }
            tokio::time::sleep(tick).await;
        }
        for (k, (vm, ip)) in a.vms.iter().enumerate() {
            let body = serde_json::json!({
                "id": format!("{}-port-{}", a.name, k + 1),
                "vm-name": vm,
                "mac-address": format!("02:00:{:02x}:{:02x}:00:{:02x}", ip.octets()[1], ip.octets()[2], ip.octets()[3]),
                "ip-address": ip.to_string(),
                "vn-name": VN,
            })
            .to_string();
            let (status, text) = http(a.api, "POST", "/port", &body).await?;
            if status != 200 {
                bail!("{}: POST /port refused: HTTP {status}: {text}", a.name);
            }
        }
    }
    println!(
        "lab: registered {} ports on {} agents",
        agents.len() * opts.routes,
        agents.len()
    );

    let want_routes = (agents.len() - 1) * opts.routes;
    let names: Vec<(String, Ipv4Addr)> = agents.iter().flat_map(|(_, a)| a.vms.clone()).collect();
    let mut last_line = String::new();
    let (routes_at, dns_at) = loop {
        fleet.check_alive()?;
        let mut converged_agents = 0;
        let mut route_total = 0;
        for (_, a) in agents {
            let n = match get_json(a.http, "/routes").await {
                Ok(v) => v.get(VRF).and_then(|r| r.as_array()).map_or(0, Vec::len),
                Err(_) => 0,
            };
            route_total += n;
            if n >= want_routes {
                converged_agents += 1;
            }
        }
        let mut resolved = 0;
        for (vm, ip) in &names {
            if let Ok(Ok(v)) = resolve(dns, &format!("{vm}.{ZONE}."), RecordType::A).await
                && v.contains(&ip.to_string())
            {
                resolved += 1;
            }
        }
        let progress = format!(
            "agents converged {converged_agents}/{}  routes learned {route_total}/{}  names resolving {resolved}/{}",
            agents.len(),
            want_routes * agents.len(),
            names.len()
        );
        if progress != last_line {
            println!("lab: {:>5.1}s  {progress}", t0.elapsed().as_secs_f64());
            last_line = progress;
        }
        if converged_agents == agents.len() && resolved == names.len() {
            break (t0.elapsed(), t0.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "not converged after {:?} (see the logs in {})",
                opts.timeout,
                opts.dir.join("logs").display()
            );
        }
        tokio::time::sleep(tick).await;
    };

    // Summary.
    let conns = get_json(control, "/connections").await.unwrap_or_default();
    let dns_agents = get_json(dnsh, "/agents").await.unwrap_or_default();
    let mut auth: BTreeMap<String, (String, String)> = BTreeMap::new();
    for c in conns.as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?").to_owned();
        auth.entry(name).or_default().0 = c["auth_type"].as_str().unwrap_or("?").to_owned();
    }
    for c in dns_agents.as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?").to_owned();
        auth.entry(name).or_default().1 = c["auth_type"].as_str().unwrap_or("?").to_owned();
    }
    let (_, sample_ip) = names[0];
    let ptr_name = {
        let o = sample_ip.octets();
        format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
    };
    let ptr = resolve(dns, &ptr_name, RecordType::PTR).await.ok();
    println!();
    println!("==== lab summary ====");
    println!("agents:               {}", agents.len());
    println!(
        "routes per agent:     {} (each agent learned {want_routes})",
        opts.routes
    );
    println!(
        "converged in:         {:.2} s (routes), {:.2} s (DNS)",
        routes_at.as_secs_f64(),
        dns_at.as_secs_f64()
    );
    println!(
        "TLS:                  {}",
        if opts.plain {
            "off (--plain)"
        } else {
            "on, mutual, both channels"
        }
    );
    println!("channels (control / DNS auth type):");
    for (name, (c, d)) in &auth {
        println!("  {name:<14} control {c:<4} dns {d}");
    }
    println!("sample PTR:           {ptr_name} -> {ptr:?}");
    println!("introspect:");
    println!("  control-1  http://{control}/connections  /vrfs  /metrics");
    println!("  dns-1      http://{dnsh}/agents  /zones  /metrics   (DNS on {dns} udp+tcp)");
    for (_, a) in agents {
        println!(
            "  {:<10} http://{}/channels  /routes  /metrics   (port API http://{}/port)",
            a.name, a.http, a.api
        );
    }
    println!("=====================");
    Ok(())
}
