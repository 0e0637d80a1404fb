//! Stream-level elements: the header, features, the STARTTLS nonzas and stream errors.

mod error;
mod features;
mod header;

pub use error::{Condition, StreamError};
pub use features::{Features, TlsNonza};
pub use header::{CONTRAIL_STREAM_ID, Dialect, STREAM_CLOSE, StreamHeader};
