//! rustls server and client configurations built, in this one place, from the Contrail
//! certificate options `xmpp_server_cert`, `xmpp_server_key` and `xmpp_ca_cert`;
//! reloadable without disturbing live sessions; plus the certificate inspection the daemons
//! need (peer identity for stream `from` checks, `show` output, expiry warnings).
//!
//! # Relation to the Contrail C++ behaviour (spec §4)
//!
//! * **Versions**: TLS 1.2 and 1.3 only. Contrail allows 1.1 and 1.2 (1.3 with a new
//!   enough OpenSSL); TLS 1.1 is deprecated by RFC 8996 and every shipped Contrail build
//!   speaks 1.2, so interoperability is kept.
//! * **Peer verification is never off**: Contrail falls back to `verify_none` when
//!   `xmpp_ca_cert` is empty; here a CA file is mandatory, there is no plaintext or
//!   unverified fallback (conventions rule 11).
//! * **Client certificate**: Contrail does not set `fail_if_no_peer_cert`, so a client
//!   without a certificate is accepted. [`ServerTlsOptions::require_client_cert`] defaults to
//!   `true`; `false` is the documented *Contrail-compatible weak mode* (client auth offered,
//!   optional; a certificate that *is* presented must still chain to the CA).
//! * **Server name**: Contrail checks no names ("any certificate signed by the CA"). The
//!   client here checks the server's DNS name or IP against the certificate by default;
//!   [`ClientTlsOptions::verify_server_name`] `= false` restores the Contrail semantics (chain
//!   still verified, only a name mismatch is tolerated) for deployments whose control-node
//!   certificates do not carry the address the agent dials.
//! * **Chain**: the Contrail server sends its leaf only; here the whole chain in
//!   `xmpp_server_cert` is sent (a superset any verifier accepts). No ALPN, no compression.
//!
//! # Blocking
//!
//! Loading reads files with blocking `std::fs` calls: it runs at startup and on SIGHUP.
//! Callers inside a tokio task must wrap [`ServerTls::load`], [`ClientTls::load`] and the
//! `reload` methods in `tokio::task::spawn_blocking` (conventions: no blocking file calls in
//! async tasks). [`ServerTls::current`] / [`ClientTls::current`] never block on I/O.

use std::fmt;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, InconsistentKeys,
    RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The protocol versions offered on both sides: TLS 1.1 and older are refused (RFC 8996).
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Upper bound on the size of a certificate, key or CA file. A CA bundle of a few hundred
/// roots is about 250 KiB; 4 MiB leaves room while refusing to slurp a wrong path (a log,
/// a disk image) into memory.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// OID of the `id-on-xmppAddr` otherName SAN (RFC 6120 §13.7.1.4).
const XMPP_ADDR_OID: &str = "1.3.6.1.5.5.7.8.5";

/// The Contrail option a file path came from; it prefixes every load error so an operator
/// can find the line to fix in `contrail-*.conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFileKind {
    /// `DEFAULT.xmpp_server_cert`: own certificate, leaf first, optional intermediates.
    Cert,
    /// `DEFAULT.xmpp_server_key`: private key of the leaf (PKCS#8, PKCS#1 or SEC1 PEM).
    Key,
    /// `DEFAULT.xmpp_ca_cert`: CA bundle used to verify the peer.
    Ca,
}

impl TlsFileKind {
    /// The Contrail configuration key (same name on control, dns and agent).
    pub fn option_name(self) -> &'static str {
        match self {
            Self::Cert => "xmpp_server_cert",
            Self::Key => "xmpp_server_key",
            Self::Ca => "xmpp_ca_cert",
        }
    }
}

impl fmt::Display for TlsFileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.option_name())
    }
}

/// The three certificate paths, as configured (plain data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `xmpp_server_cert`: own certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// `xmpp_server_key`: private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `xmpp_ca_cert`: CA bundle, PEM.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Bundles the three paths.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }

    /// The Contrail defaults (spec §8.1, identical for control, dns and agent).
    pub fn contrail_defaults() -> Self {
        Self::new(
            "/etc/contrail/ssl/certs/server.pem",
            "/etc/contrail/ssl/private/server-privkey.pem",
            "/etc/contrail/ssl/certs/ca-cert.pem",
        )
    }

    /// The path configured for `kind`.
    pub fn path(&self, kind: TlsFileKind) -> &Path {
        match kind {
            TlsFileKind::Cert => &self.cert,
            TlsFileKind::Key => &self.key,
            TlsFileKind::Ca => &self.ca,
        }
    }

    /// Details of every certificate in `xmpp_server_cert` (leaf first), for `show`.
    pub fn cert_info(&self) -> Result<Vec<CertInfo>, TlsError> {
        CertInfo::load(TlsFileKind::Cert, &self.cert)
    }

    /// Details of every certificate in `xmpp_ca_cert`, for `show`.
    pub fn ca_info(&self) -> Result<Vec<CertInfo>, TlsError> {
        CertInfo::load(TlsFileKind::Ca, &self.ca)
    }

    /// Certificates of the own chain and of the CA bundle that expire within `within`
    /// (or already have), so a daemon can warn well before handshakes start failing.
    pub fn expiring_within(
        &self,
        within: Duration,
    ) -> Result<Vec<(TlsFileKind, CertInfo)>, TlsError> {
        let mut out = Vec::new();
        for kind in [TlsFileKind::Cert, TlsFileKind::Ca] {
            for info in CertInfo::load(kind, self.path(kind))? {
                if info.expires_within(within) {
                    out.push((kind, info));
                }
            }
        }
        Ok(out)
    }

    /// See [`key_permission_warning`].
    pub fn key_permission_warning(&self) -> Option<String> {
        key_permission_warning(&self.key)
    }
}

