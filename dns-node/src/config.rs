//! The DNS node's configuration: the Contrail keys of spec §8.2 plus documented additions
//! of ours, loaded from `contrail-dns.conf` and command-line overrides.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xmpp_core::config::{ConfigError, Ini, KeyKind, KeySpec, Schema, SectionSpec, Warning};
use xmpp_core::tls::TlsFiles;

/// The XMPP port agents use for DNS (Contrail's fixed `DnsXmppPort`, spec §1).
pub const DEFAULT_XMPP_PORT: u16 = 8093;
/// The DNS port (spec §8.2).
pub const DEFAULT_DNS_PORT: u16 = 53;
/// The introspect port (spec §1).
pub const DEFAULT_HTTP_PORT: u16 = 8092;

const DEFAULT_KEYS: &[KeySpec] = &[
    KeySpec::new(
        "hostip",
        KeyKind::Str,
        "Address the XMPP, DNS and introspect servers listen on (IPv4 or IPv6). Default: \
         all addresses.",
    ),
    KeySpec::new(
        "hostname",
        KeyKind::Str,
        "Our name: the `from` of our stream headers and the SOA primary name server. \
         Default: the machine's host name.",
    ),
    KeySpec::new(
        "xmpp_dns_server_port",
        KeyKind::PORT,
        "(ours) XMPP listen port for agents' DNS channels. Contrail fixes it at 8093 and \
         agents always dial 8093; change it only for tests.",
    )
    .with_default("8093"),
    KeySpec::new(
        "xmpp_dns_auth_enable",
        KeyKind::Bool,
        "Require STARTTLS with a CA-verified client certificate before any stanza (the DNS \
         channel's switch; the agent has the same key).",
    )
    .security()
    .with_default("false"),
    KeySpec::new(
        "xmpp_server_cert",
        KeyKind::Path,
        "Our certificate chain (PEM).",
    )
    .security()
    .with_default("/etc/contrail/ssl/certs/server.pem"),
    KeySpec::new("xmpp_server_key", KeyKind::Path, "Our private key (PEM).")
        .security()
        .with_default("/etc/contrail/ssl/private/server-privkey.pem"),
    KeySpec::new(
        "xmpp_ca_cert",
        KeyKind::Path,
        "CA bundle (PEM) that agents' certificates must chain to.",
    )
    .security()
    .with_default("/etc/contrail/ssl/certs/ca-cert.pem"),
    KeySpec::new(
        "xmpp_check_peer_name",
        KeyKind::Bool,
        "(ours) With auth on, refuse an agent whose name (stream `from` before `/dns`) is \
         not its certificate's CN or a subject alternative name.",
    )
    .security()
    .with_default("true"),
    KeySpec::new(
        "xmpp_hold_time",
        KeyKind::Int { min: 3, max: 3600 },
        "(ours) Hold time in seconds: a session that receives nothing for this long is \
         closed; keepalives are sent every third of it.",
    )
    .with_default("90"),
    KeySpec::new(
        "xmpp_open_timeout",
        KeyKind::Int { min: 1, max: 300 },
        "(ours) Seconds a new connection has to complete its stream negotiation (Contrail's \
         open timer).",
    )
    .with_default("15"),
    KeySpec::new(
        "xmpp_max_stanza_bytes",
        KeyKind::Int {
            min: 4096,
            max: 64 * 1024 * 1024,
        },
        "(ours) Largest accepted stanza; a larger one ends that session.",
    )
    .with_default("524288"),
    KeySpec::new(
        "xmpp_max_connections",
        KeyKind::Int {
            min: 1,
            max: 1_000_000,
        },
        "(ours) Most concurrent XMPP connections; further ones are closed at accept.",
    )
    .with_default("10000"),
    KeySpec::new(
        "record_grace_seconds",
        KeyKind::Int {
            min: 0,
            max: 86_400,
        },
        "(ours) How long an agent's records are still answered after its session ends; a \
         reconnecting agent that re-sends them in time causes no gap.",
    )
    .with_default("30"),
    KeySpec::new(
        "max_records_per_agent",
        KeyKind::Int {
            min: 1,
            max: 10_000_000,
        },
        "(ours) Most records one agent may register; further adds are refused (memory \
         bound against a runaway agent).",
    )
    .with_default("100000"),
    KeySpec::new(
        "dns_server_port",
        KeyKind::PORT,
        "DNS port (UDP and TCP) the records are served on.",
    )
    .with_default("53"),
    KeySpec::new(
        "http_server_port",
        KeyKind::Int { min: 0, max: 65535 },
        "Introspect HTTP port (JSON and /metrics); 0 disables it.",
    )
    .with_default("8092"),
    KeySpec::new(
        "cert_expiry_warning_days",
        KeyKind::Int { min: 0, max: 3650 },
        "Log a warning at start and on SIGHUP when a certificate (own or CA) expires within \
         this many days; 0 turns the warning off. An expired certificate is always refused.",
    )
    .with_default("30"),
    KeySpec::new(
        "log_level",
        KeyKind::Str,
        "SYS_EMERG … SYS_DEBUG (Contrail names) or error/warn/info/debug/trace.",
    )
    .with_default("SYS_NOTICE"),
];

