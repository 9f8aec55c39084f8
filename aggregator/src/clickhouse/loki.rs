//! The Loki API's read endpoints over the ClickHouse store, as Grafana's
//! Explore and label browser use them: `query_range` for log queries,
//! `labels`, `label/<name>/values`, `series`, `index/stats`,
//! `status/buildinfo` and `/ready`, and
//! metric queries (`query_range`, `query`) evaluated over lines read from
//! ClickHouse. The parameters, envelopes and errors are the embedded
//! store's ([`crate::loki`]).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{sql, ClickHouse};
use crate::logql::Expr;
use crate::loki::params::{self, Params};
use crate::loki::{
    error, instant_request, instant_response, label_range, matrix_response, now_ns, parse_expr,
    query_error, selectors, streams_response, success, ApiError,
};

fn unavailable(e: super::ClickHouseError) -> ApiError {
    if e.is_unavailable() {
        error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    } else {
        error(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// The store once connected (the aggregator connects in the background).
pub type Store = std::sync::Arc<tokio::sync::OnceCell<ClickHouse>>;

fn connected(s: &Store) -> Result<ClickHouse, ApiError> {
    s.get().cloned().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ClickHouse store: connecting",
        )
    })
}

/// The read routes; the caller adds authentication.
pub fn router(ch: Store) -> axum::Router {
    axum::Router::new()
        .route(
            "/loki/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/loki/api/v1/query", get(instant).post(instant))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route("/loki/api/v1/label/{name}/values", get(label_values))
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route(
            "/loki/api/v1/status/buildinfo",
            get(|| async { axum::Json(json!({"version": "3.0.0"})) }),
        )
        .with_state(ch)
}

async fn query_range(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let r = params::range_request(&p, now_ns())?;
    let q = match parse_expr(&r.query)? {
        Expr::Log(q) => q,
        Expr::Metric(m) => {
            let steps = r.steps();
            let v = ch.metric(m, steps).await.map_err(query_error)?;
            return Ok(matrix_response(v, steps, started));
        }
    };
    let w = sql::Window {
        from: Some(r.start),
        to: Some(r.end),
        limit: r.limit as u64,
        backward: r.direction == logfleet_proto::v1::Direction::Backward,
    };
    let entries = if q.pipeline.is_empty() {
        ch.query(&q, w).await
    } else {
        ch.query_piped(&q, w).await
    }
    .map_err(unavailable)?;
    let lines: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                crate::query::entry_labels(e),
                e.ts_unix_nano,
                crate::query::entry_text(e),
            )
        })
        .collect();
    Ok(streams_response(lines, started))
}

async fn instant(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let ch = connected(&store)?;
    let (t, m) = instant_request(&Params::new(raw.as_deref(), &body))?;
    let v = ch
        .metric(m, crate::logql::eval::Steps::instant(t))
        .await
        .map_err(query_error)?;
    Ok(instant_response(v, t, started))
}

/// The selector of a label request (`query`), or everything.
fn selector(p: &Params) -> Result<crate::query::Query, ApiError> {
    Ok(selectors(p, "query")?
        .into_iter()
        .next()
        .unwrap_or_default())
}

async fn labels(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let (start, end) = label_range(&p)?;
    let q = selector(&p)?;
    let stmt =
        sql::label_names(ch.database(), &q, start, end).map_err(|e| unavailable(e.into()))?;
    let mut names = ch.strings(&stmt).await.map_err(unavailable)?;
    // The path labels, when any line is in the range.
    let any = sql::label_values(ch.database(), &q, "node", start, end)
        .map_err(|e| unavailable(e.into()))?;
    if !ch.strings(&any).await.map_err(unavailable)?.is_empty() {
        names.extend(crate::query::LABEL_NAMES.iter().map(|n| n.to_string()));
    }
    names.sort_unstable();
    names.dedup();
    Ok(success(json!(names)))
}

async fn label_values(
    State(store): State<Store>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let (start, end) = label_range(&p)?;
    let q = selector(&p)?;
    let stmt = sql::label_values(ch.database(), &q, &name, start, end)
        .map_err(|e| unavailable(e.into()))?;
    let values = ch.strings(&stmt).await.map_err(unavailable)?;
    Ok(success(json!(values)))
}

/// Loki's `series`: the label sets of the streams the `match[]` selectors
/// (label matchers only) pick in the range; all streams without one.
async fn series(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let mut sel = selectors(&p, "match[]")?;
    sel.extend(selectors(&p, "match")?);
    if sel
        .iter()
        .any(|q| !q.filters.is_empty() || !q.pipeline.is_empty())
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "only label matchers are supported",
        ));
    }
    if sel.is_empty() {
        sel.push(crate::query::Query::default());
    }
    let (start, end) = label_range(&p)?;
    let mut out = Vec::new();
    for q in &sel {
        for (node, labels) in ch.series(q, start, end).await.map_err(unavailable)? {
            out.push(crate::query::label_pairs(&node, &labels, 0));
        }
    }
    out.sort();
    out.dedup();
    Ok(success(json!(out
        .into_iter()
        .map(|l| {
            l.into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect::<serde_json::Map<_, _>>()
        })
        .collect::<Vec<_>>())))
}

/// Loki's `index/stats`: what a query would read. Lines and bytes of text
/// are exact (each line once); `chunks` counts stream-days, ClickHouse's
/// nearest to chunks.
async fn index_stats(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let r = params::range_request(&p, now_ns())?;
    let q = crate::query::parse(&r.query).map_err(query_error)?;
    if !q.selects_something() {
        return Err(error(StatusCode::BAD_REQUEST, crate::loki::EMPTY_SELECTOR));
    }
    let [entries, bytes, streams, chunks] = ch
        .index_stats(&q, r.start, r.end)
        .await
        .map_err(unavailable)?;
    Ok(axum::Json(json!({
        "streams": streams,
        "chunks": chunks,
        "entries": entries,
        "bytes": bytes,
    }))
    .into_response())
}
