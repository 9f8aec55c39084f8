//! What the aggregator knows without reading payloads: the streams (one
//! label set each), the blocks of the push log not yet compacted, the
//! compacted chunk files (time range and the streams they hold), each
//! file's de-duplication mark, and per-agent counters.
//!
//! Memory follows streams, not pushes or retained data: a block is held
//! only until its segment is compacted into stream-shaped chunks, and a
//! chunk file is held as its time range (a few dozen bytes); its chunks are
//! read from its index file when a query reaches it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use logfleet_proto::v1::{FileLabels, FileRange, LineBatch};
use serde::{Deserialize, Serialize};

use crate::store::{BlockHeader, RangeAhead};

pub use logfleet_store::labels::StreamInfo;

fn stream_hash(node: &str, l: &FileLabels) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        node,
        &l.namespace,
        &l.pod,
        &l.pod_uid,
        &l.container,
        l.restart,
        &l.extra,
    )
        .hash(&mut h);
    h.finish()
}

/// Every stream, by dense id (the position in `list`).
#[derive(Debug, Default)]
pub struct Streams {
    list: Vec<Arc<StreamInfo>>,
    by_hash: HashMap<u64, Vec<u32>>,
    /// Ids below this are in `streams.log`.
    pub persisted: usize,
}

impl Streams {
    /// The id of a stream, added if new.
    pub fn intern(&mut self, node: &str, labels: &FileLabels) -> u32 {
        let h = stream_hash(node, labels);
        if let Some(ids) = self.by_hash.get(&h) {
            for &id in ids {
                let s = &self.list[id as usize];
                if &*s.node == node && s.labels == *labels {
                    return id;
                }
            }
        }
        let id = self.list.len() as u32;
        self.list.push(Arc::new(StreamInfo {
            node: Arc::from(node),
            labels: labels.clone(),
        }));
        self.by_hash.entry(h).or_default().push(id);
        id
    }

    /// Adds a stream loaded from `streams.log` at the next id, as it is
    /// there. A `placeholder` (a damaged record's id) is not found by
    /// [`Streams::intern`]: new streams get ids of their own.
    pub fn push_loaded(&mut self, s: StreamInfo, placeholder: bool) {
        let id = self.list.len() as u32;
        if !placeholder {
            self.by_hash
                .entry(stream_hash(&s.node, &s.labels))
                .or_default()
                .push(id);
        }
        self.list.push(Arc::new(s));
    }

    /// A stream by id.
    pub fn get(&self, id: u32) -> Option<&Arc<StreamInfo>> {
        self.list.get(id as usize)
    }

    /// Every stream, by id.
    pub fn all(&self) -> &[Arc<StreamInfo>] {
        &self.list
    }

    /// Number of streams.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Where a block's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A record of the push log (`segments/<seq>.seg`).
    Segment,
    /// A chunk of a compacted file (`chunks/<seq>.data`).
    Chunk,
}

/// A stored block (a push, or a compacted chunk of one stream), as the
/// query planner sees it.
#[derive(Debug, Clone)]
pub struct BlockMeta {
    /// Push log segment, or chunk file.
    pub source: Source,
    /// Segment (or chunk file) sequence number.
    pub seq: u64,
    /// Record offset in the file.
    pub offset: u64,
    /// Record length.
    pub len: u64,
    /// Smallest line timestamp.
    pub min_ts: i64,
    /// Largest line timestamp.
    pub max_ts: i64,
    /// Stream of each range, by range index (a chunk has one).
    pub streams: Vec<u32>,
    /// Lines in the block.
    pub lines: u64,
    /// When the aggregator received it (a chunk: its newest push), ns.
    pub received: i64,
}

