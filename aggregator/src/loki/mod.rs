//! Loki's HTTP read API on the aggregator's HTTP port, so that Grafana's
//! Loki data source, logcli and other Loki clients read logfleet's store:
//! `query_range`, `query`, `labels`, `label/<name>/values`, `series` and
//! `status/buildinfo` under `/loki/api/v1`. Parameters, result envelopes,
//! error texts and status codes follow Loki's HTTP API documentation;
//! [`params`] holds that pure part, this module the handlers.
//!
//! Single tenant: `X-Scope-OrgID` is accepted and ignored. The read token
//! guards these routes like the gRPC queries (see [`crate::http`]).

pub mod params;
pub mod push;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{json, Value as Json};

use logfleet_logql::{self as logql, eval::Steps, Expr};
use logfleet_store::backend::Backend;
use logfleet_store::labels::{entry_labels, entry_text};
use logfleet_store::query::{self, Bounds, Control, QueryError};
use params::{ParamError, Params, RangeRequest};

/// The Loki release whose HTTP API this follows; reported by `buildinfo`,
/// where Grafana reads which features it may use.
pub const LOKI_API_VERSION: &str = "3.0.0";

/// What the handlers need.
#[derive(Clone)]
pub struct LokiState {
    /// The store.
    pub backend: Arc<dyn Backend>,
    /// A query stops after this long.
    pub timeout: Duration,
    /// Queries that may run at once (`--max-concurrent-requests`, as for
    /// gRPC); more wait for a turn. Each holds files and a blocking thread.
    pub queries: Arc<tokio::sync::Semaphore>,
    /// The aggregator's metrics.
    pub metrics: logfleet_store::metrics::Metrics,
    /// Turns true when the aggregator stops: live tails end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The push route, for merging behind the push-token check.
pub fn push_router<S: Clone + Send + Sync + 'static>(state: LokiState) -> axum::Router<S> {
    axum::Router::new()
        .route("/loki/api/v1/push", axum::routing::post(push_handler))
        .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
        .with_state(state)
}

/// A Loki push body as sent (gzip or not, JSON or snappy protobuf),
/// decoded into its streams.
fn push_body(
    headers: &axum::http::HeaderMap,
    body: &Bytes,
) -> Result<Vec<push::Incoming>, ApiError> {
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let body = match header(header::CONTENT_ENCODING).as_str() {
        "" | "identity" => body.to_vec(),
        "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(push::MAX_DECODED as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
            if out.len() > push::MAX_DECODED {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the push decompresses to more than {} bytes",
                        push::MAX_DECODED
                    ),
                ));
            }
            out
        }
        other => {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {other:?}: gzip or none"),
            ))
        }
    };
    push::decode(&header(header::CONTENT_TYPE), &body).map_err(refused)
}

/// A refused push as the API's error.
fn refused(r: push::Refused) -> ApiError {
    error(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
        r.msg,
    )
}

async fn push_handler(
    State(st): State<LokiState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let incoming = push_body(&headers, &body)?;
    push::count_metadata(&incoming, &st.metrics);
    st.backend.push_loki(incoming).await.map_err(refused)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes, for merging into the aggregator's HTTP router (behind its
/// read-token check).
pub fn router<S: Clone + Send + Sync + 'static>(state: LokiState) -> axum::Router<S> {
    axum::Router::new()
        .route(
            "/loki/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/loki/api/v1/query", get(instant).post(instant))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route(
            "/loki/api/v1/label/{name}/values",
            get(label_values).post(label_values),
        )
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route("/loki/api/v1/tail", get(tail))
        .with_state(state)
}

fn now_ns() -> i64 {
    chrono::Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or(i64::MAX / 2)
}

