//! Loki pushes into the embedded store. Duplicates are dropped as Loki
//! drops them: the same stream, timestamp and line. Before storing, the
//! lines the store already holds for the stream in the push's time span
//! are read and matching entries skipped (under a per-stream lock, so a
//! retry racing its original cannot slip through). The lines carry no
//! file offsets, so the store assigns them, increasing per stream; the
//! push is acknowledged (204) only after the writer made it durable, like
//! every other push.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use logfleet_proto::v1::Compression;
use logfleet_store::loki::{target, Incoming, Refused, Target};

use crate::ingest::{Shared, Writer};
use crate::query::{self, Bounds, Control};

/// A stream's lock, guarding the last offset given out.
type StreamLock = Arc<tokio::sync::Mutex<u64>>;

/// Per-stream state: the lock that serialises its pushes, and the last
/// offset given out.
#[derive(Default)]
pub struct Streams {
    map: Mutex<HashMap<(String, u64), StreamLock>>,
}

impl Streams {
    fn lock_for(&self, t: &Target) -> StreamLock {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((t.node.clone(), t.file_id)).or_default().clone()
    }
}

/// The entries of `entries` the store does not hold yet for this stream
/// (same timestamp and line), nor repeated within the push.
fn new_entries(
    shared: &Shared,
    t: &Target,
    entries: Vec<(i64, String)>,
) -> Result<Vec<(i64, String)>, query::QueryError> {
    let (Some(min), Some(max)) = (
        entries.iter().map(|e| e.0).min(),
        entries.iter().map(|e| e.0).max(),
    ) else {
        return Ok(entries);
    };
    // Every label of the file, so that only its stream's blocks and chunks
    // are read (a file with more extra labels still matches: the callback
    // compares the whole label set).
    let l = &t.labels;
    let mut matchers: Vec<query::Matcher> = [
        (query::Label::Node, t.node.clone()),
        (query::Label::Namespace, l.namespace.clone()),
        (query::Label::Pod, l.pod.clone()),
        (query::Label::PodUid, l.pod_uid.clone()),
        (query::Label::Container, l.container.clone()),
        (query::Label::Restart, l.restart.to_string()),
    ]
    .into_iter()
    .map(|(label, v)| query::Matcher {
        label,
        op: query::Op::Eq(v),
    })
    .collect();
    matchers.extend(l.extra.iter().map(|x| query::Matcher {
        label: query::Label::Other(x.name.clone()),
        op: query::Op::Eq(x.value.clone()),
    }));
    let q = query::Query {
        matchers,
        ..Default::default()
    };
    let mut have: HashSet<(i64, Vec<u8>)> = HashSet::new();
    query::visit(
        shared,
        &q,
        Bounds {
            from: Some(min),
            to: Some(max.saturating_add(1)),
            limit: 0,
            direction: logfleet_proto::v1::Direction::Forward,
        },
        &Control::default(),
        &mut |v| {
            if v.info.labels == t.labels && v.line.stream == t.stream as i32 {
                have.insert((v.line.ts, v.line.text.to_vec()));
            }
            true
        },
    )?;
    Ok(entries
        .into_iter()
        .filter(|(ts, line)| have.insert((*ts, line.as_bytes().to_vec())))
        .collect())
}

fn now_ns() -> u64 {
    chrono::Utc::now()
        .timestamp_nanos_opt()
        .map_or(0, |n| n.max(0) as u64)
}

/// What a push stored and dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Lines stored.
    pub stored: u64,
    /// Lines dropped as duplicates.
    pub duplicates: u64,
}

/// Stores the streams of a push, each durably before returning.
pub async fn store(
    shared: &Arc<Shared>,
    writer: &Writer,
    streams: &Streams,
    incoming: Vec<Incoming>,
    limits: logfleet_proto::Limits,
) -> Result<Outcome, Refused> {
    let mut out = Outcome::default();
    for s in incoming {
        let t = target(&s.labels)?;
        let lock = streams.lock_for(&t);
        let mut last = lock.lock().await;
        let sent = s.entries.len() as u64;
        let shared2 = shared.clone();
        let t2 = t.clone();
        let fresh = tokio::task::spawn_blocking(move || new_entries(&shared2, &t2, s.entries))
            .await
            .map_err(|e| Refused {
                status: 500,
                msg: e.to_string(),
            })?
            .map_err(|e| Refused {
                status: 500,
                msg: e.to_string(),
            })?;
        let dropped = sent - fresh.len() as u64;
        out.duplicates += dropped;
        // Counted with the agents' re-sent lines.
        shared.metrics.duplicate_lines.inc_by(dropped);
        let mut pending = fresh;
        // Offsets: after the last given out and not before now, so that
        // after a restart they start past everything stored before. Should
        // the clock have gone back, the writer reports the lines below its
        // mark as duplicates (they are not: we removed those); they are
        // sent again further on, so none is lost.
        let mut base = (*last + 1).max(now_ns());
        let mut gap: u32 = 40;
        while !pending.is_empty() {
            let n = pending.len() as u64;
            let req = t.request(
                pending
                    .iter()
                    .enumerate()
                    .map(|(i, (ts, line))| (base + i as u64, *ts, line.as_str())),
                Compression::Zstd,
                1,
            )?;
            let r = writer.push(req, limits).await.map_err(|e| match e {
                crate::ingest::PushError::Invalid(_) | crate::ingest::PushError::Codec(_) => {
                    Refused::bad(e.to_string())
                }
                _ => Refused {
                    status: 503,
                    msg: e.to_string(),
                },
            })?;
            out.stored += r.stored_lines;
            *last = base + n - 1;
            let d = r.duplicate_lines as usize;
            if d == 0 {
                break;
            }
            // The first d fell below the stream's mark: again, past it
            // (just past this push when the rest was stored, further on
            // when nothing was).
            pending.truncate(d);
            base = if (d as u64) < n {
                base + n
            } else {
                let next = base.checked_add(1u64 << gap).ok_or_else(|| Refused {
                    status: 500,
                    msg: "no offsets left for this stream".into(),
                })?;
                gap = (gap + 1).min(62);
                next
            };
        }
    }
    Ok(out)
}
