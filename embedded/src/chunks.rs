//! Compacted storage: a sealed segment of the push log, whose pushes are
//! small and interleave every stream, is rewritten as chunks of one stream
//! each, and the segment is deleted.
//!
//! ```text
//! data-dir/
//!   streams.log                 stream id -> node and labels, appended
//!   chunks/<seq>.data           chunk records (the segments' framing; one
//!                               stream's lines each, zstd)
//!   chunks/<seq>.index          u32 summary length | Summary | Entries
//! ```
//! A chunk file is complete when its index exists: both are written under
//! temporary names, fsynced and renamed data first, index last; only then
//! is the segment deleted. At start-up a chunk file without an index is
//! removed (its segment is still there), and a segment whose chunk file is
//! complete is removed (the crash came between the two). De-duplication is
//! untouched: only segments the snapshot already covers are compacted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use logfleet_proto::v1::{FileLabels, FileRange, LineBatch};
use logfleet_proto::LinesBuilder;
use prost::Message;

use crate::fs::{Fs, FsFile, Mode};
use crate::index::{BlockMeta, StreamInfo};
use crate::store::{self, io_err, BlockHeader, StoreError};

/// A chunk is cut at this much line text: large enough that a scan runs at
/// the speed of large pushes, small enough that a query for the newest
/// lines of a stream reads little. Streams with less than this in a
/// compaction share records of about this size, one range each: a frame
/// per quiet stream would make scans pay a zstd frame per few lines and
/// compress worse.
pub const CHUNK_TEXT: usize = 1 << 20;
/// Line text held while compacting, over all streams, before the largest
/// partial chunks are cut early.
pub const MAX_BUFFERED: usize = 64 << 20;

/// A pushed block whose record is at least this large (compressed) is
/// already the size of a chunk: compaction copies its bytes as they are
/// instead of decompressing and regrouping them, so large pushes cost no
/// second compression.
pub const COPY_RECORD: u64 = 64 << 10;

/// What start-up and planning need of a chunk file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// Smallest line timestamp.
    #[prost(int64, tag = "1")]
    pub min_ts: i64,
    /// Largest line timestamp.
    #[prost(int64, tag = "2")]
    pub max_ts: i64,
    /// What retention judges the file by.
    #[prost(int64, tag = "3")]
    pub retention_ts: i64,
    /// Lines.
    #[prost(uint64, tag = "4")]
    pub lines: u64,
    /// Stream ids held, ascending.
    #[prost(uint32, repeated, tag = "5")]
    pub streams: Vec<u32>,
}

/// One chunk record: the lines of one stream, or of a run of streams
/// whose lines were few (range `i` of the record is `streams[i]`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// Stream ids, by range index.
    #[prost(uint32, repeated, tag = "8")]
    pub streams: Vec<u32>,
    /// Record offset in the data file.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// Record length.
    #[prost(uint64, tag = "3")]
    pub len: u64,
    /// Smallest line timestamp.
    #[prost(int64, tag = "4")]
    pub min_ts: i64,
    /// Largest line timestamp.
    #[prost(int64, tag = "5")]
    pub max_ts: i64,
    /// Lines.
    #[prost(uint64, tag = "6")]
    pub lines: u64,
    /// Newest push it holds, ns.
    #[prost(int64, tag = "7")]
    pub received: i64,
}

/// The chunks of a file, by stream then time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entries {
    /// Chunks.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

/// A stream as `streams.log` holds it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRecord {
    /// Id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Node.
    #[prost(string, tag = "2")]
    pub node: String,
    /// Labels.
    #[prost(message, optional, tag = "3")]
    pub labels: Option<FileLabels>,
}

/// Directory of the chunk files.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("chunks")
}

/// Data file of chunk file `seq`.
pub fn data_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.data"))
}

/// Index file of chunk file `seq`.
pub fn index_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.index"))
}

