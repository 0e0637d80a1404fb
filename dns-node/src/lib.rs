//! The DNS node: agents register their VMs' names over XMPP (spec §7) and the node serves
//! them as an authoritative DNS server (contrail-dns's XMPP side plus the part of
//! contrail-named that answers for the agents' records).
//!
//! `main.rs` parses flags and loads [`config::Config`]; [`spawn`] takes already bound
//! sockets and a shutdown token, so tests run the whole node on port 0. [`server`] accepts
//! XMPP connections and holds the shared state, [`session`] runs one agent, [`records`] is
//! the pure record store (per zone and virtual DNS, tagged by agent, with grace periods),
//! [`dns`] answers DNS queries from it over UDP and TCP, [`introspect`] serves JSON and
//! Prometheus metrics over HTTP.

pub mod config;
pub mod dns;
pub mod introspect;
pub mod records;
pub mod server;
pub mod session;

use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use server::{Settings, Shared};

/// Starts the node: the XMPP server on `xmpp`, DNS on `dns_udp` and `dns_tcp`,
/// introspection on `http` when given, and the task that withdraws records whose grace
/// period is over. Returns the shared state (for introspection and tests) and the task that
/// ends after `shutdown` is cancelled and sessions have drained.
pub fn spawn(
    settings: Settings,
    xmpp: TcpListener,
    dns_udp: UdpSocket,
    dns_tcp: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> (Arc<Shared>, tokio::task::JoinHandle<()>) {
    let shared = Shared::new(settings, shutdown);
    let introspect = http.map(|l| tokio::spawn(introspect::serve(shared.clone(), l)));
    let dns = tokio::spawn(dns::serve(shared.clone(), dns_udp, dns_tcp));
    let expiry = tokio::spawn(server::expire_records(shared.clone()));
    let s = shared.clone();
    let task = tokio::spawn(async move {
        server::serve(s, xmpp).await;
        let _ = dns.await;
        let _ = expiry.await;
        if let Some(h) = introspect {
            let _ = h.await;
        }
    });
    (shared, task)
}