/// A compacted chunk file, as held in memory: enough to tell whether a
/// query needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkFile {
    /// The segment it was compacted from.
    pub seq: u64,
    /// Smallest line timestamp.
    pub min_ts: i64,
    /// Largest line timestamp.
    pub max_ts: i64,
    /// What retention judges it by (see [`BlockMeta::retention_ts`]).
    pub retention_ts: i64,
    /// Number of streams it holds (their ids are in its index file: kept
    /// here they would make memory grow with every file retained).
    pub streams: usize,
}

impl BlockMeta {
    /// The time retention judges the block by: its newest line, but never
    /// later than when it arrived. A line stamped in the future (clock skew,
    /// or a crafted push) must not keep its segment, and everything stored
    /// after it, from ever aging out.
    pub fn retention_ts(&self) -> i64 {
        self.max_ts.min(self.received)
    }
}

/// Counters of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    /// First stored push, ns since epoch.
    pub first_push: i64,
    /// Latest push, ns since epoch.
    pub last_push: i64,
    /// Lines stored.
    pub lines: u64,
    /// Bytes of line text stored.
    pub bytes: u64,
}

/// What an agent said of itself in its latest heartbeat, and when it was
/// last in touch. Kept in memory only: it is about now, not about the data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Latest contact of any kind (push or heartbeat), ns since epoch.
    pub last_seen: i64,
    /// The latest heartbeat, if one arrived since start-up.
    pub heartbeat: Option<logfleet_proto::v1::HeartbeatRequest>,
}

/// The index of everything stored.
#[derive(Debug, Default)]
pub struct Index {
    /// Every stream.
    pub streams: Streams,
    /// Blocks of the push log not yet compacted, in storage order.
    pub blocks: Vec<Arc<BlockMeta>>,
    /// Compacted chunk files by sequence number.
    pub chunk_files: BTreeMap<u64, Arc<ChunkFile>>,
    /// Agents by node name.
    pub agents: BTreeMap<String, AgentStats>,
    /// Agents' liveness by node name.
    pub live: BTreeMap<String, Liveness>,
}

impl Index {
    /// Adds a block to the query index.
    pub fn add_block(&mut self, seq: u64, offset: u64, len: u64, h: &BlockHeader) {
        if h.lines == 0 {
            return;
        }
        let streams = h
            .ranges
            .iter()
            .map(|r| {
                self.streams
                    .intern(&h.node, r.labels.as_ref().unwrap_or(&FileLabels::default()))
            })
            .collect();
        self.blocks.push(Arc::new(BlockMeta {
            source: Source::Segment,
            seq,
            offset,
            len,
            min_ts: h.min_ts,
            max_ts: h.max_ts,
            streams,
            lines: h.lines,
            received: h.received_unix_nano,
        }));
    }

    /// Counts a stored block for its agent.
    pub fn count(&mut self, h: &BlockHeader) {
        let a = self.agents.entry(h.node.clone()).or_default();
        if a.first_push == 0 || h.received_unix_nano < a.first_push {
            a.first_push = h.received_unix_nano;
        }
        a.last_push = a.last_push.max(h.received_unix_nano);
        a.lines += h.lines;
        a.bytes += h.text_bytes;
    }

    /// Notes a push that stored nothing new.
    pub fn touch(&mut self, node: &str, now: i64) {
        if let Some(a) = self.agents.get_mut(node) {
            a.last_push = a.last_push.max(now);
        }
        self.seen(node, now);
    }

    /// Notes contact from an agent.
    pub fn seen(&mut self, node: &str, now: i64) {
        match self.live.get_mut(node) {
            Some(l) => l.last_seen = l.last_seen.max(now),
            None => {
                self.live.insert(
                    node.to_owned(),
                    Liveness {
                        last_seen: now,
                        heartbeat: None,
                    },
                );
            }
        }
    }

    /// Records a heartbeat received at `now`.
    pub fn heartbeat(&mut self, hb: logfleet_proto::v1::HeartbeatRequest, now: i64) {
        let node = hb.node.clone();
        self.seen(&node, now);
        if let Some(l) = self.live.get_mut(&node) {
            l.heartbeat = Some(hb);
        }
    }
}