/// What contrail-dns.conf may contain that the DNS node reads.
pub const SCHEMA: Schema = Schema::new(&[SectionSpec::new("DEFAULT", DEFAULT_KEYS)]);

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listen address for XMPP.
    pub xmpp_listen: SocketAddr,
    /// Listen address for DNS (UDP and TCP).
    pub dns_listen: SocketAddr,
    /// Introspect address, `None` when disabled.
    pub http_listen: Option<SocketAddr>,
    /// Our host name.
    pub hostname: String,
    /// STARTTLS required.
    pub auth_enable: bool,
    /// Certificate, key and CA paths.
    pub tls_files: TlsFiles,
    /// Refuse agents whose name does not match their certificate.
    pub check_peer_name: bool,
    /// Hold time.
    pub hold_time: Duration,
    /// Negotiation deadline.
    pub open_timeout: Duration,
    /// Stanza size bound.
    pub max_stanza_bytes: usize,
    /// Connection bound.
    pub max_connections: usize,
    /// How long records outlive their agent's session.
    pub record_grace: Duration,
    /// Record bound per agent.
    pub max_records_per_agent: usize,
    /// Log filter in `tracing` syntax.
    pub log_filter: String,
    /// Certificate expiry warning window.
    pub cert_expiry_warning: Duration,
}

impl Config {
    /// Loads and validates a file with command-line overrides (`SECTION.key=value`).
    /// Returns the configuration and the warnings to log.
    pub fn load(
        path: Option<&Path>,
        overrides: &[String],
    ) -> Result<(Config, Vec<Warning>), ConfigError> {
        let mut ini = match path {
            Some(p) => Ini::load(p)?,
            None => Ini::empty("(no configuration file)"),
        };
        for o in overrides {
            ini.set_override_arg(o)?;
        }
        let warnings = xmpp_core::config::validate(&ini, &SCHEMA)?;
        Ok((Self::from_ini(&ini)?, warnings))
    }

