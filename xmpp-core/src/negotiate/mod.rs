//! Stream negotiation as explicit states, for both roles and both dialects, without I/O.
//!
//! RFC 6120 streams go further than the header exchange and STARTTLS when a profile asks
//! for it: the responder in [`RfcProfile::Client`] offers SASL EXTERNAL after TLS, restarts
//! the stream after `<success/>` and serves resource binding; the initiator with a
//! [`Login`] authenticates (EXTERNAL or PLAIN), restarts and binds. Each of these is one
//! more state of the same machines, and each stream restart resets the reader in the same
//! step as the element that triggers it (`<proceed/>`/`<starttls/>`, `<success/>`).
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

pub use client::{ClientNegotiator, ClientPolicy, Login};
pub use server::{RfcProfile, ServerNegotiator, ServerPolicy};

use bytes::Bytes;

use crate::jid::Jid;
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
    /// binding continue (with a [`Login`], the features after authentication).
    pub features: Option<Features>,
    /// The full JID bound by resource binding (RFC profile): the peer's on the responder,
    /// ours on the initiator. `None` in the Contrail dialect and without binding.
    pub jid: Option<Jid>,
}

#[cfg(test)]
mod tests;
