//! The embedded store: durable, exactly-once segment files on a local
//! disk, compacted into per-stream chunks, as a [`Backend`]. Pushes go
//! through [`ingest`]'s group commit ([`store`]: segment files; [`index`]:
//! in memory; [`chunks`]: compacted files); reads through [`query`] and
//! [`metric`] on the blocking pool; tails from the store's
//! [`logfleet_store::tail::TailHub`]. Every file it touches goes through
//! [`fs`], so that tests can inject faults.

pub mod chunks;
pub mod fs;
pub mod index;
pub mod ingest;
pub mod loki_push;
pub mod metric;
pub mod query;
pub mod store;

pub use ingest::StoreConfig;

use std::sync::Arc;

use logfleet_logql::eval::{Labels, Steps, Value};
use logfleet_logql::Metric;
use logfleet_proto::v1::{
    AgentInfo, Direction, Entry, HeartbeatRequest, PushRequest, PushResponse,
};
use logfleet_proto::Limits;
use tokio_stream::wrappers::ReceiverStream;

use logfleet_store::backend::{
    Backend, Entries, Health, Incoming, PushFailure, PushFailureKind, Refused,
};
use logfleet_store::labels::label_pairs;
use logfleet_store::metrics::Metrics;

use crate::ingest::{PushError, Shared, Writer};
use crate::query::{Bounds, Control, IndexStats, Query, QueryError};
use crate::store::StoreError;

/// Entries per streamed batch.
const CHUNK: usize = 1000;
/// Text per streamed batch (a longer line goes alone).
const CHUNK_BYTES: usize = 4 << 20;

/// The embedded store, open.
pub struct Embedded {
    /// The store's state (index, segments, tails).
    pub shared: Arc<Shared>,
    writer: Writer,
    limits: Limits,
    push_streams: loki_push::Streams,
}

impl Embedded {
    /// Opens (or creates) the store of `cfg`; pushes hold at most
    /// `max_inflight` decompressed bytes at once.
    pub fn open(
        cfg: StoreConfig,
        metrics: Metrics,
        limits: Limits,
        max_inflight: u64,
    ) -> Result<Embedded, StoreError> {
        let (shared, writer) = crate::ingest::open(cfg, metrics)?;
        Ok(Embedded::from_parts(
            shared,
            writer.with_inflight_limit(max_inflight),
            limits,
        ))
    }

    /// A backend over a store opened already (tests open it on a simulated
    /// file system).
    pub fn from_parts(shared: Arc<Shared>, writer: Writer, limits: Limits) -> Embedded {
        Embedded {
            shared,
            writer,
            limits,
            push_streams: Default::default(),
        }
    }

    /// The writer, for tests that saturate it.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| QueryError::Unavailable(format!("query task failed: {e}")))?
    }
}

