//! tokio glue: negotiation over a socket, the STARTTLS upgrade with tokio-rustls, then a
//! cancel-safe element reader with batched, bounded writes and the hold and keepalive
//! timers.
//!
//! [`accept`] and [`connect`] run the stream layer; [`accept_with`] and [`connect_with`]
//! add the RFC 6120 client profile (SASL EXTERNAL from the verified client certificate,
//! binding). [`IqTracker`] and [`Client`] match IQ responses to requests with timeouts.
//!
//! Timers (spec §5.4): the hold timer (default 90 s) is re-armed by every received byte;
//! when it expires the stream ends with [`Error::Timeout`]. Keepalives (`C8 80` for
//! Contrail, a space for RFC peers) are sent every hold/3 while nothing else was written.

mod accept;
mod iq;
mod skip_filler;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};

pub use accept::AcceptLoop;
pub use iq::{Client, IqTracker};
pub use skip_filler::SkipFiller;

use crate::error::Error;
use crate::negotiate::{
    Action, ClientNegotiator, ClientPolicy, Login, Negotiated, RfcProfile, ServerNegotiator,
    ServerPolicy,
};
use crate::stream::{Dialect, Features, STREAM_CLOSE, StreamError};
use crate::xml::{Element, Event, Reader, Style, XmlWriter};

/// Timer and buffer settings for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Hold time: the stream ends when nothing is received for this long. Keepalives are
    /// sent every third of it. Default 90 s (spec §5.4).
    pub hold_time: Duration,
    /// Deadline for the whole negotiation (header exchange, STARTTLS, handshake, restart).
    /// Default 15 s, the Contrail server's open timer (spec §5.4).
    pub negotiation_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            hold_time: Duration::from_secs(90),
            negotiation_timeout: Duration::from_secs(15),
        }
    }
}

/// Largest single read from the socket. Matches the C++ 16 KiB read size; together with
/// the reader's element bound it caps what a connection can buffer.
const READ_CHUNK: usize = 16 * 1024;

/// The transport under the XMPP stream: plaintext, or TLS in either role.
#[derive(Debug)]
pub enum Transport<T> {
    /// Plain TCP (or any byte stream).
    Plain(T),
    /// TLS, we are the server.
    ServerTls(Box<tokio_rustls::server::TlsStream<SkipFiller<T>>>),
    /// TLS, we are the client.
    ClientTls(Box<tokio_rustls::client::TlsStream<SkipFiller<T>>>),
}

impl<T: AsyncRead + AsyncWrite + Unpin> Transport<T> {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        buf.reserve(READ_CHUNK);
        let mut limited = (&mut *buf).limit(READ_CHUNK);
        match self {
            Transport::Plain(s) => s.read_buf(&mut limited).await,
            Transport::ServerTls(s) => s.read_buf(&mut limited).await,
            Transport::ClientTls(s) => s.read_buf(&mut limited).await,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(bytes).await,
            Transport::ServerTls(s) => s.write(bytes).await,
            Transport::ClientTls(s) => s.write(bytes).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush().await,
            Transport::ServerTls(s) => s.flush().await,
            Transport::ClientTls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => s.shutdown().await,
            Transport::ServerTls(s) => s.shutdown().await,
            Transport::ClientTls(s) => s.shutdown().await,
        }
    }

    /// The certificates the peer presented in the TLS handshake (leaf first).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            Transport::Plain(_) => None,
            Transport::ServerTls(s) => s.get_ref().1.peer_certificates(),
            Transport::ClientTls(s) => s.get_ref().1.peer_certificates(),
        }
    }

    /// The negotiated TLS protocol version, e.g. `TLSv1_3`.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Transport::Plain(_) => None,
            Transport::ServerTls(s) => s.get_ref().1.protocol_version(),
            Transport::ClientTls(s) => s.get_ref().1.protocol_version(),
        }
    }

    /// The underlying byte stream.
    pub fn get_ref(&self) -> &T {
        match self {
            Transport::Plain(s) => s,
            Transport::ServerTls(s) => s.get_ref().0.get_ref(),
            Transport::ClientTls(s) => s.get_ref().0.get_ref(),
        }
    }
}

/// Writes all of `out` (advancing it as bytes are accepted, so a cancelled call loses
/// nothing), then flushes the transport.
async fn write_out<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Transport<T>,
    out: &mut BytesMut,
) -> Result<(), Error> {
    while !out.is_empty() {
        let n = io.write(out).await?;
        if n == 0 {
            return Err(Error::Closed);
        }
        out.advance(n);
    }
    io.flush().await?;
    Ok(())
}

