//! The gRPC services: `Ingest` (push) and `Query` (query, tail, agents),
//! and bearer-token authentication shared by both.

use std::sync::Arc;

use logfleet_proto::v1::ingest_server::Ingest;
use logfleet_proto::v1::query_server;
use logfleet_proto::v1::{
    AgentInfo, Direction, Entry, HeartbeatRequest, HeartbeatResponse, ListAgentsRequest,
    ListAgentsResponse, PushRequest, PushResponse, QueryRequest, QueryResponse, TailRequest,
};
use logfleet_proto::Limits;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::ingest::{PushError, Shared, Writer};
use crate::metrics::Metrics;
use crate::query::{self, Bounds, QueryError};

/// Entries per streamed response message.
const CHUNK: usize = 1000;
/// Text per streamed response message: well under the 64 MiB message limit
/// (a single line is at most the payload limit, 64 MiB by default, and is
/// sent alone).
const CHUNK_BYTES: usize = 4 << 20;

/// Splits entries into response messages of at most [`CHUNK`] entries and
/// about [`CHUNK_BYTES`] of text (a longer line goes alone), in order.
pub(crate) fn messages(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for e in entries {
        let len = e.line.len() + e.formatted.as_ref().map_or(0, String::len);
        if !chunk.is_empty() && (chunk.len() >= CHUNK || bytes + len > CHUNK_BYTES) {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += len;
        chunk.push(e);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// The two credentials: agents push with one, readers (the CLI, the
/// controller's coverage check) query with the other, so an agent's token,
/// which every node holds, cannot read any namespace's logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Required by `Ingest` (push, heartbeat).
    pub push: Option<String>,
    /// Required by `Query` and the HTTP agents API.
    pub read: Option<String>,
}

/// One role is open while the other needs a token: almost certainly a
/// forgotten flag, which would leave logs readable by anyone.
#[derive(Debug, thiserror::Error)]
#[error(
    "a {set} token is set but no {missing} token: set both (or neither, for an open aggregator)"
)]
pub struct TokensError {
    set: &'static str,
    missing: &'static str,
}

impl Tokens {
    /// One token for both roles (`None`: open).
    pub fn single(token: Option<String>) -> Self {
        Tokens {
            push: token.clone(),
            read: token,
        }
    }

    /// Refuses a half-open configuration.
    pub fn check(&self) -> Result<(), TokensError> {
        match (&self.push, &self.read) {
            (Some(_), None) => Err(TokensError {
                set: "push",
                missing: "read",
            }),
            (None, Some(_)) => Err(TokensError {
                set: "read",
                missing: "push",
            }),
            _ => Ok(()),
        }
    }
}

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<str>>,
    role: &'static str,
    metrics: Metrics,
}

impl Auth {
    /// An authenticator for `role` (`push` or `read`, for logs); `None`
    /// lets every request in.
    pub fn new(token: Option<String>, role: &'static str, metrics: Metrics) -> Self {
        Auth {
            token: token.map(|t| Arc::from(t.trim())),
            role,
            metrics,
        }
    }

    /// Whether an HTTP request with this `authorization` header may pass;
    /// a refusal is counted, as the gRPC interceptor counts its own.
    pub fn admits(&self, header: Option<&[u8]>) -> bool {
        let ok = self.allows(header);
        if !ok {
            self.metrics.unauthenticated.inc();
        }
        ok
    }

    /// Whether the header value carries the token (constant-time compare).
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let Some(got) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let want = want.as_bytes();
        got.len() == want.len() && got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let h = req.metadata().get("authorization").map(|v| v.as_bytes());
        if self.allows(h) {
            Ok(req)
        } else {
            self.metrics.unauthenticated.inc();
            tracing::warn!(peer = ?req.remote_addr(), role = self.role, "refused request with missing or wrong token");
            Err(Status::unauthenticated(format!(
                "missing or wrong bearer token (this service needs the {} token)",
                self.role
            )))
        }
    }
}