/// Why TLS material could not be loaded or inspected.
///
/// Every load variant is **fatal at startup** (Contrail exits with `EINVAL`, spec §4) and
/// **not fatal on reload**: the previous configuration stays in use and the error is
/// returned to be logged. Messages start with the Contrail option and the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file does not exist.
    #[error("{file} {}: file not found", path.display())]
    Missing {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
    },
    /// The file exists but cannot be read (permissions, a directory, I/O error).
    #[error("{file} {}: cannot read file: {source}", path.display())]
    Unreadable {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is larger than any sane PEM file (see `MAX_FILE_BYTES`).
    #[error("{file} {}: file is larger than {limit} bytes", path.display())]
    TooLarge {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The content is not PEM (no `-----BEGIN` line, or a malformed section).
    #[error("{file} {}: not a PEM file: {reason}", path.display())]
    NotPem {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// PEM, but no `CERTIFICATE` section in `xmpp_server_cert`.
    #[error("{file} {}: no certificate in the file ({found})", path.display())]
    NoCertificate {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// The PEM sections that were found instead.
        found: String,
    },
    /// PEM, but no private key section (PKCS#8, PKCS#1 or SEC1) in `xmpp_server_key`.
    #[error("{file} {}: no private key in the file ({found})", path.display())]
    NoPrivateKey {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// The PEM sections that were found instead.
        found: String,
    },
    /// A private key section that the crypto provider cannot use.
    #[error("{file} {}: unusable private key: {reason}", path.display())]
    InvalidKey {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key is not the key of the leaf certificate.
    #[error(
        "xmpp_server_key {}: private key does not match the certificate in xmpp_server_cert {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The `xmpp_server_key` path.
        key_path: PathBuf,
        /// The `xmpp_server_cert` path.
        cert_path: PathBuf,
    },
    /// A certificate of the own chain cannot be parsed.
    #[error("{file} {}: invalid certificate: {reason}", path.display())]
    InvalidCertificate {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate (own chain or CA) is past its notAfter.
    #[error("{file} {}: certificate expired on {not_after} (subject: {subject})", path.display())]
    Expired {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// Subject of the expired certificate.
        subject: String,
        /// notAfter, `YYYY-MM-DD hh:mm:ss UTC`.
        not_after: String,
    },
    /// A certificate (own chain or CA) is before its notBefore (or the clock is wrong).
    #[error(
        "{file} {}: certificate not valid before {not_before} (subject: {subject})",
        path.display()
    )]
    NotYetValid {
        /// Which option.
        file: TlsFileKind,
        /// The configured path.
        path: PathBuf,
        /// Subject of the certificate.
        subject: String,
        /// notBefore, `YYYY-MM-DD hh:mm:ss UTC`.
        not_before: String,
    },
    /// `xmpp_ca_cert` holds no certificate (empty, or only other PEM sections).
    #[error("xmpp_ca_cert {}: no CA certificate in the file ({found})", path.display())]
    NoCaCertificate {
        /// The `xmpp_ca_cert` path.
        path: PathBuf,
        /// The PEM sections that were found instead.
        found: String,
    },
    /// A certificate in `xmpp_ca_cert` cannot be used as a trust anchor.
    #[error("xmpp_ca_cert {}: invalid CA certificate: {reason}", path.display())]
    InvalidCaCertificate {
        /// The `xmpp_ca_cert` path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused to build a configuration from material that loaded fine. Fatal at
    /// startup; not expected in practice.
    #[error("cannot build the TLS configuration: {reason}")]
    Config {
        /// The rustls error.
        reason: String,
    },
    /// The peer presented no certificate. Fatal for the session only.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// A certificate (peer's, or given as DER) cannot be parsed. Fatal for the session only.
    #[error("cannot parse certificate: {reason}")]
    CertificateParse {
        /// Why.
        reason: String,
    },
    /// A configured server address is neither an IP address nor a valid DNS name.
    /// Fatal at startup.
    #[error("invalid TLS server name {name:?}: {reason}")]
    InvalidServerName {
        /// The name as configured.
        name: String,
        /// Why.
        reason: String,
    },
}

impl TlsError {
    /// The file the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Missing { path, .. }
            | Self::Unreadable { path, .. }
            | Self::TooLarge { path, .. }
            | Self::NotPem { path, .. }
            | Self::NoCertificate { path, .. }
            | Self::NoPrivateKey { path, .. }
            | Self::InvalidKey { path, .. }
            | Self::InvalidCertificate { path, .. }
            | Self::Expired { path, .. }
            | Self::NotYetValid { path, .. }
            | Self::NoCaCertificate { path, .. }
            | Self::InvalidCaCertificate { path, .. } => Some(path),
            Self::KeyMismatch { key_path, .. } => Some(key_path),
            Self::Config { .. }
            | Self::NoPeerCertificate
            | Self::CertificateParse { .. }
            | Self::InvalidServerName { .. } => None,
        }
    }
}

fn config_error(e: impl fmt::Display) -> TlsError {
    TlsError::Config {
        reason: e.to_string(),
    }
}

/// Options of the server side (control node, dns node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsOptions {
    /// Refuse clients that present no certificate (default `true`). `false` is the
    /// Contrail-compatible weak mode: the server still asks for a certificate and verifies
    /// one that is presented against the CA, but accepts a client that sends none
    /// (Contrail never sets `fail_if_no_peer_cert`). Only for mixed deployments with agents
    /// that have no certificate.
    pub require_client_cert: bool,
}

impl Default for ServerTlsOptions {
    fn default() -> Self {
        Self {
            require_client_cert: true,
        }
    }
}

/// Options of the client side (vrouter agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// Check that the server certificate is valid for the name or IP address dialled
    /// (default `true`). `false` is the Contrail semantics: the chain is still verified
    /// against `xmpp_ca_cert` (signature, validity, purpose), only a name mismatch is
    /// accepted. Needed when control-node certificates lack the IP SAN the agent dials.
    pub verify_server_name: bool,
}

impl Default for ClientTlsOptions {
    fn default() -> Self {
        Self {
            verify_server_name: true,
        }
    }
}

/// Reloadable server configuration: a cheap-to-clone handle.
///
/// New sessions take [`current`](Self::current); a session keeps the `Arc` it took, so a
/// [`reload`](Self::reload) never disturbs it.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    options: ServerTlsOptions,
    config: Arc<RwLock<Arc<ServerConfig>>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads and checks the three files and builds the server configuration. Blocking.
    pub fn load(files: &TlsFiles, options: &ServerTlsOptions) -> Result<Self, TlsError> {
        let config = build_server_config(files, options)?;
        Ok(Self {
            files: Arc::new(files.clone()),
            options: options.clone(),
            config: Arc::new(RwLock::new(config)),
        })
    }

    /// The configuration for a new session.
    pub fn current(&self) -> Arc<ServerConfig> {
        // The lock only guards an Arc swap, so a poisoned lock still holds a valid value.
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A tokio-rustls acceptor over [`current`](Self::current).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }

    /// Re-reads the same files (SIGHUP). On error the previous configuration stays in use
    /// and the error is returned. Blocking.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = build_server_config(&self.files, &self.options)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        tracing::info!(cert = %self.files.cert.display(), "server TLS configuration reloaded");
        Ok(())
    }

    /// The configured paths.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The options given to [`load`](Self::load).
    pub fn options(&self) -> &ServerTlsOptions {
        &self.options
    }
}

