//! A store in memory, for tests: every line in one list, every query a
//! scan. It shows what a backend must do to serve the whole API (the Loki
//! API test suite runs on it as on the embedded store), with nothing but
//! [`Backend`]'s methods. Not durable: lost when the process ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use logfleet_logql::eval::{Labels, Steps, Value};
use logfleet_logql::Metric;
use logfleet_proto::v1::{
    AgentInfo, Direction, Entry, FileLabels, HeartbeatRequest, PushRequest, PushResponse,
};
use logfleet_proto::{Limits, Line};
use tokio_stream::wrappers::ReceiverStream;

use crate::backend::{Backend, Entries, Health, Incoming, PushFailure, PushFailureKind, Refused};
use crate::labels::StreamInfo;
use crate::labels::{entry, label_pairs, pipe};
use crate::query::{Bounds, Control, IndexStats, Query, QueryError, QueryExt};
use crate::tail::{Committed, TailHub};

/// One stored line with its stream.
struct Stored {
    stream: u32,
    line: Line,
}

#[derive(Default)]
struct Inner {
    /// Streams by id: node and file labels.
    streams: Vec<Arc<StreamInfo>>,
    ids: HashMap<(String, FileLabels), u32>,
    /// Lines in arrival order.
    lines: Vec<Stored>,
    /// (node, file, offset) of every line: a re-sent line is not stored
    /// twice.
    seen: HashSet<(String, u64, u64)>,
    agents: BTreeMap<String, AgentInfo>,
    /// Last offset given to a Loki-pushed line.
    loki_offset: u64,
}

impl Inner {
    fn stream_id(&mut self, node: &str, labels: &FileLabels) -> u32 {
        if let Some(id) = self.ids.get(&(node.to_owned(), labels.clone())) {
            return *id;
        }
        let id = self.streams.len() as u32;
        self.streams.push(Arc::new(StreamInfo {
            node: node.into(),
            labels: labels.clone(),
        }));
        self.ids.insert((node.to_owned(), labels.clone()), id);
        id
    }
}

