//! A small PKI for the XMPP daemons: a CA, and certificates for control nodes, DNS nodes and
//! compute nodes, written where the Contrail keys expect them.
//!
//! Layout of an issued node directory (mirrors `/etc/contrail/ssl`, the defaults of
//! `xmpp_server_cert`, `xmpp_server_key` and `xmpp_ca_cert`):
//!
//! ```text
//! <out>/certs/server.pem            the node's certificate
//! <out>/private/server-privkey.pem  its private key (mode 0600, directory 0700)
//! <out>/certs/ca-cert.pem           the CA certificate
//! ```
//!
//! The CA directory holds `ca-cert.pem` and `ca-key.pem`. The CA key signs certificates and
//! must never be copied to a server: keep it on the machine that issues certificates.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// File names inside the CA directory.
pub const CA_CERT: &str = "ca-cert.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca-key.pem";

/// Errors of the PKI commands; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file exists and `--force` was not given.
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CA material could not be used.
    #[error("{path}: not a usable CA {what}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// `certificate` or `key`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a node certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// A control node: an XMPP server (serverAuth).
    Control,
    /// A DNS node: an XMPP server (serverAuth).
    Dns,
    /// A compute node (vrouter agent): an XMPP client (clientAuth).
    Compute,
}

impl Role {
    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Role::Control | Role::Dns => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Role::Compute => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// Writes `bytes` to `path` with `mode`, refusing to replace an existing file unless
/// `force`. Private keys are created 0600 from the start (no window where they are
/// readable).
fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), PkiError> {
    if path.exists() && !force {
        return Err(PkiError::Exists(path.to_owned()));
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that are slightly behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// What `init` wrote.
#[derive(Debug)]
pub struct CaFiles {
    /// The CA certificate.
    pub cert: PathBuf,
    /// The CA key (0600).
    pub key: PathBuf,
}

/// Creates a CA in `dir`.
pub fn init(dir: &Path, common_name: &str, days: u32, force: bool) -> Result<CaFiles, PkiError> {
    if days == 0 {
        return Err(PkiError::Usage("--days must be at least 1".into()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    let files = CaFiles {
        cert: dir.join(CA_CERT),
        key: dir.join(CA_KEY),
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644, force)?;
    Ok(files)
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The role (decides the extended key usage).
    pub role: Role,
    /// The node's host name: the certificate's CN and first DNS SAN. For a compute node it
    /// must equal the agent's `hostname` (the control node checks the stream `from`).
    pub name: String,
    /// More DNS names.
    pub dns: Vec<String>,
    /// IP addresses (agents verify a server configured by IP against an IP SAN).
    pub ips: Vec<IpAddr>,
    /// Validity in days.
    pub days: u32,
}

/// What `issue` wrote.
#[derive(Debug)]
pub struct NodeFiles {
    /// `certs/server.pem`.
    pub cert: PathBuf,
    /// `private/server-privkey.pem`.
    pub key: PathBuf,
    /// `certs/ca-cert.pem`.
    pub ca: PathBuf,
}

impl NodeFiles {
    /// The paths under `out` that the Contrail keys default to (relative to
    /// `/etc/contrail/ssl`).
    pub fn under(out: &Path) -> Self {
        Self {
            cert: out.join("certs/server.pem"),
            key: out.join("private/server-privkey.pem"),
            ca: out.join("certs/ca-cert.pem"),
        }
    }
}

/// Issues a node certificate signed by the CA in `ca_dir`, into `out`.
pub fn issue(
    ca_dir: &Path,
    req: &IssueRequest,
    out: &Path,
    force: bool,
) -> Result<NodeFiles, PkiError> {
    if req.name.is_empty() {
        return Err(PkiError::Usage("--name must not be empty".into()));
    }
    if req.days == 0 {
        return Err(PkiError::Usage("--days must be at least 1".into()));
    }
    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::BadCa {
        path: ca_key_path.clone(),
        what: "key",
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| PkiError::BadCa {
        path: ca_cert_path.clone(),
        what: "certificate",
        reason: e.to_string(),
    })?;

    let mut names = vec![req.name.clone()];
    names.extend(req.dns.iter().filter(|d| **d != req.name).cloned());
    let mut params = CertificateParams::new(names)?;
    for ip in &req.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, req.name.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = req.role.ekus();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, req.days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let files = NodeFiles::under(out);
    if let Some(private) = files.key.parent() {
        fs::create_dir_all(private).map_err(io(private))?;
        fs::set_permissions(private, fs::Permissions::from_mode(0o700)).map_err(io(private))?;
    }
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644, force)?;
    write_file(&files.ca, ca_pem.as_bytes(), 0o644, true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_core::tls::{CertInfo, TlsFileKind};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kit-pki-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_and_issue_write_the_contrail_layout_with_tight_modes() {
        let root = tmp("layout");
        let ca = init(&root.join("ca"), "Test CA", 30, false).expect("init");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(mode(&root.join("ca")), 0o700);
        let req = IssueRequest {
            role: Role::Control,
            name: "control-1".into(),
            dns: vec!["control-1.example".into()],
            ips: vec!["127.0.0.1".parse().expect("ip")],
            days: 10,
        };
        let node = issue(&root.join("ca"), &req, &root.join("control-1"), false).expect("issue");
        assert!(node.cert.ends_with("certs/server.pem"));
        assert!(node.key.ends_with("private/server-privkey.pem"));
        assert_eq!(mode(&node.key), 0o600);
        let info = CertInfo::load(TlsFileKind::Cert, &node.cert).expect("parse");
        let text = format!("{:?}", info[0]);
        assert!(text.contains("control-1"), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");
        assert!(
            info[0].ekus.iter().any(|e| e.contains("erver")),
            "{:?}",
            info[0].ekus
        );
        // No silent overwrite.
        let again = issue(&root.join("ca"), &req, &root.join("control-1"), false);
        assert!(matches!(again, Err(PkiError::Exists(_))));
        assert!(issue(&root.join("ca"), &req, &root.join("control-1"), true).is_ok());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn compute_certificates_are_client_only() {
        let root = tmp("compute");
        init(&root.join("ca"), "Test CA", 30, false).expect("init");
        let req = IssueRequest {
            role: Role::Compute,
            name: "compute-1".into(),
            dns: vec![],
            ips: vec![],
            days: 10,
        };
        let node = issue(&root.join("ca"), &req, &root.join("compute-1"), false).expect("issue");
        let info = CertInfo::load(TlsFileKind::Cert, &node.cert).expect("parse");
        assert!(
            info[0].ekus.iter().all(|e| !e.contains("erver")),
            "{:?}",
            info[0].ekus
        );
        assert!(
            info[0].ekus.iter().any(|e| e.contains("lient")),
            "{:?}",
            info[0].ekus
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_ca_names_the_file() {
        let root = tmp("missing");
        let req = IssueRequest {
            role: Role::Dns,
            name: "dns-1".into(),
            dns: vec![],
            ips: vec![],
            days: 1,
        };
        let err = issue(&root.join("nope"), &req, &root.join("out"), false).expect_err("no CA");
        assert!(err.to_string().contains("ca-cert.pem"), "{err}");
    }
}