/// A request the API cannot serve: Loki answers with a status and a
/// plain-text reason.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.msg),
        )
            .into_response()
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError {
        status,
        msg: msg.into(),
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        error(StatusCode::BAD_REQUEST, e.0)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        query_error(e)
    }
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Parse { pos, msg } => error(
            StatusCode::BAD_REQUEST,
            format!("parse error at line 1, col {}: {msg}", pos + 1),
        ),
        QueryError::Eval(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        QueryError::Timeout(_) => error(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        // 499: client closed request, as Loki reports a cancelled query.
        QueryError::Cancelled => error(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            e.to_string(),
        ),
        QueryError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        QueryError::Unsupported(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        QueryError::Failed(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        QueryError::Lagged(_) => error(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
    }
}

/// Loki's text when a selector could select every stream.
pub const EMPTY_SELECTOR: &str = "parse error : queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will";

fn success(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn parse_expr(text: &str) -> Result<Expr, ApiError> {
    let e = logql::parse(text).map_err(QueryError::from)?;
    let selectors: Vec<&query::Query> = match &e {
        Expr::Log(q) => vec![q],
        Expr::Metric(m) => m.ranges().into_iter().map(|r| &r.query).collect(),
    };
    if selectors.iter().any(|q| !q.selects_something()) {
        return Err(error(StatusCode::BAD_REQUEST, EMPTY_SELECTOR));
    }
    Ok(e)
}

/// Runs a store call with a turn among `--max-concurrent-requests` and
/// the query deadline.
async fn with_turn<T, F>(
    st: &LokiState,
    f: impl FnOnce(Arc<dyn Backend>, Arc<Control>) -> F,
) -> Result<T, ApiError>
where
    F: std::future::Future<Output = Result<T, QueryError>>,
{
    let ctl = Arc::new(Control {
        cancelled: Default::default(),
        deadline: Some((std::time::Instant::now() + st.timeout, st.timeout)),
    });
    let _turn = st
        .queries
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    // The store checks the deadline as it reads; this one also ends a
    // store that waits (an external one).
    let limit = st.timeout + Duration::from_millis(500);
    match tokio::time::timeout(limit, f(st.backend.clone(), ctl.clone())).await {
        Ok(r) => r.map_err(query_error),
        Err(_) => {
            ctl.cancelled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            st.metrics.query_timeouts.inc();
            Err(query_error(QueryError::Timeout(st.timeout)))
        }
    }
}

fn stats(started: std::time::Instant, entries: usize) -> Json {
    json!({"summary": {
        "execTime": started.elapsed().as_secs_f64(),
        "totalEntriesReturned": entries,
    }})
}

/// The lines of a log query in the order asked for, with their labels
/// after `| drop` and `| keep`.
async fn log_lines(
    backend: Arc<dyn Backend>,
    q: query::Query,
    r: RangeRequest,
    ctl: Arc<Control>,
) -> Result<Vec<(logql::eval::Labels, i64, String)>, QueryError> {
    use tokio_stream::StreamExt;
    let bounds = Bounds {
        from: Some(r.start),
        to: Some(r.end),
        limit: r.limit,
        direction: r.direction,
    };
    let mut entries = backend.query(q, bounds, ctl)?;
    let mut out = Vec::new();
    while let Some(batch) = entries.next().await {
        out.extend(
            batch?
                .iter()
                .map(|e| (entry_labels(e), e.ts_unix_nano, entry_text(e))),
        );
    }
    Ok(out)
}

async fn query_range(
    State(st): State<LokiState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let p = Params::new(raw.as_deref(), &body);
    let r = params::range_request(&p, now_ns())?;
    Ok(match parse_expr(&r.query)? {
        Expr::Log(q) => {
            let req = r.clone();
            let lines = with_turn(&st, |b, ctl| log_lines(b, q, req, ctl)).await?;
            streams_response(lines, started)
        }
        Expr::Metric(m) => {
            let steps = r.steps();
            let v = with_turn(&st, |b, ctl| async move { b.metric(m, steps, ctl).await }).await?;
            matrix_response(v, steps, started)
        }
    })
}

async fn instant(
    State(st): State<LokiState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let (t, m) = instant_request(&Params::new(raw.as_deref(), &body))?;
    let steps = Steps::instant(t);
    let v = with_turn(&st, |b, ctl| async move { b.metric(m, steps, ctl).await }).await?;
    Ok(instant_response(v, t, started))
}

/// An instant query's time (default now) and metric expression; a log
/// query is refused with Loki's text.
fn instant_request(p: &Params) -> Result<(i64, logql::Metric), ApiError> {
    let t = p
        .get("time")
        .map(params::parse_time)
        .transpose()?
        .unwrap_or_else(now_ns);
    let Expr::Metric(m) = parse_expr(p.get("query").unwrap_or(""))? else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "log queries are not supported as an instant query type, please change your query to a range query type",
        ));
    };
    Ok((t, m))
}

/// An instant query's answer.
fn instant_response(v: logql::eval::Value, t: i64, started: std::time::Instant) -> Response {
    let (kind, result) = params::instant_json(v, t);
    success(json!({"resultType": kind, "result": result, "stats": stats(started, 0)}))
}

/// A range query's metric answer.
fn matrix_response(v: logql::eval::Value, steps: Steps, started: std::time::Instant) -> Response {
    success(json!({
        "resultType": "matrix",
        "result": params::matrix_json(v, steps),
        "stats": stats(started, 0),
    }))
}

/// A log query's answer: lines grouped into streams.
fn streams_response(
    lines: Vec<(logql::eval::Labels, i64, String)>,
    started: std::time::Instant,
) -> Response {
    let n = lines.len();
    success(json!({
        "resultType": "streams",
        "result": params::streams_json(lines),
        "stats": stats(started, n),
    }))
}

/// The range of the label and series endpoints: `start`/`end`/`since`,
/// by default the last six hours, as Loki's.
fn label_range(p: &Params) -> Result<(i64, i64), ApiError> {
    let mut r = params::range_request(p, now_ns())?;
    if p.get("start").is_none() && p.get("since").is_none() {
        r.start = r.end - 6 * params::DEFAULT_RANGE_NS;
    }
    Ok((r.start, r.end))
}

fn selectors(p: &Params, key: &str) -> Result<Vec<query::Query>, ApiError> {
    Ok(p.all(key)
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(query::parse)
        .collect::<Result<_, _>>()?)
}

/// The selector of a label request (`query`), if any.
fn selector(p: &Params) -> Result<Option<query::Query>, ApiError> {
    Ok(selectors(p, "query")?.into_iter().next())
}

async fn labels(
    State(st): State<LokiState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(raw.as_deref(), &body);
    let sel = selector(&p)?;
    let (start, end) = label_range(&p)?;
    let names = with_turn(
        &st,
        |b, _| async move { b.label_names(sel, start, end).await },
    )
    .await?;
    Ok(success(json!(names)))
}

async fn label_values(
    State(st): State<LokiState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(raw.as_deref(), &body);
    let sel = selector(&p)?;
    let (start, end) = label_range(&p)?;
    let values = with_turn(&st, |b, _| async move {
        b.label_values(name, sel, start, end).await
    })
    .await?;
    Ok(success(json!(values)))
}

/// The selectors of a `series` request (`match[]`, or `match`): label
/// matchers only, as Loki takes them.
fn series_selectors(p: &Params) -> Result<Vec<query::Query>, ApiError> {
    let mut sel = selectors(p, "match[]")?;
    sel.extend(selectors(p, "match")?);
    if sel
        .iter()
        .any(|q| !q.filters.is_empty() || !q.pipeline.is_empty())
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "only label matchers are supported",
        ));
    }
    Ok(sel)
}

