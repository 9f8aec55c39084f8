//! `logfleet aggregator --store clickhouse`: the agents' gRPC ingest, the
//! gRPC log queries and live tail, the agent list, Loki's read API and the
//! web view over a ClickHouse store, with no state of the aggregator's
//! own, so replicas scale out behind one Service. `/readyz` says when
//! ClickHouse is unreachable; pushes then fail as unavailable and agents
//! keep their data until it is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use logfleet_proto::v1::ingest_server::{Ingest, IngestServer};
use logfleet_proto::v1::query_server::{Query as QueryApi, QueryServer};
use logfleet_proto::v1::{
    AgentInfo, HeartbeatRequest, HeartbeatResponse, ListAgentsRequest, ListAgentsResponse,
    PushRequest, PushResponse, QueryRequest, QueryResponse, TailRequest,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{rowbinary, sql, ClickHouse, ClickHouseError, Config, Writer, WriterConfig};
use crate::{AggregatorConfig, AggregatorError, Listeners};

/// What the services share.
struct Ch {
    /// Set once connected and the schema is in place.
    store: tokio::sync::OnceCell<(ClickHouse, Writer)>,
    /// Why ClickHouse is not usable now; none: it is.
    problem: Mutex<Option<String>>,
    /// Heartbeats not yet written.
    heartbeats: Mutex<HashMap<String, HeartbeatRequest>>,
    up: Gauge,
    inserted: Counter,
    refused: Counter,
    days_dropped: Counter,
}

/// How often retention looks for expired days.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

impl Ch {
    fn set_problem(&self, p: Option<String>) {
        if let Ok(mut g) = self.problem.lock() {
            *g = p;
        }
        self.up.set(i64::from(
            self.problem.lock().map(|g| g.is_none()).unwrap_or(false),
        ));
    }

    fn store(&self) -> Result<&(ClickHouse, Writer), Status> {
        self.store.get().ok_or_else(|| {
            let why = self
                .problem
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_else(|| "not connected yet".into());
            Status::unavailable(format!("ClickHouse store unavailable: {why}"))
        })
    }
}

fn status(e: ClickHouseError) -> Status {
    match e {
        ClickHouseError::Push(p) => p.into(),
        ClickHouseError::Unsupported(u) => Status::unimplemented(u.to_string()),
        // Retried by agents; their data stays in their files meanwhile.
        e if e.is_unavailable() => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

/// The agents' ingest: the same identity check, refusals and metrics as
/// the embedded store's, into ClickHouse.
struct IngestSvc {
    ch: Arc<Ch>,
    metrics: crate::metrics::Metrics,
    identity: Option<Arc<crate::identity::Verifier>>,
}

#[tonic::async_trait]
impl Ingest for IngestSvc {
    async fn push(&self, req: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let peer = req.remote_addr();
        crate::service::check_identity(
            self.identity.as_deref(),
            &self.metrics,
            &req,
            &req.get_ref().node,
        )
        .await?;
        let (_, writer) = self.ch.store()?;
        let req = req.into_inner();
        let node = req.node.clone();
        let batches = req.ranges.len() as u64;
        match writer.push(req).await {
            Ok(n) => {
                self.ch.inserted.inc_by(n);
                self.metrics.batches.inc_by(batches);
                self.metrics.lines.inc_by(n);
                self.ch.set_problem(None);
                Ok(Response::new(PushResponse {
                    stored_lines: n,
                    duplicate_lines: 0,
                }))
            }
            Err(e) => {
                if e.is_unavailable() {
                    // Retried by the agent: not a refusal of the push.
                    self.ch.refused.inc();
                    self.ch.set_problem(Some(e.to_string()));
                } else {
                    let reason = match &e {
                        ClickHouseError::Push(crate::ingest::PushError::Codec(_)) => "payload",
                        _ => "invalid",
                    };
                    self.metrics.reject(reason);
                    tracing::warn!(?peer, %node, error = %e, "push refused");
                }
                Err(status(e))
            }
        }
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        crate::service::check_identity(
            self.identity.as_deref(),
            &self.metrics,
            &req,
            &req.get_ref().node,
        )
        .await?;
        let hb = req.into_inner();
        if hb.node.is_empty() || hb.node.len() > 253 {
            return Err(Status::invalid_argument("node name must be 1 to 253 bytes"));
        }
        if let Ok(mut m) = self.ch.heartbeats.lock() {
            m.insert(hb.node.clone(), hb);
        }
        Ok(Response::new(HeartbeatResponse {}))
    }
}

struct QuerySvc {
    ch: Arc<Ch>,
    timeout: Duration,
    metrics: crate::metrics::Metrics,
    /// Turns true when the aggregator stops: queries and tails end then,
    /// so the server's graceful shutdown does not wait for them.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Resolves once the aggregator is stopping.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// An open tail, counted in the `tails` gauge until dropped.
struct OpenTail(Gauge);

impl OpenTail {
    fn new(g: Gauge) -> OpenTail {
        g.inc();
        OpenTail(g)
    }
}

impl Drop for OpenTail {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type Entries = ReceiverStream<Result<QueryResponse, Status>>;

/// How often a live tail asks ClickHouse.
const TAIL_POLL: Duration = Duration::from_millis(500);
/// How far back each poll looks again.
const TAIL_OVERLAP: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl QueryApi for QuerySvc {
    type QueryStream = Entries;
    type TailStream = Entries;

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<Entries>, Status> {
        let r = req.into_inner();
        let q =
            crate::query::parse(&r.query).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (store, _) = self.ch.store()?;
        let w = sql::Window {
            from: (r.from_unix_nano != 0).then_some(r.from_unix_nano),
            to: (r.to_unix_nano != 0).then_some(r.to_unix_nano),
            limit: r.limit,
            backward: r.direction == logfleet_proto::v1::Direction::Backward as i32,
        };
        // Refuse what SQL cannot do before the stream starts.
        sql::select(store.database(), &q, w).map_err(|e| Status::unimplemented(e.to_string()))?;
        // Streamed page by page: a result without a limit is never held
        // whole. Stopping or the deadline ends it with the reason.
        let mut answer = super::Answer::new(store, &q, w, super::PAGE);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timeouts = self.metrics.query_timeouts.clone();
        let mut stopping = self.stopping.clone();
        self.metrics.queries.inc();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = tokio::time::timeout_at(deadline, answer.next()) => n,
                    () = stopped(&mut stopping) => {
                        let _ = tx.send(Err(crate::service::shutting_down())).await;
                        return;
                    }
                };
                let err = match next {
                    Ok(Ok(Some(entries))) => {
                        // A page may hold more than one message may carry.
                        for chunk in crate::service::messages(entries) {
                            if tx.send(Ok(QueryResponse { entries: chunk })).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => status(e),
                    Err(_) => {
                        timeouts.inc();
                        Status::deadline_exceeded("query timed out")
                    }
                };
                let _ = tx.send(Err(err)).await;
                return;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// Polls ClickHouse for lines that arrived since the last poll (by
    /// arrival, not by their own timestamps, so a late line stamped
    /// earlier still shows). Each poll looks back `TAIL_OVERLAP`, as
    /// inserts by other replicas may become visible out of order, and
    /// lines already sent are skipped by their identity.
    async fn tail(&self, req: Request<TailRequest>) -> Result<Response<Entries>, Status> {
        let q = crate::query::parse(&req.into_inner().query)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (store, _) = self.ch.store()?;
        // Refuse what SQL cannot do before the stream starts.
        sql::arrived_since(store.database(), &q, 0, 1)
            .map_err(|e| Status::unimplemented(e.to_string()))?;
        let store = store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut stopping = self.stopping.clone();
        let tails = self.metrics.tails.clone();
        tokio::spawn(async move {
            // Counted while it runs, however it ends.
            let _open = OpenTail::new(tails);
            let now = || chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            let start = now();
            let mut last = start;
            let mut seen: HashMap<(String, u64, u64), i64> = HashMap::new();
            loop {
                let since = (last - TAIL_OVERLAP.as_nanos() as i64).max(start);
                match store.arrived_since(&q, since, 10_000).await {
                    Ok(rows) => {
                        let mut fresh = Vec::new();
                        for r in rows {
                            last = last.max(r.received);
                            let key = (r.entry.node.clone(), r.file_id, r.offset);
                            if seen.insert(key, r.received).is_none() {
                                fresh.push(r.entry);
                            }
                        }
                        // What the overlap can no longer return is forgotten.
                        let horizon = last - 2 * TAIL_OVERLAP.as_nanos() as i64;
                        seen.retain(|_, t| *t >= horizon);
                        for chunk in crate::service::messages(fresh) {
                            if tx.send(Ok(QueryResponse { entries: chunk })).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(TAIL_POLL) => {}
                    () = stopped(&mut stopping) => {
                        let _ = tx.send(Err(crate::service::shutting_down())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_agents(
        &self,
        _req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let (store, _) = self.ch.store()?;
        let agents = list_agents(store).await.map_err(status)?;
        Ok(Response::new(ListAgentsResponse { agents }))
    }
}

/// Every agent: its latest heartbeat and what is stored for it.
async fn list_agents(store: &ClickHouse) -> Result<Vec<AgentInfo>, ClickHouseError> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut by_node: std::collections::BTreeMap<String, AgentInfo> = Default::default();
    let body = store
        .execute(&sql::agents(store.database()), Bytes::new())
        .await?;
    let mut r = rowbinary::Reader::new(&body);
    while !r.done() {
        let node = text(r.string()?);
        let a = by_node.entry(node.clone()).or_default();
        a.node = node;
        a.last_seen_unix_nano = r.u64()? as i64;
        a.version = text(r.string()?);
        a.files = r.u64()?;
        a.bytes_behind = r.u64()?;
        a.last_error = text(r.string()?);
        a.dead_letter_lines = r.u64()?;
    }
    let body = store
        .execute(&sql::agent_lines(store.database()), Bytes::new())
        .await?;
    let mut r = rowbinary::Reader::new(&body);
    while !r.done() {
        let node = text(r.string()?);
        let a = by_node.entry(node.clone()).or_default();
        a.node = node;
        a.lines = r.u64()?;
        a.bytes = r.u64()?;
        a.first_push_unix_nano = r.i64()?;
        a.last_push_unix_nano = r.i64()?;
        a.last_seen_unix_nano = a.last_seen_unix_nano.max(a.last_push_unix_nano);
    }
    Ok(by_node.into_values().collect())
}

/// Writes the heartbeats gathered since the last time, in one insert.
async fn flush_heartbeats(ch: &Ch) {
    let Some((store, _)) = ch.store.get() else {
        return;
    };
    let batch: Vec<HeartbeatRequest> = match ch.heartbeats.lock() {
        Ok(mut m) => m.drain().map(|(_, v)| v).collect(),
        Err(_) => return,
    };
    if batch.is_empty() {
        return;
    }
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
    let mut rows = Vec::new();
    for hb in &batch {
        rowbinary::string(&mut rows, hb.node.as_bytes());
        rows.extend_from_slice(&now.to_le_bytes());
        rowbinary::string(&mut rows, hb.version.as_bytes());
        rows.extend_from_slice(&hb.files.to_le_bytes());
        rows.extend_from_slice(&hb.bytes_behind.to_le_bytes());
        rowbinary::string(&mut rows, hb.last_error.as_bytes());
        rows.extend_from_slice(&hb.dead_letter_lines.to_le_bytes());
    }
    let stmt = format!(
        "INSERT INTO {}.agents ({}) FORMAT RowBinary",
        sql::ident(store.database()),
        sql::AGENT_COLUMNS
    );
    if let Err(e) = store.execute(&stmt, Bytes::from(rows)).await {
        tracing::warn!(error = %e, "writing heartbeats to ClickHouse failed; kept for the next try");
        if let Ok(mut m) = ch.heartbeats.lock() {
            for hb in batch {
                m.entry(hb.node.clone()).or_insert(hb);
            }
        }
    }
}

/// The agents listing the controller and `logfleet status` read, as the
/// embedded store's HTTP port serves it; the read token.
async fn agents_json(
    State((ch, auth)): State<(Arc<Ch>, crate::service::Auth)>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !auth.admits(headers.get("authorization").map(|v| v.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer")],
            "missing or wrong bearer token\n",
        )
            .into_response();
    }
    // Machine-readable: the controller turns it into its status.
    let unavailable = |message: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "reason": logfleet_proto::STORE_UNAVAILABLE,
                "message": message,
            })),
        )
            .into_response()
    };
    let Some((store, _)) = ch.store.get() else {
        let problem = ch.problem.lock().ok().and_then(|g| g.clone());
        return unavailable(problem.unwrap_or_else(|| "ClickHouse store: connecting".into()));
    };
    match list_agents(store).await {
        Ok(a) => axum::Json(
            a.into_iter()
                .map(crate::http::AgentJson::from)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) if e.is_unavailable() => unavailable(e.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn readyz(State(ch): State<Arc<Ch>>) -> (StatusCode, String) {
    let problem = ch.problem.lock().ok().and_then(|g| g.clone());
    match (ch.store.get(), problem) {
        (Some(_), None) => (StatusCode::OK, "ok\n".into()),
        (_, Some(p)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ClickHouse store unavailable: {p}\n"),
        ),
        (None, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ClickHouse store: connecting\n".into(),
        ),
    }
}

/// A middleware refusing requests without the bearer token `auth` wants.
fn bearer(
    auth: crate::service::Auth,
) -> impl Fn(
    axum::extract::Request,
    axum::middleware::Next,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |req: axum::extract::Request, next: axum::middleware::Next| {
        let auth = auth.clone();
        Box::pin(async move { crate::http::check(&auth, req, next).await })
    }
}

/// Runs an aggregator over ClickHouse until `shutdown` resolves.
pub async fn run(
    cfg: AggregatorConfig,
    ch_cfg: Config,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AggregatorError> {
    let mut registry = Registry::default();
    let metrics = crate::metrics::Metrics::without_embedded_store(&mut registry);
    let ch = Arc::new(Ch {
        store: Default::default(),
        problem: Mutex::new(Some("connecting".into())),
        heartbeats: Default::default(),
        up: Gauge::default(),
        inserted: Counter::default(),
        refused: Counter::default(),
        days_dropped: Counter::default(),
    });
    registry.register(
        "logfleet_aggregator_clickhouse_up",
        "1 when the ClickHouse store answers",
        ch.up.clone(),
    );
    registry.register(
        "logfleet_aggregator_clickhouse_lines_inserted",
        "Lines inserted into ClickHouse",
        ch.inserted.clone(),
    );
    registry.register(
        "logfleet_aggregator_clickhouse_retention_days_dropped",
        "Days of lines dropped by retention (whole partitions)",
        ch.days_dropped.clone(),
    );
    registry.register(
        "logfleet_aggregator_clickhouse_pushes_failed",
        "Pushes not stored because ClickHouse was unreachable or refused the insert (agents retry them; invalid pushes are in rejected_pushes)",
        ch.refused.clone(),
    );
    let loki_store: super::loki::Store = Default::default();
    let loki_writer: std::sync::Arc<tokio::sync::OnceCell<Writer>> = Default::default();
    // Connect in the background, retrying: an aggregator that starts
    // before ClickHouse serves its health endpoint and says why it is not
    // ready.
    {
        let ch = ch.clone();
        let loki_store = loki_store.clone();
        let loki_writer = loki_writer.clone();
        let wcfg = WriterConfig {
            max_inflight_bytes: cfg.max_inflight_bytes,
            ..Default::default()
        };
        let limits = cfg.limits;
        tokio::spawn(async move {
            loop {
                match ClickHouse::connect(ch_cfg.clone()).await {
                    Ok(store) => {
                        let _ = loki_store.set(store.clone());
                        let writer = Writer::start(store.clone(), wcfg, limits);
                        let _ = loki_writer.set(writer.clone());
                        let _ = ch.store.set((store, writer));
                        ch.set_problem(None);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ClickHouse store not ready; retrying");
                        ch.set_problem(Some(e.to_string()));
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            // Retention right after start, then hourly: days are whole
            // partitions, so an hour late is at most an hour of a day.
            let mut retention_due = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= retention_due {
                    retention_due += RETENTION_EVERY;
                    if let Some((store, _)) = ch.store.get() {
                        match store.drop_expired().await {
                            Ok(days) if !days.is_empty() => {
                                tracing::info!(?days, "retention dropped days of lines");
                                ch.days_dropped.inc_by(days.len() as u64);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "retention: dropping expired days failed; retried in an hour")
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                flush_heartbeats(&ch).await;
                // Readiness follows ClickHouse, pushes or not.
                if let Some((store, _)) = ch.store.get() {
                    match store.execute("SELECT 1", Bytes::new()).await {
                        Ok(_) => ch.set_problem(None),
                        Err(e) => ch.set_problem(Some(e.to_string())),
                    }
                }
            }
        });
    }
    let registry = Arc::new(registry);
    let push_auth = crate::service::Auth::new(cfg.tokens.push.clone(), "push", metrics.clone());
    let read_auth = crate::service::Auth::new(cfg.tokens.read.clone(), "read", metrics.clone());
    let agents_api = axum::Router::new()
        .route("/api/v1/agents", get(agents_json))
        .with_state((ch.clone(), read_auth.clone()));
    // Loki's read API behind the read token, and its push behind the push
    // token, as on the embedded store.
    let loki_api = super::loki::router(loki_store)
        .route_layer(axum::middleware::from_fn(bearer(read_auth.clone())))
        .merge(
            super::loki::push_router(super::loki::PushState {
                writer: loki_writer,
                metrics: metrics.clone(),
            })
            .route_layer(axum::middleware::from_fn(bearer(push_auth.clone()))),
        );
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get({
                let registry = registry.clone();
                move || {
                    let registry = registry.clone();
                    async move {
                        let mut out = String::new();
                        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                        out
                    }
                }
            }),
        )
        .route("/ready", get(readyz))
        .with_state(ch.clone())
        .merge(agents_api)
        .merge(loki_api)
        // The web view reads the Loki and agents APIs above only.
        .merge(crate::web::router());
    let (grpc_tls, http_tls) = crate::tls_configs(&cfg)?;
    crate::serve_http(app, listeners.http, http_tls, cfg.http_addr)?;
    let ingest = tonic::service::interceptor::InterceptedService::new(
        IngestServer::new(IngestSvc {
            ch: ch.clone(),
            metrics: metrics.clone(),
            identity: cfg.identity.clone(),
        })
        .max_decoding_message_size(cfg.max_message),
        push_auth,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let query = tonic::service::interceptor::InterceptedService::new(
        QueryServer::new(QuerySvc {
            ch: ch.clone(),
            timeout: cfg.query_timeout,
            metrics: metrics.clone(),
            stopping: stop_rx.clone(),
        })
        .max_encoding_message_size(cfg.limits.max_raw_len as usize + (1 << 20)),
        read_auth,
    );
    tracing::info!(grpc = %cfg.grpc_addr, query = ?cfg.query_addr, http = %cfg.http_addr, tls = cfg.tls.is_some(), store = "clickhouse", "aggregator started");
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    crate::serve_grpc(
        &cfg,
        listeners.grpc,
        listeners.query,
        grpc_tls,
        crate::GrpcServices::new(ingest, query),
        stopped,
    )
    .await?;
    flush_heartbeats(&ch).await;
    tracing::info!("aggregator stopped");
    Ok(())
}