/// Sequence numbers of the complete chunk files; removes incomplete ones
/// (and temporary files) left by a crash.
pub fn recover(fs: &dyn Fs, dir: &Path) -> Result<Vec<u64>, StoreError> {
    fs.create_dir_all(dir).map_err(io_err(dir))?;
    let mut complete = Vec::new();
    let mut data = Vec::new();
    let mut removed = false;
    for name in fs.read_dir(dir).map_err(io_err(dir))? {
        let seq = name.split('.').next().and_then(|s| s.parse::<u64>().ok());
        match (seq, name.rsplit('.').next()) {
            (Some(seq), Some("index")) => complete.push(seq),
            (Some(seq), Some("data")) => data.push(seq),
            // Set aside: kept for whoever repairs them.
            (_, Some("bad")) => {}
            _ => {
                // *.tmp: a compaction that did not finish.
                let _ = fs.remove_file(&dir.join(&name));
                removed = true;
            }
        }
    }
    for seq in &data {
        if !complete.contains(seq) {
            let p = data_path(dir, *seq);
            tracing::info!(file = %p.display(), "removing an unfinished compaction");
            fs.remove_file(&p).map_err(io_err(&p))?;
            removed = true;
        }
    }
    // An index without its data: retention deletes the index first, so
    // this is no crash of ours; the file cannot be served.
    complete.retain(|seq| {
        if data.contains(seq) {
            return true;
        }
        tracing::error!(seq, "a chunk index without its data file; setting it aside");
        let _ = quarantine(fs, dir, *seq);
        false
    });
    if removed {
        store::sync_dir(fs, dir)?;
    }
    complete.sort_unstable();
    Ok(complete)
}

/// Sets chunk file `seq` aside as `<seq>.data.bad` and `<seq>.index.bad`:
/// kept for inspection, no longer loaded.
pub fn quarantine(fs: &dyn Fs, dir: &Path, seq: u64) -> Result<(), StoreError> {
    for p in [index_path(dir, seq), data_path(dir, seq)] {
        let bad = PathBuf::from(format!("{}.bad", p.display()));
        match fs.rename(&p, &bad) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    store::sync_dir(fs, dir)
}

/// The chunk files set aside as unreadable (`*.bad`), by sequence number.
pub fn quarantined(fs: &dyn Fs, dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs: Vec<u64> = fs
        .read_dir(dir)
        .map_err(io_err(dir))?
        .iter()
        .filter_map(|n| n.strip_suffix(".bad"))
        .filter_map(|n| n.split('.').next()?.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    Ok(seqs)
}

/// Reads the summary at the head of an index file.
pub fn read_summary(fs: &dyn Fs, path: &Path) -> Result<Summary, StoreError> {
    let f = fs.open(path, Mode::Read).map_err(io_err(path))?;
    let mut len = [0u8; 4];
    f.read_exact_at(&mut len, 0).map_err(io_err(path))?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    f.read_exact_at(&mut buf, 4).map_err(io_err(path))?;
    Summary::decode(buf.as_slice()).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        offset: 4,
        why: e.to_string(),
    })
}

/// Reads the chunk entries of an open index file.
pub fn read_entries(f: &dyn FsFile, path: &Path) -> Result<Vec<Entry>, StoreError> {
    let all = f.read_all().map_err(io_err(path))?;
    let corrupt = |why: String| StoreError::Corrupt {
        path: path.to_owned(),
        offset: 0,
        why,
    };
    let n = all
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| corrupt("short index".into()))?;
    let rest = all
        .get(4 + n..)
        .ok_or_else(|| corrupt("index shorter than its summary".into()))?;
    Ok(Entries::decode(rest)
        .map_err(|e| corrupt(e.to_string()))?
        .entries)
}

/// What [`load_streams`] found.
#[derive(Debug, Default)]
pub struct LoadedStreams {
    /// The streams, by id.
    pub streams: Vec<StreamInfo>,
    /// Where the last intact record ends: appends go there.
    pub valid_len: u64,
    /// Ids whose records were damaged: held by placeholders without
    /// labels, so that the ids after them keep their streams.
    pub damaged: Vec<u32>,
}

