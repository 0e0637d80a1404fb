//! The vrouter agent's XMPP side: channels to control nodes, local ports, learned routes.
//!
//! `main.rs` parses flags and loads [`config::Config`]; [`agent::spawn`] takes already
//! bound listeners and a shutdown token, so tests run whole agents on port 0.
//! [`channel`] is one control-node connection (an actor with reconnect and backoff),
//! [`ports`] the local VM interfaces and the routes they ask for, [`fib`] the learned routes
//! with their grace period, [`http`] introspection and the port API.

pub mod agent;
pub mod channel;
pub mod config;
pub mod dns_channel;
pub mod fib;
pub mod http;
pub mod ports;

pub use agent::{Agent, Settings, spawn};