/// Reloadable client configuration: a cheap-to-clone handle (see [`ServerTls`]).
#[derive(Clone)]
pub struct ClientTls {
    files: Arc<TlsFiles>,
    options: ClientTlsOptions,
    config: Arc<RwLock<Arc<ClientConfig>>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Loads and checks the three files and builds the client configuration. Blocking.
    pub fn load(files: &TlsFiles, options: &ClientTlsOptions) -> Result<Self, TlsError> {
        let config = build_client_config(files, options)?;
        Ok(Self {
            files: Arc::new(files.clone()),
            options: options.clone(),
            config: Arc::new(RwLock::new(config)),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A tokio-rustls connector over [`current`](Self::current).
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current())
    }

    /// Re-reads the same files. On error the previous configuration stays in use and the
    /// error is returned. Blocking.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = build_client_config(&self.files, &self.options)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        tracing::info!(cert = %self.files.cert.display(), "client TLS configuration reloaded");
        Ok(())
    }

    /// The configured paths.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The options given to [`load`](Self::load).
    pub fn options(&self) -> &ClientTlsOptions {
        &self.options
    }
}

/// The TLS server name for a configured server address: an IP address (the usual Contrail
/// `CONTROL-NODE.servers` form) or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|e| TlsError::InvalidServerName {
        name: host.to_owned(),
        reason: e.to_string(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    // ring, explicitly: never depend on a process-wide default provider.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_server_config(
    files: &TlsFiles,
    options: &ServerTlsOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let material = load_material(files, &provider)?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(material.roots, provider.clone());
    if !options.require_client_cert {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(config_error)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(material.certified)));
    Ok(Arc::new(config))
}

fn build_client_config(
    files: &TlsFiles,
    options: &ClientTlsOptions,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let material = load_material(files, &provider)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(material.roots, provider.clone())
        .build()
        .map_err(config_error)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(config_error)?;
    let builder = if options.verify_server_name {
        builder.with_webpki_verifier(webpki)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaOnlyServerVerifier { inner: webpki }))
    };
    let config =
        builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(material.certified)));
    Ok(Arc::new(config))
}

/// Server verifier for `verify_server_name = false`: the full WebPKI verification (chain to
/// the CA, validity, EKU) with only a name mismatch forgiven. webpki checks the name last,
/// after the chain, so a `NotValidForName` error implies the chain itself was good.
#[derive(Debug)]
struct CaOnlyServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaOnlyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                tracing::debug!(server = ?server_name, "server certificate name mismatch accepted (verify_server_name = false)");
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Everything both sides need, checked.
struct Material {
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
}

/// Seconds before expiry from which loading a certificate logs a warning (default 30 days);
/// daemons set it from their configuration (`cert_expiry_warning_days`).
static EXPIRY_WARNING_SECS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(30 * 24 * 3600);

/// Sets the window in which [`ServerTls::load`], [`ClientTls::load`] and `reload` warn that
/// a certificate (own chain or CA) is about to expire.
pub fn set_expiry_warning(window: Duration) {
    EXPIRY_WARNING_SECS.store(window.as_secs(), std::sync::atomic::Ordering::Relaxed);
}

/// The current expiry warning window.
pub fn expiry_warning() -> Duration {
    Duration::from_secs(EXPIRY_WARNING_SECS.load(std::sync::atomic::Ordering::Relaxed))
}

fn warn_if_expiring(files: &TlsFiles) {
    let window = expiry_warning();
    if window.is_zero() {
        return;
    }
    if let Ok(list) = files.expiring_within(window) {
        for (kind, info) in list {
            tracing::warn!(
                "{} {}: certificate {} expires on {} (within the {}-day warning window): \
                 issue a new one and send SIGHUP",
                kind.option_name(),
                files.path(kind).display(),
                info.subject,
                info.not_after_utc(),
                window.as_secs() / 86_400
            );
        }
    }
}

fn load_material(files: &TlsFiles, provider: &CryptoProvider) -> Result<Material, TlsError> {
    let now = unix_now();
    let chain = load_own_chain(&files.cert, now)?;
    let key = load_private_key(&files.key)?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::InvalidKey {
                file: TlsFileKind::Key,
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // rustls compares the SubjectPublicKeyInfo derived from the private key with the
    // leaf's; ring provides it for RSA, ECDSA and Ed25519 keys.
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                key_path: files.key.clone(),
                cert_path: files.cert.clone(),
            });
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            tracing::warn!(
                key = %files.key.display(),
                "cannot check that xmpp_server_key matches xmpp_server_cert for this key type"
            );
        }
        Err(e) => {
            return Err(TlsError::InvalidCertificate {
                file: TlsFileKind::Cert,
                path: files.cert.clone(),
                reason: e.to_string(),
            });
        }
    }
    if let Some(warning) = key_permission_warning(&files.key) {
        tracing::warn!("{warning}");
    }
    let roots = load_roots(&files.ca, now)?;
    warn_if_expiring(files);
    Ok(Material {
        certified: Arc::new(certified),
        roots: Arc::new(roots),
    })
}

fn load_own_chain(path: &Path, now: i64) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = TlsFileKind::Cert;
    let pem = read_pem(file, path)?;
    let certs = pem.certificates();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file,
            path: path.to_owned(),
            found: pem.found(),
        });
    }
    for der in &certs {
        let cert = parse_x509(der).map_err(|reason| TlsError::InvalidCertificate {
            file,
            path: path.to_owned(),
            reason,
        })?;
        check_validity(file, path, &cert, now)?;
    }
    Ok(certs)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = TlsFileKind::Key;
    let pem = read_pem(file, path)?;
    let found = pem.found();
    pem.sections
        .into_iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .ok_or_else(|| TlsError::NoPrivateKey {
            file,
            path: path.to_owned(),
            found,
        })
}

fn load_roots(path: &Path, now: i64) -> Result<RootCertStore, TlsError> {
    let pem = read_pem(TlsFileKind::Ca, path)?;
    let certs = pem.certificates();
    if certs.is_empty() {
        return Err(TlsError::NoCaCertificate {
            path: path.to_owned(),
            found: pem.found(),
        });
    }
    let invalid = |reason: String| TlsError::InvalidCaCertificate {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for der in certs {
        {
            let cert = parse_x509(&der).map_err(invalid)?;
            // The classic mistake is pointing xmpp_ca_cert at a leaf: reject an explicit
            // cA=false, and a certificate without basicConstraints that carries an
            // extendedKeyUsage (an end-entity profile). A v1 root has no extensions at all
            // and is still accepted as an anchor.
            let leaf_like = match cert.basic_constraints() {
                Ok(Some(bc)) => (!bc.value.ca).then_some("basicConstraints cA=false"),
                Ok(None) => matches!(cert.extended_key_usage(), Ok(Some(_)))
                    .then_some("no basicConstraints, has extendedKeyUsage"),
                Err(e) => return Err(invalid(format!("bad basicConstraints: {e}"))),
            };
            if let Some(why) = leaf_like {
                return Err(invalid(format!(
                    "not a CA certificate ({why}; subject: {})",
                    cert.subject()
                )));
            }
            check_validity(TlsFileKind::Ca, path, &cert, now)?;
        }
        roots.add(der).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(roots)
}

/// A PEM file split into its sections, with the labels of all `BEGIN` lines (including
/// ones the parser skips, such as `ENCRYPTED PRIVATE KEY`) for error messages.
struct PemFile {
    sections: Vec<(SectionKind, Vec<u8>)>,
    labels: Vec<String>,
}

impl PemFile {
    fn certificates(&self) -> Vec<CertificateDer<'static>> {
        self.sections
            .iter()
            .filter(|(kind, _)| *kind == SectionKind::Certificate)
            .map(|(_, der)| CertificateDer::from(der.clone()))
            .collect()
    }

    fn found(&self) -> String {
        if self.labels.is_empty() {
            return "the file is empty".to_owned();
        }
        let mut found = format!("found: {}", self.labels.join(", "));
        if self.labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
            found.push_str("; encrypted private keys are not supported");
        }
        found
    }
}

