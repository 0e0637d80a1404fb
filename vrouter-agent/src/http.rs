//! HTTP: introspection (`http_server_port`) and the port API (`port_ipc_port`).
//!
//! Introspect: `GET /channels` (per channel: state, peer, last event, flap count, TLS/NIL,
//! rx/tx counts), `GET /ports`, `GET /routes` (learned routes per VRF), `GET /metrics`.
//! Port API: `POST /port` (a port JSON, see [`crate::ports`]), `DELETE /port/{id}`,
//! `GET /ports`. Bad input gets 400 with the reason and changes nothing.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::agent::{Agent, PortApiError, counter};
use crate::ports::{MAX_PORT_JSON, Port};

/// Serves `router` until shutdown.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener, router: fn(Arc<Agent>) -> Router) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP listening");
    }
    let shutdown = agent.shutdown.clone();
    if let Err(e) = axum::serve(listener, router(agent))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "HTTP server failed");
    }
}

/// Introspection routes.
pub fn introspect_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                "vrouter-agent introspect: /channels /dns-channels /ports /routes /metrics\n"
            }),
        )
        .route("/channels", get(channels))
        .route("/dns-channels", get(dns_channels))
        .route("/ports", get(ports))
        .route("/routes", get(routes))
        .route("/metrics", get(metrics))
        .with_state(agent)
}

/// Port API routes.
pub fn port_api_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/port", post(add_port))
        .route("/port/{id}", delete(delete_port))
        .route("/ports", get(ports))
        .layer(DefaultBodyLimit::max(MAX_PORT_JSON))
        .with_state(agent)
}

async fn channels(State(a): State<Arc<Agent>>) -> Response {
    Json(a.channels()).into_response()
}

async fn dns_channels(State(a): State<Arc<Agent>>) -> Response {
    Json(a.dns_channels()).into_response()
}

#[derive(Serialize)]
struct PortView {
    #[serde(flatten)]
    port: Port,
    vrf: String,
    label: Option<u32>,
}

async fn ports(State(a): State<Arc<Agent>>) -> Response {
    let v: Vec<PortView> = a
        .ports()
        .into_iter()
        .map(|(p, label)| PortView {
            vrf: p.vrf(),
            port: p,
            label,
        })
        .collect();
    Json(v).into_response()
}

async fn routes(State(a): State<Arc<Agent>>) -> Response {
    Json(a.routes()).into_response()
}

async fn add_port(State(a): State<Arc<Agent>>, body: Bytes) -> Response {
    let port = match Port::from_json(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let id = port.id.clone();
    let agent = a.clone();
    // Persisting writes a file: keep it off the async workers.
    match tokio::task::spawn_blocking(move || agent.add_port(port)).await {
        Ok(Ok(())) => (StatusCode::OK, format!("port {id} added\n")).into_response(),
        Ok(Err(PortApiError::Invalid(e))) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn delete_port(State(a): State<Arc<Agent>>, Path(id): Path<String>) -> Response {
    let agent = a.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || agent.remove_port(&id2)).await {
        Ok(Ok(true)) => (StatusCode::OK, format!("port {id} removed\n")).into_response(),
        Ok(Ok(false)) => (StatusCode::NOT_FOUND, format!("no port {id:?}\n")).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(a): State<Arc<Agent>>) -> Response {
    let m = &a.metrics;
    let channels = a.channels();
    let mut body = String::with_capacity(2048);
    for (name, help, v) in [
        (
            "agent_route_messages_received_total",
            "Route messages received from control nodes.",
            counter(&m.route_messages_received),
        ),
        (
            "agent_route_messages_rejected_total",
            "Route messages dropped as malformed.",
            counter(&m.route_messages_rejected),
        ),
        (
            "agent_sessions_established_total",
            "Channel sessions established.",
            counter(&m.sessions_established),
        ),
        (
            "agent_connect_failures_total",
            "Connection or negotiation attempts that failed.",
            counter(&m.connect_failures),
        ),
    ] {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let _ = writeln!(
        body,
        "# HELP agent_channel_up 1 when the channel is Established.\n# TYPE agent_channel_up gauge"
    );
    for c in &channels {
        let _ = writeln!(
            body,
            "agent_channel_up{{slot=\"{}\",server=\"{}\",auth=\"{}\"}} {}",
            c.slot,
            c.controller_ip,
            c.xmpp_auth_type,
            u8::from(c.state == "Established")
        );
    }
    let _ = writeln!(
        body,
        "# HELP agent_dns_channel_up 1 when the DNS channel is Established.\n# TYPE agent_dns_channel_up gauge"
    );
    for c in a.dns_channels() {
        let _ = writeln!(
            body,
            "agent_dns_channel_up{{slot=\"{}\",server=\"{}\",auth=\"{}\"}} {}",
            c.slot,
            c.controller_ip,
            c.xmpp_auth_type,
            u8::from(c.state == "Established")
        );
    }
    let _ = writeln!(
        body,
        "# HELP agent_learned_routes Learned routes (VRF, prefix).\n# TYPE agent_learned_routes gauge\nagent_learned_routes {}",
        a.routes().values().map(Vec::len).sum::<usize>()
    );
    let _ = writeln!(
        body,
        "# HELP agent_local_ports Local ports.\n# TYPE agent_local_ports gauge\nagent_local_ports {}",
        a.ports().len()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