/// Parses the stream record at the start of `data`: length, checksum,
/// body.
fn stream_record(data: &[u8]) -> Option<(StreamRecord, usize)> {
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    let body = data.get(8..8 + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((StreamRecord::decode(body).ok()?, 8 + len))
}

/// Loads `streams.log`: the streams in id order.
///
/// A damaged record does not cut the list: the next record whose checksum
/// holds and whose id follows is found, and the ids between get
/// placeholders. Cutting would hand the lost ids to the next new streams,
/// and chunk files that name them would serve their lines under another
/// pod's labels. Only a torn tail after the last intact record (a crash
/// while appending, which nothing durable refers to) is ignored; appends
/// overwrite it.
pub fn load_streams(fs: &dyn Fs, path: &Path) -> Result<LoadedStreams, StoreError> {
    let data = match fs.read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LoadedStreams::default()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = LoadedStreams::default();
    let mut at = 0usize;
    while at < data.len() {
        let want = out.streams.len() as u32;
        if let Some((r, len)) = stream_record(&data[at..]).filter(|(r, _)| r.id == want) {
            out.streams.push(StreamInfo {
                node: r.node.as_str().into(),
                labels: r.labels.unwrap_or_default(),
            });
            at += len;
            out.valid_len = at as u64;
            continue;
        }
        // Resync: each record takes at least 8 bytes, so the ids skipped
        // are at most the bytes skipped / 8.
        let found = (at + 1..data.len()).find_map(|i| {
            let (r, len) = stream_record(&data[i..])?;
            let most = want as usize + (i - at) / 8;
            (r.id > want && r.id as usize <= most).then_some((i, r, len))
        });
        let Some((i, r, len)) = found else { break };
        tracing::error!(file = %path.display(), at, ids = ?(want..r.id), "damaged stream records; their lines are kept without labels");
        while (out.streams.len() as u32) < r.id {
            out.damaged.push(out.streams.len() as u32);
            out.streams.push(StreamInfo {
                node: "".into(),
                labels: FileLabels::default(),
            });
        }
        out.streams.push(StreamInfo {
            node: r.node.as_str().into(),
            labels: r.labels.unwrap_or_default(),
        });
        at = i + len;
        out.valid_len = at as u64;
    }
    if out.valid_len < data.len() as u64 {
        tracing::warn!(file = %path.display(), at = out.valid_len, "ignoring a torn tail of the stream list");
    }
    Ok(out)
}

/// Appends streams `first..` to `streams.log` at `valid_len` (where its
/// intact records end), durably; returns the new valid length.
///
/// Written at the valid length, not appended: a failed write or fsync
/// leaves bytes that are cut (and, should the cut fail too, overwritten by
/// the next append), so a torn record never sits before intact ones.
pub fn append_streams(
    fs: &dyn Fs,
    path: &Path,
    valid_len: u64,
    first: u32,
    streams: &[StreamInfo],
) -> Result<u64, StoreError> {
    if streams.is_empty() {
        return Ok(valid_len);
    }
    let mut buf = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let body = StreamRecord {
            id: first + i as u32,
            node: s.node.to_string(),
            labels: Some(s.labels.clone()),
        }
        .encode_to_vec();
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
    }
    // Started (or started again after a failure): its directory entry must
    // be made durable. Whether the file exists says nothing of that: a
    // failed directory fsync leaves it visible and lost at a crash (the
    // fault test found chunk files naming ids of a streams.log so lost).
    let new = valid_len == 0;
    let f = fs.open(path, Mode::ReadWrite).map_err(io_err(path))?;
    let written = f
        .set_len(valid_len)
        .and_then(|()| f.write_all_at(&buf, valid_len))
        .and_then(|()| f.sync());
    if let Err(e) = written {
        let _ = f.set_len(valid_len);
        return Err(io_err(path)(e));
    }
    if new {
        if let Some(dir) = path.parent() {
            store::sync_dir(fs, dir)?;
        }
    }
    Ok(valid_len + buf.len() as u64)
}