/// What the aggregator has stored of one file: every line that starts
/// below `end`, plus the lines at the offsets in `ahead`.
///
/// `ahead` holds lines stored past the file's range end: complete lines of
/// one stream that the agent sent while a partial line of the other stream
/// was still open before them. The agent's checkpoint cannot pass the open
/// line, so after a crash it reads those lines again; this is what
/// recognises them. The set empties as `end` moves past it (the open line
/// completes or times out within the agent's partial timeout), so it stays
/// small.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    /// Every line starting below this offset is stored.
    pub end: u64,
    /// Offsets at or past `end` of lines stored, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead: Vec<u64>,
    /// The newest segment holding data of this file: when retention deletes
    /// that segment the mark goes too.
    #[serde(default)]
    pub seq: u64,
}

/// The mark of a file nothing of which is stored.
pub static NO_MARK: FileMark = FileMark {
    end: 0,
    ahead: Vec::new(),
    seq: 0,
};

impl FileMark {
    /// Whether the line starting at `offset` is stored.
    pub fn has(&self, offset: u64) -> bool {
        offset < self.end || self.ahead.binary_search(&offset).is_ok()
    }

    /// Whether any line at or past `start` might be stored.
    fn anything_from(&self, start: u64) -> bool {
        start < self.end || self.ahead.last().is_some_and(|&a| a >= start)
    }

    /// Applies a stored range that ends at `end` and stored lines at the
    /// offsets `stored_ahead` (at or past `end`), in segment `seq`.
    pub fn apply(&mut self, end: u64, stored_ahead: &[u64], seq: u64) {
        self.end = self.end.max(end);
        if !stored_ahead.is_empty() {
            self.ahead.extend_from_slice(stored_ahead);
            self.ahead.sort_unstable();
            self.ahead.dedup();
        }
        let keep_from = self.ahead.partition_point(|&a| a < self.end);
        self.ahead.drain(..keep_from);
        self.seq = self.seq.max(seq);
    }
}

/// De-duplication state: for each (node, file), what is stored.
pub type HighWater = HashMap<(String, u64), FileMark>;

/// Applies a stored header (in segment `seq`) to the marks.
pub fn advance(hwm: &mut HighWater, h: &BlockHeader, seq: u64) {
    for (i, r) in h.ranges.iter().enumerate() {
        let ahead = h
            .ahead
            .iter()
            .find(|a| a.range as usize == i)
            .map_or(&[][..], |a| &a.offsets[..]);
        hwm.entry((h.node.clone(), r.file_id))
            .or_default()
            .apply(r.end, ahead, seq);
    }
}

/// The outcome of de-duplicating a batch.
#[derive(Debug, PartialEq, Eq)]
pub struct Dedup {
    /// Lines to keep (all when `None`, the common case).
    pub keep: Option<Vec<bool>>,
    /// Lines dropped as already stored.
    pub duplicates: u64,
    /// Whether any range moves a mark (so a record is needed even when no
    /// line is new).
    pub advances: bool,
}

/// Decides which lines of a batch are new: a line is a duplicate when its
/// file's mark already has it. `marks[i]` is the mark of `ranges[i]`'s file.
pub fn dedup(marks: &[&FileMark], ranges: &[FileRange], batch: &LineBatch) -> Dedup {
    let advances = ranges.iter().zip(marks).any(|(r, m)| r.end > m.end);
    if ranges
        .iter()
        .zip(marks)
        .all(|(r, m)| !m.anything_from(r.start))
    {
        return Dedup {
            keep: None,
            duplicates: 0,
            advances,
        };
    }
    let keep: Vec<bool> = batch
        .lines()
        .map(|l| !marks[l.range as usize].has(l.offset))
        .collect();
    let duplicates = keep.iter().filter(|k| !**k).count() as u64;
    Dedup {
        // Nothing dropped: the batch is stored as it came (an agent's zstd
        // payload without a second compression), as in the fast path. Lines
        // past a range's end (multi-line records, partial lines) make the
        // next batch of the file take this path every time.
        keep: (duplicates > 0).then_some(keep),
        duplicates,
        advances,
    }
}

