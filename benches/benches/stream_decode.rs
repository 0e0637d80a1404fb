//! Placeholder; the decode benchmark lands with the stream reader.
fn main() {}
