//! One simulated client connection: TCP (with byte counters), stream negotiation with
//! `xmpp_core`'s own sans-IO client negotiator (so a simulated agent writes exactly the
//! vrouter agent's bytes), STARTTLS with the agent's rustls configuration, and for the
//! RFC 6120 profile SASL EXTERNAL, the stream restart and resource binding.
//!
//! After negotiation the caller gets the raw (possibly TLS) byte stream plus whatever the
//! server already sent: the hot path reads it with [`crate::scan::Scanner`], not with an
//! element parser, so a thousand agents fit on one core.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use xmpp_core::io::SkipFiller;
use xmpp_core::negotiate::{Action, ClientNegotiator, ClientPolicy};
use xmpp_core::stanza::ns;
use xmpp_core::stream::{Dialect, Features, StreamHeader};
use xmpp_core::xml::{Element, Event, Limits, Reader, Style, XmlWriter};

/// Bytes read from and written to TCP by this process (TLS records included).
pub static BYTES_IN: AtomicU64 = AtomicU64::new(0);
/// See [`BYTES_IN`].
pub static BYTES_OUT: AtomicU64 = AtomicU64::new(0);

/// A TCP stream that counts its bytes into [`BYTES_IN`] / [`BYTES_OUT`].
#[derive(Debug)]
pub struct Counted(pub TcpStream);

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        BYTES_IN.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            BYTES_OUT.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Any byte stream a session runs on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed stream (plain TCP or TLS over it).
pub type BoxIo = Box<dyn Io>;

/// TLS settings of one client: the rustls configuration and the name to verify.
pub type ClientTlsCfg = (Arc<rustls::ClientConfig>, ServerName<'static>);

/// Which stream profile a client speaks.
#[derive(Debug, Clone)]
pub enum Login {
    /// The Contrail agent dialect: `from` = agent name, to = the control JID, no SASL.
    Contrail {
        /// Agent name.
        name: String,
    },
    /// RFC 6120 client: SASL EXTERNAL (identity from the certificate), bind.
    Rfc {
        /// Local part of the JID (the certificate's xmppAddr is `user@domain`).
        user: String,
        /// The domain (stream `to`).
        domain: String,
        /// Resource to bind.
        resource: String,
    },
}

/// A negotiated session.
pub struct Session {
    /// The stream.
    pub io: BoxIo,
    /// Bytes the server sent after negotiation, not yet consumed.
    pub leftover: BytesMut,
    /// The reader state (RFC: needed to read IQ results before switching to scanning).
    pub reader: Reader,
    /// The bound JID (RFC).
    pub jid: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("jid", &self.jid)
            .finish_non_exhaustive()
    }
}

enum Stage {
    Plain(Counted),
    Tls(BoxIo),
}

impl Stage {
    fn io(&mut self) -> &mut dyn Io {
        match self {
            Stage::Plain(s) => s,
            Stage::Tls(s) => s.as_mut(),
        }
    }
    fn into_box(self) -> BoxIo {
        match self {
            Stage::Plain(s) => Box::new(s),
            Stage::Tls(s) => s,
        }
    }
}

async fn write_all(io: &mut dyn Io, out: &mut BytesMut) -> Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        io.flush().await?;
        out.clear();
    }
    Ok(())
}

/// Connects and negotiates, bounded by `limit`.
pub async fn open(
    addr: std::net::SocketAddr,
    login: &Login,
    tls: Option<ClientTlsCfg>,
    limit: Duration,
) -> Result<Session> {
    tokio::time::timeout(limit, open_inner(addr, login, tls))
        .await
        .map_err(|_| anyhow!("negotiation did not finish within {limit:?}"))?
}

