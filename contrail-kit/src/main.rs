//! `contrail-kit`: PKI in one command, and the local lab.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use contrail_kit::pki::{self, IssueRequest, Role};
use xmpp_core::tls::{CertInfo, TlsFileKind};

/// Operators' kit for the XMPP control plane daemons.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates for control, DNS and compute nodes.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Print the configuration reference of the three daemons (Markdown), generated from
    /// their schemas.
    ConfigReference,
    /// Run a local lab: a control node, a DNS node and agents with TLS on generated
    /// certificates, until Ctrl-C.
    Lab {
        /// Number of agents.
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Ports (VMs) per agent: one route and one DNS name each.
        #[arg(long, default_value_t = 2)]
        routes: usize,
        /// Run without TLS on both channels.
        #[arg(long)]
        plain: bool,
        /// State directory (PKI, configs, logs); replaced if it exists.
        #[arg(long, default_value = "lab-state")]
        dir: PathBuf,
        /// Keep the state directory after stopping.
        #[arg(long)]
        keep: bool,
        /// Directory of the daemon binaries (default: next to contrail-kit).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Path of the control-node binary (overrides --bin-dir).
        #[arg(long)]
        control_node_bin: Option<PathBuf>,
        /// Path of the dns-node binary (overrides --bin-dir).
        #[arg(long)]
        dns_node_bin: Option<PathBuf>,
        /// Path of the vrouter-agent binary (overrides --bin-dir).
        #[arg(long)]
        vrouter_agent_bin: Option<PathBuf>,
        /// Seconds to wait for convergence.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Stop right after the summary instead of waiting for Ctrl-C.
        #[arg(long)]
        exit_after_converge: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a CA (certificate + passphrase-free key) in a directory kept apart from the
    /// servers.
    Init {
        /// Directory for ca-cert.pem and ca-key.pem (created 0700).
        #[arg(long, default_value = "contrail-ca")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Contrail XMPP CA")]
        cn: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for a node, written as <out>/certs/server.pem,
    /// <out>/private/server-privkey.pem (0600) and <out>/certs/ca-cert.pem: copy <out> to
    /// /etc/contrail/ssl on the node and the Contrail defaults find them.
    Issue {
        /// The CA directory made by `init`.
        #[arg(long, default_value = "contrail-ca")]
        ca: PathBuf,
        /// control, dns (serverAuth) or compute (clientAuth).
        #[arg(long, value_enum)]
        role: Role,
        /// Host name: CN and first DNS name (for compute nodes: the agent's `hostname`).
        #[arg(long)]
        name: String,
        /// Additional DNS names (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP addresses (repeatable; agents configured with IPs verify them).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Validity in days (rotate well before it ends; SIGHUP reloads without restart).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Output directory (default: ./<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print a certificate's subject, SANs, EKUs and validity.
    Show {
        /// A PEM certificate file (every certificate in it is shown).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("contrail-kit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::ConfigReference => print!("{}", contrail_kit::reference::markdown()),
        Command::Lab {
            agents,
            routes,
            plain,
            dir,
            keep,
            bin_dir,
            control_node_bin,
            dns_node_bin,
            vrouter_agent_bin,
            timeout,
            exit_after_converge,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(contrail_kit::lab::run(contrail_kit::lab::LabOptions {
                agents,
                routes,
                plain,
                dir,
                keep,
                bin_dir,
                binaries: [control_node_bin, dns_node_bin, vrouter_agent_bin],
                timeout: std::time::Duration::from_secs(timeout),
                exit_after_converge,
            }))?;
        }
        Command::Pki(PkiCommand::Init {
            dir,
            cn,
            days,
            force,
        }) => {
            let files = pki::init(&dir, &cn, days, force)?;
            println!("CA certificate: {}", files.cert.display());
            println!("CA key:         {} (mode 0600)", files.key.display());
            eprintln!(
                "warning: {} signs certificates. Keep it on this machine only: never copy it \
                 to a control, DNS or compute node.",
                files.key.display()
            );
        }
        Command::Pki(PkiCommand::Issue {
            ca,
            role,
            name,
            dns,
            ips,
            days,
            out,
            force,
        }) => {
            let out = out.unwrap_or_else(|| PathBuf::from(&name));
            let req = IssueRequest {
                role,
                name,
                dns,
                ips,
                days,
            };
            let files = pki::issue(&ca, &req, &out, force)?;
            println!("certificate: {}  (xmpp_server_cert)", files.cert.display());
            println!(
                "key:         {}  (xmpp_server_key, mode 0600)",
                files.key.display()
            );
            println!("CA:          {}  (xmpp_ca_cert)", files.ca.display());
            let info = CertInfo::load(TlsFileKind::Cert, &files.cert)?;
            for c in info {
                println!("{c}");
            }
        }
        Command::Pki(PkiCommand::Show { file }) => {
            for c in CertInfo::load(TlsFileKind::Cert, &file)? {
                println!("{c}");
            }
        }
    }
    Ok(())
}