/// The in-memory store.
pub struct Memory {
    inner: Mutex<Inner>,
    tail: TailHub,
    limits: Limits,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new(Limits::default())
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

fn contains(b: &Bounds, ts: i64) -> bool {
    b.from.is_none_or(|f| ts >= f) && b.to.is_none_or(|t| ts < t)
}

impl Memory {
    /// An empty store with these payload limits.
    pub fn new(limits: Limits) -> Memory {
        Memory {
            inner: Default::default(),
            tail: TailHub::default(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a decoded, valid push; returns lines stored and skipped.
    fn store(&self, req: &PushRequest, batch: logfleet_proto::v1::LineBatch) -> (u64, u64) {
        let mut inner = self.lock();
        let labels: Vec<FileLabels> = req
            .ranges
            .iter()
            .map(|r| r.labels.clone().unwrap_or_default())
            .collect();
        let (mut stored, mut dup, mut bytes) = (0, 0, 0);
        for l in batch.lines() {
            let r = &req.ranges[l.range as usize];
            if !inner.seen.insert((req.node.clone(), r.file_id, l.offset)) {
                dup += 1;
                continue;
            }
            let stream = inner.stream_id(&req.node, &labels[l.range as usize]);
            bytes += l.text.len() as u64;
            stored += 1;
            inner.lines.push(Stored { stream, line: l });
        }
        let now = now_ns();
        let a = inner.agents.entry(req.node.clone()).or_default();
        a.node = req.node.clone();
        if a.first_push_unix_nano == 0 {
            a.first_push_unix_nano = now;
        }
        a.last_push_unix_nano = now;
        a.last_seen_unix_nano = now;
        a.lines += stored;
        a.bytes += bytes;
        drop(inner);
        if stored > 0 {
            self.tail.send(Arc::new(Committed {
                node: req.node.as_str().into(),
                labels,
                bytes: req.raw_len,
                batch,
                at: std::time::Instant::now(),
            }));
        }
        (stored, dup)
    }

    /// The ids of the streams whose labels `q` selects.
    fn selected(inner: &Inner, q: &Query) -> Vec<bool> {
        inner
            .streams
            .iter()
            .map(|s| q.matches_file(&s.node, &s.labels))
            .collect()
    }

    /// The entries of `q` in `b`, in `b`'s order and limit.
    fn entries(&self, q: &Query, b: &Bounds, ctl: &Control) -> Result<Vec<Entry>, QueryError> {
        let inner = self.lock();
        let wanted = Self::selected(&inner, q);
        let mut hits: Vec<&Stored> = inner
            .lines
            .iter()
            .filter(|s| {
                wanted[s.stream as usize]
                    && contains(b, s.line.ts)
                    && q.matches_stored(s.line.stream, &s.line.text)
            })
            .collect();
        // Time, then arrival: a stable order either way.
        hits.sort_by_key(|s| s.line.ts);
        if b.direction == Direction::Backward {
            hits.reverse();
        }
        let mut out = Vec::new();
        for s in hits {
            if ctl.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(QueryError::Cancelled);
            }
            let info = &inner.streams[s.stream as usize];
            let mut e = entry(&info.node, &info.labels, &s.line);
            if !q.pipeline.is_empty() {
                let Some(p) = q.pipe(&info.node, &info.labels, s.line.stream, &s.line.text) else {
                    continue;
                };
                pipe(&mut e, p);
            }
            out.push(e);
            if b.limit > 0 && out.len() >= b.limit {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Backend for Memory {
    fn health(&self) -> Health {
        Health::Ready
    }

    async fn push(&self, req: PushRequest) -> Result<PushResponse, PushFailure> {
        let invalid = |reason, e: &dyn std::fmt::Display| PushFailure {
            kind: PushFailureKind::Invalid,
            reason: Some(reason),
            message: e.to_string(),
        };
        let batch = logfleet_proto::decode_payload(&req, self.limits)
            .map_err(|e| invalid("payload", &e))?;
        crate::push::validate(&req, &batch).map_err(|e| invalid("invalid", &e))?;
        let (stored_lines, duplicate_lines) = self.store(&req, batch);
        Ok(PushResponse {
            stored_lines,
            duplicate_lines,
        })
    }

    async fn push_loki(&self, incoming: Vec<Incoming>) -> Result<(), Refused> {
        for s in incoming {
            let t = crate::loki::target(&s.labels)?;
            // An entry the stream holds already (same time, same text) is
            // not stored again, as Loki drops it.
            let have: HashSet<(i64, Vec<u8>)> = {
                let inner = self.lock();
                let id = inner.ids.get(&(t.node.clone(), t.labels.clone())).copied();
                inner
                    .lines
                    .iter()
                    .filter(|l| Some(l.stream) == id && l.line.stream == t.stream as i32)
                    .map(|l| (l.line.ts, l.line.text.to_vec()))
                    .collect()
            };
            let mut have = have;
            let fresh: Vec<(i64, String)> = s
                .entries
                .into_iter()
                .filter(|(ts, line)| have.insert((*ts, line.as_bytes().to_vec())))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let base = {
                let mut inner = self.lock();
                let base = inner.loki_offset + 1;
                inner.loki_offset += fresh.len() as u64;
                base
            };
            let req = t.request(
                fresh
                    .iter()
                    .enumerate()
                    .map(|(i, (ts, line))| (base + i as u64, *ts, line.as_str())),
                logfleet_proto::v1::Compression::None,
                0,
            )?;
            self.push(req).await.map_err(|e| Refused {
                status: 400,
                msg: e.to_string(),
            })?;
        }
        Ok(())
    }

    async fn heartbeat(&self, hb: HeartbeatRequest) -> Result<(), QueryError> {
        let mut inner = self.lock();
        let a = inner.agents.entry(hb.node.clone()).or_default();
        a.node = hb.node;
        a.last_seen_unix_nano = now_ns();
        a.version = hb.version;
        a.files = hb.files;
        a.bytes_behind = hb.bytes_behind;
        a.last_error = hb.last_error;
        a.dead_letter_lines = hb.dead_letter_lines;
        Ok(())
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, QueryError> {
        Ok(self.lock().agents.values().cloned().collect())
    }

    fn query(&self, q: Query, b: Bounds, ctl: Arc<Control>) -> Result<Entries, QueryError> {
        let answer = self.entries(&q, &b, &ctl);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(answer);
        Ok(ReceiverStream::new(rx))
    }

    fn tail(&self, q: Query) -> Result<Entries, QueryError> {
        Ok(self.tail.follow(q))
    }

    async fn metric(
        &self,
        m: Metric,
        steps: Steps,
        _ctl: Arc<Control>,
    ) -> Result<Value, QueryError> {
        let inner = self.lock();
        crate::evaluate::metric_over(&m, steps, &mut |agg, b, f| {
            let wanted = Self::selected(&inner, &agg.query);
            for s in &inner.lines {
                if wanted[s.stream as usize]
                    && contains(&b, s.line.ts)
                    && agg.query.matches_stored(s.line.stream, &s.line.text)
                    && !f(s.stream, &inner.streams[s.stream as usize], &s.line)
                {
                    break;
                }
            }
            Ok(())
        })
    }

    async fn streams(
        &self,
        selectors: Vec<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, QueryError> {
        let inner = self.lock();
        let selectors = crate::query::or_everything(selectors);
        let mut ids: Vec<u32> = Vec::new();
        for q in &selectors {
            let wanted = Self::selected(&inner, q);
            ids.extend(
                inner
                    .lines
                    .iter()
                    .filter(|s| wanted[s.stream as usize] && s.line.ts >= start && s.line.ts < end)
                    .map(|s| s.stream),
            );
        }
        let mut out: Vec<Labels> = ids
            .into_iter()
            .map(|id| {
                let s = &inner.streams[id as usize];
                label_pairs(&s.node, &s.labels, 0)
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Exact: every line the selector picks in the range; a stream's lines
    /// count as one chunk.
    async fn index_stats(&self, q: Query, start: i64, end: i64) -> Result<IndexStats, QueryError> {
        let inner = self.lock();
        let wanted = Self::selected(&inner, &q);
        let mut streams = HashSet::new();
        let (mut entries, mut bytes) = (0, 0);
        for s in &inner.lines {
            if wanted[s.stream as usize] && s.line.ts >= start && s.line.ts < end {
                streams.insert(s.stream);
                entries += 1;
                bytes += s.line.text.len() as u64;
            }
        }
        Ok(IndexStats {
            streams: streams.len() as u64,
            chunks: streams.len() as u64,
            entries,
            bytes,
        })
    }
}
