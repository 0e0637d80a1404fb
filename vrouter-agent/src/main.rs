//! `vrouter-agent`: flags, logging, configuration, signals; everything else is in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vrouter_agent::agent::DnsSettings;
use vrouter_agent::config::Config;
use vrouter_agent::dns_channel::DnsDefaults;
use vrouter_agent::{Agent, Settings};
use xmpp_core::io::Timing;
use xmpp_core::tls::{ClientTls, ClientTlsOptions};

/// The compute-node XMPP client (contrail-vrouter-agent's XMPP side).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (contrail-vrouter-agent.conf format).
    #[arg(long = "conf-file", alias = "conf_file", value_name = "FILE")]
    conf_file: Option<PathBuf>,
    /// Override a key: `--set CONTROL-NODE.servers=10.0.0.1` (repeatable).
    #[arg(long = "set", value_name = "SECTION.key=value")]
    set: Vec<String>,
    /// Contrail-style dotted overrides (`--DEFAULT.hostname=compute-1`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    dotted: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = match xmpp_core::config::collect_overrides(&args.set, &args.dotted) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vrouter-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let (config, warnings) = match Config::load(args.conf_file.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vrouter-agent: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_filter);
    xmpp_core::tls::set_expiry_warning(config.cert_expiry_warning);
    for w in &warnings {
        warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config, args.conf_file, overrides)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("vrouter-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

async fn load_tls(config: &Config, enabled: bool, key: &str) -> anyhow::Result<Option<ClientTls>> {
    if !enabled {
        warn!("{key}=false: these channels run in plaintext without authentication");
        return Ok(None);
    }
    let files = config.tls_files.clone();
    let opts = ClientTlsOptions {
        verify_server_name: config.verify_server_name,
    };
    let tls = tokio::task::spawn_blocking(move || ClientTls::load(&files, &opts))
        .await
        .context("loading TLS material")??;
    Ok(Some(tls))
}

fn settings(config: &Config, tls: Option<ClientTls>, dns_tls: Option<ClientTls>) -> Settings {
    let mut servers = config.control_servers.clone();
    vrouter_agent::channel::shuffle(&mut servers);
    Settings {
        hostname: config.hostname.clone(),
        subcluster_name: config.subcluster_name.clone(),
        control_servers: servers,
        control_tls: tls,
        timing: Timing {
            hold_time: config.hold_time,
            ..Timing::default()
        },
        route_grace: config.route_grace,
        vhost_ip: config.vhost_ip,
        ports_dir: Some(config.ports_dir.clone()),
        dns: DnsSettings {
            servers: config.dns_servers.clone(),
            tls: dns_tls,
            defaults: DnsDefaults {
                virtual_dns: config.default_virtual_dns.clone(),
                domain: config.default_domain.clone(),
            },
        },
    }
}

async fn run(
    config: Config,
    conf_file: Option<PathBuf>,
    overrides: Vec<String>,
) -> anyhow::Result<()> {
    if config.control_servers.is_empty() {
        warn!("[CONTROL-NODE] servers is empty: no control node to connect to");
    }
    let tls = load_tls(&config, config.auth_enable, "xmpp_auth_enable").await?;
    let dns_tls = load_tls(&config, config.dns_auth_enable, "xmpp_dns_auth_enable").await?;
    let http = match config.http_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen for introspect on {a}"))?,
        ),
        None => None,
    };
    let ipc = match config.port_ipc_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen for the port API on {a}"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    info!(hostname = %config.hostname, auth = config.auth_enable, servers = ?config.control_servers,
        "vrouter-agent starting");
    let (agent, task) =
        vrouter_agent::spawn(settings(&config, tls, dns_tls), http, ipc, shutdown.clone());
    xmpp_core::systemd::notify_ready_logged();
    signals(agent, shutdown, conf_file, overrides).await;
    task.await.context("agent task")?;
    info!("vrouter-agent stopped");
    Ok(())
}

/// SIGTERM/SIGINT: close the streams and exit. SIGHUP: reload certificates, and re-read the
/// configuration to report server-list changes (a changed list takes a restart, as the
/// listeners and channels are bound at start).
async fn signals(
    agent: Arc<Agent>,
    shutdown: CancellationToken,
    conf_file: Option<PathBuf>,
    overrides: Vec<String>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                for tls in [agent.settings.control_tls.clone(), agent.settings.dns.tls.clone()].into_iter().flatten() {
                    match tokio::task::spawn_blocking(move || tls.reload()).await {
                        Ok(Ok(())) => info!("SIGHUP: certificates reloaded; new sessions use them"),
                        Ok(Err(e)) => error!(error = %e, "SIGHUP: reload failed; keeping the current certificates"),
                        Err(e) => error!(error = %e, "SIGHUP: reload task failed"),
                    }
                }
                match Config::load(conf_file.as_deref(), &overrides) {
                    Ok((c, _)) => {
                        let mut now = c.control_servers.clone();
                        let mut before = agent.settings.control_servers.clone();
                        now.sort();
                        before.sort();
                        if now != before {
                            warn!(?now, ?before, "SIGHUP: [CONTROL-NODE] servers changed; restart the agent to apply");
                        }
                    }
                    Err(e) => error!(error = %e, "SIGHUP: configuration error; keeping the running configuration"),
                }
            }
        }
    }
    info!("shutting down");
    shutdown.cancel();
}