async fn open_inner(
    addr: std::net::SocketAddr,
    login: &Login,
    tls: Option<ClientTlsCfg>,
) -> Result<Session> {
    let tcp = TcpStream::connect(addr).await.context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let policy = match login {
        Login::Contrail { name } => ClientPolicy {
            dialect: Dialect::Contrail,
            tls_required: tls.is_some(),
            from: name.clone(),
            to: ns::CONTROL_JID.to_owned(),
            default_ns: String::new(),
            limits: Limits::default(),
        },
        Login::Rfc { user, domain, .. } => ClientPolicy {
            dialect: Dialect::Rfc,
            tls_required: tls.is_some(),
            from: format!("{user}@{domain}"),
            to: domain.clone(),
            default_ns: ns::CLIENT.to_owned(),
            limits: Limits::default(),
        },
    };
    let mut neg = match login {
        // The library's own standard client profile: SASL EXTERNAL with the certificate,
        // restart, bind.
        Login::Rfc { resource, .. } => ClientNegotiator::with_login(
            policy,
            xmpp_core::negotiate::Login {
                credentials: vec![xmpp_core::sasl::Credentials::External { authzid: None }],
                resource: Some(resource.clone()),
            },
        ),
        Login::Contrail { .. } => ClientNegotiator::new(policy),
    };
    let mut stage = Stage::Plain(Counted(tcp));
    let mut out = BytesMut::new();
    // The same loop as `xmpp_core::io::connect`, kept here to own the raw stream after.
    let negotiated = 'outer: loop {
        neg.process().map_err(|e| anyhow!("negotiation: {e}"))?;
        let mut acted = false;
        while let Some(action) = neg.poll_action() {
            acted = true;
            match action {
                Action::Send(b) => out.extend_from_slice(&b),
                Action::StartTls => {
                    write_all(stage.io(), &mut out).await?;
                    let Stage::Plain(plain) = stage else {
                        bail!("STARTTLS inside TLS");
                    };
                    let Some((cfg, name)) = tls.clone() else {
                        bail!("the server requires TLS and TLS is off here");
                    };
                    let s = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, SkipFiller::new(plain))
                        .await
                        .context("TLS handshake")?;
                    stage = Stage::Tls(Box::new(s));
                    neg.tls_established()
                        .map_err(|e| anyhow!("negotiation: {e}"))?;
                }
                Action::Established(n) => break 'outer n,
            }
        }
        if acted {
            write_all(stage.io(), &mut out).await?;
            continue;
        }
        let buf = neg.buffer_mut();
        buf.reserve(4096);
        if stage.io().read_buf(buf).await? == 0 {
            bail!("closed by the server during negotiation");
        }
    };
    let mut io = stage.into_box();
    let mut reader = neg.into_reader();
    let mut jid = None;
    match login {
        Login::Contrail { .. } => {
            // As the C++ agent: the first keepalive right after Established (spec §5.2).
            out.extend_from_slice(Dialect::Contrail.keepalive());
            write_all(io.as_mut(), &mut out).await?;
        }
        Login::Rfc {
            domain, resource, ..
        } => {
            write_all(io.as_mut(), &mut out).await?;
            jid = negotiated.jid.as_ref().map(ToString::to_string);
            let mut features = negotiated.features.clone().unwrap_or_default();
            if jid.is_some() {
                // Authenticated and bound by the negotiator.
                features = Features::default();
            }
            if !features.mechanisms.is_empty() {
                if !features.mechanisms.iter().any(|m| m == "EXTERNAL") {
                    bail!(
                        "the server offers no SASL EXTERNAL ({:?})",
                        features.mechanisms
                    );
                }
                // RFC 6120 §6.4.2 / XEP-0178: "=" is the empty authorization identity.
                let auth = Element::with_ns("auth", ns::SASL)
                    .attr("mechanism", "EXTERNAL")
                    .text_node("=");
                send_el(io.as_mut(), &auth).await?;
                let el = next_element(io.as_mut(), &mut reader).await?;
                if el.local_name() != "success" {
                    bail!("SASL EXTERNAL refused: <{}>", el.name());
                }
                reader.restart();
                let header = StreamHeader {
                    to: Some(domain.clone()),
                    version: Some("1.0".into()),
                    default_ns: Some(ns::CLIENT.into()),
                    ..StreamHeader::default()
                };
                let mut h = BytesMut::new();
                header.write(&mut h, Dialect::Rfc);
                write_all(io.as_mut(), &mut h).await?;
                features = loop {
                    match next_event(io.as_mut(), &mut reader).await? {
                        Event::Element(el) if Features::matches(&el) => {
                            break Features::from_element(&el)
                                .map_err(|e| anyhow!("features: {e}"))?;
                        }
                        Event::Element(el) => bail!("unexpected <{}> after SASL", el.name()),
                        _ => {}
                    }
                };
            }
            if features.bind {
                let bind = Element::new("iq")
                    .attr("type", "set")
                    .attr("id", "bind1")
                    .child(
                        Element::with_ns("bind", ns::BIND)
                            .child(Element::new("resource").text_node(resource.clone())),
                    );
                send_el(io.as_mut(), &bind).await?;
                let el = iq_result(io.as_mut(), &mut reader, "bind1").await?;
                jid = el
                    .find_descendant("jid")
                    .map(|j| j.text().trim().to_owned());
            }
            // Initial presence, as a real client; it also makes servers that deliver
            // notifications by presence treat the resource as available.
            send_el(io.as_mut(), &Element::new("presence")).await?;
        }
    }
    let leftover = reader.take_buffered();
    Ok(Session {
        io,
        leftover,
        reader,
        jid,
    })
}

/// Writes one element (compact) and flushes.
pub async fn send_el(io: &mut dyn Io, el: &Element) -> Result<()> {
    let mut out = BytesMut::new();
    el.write(&mut XmlWriter::new(&mut out, Style::Compact));
    write_all(io, &mut out).await
}

/// The next reader event, reading as needed.
pub async fn next_event(io: &mut dyn Io, reader: &mut Reader) -> Result<Event> {
    loop {
        if let Some(ev) = reader.next_event().map_err(|e| anyhow!("parse: {e}"))? {
            if let Event::StreamClose = ev {
                bail!("the server closed the stream");
            }
            return Ok(ev);
        }
        let buf = reader.buffer_mut();
        buf.reserve(16 * 1024);
        if io.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// The next element (keepalives skipped).
pub async fn next_element(io: &mut dyn Io, reader: &mut Reader) -> Result<Element> {
    loop {
        if let Event::Element(el) = next_event(io, reader).await? {
            if xmpp_core::stream::StreamError::matches(&el) {
                bail!(
                    "stream error: {}",
                    xmpp_core::stream::StreamError::from_element(&el)
                );
            }
            return Ok(el);
        }
    }
}

/// Reads until the IQ `id` is answered; an error answer is an error.
pub async fn iq_result(io: &mut dyn Io, reader: &mut Reader, id: &str) -> Result<Element> {
    loop {
        let el = next_element(io, reader).await?;
        if el.local_name() == "iq" && el.get_attr("id") == Some(id) {
            if el.get_attr("type") == Some("result") {
                return Ok(el);
            }
            let mut b = BytesMut::new();
            el.write(&mut XmlWriter::new(&mut b, Style::Compact));
            bail!("iq {id} failed: {}", String::from_utf8_lossy(&b));
        }
    }
}
