//! Typed stanzas: `iq` and `message`, and the namespace constants.

mod iq;
mod message;
pub mod ns;

pub use iq::{Iq, IqType};
pub use message::Message;
