//! The crate's one error type, and how each error is reported to the peer.

use crate::stream::{Condition, StreamError};

/// Everything that can end a stream. Unless a variant says otherwise it is fatal to the
/// one stream it happened on, never to the process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer's bytes are not well-formed XML. Fatal; `not-well-formed`.
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    /// The peer used XML that RFC 6120 §11.1 forbids (DOCTYPE, comment, processing
    /// instruction, entity). Fatal; `restricted-xml`.
    #[error("restricted XML: {0} is not allowed in an XMPP stream")]
    RestrictedXml(String),
    /// A configured bound was exceeded (stanza size, nesting, header size). Fatal;
    /// `policy-violation`.
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    /// Well-formed XML that is not a valid stream element here. Fatal; `bad-format`.
    #[error("bad format: {0}")]
    BadFormat(String),
    /// A stream or stanza in the wrong namespace. Fatal; `invalid-namespace`.
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    /// An element that is not allowed at this point of the stream. Fatal; the contained
    /// condition is reported: `policy-violation` for a stanza before STARTTLS when TLS is
    /// required (RFC 6120 §5.3.1), `not-authorized` for a stanza during negotiation,
    /// `unsupported-stanza-type` for an unexpected element on the initiator.
    #[error("unexpected <{element}> {context}")]
    Unexpected {
        /// The element's qualified name.
        element: String,
        /// Where it arrived ("before STARTTLS", "during negotiation").
        context: &'static str,
        /// The condition reported to the peer.
        condition: Condition,
    },
    /// The peer's claimed identity is not acceptable (does not match its certificate, or is
    /// already connected from elsewhere). Fatal; `invalid-from` or `conflict`.
    #[error("identity refused: {detail}")]
    Identity {
        /// Why.
        detail: String,
        /// `InvalidFrom` or `Conflict`.
        condition: Condition,
    },
    /// TLS is required by our configuration and the peer did not negotiate it (it was not
    /// offered, or the peer answered `<failure/>`). Fatal; never falls back to plaintext.
    #[error("TLS required: {0}")]
    TlsRequired(String),
    /// The TLS handshake failed (wrong CA, expired certificate, missing client
    /// certificate, name mismatch...). Fatal.
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    /// A timer expired (open timer, hold timer, negotiation deadline). Fatal;
    /// `connection-timeout`.
    #[error("{0} expired")]
    Timeout(&'static str),
    /// The peer sent `<stream:error>`. Fatal.
    #[error("peer sent stream error: {0}")]
    Peer(StreamError),
    /// The peer closed the stream or the TCP connection. Fatal (normal end).
    #[error("connection closed by peer")]
    Closed,
    /// We are shutting down. Fatal; `system-shutdown`.
    #[error("shutting down")]
    Shutdown,
    /// A socket error. Fatal.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The stream error condition to send to the peer before closing, if any (none for
    /// transport failures, where nothing can be sent, and for errors the peer reported).
    pub fn stream_condition(&self) -> Option<Condition> {
        Some(match self {
            Error::NotWellFormed(_) => Condition::NotWellFormed,
            Error::RestrictedXml(_) => Condition::RestrictedXml,
            Error::PolicyViolation(_) => Condition::PolicyViolation,
            Error::BadFormat(_) => Condition::BadFormat,
            Error::InvalidNamespace(_) => Condition::InvalidNamespace,
            Error::Unexpected { condition, .. } | Error::Identity { condition, .. } => *condition,
            Error::Timeout(_) => Condition::ConnectionTimeout,
            Error::Shutdown => Condition::SystemShutdown,
            Error::TlsRequired(_)
            | Error::TlsHandshake(_)
            | Error::Peer(_)
            | Error::Closed
            | Error::Io(_) => return None,
        })
    }
}