/// One stream's lines being gathered into a chunk.
#[derive(Default)]
struct Open {
    lines: LinesBuilder,
    min_ts: i64,
    max_ts: i64,
    received: i64,
}

/// Writes chunks into the data file and remembers their entries.
struct Out {
    file: std::io::BufWriter<crate::fs::Writer>,
    path: PathBuf,
    at: u64,
    entries: Vec<Entry>,
    level: i32,
}

impl Out {
    /// Writes one record holding `group`'s streams, a range each.
    fn write(&mut self, group: Vec<(u32, &StreamInfo, Open)>) -> Result<(), StoreError> {
        if group.is_empty() {
            return Ok(());
        }
        let node = group[0].1.node.to_string();
        let mut b = LinesBuilder::default();
        let (mut min_ts, mut max_ts, mut received) = (i64::MAX, i64::MIN, i64::MIN);
        let mut ranges = Vec::with_capacity(group.len());
        let mut streams = Vec::with_capacity(group.len());
        for (i, (stream, info, mut open)) in group.into_iter().enumerate() {
            let batch = open.lines.finish();
            for l in batch.lines() {
                b.push(i as u32, l.ts, l.offset, l.stream, l.flags, &l.text);
            }
            min_ts = min_ts.min(open.min_ts);
            max_ts = max_ts.max(open.max_ts);
            received = received.max(open.received);
            ranges.push(FileRange {
                file_id: stream as u64,
                labels: Some(info.labels.clone()),
                start: 0,
                end: 0,
                lines_end: 0,
            });
            streams.push(stream);
        }
        let batch = b.finish();
        let lines = batch.line_count() as u64;
        if lines == 0 {
            return Ok(());
        }
        let raw = batch.encode_to_vec();
        let payload = zstd::bulk::compress(&raw, self.level).map_err(io_err(&self.path))?;
        // The segments' framing, so one reader serves both; each range
        // carries its stream's labels (the node is the first stream's; the
        // index's stream ids are what queries use).
        let header = BlockHeader {
            node,
            received_unix_nano: received,
            min_ts,
            max_ts,
            lines,
            text_bytes: batch.text.len() as u64,
            ranges,
            raw_len: raw.len() as u64,
            ahead: Vec::new(),
        };
        let rec = store::encode_record(&header, &payload);
        self.file.write_all(&rec).map_err(io_err(&self.path))?;
        self.entries.push(Entry {
            streams,
            offset: self.at,
            len: rec.len() as u64,
            min_ts,
            max_ts,
            lines,
            received,
        });
        self.at += rec.len() as u64;
        Ok(())
    }

    /// Copies a block's record unchanged.
    fn copy(&mut self, rec: &[u8], b: &BlockMeta) -> Result<(), StoreError> {
        self.file.write_all(rec).map_err(io_err(&self.path))?;
        self.entries.push(Entry {
            streams: b.streams.clone(),
            offset: self.at,
            len: rec.len() as u64,
            min_ts: b.min_ts,
            max_ts: b.max_ts,
            lines: b.lines,
            received: b.received,
        });
        self.at += rec.len() as u64;
        Ok(())
    }

    /// Writes every open stream: large ones alone, the others packed into
    /// records of about [`CHUNK_TEXT`], in stream id order.
    fn flush(
        &mut self,
        open: &mut BTreeMap<u32, Open>,
        info: &dyn Fn(u32) -> Result<StreamInfo, StoreError>,
    ) -> Result<(), StoreError> {
        let mut group: Vec<(u32, StreamInfo, Open)> = Vec::new();
        let mut size = 0usize;
        for (s, o) in std::mem::take(open) {
            let n = o.lines.text_len();
            group.push((s, info(s)?, o));
            size += n;
            if size >= CHUNK_TEXT {
                self.write(
                    group
                        .iter_mut()
                        .map(|(s, i, o)| (*s, &*i, std::mem::take(o)))
                        .collect(),
                )?;
                group.clear();
                size = 0;
            }
        }
        self.write(
            group
                .iter_mut()
                .map(|(s, i, o)| (*s, &*i, std::mem::take(o)))
                .collect(),
        )
    }
}