/// The ingest service.
pub struct IngestService {
    /// The writer.
    pub writer: Writer,
    /// Payload limits.
    pub limits: Limits,
    /// Metrics.
    pub metrics: Metrics,
    /// Shared state (for heartbeats).
    pub shared: Arc<Shared>,
    /// Checks the node a push names against the agent's token.
    pub identity: Option<Arc<crate::identity::Verifier>>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn push(&self, req: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let peer = req.remote_addr();
        self.check_identity(&req, &req.get_ref().node).await?;
        let req = req.into_inner();
        let node = req.node.clone();
        match self.writer.push(req, self.limits).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                let reason = match &e {
                    PushError::Invalid(_) => "invalid",
                    PushError::Codec(_) => "payload",
                    PushError::Store(_) => "storage",
                    PushError::Closed => "shutdown",
                };
                self.metrics.reject(reason);
                tracing::warn!(?peer, %node, error = %e, "push refused");
                Err(e.into())
            }
        }
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.check_identity(&req, &req.get_ref().node).await?;
        self.record_heartbeat(req.into_inner())?;
        Ok(Response::new(HeartbeatResponse {}))
    }
}

impl IngestService {
    async fn check_identity<T>(&self, req: &Request<T>, node: &str) -> Result<(), Status> {
        check_identity(self.identity.as_deref(), &self.metrics, req, node).await
    }

    /// Records a heartbeat.
    fn record_heartbeat(&self, hb: HeartbeatRequest) -> Result<(), Status> {
        if hb.node.is_empty() || hb.node.len() > 253 {
            return Err(Status::invalid_argument("node name must be 1 to 253 bytes"));
        }
        // The text fields are for people; keep them short whatever arrives.
        let mut hb = hb;
        truncate_utf8(&mut hb.version, 64);
        truncate_utf8(&mut hb.last_error, 1024);
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.shared
            .index
            .write()
            .map_err(|_| Status::internal("index unavailable"))?
            .heartbeat(hb, now);
        Ok(())
    }
}

