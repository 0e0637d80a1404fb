//! The benchmark PKI: a CA, one server certificate for every server under test, and one
//! client certificate per simulated agent, generated with rcgen on first use and cached in
//! a directory (by default on tmpfs) so repeated runs skip the key generation.
//!
//! A client certificate carries the agent name three ways, so one file serves every server:
//! as CN and DNS name (the control node checks the stream `from` against either), and as
//! exactly one xmppAddr `name@domain` (RFC 6120 §13.7.1.4; Prosody's `mod_auth_ccert` and
//! ejabberd map SASL EXTERNAL to it, and ejabberd refuses a certificate with two).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, OtherNameValue, SanType,
};
use xmpp_core::tls::TlsFiles;

/// OID of `id-on-xmppAddr` (RFC 6120 §13.7.1.4).
const XMPP_ADDR: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 5];

/// Names in the server certificate: the control node is dialled as `localhost`; the XMPP
/// servers serve `ccert.localhost` (certificate logins) and `pubsub.localhost`.
pub const SERVER_NAMES: &[&str] = &["localhost", "ccert.localhost", "pubsub.localhost"];

/// The PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Certificates are valid for a year from an hour ago (ejabberd's certificate timers refuse
/// rcgen's default end date in year 4096); the cache is renewed after 300 days.
fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
}

const RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(300 * 86_400);

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

impl Pki {
    /// Opens (creating the CA and server certificate when missing) the PKI in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("clients"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let pki = Self {
            dir: dir.to_owned(),
        };
        let stale = fs::metadata(pki.ca_cert())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > RENEW_AFTER);
        if stale || !pki.dir.join("ca.key").exists() {
            // A new CA invalidates every certificate it signed.
            let _ = fs::remove_dir_all(pki.dir.join("clients"));
            fs::create_dir_all(pki.dir.join("clients"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = dn("contrail-xmpp bench CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            validity(&mut params);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            write_private(&pki.dir.join("ca.key"), &key.serialize_pem())?;
            fs::write(pki.ca_cert(), cert.pem())?;
            let _ = fs::remove_file(pki.server_files().cert);
        }
        if !pki.server_files().cert.exists() {
            let issuer = pki.issuer()?;
            let mut params = CertificateParams::new(
                SERVER_NAMES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect::<Vec<_>>(),
            )?;
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.distinguished_name = dn("localhost");
            validity(&mut params);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            let f = pki.server_files();
            write_private(&f.key, &key.serialize_pem())?;
            fs::write(&f.cert, cert.pem())?;
        }
        Ok(pki)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&fs::read_to_string(self.dir.join("ca.key"))?)?;
        let pem = fs::read_to_string(self.ca_cert())?;
        Ok(Issuer::from_ca_cert_pem(&pem, key)?)
    }

    /// The server's certificate, key and CA.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles::new(
            self.dir.join("server.pem"),
            self.dir.join("server.key"),
            self.ca_cert(),
        )
    }

    /// The files of client `name` (see [`Self::ensure_clients`]).
    pub fn client_files(&self, name: &str) -> TlsFiles {
        TlsFiles::new(
            self.dir.join("clients").join(format!("{name}.pem")),
            self.dir.join("clients").join(format!("{name}.key")),
            self.ca_cert(),
        )
    }

    /// Issues the missing client certificates (`name`, xmppAddr `name@domain`), on two
    /// threads. Returns how many were issued.
    pub fn ensure_clients(&self, names: &[String], domain: &str) -> Result<usize> {
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !self.client_files(n).cert.exists())
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let issuer = self.issuer()?;
        let chunks: Vec<&[&String]> = missing.chunks(missing.len().div_ceil(2)).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    let issuer = &issuer;
                    s.spawn(move || -> Result<()> {
                        for name in *chunk {
                            self.issue_client(issuer, name, domain)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("certificate thread panicked"))??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(missing.len())
    }

    fn issue_client(&self, issuer: &Issuer<'_, KeyPair>, name: &str, domain: &str) -> Result<()> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.subject_alt_names.push(SanType::OtherName((
            XMPP_ADDR.to_vec(),
            OtherNameValue::Utf8String(format!("{name}@{domain}")),
        )));
        params.distinguished_name = dn(name);
        validity(&mut params);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        let f = self.client_files(name);
        write_private(&f.key, &key.serialize_pem())?;
        // The certificate last: its presence marks a complete pair.
        fs::write(&f.cert, cert.pem())?;
        Ok(())
    }
}
