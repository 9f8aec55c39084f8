//! Log queries over the embedded store. The language is
//! [`logfleet_logql`]'s; here a selector's labels meet stored files
//! (`node`, `namespace`, `pod`, `pod_uid`, `container`, `restart`, extra
//! labels, and `stream` per line), and [`execute`] reads the blocks the
//! label index cannot rule out, newest or oldest first, and stops as soon
//! as the limit is met and no remaining block can hold a better line.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use logfleet_proto::v1::{Direction, Entry, LineBatch};
use logfleet_proto::Line;
pub use logfleet_store::query::*;

use crate::index::{BlockMeta, Source, StreamInfo};
use crate::ingest::Shared;
use crate::store::{self, StoreError};

/// Sort key: timestamp, then storage position, so results are stable.
type Key = (i64, u64, u64, u32);

/// Whether a block's time span overlaps `b`.
fn overlaps(b: &Bounds, m: &BlockMeta) -> bool {
    b.overlaps_range(m.min_ts, m.max_ts)
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        QueryError::Failed(e.to_string())
    }
}

/// Runs a query over the store and collects the result (tests, tools).
pub fn execute(shared: &Shared, q: &Query, b: Bounds) -> Result<Vec<Entry>, QueryError> {
    let mut out = Vec::new();
    execute_into(shared, q, b, &Control::default(), &mut |e| {
        out.push(e);
        true
    })?;
    Ok(out)
}

/// A matching line as [`visit`] hands it over: no copies.
pub struct Visited<'a> {
    /// The stream's id (stable for the store's life).
    pub stream_id: u32,
    /// The stream.
    pub info: &'a StreamInfo,
    /// The line.
    pub line: &'a Line,
}

