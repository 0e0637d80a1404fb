//! HTTP introspection: JSON for agents and zones, Prometheus text on `/metrics`.
//!
//! - `GET /agents` — one object per agent: connected ones (name, stream `from`, remote and
//!   local address, state `Established`, auth type `TLS`/`NIL`, record counts) and, with
//!   state `Idle`, disconnected ones whose records are still in their grace period
//!   (contrail-dns's `ShowAgentList`).
//! - `GET /zones` — served zones with their virtual DNS servers, agent and record counts.
//! - `GET /zones/{name}` — the records of one zone, each with its agent and, when stale,
//!   the time left before it is withdrawn (`ShowAgentXmppDnsData`).
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

use crate::records::{AgentCounts, ZoneSummary, normalize_name};
use crate::server::{Shared, lock, now};

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
        .route("/agents", get(agents))
        .route("/zones", get(zones))
        .route("/zones/{name}", get(zone_records))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn index() -> &'static str {
    "dns-node introspect: /agents /zones /zones/{name} /metrics\n"
}

#[derive(Serialize)]
struct Agent {
    name: String,
    jid: Option<String>,
    remote_endpoint: Option<String>,
    local_endpoint: Option<String>,
    state: &'static str,
    last_event: Option<&'static str>,
    flap_count: u64,
    last_close_reason: Option<String>,
    auth_type: Option<&'static str>,
    tls_version: Option<String>,
    dialect: Option<String>,
    established_secs: Option<u64>,
    stanzas_received: u64,
    updates_received: u64,
    entries_rejected: u64,
    records: AgentCounts,
}

async fn agents(State(shared): State<Arc<Shared>>) -> Json<Vec<Agent>> {
    let history = lock(&shared.history).clone();
    let sessions = shared.sessions();
    let (counts, idle): (Vec<_>, Vec<_>) = {
        let store = shared.records();
        let counts = sessions
            .iter()
            .map(|h| store.agent_counts(&h.name).unwrap_or_default())
            .collect();
        let idle = store
            .agents()
            .into_iter()
            .filter(|(_, connected)| !connected)
            .map(|(name, _)| {
                let c = store.agent_counts(&name).unwrap_or_default();
                (name, c)
            })
            .collect();
        (counts, idle)
    };
    let mut list: Vec<Agent> = sessions
        .iter()
        .zip(counts)
        .map(|(h, records)| {
            let past = history.get(&h.name);
            Agent {
                name: h.name.clone(),
                jid: Some(h.jid.clone()),
                remote_endpoint: Some(h.remote.to_string()),
                local_endpoint: h.local.map(|a| a.to_string()),
                state: "Established",
                last_event: Some(*lock(&h.stats.last_event)),
                flap_count: past.map_or(0, |p| p.flap_count),
                last_close_reason: past.and_then(|p| p.last_close_reason.clone()),
                auth_type: Some(if h.tls { "TLS" } else { "NIL" }),
                tls_version: h.tls_version.clone(),
                dialect: Some(h.dialect.to_string()),
                established_secs: Some(
                    SystemTime::now()
                        .duration_since(h.stats.established_at)
                        .map_or(0, |d| d.as_secs()),
                ),
                stanzas_received: h.stats.stanzas_received.load(Ordering::Relaxed),
                updates_received: h.stats.updates.load(Ordering::Relaxed),
                entries_rejected: h.stats.entries_rejected.load(Ordering::Relaxed),
                records,
            }
        })
        .collect();
    list.extend(idle.into_iter().map(|(name, records)| {
        let past = history.get(&*name);
        Agent {
            name: name.to_string(),
            jid: None,
            remote_endpoint: None,
            local_endpoint: None,
            state: "Idle",
            last_event: None,
            flap_count: past.map_or(0, |p| p.flap_count),
            last_close_reason: past.and_then(|p| p.last_close_reason.clone()),
            auth_type: None,
            tls_version: None,
            dialect: None,
            established_secs: None,
            stanzas_received: 0,
            updates_received: 0,
            entries_rejected: 0,
            records,
        }
    }));
    Json(list)
}

async fn zones(State(shared): State<Arc<Shared>>) -> Json<Vec<ZoneSummary>> {
    Json(shared.records().zones())
}

async fn zone_records(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let records = normalize_name(&name)
        .ok()
        .and_then(|zone| shared.records().zone_records(&zone, now()));
    match records {
        Some(r) => Json(r).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no zone named {name:?}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    let sessions = shared.sessions();
    let tls = sessions.iter().filter(|s| s.tls).count();
    let (zones, records) = shared.records().totals();
    let mut body = String::with_capacity(4096);
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
        "xmpp_sessions_malformed_total",
        "Sessions closed because of a malformed DNS IQ.",
        c(&m.malformed),
    );
    counter("dns_updates_total", "DNS updates applied.", c(&m.updates));
    counter(
        "dns_updates_ignored_total",
        "DNS updates ignored (empty virtual-dns or zone).",
        c(&m.updates_ignored),
    );
    counter(
        "dns_records_added_total",
        "Records added by agents.",
        c(&m.records_added),
    );
    counter(
        "dns_records_deleted_total",
        "Records deleted by agents.",
        c(&m.records_deleted),
    );
    counter(
        "dns_entries_rejected_total",
        "Update entries refused.",
        c(&m.entries_rejected),
    );
    counter(
        "dns_records_withdrawn_total",
        "Records withdrawn after their agent's grace period.",
        c(&m.records_withdrawn),
    );
    counter(
        "dns_queries_udp_total",
        "DNS queries over UDP.",
        c(&m.dns_udp),
    );
    counter(
        "dns_queries_tcp_total",
        "DNS queries over TCP.",
        c(&m.dns_tcp),
    );
    counter(
        "dns_responses_answer_total",
        "NOERROR responses with records.",
        c(&m.dns_answered),
    );
    counter(
        "dns_responses_nodata_total",
        "NOERROR responses without records.",
        c(&m.dns_nodata),
    );
    counter(
        "dns_responses_nxdomain_total",
        "NXDOMAIN responses.",
        c(&m.dns_nxdomain),
    );
    counter(
        "dns_responses_refused_total",
        "REFUSED responses.",
        c(&m.dns_refused),
    );
    counter(
        "dns_responses_error_total",
        "FORMERR, NOTIMP and BADVERS responses.",
        c(&m.dns_errors),
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
    gauge("dns_zones", "Served zones.", zones);
    gauge(
        "dns_records",
        "Records held (including those in a grace period).",
        records,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
