//! Test PKI generated at test time with rcgen (conventions rule 12: never committed, never
//! expiring on us), written as PEM files into a per-test temporary directory, plus rustls
//! configurations built directly for the cases `xmpp_core::tls` rightly refuses to load
//! (expired certificates, no client certificate).

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use xmpp_core::tls::{
    ClientTls, ClientTlsOptions, ServerTls, ServerTlsOptions, TlsFiles, server_name,
};

/// The agent name used as the client certificate CN and the stream `from`.
pub const AGENT: &str = "compute-1";

/// A unique scratch directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xmpp-tests-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `content` to `name` (mode 0600, so loading logs no key-permission warning).
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write test file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod test file");
        }
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority that can sign leaves.
#[derive(Debug)]
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(cn: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            der: cert.der().clone(),
        }
    }

    /// A leaf with one extended key usage; `expired` puts its validity in the past.
    pub fn leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA into root store");
        Arc::new(roots)
    }
}

/// A leaf certificate and its private key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

impl Leaf {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn server_sans() -> Vec<SanType> {
    vec![
        SanType::DnsName("localhost".try_into().expect("dns SAN")),
        SanType::IpAddress("127.0.0.1".parse().expect("ip SAN")),
    ]
}

/// Everything the TLS tests need: two CAs and their leaves, as files and as DER.
#[derive(Debug)]
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
    pub ca2: Ca,
    /// Server: SAN DNS localhost + IP 127.0.0.1, EKU serverAuth, signed by `ca`.
    pub server: Leaf,
    /// Client `compute-1`, EKU clientAuth, signed by `ca`.
    pub client: Leaf,
    /// Client `compute-1` signed by `ca2`.
    pub client_other_ca: Leaf,
    /// Client `compute-1` signed by `ca`, expired in 2021.
    pub client_expired: Leaf,
    /// Server certificate as `server`, expired in 2021.
    pub server_expired: Leaf,
    /// File sets; each trusts `ca`.
    pub server_files: TlsFiles,
    pub client_files: TlsFiles,
    pub client_other_ca_files: TlsFiles,
    pub client_expired_files: TlsFiles,
    pub server_expired_files: TlsFiles,
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let ca = Ca::new("Test CA");
        let ca2 = Ca::new("Other CA");
        let server = ca.leaf(
            "ctrl-1",
            server_sans(),
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        let client = ca.leaf(AGENT, vec![], ExtendedKeyUsagePurpose::ClientAuth, false);
        let client_other_ca = ca2.leaf(AGENT, vec![], ExtendedKeyUsagePurpose::ClientAuth, false);
        let client_expired = ca.leaf(AGENT, vec![], ExtendedKeyUsagePurpose::ClientAuth, true);
        let server_expired = ca.leaf(
            "ctrl-1",
            server_sans(),
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        );
        let ca_path = dir.write("ca.pem", &ca.pem);
        dir.write("ca2.pem", &ca2.pem);
        let files = |name: &str, leaf: &Leaf| {
            TlsFiles::new(
                dir.write(&format!("{name}.pem"), &leaf.cert_pem),
                dir.write(&format!("{name}.key"), &leaf.key_pem),
                ca_path.clone(),
            )
        };
        let server_files = files("server", &server);
        let client_files = files("client", &client);
        let client_other_ca_files = files("client-other-ca", &client_other_ca);
        let client_expired_files = files("client-expired", &client_expired);
        let server_expired_files = files("server-expired", &server_expired);
        Self {
            dir,
            ca,
            ca2,
            server,
            client,
            client_other_ca,
            client_expired,
            server_expired,
            server_files,
            client_files,
            client_other_ca_files,
            client_expired_files,
            server_expired_files,
        }
    }

    /// A further client certificate (EKU clientAuth, signed by `ca`) for `cn` with `sans`,
    /// written as `<tag>.pem` / `<tag>.key`; the file set trusts `ca`.
    pub fn client_leaf(&self, tag: &str, cn: &str, sans: Vec<SanType>) -> (Leaf, TlsFiles) {
        let leaf = self
            .ca
            .leaf(cn, sans, ExtendedKeyUsagePurpose::ClientAuth, false);
        let files = self.leaf_files(tag, &leaf);
        (leaf, files)
    }