/// Hands every line that passes the selector, line filters and bounds to
/// `f`, in no particular order and without building entries (the
/// pipeline is left to `f`): what metric queries need, at the speed of a
/// scan. `f` returns false to stop.
pub fn visit(
    shared: &Shared,
    q: &Query,
    b: Bounds,
    ctl: &Control,
    f: &mut dyn FnMut(Visited<'_>) -> bool,
) -> Result<(), QueryError> {
    let Plan {
        blocks,
        chunk_files,
        streams,
        wanted,
        mut files,
    } = plan(shared, q, &b)?;
    let mut work: Vec<Work> = blocks.into_iter().map(Work::Block).collect();
    work.extend(chunk_files.into_iter().map(Work::File));
    let mut reader = store::BlockReader::new()?;
    while let Some(w) = work.pop() {
        ctl.check()?;
        let m = match w {
            Work::Block(m) => m,
            Work::File(pf) => {
                work.extend(
                    chunks_of(shared, &pf, &wanted, &b)
                        .into_iter()
                        .map(Work::Block),
                );
                continue;
            }
        };
        let Some(batch) = read_block(shared, &mut files, &mut reader, &m, q) else {
            continue;
        };
        for l in batch.lines() {
            let Some(&sid) = m.streams.get(l.range as usize) else {
                continue;
            };
            if !wanted.get(sid as usize).copied().unwrap_or(false)
                || !b.contains(l.ts)
                || !q.matches_stored(l.stream, &l.text)
            {
                continue;
            }
            let Some(info) = streams.get(sid as usize) else {
                continue;
            };
            if !f(Visited {
                stream_id: sid,
                info,
                line: &l,
            }) {
                return Err(QueryError::Cancelled);
            }
        }
    }
    Ok(())
}

/// The streams `q` selects that hold lines in `b`'s time range, from the
/// indexes alone (a chunk or block overlapping the range counts).
pub fn streams_in_range(
    shared: &Shared,
    q: &Query,
    b: Bounds,
) -> Result<Vec<Arc<StreamInfo>>, QueryError> {
    let plan = plan(shared, q, &b)?;
    let mut ids: Vec<u32> = plan
        .blocks
        .iter()
        .flat_map(|m| m.streams.iter().copied())
        .collect();
    for f in &plan.chunk_files {
        for m in chunks_of(shared, f, &plan.wanted, &b) {
            ids.extend(m.streams.iter().copied());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids
        .into_iter()
        .filter(|&id| plan.wanted.get(id as usize).copied().unwrap_or(false))
        .filter_map(|id| plan.streams.get(id as usize).cloned())
        .collect())
}

/// Estimates what `q` would read in `b`'s time range.
pub fn index_stats(shared: &Shared, q: &Query, b: Bounds) -> Result<IndexStats, QueryError> {
    let plan = plan(shared, q, &b)?;
    let mut st = IndexStats {
        streams: plan.wanted.iter().filter(|w| **w).count() as u64,
        ..Default::default()
    };
    for m in &plan.blocks {
        st.chunks += 1;
        st.entries += m.lines;
        st.bytes += m.len;
    }
    for f in &plan.chunk_files {
        let entries = match shared.fs.open(&f.path, crate::fs::Mode::Read) {
            Ok(index) => crate::chunks::read_entries(&*index, &f.path)?,
            // Deleted by retention since the plan.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(store::io_err(&f.path)(e).into()),
        };
        for e in entries {
            if e.streams
                .iter()
                .any(|s| plan.wanted.get(*s as usize).copied().unwrap_or(false))
                && b.overlaps_range(e.min_ts, e.max_ts)
            {
                st.chunks += 1;
                st.entries += e.lines;
                st.bytes += e.len;
            }
        }
    }
    Ok(st)
}

/// Runs a query over the store, handing each result line to `emit` in
/// order; `emit` returns false to stop (the client went away).
///
/// With a limit, the best `limit` lines are kept in a heap and emitted at
/// the end. Without one the result is streamed: blocks are read in time
/// order, and a line is emitted as soon as no block still to be read can
/// hold a line before it, so memory follows the overlap of blocks, not the
/// size of the result. A block that cannot be read is skipped, logged and
/// counted (`logfleet_aggregator_damaged_records_total`); the query goes on.
pub fn execute_into(
    shared: &Shared,
    q: &Query,
    b: Bounds,
    ctl: &Control,
    emit: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), QueryError> {
    let Plan {
        blocks,
        chunk_files,
        streams,
        wanted,
        mut files,
    } = plan(shared, q, &b)?;
    let backward = b.direction == Direction::Backward;
    // Work in time order (oldest first, or newest first): blocks, and chunk
    // files whose chunks are listed only when the work reaches them, so a
    // query with a limit reads the indexes of the files it needs only.
    let mut work = WorkQueue {
        items: Vec::new(),
        heap: BinaryHeap::new(),
        backward,
    };
    for m in blocks {
        work.push(Work::Block(m));
    }
    for f in chunk_files {
        work.push(Work::File(f));
    }
    let stream = b.limit == 0;
    let mut reader = store::BlockReader::new()?;
    let mut stream_labels = StreamLabels::default();
    // `fwd` pops the largest key, `bwd` the smallest. With a limit, forward
    // keeps the `limit` smallest keys in `fwd` (evicting the largest) and
    // backward the largest in `bwd`. Streaming, forward emits the smallest
    // first (from `bwd`) and backward the largest (from `fwd`).
    let mut fwd: BinaryHeap<(Key, EntryBox)> = BinaryHeap::new();
    let mut bwd: BinaryHeap<Reverse<(Key, EntryBox)>> = BinaryHeap::new();
    while let Some(w) = work.pop() {
        ctl.check()?;
        let (min_ts, max_ts) = w.bounds();
        if stream {
            // Nothing from here on can come before these: emit them.
            if backward {
                while fwd.peek().is_some_and(|(k, _)| k.0 > max_ts) {
                    let Some((_, e)) = fwd.pop() else { break };
                    if !emit(e.0) {
                        return Err(QueryError::Cancelled);
                    }
                }
            } else {
                while bwd.peek().is_some_and(|Reverse((k, _))| k.0 < min_ts) {
                    let Some(Reverse((_, e))) = bwd.pop() else {
                        break;
                    };
                    if !emit(e.0) {
                        return Err(QueryError::Cancelled);
                    }
                }
            }
        } else {
            let done = if backward {
                bwd.len() >= b.limit && bwd.peek().is_some_and(|Reverse((k, _))| max_ts < k.0)
            } else {
                fwd.len() >= b.limit && fwd.peek().is_some_and(|(k, _)| min_ts > k.0)
            };
            if done {
                break;
            }
        }
        let m = match w {
            Work::Block(m) => m,
            Work::File(f) => {
                // The file's chunks of matching streams in range, as work.
                for m in chunks_of(shared, &f, &wanted, &b) {
                    work.push(Work::Block(m));
                }
                continue;
            }
        };
        let Some(batch) = read_block(shared, &mut files, &mut reader, &m, q) else {
            continue;
        };
        let ok: Vec<bool> = m
            .streams
            .iter()
            .map(|&s| wanted.get(s as usize).copied().unwrap_or(false))
            .collect();
        for (i, l) in batch.lines().enumerate() {
            if !ok.get(l.range as usize).copied().unwrap_or(false)
                || !b.contains(l.ts)
                || !q.matches_stored(l.stream, &l.text)
            {
                continue;
            }
            let Some((sid, info)) = m
                .streams
                .get(l.range as usize)
                .and_then(|&s| streams.get(s as usize).map(|i| (s, i)))
            else {
                continue;
            };
            let key = (l.ts, m.seq, m.offset, i as u32);
            // The pipeline may drop the line; it runs only for lines that
            // could be in the result.
            let mut pipe = || {
                if q.pipeline.is_empty() {
                    Ok(None)
                } else {
                    let labels = stream_labels.get(sid, info, l.stream);
                    q.pipeline.process(labels, &l.text).map(Some).ok_or(())
                }
            };
            if stream {
                let Ok(piped) = pipe() else { continue };
                let e = EntryBox(entry_piped(&info.node, &info.labels, &l, piped));
                if backward {
                    fwd.push((key, e));
                } else {
                    bwd.push(Reverse((key, e)));
                }
                continue;
            }
            // With a limit, skip building entries that cannot make the cut.
            let worse = if backward {
                bwd.len() >= b.limit && bwd.peek().is_some_and(|Reverse((k, _))| key < *k)
            } else {
                fwd.len() >= b.limit && fwd.peek().is_some_and(|(k, _)| key > *k)
            };
            if worse {
                continue;
            }
            let Ok(piped) = pipe() else { continue };
            let e = EntryBox(entry_piped(&info.node, &info.labels, &l, piped));
            if backward {
                bwd.push(Reverse((key, e)));
                if bwd.len() > b.limit {
                    bwd.pop();
                }
            } else {
                fwd.push((key, e));
                if fwd.len() > b.limit {
                    fwd.pop();
                }
            }
        }
    }
    shared.metrics.queries.inc();
    // What is left, in order: streaming, the tail of the merge; with a
    // limit, the kept lines.
    let rest: Vec<Entry> = if backward == stream {
        // Forward-with-limit or backward-streaming: `fwd` holds them.
        let mut v = fwd.into_sorted_vec();
        if backward {
            v.reverse();
        }
        v.into_iter().map(|(_, e)| e.0).collect()
    } else {
        let mut v: Vec<_> = bwd.into_iter().map(|Reverse(x)| x).collect();
        v.sort_by_key(|e| e.0);
        if backward {
            v.reverse();
        }
        v.into_iter().map(|(_, e)| e.0).collect()
    };
    for e in rest {
        if !emit(e) {
            return Err(QueryError::Cancelled);
        }
    }
    Ok(())
}

/// A chunk file a query may need; its index is read when the query's
/// work reaches it.
struct PendingFile {
    seq: u64,
    min_ts: i64,
    max_ts: i64,
    path: std::path::PathBuf,
}

/// The chunks of a chunk file that hold matching streams in range. A file
/// whose index cannot be read is skipped, logged and counted.
fn chunks_of(shared: &Shared, f: &PendingFile, wanted: &[bool], b: &Bounds) -> Vec<Arc<BlockMeta>> {
    let entries = match shared.fs.open(&f.path, crate::fs::Mode::Read) {
        Ok(index) => crate::chunks::read_entries(&*index, &f.path),
        // Deleted by retention since the plan: nothing to read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => Err(store::io_err(&f.path)(e)),
    };
    match entries {
        Ok(entries) => entries
            .into_iter()
            .filter(|e| {
                e.streams
                    .iter()
                    .any(|s| wanted.get(*s as usize).copied().unwrap_or(false))
                    && b.overlaps_range(e.min_ts, e.max_ts)
            })
            .map(|e| {
                Arc::new(BlockMeta {
                    source: Source::Chunk,
                    seq: f.seq,
                    offset: e.offset,
                    len: e.len,
                    min_ts: e.min_ts,
                    max_ts: e.max_ts,
                    streams: e.streams,
                    lines: e.lines,
                    received: e.received,
                })
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "skipping a chunk file whose index cannot be read");
            shared.metrics.damaged_records.inc();
            Vec::new()
        }
    }
}

/// Reads a block's lines, unless the `|=` prefilter rules it out, its
/// file is gone (deleted by retention before we planned), or it cannot be
/// read (skipped, logged and counted).
fn read_block(
    shared: &Shared,
    files: &mut OpenFiles,
    reader: &mut store::BlockReader,
    m: &BlockMeta,
    q: &Query,
) -> Option<LineBatch> {
    let (file, path) = files.get(shared, m.source, m.seq)?;
    match reader.read_if(&**file, path, m.offset, m.len, |raw| q.may_match(raw)) {
        Ok(Some((_, b))) => Some(b),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "skipping a stored block that cannot be read");
            shared.metrics.damaged_records.inc();
            None
        }
    }
}

