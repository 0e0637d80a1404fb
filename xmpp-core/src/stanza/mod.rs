//! Typed stanzas: `iq` and `message`, stanza errors, the payloads of the RFC 6120 profile
//! (resource binding, XEP-0199 ping, XEP-0060 publish-subscribe), and the namespace
//! constants.

pub mod bind;
mod error;
mod iq;
mod message;
pub mod ns;
pub mod ping;
pub mod pubsub;

pub use error::{ErrorType, StanzaCondition, StanzaError};
pub use iq::{Iq, IqType};
pub use message::Message;
