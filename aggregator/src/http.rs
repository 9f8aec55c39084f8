//! The aggregator's HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and
//! `/ready` (open, for kubelet probes, Prometheus and Loki clients), and,
//! behind the read token like gRPC queries, `/api/v1/agents` (JSON, for the
//! controller's coverage check) and Loki's read API ([`crate::loki`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use prometheus_client::registry::Registry;
use serde::Serialize;

use logfleet_store::backend::{Backend, Health};
use logfleet_store::query::QueryError;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The store.
    pub backend: Arc<dyn Backend>,
    /// Registry to render.
    pub registry: Arc<Registry>,
    /// The token check shared with gRPC.
    pub auth: crate::service::Auth,
    /// The Loki API's state.
    pub loki: crate::loki::LokiState,
    /// The token check for pushes (Loki's push endpoint), shared with gRPC.
    pub push_auth: crate::service::Auth,
}

/// Builds the router.
pub fn router(state: HttpState) -> axum::Router {
    let api = axum::Router::new()
        .route("/api/v1/agents", get(agents))
        .merge(crate::loki::router(state.loki.clone()))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), bearer));
    let push = crate::loki::push_router(state.loki.clone()).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), push_bearer),
    );
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/ready", get(readyz))
        .merge(crate::web::router())
        .merge(api)
        .merge(push)
        .with_state(state)
}

/// Lets the request through when it carries the token `auth` wants;
/// else 401, as gRPC answers UNAUTHENTICATED.
async fn check(
    auth: &crate::service::Auth,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if auth.admits(header) {
        return next.run(req).await;
    }
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token\n",
    )
        .into_response()
}

/// Reading (the agents listing, Loki's read API): the read token.
async fn bearer(
    State(s): State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    check(&s.auth, req, next).await
}

/// Loki's push endpoint: the push token, as gRPC ingest.
async fn push_bearer(
    State(s): State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    check(&s.push_auth, req, next).await
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &s.registry);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// One agent in the JSON listing.
#[derive(Debug, Serialize)]
pub struct AgentJson {
    /// Node name.
    pub node: String,
    /// First push, RFC 3339.
    pub first_push: String,
    /// Last push, RFC 3339.
    pub last_push: String,
    /// Lines stored.
    pub lines: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Latest contact of any kind (push or heartbeat), RFC 3339; empty when
    /// none since the aggregator started.
    pub last_seen: String,
    /// Agent version from its latest heartbeat.
    pub version: String,
    /// Files it has open.
    pub files: u64,
    /// Bytes it has not had acknowledged yet.
    pub bytes_behind: u64,
    /// Its latest error, empty when none.
    pub last_error: String,
    /// Lines it kept in its dead-letter file.
    pub dead_letter_lines: u64,
}

/// Formats ns since the epoch as RFC 3339 with nine fractional digits, UTC.
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl From<logfleet_proto::v1::AgentInfo> for AgentJson {
    fn from(a: logfleet_proto::v1::AgentInfo) -> Self {
        AgentJson {
            node: a.node,
            first_push: rfc3339(a.first_push_unix_nano),
            last_push: rfc3339(a.last_push_unix_nano),
            lines: a.lines,
            bytes: a.bytes,
            last_seen: if a.last_seen_unix_nano == 0 {
                String::new()
            } else {
                rfc3339(a.last_seen_unix_nano)
            },
            version: a.version,
            files: a.files,
            bytes_behind: a.bytes_behind,
            last_error: a.last_error,
            dead_letter_lines: a.dead_letter_lines,
        }
    }
}

/// Ready while queries can be served; a full disk is said, with 200, so
/// that queries (Grafana) still reach the aggregator; a store that cannot
/// serve is 503, with why.
async fn readyz(State(st): State<HttpState>) -> (StatusCode, String) {
    match st.backend.health() {
        Health::Ready => (StatusCode::OK, "ready\n".into()),
        Health::Degraded(why) => (StatusCode::OK, format!("ready, degraded: {why}\n")),
        Health::Unavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// The agents listing the controller and `logfleet status` read. A store
/// that cannot answer is said in machine-readable form: the controller
/// turns it into its status.
async fn agents(State(s): State<HttpState>) -> axum::response::Response {
    match s.backend.agents().await {
        Ok(a) => Json(a.into_iter().map(AgentJson::from).collect::<Vec<_>>()).into_response(),
        Err(QueryError::Unavailable(message)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "reason": logfleet_proto::STORE_UNAVAILABLE,
                "message": message,
            })),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
