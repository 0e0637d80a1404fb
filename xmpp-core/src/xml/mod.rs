//! Restricted, bounded XML for XMPP streams: incremental framing ([`Reader`]), an owned
//! element tree ([`Element`]) and a push writer ([`XmlWriter`]) with the layouts of both
//! dialects.

mod element;
mod reader;
mod writer;

pub use element::{Element, Node, NsScope};
pub use reader::{Event, Limits, Reader, is_filler};
pub use writer::{Style, XmlWriter, escape_into};

#[cfg(test)]
mod tests;