    /// Builds the configuration from a validated document.
    pub fn from_ini(ini: &Ini) -> Result<Config, ConfigError> {
        const D: &str = "DEFAULT";
        let ip: IpAddr = ini
            .get_parsed(D, "hostip", "an IPv4 or IPv6 address")?
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let hostname = match ini.get_str(D, "hostname")? {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => xmpp_core::config::local_hostname(),
        };
        let path = |k: &str, d: &str| -> Result<PathBuf, ConfigError> {
            Ok(ini.get_path(D, k)?.unwrap_or_else(|| PathBuf::from(d)))
        };
        let size = |k: &str, d: u64| -> Result<usize, ConfigError> {
            Ok(usize::try_from(ini.get_u64_or(D, k, d)?).unwrap_or(usize::MAX))
        };
        let http_port = ini.get_u16_or(D, "http_server_port", DEFAULT_HTTP_PORT)?;
        Ok(Config {
            xmpp_listen: SocketAddr::new(
                ip,
                ini.get_u16_or(D, "xmpp_dns_server_port", DEFAULT_XMPP_PORT)?,
            ),
            dns_listen: SocketAddr::new(
                ip,
                ini.get_u16_or(D, "dns_server_port", DEFAULT_DNS_PORT)?,
            ),
            http_listen: (http_port != 0).then(|| SocketAddr::new(ip, http_port)),
            hostname,
            auth_enable: ini.get_bool_or(D, "xmpp_dns_auth_enable", false)?,
            tls_files: TlsFiles::new(
                path("xmpp_server_cert", "/etc/contrail/ssl/certs/server.pem")?,
                path(
                    "xmpp_server_key",
                    "/etc/contrail/ssl/private/server-privkey.pem",
                )?,
                path("xmpp_ca_cert", "/etc/contrail/ssl/certs/ca-cert.pem")?,
            ),
            check_peer_name: ini.get_bool_or(D, "xmpp_check_peer_name", true)?,
            hold_time: Duration::from_secs(ini.get_u64_or(D, "xmpp_hold_time", 90)?),
            open_timeout: Duration::from_secs(ini.get_u64_or(D, "xmpp_open_timeout", 15)?),
            max_stanza_bytes: size("xmpp_max_stanza_bytes", 512 * 1024)?,
            max_connections: size("xmpp_max_connections", 10_000)?,
            record_grace: Duration::from_secs(ini.get_u64_or(D, "record_grace_seconds", 30)?),
            max_records_per_agent: size("max_records_per_agent", 100_000)?,
            cert_expiry_warning: Duration::from_secs(
                ini.get_u64_or(D, "cert_expiry_warning_days", 30)? * 86_400,
            ),
            log_filter: xmpp_core::config::log_filter(
                ini.get_str(D, "log_level")?.unwrap_or("SYS_NOTICE"),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/contrail-dns.conf")
    }

    #[test]
    fn sample_config_parses() {
        let (c, warnings) = Config::load(Some(&sample()), &[]).expect("sample loads");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.xmpp_listen, "127.0.0.1:8093".parse().expect("addr"));
        assert_eq!(c.dns_listen, "127.0.0.1:53".parse().expect("addr"));
        assert_eq!(c.http_listen, Some("127.0.0.1:8092".parse().expect("addr")));
        assert_eq!(c.hostname, "dns-1");
        assert!(c.auth_enable);
        assert!(c.check_peer_name);
        assert_eq!(c.hold_time, Duration::from_secs(90));
        assert_eq!(c.open_timeout, Duration::from_secs(15));
        assert_eq!(c.record_grace, Duration::from_secs(30));
        assert_eq!(c.max_records_per_agent, 100_000);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.log_filter, "info");
        assert_eq!(
            c.tls_files.ca,
            PathBuf::from("/etc/contrail/ssl/certs/ca-cert.pem")
        );
    }

    #[test]
    fn defaults_without_a_file() {
        let (c, _) = Config::load(None, &[]).expect("defaults");
        assert!(!c.auth_enable);
        assert_eq!(c.xmpp_listen.port(), 8093);
        assert_eq!(c.dns_listen.port(), 53);
        assert_eq!(c.http_listen.map(|a| a.port()), Some(8092));
        assert_eq!(c.record_grace, Duration::from_secs(30));
        assert_eq!(c.max_stanza_bytes, 512 * 1024);
        assert!(!c.hostname.is_empty());
        assert!(SCHEMA.check_defaults().is_ok());
    }

    #[test]
    fn overrides_win_and_bad_values_fail() {
        let (c, _) = Config::load(
            Some(&sample()),
            &[
                "DEFAULT.xmpp_dns_auth_enable=false".into(),
                "DEFAULT.dns_server_port=5353".into(),
                "DEFAULT.record_grace_seconds=0".into(),
                "DEFAULT.http_server_port=0".into(),
            ],
        )
        .expect("overrides");
        assert!(!c.auth_enable);
        assert_eq!(c.dns_listen.port(), 5353);
        assert_eq!(c.record_grace, Duration::ZERO);
        assert_eq!(c.http_listen, None);
        let err = Config::load(None, &["DEFAULT.xmpp_dns_auth_enable=maybe".into()])
            .expect_err("strict boolean");
        let msg = err.to_string();
        assert!(
            msg.contains("xmpp_dns_auth_enable") && msg.contains("maybe"),
            "{msg}"
        );
        let err = Config::load(None, &["DEFAULT.hostip=dns-1".into()]).expect_err("address");
        assert!(err.to_string().contains("hostip"), "{err}");
    }

    #[test]
    fn misspelt_security_key_is_an_error() {
        let dir = std::env::temp_dir().join(format!("dns-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("d.conf");
        std::fs::write(&f, "[DEFAULT]\nxmpp_dns_auth_enabled=true\n").expect("write");
        let err = Config::load(Some(&f), &[]).expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("d.conf:2") && msg.contains("xmpp_dns_auth_enable"),
            "{msg}"
        );
        // Other contrail-dns keys (named, rndc, collectors…) load with a warning.
        std::fs::write(&f, "[DEFAULT]\nnamed_config_file=contrail-named.conf\n").expect("write");
        let (_, warnings) = Config::load(Some(&f), &[]).expect("unknown key is a warning");
        assert_eq!(warnings.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
