//! The gRPC services: `Ingest` (push) and `Query` (query, tail, agents),
//! and bearer-token authentication shared by both.

use std::sync::Arc;

use logfleet_proto::v1::ingest_server::Ingest;
use logfleet_proto::v1::query_server;
use logfleet_proto::v1::{
    Direction, Entry, HeartbeatRequest, HeartbeatResponse, ListAgentsRequest, ListAgentsResponse,
    PushRequest, PushResponse, QueryRequest, QueryResponse, TailRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use logfleet_store::backend::{Backend, PushFailure, PushFailureKind};
use logfleet_store::metrics::Metrics;
use logfleet_store::query::{self, Bounds, Control, QueryError};

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

/// The ingest service, over any backend.
pub struct IngestService {
    /// Where pushes go.
    pub backend: Arc<dyn Backend>,
    /// Metrics.
    pub metrics: Metrics,
    /// Checks the node a push names against the agent's token.
    pub identity: Option<Arc<crate::identity::Verifier>>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn push(&self, req: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let peer = req.remote_addr();
        check_identity(
            self.identity.as_deref(),
            &self.metrics,
            &req,
            &req.get_ref().node,
        )
        .await?;
        let req = req.into_inner();
        let node = req.node.clone();
        match self.backend.push(req).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                if let Some(reason) = e.reason {
                    self.metrics.reject(reason);
                    tracing::warn!(?peer, %node, error = %e, "push refused");
                }
                Err(push_status(e))
            }
        }
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        check_identity(
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
        self.backend.heartbeat(hb).await.map_err(bad_query)?;
        Ok(Response::new(HeartbeatResponse {}))
    }
}

/// A refused push as gRPC says it: agents retry all but invalid ones.
fn push_status(f: PushFailure) -> Status {
    match f.kind {
        PushFailureKind::Invalid => Status::invalid_argument(f.message),
        PushFailureKind::Full => Status::resource_exhausted(f.message),
        PushFailureKind::Unavailable => Status::unavailable(f.message),
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

/// The query service, over any backend.
pub struct QueryService {
    /// Where entries come from.
    pub backend: Arc<dyn Backend>,
    /// A query stops after this long.
    pub timeout: std::time::Duration,
    /// Metrics (tails open).
    pub metrics: Metrics,
    /// Turns true when the aggregator stops: queries and tails end then,
    /// so that the server's graceful shutdown does not wait for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Resolves once the aggregator is stopping (or its state is gone).
pub(crate) async fn until_stopping(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// What a tail or query hears when the aggregator stops.
pub(crate) fn shutting_down() -> Status {
    Status::unavailable("aggregator shutting down")
}

/// A query's error as gRPC says it.
pub(crate) fn bad_query(e: QueryError) -> Status {
    match e {
        QueryError::Parse { .. } | QueryError::Eval(_) => Status::invalid_argument(e.to_string()),
        QueryError::Unavailable(_) => Status::unavailable(e.to_string()),
        QueryError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        QueryError::Cancelled => Status::cancelled(e.to_string()),
        QueryError::Unsupported(_) => Status::unimplemented(e.to_string()),
        QueryError::Failed(_) => Status::internal(e.to_string()),
        QueryError::Lagged(_) => Status::resource_exhausted(e.to_string()),
    }
}

type EntryStream = ReceiverStream<Result<QueryResponse, Status>>;

/// An open tail, counted in the `tails` gauge until dropped.
pub(crate) struct OpenTail(prometheus_client::metrics::gauge::Gauge);

impl OpenTail {
    /// Counts one more open tail.
    pub(crate) fn new(g: prometheus_client::metrics::gauge::Gauge) -> OpenTail {
        g.inc();
        OpenTail(g)
    }
}

impl Drop for OpenTail {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Forwards a backend's entries as response messages until it ends, the
/// client leaves, the deadline passes (`deadline`) or the aggregator
/// stops; `ctl` tells the backend to stop early.
fn forward(
    mut entries: logfleet_store::backend::Entries,
    ctl: Arc<Control>,
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    on_open: Option<OpenTail>,
    timeouts: prometheus_client::metrics::counter::Counter,
) -> EntryStream {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        // Counted while it runs, however it ends.
        let _open = on_open;
        let stop = |ctl: &Control| {
            ctl.cancelled
                .store(true, std::sync::atomic::Ordering::Relaxed)
        };
        let expired = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            let next = tokio::select! {
                n = entries.next() => n,
                _ = tx.closed() => {
                    stop(&ctl);
                    return;
                }
                () = &mut expired => {
                    stop(&ctl);
                    timeouts.inc();
                    let after = deadline.map(|d| d.1).unwrap_or_default();
                    let _ = tx.send(Err(bad_query(QueryError::Timeout(after)))).await;
                    return;
                }
                () = until_stopping(&mut stopping) => {
                    stop(&ctl);
                    let _ = tx.send(Err(shutting_down())).await;
                    return;
                }
            };
            match next {
                Some(Ok(batch)) => {
                    // A batch may hold more than one message may carry.
                    for chunk in messages(batch) {
                        if tx.send(Ok(QueryResponse { entries: chunk })).await.is_err() {
                            stop(&ctl);
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(bad_query(e))).await;
                    return;
                }
                None => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

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
        let deadline = (std::time::Instant::now() + self.timeout, self.timeout);
        let ctl = Arc::new(Control {
            cancelled: Default::default(),
            deadline: Some(deadline),
        });
        let entries = self
            .backend
            .query(q, bounds, ctl.clone())
            .map_err(bad_query)?;
        // The store checks the deadline as it reads; this one also ends a
        // store that waits (an external one) and says so.
        let at = tokio::time::Instant::now() + self.timeout + std::time::Duration::from_millis(500);
        Ok(Response::new(forward(
            entries,
            ctl,
            Some((at, self.timeout)),
            self.stopping.clone(),
            None,
            self.metrics.query_timeouts.clone(),
        )))
    }

    async fn tail(&self, req: Request<TailRequest>) -> Result<Response<EntryStream>, Status> {
        let q = query::parse(&req.into_inner().query).map_err(bad_query)?;
        let entries = self.backend.tail(q).map_err(bad_query)?;
        Ok(Response::new(forward(
            entries,
            Arc::default(),
            None,
            self.stopping.clone(),
            Some(OpenTail::new(self.metrics.tails.clone())),
            self.metrics.query_timeouts.clone(),
        )))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let agents = self.backend.agents().await.map_err(bad_query)?;
        Ok(Response::new(ListAgentsResponse { agents }))
    }
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