async fn series(
    State(st): State<LokiState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(raw.as_deref(), &body);
    let sel = series_selectors(&p)?;
    let (start, end) = label_range(&p)?;
    let streams = with_turn(&st, |b, _| async move { b.streams(sel, start, end).await }).await?;
    Ok(success(Json::Array(
        streams
            .into_iter()
            .map(|l| Json::Object(l.into_iter().map(|(k, v)| (k, Json::String(v))).collect()))
            .collect(),
    )))
}

/// Loki's live tail: a WebSocket that first gets up to `limit` lines
/// since `start` (default: an hour ago), oldest first, then every newly
/// stored line that matches, one JSON message per stored batch.
async fn tail(
    State(st): State<LokiState>,
    ws: axum::extract::ws::WebSocketUpgrade,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::new(raw.as_deref(), b"");
    let mut r = params::range_request(&p, now_ns())?;
    if p.get("start").is_none() && p.get("since").is_none() {
        r.start = r.end - params::DEFAULT_RANGE_NS;
    }
    let Expr::Log(q) = parse_expr(&r.query)? else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "only log queries can be tailed",
        ));
    };
    Ok(ws.on_upgrade(move |socket| tail_socket(st, q, r, socket)))
}

fn tail_message(lines: Vec<(logql::eval::Labels, i64, String)>) -> String {
    json!({"streams": params::streams_json(lines), "dropped_entries": null}).to_string()
}