fn read_pem(file: TlsFileKind, path: &Path) -> Result<PemFile, TlsError> {
    let bytes = read_file(file, path)?;
    let labels = pem_labels(&bytes);
    if labels.is_empty() && !bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TlsError::NotPem {
            file,
            path: path.to_owned(),
            reason: "no \"-----BEGIN ...-----\" line".to_owned(),
        });
    }
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            file,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(PemFile { sections, labels })
}

fn pem_labels(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = line.trim_ascii();
            let label = line.strip_prefix(b"-----BEGIN ")?.strip_suffix(b"-----")?;
            Some(String::from_utf8_lossy(label).into_owned())
        })
        .collect()
}

fn read_file(file: TlsFileKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            TlsError::Missing {
                file,
                path: path.to_owned(),
            }
        } else {
            TlsError::Unreadable {
                file,
                path: path.to_owned(),
                source,
            }
        }
    };
    let handle = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    handle
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(TlsError::TooLarge {
            file,
            path: path.to_owned(),
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(bytes)
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!(
            "{} bytes of trailing data after the certificate",
            rest.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn check_validity(
    file: TlsFileKind,
    path: &Path,
    cert: &X509Certificate<'_>,
    now: i64,
) -> Result<(), TlsError> {
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    if now > not_after {
        return Err(TlsError::Expired {
            file,
            path: path.to_owned(),
            subject: cert.subject().to_string(),
            not_after: format_utc(not_after),
        });
    }
    let not_before = validity.not_before.timestamp();
    if now < not_before {
        return Err(TlsError::NotYetValid {
            file,
            path: path.to_owned(),
            subject: cert.subject().to_string(),
            not_before: format_utc(not_before),
        });
    }
    Ok(())
}

fn unix_now() -> i64 {
    system_time_to_unix(SystemTime::now())
}

fn system_time_to_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// `YYYY-MM-DD hh:mm:ss UTC` from Unix seconds (proleptic Gregorian, H. Hinnant's
/// days-to-civil algorithm), to keep messages independent of the locale and of `time`.
fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        sod / 3_600,
        sod % 3_600 / 60,
        sod % 60
    )
}

/// Warns when the private key file grants group or others any access (unix mode bits).
/// Returns a description to log, `None` when the mode is `0600` or stricter or the file
/// cannot be inspected (loading reports that). [`ServerTls::load`] and [`ClientTls::load`]
/// already log it through `tracing`.
#[cfg(unix)]
pub fn key_permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "xmpp_server_key {}: mode {mode:04o} gives group or others access to the private key; \
             expected 0600 or stricter",
            path.display()
        )
    })
}

/// Warns when the private key file grants group or others any access; no mode bits exist
/// on this platform, so never.
#[cfg(not(unix))]
pub fn key_permission_warning(_path: &Path) -> Option<String> {
    None
}

/// The identity a peer's leaf certificate claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject common names (normally one).
    pub common_names: Vec<String>,
    /// dNSName SANs.
    pub dns_names: Vec<String>,
    /// iPAddress SANs.
    pub ip_addrs: Vec<IpAddr>,
    /// xmppAddr otherName SANs (OID 1.3.6.1.5.5.7.8.5, UTF8String).
    pub xmpp_addrs: Vec<String>,
}

impl PeerIdentity {
    /// Whether `name` (an agent's stream `from`, a host name or an address) is one of the
    /// certificate's names: the CN or any SAN, ASCII case-insensitively, a trailing dot
    /// ignored; an IP address also matches an iPAddress SAN. No wildcards: an agent is one
    /// host, and a wildcard would let one certificate speak for many agents.
    pub fn matches_name(&self, name: &str) -> bool {
        let wanted = name.strip_suffix('.').unwrap_or(name);
        if wanted.is_empty() {
            return false;
        }
        if let Ok(ip) = wanted.parse::<IpAddr>()
            && self.ip_addrs.contains(&ip)
        {
            return true;
        }
        self.common_names
            .iter()
            .chain(&self.dns_names)
            .chain(&self.xmpp_addrs)
            .any(|n| {
                n.strip_suffix('.')
                    .unwrap_or(n)
                    .eq_ignore_ascii_case(wanted)
            })
    }
}

/// The identity in the leaf (first) certificate of a peer chain, e.g.
/// `ServerConnection::peer_certificates()`.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<PeerIdentity, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    let cert = parse_x509(leaf).map_err(|reason| TlsError::CertificateParse { reason })?;
    let mut identity = PeerIdentity {
        common_names: cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect(),
        ..PeerIdentity::default()
    };
    for name in subject_alt_names(&cert)? {
        match name {
            GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => identity.ip_addrs.extend(ip_from_bytes(bytes)),
            GeneralName::OtherName(oid, value) if oid.to_id_string() == XMPP_ADDR_OID => {
                identity.xmpp_addrs.extend(decode_utf8_other_name(value));
            }
            _ => {}
        }
    }
    Ok(identity)
}

fn subject_alt_names<'a>(
    cert: &'a X509Certificate<'_>,
) -> Result<Vec<&'a GeneralName<'a>>, TlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::CertificateParse {
            reason: format!("subjectAltName: {e}"),
        })?;
    Ok(san
        .map(|ext| ext.value.general_names.iter().collect())
        .unwrap_or_default())
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// otherName value: `[0] EXPLICIT UTF8String` (the form xmppAddr uses).
fn decode_utf8_other_name(value: &[u8]) -> Option<String> {
    use x509_parser::asn1_rs::{Any, Error as AsnError, Tag, TaggedExplicit};
    let (_, tagged) = TaggedExplicit::<Any<'_>, AsnError, 0>::from_der(value).ok()?;
    let inner = tagged.into_inner();
    if inner.tag() != Tag::Utf8String {
        return None;
    }
    std::str::from_utf8(inner.data).ok().map(str::to_owned)
}

