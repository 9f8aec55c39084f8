//! The agent's HTTP endpoint: `/metrics` (Prometheus text), `/healthz`
//! (the reader loop is alive) and `/readyz` (the log root is readable; an
//! aggregator that does not take pushes is said in the body, not as
//! unreadiness).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State as Extract;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::AgentMetrics;
use crate::report::Report;

/// What the handlers read.
#[derive(Clone)]
pub struct State {
    /// Metrics to render.
    pub metrics: Arc<Mutex<AgentMetrics>>,
    /// Readiness and errors.
    pub report: Arc<Report>,
    /// Unix time of the reader loop's last turn.
    pub heartbeat: Arc<AtomicI64>,
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: State) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http endpoint failed");
    }
}

async fn metrics(Extract(s): Extract<State>) -> impl IntoResponse {
    let body = s.metrics.lock().map(|m| m.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn healthz(Extract(s): Extract<State>) -> impl IntoResponse {
    // The reader turns at least every poll interval; a minute without a turn
    // means it is stuck (handing over a batch blocks it, but only while the
    // shipper retries, which /readyz reports).
    let age = chrono::Utc::now().timestamp() - s.heartbeat.load(Ordering::Relaxed);
    if age < 60 || !s.report.pushes_ok() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "reader loop stalled\n")
    }
}

async fn readyz(Extract(s): Extract<State>) -> impl IntoResponse {
    match (s.report.ready(), s.report.aggregator()) {
        (Ok(()), None) => (StatusCode::OK, "ready\n".to_string()),
        // Ready: the lines wait in their files, and the aggregator's outage
        // is said, not blamed on this node.
        (Ok(()), Some(why)) => (
            StatusCode::OK,
            format!("ready; the aggregator does not take pushes now: {why}\n"),
        ),
        (Err(why), _) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
