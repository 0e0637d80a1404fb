//! The control node's configuration: the Contrail keys of spec §8.1 plus documented
//! additions of ours, loaded from `contrail-control.conf` and command-line overrides.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xmpp_core::config::{ConfigError, Ini, KeyKind, KeySpec, Schema, SectionSpec, Warning};
use xmpp_core::tls::TlsFiles;

const DEFAULT_KEYS: &[KeySpec] = &[
    KeySpec::new(
        "hostip",
        KeyKind::Str,
        "Address the XMPP server listens on (IPv4 or IPv6). Default: all addresses, IPv4 \
         and IPv6 (`::`, falling back to `0.0.0.0` where IPv6 is off).",
    ),
    KeySpec::new(
        "hostname",
        KeyKind::Str,
        "Our name: the `from` of our stream headers. Default: the machine's host name.",
    ),
    KeySpec::new("xmpp_server_port", KeyKind::PORT, "XMPP listen port.").with_default("5269"),
    KeySpec::new(
        "xmpp_auth_enable",
        KeyKind::Bool,
        "Require STARTTLS with a CA-verified client certificate before any stanza.",
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
        "With auth on, refuse an agent whose stream `from` is not its certificate's CN or a \
         subject alternative name. Turn off only for legacy certificates (Contrail has no \
         such check).",
    )
    .security()
    .with_default("true"),
    KeySpec::new(
        "xmpp_hold_time",
        KeyKind::Int { min: 3, max: 3600 },
        "Hold time in seconds: a session that receives nothing for this long is closed; \
         keepalives are sent every third of it.",
    )
    .with_default("90"),
    KeySpec::new(
        "xmpp_open_timeout",
        KeyKind::Int { min: 1, max: 300 },
        "Seconds a new connection has to complete its stream negotiation (Contrail's open \
         timer).",
    )
    .with_default("15"),
    KeySpec::new(
        "xmpp_max_stanza_bytes",
        KeyKind::Int {
            min: 4096,
            max: 64 * 1024 * 1024,
        },
        "Largest accepted stanza; a larger one ends that session with policy-violation.",
    )
    .with_default("524288"),
    KeySpec::new(
        "xmpp_max_connections",
        KeyKind::Int {
            min: 1,
            max: 1_000_000,
        },
        "Most concurrent XMPP connections; further ones are closed at accept.",
    )
    .with_default("10000"),
    KeySpec::new(
        "xmpp_send_queue_len",
        KeyKind::Int {
            min: 16,
            max: 10_000_000,
        },
        "Route updates queued per agent before the agent counts as stuck and its session is \
         closed (it reconnects and resynchronises).",
    )
    .with_default("65536"),
    KeySpec::new(
        "http_server_port",
        KeyKind::Int { min: 0, max: 65535 },
        "Introspect HTTP port (JSON and /metrics); 0 disables it.",
    )
    .with_default("8083"),
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

/// What contrail-control.conf may contain that the control node reads.
pub const SCHEMA: Schema = Schema::new(&[SectionSpec::new("DEFAULT", DEFAULT_KEYS)]);

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listen address for XMPP.
    pub listen: SocketAddr,
    /// Our host name.
    pub hostname: String,
    /// STARTTLS required.
    pub auth_enable: bool,
    /// Certificate, key and CA paths.
    pub tls_files: TlsFiles,
    /// Refuse agents whose `from` does not match their certificate.
    pub check_peer_name: bool,
    /// Hold time.
    pub hold_time: Duration,
    /// Negotiation deadline.
    pub open_timeout: Duration,
    /// Stanza size bound.
    pub max_stanza_bytes: usize,
    /// Connection bound.
    pub max_connections: usize,
    /// Per-agent queue bound.
    pub send_queue_len: usize,
    /// Introspect address, `None` when disabled.
    pub http_listen: Option<SocketAddr>,
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
            // `::` is dual-stack on Linux (IPV6_V6ONLY off by default): IPv4 and IPv6 agents.
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let port = ini.get_u16_or(D, "xmpp_server_port", 5269)?;
        let hostname = match ini.get_str(D, "hostname")? {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => xmpp_core::config::local_hostname(),
        };
        let path = |k: &str, d: &str| -> Result<PathBuf, ConfigError> {
            Ok(ini.get_path(D, k)?.unwrap_or_else(|| PathBuf::from(d)))
        };
        let http_port = ini.get_u16_or(D, "http_server_port", 8083)?;
        Ok(Config {
            listen: SocketAddr::new(ip, port),
            hostname,
            auth_enable: ini.get_bool_or(D, "xmpp_auth_enable", false)?,
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
            max_stanza_bytes: usize::try_from(ini.get_u64_or(
                D,
                "xmpp_max_stanza_bytes",
                512 * 1024,
            )?)
            .unwrap_or(usize::MAX),
            max_connections: usize::try_from(ini.get_u64_or(D, "xmpp_max_connections", 10_000)?)
                .unwrap_or(usize::MAX),
            send_queue_len: usize::try_from(ini.get_u64_or(D, "xmpp_send_queue_len", 65_536)?)
                .unwrap_or(usize::MAX),
            http_listen: (http_port != 0).then(|| SocketAddr::new(ip, http_port)),
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
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/contrail-control.conf")
    }

    #[test]
    fn sample_config_parses() {
        let (c, warnings) = Config::load(Some(&sample()), &[]).expect("sample loads");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.listen, "127.0.0.1:5269".parse().expect("addr"));
        assert_eq!(c.hostname, "control-1");
        assert!(c.auth_enable);
        assert!(c.check_peer_name);
        assert_eq!(c.hold_time, Duration::from_secs(90));
        assert_eq!(c.http_listen, Some("127.0.0.1:8083".parse().expect("addr")));
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
        assert_eq!(c.listen.port(), 5269);
        assert_eq!(c.max_stanza_bytes, 512 * 1024);
        assert!(SCHEMA.check_defaults().is_ok());
    }

    #[test]
    fn overrides_win_and_bad_booleans_fail() {
        let (c, _) = Config::load(
            Some(&sample()),
            &[
                "DEFAULT.xmpp_auth_enable=false".into(),
                "DEFAULT.xmpp_server_port=15269".into(),
            ],
        )
        .expect("overrides");
        assert!(!c.auth_enable);
        assert_eq!(c.listen.port(), 15269);
        let err = Config::load(None, &["DEFAULT.xmpp_auth_enable=True".into()])
            .expect_err("strict boolean");
        let msg = err.to_string();
        assert!(
            msg.contains("xmpp_auth_enable") && msg.contains("True"),
            "{msg}"
        );
    }

    #[test]
    fn misspelt_security_key_is_an_error() {
        let dir = std::env::temp_dir().join(format!("cn-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("c.conf");
        std::fs::write(&f, "[DEFAULT]\nxmpp_auth_enabled=true\nlog_file=/tmp/x\n").expect("write");
        let err = Config::load(Some(&f), &[]).expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("c.conf:2") && msg.contains("xmpp_auth_enable"),
            "{msg}"
        );
        std::fs::write(&f, "[DEFAULT]\nlog_file=/tmp/x\n").expect("write");
        let (_, warnings) = Config::load(Some(&f), &[]).expect("unknown key is a warning");
        assert_eq!(warnings.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