/// A unit of a query's work.
enum Work {
    /// A block or chunk to read.
    Block(Arc<BlockMeta>),
    /// A chunk file whose chunks are not listed yet.
    File(PendingFile),
}

impl Work {
    fn bounds(&self) -> (i64, i64) {
        match self {
            Work::Block(m) => (m.min_ts, m.max_ts),
            Work::File(f) => (f.min_ts, f.max_ts),
        }
    }
}

/// Work in time order: by smallest `min_ts` forward, by largest `max_ts`
/// backward, ties in the order pushed. A file's chunks lie within its
/// bounds, so expanding a file never yields work that should have come
/// before it.
struct WorkQueue {
    items: Vec<Option<Work>>,
    heap: BinaryHeap<Reverse<(i128, usize)>>,
    backward: bool,
}

impl WorkQueue {
    fn push(&mut self, w: Work) {
        let (lo, hi) = w.bounds();
        let key = if self.backward {
            -(hi as i128)
        } else {
            lo as i128
        };
        self.heap.push(Reverse((key, self.items.len())));
        self.items.push(Some(w));
    }

    fn pop(&mut self) -> Option<Work> {
        let Reverse((_, i)) = self.heap.pop()?;
        self.items.get_mut(i)?.take()
    }
}

/// What a query reads, decided under the index lock.
struct Plan {
    /// Push-log blocks that may hold matching lines.
    blocks: Vec<Arc<BlockMeta>>,
    /// Chunk files in the time range.
    chunk_files: Vec<PendingFile>,
    /// Every stream, by id.
    streams: Vec<Arc<StreamInfo>>,
    /// Whether each stream matches the selector.
    wanted: Vec<bool>,
    /// The files, opened while the index still named them, so that a
    /// compaction or retention that deletes one cannot take it from us.
    files: OpenFiles,
}