/// Offsets of the lines of `batch` that lie at or past their range's end,
/// per range: what a stored block adds to its files' `ahead` sets.
pub fn lines_ahead(ranges: &[FileRange], batch: &LineBatch) -> Vec<RangeAhead> {
    let mut out: Vec<RangeAhead> = Vec::new();
    if ranges.iter().all(|r| r.lines_end <= r.end) {
        return out;
    }
    for l in batch.lines() {
        let Some(r) = ranges.get(l.range as usize) else {
            continue;
        };
        if l.offset < r.end {
            continue;
        }
        match out.iter_mut().find(|a| a.range == l.range) {
            Some(a) => a.offsets.push(l.offset),
            None => out.push(RangeAhead {
                range: l.range,
                offsets: vec![l.offset],
            }),
        }
    }
    out
}

/// What `snapshot.json` holds: state of every segment up to `through`, so
/// that retention can delete old segments without losing it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last segment included.
    pub through: u64,
    /// Marks as (node, file id, end) from versions before `marks`; read,
    /// never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hwm: Vec<(String, u64, u64)>,
    /// Marks as (node, file id, mark).
    #[serde(default)]
    pub marks: Vec<(String, u64, FileMark)>,
    /// Agent counters.
    pub agents: BTreeMap<String, AgentStats>,
}

