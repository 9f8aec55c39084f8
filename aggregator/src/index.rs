//! What the aggregator knows without reading payloads: every stored block's
//! time range and labels (the label index queries prune with), each file's
//! de-duplication high-water mark, and per-agent counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use logfleet_proto::v1::{FileLabels, FileRange, LineBatch};
use serde::{Deserialize, Serialize};

use crate::store::BlockHeader;

/// A stored block, as the query planner sees it.
#[derive(Debug, Clone)]
pub struct BlockMeta {
    /// Segment sequence number.
    pub seq: u64,
    /// Record offset in the segment.
    pub offset: u64,
    /// Record length.
    pub len: u64,
    /// Smallest line timestamp.
    pub min_ts: i64,
    /// Largest line timestamp.
    pub max_ts: i64,
    /// Node.
    pub node: Arc<str>,
    /// Labels of each range, by range index.
    pub labels: Vec<FileLabels>,
    /// Lines in the block.
    pub lines: u64,
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

/// The index of everything stored.
#[derive(Debug, Default)]
pub struct Index {
    /// Blocks in storage order.
    pub blocks: Vec<Arc<BlockMeta>>,
    /// Agents by node name.
    pub agents: BTreeMap<String, AgentStats>,
}

impl Index {
    /// Adds a block to the query index.
    pub fn add_block(&mut self, seq: u64, offset: u64, len: u64, h: &BlockHeader) {
        if h.lines == 0 {
            return;
        }
        self.blocks.push(Arc::new(BlockMeta {
            seq,
            offset,
            len,
            min_ts: h.min_ts,
            max_ts: h.max_ts,
            node: Arc::from(h.node.as_str()),
            labels: h
                .ranges
                .iter()
                .map(|r| r.labels.clone().unwrap_or_default())
                .collect(),
            lines: h.lines,
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
    }
}

/// High-water marks: for each (node, file), the offset up to which the
/// file is stored.
pub type HighWater = HashMap<(String, u64), u64>;

/// Applies a stored header's ranges to the high-water marks.
pub fn advance(hwm: &mut HighWater, h: &BlockHeader) {
    for r in &h.ranges {
        let e = hwm.entry((h.node.clone(), r.file_id)).or_insert(0);
        *e = (*e).max(r.end);
    }
}

/// The outcome of de-duplicating a batch.
#[derive(Debug, PartialEq, Eq)]
pub struct Dedup {
    /// Lines to keep (all when `None`, the common case).
    pub keep: Option<Vec<bool>>,
    /// Lines dropped as already stored.
    pub duplicates: u64,
    /// Whether any range moves a high-water mark (so a record is needed
    /// even when no line is new).
    pub advances: bool,
}

/// Decides which lines of a batch are new: a line is a duplicate when its
/// offset lies below its file's high-water mark.
/// `mark` gives a file's high-water mark (0 when unknown).
pub fn dedup(mark: impl Fn(u64) -> u64, ranges: &[FileRange], batch: &LineBatch) -> Dedup {
    let marks: Vec<u64> = ranges.iter().map(|r| mark(r.file_id)).collect();
    let advances = ranges.iter().zip(&marks).any(|(r, m)| r.end > *m);
    if ranges.iter().zip(&marks).all(|(r, m)| r.start >= *m) {
        return Dedup {
            keep: None,
            duplicates: 0,
            advances,
        };
    }
    let keep: Vec<bool> = batch
        .lines()
        .map(|l| l.offset >= marks[l.range as usize])
        .collect();
    let duplicates = keep.iter().filter(|k| !**k).count() as u64;
    Dedup {
        keep: Some(keep),
        duplicates,
        advances,
    }
}

/// What `snapshot.json` holds: state of every segment up to `through`, so
/// that retention can delete old segments without losing it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last segment included.
    pub through: u64,
    /// High-water marks as (node, file id, offset).
    pub hwm: Vec<(String, u64, u64)>,
    /// Agent counters.
    pub agents: BTreeMap<String, AgentStats>,
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
        }
    }

    fn lines(offsets: &[(u32, u64)]) -> LineBatch {
        let mut b = LinesBuilder::default();
        for &(range, offset) in offsets {
            b.push(range, 0, offset, 1, 0, b"x");
        }
        b.finish()
    }

    fn marks<'a>(hwm: &'a HighWater, node: &'a str) -> impl Fn(u64) -> u64 + 'a {
        move |id| hwm.get(&(node.to_owned(), id)).copied().unwrap_or(0)
    }

    #[test]
    fn fresh_ranges_keep_everything() {
        let hwm = HighWater::new();
        let d = dedup(
            marks(&hwm, "n"),
            &[range(1, 0, 100)],
            &lines(&[(0, 0), (0, 50)]),
        );
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
        advance(&mut hwm, &h);
        // After a crash the agent re-sends from 0 with different batching.
        let b = lines(&[(0, 0), (0, 60), (0, 100), (1, 0)]);
        let d = dedup(marks(&hwm, "n"), &[range(1, 0, 150), range(2, 0, 10)], &b);
        assert_eq!(d.keep, Some(vec![false, false, true, true]));
        assert_eq!(d.duplicates, 2);
        assert!(d.advances);
        // The same file id from another node is another file.
        let d = dedup(marks(&hwm, "m"), &[range(1, 0, 100)], &lines(&[(0, 0)]));
        assert_eq!(d.keep, None);
        // Entirely old: nothing kept, nothing advanced.
        let d = dedup(marks(&hwm, "n"), &[range(1, 0, 100)], &lines(&[(0, 0)]));
        assert_eq!(d.keep, Some(vec![false]));
        assert!(!d.advances);
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