    /// A further server certificate for `cn` (SAN DNS localhost + IP 127.0.0.1, EKU
    /// serverAuth, signed by `ca`), not written anywhere: e.g. to replace `server_files`
    /// before a reload.
    pub fn server_leaf(&self, cn: &str) -> Leaf {
        self.ca.leaf(
            cn,
            server_sans(),
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }

    /// Writes `leaf` as `<tag>.pem` / `<tag>.key`; the file set trusts `ca`.
    pub fn leaf_files(&self, tag: &str, leaf: &Leaf) -> TlsFiles {
        TlsFiles::new(
            self.dir.write(&format!("{tag}.pem"), &leaf.cert_pem),
            self.dir.write(&format!("{tag}.key"), &leaf.key_pem),
            self.dir.path().join("ca.pem"),
        )
    }

    /// The production server configuration, client certificate required.
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        ServerTls::load(&self.server_files, &ServerTlsOptions::default())
            .expect("load server TLS")
            .current()
    }

    /// The production client configuration for `files`, with the name to verify.
    pub fn client_tls(
        &self,
        files: &TlsFiles,
        verify_server_name: bool,
        name: &str,
    ) -> (
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    ) {
        let tls = ClientTls::load(files, &ClientTlsOptions { verify_server_name })
            .expect("load client TLS");
        (tls.current(), server_name(name).expect("server name"))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS versions for directly built configurations.
pub const TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
pub const TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client configuration built with rustls directly: trusts `roots`, presents `leaf` (or
/// no certificate at all).
pub fn raw_client_config(
    roots: Arc<RootCertStore>,
    leaf: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.key())
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A server configuration built with rustls directly: presents `leaf`, requires a client
/// certificate chaining to `client_roots`.
pub fn raw_server_config(
    leaf: &Leaf,
    client_roots: Arc<RootCertStore>,
) -> Arc<rustls::ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(client_roots, provider())
        .build()
        .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS12_AND_13)
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain(), leaf.key())
        .expect("server cert");
    Arc::new(config)
}

/// One HTTP/1.1 request over a plain `TcpStream` (`Connection: close`, so the response ends
/// at EOF): returns the status code and the body. No HTTP client dependency is needed for
/// the introspect and port APIs, which answer with a `Content-Length` or chunked body.
/// Bounded by 10 s so a hung server fails the test instead of stalling it.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("HTTP connect to {addr}: {e}"));
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes())
            .await
            .expect("HTTP request write");
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.expect("HTTP response read");
        raw
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("HTTP {method} {path} on {addr}: no response within 10 s"));
    let text = String::from_utf8(raw).expect("HTTP response is UTF-8");
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("HTTP response without a header end: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("HTTP status line: {head:?}"));
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    (status, body)
}

/// An xmppAddr subject alternative name (RFC 6120 §13.7.1.4, OID 1.3.6.1.5.5.7.8.5): the
/// identity SASL EXTERNAL authenticates (XEP-0178). Interop certificates carry exactly one:
/// ejabberd refuses an empty authzid when there are several.
pub fn xmpp_addr_san(jid: &str) -> SanType {
    SanType::OtherName((
        vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
        rcgen::OtherNameValue::Utf8String(jid.to_owned()),
    ))
}

/// Sets a validity from January 1st of last year to January 1st of the year after next:
/// rcgen's default (until 4096) makes ejabberd's certificate manager fail (its expiry
/// timers overflow), and real deployments never see such dates either.
fn bounded_validity(params: &mut CertificateParams) {
    let year = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| 1970 + (d.as_secs() / 31_556_952) as i32)
        .unwrap_or(2026);
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(year + 2, 1, 1);
}

impl Ca {
    /// [`Ca::new`] with a bounded validity (see `bounded_validity`).
    pub fn new_bounded(cn: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        bounded_validity(&mut params);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            der: cert.der().clone(),
        }
    }

    /// [`Ca::leaf`] (never expired) with a bounded validity.
    pub fn leaf_bounded(&self, cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        bounded_validity(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}