/// With identity checks on (`verifier`): the request's token must be a
/// current token of the agents' service account, for `node` when the
/// token names one. Refusals are counted by reason. Shared by both stores.
pub(crate) async fn check_identity<T>(
    verifier: Option<&crate::identity::Verifier>,
    metrics: &Metrics,
    req: &Request<T>,
    node: &str,
) -> Result<(), Status> {
    let Some(v) = verifier else {
        return Ok(());
    };
    let token = req
        .metadata()
        .get(crate::identity::HEADER)
        .and_then(|t| t.to_str().ok());
    match v.check(token, node).await {
        Ok(id) => {
            if id.node.is_none() {
                // Before Kubernetes 1.30 tokens carry no node: the
                // service account is all that is checked.
                metrics.identity_without_node.inc();
            }
            Ok(())
        }
        Err(e) => {
            use crate::identity::IdentityError as E;
            let reason = match &e {
                E::Missing => "identity_missing",
                E::Invalid(_) | E::WrongSubject { .. } => "identity_invalid",
                E::Keys(_) => "identity_keys",
                E::WrongNode { .. } => "identity_wrong_node",
                E::NoNode => "identity_without_node",
            };
            metrics.reject(reason);
            tracing::warn!(peer = ?req.remote_addr(), %node, error = %e, "push refused: identity");
            Err(match e {
                E::WrongNode { .. } | E::NoNode => Status::permission_denied(e.to_string()),
                E::Keys(_) => Status::unavailable(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            })
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The query service.
pub struct QueryService {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// A query stops after this long.
    pub timeout: std::time::Duration,
}

/// Resolves once the aggregator is stopping (or its state is gone).
async fn until_stopping(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What a tail or query hears when the aggregator stops (both stores).
pub(crate) fn shutting_down() -> Status {
    Status::unavailable("aggregator shutting down")
}

fn bad_query(e: QueryError) -> Status {
    match e {
        QueryError::Parse { .. } | QueryError::Eval(_) => Status::invalid_argument(e.to_string()),
        QueryError::Store(_) => Status::internal(e.to_string()),
        QueryError::Unavailable(_) => Status::unavailable(e.to_string()),
        QueryError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        QueryError::Cancelled => Status::cancelled(e.to_string()),
    }
}

type EntryStream = ReceiverStream<Result<QueryResponse, Status>>;

#[tonic::async_trait]
impl query_server::Query for QueryService {
    type QueryStream = EntryStream;
    type TailStream = EntryStream;

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<EntryStream>, Status> {
        let r = req.into_inner();
        let q = query::parse(&r.query).map_err(bad_query)?;
        let bounds = Bounds {
            from: (r.from_unix_nano != 0).then_some(r.from_unix_nano),
            to: (r.to_unix_nano != 0).then_some(r.to_unix_nano),
            limit: usize::try_from(r.limit).unwrap_or(usize::MAX),
            direction: Direction::try_from(r.direction).unwrap_or(Direction::Forward),
        };
        let shared = self.shared.clone();
        let ctl = Arc::new(query::Control {
            cancelled: Default::default(),
            deadline: Some((std::time::Instant::now() + self.timeout, self.timeout)),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The query runs on the blocking pool and streams as it goes: a
        // chunk is sent when it holds CHUNK entries or CHUNK_BYTES of text,
        // so no message outgrows the limit whatever the line lengths, and a
        // result without a limit is never held whole.
        let timeouts = self.shared.metrics.query_timeouts.clone();
        // Stopping cancels the query; the client hears why.
        // (The watcher must not hold a sender: the response stream ends only
        // when every sender is gone.)
        let mut down = self.shared.shutdown.subscribe();
        let watch_ctl = ctl.clone();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                () = until_stopping(&mut down) => {
                    watch_ctl.cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                _ = finished => {}
            }
        });
        let stopping = self.shared.shutdown.subscribe();
        tokio::task::spawn_blocking(move || {
            let _done = done;
            let mut chunk = Vec::new();
            let mut bytes = 0usize;
            let send = |chunk: &mut Vec<Entry>, bytes: &mut usize| {
                *bytes = 0;
                let entries = std::mem::take(chunk);
                tx.blocking_send(Ok(QueryResponse { entries })).is_ok()
            };
            let res = query::execute_into(&shared, &q, bounds, &ctl, &mut |e| {
                bytes += e.line.len() + 64;
                chunk.push(e);
                if (chunk.len() >= CHUNK || bytes >= CHUNK_BYTES) && !send(&mut chunk, &mut bytes) {
                    ctl.cancelled
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return false;
                }
                true
            });
            match res {
                Ok(()) => {
                    if !chunk.is_empty() {
                        send(&mut chunk, &mut bytes);
                    }
                }
                Err(QueryError::Cancelled) => {
                    if *stopping.borrow() {
                        let _ = tx.blocking_send(Err(shutting_down()));
                    }
                }
                Err(e) => {
                    if matches!(e, QueryError::Timeout(_)) {
                        timeouts.inc();
                    }
                    let _ = tx.blocking_send(Err(bad_query(e)));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tail(&self, req: Request<TailRequest>) -> Result<Response<EntryStream>, Status> {
        let q = query::parse(&req.into_inner().query).map_err(bad_query)?;
        let mut sub = self.shared.tail.subscribe();
        let metrics = self.shared.metrics.clone();
        let mut down = self.shared.shutdown.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            metrics.tails.inc();
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    () = until_stopping(&mut down) => {
                        let _ = tx.send(Err(shutting_down())).await;
                        break;
                    }
                    got = sub.recv() => match got {
                        Ok(c) => {
                            let entries = query::matching(&q, &c.node, &c.labels, &c.batch);
                            if !entries.is_empty() && tx.send(Ok(QueryResponse { entries })).await.is_err() {
                                break;
                            }
                        }
                        Err(e @ crate::tail::TailError::Lagged(_)) => {
                            // Say so rather than silently skipping lines.
                            let _ = tx.send(Err(Status::resource_exhausted(e.to_string()))).await;
                            break;
                        }
                        Err(crate::tail::TailError::Closed) => break,
                    }
                }
            }
            metrics.tails.dec();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        Ok(Response::new(ListAgentsResponse {
            agents: agents(&self.shared),
        }))
    }
}

/// Every agent that pushed or sent a heartbeat, sorted by node.
pub fn agents(shared: &Shared) -> Vec<AgentInfo> {
    let Ok(ix) = shared.index.read() else {
        return Vec::new();
    };
    let nodes: std::collections::BTreeSet<&String> =
        ix.agents.keys().chain(ix.live.keys()).collect();
    nodes
        .into_iter()
        .map(|node| {
            let a = ix.agents.get(node).cloned().unwrap_or_default();
            let live = ix.live.get(node);
            let hb = live.and_then(|l| l.heartbeat.clone()).unwrap_or_default();
            AgentInfo {
                node: node.clone(),
                first_push_unix_nano: a.first_push,
                last_push_unix_nano: a.last_push,
                lines: a.lines,
                bytes: a.bytes,
                last_seen_unix_nano: live.map_or(0, |l| l.last_seen),
                version: hb.version,
                files: hb.files,
                bytes_behind: hb.bytes_behind,
                last_error: hb.last_error,
                dead_letter_lines: hb.dead_letter_lines,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_stay_under_the_limits_and_keep_the_order() {
        use logfleet_proto::v1::Entry;
        let e = |n: usize, i: i64| Entry {
            ts_unix_nano: i,
            line: vec![b'x'; n],
            ..Default::default()
        };
        // 2,500 short lines: 1,000, 1,000, 500.
        let m = super::messages((0..2500).map(|i| e(10, i)).collect());
        assert_eq!(
            m.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        // 40 KiB lines: about 4 MiB per message; one 10 MiB line alone.
        let mut v: Vec<Entry> = (0..300).map(|i| e(40 << 10, i)).collect();
        v.insert(150, e(10 << 20, 1_000));
        let m = super::messages(v);
        assert!(m
            .iter()
            .all(|c| c.len() == 1 || c.iter().map(|e| e.line.len()).sum::<usize>() <= 4 << 20));
        assert!(m
            .iter()
            .any(|c| c.len() == 1 && c[0].line.len() == 10 << 20));
        let ts: Vec<i64> = m.iter().flatten().map(|e| e.ts_unix_nano).collect();
        assert_eq!(ts.len(), 301);
        assert_eq!(ts[150], 1_000);
        assert!(super::messages(Vec::new()).is_empty());
    }

    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn token_check() {
        let m = Metrics::new(&mut Registry::default());
        let open = Auth::new(None, "read", m.clone());
        assert!(open.allows(None));
        let a = Auth::new(Some("s3cret\n".into()), "read", m);
        assert!(a.allows(Some(b"Bearer s3cret")));
        assert!(!a.allows(Some(b"Bearer s3cre")));
        assert!(!a.allows(Some(b"Bearer s3cret2")));
        assert!(!a.allows(Some(b"s3cret")));
        assert!(!a.allows(None));
    }

    #[test]
    fn half_open_tokens_are_refused() {
        assert!(Tokens::default().check().is_ok());
        assert!(Tokens::single(Some("t".into())).check().is_ok());
        let push_only = Tokens {
            push: Some("p".into()),
            read: None,
        };
        let e = push_only.check().unwrap_err().to_string();
        assert!(e.contains("no read token"), "{e}");
        let read_only = Tokens {
            push: None,
            read: Some("r".into()),
        };
        assert!(read_only.check().is_err());
    }
}