/// Runs the responder side of negotiation on `io`: header exchange, STARTTLS with
/// `tls` when the policy requires it, stream restart. `tls` must be `Some` when
/// `policy.tls_required`. RFC streams are served in [`RfcProfile::StreamOnly`].
pub async fn accept<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    policy: ServerPolicy,
    tls: Option<Arc<rustls::ServerConfig>>,
    timing: Timing,
) -> Result<XmppStream<T>, Error> {
    accept_with(io, policy, RfcProfile::StreamOnly, tls, timing).await
}

/// [`accept`], serving RFC streams in `profile` (the daemons use [`RfcProfile::Client`]:
/// SASL EXTERNAL with the certificate the handshake verified, then binding).
pub async fn accept_with<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    policy: ServerPolicy,
    profile: RfcProfile,
    tls: Option<Arc<rustls::ServerConfig>>,
    timing: Timing,
) -> Result<XmppStream<T>, Error> {
    if policy.tls_required && tls.is_none() {
        return Err(Error::TlsRequired(
            "TLS is required but no server TLS configuration was given".into(),
        ));
    }
    let neg = ServerNegotiator::with_profile(policy, profile);
    timeout(
        timing.negotiation_timeout,
        run_server(Transport::Plain(io), neg, tls, timing),
    )
    .await
    .map_err(|_| Error::Timeout("negotiation timer"))?
}

async fn run_server<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: Transport<T>,
    mut neg: ServerNegotiator,
    tls: Option<Arc<rustls::ServerConfig>>,
    timing: Timing,
) -> Result<XmppStream<T>, Error> {
    let mut out = BytesMut::new();
    loop {
        if let Err(e) = neg.process() {
            // What the negotiator queued before failing goes first (e.g. the last SASL
            // <failure/>), then RFC peers are told why before the stream closes; Contrail
            // peers never parse stream errors (spec §3.5) and just see the close.
            while let Some(action) = neg.poll_action() {
                if let Action::Send(b) = action {
                    out.extend_from_slice(&b);
                }
            }
            if neg.dialect() == Some(Dialect::Rfc)
                && let Some(cond) = e.stream_condition()
            {
                StreamError::new(cond, e.to_string())
                    .write(&mut XmlWriter::new(&mut out, Style::Compact));
                out.extend_from_slice(STREAM_CLOSE);
                let _ = timeout(Duration::from_secs(1), write_out(&mut io, &mut out)).await;
            }
            let _ = timeout(Duration::from_secs(1), io.shutdown()).await;
            return Err(e);
        }
        let mut acted = false;
        while let Some(action) = neg.poll_action() {
            acted = true;
            match action {
                Action::Send(b) => out.extend_from_slice(&b),
                Action::StartTls => {
                    write_out(&mut io, &mut out).await?;
                    let Transport::Plain(plain) = io else {
                        return Err(Error::BadFormat("STARTTLS inside TLS".into()));
                    };
                    let Some(cfg) = tls.clone() else {
                        return Err(Error::TlsRequired("no server TLS configuration".into()));
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let stream = acceptor
                        .accept(SkipFiller::new(plain))
                        .await
                        .map_err(Error::TlsHandshake)?;
                    // The certificate rustls verified is the SASL EXTERNAL credential; one
                    // that cannot be parsed simply authenticates nobody.
                    let peer = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| crate::tls::peer_identity(c).ok());
                    io = Transport::ServerTls(Box::new(stream));
                    neg.tls_established(peer)?;
                }
                Action::Established(n) => {
                    write_out(&mut io, &mut out).await?;
                    return Ok(XmppStream::new(io, neg.into_reader(), *n, timing));
                }
            }
        }
        if acted {
            write_out(&mut io, &mut out).await?;
            continue;
        }
        let n = io
            .read_buf(neg.buffer_mut())
            .await
            .map_err(|e| negotiation_read_error(&io, e))?;
        if n == 0 {
            return Err(Error::Closed);
        }
    }
}

/// Runs the initiator side of negotiation on `io`. `tls` (configuration and the name to
/// verify the server certificate against) must be `Some` when `policy.tls_required`.
/// In the Contrail dialect the first keepalive is sent at once, as the C++ agent does.
pub async fn connect<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    policy: ClientPolicy,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    timing: Timing,
) -> Result<XmppStream<T>, Error> {
    if policy.tls_required && tls.is_none() {
        return Err(Error::TlsRequired(
            "TLS is required but no client TLS configuration was given".into(),
        ));
    }
    let neg = ClientNegotiator::new(policy);
    timeout(
        timing.negotiation_timeout,
        run_client(Transport::Plain(io), neg, tls, timing),
    )
    .await
    .map_err(|_| Error::Timeout("negotiation timer"))?
}