fn failure(e: PushError) -> PushFailure {
    let message = e.to_string();
    let (kind, reason, message) = match &e {
        PushError::Invalid(_) => (PushFailureKind::Invalid, "invalid", message),
        PushError::Codec(_) => (PushFailureKind::Invalid, "payload", message),
        // Told apart, so that agents wait (as for back-pressure) and the
        // error says what it is.
        PushError::Store(s) if s.is_disk_full() => (
            PushFailureKind::Full,
            "storage",
            format!("the aggregator's disk is full: {message}"),
        ),
        PushError::Store(_) => (
            PushFailureKind::Unavailable,
            "storage",
            format!("storage failed: {message}"),
        ),
        PushError::Closed => (PushFailureKind::Unavailable, "shutdown", message),
    };
    PushFailure {
        kind,
        reason: Some(reason),
        message,
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

/// The label sets of the streams the selectors pick in `[start, end)`.
fn selected_streams(
    shared: &Shared,
    selectors: &[Query],
    start: i64,
    end: i64,
) -> Result<Vec<Labels>, QueryError> {
    let bounds = Bounds {
        from: Some(start),
        to: Some(end),
        limit: 0,
        direction: Direction::Forward,
    };
    let mut out = Vec::new();
    for q in selectors {
        for s in query::streams_in_range(shared, q, bounds)? {
            // A file's stream label is per line: left out here.
            out.push(label_pairs(&s.node, &s.labels, 0));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[async_trait::async_trait]
impl Backend for Embedded {
    fn health(&self) -> Health {
        if let Some(why) = self.shared.degraded.lock().ok().and_then(|d| d.clone()) {
            return Health::Degraded(why);
        }
        match self.shared.quarantined.as_slice() {
            [] => Health::Ready,
            q => Health::Degraded(format!(
                "{} chunk file(s) set aside as unreadable ({}/*.bad, sequence {:?}): their lines are not served",
                q.len(),
                self.shared.chunks_dir.display(),
                q
            )),
        }
    }

    async fn push(&self, req: PushRequest) -> Result<PushResponse, PushFailure> {
        self.writer.push(req, self.limits).await.map_err(failure)
    }

    async fn push_loki(&self, incoming: Vec<Incoming>) -> Result<(), Refused> {
        let text: u64 = incoming
            .iter()
            .flat_map(|s| s.entries.iter())
            .map(|e| e.1.len() as u64 + 16)
            .sum();
        if !self.writer.has_room(text) {
            // Loki's answer under back-pressure: the client backs off and
            // retries, nothing is lost.
            return Err(Refused {
                status: 429,
                msg: "the aggregator is at its in-flight limit (--max-inflight); retry later"
                    .into(),
            });
        }
        loki_push::store(
            &self.shared,
            &self.writer,
            &self.push_streams,
            incoming,
            self.limits,
        )
        .await
        .map(|_| ())
    }

    async fn heartbeat(&self, hb: HeartbeatRequest) -> Result<(), QueryError> {
        // The text fields are for people; keep them short whatever arrives.
        let mut hb = hb;
        truncate_utf8(&mut hb.version, 64);
        truncate_utf8(&mut hb.last_error, 1024);
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.shared
            .index
            .write()
            .map_err(|_| QueryError::Unavailable("index unavailable".into()))?
            .heartbeat(hb, now);
        Ok(())
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, QueryError> {
        Ok(agents(&self.shared))
    }

    fn query(&self, q: Query, b: Bounds, ctl: Arc<Control>) -> Result<Entries, QueryError> {
        let shared = self.shared.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // Streams as it goes: a batch is sent when it holds CHUNK entries
        // or CHUNK_BYTES of text, so that no message outgrows the limit
        // whatever the line lengths, and a result without a limit is never
        // held whole.
        let timeouts = shared.metrics.query_timeouts.clone();
        tokio::task::spawn_blocking(move || {
            let mut chunk: Vec<Entry> = Vec::new();
            let mut bytes = 0usize;
            let send = |chunk: &mut Vec<Entry>, bytes: &mut usize| {
                *bytes = 0;
                tx.blocking_send(Ok(std::mem::take(chunk))).is_ok()
            };
            let res = query::execute_into(&shared, &q, b, &ctl, &mut |e| {
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
                Err(QueryError::Cancelled) => {}
                Err(e) => {
                    if matches!(e, QueryError::Timeout(_)) {
                        timeouts.inc();
                    }
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    fn tail(&self, q: Query) -> Result<Entries, QueryError> {
        Ok(self.shared.tail.follow(q))
    }

    async fn metric(
        &self,
        m: Metric,
        steps: Steps,
        ctl: Arc<Control>,
    ) -> Result<Value, QueryError> {
        self.blocking(move |shared| metric::metric(shared, &m, steps, &ctl))
            .await
    }

    async fn streams(
        &self,
        selectors: Vec<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, QueryError> {
        self.blocking(move |shared| {
            selected_streams(shared, &query::or_everything(selectors), start, end)
        })
        .await
    }

    async fn index_stats(&self, q: Query, start: i64, end: i64) -> Result<IndexStats, QueryError> {
        let b = Bounds {
            from: Some(start),
            to: Some(end),
            limit: 0,
            direction: Direction::Forward,
        };
        self.blocking(move |shared| query::index_stats(shared, &q, b))
            .await
    }

    async fn failed(&self) -> String {
        let mut failed = self.shared.failed.subscribe();
        let why = match failed.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            // The store is gone: nothing fails any more.
            None => std::future::pending().await,
        }
    }

    fn stopping(&self) {
        self.shared.shutdown.send_replace(true);
    }
}