/// Writes a new file whole and fsyncs it.
pub fn write_synced(fs: &dyn Fs, path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let f = fs.open(path, Mode::Truncate).map_err(io_err(path))?;
    f.write_all_at(data, 0).map_err(io_err(path))?;
    f.sync().map_err(io_err(path))
}

/// Removes a temporary file when dropped, unless it was renamed into place:
/// on a full disk a leftover holds the last free bytes.
pub struct TempFile<'a> {
    fs: &'a dyn Fs,
    /// Its path.
    pub path: PathBuf,
    kept: bool,
}

impl<'a> TempFile<'a> {
    /// Guards `path`.
    pub fn new(fs: &'a dyn Fs, path: PathBuf) -> Self {
        TempFile {
            fs,
            path,
            kept: false,
        }
    }

    /// Renames it to `to`; it is no longer removed.
    pub fn rename_to(mut self, to: &Path) -> Result<(), StoreError> {
        self.fs.rename(&self.path, to).map_err(io_err(to))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.kept {
            let _ = self.fs.remove_file(&self.path);
        }
    }
}

/// A point inside a compaction where a test may stop it, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The data file is renamed into place; the index is not.
    AfterData,
    /// Both files are in place; the segment is not deleted.
    AfterIndex,
}

/// Compacts the blocks `blocks` of segment `seq` (its records, as the
/// index knows them: damaged records are not among them) into chunk file
/// `seq` under `dir`. `stream` names a block range's stream. Returns the
/// summary; the files are durable and in place when it returns.
///
/// A block that cannot be read (a passing EIO, a short read, a checksum
/// that fails now) fails the whole compaction: the segment is deleted only
/// once every block is copied, so a passing read error never becomes the
/// loss of acknowledged lines. Temporary files go on every error.
#[allow(clippy::too_many_arguments)]
pub fn compact(
    fs: &dyn Fs,
    segment: &Path,
    blocks: &[std::sync::Arc<BlockMeta>],
    streams: &[std::sync::Arc<StreamInfo>],
    seq: u64,
    dir: &Path,
    level: i32,
    crash: Option<CrashPoint>,
) -> Result<Summary, StoreError> {
    let seg = fs.open(segment, Mode::Read).map_err(io_err(segment))?;
    let mut reader = store::BlockReader::new()?;
    let tmp_data = TempFile::new(fs, dir.join(format!("{seq:020}.data.tmp")));
    let data_file: Arc<dyn FsFile> = fs
        .open(&tmp_data.path, Mode::Truncate)
        .map_err(io_err(&tmp_data.path))?;
    let mut out = Out {
        file: std::io::BufWriter::with_capacity(1 << 20, crate::fs::Writer::new(data_file, 0)),
        path: tmp_data.path.clone(),
        at: 0,
        entries: Vec::new(),
        level,
    };
    let mut open: BTreeMap<u32, Open> = BTreeMap::new();
    let mut buffered = 0usize;
    let mut retention_ts = i64::MIN;
    let info = |id: u32| -> Result<StreamInfo, StoreError> {
        streams
            .get(id as usize)
            .map(|s| (**s).clone())
            .ok_or_else(|| StoreError::Corrupt {
                path: segment.to_owned(),
                offset: 0,
                why: format!("unknown stream {id}"),
            })
    };
    let mut rec = Vec::new();
    for b in blocks {
        if b.len >= COPY_RECORD {
            rec.resize(b.len as usize, 0);
            seg.read_exact_at(&mut rec, b.offset)
                .map_err(io_err(segment))?;
            // Copied as it is: its checksum is checked here, or a block
            // damaged since start-up would move into a chunk file.
            if store::scan_record(&rec).is_none() {
                return Err(StoreError::Corrupt {
                    path: segment.to_owned(),
                    offset: b.offset,
                    why: "checksum mismatch".into(),
                });
            }
            retention_ts = retention_ts.max(b.retention_ts());
            out.copy(&rec, b)?;
            continue;
        }
        let (_, batch): (_, LineBatch) = reader.read(&*seg, segment, b.offset, b.len)?;
        retention_ts = retention_ts.max(b.retention_ts());
        for l in batch.lines() {
            let Some(&stream) = b.streams.get(l.range as usize) else {
                continue;
            };
            let o = open.entry(stream).or_insert_with(|| Open {
                min_ts: i64::MAX,
                max_ts: i64::MIN,
                ..Default::default()
            });
            o.lines.push(0, l.ts, l.offset, l.stream, l.flags, &l.text);
            o.min_ts = o.min_ts.min(l.ts);
            o.max_ts = o.max_ts.max(l.ts);
            o.received = o.received.max(b.received);
            buffered += l.text.len();
            if o.lines.text_len() >= CHUNK_TEXT {
                buffered -= o.lines.text_len();
                let full = std::mem::take(o);
                open.remove(&stream);
                let i = info(stream)?;
                out.write(vec![(stream, &i, full)])?;
            }
        }
        if buffered > MAX_BUFFERED {
            // Bounded memory: write everything open.
            out.flush(&mut open, &info)?;
            buffered = 0;
        }
    }
    out.flush(&mut open, &info)?;
    let writer = out
        .file
        .into_inner()
        .map_err(|e| io_err(&tmp_data.path)(e.into_error()))?;
    writer.file().sync().map_err(io_err(&tmp_data.path))?;
    drop(writer);
    let mut entries = out.entries;
    entries.sort_by_key(|e| (e.min_ts, e.offset));
    let mut ids: Vec<u32> = entries
        .iter()
        .flat_map(|e| e.streams.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let summary = Summary {
        min_ts: entries.iter().map(|e| e.min_ts).min().unwrap_or(0),
        max_ts: entries.iter().map(|e| e.max_ts).max().unwrap_or(0),
        retention_ts: if retention_ts == i64::MIN {
            0
        } else {
            retention_ts
        },
        lines: entries.iter().map(|e| e.lines).sum(),
        streams: ids,
    };
    let s = summary.encode_to_vec();
    let mut idx = Vec::with_capacity(4 + s.len() + entries.len() * 24);
    idx.extend_from_slice(&(s.len() as u32).to_le_bytes());
    idx.extend_from_slice(&s);
    idx.extend_from_slice(&Entries { entries }.encode_to_vec());
    let tmp_index = TempFile::new(fs, dir.join(format!("{seq:020}.index.tmp")));
    write_synced(fs, &tmp_index.path, &idx)?;
    let (data, index) = (data_path(dir, seq), index_path(dir, seq));
    tmp_data.rename_to(&data)?;
    store::sync_dir(fs, dir)?;
    if crash == Some(CrashPoint::AfterData) {
        return Err(crashed());
    }
    tmp_index.rename_to(&index)?;
    store::sync_dir(fs, dir)?;
    if crash == Some(CrashPoint::AfterIndex) {
        return Err(crashed());
    }
    Ok(summary)
}

fn crashed() -> StoreError {
    StoreError::Io {
        path: PathBuf::from("compaction"),
        source: std::io::Error::other("stopped at a crash point (test)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{RealFs, SimFs};

    fn info(node: &str, pod: &str) -> StreamInfo {
        StreamInfo {
            node: node.into(),
            labels: FileLabels {
                namespace: "ns".into(),
                pod: pod.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_stream_list_survives_a_torn_append() {
        let fs = RealFs;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("streams.log");
        assert!(load_streams(&fs, &p).unwrap().streams.is_empty());
        let n = append_streams(&fs, &p, 0, 0, &[info("a", "x"), info("a", "y")]).unwrap();
        let n = append_streams(&fs, &p, n, 2, &[info("b", "z")]).unwrap();
        // A crash mid-append: half a record at the end.
        let mut data = std::fs::read(&p).unwrap();
        let whole = data.len();
        assert_eq!(whole as u64, n);
        data.extend_from_within(..6);
        std::fs::write(&p, &data).unwrap();
        let got = load_streams(&fs, &p).unwrap();
        assert_eq!(
            got.streams,
            vec![info("a", "x"), info("a", "y"), info("b", "z")]
        );
        assert_eq!(got.valid_len as usize, whole);
        // Appends go on over the torn tail.
        append_streams(&fs, &p, got.valid_len, 3, &[info("c", "w")]).unwrap();
        assert_eq!(load_streams(&fs, &p).unwrap().streams.len(), 4);
    }

    /// A full disk in the middle of an append, then a retry that fits: the
    /// torn bytes are cut, and a restart finds every stream under its id.
    /// (Appending after the torn bytes once made loading cut there, and the
    /// streams behind were lost or handed to new streams.)
    #[test]
    fn a_short_write_is_rolled_back_and_the_retry_loads() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let p = Path::new("/d/streams.log");
        let n = append_streams(&fs, p, 0, 0, &[info("a", "x")]).unwrap();
        fs.set_capacity(Some(n + 10));
        let err = append_streams(&fs, p, n, 1, &[info("a", "y"), info("a", "z")]);
        assert!(err.is_err());
        assert_eq!(fs.file_len(p).unwrap(), n, "rolled back");
        fs.set_capacity(None);
        let n = append_streams(&fs, p, n, 1, &[info("a", "y"), info("a", "z")]).unwrap();
        let got = load_streams(&fs, p).unwrap();
        assert_eq!(
            got.streams,
            vec![info("a", "x"), info("a", "y"), info("a", "z")]
        );
        assert_eq!(got.valid_len, n);
        // After a crash too: the list and its directory entry are durable.
        let got = load_streams(&fs.crash(), p).unwrap();
        assert_eq!(got.streams.len(), 3);
    }

    /// A chunk index that cannot be read, or one whose data file is gone,
    /// is set aside, not fatal and not silently deleted.
    #[test]
    fn unusable_chunk_files_are_set_aside() {
        let fs = SimFs::new();
        let dir = Path::new("/chunks");
        fs.create_dir_all(dir).unwrap();
        for seq in [1, 2] {
            write_synced(&fs, &data_path(dir, seq), b"data").unwrap();
            write_synced(&fs, &index_path(dir, seq), b"\x02\x00\x00\x00\xff\xff").unwrap();
        }
        write_synced(&fs, &index_path(dir, 3), b"").unwrap();
        assert_eq!(recover(&fs, dir).unwrap(), vec![1, 2]);
        assert!(fs.exists(&dir.join(format!("{:020}.index.bad", 3))));
        assert!(read_summary(&fs, &index_path(dir, 1)).is_err());
        quarantine(&fs, dir, 1).unwrap();
        assert_eq!(recover(&fs, dir).unwrap(), vec![2]);
        let mut names = fs.read_dir(dir).unwrap();
        names.sort();
        assert_eq!(
            names.iter().filter(|n| n.ends_with(".bad")).count(),
            3,
            "{names:?}"
        );
        assert_eq!(quarantined(&fs, dir).unwrap(), vec![1, 3]);
    }

    /// A damaged record in the middle: the ones after it keep their ids.
    #[test]
    fn loading_resyncs_past_a_damaged_record() {
        let fs = RealFs;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("streams.log");
        let a = append_streams(&fs, &p, 0, 0, &[info("a", "x")]).unwrap();
        let b = append_streams(&fs, &p, a, 1, &[info("a", "y")]).unwrap();
        append_streams(&fs, &p, b, 2, &[info("a", "z")]).unwrap();
        let mut data = std::fs::read(&p).unwrap();
        data[a as usize + 9] ^= 0xff;
        std::fs::write(&p, &data).unwrap();
        let got = load_streams(&fs, &p).unwrap();
        assert_eq!(got.streams.len(), 3);
        assert_eq!(got.streams[2], info("a", "z"), "id 2 keeps its labels");
        assert_eq!(got.damaged, vec![1]);
        assert!(
            got.streams[1].labels.pod.is_empty(),
            "no other stream's labels"
        );
    }
}
