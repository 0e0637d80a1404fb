//! The agent's configuration: the Contrail keys of spec §8.3 plus documented additions of
//! ours, loaded from `contrail-vrouter-agent.conf` and command-line overrides.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xmpp_core::config::{ConfigError, Ini, KeyKind, KeySpec, Schema, SectionSpec, Warning};
use xmpp_core::tls::TlsFiles;

/// Default XMPP port of control nodes (spec §1).
pub const CONTROL_PORT: u16 = 5269;
/// The XMPP port of DNS nodes; Contrail fixes it (spec §1).
pub const DNS_XMPP_PORT: u16 = 8093;

const DEFAULT_KEYS: &[KeySpec] = &[
    KeySpec::new(
        "hostname",
        KeyKind::Str,
        "Our XMPP identity (stream `from`). Default: the machine's host name.",
    ),
    KeySpec::new(
        "xmpp_auth_enable",
        KeyKind::Bool,
        "TLS (STARTTLS, mutual authentication) on the channels to control nodes.",
    )
    .security()
    .with_default("false"),
    KeySpec::new(
        "xmpp_dns_auth_enable",
        KeyKind::Bool,
        "TLS on the channels to DNS nodes, independent of xmpp_auth_enable.",
    )
    .security()
    .with_default("false"),
    KeySpec::new(
        "xmpp_server_cert",
        KeyKind::Path,
        "Our certificate chain (PEM), presented to control and DNS nodes.",
    )
    .security()
    .with_default("/etc/contrail/ssl/certs/server.pem"),
    KeySpec::new("xmpp_server_key", KeyKind::Path, "Our private key (PEM).")
        .security()
        .with_default("/etc/contrail/ssl/private/server-privkey.pem"),
    KeySpec::new(
        "xmpp_ca_cert",
        KeyKind::Path,
        "CA bundle (PEM) the servers' certificates must chain to.",
    )
    .security()
    .with_default("/etc/contrail/ssl/certs/ca-cert.pem"),
    KeySpec::new(
        "xmpp_verify_server_name",
        KeyKind::Bool,
        "Check the server's address against its certificate (IP SAN for `ip` entries). \
         Turn off only for legacy certificates; the chain is still verified.",
    )
    .security()
    .with_default("true"),
    KeySpec::new(
        "xmpp_hold_time",
        KeyKind::Int { min: 3, max: 3600 },
        "Hold time in seconds; keepalives every third of it.",
    )
    .with_default("90"),
    KeySpec::new(
        "route_grace_time",
        KeyKind::Int { min: 0, max: 86400 },
        "Seconds routes learned only through a channel that went down are kept before \
         they are removed.",
    )
    .with_default("30"),
    KeySpec::new(
        "http_server_port",
        KeyKind::Int { min: 0, max: 65535 },
        "Introspect HTTP port (JSON, /metrics); 0 disables it.",
    )
    .with_default("8085"),
    KeySpec::new(
        "http_server_ip",
        KeyKind::Str,
        "Address introspect and the port API listen on.",
    )
    .with_default("127.0.0.1"),
    KeySpec::new(
        "port_ipc_port",
        KeyKind::Int { min: 0, max: 65535 },
        "Port API (POST /port, DELETE /port/{id}); 0 disables it.",
    )
    .with_default("9091"),
    KeySpec::new(
        "ports_dir",
        KeyKind::Path,
        "Directory of port JSON files (one per port), read at start and kept in step with \
         the port API so ports survive a restart.",
    )
    .with_default("/var/lib/contrail/ports"),
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
        "SYS_NOTICE, SYS_DEBUG, … or debug/info/…",
    )
    .with_default("SYS_NOTICE"),
];

const CONTROL_KEYS: &[KeySpec] = &[
    KeySpec::new(
        "servers",
        KeyKind::Endpoints {
            default_port: CONTROL_PORT,
        },
        "Control nodes, space-separated `ip[:port]`; the agent uses two of them.",
    ),
    KeySpec::new(
        "subcluster_name",
        KeyKind::Str,
        "Sent as the stream header's default namespace (spec §3.1).",
    )
    .with_default(""),
];