async fn tail_socket(
    st: LokiState,
    q: query::Query,
    r: RangeRequest,
    mut socket: axum::extract::ws::WebSocket,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use tokio_stream::StreamExt;
    let close = |code: u16, reason: String| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    // Follow before reading the history: a batch stored in between is in
    // both, and the history's keys tell which of its lines to skip.
    let mut live = match st.backend.tail(q.clone()) {
        Ok(l) => l,
        Err(e) => {
            let _ = socket.send(close(1011, e.to_string())).await;
            return;
        }
    };
    let mut down = st.stopping.clone();
    // Counted while open, however it ends.
    let _open = crate::service::OpenTail::new(st.metrics.tails.clone());
    let history = RangeRequest {
        end: i64::MAX,
        direction: logfleet_proto::v1::Direction::Backward,
        ..r
    };
    let hq = q.clone();
    let mut seen = std::collections::HashSet::new();
    match with_turn(&st, |b, ctl| log_lines(b, hq, history, ctl)).await {
        Ok(mut lines) => {
            lines.reverse();
            // Keyed by labels too: the same text at the same instant in
            // another stream is another line.
            for (labels, ts, line) in &lines {
                seen.insert((labels.clone(), *ts, line.clone()));
            }
            if socket
                .send(Message::Text(tail_message(lines).into()))
                .await
                .is_err()
            {
                return;
            }
        }
        Err(e) => {
            let _ = socket.send(close(1011, e.msg)).await;
            return;
        }
    }
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            () = crate::service::until_stopping(&mut down) => {
                let _ = socket.send(close(1001, "aggregator shutting down".into())).await;
                break;
            }
            got = live.next() => match got {
                Some(Ok(entries)) => {
                    let lines: Vec<_> = entries
                        .iter()
                        .map(|e| (entry_labels(e), e.ts_unix_nano, entry_text(e)))
                        .filter(|(labels, ts, line)| {
                            seen.is_empty() || !seen.contains(&(labels.clone(), *ts, line.clone()))
                        })
                        .collect();
                    if !lines.is_empty()
                        && socket.send(Message::Text(tail_message(lines).into())).await.is_err()
                    {
                        break;
                    }
                }
                // Said, not skipped in silence.
                Some(Err(e)) => {
                    let _ = socket.send(close(1011, e.to_string())).await;
                    break;
                }
                None => break,
            }
        }
    }
}

/// Loki's `index/stats`: what a query would read, from the indexes.
async fn index_stats(
    State(st): State<LokiState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = Params::new(raw.as_deref(), &body);
    let r = params::range_request(&p, now_ns())?;
    let q = query::parse(&r.query)?;
    if !q.selects_something() {
        return Err(error(StatusCode::BAD_REQUEST, EMPTY_SELECTOR));
    }
    let (start, end) = (r.start, r.end);
    let s = with_turn(
        &st,
        |b, _| async move { b.index_stats(q, start, end).await },
    )
    .await?;
    Ok(axum::Json(json!({
        "streams": s.streams,
        "chunks": s.chunks,
        "entries": s.entries,
        "bytes": s.bytes,
    }))
    .into_response())
}

async fn buildinfo() -> Response {
    axum::Json(json!({
        "version": LOKI_API_VERSION,
        "revision": concat!("logfleet-", env!("CARGO_PKG_VERSION")),
        "branch": "logfleet",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
    .into_response()
}