/// What a certificate says, for `show` commands and expiry warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN (RFC 4514-like string).
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// SANs as `DNS:…`, `IP:…`, `xmppAddr:…`, `email:…`, `URI:…`, `otherName:<oid>`.
    pub sans: Vec<String>,
    /// Extended key usages (`serverAuth`, `clientAuth`, … or a dotted OID); empty when the
    /// extension is absent (any purpose).
    pub ekus: Vec<String>,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Parses one DER certificate.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let cert = parse_x509(der).map_err(|reason| TlsError::CertificateParse { reason })?;
        let sans = subject_alt_names(&cert)?
            .into_iter()
            .map(|name| match name {
                GeneralName::DNSName(s) => format!("DNS:{s}"),
                GeneralName::IPAddress(b) => match ip_from_bytes(b) {
                    Some(ip) => format!("IP:{ip}"),
                    None => format!("IP:<{} bytes>", b.len()),
                },
                GeneralName::RFC822Name(s) => format!("email:{s}"),
                GeneralName::URI(s) => format!("URI:{s}"),
                GeneralName::OtherName(oid, value) => {
                    let oid = oid.to_id_string();
                    match decode_utf8_other_name(value) {
                        Some(v) if oid == XMPP_ADDR_OID => format!("xmppAddr:{v}"),
                        _ => format!("otherName:{oid}"),
                    }
                }
                other => other.to_string(),
            })
            .collect();
        let ekus = match cert.extended_key_usage() {
            Ok(Some(ext)) => {
                let eku = ext.value;
                let mut out: Vec<String> = [
                    (eku.any, "anyExtendedKeyUsage"),
                    (eku.server_auth, "serverAuth"),
                    (eku.client_auth, "clientAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "OCSPSigning"),
                ]
                .into_iter()
                .filter(|(set, _)| *set)
                .map(|(_, name)| name.to_owned())
                .collect();
                out.extend(eku.other.iter().map(|oid| oid.to_id_string()));
                out
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                return Err(TlsError::CertificateParse {
                    reason: format!("extendedKeyUsage: {e}"),
                });
            }
        };
        let validity = cert.validity();
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            sans,
            ekus,
            is_ca: cert.is_ca(),
            not_before: unix_to_system_time(validity.not_before.timestamp()),
            not_after: unix_to_system_time(validity.not_after.timestamp()),
        })
    }

    /// Every certificate of a PEM file, in file order. Blocking.
    pub fn load(file: TlsFileKind, path: &Path) -> Result<Vec<Self>, TlsError> {
        let pem = read_pem(file, path)?;
        let certs = pem.certificates();
        if certs.is_empty() {
            return Err(match file {
                TlsFileKind::Ca => TlsError::NoCaCertificate {
                    path: path.to_owned(),
                    found: pem.found(),
                },
                _ => TlsError::NoCertificate {
                    file,
                    path: path.to_owned(),
                    found: pem.found(),
                },
            });
        }
        certs
            .iter()
            .map(|der| {
                Self::from_der(der).map_err(|e| TlsError::InvalidCertificate {
                    file,
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Whether the certificate expires within `within` from now (or already has).
    pub fn expires_within(&self, within: Duration) -> bool {
        match SystemTime::now().checked_add(within) {
            Some(deadline) => deadline >= self.not_after,
            None => true,
        }
    }

    /// notBefore as `YYYY-MM-DD hh:mm:ss UTC`.
    pub fn not_before_utc(&self) -> String {
        format_utc(system_time_to_unix(self.not_before))
    }

    /// notAfter as `YYYY-MM-DD hh:mm:ss UTC`.
    pub fn not_after_utc(&self) -> String {
        format_utc(system_time_to_unix(self.not_after))
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "subject:   {}", self.subject)?;
        writeln!(f, "issuer:    {}", self.issuer)?;
        writeln!(f, "serial:    {}", self.serial)?;
        writeln!(
            f,
            "validity:  {} .. {}",
            self.not_before_utc(),
            self.not_after_utc()
        )?;
        writeln!(f, "ca:        {}", self.is_ca)?;
        writeln!(f, "SANs:      {}", self.sans.join(", "))?;
        write!(f, "EKUs:      {}", self.ekus.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName as RcDn, DnType,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, OtherNameValue, SanType,
        date_time_ymd,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // ---------------------------------------------------------------- test PKI

    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn dn(cn: &str) -> RcDn {
        let mut dn = RcDn::new();
        dn.push(DnType::CommonName, cn);
        dn
    }

    impl TestCa {
        fn new(cn: &str) -> Self {
            Self::with_params(cn, |_| {})
        }

        fn with_params(cn: &str, tweak: impl FnOnce(&mut CertificateParams)) -> Self {
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(cn);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            tweak(&mut params);
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA cert");
            Self {
                issuer: Issuer::new(params, key),
                pem: cert.pem(),
            }
        }

        fn leaf(&self, cn: &str, sans: Vec<SanType>) -> Leaf {
            self.leaf_with(cn, sans, |_| {})
        }

        fn leaf_with(
            &self,
            cn: &str,
            sans: Vec<SanType>,
            tweak: impl FnOnce(&mut CertificateParams),
        ) -> Leaf {
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(cn);
            params.subject_alt_names = sans;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            tweak(&mut params);
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().expect("dns SAN"))
    }

    fn ip(addr: &str) -> SanType {
        SanType::IpAddress(addr.parse().expect("ip SAN"))
    }

    fn xmpp_addr(jid: &str) -> SanType {
        SanType::OtherName((
            vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
            OtherNameValue::Utf8String(jid.to_owned()),
        ))
    }

    /// A unique scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("xmpp-core-tls-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        fn write(&self, name: &str, content: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).expect("write test file");
            set_mode(&path, 0o600);
            path
        }

        /// Writes a cert/key pair plus the CA bundle and returns the paths.
        fn files(&self, prefix: &str, leaf: &Leaf, ca_pem: &str) -> TlsFiles {
            TlsFiles::new(
                self.write(&format!("{prefix}-cert.pem"), &leaf.cert_pem),
                self.write(&format!("{prefix}-key.pem"), &leaf.key_pem),
                self.write(&format!("{prefix}-ca.pem"), ca_pem),
            )
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// One CA, a server certificate for `control.example` / 127.0.0.1 and an agent
    /// certificate with an xmppAddr.
    struct Pki {
        dir: TempDir,
        ca: TestCa,
        server: TlsFiles,
        client: TlsFiles,
        server_leaf: Leaf,
    }

    fn pki(tag: &str) -> Pki {
        let dir = TempDir::new(tag);
        let ca = TestCa::new("Test Contrail CA");
        let server_leaf = ca.leaf(
            "control.example",
            vec![dns("control.example"), ip("127.0.0.1")],
        );
        let client_leaf = ca.leaf(
            "agent-1.example",
            vec![dns("agent-1.example"), xmpp_addr("agent-1@example")],
        );
        let server = dir.files("server", &server_leaf, &ca.pem);
        let client = dir.files("client", &client_leaf, &ca.pem);
        Pki {
            dir,
            ca,
            server,
            client,
            server_leaf,
        }
    }

    fn load_server(files: &TlsFiles) -> ServerTls {
        ServerTls::load(files, &ServerTlsOptions::default()).expect("server TLS loads")
    }

    fn load_client(files: &TlsFiles) -> ClientTls {
        ClientTls::load(files, &ClientTlsOptions::default()).expect("client TLS loads")
    }

    fn name(host: &str) -> ServerName<'static> {
        server_name(host).expect("server name")
    }

    // ---------------------------------------------------------------- handshakes

    #[derive(Debug)]
    struct Outcome {
        /// Client certificate chain seen by the server.
        server: io::Result<Option<Vec<CertificateDer<'static>>>>,
        /// Server certificate chain seen by the client, and the version.
        client: io::Result<(
            Vec<CertificateDer<'static>>,
            Option<rustls::ProtocolVersion>,
        )>,
    }

    /// A real handshake over an in-memory duplex pipe. The server writes two bytes after the
    /// handshake and the client reads them, so a TLS 1.3 client certificate rejection
    /// (reported after the client's Finished) also surfaces as a client error.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Outcome {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut stream = tokio_rustls::TlsAcceptor::from(server)
                .accept(server_io)
                .await?;
            let peer = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            stream.write_all(b"ok").await?;
            stream.flush().await?;
            Ok(peer)
        };
        let client_side = async move {
            let mut stream = tokio_rustls::TlsConnector::from(client)
                .connect(name, client_io)
                .await?;
            let mut buf = [0u8; 2];
            stream.read_exact(&mut buf).await?;
            if &buf != b"ok" {
                return Err(io::Error::other("unexpected application data"));
            }
            let conn = stream.get_ref().1;
            let peer = conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            Ok((peer, conn.protocol_version()))
        };
        let (server, client) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(server_side, client_side)
        })
        .await
        .expect("handshake finishes");
        Outcome { server, client }
    }

    fn assert_both_fail(outcome: &Outcome) {
        assert!(outcome.server.is_err(), "server should fail: {outcome:?}");
        assert!(outcome.client.is_err(), "client should fail: {outcome:?}");
    }

    // ---------------------------------------------------------------- loading

    #[test]
    fn loads_a_good_set() {
        let pki = pki("good");
        let server = load_server(&pki.server);
        let client = load_client(&pki.client);
        assert!(Arc::ptr_eq(&server.current(), &server.current()));
        assert!(server.current().alpn_protocols.is_empty());
        assert!(client.current().alpn_protocols.is_empty());
        assert_eq!(server.files(), &pki.server);
        // A clone is a handle on the same configuration.
        assert!(Arc::ptr_eq(&client.clone().current(), &client.current()));
    }

    #[test]
    fn missing_file_names_option_and_path() {
        let pki = pki("missing");
        let mut files = pki.server.clone();
        files.key = pki.dir.0.join("absent-key.pem");
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("missing");
        assert!(
            matches!(
                err,
                TlsError::Missing {
                    file: TlsFileKind::Key,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("xmpp_server_key "), "{msg}");
        assert!(msg.contains("absent-key.pem"), "{msg}");
        assert_eq!(err.path(), Some(files.key.as_path()));
    }

    #[test]
    fn unreadable_file() {
        let pki = pki("unreadable");
        let mut files = pki.server.clone();
        // A directory opens but cannot be read, even as root (mode 000 would not stop root).
        files.cert = pki.dir.0.clone();
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("unreadable");
        assert!(
            matches!(
                err,
                TlsError::Unreadable {
                    file: TlsFileKind::Cert,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("xmpp_server_cert "), "{msg}");
        assert!(msg.contains(&pki.dir.0.display().to_string()), "{msg}");
    }

    #[test]
    fn not_pem_garbage() {
        let pki = pki("garbage");
        let mut files = pki.server.clone();
        files.cert = pki
            .dir
            .write("garbage.pem", "this is not a certificate\n\x01\x02");
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("garbage");
        assert!(
            matches!(
                err,
                TlsError::NotPem {
                    file: TlsFileKind::Cert,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        // A truncated PEM section is also "not PEM".
        let truncated: String = pki
            .server_leaf
            .cert_pem
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        files.cert = pki.dir.write("truncated.pem", &truncated);
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("truncated");
        assert!(matches!(err, TlsError::NotPem { .. }), "{err:?}");
    }

    #[test]
    fn pem_without_certificate_or_key() {
        let pki = pki("nocert");
        // Key file given as the certificate.
        let mut files = pki.server.clone();
        files.cert = pki.server.key.clone();
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("no cert");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("found: PRIVATE KEY"), "{err}");

        // Certificate given as the key.
        let mut files = pki.server.clone();
        files.key = pki.server.cert.clone();
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("no key");
        assert!(
            matches!(
                err,
                TlsError::NoPrivateKey {
                    file: TlsFileKind::Key,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("xmpp_server_key "), "{err}");
    }

    #[test]
    fn key_from_another_certificate_is_detected() {
        let pki = pki("mismatch");
        let other = pki.ca.leaf("other.example", vec![dns("other.example")]);
        let mut files = pki.server.clone();
        files.key = pki.dir.write("other-key.pem", &other.key_pem);
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("other-key.pem") && msg.contains("server-cert.pem"),
            "{msg}"
        );
        // The client side checks it as well.
        let err = ClientTls::load(&files, &ClientTlsOptions::default()).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn expired_and_not_yet_valid_leaf() {
        let pki = pki("expired");
        let expired = pki
            .ca
            .leaf_with("old.example", vec![dns("old.example")], |p| {
                p.not_before = date_time_ymd(2020, 1, 1);
                p.not_after = date_time_ymd(2021, 1, 2);
            });
        let files = pki.dir.files("expired", &expired, &pki.ca.pem);
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("expired");
        assert!(
            matches!(
                err,
                TlsError::Expired {
                    file: TlsFileKind::Cert,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "xmpp_server_cert {}: certificate expired on 2021-01-02 00:00:00 UTC",
                files.cert.display()
            )),
            "{msg}"
        );

        let future = pki
            .ca
            .leaf_with("new.example", vec![dns("new.example")], |p| {
                p.not_before = date_time_ymd(3000, 1, 1);
                p.not_after = date_time_ymd(3001, 1, 1);
            });
        let files = pki.dir.files("future", &future, &pki.ca.pem);
        let err = ClientTls::load(&files, &ClientTlsOptions::default()).expect_err("future");
        assert!(matches!(err, TlsError::NotYetValid { .. }), "{err:?}");
        assert!(err.to_string().contains("3000-01-01 00:00:00 UTC"), "{err}");
    }

    #[test]
    fn expired_ca_is_rejected() {
        let dir = TempDir::new("expired-ca");
        let ca = TestCa::with_params("Old CA", |p| {
            p.not_before = date_time_ymd(2019, 1, 1);
            p.not_after = date_time_ymd(2020, 6, 1);
        });
        let leaf = ca.leaf("control.example", vec![dns("control.example")]);
        let files = dir.files("s", &leaf, &ca.pem);
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("expired CA");
        assert!(
            matches!(
                err,
                TlsError::Expired {
                    file: TlsFileKind::Ca,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("xmpp_ca_cert "), "{err}");
        assert!(err.to_string().contains("2020-06-01 00:00:00 UTC"), "{err}");
    }

    #[test]
    fn ca_file_without_certificate() {
        let pki = pki("ca-empty");
        let mut files = pki.server.clone();
        files.ca = pki.server.key.clone();
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("key as CA");
        assert!(matches!(err, TlsError::NoCaCertificate { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("xmpp_ca_cert {}", files.ca.display())),
            "{msg}"
        );

        files.ca = pki.dir.write("empty-ca.pem", "");
        let err = ClientTls::load(&files, &ClientTlsOptions::default()).expect_err("empty CA");
        assert!(matches!(err, TlsError::NoCaCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn invalid_ca_certificate() {
        let pki = pki("ca-invalid");
        // A leaf (cA=false) is not a trust anchor.
        let mut files = pki.server.clone();
        files.ca = pki.server.cert.clone();
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("leaf as CA");
        assert!(
            matches!(err, TlsError::InvalidCaCertificate { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("not a CA certificate"), "{err}");

        // Same with an explicit basicConstraints cA=false.
        let explicit = pki
            .ca
            .leaf_with("leaf.example", vec![dns("leaf.example")], |p| {
                p.is_ca = IsCa::ExplicitNoCa;
            });
        files.ca = pki.dir.write("explicit-leaf.pem", &explicit.cert_pem);
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("cA=false");
        assert!(err.to_string().contains("cA=false"), "{err}");

        // A CERTIFICATE section whose DER is junk.
        files.ca = pki.dir.write(
            "junk-ca.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let err = ServerTls::load(&files, &ServerTlsOptions::default()).expect_err("junk CA");
        assert!(
            matches!(err, TlsError::InvalidCaCertificate { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("junk-ca.pem"), "{err}");
    }

    // ---------------------------------------------------------------- handshakes

    #[tokio::test]
    async fn mutual_tls_handshake_succeeds() {
        let pki = pki("mtls");
        let server = load_server(&pki.server);
        let client = load_client(&pki.client);
        let out = handshake(server.current(), client.current(), name("control.example")).await;
        let client_chain = out
            .server
            .expect("server side ok")
            .expect("client cert presented");
        let (server_chain, version) = out.client.expect("client side ok");
        assert_eq!(server_chain.first(), Some(&pki.server_leaf.der));
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
        let identity = peer_identity(&client_chain).expect("identity");
        assert!(identity.matches_name("agent-1.example"));
    }

    #[tokio::test]
    async fn tls12_client_is_accepted() {
        let pki = pki("tls12");
        let server = load_server(&pki.server);
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca.pem.as_bytes()).expect("ca der"))
            .expect("root");
        let chain = vec![CertificateDer::from_pem_file(&pki.client.cert).expect("chain")];
        let key = PrivateKeyDer::from_pem_file(&pki.client.key).expect("key");
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client config");
        let out = handshake(server.current(), Arc::new(client), name("control.example")).await;
        let (_, version) = out.client.expect("client side ok");
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
        assert!(out.server.expect("server side ok").is_some());
    }

    #[tokio::test]
    async fn client_cert_from_another_ca_is_rejected() {
        let pki = pki("other-ca");
        let rogue_ca = TestCa::new("Rogue CA");
        let rogue = rogue_ca.leaf("agent-1.example", vec![dns("agent-1.example")]);
        // The rogue client trusts the real CA, so only the server can object.
        let files = pki.dir.files("rogue", &rogue, &pki.ca.pem);
        let server = load_server(&pki.server);
        let client = load_client(&files);
        let out = handshake(server.current(), client.current(), name("control.example")).await;
        assert_both_fail(&out);
        let server_err = out.server.expect_err("server error").to_string();
        assert!(server_err.contains("certificate"), "{server_err}");
    }

    #[tokio::test]
    async fn missing_client_cert_rejected_unless_optional() {
        let pki = pki("no-client-cert");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca.pem.as_bytes()).expect("ca der"))
            .expect("root");
        let anonymous = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(PROTOCOL_VERSIONS)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );

        let strict = load_server(&pki.server);
        let out = handshake(strict.current(), anonymous.clone(), name("control.example")).await;
        assert_both_fail(&out);

        let weak = ServerTls::load(
            &pki.server,
            &ServerTlsOptions {
                require_client_cert: false,
            },
        )
        .expect("weak server");
        let out = handshake(weak.current(), anonymous, name("control.example")).await;
        assert_eq!(out.server.expect("weak mode accepts"), None);
        assert!(out.client.is_ok(), "{:?}", out.client);

        // Weak mode still verifies a certificate that is presented.
        let rogue_ca = TestCa::new("Rogue CA");
        let rogue = rogue_ca.leaf("agent-1.example", vec![dns("agent-1.example")]);
        let files = pki.dir.files("rogue", &rogue, &pki.ca.pem);
        let out = handshake(
            weak.current(),
            load_client(&files).current(),
            name("control.example"),
        )
        .await;
        assert_both_fail(&out);
    }

    #[tokio::test]
    async fn wrong_server_name_fails_unless_name_check_disabled() {
        let pki = pki("wrong-name");
        let server = load_server(&pki.server);
        let client = load_client(&pki.client);
        let out = handshake(server.current(), client.current(), name("other.example")).await;
        assert_both_fail(&out);
        let client_err = out.client.expect_err("client error").to_string();
        assert!(
            client_err.contains("not valid for name") || client_err.contains("NotValidForName"),
            "{client_err}"
        );

        let lax = ClientTls::load(
            &pki.client,
            &ClientTlsOptions {
                verify_server_name: false,
            },
        )
        .expect("lax client");
        let out = handshake(server.current(), lax.current(), name("other.example")).await;
        assert!(out.server.is_ok(), "{:?}", out.server);
        assert!(out.client.is_ok(), "{:?}", out.client);

        // The chain is still verified: a server from another CA is refused.
        let rogue_ca = TestCa::new("Rogue CA");
        let rogue = rogue_ca.leaf("control.example", vec![dns("control.example")]);
        let rogue_files = pki.dir.files("rogue-server", &rogue, &rogue_ca.pem);
        let rogue_server = ServerTls::load(
            &rogue_files,
            &ServerTlsOptions {
                require_client_cert: false,
            },
        )
        .expect("rogue server");
        let out = handshake(
            rogue_server.current(),
            lax.current(),
            name("control.example"),
        )
        .await;
        assert_both_fail(&out);
    }

    #[tokio::test]
    async fn ip_address_server_name() {
        let pki = pki("ip");
        let server = load_server(&pki.server);
        let client = load_client(&pki.client);
        let out = handshake(server.current(), client.current(), name("127.0.0.1")).await;
        assert!(out.server.is_ok(), "{:?}", out.server);
        assert!(out.client.is_ok(), "{:?}", out.client);

        let out = handshake(server.current(), client.current(), name("10.1.1.1")).await;
        assert_both_fail(&out);
        assert!(matches!(name("10.1.1.1"), ServerName::IpAddress(_)));
        assert!(server_name("not a name!").is_err());
    }

    // ---------------------------------------------------------------- inspection

    #[test]
    fn peer_identity_extracts_names() {
        let ca = TestCa::new("CA");
        let leaf = ca.leaf(
            "Agent-7.Example",
            vec![
                dns("agent-7.example"),
                ip("192.0.2.7"),
                ip("2001:db8::7"),
                xmpp_addr("agent-7@contrail"),
            ],
        );
        let id = peer_identity(std::slice::from_ref(&leaf.der)).expect("identity");
        assert_eq!(id.common_names, vec!["Agent-7.Example".to_owned()]);
        assert_eq!(id.dns_names, vec!["agent-7.example".to_owned()]);
        assert_eq!(
            id.ip_addrs,
            vec![
                "192.0.2.7".parse::<IpAddr>().expect("ip"),
                "2001:db8::7".parse::<IpAddr>().expect("ip")
            ]
        );
        assert_eq!(id.xmpp_addrs, vec!["agent-7@contrail".to_owned()]);

        assert!(id.matches_name("agent-7.example"));
        assert!(id.matches_name("AGENT-7.EXAMPLE."));
        assert!(id.matches_name("agent-7@Contrail"));
        assert!(id.matches_name("192.0.2.7"));
        assert!(id.matches_name("2001:db8:0::7"));
        assert!(!id.matches_name("agent-8.example"));
        assert!(!id.matches_name("192.0.2.8"));
        assert!(!id.matches_name(""));

        assert!(matches!(
            peer_identity(&[]),
            Err(TlsError::NoPeerCertificate)
        ));
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            peer_identity(&[junk]),
            Err(TlsError::CertificateParse { .. })
        ));
    }

    #[test]
    fn cert_info_and_expiry() {
        let pki = pki("info");
        let infos = pki.server.cert_info().expect("cert info");
        assert_eq!(infos.len(), 1);
        let info = &infos[0];
        assert!(info.subject.contains("control.example"), "{info}");
        assert!(info.issuer.contains("Test Contrail CA"), "{info}");
        assert_eq!(info.sans, vec!["DNS:control.example", "IP:127.0.0.1"]);
        assert_eq!(info.ekus, vec!["serverAuth", "clientAuth"]);
        assert!(!info.is_ca);
        assert_eq!(info.not_after_utc(), "4096-01-01 00:00:00 UTC");
        assert!(!info.expires_within(Duration::from_secs(86_400 * 365)));
        assert!(info.expires_within(Duration::MAX));

        let ca = pki.server.ca_info().expect("ca info");
        assert!(ca[0].is_ca);
        assert!(
            pki.server
                .expiring_within(Duration::from_secs(86_400))
                .expect("scan")
                .is_empty()
        );

        let soon = pki.ca.leaf_with("soon.example", vec![], |p| {
            p.not_after = date_time_ymd(2024, 1, 1);
        });
        let soon_path = pki.dir.write("soon.pem", &soon.cert_pem);
        let info = CertInfo::load(TlsFileKind::Cert, &soon_path).expect("info");
        assert!(info[0].expires_within(Duration::ZERO));
        assert_eq!(info[0].not_after_utc(), "2024-01-01 00:00:00 UTC");
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_735_787_045), "2025-01-02 03:04:05 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn key_permission_warning_for_group_readable_key() {
        let pki = pki("perm");
        assert_eq!(key_permission_warning(&pki.server.key), None);
        set_mode(&pki.server.key, 0o644);
        let warning = key_permission_warning(&pki.server.key).expect("warning for 0644");
        assert!(warning.contains("0644"), "{warning}");
        assert!(warning.contains("server-key.pem"), "{warning}");
        assert!(pki.server.key_permission_warning().is_some());
        set_mode(&pki.server.key, 0o600);
        assert_eq!(pki.server.key_permission_warning(), None);
    }

    // ---------------------------------------------------------------- reload

    #[tokio::test]
    async fn reload_swaps_material_and_keeps_old_sessions() {
        let pki = pki("reload");
        let server = load_server(&pki.server);
        let client = load_client(&pki.client);
        let before = server.current();

        let renewed = pki.ca.leaf(
            "control-renewed.example",
            vec![dns("control.example"), ip("127.0.0.1")],
        );
        pki.dir.write("server-cert.pem", &renewed.cert_pem);
        pki.dir.write("server-key.pem", &renewed.key_pem);
        server.reload().expect("reload");
        let after = server.current();
        assert!(!Arc::ptr_eq(&before, &after));

        let out = handshake(after.clone(), client.current(), name("control.example")).await;
        let (chain, _) = out.client.expect("new handshake");
        assert_eq!(chain.first(), Some(&renewed.der));

        // An Arc taken before the reload (a live session) still serves the old certificate.
        let out = handshake(before, client.current(), name("control.example")).await;
        let (chain, _) = out.client.expect("old config handshake");
        assert_eq!(chain.first(), Some(&pki.server_leaf.der));

        // A failed reload keeps the current configuration.
        pki.dir.write("server-key.pem", "garbage");
        let err = server.reload().expect_err("bad reload");
        assert!(
            matches!(
                err,
                TlsError::NotPem {
                    file: TlsFileKind::Key,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(Arc::ptr_eq(&after, &server.current()));

        // The client side reloads the same way.
        let client_before = client.current();
        client.reload().expect("client reload");
        assert!(!Arc::ptr_eq(&client_before, &client.current()));
    }
}
