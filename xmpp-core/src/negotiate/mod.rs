//! Stream negotiation as explicit states, for both roles and both dialects, without I/O.
//!
//! A negotiator owns the stream [`Reader`]: received bytes go in with [`feed`]-style calls,
//! [`Action`]s come out (bytes to send, "start TLS now", "done"). Owning the reader lets the
//! element that triggers the TLS handover (`<starttls/>` on the responder, `<proceed/>` on
//! the initiator) also take the reader's leftover bytes in the same step, so nothing sent
//! before TLS can be mistaken for something sent inside it (RFC 6120 §5.4.3.3, spec §3.4).
//!
//! The I/O layer ([`crate::io`]) runs the loop: write every `Send`, on `StartTls` flush and
//! hand the socket to rustls, then call `tls_established`; read more bytes while no action
//! is pending; stop at `Established`.
//!
//! [`Reader`]: crate::xml::Reader
//! [`feed`]: ServerNegotiator::feed

mod client;
mod server;

pub use client::{ClientNegotiator, ClientPolicy};
pub use server::{ServerNegotiator, ServerPolicy};

use bytes::Bytes;

use crate::stream::{Dialect, Features, StreamHeader};

/// What the negotiator asks the I/O layer to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes.
    Send(Bytes),
    /// Flush everything sent so far, then run the TLS handshake in this side's role and
    /// call `tls_established`. Any filler the peer sent after the triggering nonza has
    /// already been discarded.
    StartTls,
    /// Negotiation is complete.
    Established(Box<Negotiated>),
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The dialect spoken on this stream.
    pub dialect: Dialect,
    /// The peer's (last) stream header.
    pub peer_header: StreamHeader,
    /// Whether the stream runs inside TLS.
    pub tls: bool,
    /// The features the server offered last (initiator, RFC dialect), where SASL and
    /// binding continue.
    pub features: Option<Features>,
}

#[cfg(test)]
mod tests;