/// [`connect`] in the RFC 6120 client profile: after STARTTLS (server name verified by
/// `tls`), SASL with `login`'s credentials, stream restart, resource binding. The bound
/// JID is in [`Negotiated::jid`].
pub async fn connect_with<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    policy: ClientPolicy,
    login: Login,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    timing: Timing,
) -> Result<XmppStream<T>, Error> {
    if policy.tls_required && tls.is_none() {
        return Err(Error::TlsRequired(
            "TLS is required but no client TLS configuration was given".into(),
        ));
    }
    let neg = ClientNegotiator::with_login(policy, login);
    timeout(
        timing.negotiation_timeout,
        run_client(Transport::Plain(io), neg, tls, timing),
    )
    .await
    .map_err(|_| Error::Timeout("negotiation timer"))?
}

async fn run_client<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: Transport<T>,
    mut neg: ClientNegotiator,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    timing: Timing,
) -> Result<XmppStream<T>, Error> {
    let mut out = BytesMut::new();
    loop {
        neg.process()?;
        let mut acted = false;
        while let Some(action) = neg.poll_action() {
            acted = true;
            match action {
                Action::Send(b) => out.extend_from_slice(&b),
                Action::StartTls => {
                    write_out(&mut io, &mut out).await?;
                    let Transport::Plain(plain) = io else {
                        return Err(Error::BadFormat("STARTTLS inside TLS".into()));
                    };
                    let Some((cfg, name)) = tls.clone() else {
                        return Err(Error::TlsRequired("no client TLS configuration".into()));
                    };
                    let connector = tokio_rustls::TlsConnector::from(cfg);
                    let stream = connector
                        .connect(name, SkipFiller::new(plain))
                        .await
                        .map_err(Error::TlsHandshake)?;
                    io = Transport::ClientTls(Box::new(stream));
                    neg.tls_established()?;
                }
                Action::Established(n) => {
                    let mut s = XmppStream::new(io, neg.into_reader(), *n, timing);
                    s.out.extend_from_slice(&out);
                    if s.negotiated.dialect == Dialect::Contrail {
                        s.queue_keepalive();
                    }
                    s.flush().await?;
                    return Ok(s);
                }
            }
        }
        if acted {
            write_out(&mut io, &mut out).await?;
            continue;
        }
        let n = io
            .read_buf(neg.buffer_mut())
            .await
            .map_err(|e| negotiation_read_error(&io, e))?;
        if n == 0 {
            return Err(Error::Closed);
        }
    }
}

/// A read error during negotiation. Inside TLS an `InvalidData` error is a TLS alert from
/// the peer (with TLS 1.3 a client learns that its certificate was refused only at its first
/// read after the handshake): report it as the handshake failure it is.
fn negotiation_read_error<T>(io: &Transport<T>, e: std::io::Error) -> Error {
    if !matches!(io, Transport::Plain(_)) && e.kind() == std::io::ErrorKind::InvalidData {
        Error::TlsHandshake(e)
    } else {
        Error::Io(e)
    }
}

/// Binds a TCP listener; an unspecified IPv6 address (`::`, dual-stack on Linux) falls
/// back to `0.0.0.0` on hosts where IPv6 is disabled.
pub async fn bind_dual_stack(
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    match bind_listener(addr) {
        Err(e) if addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) => {
            let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(error = %e, "IPv6 unavailable; listening on {v4} only");
            bind_listener(v4)
        }
        r => r,
    }
}

/// Accept backlog of server listeners. The default (128) overflows when thousands of agents
/// reconnect at once (a control node restart, a network flap): dropped SYNs cost each agent
/// a 1 s, 3 s, 7 s retransmit. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a server listener with `SO_REUSEADDR` (restart without waiting for TIME_WAIT) and
/// [`LISTEN_BACKLOG`].
pub fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}

/// What [`XmppStream::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A stanza or other top-level element.
    Element(Element),
    /// Inter-stanza filler (a keepalive).
    Keepalive,
}

/// A negotiated XMPP stream.
#[derive(Debug)]
pub struct XmppStream<T> {
    io: Transport<T>,
    reader: Reader,
    out: BytesMut,
    negotiated: Negotiated,
    timing: Timing,
    last_rx: Instant,
    last_tx: Instant,
}

impl<T: AsyncRead + AsyncWrite + Unpin> XmppStream<T> {
    fn new(io: Transport<T>, reader: Reader, negotiated: Negotiated, timing: Timing) -> Self {
        let now = Instant::now();
        Self {
            io,
            reader,
            out: BytesMut::with_capacity(16 * 1024),
            negotiated,
            timing,
            last_rx: now,
            last_tx: now,
        }
    }

    /// What negotiation established (dialect, peer header, TLS).
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The transport (peer certificates, TLS version, the socket).
    pub fn transport(&self) -> &Transport<T> {
        &self.io
    }

    /// The writer style stanzas use on this stream: pugixml-like lines for Contrail, compact
    /// for RFC peers.
    pub fn style(&self) -> Style {
        match self.negotiated.dialect {
            Dialect::Contrail => Style::Lines,
            Dialect::Rfc => Style::Compact,
        }
    }

