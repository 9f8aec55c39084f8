//! ClickHouse as a [`Backend`]: no state of the aggregator's own, so
//! replicas scale out behind one Service. It connects in the background,
//! retrying, and says why it is not ready meanwhile; pushes then fail as
//! unavailable and agents keep their data until it is back. Retention
//! drops whole days; heartbeats are written in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use logfleet_logql::eval::{Labels, Steps, Value};
use logfleet_logql::Metric;
use logfleet_proto::v1::{AgentInfo, HeartbeatRequest, PushRequest, PushResponse};
use logfleet_proto::Limits;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::ReceiverStream;

use super::{rowbinary, sql, Answer, ClickHouse, ClickHouseError, Config, Writer, WriterConfig};
use logfleet_store::backend::{
    Backend, Entries, Health, Incoming, PushFailure, PushFailureKind, Refused,
};
use logfleet_store::metrics::Metrics;
use logfleet_store::query::{Bounds, Control, IndexStats, Query, QueryError};

/// How often retention looks for expired days.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How often a live tail asks ClickHouse.
const TAIL_POLL: Duration = Duration::from_millis(500);
/// How far back each poll looks again.
const TAIL_OVERLAP: Duration = Duration::from_secs(10);

/// The ClickHouse store, connected or connecting.
pub struct ClickHouseBackend {
    /// Set once connected and the schema is in place.
    store: tokio::sync::OnceCell<(ClickHouse, Writer)>,
    /// Why ClickHouse is not usable now; none: it is.
    problem: Mutex<Option<String>>,
    /// Heartbeats not yet written.
    heartbeats: Mutex<HashMap<String, HeartbeatRequest>>,
    metrics: Metrics,
    up: Gauge,
    inserted: Counter,
    refused: Counter,
    days_dropped: Counter,
}

/// A ClickHouse error as a query's.
fn query_error(e: ClickHouseError) -> QueryError {
    match e {
        ClickHouseError::Unsupported(u) => QueryError::Unsupported(u.to_string()),
        // Retried by clients; nothing is wrong with the query.
        e if e.is_unavailable() => QueryError::Unavailable(e.to_string()),
        e => QueryError::Failed(e.to_string()),
    }
}