/// Chunk data files one query holds open at most: a query over a long
/// range once held two descriptors for every chunk file in it, and EMFILE
/// then reached seals, snapshots and the compactor.
pub const MAX_OPEN_CHUNK_FILES: usize = 32;

/// Files a query holds open, by source and sequence number. Segments are
/// opened at planning, under the index lock, because compaction replaces
/// them (a segment opened later could be gone while its chunk file is not
/// in the plan); chunk files are never replaced, only deleted by retention,
/// so they are opened when first read, at most [`MAX_OPEN_CHUNK_FILES`] at
/// once.
#[derive(Default)]
struct OpenFiles {
    map: HashMap<(Source, u64), (Arc<dyn crate::fs::FsFile>, std::path::PathBuf)>,
    /// Open chunk files, oldest opened first.
    chunks: std::collections::VecDeque<u64>,
}

impl OpenFiles {
    fn get(
        &mut self,
        shared: &Shared,
        source: Source,
        seq: u64,
    ) -> Option<&(Arc<dyn crate::fs::FsFile>, std::path::PathBuf)> {
        if source == Source::Chunk && !self.map.contains_key(&(source, seq)) {
            let path = crate::chunks::data_path(&shared.chunks_dir, seq);
            let file = match shared.fs.open(&path, crate::fs::Mode::Read) {
                Ok(f) => f,
                // Gone: deleted by retention since the plan.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                // Said and counted, as an unreadable block is: the answer
                // lacks these lines.
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "skipping a chunk file that cannot be opened");
                    shared.metrics.damaged_records.inc();
                    return None;
                }
            };
            if self.chunks.len() >= MAX_OPEN_CHUNK_FILES {
                if let Some(old) = self.chunks.pop_front() {
                    self.map.remove(&(Source::Chunk, old));
                }
            }
            self.chunks.push_back(seq);
            self.map.insert((source, seq), (file, path));
        }
        self.map.get(&(source, seq))
    }
}