    /// The output buffer: append stanzas (e.g. with an [`XmlWriter`]), then [`flush`].
    /// Appending many before one flush batches them into few writes.
    ///
    /// [`flush`]: Self::flush
    pub fn out_mut(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Bytes queued and not yet written.
    pub fn pending_out(&self) -> usize {
        self.out.len()
    }

    /// Appends an element in this stream's style.
    pub fn queue(&mut self, el: &Element) {
        let style = self.style();
        el.write(&mut XmlWriter::new(&mut self.out, style));
    }

    /// Appends the dialect's keepalive.
    pub fn queue_keepalive(&mut self) {
        let ka = self.negotiated.dialect.keepalive();
        self.out.extend_from_slice(ka);
    }

    /// Writes everything queued. Fails with a timeout when the peer does not take the bytes
    /// within the hold time (a peer that stopped reading cannot pin us forever).
    /// Cancel-safe: bytes not yet written stay queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        timeout(
            self.timing.hold_time,
            write_out(&mut self.io, &mut self.out),
        )
        .await
        .map_err(|_| Error::Timeout("write (peer not reading) timer"))??;
        self.last_tx = Instant::now();
        Ok(())
    }

    /// The next element or keepalive. Sends keepalives when due and flushes queued output
    /// first. Cancel-safe: dropping the future loses no received or queued bytes.
    pub async fn next(&mut self) -> Result<Incoming, Error> {
        loop {
            if let Some(event) = self.reader.next_event()? {
                match event {
                    Event::Element(el) => {
                        self.check_stream_level(&el)?;
                        return Ok(Incoming::Element(el));
                    }
                    Event::Whitespace(_) => return Ok(Incoming::Keepalive),
                    Event::StreamClose => return Err(Error::Closed),
                    Event::StreamOpen(_) => {
                        return Err(Error::BadFormat("stream header inside the stream".into()));
                    }
                }
            }
            self.flush().await?;
            let hold_deadline = self.last_rx + self.timing.hold_time;
            let keepalive_deadline = self.last_tx + self.timing.hold_time / 3;
            tokio::select! {
                r = self.io.read_buf(self.reader.buffer_mut()) => {
                    if r? == 0 {
                        return Err(Error::Closed);
                    }
                    self.last_rx = Instant::now();
                }
                () = sleep_until(hold_deadline) => return Err(Error::Timeout("hold timer")),
                () = sleep_until(keepalive_deadline) => self.queue_keepalive(),
            }
        }
    }

    /// Stream-level elements after negotiation: the peer's stream error ends the stream;
    /// features offering required STARTTLS mean the server wants TLS and we run without.
    fn check_stream_level(&self, el: &Element) -> Result<(), Error> {
        if StreamError::matches(el) {
            return Err(Error::Peer(StreamError::from_element(el)));
        }
        if Features::matches(el)
            && !self.negotiated.tls
            && Features::from_element(el).is_ok_and(|f| f.starttls == Some(true))
        {
            return Err(Error::TlsRequired(
                "the peer requires STARTTLS but TLS is disabled here (set the auth flag to \
                 true on this side, with certificates)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Ends the stream. In the RFC dialect the error's condition (if any) is sent as a
    /// `<stream:error>` followed by `</stream:stream>`; the Contrail dialect just closes
    /// the socket, as the C++ daemons do (spec §3.5). Bounded by one second.
    pub async fn close(mut self, error: Option<&Error>) {
        if self.negotiated.dialect == Dialect::Rfc {
            if let Some(cond) = error.and_then(Error::stream_condition) {
                let se = StreamError::new(cond, error.map(ToString::to_string).unwrap_or_default());
                se.write(&mut XmlWriter::new(&mut self.out, Style::Compact));
            }
            self.out.extend_from_slice(STREAM_CLOSE);
        }
        let _ = timeout(Duration::from_secs(1), async {
            let _ = write_out(&mut self.io, &mut self.out).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// Sends a stream error and closes, for failures before a stream was negotiated (the
/// negotiator has been consumed). RFC dialect only; Contrail peers get a plain close.
pub async fn refuse<T: AsyncWrite + Unpin>(mut io: T, dialect: Option<Dialect>, error: &Error) {
    if dialect == Some(Dialect::Rfc)
        && let Some(cond) = error.stream_condition()
    {
        let mut out = BytesMut::new();
        StreamError::new(cond, error.to_string())
            .write(&mut XmlWriter::new(&mut out, Style::Compact));
        out.extend_from_slice(STREAM_CLOSE);
        let _ = timeout(Duration::from_secs(1), io.write_all(&out)).await;
    }
    let _ = timeout(Duration::from_secs(1), io.shutdown()).await;
}
