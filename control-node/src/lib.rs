//! The control node: the XMPP route reflector vrouter agents connect to.
//!
//! `main.rs` parses flags and loads [`config::Config`]; [`run`] takes already bound
//! listeners and a shutdown token, so tests run the whole node on port 0. [`server`] accepts
//! connections and holds the shared state, [`session`] runs one agent, [`rib`] is the pure
//! route table with fan-out, [`introspect`] serves JSON and Prometheus metrics over HTTP.
//! Standard XMPP clients (RFC 6120 profile, SASL EXTERNAL) reach the same table through
//! XEP-0060 publish-subscribe, served by the `rfc` module.

pub mod config;
pub mod introspect;
mod rfc;
pub mod rib;
pub mod server;
pub mod session;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use server::{Settings, Shared};

/// Starts the node: the XMPP server on `xmpp`, introspection on `http` when given. Returns
/// the shared state (for introspection and tests) and the task that ends after `shutdown`
/// is cancelled and sessions have drained.
pub fn spawn(
    settings: Settings,
    xmpp: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> (Arc<Shared>, tokio::task::JoinHandle<()>) {
    let shared = Shared::new(settings, shutdown);
    let introspect = http.map(|l| tokio::spawn(introspect::serve(shared.clone(), l)));
    let s = shared.clone();
    let task = tokio::spawn(async move {
        server::serve(s, xmpp).await;
        if let Some(h) = introspect {
            let _ = h.await;
        }
    });
    (shared, task)
}
