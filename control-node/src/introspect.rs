//! HTTP introspection: JSON for connections and routes, Prometheus text on `/metrics`.
//!
//! - `GET /connections` — one object per session: name, remote and local address, state,
//!   last event, flap count, auth type (`TLS`/`NIL`), routes received and sent.
//! - `GET /vrfs` — VRF names with subscriber and route counts.
//! - `GET /vrfs/{name}` — the routes of one VRF with every path's next-hops.
//! - `GET /metrics` — counters and gauges in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::server::{Shared, lock};

/// Serves until the node shuts down.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "introspect listening");
    }
    let shutdown = shared.shutdown.clone();
    let app = router(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "introspect server failed");
    }
}

/// The routes, for embedding in tests.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/connections", get(connections))
        .route("/vrfs", get(vrfs))
        .route("/vrfs/{name}", get(vrf_routes))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn index() -> &'static str {
    "control-node introspect: /connections /vrfs /vrfs/{name} /metrics\n"
}

#[derive(Serialize)]
struct Connection {
    name: String,
    remote_endpoint: String,
    local_endpoint: Option<String>,
    state: &'static str,
    last_event: &'static str,
    flap_count: u64,
    auth_type: &'static str,
    tls_version: Option<String>,
    dialect: String,
    established_secs: u64,
    routes_received: u64,
    routes_sent: u64,
    stanzas_received: u64,
    subscriptions: Vec<String>,
}

async fn connections(State(shared): State<Arc<Shared>>) -> Json<Vec<Connection>> {
    let history = lock(&shared.history).clone();
    let rib = lock(&shared.rib);
    let list = shared
        .sessions()
        .iter()
        .map(|h| Connection {
            name: h.name.clone(),
            remote_endpoint: h.remote.to_string(),
            local_endpoint: h.local.map(|a| a.to_string()),
            state: "Established",
            last_event: *lock(&h.stats.last_event),
            flap_count: history.get(&h.name).map_or(0, |p| p.flap_count),
            auth_type: if h.tls { "TLS" } else { "NIL" },
            tls_version: h.tls_version.clone(),
            dialect: h.dialect.to_string(),
            established_secs: SystemTime::now()
                .duration_since(h.stats.established_at)
                .map_or(0, |d| d.as_secs()),
            routes_received: h.stats.routes_received.load(Ordering::Relaxed),
            routes_sent: h.stats.routes_sent.load(Ordering::Relaxed),
            stanzas_received: h.stats.stanzas_received.load(Ordering::Relaxed),
            subscriptions: rib
                .subscriptions(h.id)
                .iter()
                .map(|v| v.to_string())
                .collect(),
        })
        .collect();
    Json(list)
}

#[derive(Serialize)]
struct VrfSummary {
    name: String,
    subscribers: usize,
    routes: usize,
}

async fn vrfs(State(shared): State<Arc<Shared>>) -> Json<Vec<VrfSummary>> {
    let rib = lock(&shared.rib);
    Json(
        rib.vrf_names()
            .into_iter()
            .map(|(name, subscribers)| VrfSummary {
                routes: rib.routes(&name).len(),
                name: name.to_string(),
                subscribers,
            })
            .collect(),
    )
}

#[derive(Serialize)]
struct RouteJson {
    prefix: String,
    family: String,
    paths: Vec<PathJson>,
}

#[derive(Serialize)]
struct PathJson {
    peer: String,
    next_hops: Vec<NextHopJson>,
    local_preference: u32,
    security_groups: Vec<u32>,
}

#[derive(Serialize)]
struct NextHopJson {
    address: String,
    label: u32,
    encapsulations: Vec<String>,
    virtual_network: String,
}

async fn vrf_routes(State(shared): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    let names: std::collections::HashMap<u64, String> = shared
        .sessions()
        .iter()
        .map(|h| (h.id, h.name.clone()))
        .collect();
    let routes = lock(&shared.rib).routes(&name);
    if routes.is_empty()
        && !lock(&shared.rib)
            .vrf_names()
            .iter()
            .any(|(n, _)| **n == *name)
    {
        return (StatusCode::NOT_FOUND, format!("no VRF named {name:?}\n")).into_response();
    }
    let out: Vec<RouteJson> = routes
        .into_iter()
        .map(|(key, paths)| RouteJson {
            prefix: key.prefix.to_string(),
            family: key.family.to_string(),
            paths: paths
                .into_iter()
                .map(|(sid, p)| PathJson {
                    peer: names.get(&sid).cloned().unwrap_or_else(|| sid.to_string()),
                    next_hops: p
                        .next_hops
                        .iter()
                        .map(|nh| NextHopJson {
                            address: nh.address.to_string(),
                            label: nh.label,
                            encapsulations: nh.encapsulations.clone(),
                            virtual_network: nh.virtual_network.clone(),
                        })
                        .collect(),
                    local_preference: p.local_preference,
                    security_groups: p.security_groups.clone(),
                })
                .collect(),
        })
        .collect();
    Json(out).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    let sessions = shared.sessions();
    let tls = sessions.iter().filter(|s| s.tls).count();
    let stats = lock(&shared.rib).stats();
    let mut body = String::with_capacity(2048);
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        "xmpp_connections_accepted_total",
        "TCP connections accepted.",
        c(&m.accepted),
    );
    counter(
        "xmpp_connections_refused_limit_total",
        "Connections closed at accept by xmpp_max_connections.",
        c(&m.refused_limit),
    );
    counter(
        "xmpp_negotiation_failures_total",
        "Sessions that failed stream negotiation or TLS.",
        c(&m.negotiation_failures),
    );
    counter(
        "xmpp_identity_refusals_total",
        "Sessions refused for their name (certificate mismatch, duplicate).",
        c(&m.identity_refusals),
    );
    counter(
        "xmpp_sessions_established_total",
        "Sessions established.",
        c(&m.established),
    );
    counter(
        "xmpp_sessions_violations_total",
        "Sessions closed for protocol or membership violations.",
        c(&m.violations),
    );
    counter(
        "xmpp_slow_consumers_total",
        "Sessions closed because their send queue was full.",
        c(&m.slow_consumers),
    );
    counter(
        "routes_received_total",
        "Route items accepted from agents.",
        c(&m.routes_received),
    );
    counter(
        "routes_sent_total",
        "Route items and retracts sent to agents.",
        c(&m.routes_sent),
    );
    counter(
        "route_items_rejected_total",
        "Route items dropped as invalid.",
        c(&m.items_rejected),
    );
    let mut gauge = |name: &str, help: &str, v: usize| {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}"
        );
    };
    gauge("xmpp_sessions", "Established sessions.", sessions.len());
    gauge(
        "xmpp_sessions_tls",
        "Established sessions running TLS.",
        tls,
    );
    gauge("rib_vrfs", "VRFs with subscribers or routes.", stats.vrfs);
    gauge("rib_routes", "Routes (VRF, family, prefix).", stats.routes);
    gauge("rib_paths", "Paths over all routes.", stats.paths);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