impl Snapshot {
    /// The marks it holds, in either form.
    pub fn high_water(&self) -> HighWater {
        let old = self.hwm.iter().map(|(n, id, end)| {
            (
                (n.clone(), *id),
                FileMark {
                    end: *end,
                    ahead: Vec::new(),
                    seq: self.through,
                },
            )
        });
        let new = self
            .marks
            .iter()
            .map(|(n, id, m)| ((n.clone(), *id), m.clone()));
        old.chain(new).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logfleet_proto::LinesBuilder;

    fn range(id: u64, start: u64, end: u64) -> FileRange {
        FileRange {
            file_id: id,
            start,
            end,
            labels: None,
            lines_end: 0,
        }
    }

    fn lines(offsets: &[(u32, u64)]) -> LineBatch {
        let mut b = LinesBuilder::default();
        for &(range, offset) in offsets {
            b.push(range, 0, offset, 1, 0, b"x");
        }
        b.finish()
    }

    fn marks<'a>(hwm: &'a HighWater, node: &str, ranges: &[FileRange]) -> Vec<&'a FileMark> {
        ranges
            .iter()
            .map(|r| hwm.get(&(node.to_owned(), r.file_id)).unwrap_or(&NO_MARK))
            .collect()
    }

    #[test]
    fn fresh_ranges_keep_everything() {
        let hwm = HighWater::new();
        let r = [range(1, 0, 100)];
        let d = dedup(&marks(&hwm, "n", &r), &r, &lines(&[(0, 0), (0, 50)]));
        assert_eq!(
            d,
            Dedup {
                keep: None,
                duplicates: 0,
                advances: true
            }
        );
    }

    #[test]
    fn resent_overlap_drops_only_stored_lines() {
        let mut hwm = HighWater::new();
        let h = BlockHeader {
            node: "n".into(),
            ranges: vec![range(1, 0, 100)],
            ..Default::default()
        };
        advance(&mut hwm, &h, 1);
        // After a crash the agent re-sends from 0 with different batching.
        let b = lines(&[(0, 0), (0, 60), (0, 100), (1, 0)]);
        let r = [range(1, 0, 150), range(2, 0, 10)];
        let d = dedup(&marks(&hwm, "n", &r), &r, &b);
        assert_eq!(d.keep, Some(vec![false, false, true, true]));
        assert_eq!(d.duplicates, 2);
        assert!(d.advances);
        // The same file id from another node is another file.
        let r = [range(1, 0, 100)];
        let d = dedup(&marks(&hwm, "m", &r), &r, &lines(&[(0, 0)]));
        assert_eq!(d.keep, None);
        // Entirely old: nothing kept, nothing advanced.
        let d = dedup(&marks(&hwm, "n", &r), &r, &lines(&[(0, 0)]));
        assert_eq!(d.keep, Some(vec![false]));
        assert!(!d.advances);
    }

    /// CRI-O: `stdout P` at 60, then `stderr F` at 115 while the partial
    /// is open. The batch's range ends at 60 (the checkpoint cannot pass the
    /// open line) but carries the stderr line; after a crash the agent
    /// re-reads from 60 and sends the stderr line again with the merged
    /// stdout line.
    #[test]
    fn lines_ahead_of_an_open_partial_are_recognised_when_re_sent() {
        let mut hwm = HighWater::new();
        let mut first = range(7, 60, 60);
        first.lines_end = 116;
        let b = lines(&[(0, 115)]);
        let ahead = lines_ahead(std::slice::from_ref(&first), &b);
        assert_eq!(
            ahead,
            vec![RangeAhead {
                range: 0,
                offsets: vec![115]
            }]
        );
        let h = BlockHeader {
            node: "n".into(),
            ranges: vec![first],
            ahead,
            ..Default::default()
        };
        advance(&mut hwm, &h, 3);
        let m = &hwm[&("n".to_owned(), 7)];
        assert_eq!((m.end, &m.ahead[..], m.seq), (60, &[115][..], 3));
        // The re-read: the merged stdout line (60) is new, stderr (115) is not.
        let r = [range(7, 60, 200)];
        let d = dedup(
            &marks(&hwm, "n", &r),
            &r,
            &lines(&[(0, 60), (0, 115), (0, 150)]),
        );
        assert_eq!(d.keep, Some(vec![true, false, true]));
        // The next batch of the same file, new lines only: kept as it came.
        let r2 = [range(7, 60, 200)];
        let d = dedup(&marks(&hwm, "n", &r2), &r2, &lines(&[(0, 60), (0, 150)]));
        assert_eq!((d.keep, d.duplicates), (None, 0));
        // Once the end passes them, the ahead offsets are forgotten.
        advance(
            &mut hwm,
            &BlockHeader {
                node: "n".into(),
                ranges: vec![range(7, 60, 200)],
                ..Default::default()
            },
            4,
        );
        let m = &hwm[&("n".to_owned(), 7)];
        assert_eq!((m.end, m.ahead.len(), m.seq), (200, 0, 4));
    }

    #[test]
    fn old_snapshots_still_load() {
        let snap: Snapshot =
            serde_json::from_str(r#"{"through":4,"hwm":[["n",7,100]],"agents":{}}"#).unwrap();
        let hw = snap.high_water();
        assert_eq!(hw[&("n".to_owned(), 7)].end, 100);
        assert!(hw[&("n".to_owned(), 7)].has(99) && !hw[&("n".to_owned(), 7)].has(100));
    }

    #[test]
    fn agent_counters() {
        let mut ix = Index::default();
        for (t, n) in [(5, 2), (3, 1)] {
            ix.count(&BlockHeader {
                node: "a".into(),
                received_unix_nano: t,
                lines: n,
                text_bytes: n * 10,
                ..Default::default()
            });
        }
        ix.touch("a", 9);
        ix.touch("nobody", 9);
        assert_eq!(
            ix.agents["a"],
            AgentStats {
                first_push: 3,
                last_push: 9,
                lines: 3,
                bytes: 30
            }
        );
        assert_eq!(ix.agents.len(), 1);
    }
}