impl ClickHouseBackend {
    /// Starts connecting to `cfg` in the background (and retention and
    /// heartbeat writing once connected); its metrics go to `registry`.
    pub fn start(
        cfg: Config,
        wcfg: WriterConfig,
        limits: Limits,
        metrics: Metrics,
        registry: &mut Registry,
    ) -> Arc<ClickHouseBackend> {
        let ch = Arc::new(ClickHouseBackend {
            store: Default::default(),
            problem: Mutex::new(Some("connecting".into())),
            heartbeats: Default::default(),
            metrics,
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
        let bg = ch.clone();
        tokio::spawn(async move { bg.maintain(cfg, wcfg, limits).await });
        ch
    }

    /// Connects, retrying; then runs retention hourly, writes heartbeats
    /// and follows ClickHouse's health, for the aggregator's life.
    async fn maintain(&self, cfg: Config, wcfg: WriterConfig, limits: Limits) {
        loop {
            match ClickHouse::connect(cfg.clone()).await {
                Ok(store) => {
                    let writer = Writer::start(store.clone(), wcfg, limits);
                    let _ = self.store.set((store, writer));
                    self.set_problem(None);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ClickHouse store not ready; retrying");
                    self.set_problem(Some(e.to_string()));
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
                if let Some((store, _)) = self.store.get() {
                    match store.drop_expired().await {
                        Ok(days) if !days.is_empty() => {
                            tracing::info!(?days, "retention dropped days of lines");
                            self.days_dropped.inc_by(days.len() as u64);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "retention: dropping expired days failed; retried in an hour")
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            flush_heartbeats(self).await;
            // Readiness follows ClickHouse, pushes or not.
            if let Some((store, _)) = self.store.get() {
                match store.execute("SELECT 1", Bytes::new()).await {
                    Ok(_) => self.set_problem(None),
                    Err(e) => self.set_problem(Some(e.to_string())),
                }
            }
        }
    }

    fn set_problem(&self, p: Option<String>) {
        if let Ok(mut g) = self.problem.lock() {
            *g = p;
        }
        self.up.set(i64::from(
            self.problem.lock().map(|g| g.is_none()).unwrap_or(false),
        ));
    }

    /// Why it cannot serve, in words.
    fn why_not(&self) -> String {
        let why = self
            .problem
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "connecting".into());
        format!("ClickHouse store unavailable: {why}")
    }

    /// The store once connected.
    fn connected(&self) -> Result<&(ClickHouse, Writer), QueryError> {
        self.store
            .get()
            .ok_or_else(|| QueryError::Unavailable(self.why_not()))
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
async fn flush_heartbeats(ch: &ClickHouseBackend) {
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

/// Text per push into the store: a Loki push (up to 64 MiB decoded) goes
/// in pieces that each fit the payload limit of an agent's push.
const PUSH_PIECE: usize = 4 << 20;

/// One Loki stream's entries as pushes into ClickHouse. Each entry's key in
/// its stream's file is a hash of its timestamp and text (xxh3, 63 bits),
/// so the same entry pushed again (a client's retry, or the same push to
/// another replica) is the same row and folds into one, as Loki drops an
/// entry identical to one it holds. Two different entries of one stream
/// share a key with odds of about n²/2⁶⁴ (one in 18 million for a million
/// entries). Pure.
/// Also returns how many entries repeated one earlier in the same push.
pub fn push_requests(
    t: &logfleet_store::loki::Target,
    entries: Vec<(i64, String)>,
) -> Result<(Vec<PushRequest>, u64), Refused> {
    let mut keyed: Vec<(u64, i64, String)> = entries
        .into_iter()
        .map(|(ts, line)| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&ts.to_le_bytes());
            h.update(line.as_bytes());
            (h.digest() >> 1, ts, line)
        })
        .collect();
    // Offsets ascend within a range; an entry repeated within the push is
    // one entry.
    keyed.sort_by_key(|k| k.0);
    let sent = keyed.len();
    keyed.dedup_by_key(|k| k.0);
    let repeated = (sent - keyed.len()) as u64;
    let mut out = Vec::new();
    let mut rest = &keyed[..];
    while !rest.is_empty() {
        let mut size = 0usize;
        let n = rest
            .iter()
            .take_while(|k| {
                size += k.2.len();
                size <= PUSH_PIECE
            })
            .count()
            .max(1);
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        out.push(t.request(
            piece.iter().map(|(o, ts, line)| (*o, *ts, line.as_str())),
            logfleet_proto::v1::Compression::None,
            0,
        )?);
    }
    Ok((out, repeated))
}

#[async_trait::async_trait]
impl Backend for ClickHouseBackend {
    fn health(&self) -> Health {
        let problem = self.problem.lock().ok().and_then(|g| g.clone());
        match (self.store.get(), problem) {
            (Some(_), None) => Health::Ready,
            _ => Health::Unavailable(self.why_not()),
        }
    }

    async fn push(&self, req: PushRequest) -> Result<PushResponse, PushFailure> {
        let (_, writer) = self.connected().map_err(|e| PushFailure {
            kind: PushFailureKind::Unavailable,
            reason: None,
            message: e.to_string(),
        })?;
        let batches = req.ranges.len() as u64;
        match writer.push(req).await {
            Ok(n) => {
                self.inserted.inc_by(n);
                self.metrics.batches.inc_by(batches);
                self.metrics.lines.inc_by(n);
                self.set_problem(None);
                Ok(PushResponse {
                    stored_lines: n,
                    duplicate_lines: 0,
                })
            }
            Err(e) if e.is_unavailable() => {
                // Retried by the agent: not a refusal of the push.
                self.refused.inc();
                self.set_problem(Some(e.to_string()));
                Err(PushFailure {
                    kind: PushFailureKind::Unavailable,
                    reason: None,
                    message: e.to_string(),
                })
            }
            Err(e) => {
                let reason = match &e {
                    ClickHouseError::Codec(_) => "payload",
                    _ => "invalid",
                };
                Err(PushFailure {
                    kind: PushFailureKind::Invalid,
                    reason: Some(reason),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Answered once ClickHouse holds every entry; a retry of the same
    /// push stores nothing twice.
    async fn push_loki(&self, incoming: Vec<Incoming>) -> Result<(), Refused> {
        let (_, writer) = self.connected().map_err(|e| Refused {
            status: 503,
            msg: e.to_string(),
        })?;
        for s in incoming {
            let t = logfleet_store::loki::target(&s.labels)?;
            let (reqs, repeated) = push_requests(&t, s.entries)?;
            // Counted with the agents' re-sent lines, as on the embedded store.
            self.metrics.duplicate_lines.inc_by(repeated);
            for req in reqs {
                let n = writer.push(req).await.map_err(|e| Refused {
                    status: if e.is_unavailable() { 503 } else { 400 },
                    msg: e.to_string(),
                })?;
                self.metrics.lines.inc_by(n);
            }
        }
        Ok(())
    }

    async fn heartbeat(&self, hb: HeartbeatRequest) -> Result<(), QueryError> {
        if let Ok(mut m) = self.heartbeats.lock() {
            m.insert(hb.node.clone(), hb);
        }
        Ok(())
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, QueryError> {
        let (store, _) = self.connected()?;
        list_agents(store).await.map_err(query_error)
    }

    /// Streamed page by page: a result without a limit is never held whole.
    fn query(&self, q: Query, b: Bounds, ctl: Arc<Control>) -> Result<Entries, QueryError> {
        let (store, _) = self.connected()?;
        let w = sql::Window {
            from: b.from,
            to: b.to,
            limit: b.limit as u64,
            backward: b.direction == logfleet_proto::v1::Direction::Backward,
        };
        // Refuse what SQL cannot do before the stream starts.
        sql::select(store.database(), &q, w).map_err(|e| QueryError::Unsupported(e.to_string()))?;
        let mut answer = Answer::new(store, &q, w, super::PAGE);
        self.metrics.queries.inc();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                if ctl.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let item = match answer.next().await {
                    Ok(Some(entries)) => Ok(entries),
                    Ok(None) => return,
                    Err(e) => Err(query_error(e)),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Polls ClickHouse for lines that arrived since the last poll (by
    /// arrival, not by their own timestamps, so a late line stamped
    /// earlier still shows). Each poll looks back `TAIL_OVERLAP`, as
    /// inserts by other replicas may become visible out of order, and
    /// lines already sent are skipped by their identity.
    fn tail(&self, q: Query) -> Result<Entries, QueryError> {
        let (store, _) = self.connected()?;
        // Refuse what SQL cannot do before the stream starts.
        sql::arrived_since(store.database(), &q, 0, 1)
            .map_err(|e| QueryError::Unsupported(e.to_string()))?;
        let store = store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
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
                        if !fresh.is_empty() && tx.send(Ok(fresh)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(query_error(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(TAIL_POLL) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn metric(
        &self,
        m: Metric,
        steps: Steps,
        _ctl: Arc<Control>,
    ) -> Result<Value, QueryError> {
        let (store, _) = self.connected()?;
        store.metric(m, steps).await
    }

    async fn streams(
        &self,
        selectors: Vec<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, QueryError> {
        let (store, _) = self.connected()?;
        let selectors = logfleet_store::query::or_everything(selectors);
        let mut out = Vec::new();
        for q in &selectors {
            for (node, labels) in store.series(q, start, end).await.map_err(query_error)? {
                out.push(logfleet_store::labels::label_pairs(&node, &labels, 0));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Lines and bytes of text are exact (each line once); `chunks` counts
    /// stream-days, ClickHouse's nearest to chunks.
    async fn index_stats(&self, q: Query, start: i64, end: i64) -> Result<IndexStats, QueryError> {
        let (store, _) = self.connected()?;
        let [entries, bytes, streams, chunks] = store
            .index_stats(&q, start, end)
            .await
            .map_err(query_error)?;
        Ok(IndexStats {
            streams,
            chunks,
            entries,
            bytes,
        })
    }

    /// In SQL: the names of the extra labels, and the path labels when any
    /// line is in the range.
    async fn label_names(
        &self,
        selector: Option<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, QueryError> {
        let (ch, _) = self.connected()?;
        let q = selector.unwrap_or_default();
        let stmt = sql::label_names(ch.database(), &q, start, end)
            .map_err(|e| QueryError::Unsupported(e.to_string()))?;
        let mut names = ch.strings(&stmt).await.map_err(query_error)?;
        let any = sql::label_values(ch.database(), &q, "node", start, end)
            .map_err(|e| QueryError::Unsupported(e.to_string()))?;
        if !ch.strings(&any).await.map_err(query_error)?.is_empty() {
            names.extend(
                logfleet_store::labels::LABEL_NAMES
                    .iter()
                    .map(|n| n.to_string()),
            );
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// In SQL.
    async fn label_values(
        &self,
        name: String,
        selector: Option<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, QueryError> {
        let (ch, _) = self.connected()?;
        let q = selector.unwrap_or_default();
        let stmt = sql::label_values(ch.database(), &q, &name, start, end)
            .map_err(|e| QueryError::Unsupported(e.to_string()))?;
        ch.strings(&stmt).await.map_err(query_error)
    }

    async fn close(&self) {
        flush_heartbeats(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> logfleet_store::loki::Target {
        logfleet_store::loki::target(&[
            ("app".into(), "web".into()),
            ("namespace".into(), "shop".into()),
        ])
        .unwrap()
    }

    fn offsets(reqs: &[logfleet_proto::v1::PushRequest]) -> Vec<(i64, u64, Vec<u8>)> {
        reqs.iter()
            .flat_map(|r| {
                let batch =
                    logfleet_proto::decode_payload(r, logfleet_proto::Limits::default()).unwrap();
                logfleet_store::push::validate(r, &batch).unwrap();
                batch
                    .lines()
                    .map(|l| (l.ts, l.offset, l.text.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_same_entry_has_the_same_key_and_a_push_is_valid() {
        let entries = vec![
            (3, "c".to_owned()),
            (1, "a".to_owned()),
            (2, "b".to_owned()),
            (1, "a".to_owned()),
            (1, "a again".to_owned()),
        ];
        let (reqs, repeated) = push_requests(&target(), entries.clone()).unwrap();
        assert_eq!(repeated, 1);
        let first = offsets(&reqs);
        // The repeat within the push is one entry; same time, other text
        // is another.
        assert_eq!(first.len(), 4);
        // The same push again, in another order: the same keys.
        let mut again = entries;
        again.reverse();
        let mut second = offsets(&push_requests(&target(), again).unwrap().0);
        let mut f = first.clone();
        f.sort();
        second.sort();
        assert_eq!(f, second);
        // Another stream's labels: another file.
        let other = logfleet_store::loki::target(&[("app".into(), "api".into())]).unwrap();
        assert_ne!(other.file_id, target().file_id);
    }

    #[test]
    fn a_large_push_goes_in_pieces_that_each_fit() {
        let line = "x".repeat(1 << 20);
        let entries: Vec<(i64, String)> = (0..10).map(|i| (i, line.clone())).collect();
        let (reqs, _) = push_requests(&target(), entries).unwrap();
        assert!(reqs.len() >= 3, "{}", reqs.len());
        assert!(reqs
            .iter()
            .all(|r| r.raw_len <= (PUSH_PIECE + (1 << 20)) as u64));
        assert_eq!(offsets(&reqs).len(), 10);
        // One line above the piece size still goes, alone.
        let (big, _) = push_requests(&target(), vec![(1, "y".repeat(PUSH_PIECE + 1))]).unwrap();
        assert_eq!(big.len(), 1);
    }
}
