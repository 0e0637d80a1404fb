//! `dns-node`: flags, logging, configuration, signals; everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use dns_node::Settings;
use dns_node::config::Config;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use xmpp_core::io::Timing;
use xmpp_core::tls::{ServerTls, ServerTlsOptions};
use xmpp_core::xml::Limits;

/// Agents' DNS channel (XMPP) and the authoritative DNS server for their records
/// (contrail-dns's XMPP side).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (contrail-dns.conf format).
    #[arg(long = "conf-file", alias = "conf_file", value_name = "FILE")]
    conf_file: Option<PathBuf>,
    /// Override a key: `--set DEFAULT.xmpp_dns_auth_enable=true` (repeatable). Contrail's
    /// `--DEFAULT.key=value` form is accepted too.
    #[arg(long = "set", value_name = "SECTION.key=value")]
    set: Vec<String>,
    /// Contrail-style dotted overrides (`--DEFAULT.hostip=10.0.0.1`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    dotted: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = match xmpp_core::config::collect_overrides(&args.set, &args.dotted) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dns-node: {e}");
            return ExitCode::from(2);
        }
    };
    let (config, warnings) = match Config::load(args.conf_file.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dns-node: configuration error: {e}");
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
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("dns-node: {e:#}");
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

async fn run(config: Config) -> anyhow::Result<()> {
    let tls = if config.auth_enable {
        let files = config.tls_files.clone();
        let tls = tokio::task::spawn_blocking(move || {
            ServerTls::load(&files, &ServerTlsOptions::default())
        })
        .await
        .context("loading TLS material")??;
        Some(tls)
    } else {
        warn!("xmpp_dns_auth_enable=false: agents connect in plaintext without authentication");
        None
    };
    let settings = Settings {
        hostname: config.hostname.clone(),
        tls: tls.clone(),
        check_peer_name: config.check_peer_name,
        timing: Timing {
            hold_time: config.hold_time,
            negotiation_timeout: config.open_timeout,
        },
        limits: Limits {
            max_element_bytes: config.max_stanza_bytes,
            ..Limits::default()
        },
        max_connections: config.max_connections,
        record_grace: config.record_grace,
        max_records_per_agent: config.max_records_per_agent,
        drain_timeout: std::time::Duration::from_secs(5),
    };
    let xmpp = tokio::net::TcpListener::bind(config.xmpp_listen)
        .await
        .with_context(|| format!("cannot listen for XMPP on {}", config.xmpp_listen))?;
    let dns_udp = tokio::net::UdpSocket::bind(config.dns_listen)
        .await
        .with_context(|| format!("cannot bind DNS UDP {}", config.dns_listen))?;
    let dns_tcp = tokio::net::TcpListener::bind(config.dns_listen)
        .await
        .with_context(|| format!("cannot listen for DNS over TCP on {}", config.dns_listen))?;
    let http = match config.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for introspect on {addr}"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone(), tls));
    info!(hostname = %config.hostname, auth = config.auth_enable,
        grace_secs = config.record_grace.as_secs(), "dns-node starting");
    let (_shared, task) = dns_node::spawn(settings, xmpp, dns_udp, dns_tcp, http, shutdown);
    xmpp_core::systemd::notify_ready_logged();
    task.await.context("server task")?;
    info!("dns-node stopped");
    Ok(())
}

/// SIGTERM/SIGINT: shut down. SIGHUP: reload certificates (new sessions use them; live
/// sessions keep theirs).
async fn signals(shutdown: CancellationToken, tls: Option<ServerTls>) {
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
                let Some(tls) = tls.clone() else {
                    info!("SIGHUP: TLS is off, nothing to reload");
                    continue;
                };
                match tokio::task::spawn_blocking(move || tls.reload()).await {
                    Ok(Ok(())) => info!("SIGHUP: certificates reloaded; new sessions use them"),
                    Ok(Err(e)) => error!(error = %e, "SIGHUP: reload failed; keeping the current certificates"),
                    Err(e) => error!(error = %e, "SIGHUP: reload task failed"),
                }
            }
        }
    }
    info!("shutting down");
    shutdown.cancel();
}