const DNS_KEYS: &[KeySpec] = &[
    KeySpec::new(
        "servers",
        KeyKind::Endpoints { default_port: 53 },
        "DNS nodes, space-separated `ip[:port]` (the port is the DNS port; XMPP is 8093).",
    ),
    KeySpec::new(
        "xmpp_port",
        KeyKind::PORT,
        "XMPP port of the DNS nodes (Contrail fixes 8093).",
    )
    .with_default("8093"),
    KeySpec::new(
        "virtual_dns",
        KeyKind::Str,
        "Default virtual-DNS name for ports that do not name one.",
    )
    .with_default("default-domain:default-vdns"),
    KeySpec::new(
        "domain",
        KeyKind::Str,
        "Default DNS zone for ports that do not name one.",
    )
    .with_default("contrail.local"),
];

const VHOST_KEYS: &[KeySpec] = &[KeySpec::new(
    "ip",
    KeyKind::Str,
    "The vhost0 address (`a.b.c.d/len`): next-hop of our routes.",
)];

/// What contrail-vrouter-agent.conf may contain that the agent reads.
pub const SCHEMA: Schema = Schema::new(&[
    SectionSpec::new("DEFAULT", DEFAULT_KEYS),
    SectionSpec::new("CONTROL-NODE", CONTROL_KEYS),
    SectionSpec::new("DNS", DNS_KEYS),
    SectionSpec::new("VIRTUAL-HOST-INTERFACE", VHOST_KEYS),
]);

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our name.
    pub hostname: String,
    /// Control nodes, as configured (the agent uses the first two, spec §5.7).
    pub control_servers: Vec<SocketAddr>,
    /// Sub-cluster name (stream namespace).
    pub subcluster_name: String,
    /// DNS nodes' XMPP addresses (first two used).
    pub dns_servers: Vec<SocketAddr>,
    /// Default virtual DNS for ports.
    pub default_virtual_dns: String,
    /// Default DNS zone for ports.
    pub default_domain: String,
    /// TLS to control nodes.
    pub auth_enable: bool,
    /// TLS to DNS nodes.
    pub dns_auth_enable: bool,
    /// Certificate, key and CA.
    pub tls_files: TlsFiles,
    /// Verify the server's address against its certificate.
    pub verify_server_name: bool,
    /// Hold time.
    pub hold_time: Duration,
    /// Grace period for learned routes of a channel that went down.
    pub route_grace: Duration,
    /// The next-hop address of our routes.
    pub vhost_ip: IpAddr,
    /// Introspect address.
    pub http_listen: Option<SocketAddr>,
    /// Port API address.
    pub port_ipc_listen: Option<SocketAddr>,
    /// Ports directory.
    pub ports_dir: PathBuf,
    /// Log filter.
    pub log_filter: String,
    /// Certificate expiry warning window.
    pub cert_expiry_warning: Duration,
}