/// Selects streams by the selector, then the push-log blocks and the
/// chunks of compacted files that hold them in the time range.
fn plan(shared: &Shared, q: &Query, b: &Bounds) -> Result<Plan, QueryError> {
    let mut files = OpenFiles::default();
    let mut open = |source: Source, seq: u64, path: std::path::PathBuf| -> Result<(), QueryError> {
        if let std::collections::hash_map::Entry::Vacant(v) = files.map.entry((source, seq)) {
            match shared.fs.open(&path, crate::fs::Mode::Read) {
                Ok(f) => {
                    v.insert((f, path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(store::io_err(&path)(e).into()),
            }
        }
        Ok(())
    };
    let unavailable = || QueryError::Parse {
        pos: 0,
        msg: "index unavailable".into(),
    };
    let (blocks, streams, wanted, chunk_files) = {
        let ix = shared.index.read().map_err(|_| unavailable())?;
        let streams: Vec<Arc<StreamInfo>> = ix.streams.all().to_vec();
        let wanted: Vec<bool> = streams
            .iter()
            .map(|s| q.matches_file(&s.node, &s.labels))
            .collect();
        let is_wanted = |s: &u32| wanted.get(*s as usize).copied().unwrap_or(false);
        let blocks: Vec<Arc<BlockMeta>> = ix
            .blocks
            .iter()
            .filter(|m| overlaps(b, m) && m.streams.iter().any(is_wanted))
            .cloned()
            .collect();
        let chunk_files: Vec<(u64, i64, i64)> = ix
            .chunk_files
            .values()
            .filter(|c| b.overlaps_range(c.min_ts, c.max_ts))
            .map(|c| (c.seq, c.min_ts, c.max_ts))
            .collect();
        for m in &blocks {
            open(
                Source::Segment,
                m.seq,
                store::segment_path(&shared.segments_dir, m.seq),
            )?;
        }
        let indexes: Vec<PendingFile> = chunk_files
            .iter()
            .map(|&(seq, min_ts, max_ts)| PendingFile {
                seq,
                min_ts,
                max_ts,
                path: crate::chunks::index_path(&shared.chunks_dir, seq),
            })
            .collect();
        (blocks, streams, wanted, indexes)
    };
    Ok(Plan {
        blocks,
        chunk_files,
        streams,
        wanted,
        files,
    })
}

/// Entries compare equal: ordering is by key only.
#[derive(Debug)]
struct EntryBox(Entry);
impl PartialEq for EntryBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EntryBox {}
impl PartialOrd for EntryBox {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for EntryBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
