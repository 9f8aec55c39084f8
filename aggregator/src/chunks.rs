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
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use logfleet_proto::v1::{FileLabels, FileRange, LineBatch};
use logfleet_proto::LinesBuilder;
use prost::Message;

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
pub fn recover(dir: &Path) -> Result<Vec<u64>, StoreError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut complete = Vec::new();
    let mut data = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let seq = name.split('.').next().and_then(|s| s.parse::<u64>().ok());
        match (seq, name.rsplit('.').next()) {
            (Some(seq), Some("index")) => complete.push(seq),
            (Some(seq), Some("data")) => data.push(seq),
            _ => {
                // *.tmp: a compaction that did not finish.
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for seq in data {
        if !complete.contains(&seq) {
            let p = data_path(dir, seq);
            tracing::info!(file = %p.display(), "removing an unfinished compaction");
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    complete.sort_unstable();
    Ok(complete)
}

/// Reads the summary at the head of an index file.
pub fn read_summary(path: &Path) -> Result<Summary, StoreError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut len = [0u8; 4];
    f.read_exact(&mut len).map_err(io_err(path))?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    f.read_exact(&mut buf).map_err(io_err(path))?;
    Summary::decode(buf.as_slice()).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        offset: 4,
        why: e.to_string(),
    })
}

/// Reads the chunk entries of an open index file.
pub fn read_entries(mut f: &File, path: &Path) -> Result<Vec<Entry>, StoreError> {
    let mut all = Vec::new();
    f.read_to_end(&mut all).map_err(io_err(path))?;
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

/// Loads `streams.log`: the streams in id order. A torn tail (a crash while
/// appending) is cut off; nothing durable refers to ids past it.
pub fn load_streams(path: &Path) -> Result<Vec<StreamInfo>, StoreError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let Some(body) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(r) = StreamRecord::decode(body) else {
            break;
        };
        if r.id as usize != out.len() {
            break;
        }
        out.push(StreamInfo {
            node: r.node.as_str().into(),
            labels: r.labels.unwrap_or_default(),
        });
        at += 8 + len;
    }
    if at < data.len() {
        tracing::warn!(file = %path.display(), at, "cutting a torn tail of the stream list");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(at as u64).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(out)
}

/// Appends streams `first..` to `streams.log`, durably.
pub fn append_streams(path: &Path, first: u32, streams: &[StreamInfo]) -> Result<(), StoreError> {
    if streams.is_empty() {
        return Ok(());
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
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(&buf).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
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
    file: std::io::BufWriter<File>,
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

fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
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
pub fn compact(
    segment: &Path,
    blocks: &[std::sync::Arc<BlockMeta>],
    streams: &[std::sync::Arc<StreamInfo>],
    seq: u64,
    dir: &Path,
    level: i32,
    crash: Option<CrashPoint>,
) -> Result<Summary, StoreError> {
    let seg = File::open(segment).map_err(io_err(segment))?;
    let mut reader = store::BlockReader::new()?;
    let tmp_data = dir.join(format!("{seq:020}.data.tmp"));
    let mut out = Out {
        file: std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp_data).map_err(io_err(&tmp_data))?,
        ),
        path: tmp_data.clone(),
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
            use std::os::unix::fs::FileExt;
            rec.resize(b.len as usize, 0);
            match seg.read_exact_at(&mut rec, b.offset) {
                Ok(()) => {
                    retention_ts = retention_ts.max(b.retention_ts());
                    out.copy(&rec, b)?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "compaction skips a block that cannot be read");
                }
            }
            continue;
        }
        let batch: LineBatch = match reader.read(&seg, segment, b.offset, b.len) {
            Ok((_, batch)) => batch,
            Err(e) => {
                // Queries skip it too: the same lines either way.
                tracing::error!(error = %e, "compaction skips a block that cannot be read");
                continue;
            }
        };
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
    let file = out
        .file
        .into_inner()
        .map_err(|e| io_err(&tmp_data)(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp_data))?;
    drop(file);
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
    let tmp_index = dir.join(format!("{seq:020}.index.tmp"));
    write_synced(&tmp_index, &idx)?;
    let (data, index) = (data_path(dir, seq), index_path(dir, seq));
    std::fs::rename(&tmp_data, &data).map_err(io_err(&data))?;
    store::sync_dir(dir)?;
    if crash == Some(CrashPoint::AfterData) {
        return Err(crashed());
    }
    std::fs::rename(&tmp_index, &index).map_err(io_err(&index))?;
    store::sync_dir(dir)?;
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
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("streams.log");
        assert!(load_streams(&p).unwrap().is_empty());
        append_streams(&p, 0, &[info("a", "x"), info("a", "y")]).unwrap();
        append_streams(&p, 2, &[info("b", "z")]).unwrap();
        // A crash mid-append: half a record at the end.
        let mut data = std::fs::read(&p).unwrap();
        let whole = data.len();
        data.extend_from_within(..6);
        std::fs::write(&p, &data).unwrap();
        let got = load_streams(&p).unwrap();
        assert_eq!(got, vec![info("a", "x"), info("a", "y"), info("b", "z")]);
        assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, whole, "cut");
        // Appends go on after the cut.
        append_streams(&p, 3, &[info("c", "w")]).unwrap();
        assert_eq!(load_streams(&p).unwrap().len(), 4);
    }
}
