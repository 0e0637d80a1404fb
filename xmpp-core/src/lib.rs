//! Shared XMPP library for the Contrail-compatible control plane.
//!
//! A stream's life, and the module that owns each step:
//!
//! 1. [`config`] loads the Contrail INI keys (`xmpp_auth_enable`, `xmpp_server_cert`, ...).
//! 2. [`tls`] turns the certificate paths into rustls server/client configurations.
//! 3. [`xml`] frames the raw TCP byte stream into a stream header, top-level elements,
//!    keepalives and the stream close (restricted XML, bounded, Contrail quirks tolerated),
//!    and writes elements in the exact byte layout each dialect expects.
//! 4. [`stream`] and [`stanza`] give those elements types: header, features, STARTTLS,
//!    stream errors, `iq`, `message`.
//! 5. [`negotiate`] runs the header exchange and STARTTLS as explicit states, for the
//!    initiator and the responder, in both dialects, without I/O.
//! 6. [`io`] glues the above to tokio: TCP, the TLS upgrade, batched writes, hold and
//!    keepalive timers.
//! 7. [`contrail`] holds the Contrail message payloads (route items, DNS updates).
//!
//! The RFC 6120 profile (standard XMPP peers) adds [`sasl`] (EXTERNAL with certificates,
//! PLAIN), [`jid`], and in [`stanza`] resource binding, ping and XEP-0060 pubsub; the
//! negotiators run SASL and binding as further states, and [`io::IqTracker`] /
//! [`io::Client`] match IQ responses to requests with timeouts.

pub mod config;
pub mod contrail;
pub mod error;
pub mod io;
pub mod jid;
pub mod negotiate;
pub mod sasl;
pub mod stanza;
pub mod stream;
pub mod systemd;
pub mod tls;
pub mod xml;

pub use error::Error;