impl Config {
    /// Loads and validates a file with command-line overrides.
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
        let hostname = match ini.get_str(D, "hostname")? {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => xmpp_core::config::local_hostname(),
        };
        let path = |k: &str, d: &str| -> Result<PathBuf, ConfigError> {
            Ok(ini.get_path(D, k)?.unwrap_or_else(|| PathBuf::from(d)))
        };
        let dns_xmpp_port = ini.get_u16_or("DNS", "xmpp_port", DNS_XMPP_PORT)?;
        let dns_servers = ini
            .get_endpoints("DNS", "servers", 53)?
            .unwrap_or_default()
            .into_iter()
            .map(|a| SocketAddr::new(a.ip(), dns_xmpp_port))
            .collect();
        // `ip` is usually written with a prefix length (`10.1.1.1/24`).
        let vhost_ip = match ini.get("VIRTUAL-HOST-INTERFACE", "ip") {
            Some(s) => {
                let text = s.value.split('/').next().unwrap_or_default().to_owned();
                text.parse::<IpAddr>()
                    .map_err(|_| ConfigError::InvalidValue {
                        site: s.site(),
                        expected: "an IP address, optionally with /prefix-length".into(),
                    })?
            }
            None => IpAddr::from([127, 0, 0, 1]),
        };
        let http_ip: IpAddr = ini
            .get_parsed(D, "http_server_ip", "an IP address")?
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let http_port = ini.get_u16_or(D, "http_server_port", 8085)?;
        let ipc_port = ini.get_u16_or(D, "port_ipc_port", 9091)?;
        Ok(Config {
            hostname,
            control_servers: ini
                .get_endpoints("CONTROL-NODE", "servers", CONTROL_PORT)?
                .unwrap_or_default(),
            subcluster_name: ini
                .get_str("CONTROL-NODE", "subcluster_name")?
                .unwrap_or("")
                .to_owned(),
            dns_servers,
            default_virtual_dns: ini
                .get_str_or("DNS", "virtual_dns", "default-domain:default-vdns")?
                .to_owned(),
            default_domain: ini
                .get_str_or("DNS", "domain", "contrail.local")?
                .to_owned(),
            auth_enable: ini.get_bool_or(D, "xmpp_auth_enable", false)?,
            dns_auth_enable: ini.get_bool_or(D, "xmpp_dns_auth_enable", false)?,
            tls_files: TlsFiles::new(
                path("xmpp_server_cert", "/etc/contrail/ssl/certs/server.pem")?,
                path(
                    "xmpp_server_key",
                    "/etc/contrail/ssl/private/server-privkey.pem",
                )?,
                path("xmpp_ca_cert", "/etc/contrail/ssl/certs/ca-cert.pem")?,
            ),
            verify_server_name: ini.get_bool_or(D, "xmpp_verify_server_name", true)?,
            hold_time: Duration::from_secs(ini.get_u64_or(D, "xmpp_hold_time", 90)?),
            route_grace: Duration::from_secs(ini.get_u64_or(D, "route_grace_time", 30)?),
            vhost_ip,
            http_listen: (http_port != 0).then(|| SocketAddr::new(http_ip, http_port)),
            port_ipc_listen: (ipc_port != 0).then(|| SocketAddr::new(http_ip, ipc_port)),
            ports_dir: path("ports_dir", "/var/lib/contrail/ports")?,
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
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/contrail-vrouter-agent.conf")
    }

    #[test]
    fn sample_config_parses() {
        let (c, warnings) = Config::load(Some(&sample()), &[]).expect("sample loads");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.hostname, "compute-1");
        assert_eq!(
            c.control_servers,
            vec![
                "10.0.0.11:5269".parse().expect("addr"),
                "10.0.0.12:5269".parse().expect("addr")
            ]
        );
        assert_eq!(
            c.dns_servers,
            vec![
                "10.0.0.21:8093".parse().expect("addr"),
                "10.0.0.22:8093".parse().expect("addr")
            ]
        );
        assert!(c.auth_enable && c.dns_auth_enable);
        assert_eq!(c.vhost_ip, "192.168.0.11".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            c.port_ipc_listen,
            Some("127.0.0.1:9091".parse().expect("addr"))
        );
        assert!(SCHEMA.check_defaults().is_ok());
    }

    #[test]
    fn auth_flags_are_independent_and_strict() {
        let (c, _) = Config::load(
            Some(&sample()),
            &["DEFAULT.xmpp_dns_auth_enable=false".into()],
        )
        .expect("override");
        assert!(c.auth_enable && !c.dns_auth_enable);
        let err =
            Config::load(None, &["DEFAULT.xmpp_dns_auth_enable=yes".into()]).expect_err("strict");
        assert!(err.to_string().contains("xmpp_dns_auth_enable"), "{err}");
        let err = Config::load(None, &["VIRTUAL-HOST-INTERFACE.ip=not-an-ip".into()])
            .expect_err("bad ip");
        assert!(err.to_string().contains("not-an-ip"), "{err}");
    }
}
