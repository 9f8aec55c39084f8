//! Durable storage: append-only segment files of checksummed records.
//!
//! ```text
//! data-dir/
//!   segments/00000000000000000001.seg   records, appended, fsynced per group
//!   snapshot.json                        de-dup state and agent counters of
//!                                        every segment up to `through`
//! record := magic "LFB1" | header_len u32 | payload_len u32 | crc32 u32
//!           | header (protobuf BlockHeader) | payload (zstd LineBatch)
//! ```
//! A record's header carries the file ranges it covers. Replaying headers
//! therefore rebuilds the de-duplication state from the very bytes that
//! hold the data: the two can never disagree after a crash. A torn record
//! at the end of the newest segment (crash mid-write, never acknowledged)
//! is cut off at start-up.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use logfleet_proto::v1::{FileRange, LineBatch};
use prost::Message;

/// Record magic.
pub const MAGIC: [u8; 4] = *b"LFB1";
const PREFIX: usize = 16;
/// Largest header or payload a record may declare; larger means corruption.
const MAX_PART: u32 = 256 << 20;

/// Metadata of a stored block, written in front of its payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockHeader {
    /// Node that pushed the block.
    #[prost(string, tag = "1")]
    pub node: String,
    /// When the aggregator received it, ns since the epoch.
    #[prost(int64, tag = "2")]
    pub received_unix_nano: i64,
    /// Smallest line timestamp.
    #[prost(int64, tag = "3")]
    pub min_ts: i64,
    /// Largest line timestamp.
    #[prost(int64, tag = "4")]
    pub max_ts: i64,
    /// Number of lines.
    #[prost(uint64, tag = "5")]
    pub lines: u64,
    /// Bytes of line text.
    #[prost(uint64, tag = "6")]
    pub text_bytes: u64,
    /// File ranges covered; lines refer to them by index.
    #[prost(message, repeated, tag = "7")]
    pub ranges: Vec<FileRange>,
    /// Uncompressed payload size.
    #[prost(uint64, tag = "8")]
    pub raw_len: u64,
    /// Offsets of the block's lines that lie at or past their range's end,
    /// per range (only ranges that have such lines): with the ranges, what
    /// replay needs to rebuild the de-duplication marks.
    #[prost(message, repeated, tag = "9")]
    pub ahead: Vec<RangeAhead>,
}

/// Lines of one range stored past the range's end (see
/// [`crate::index::FileMark`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeAhead {
    /// Index of the range in [`BlockHeader::ranges`].
    #[prost(uint32, tag = "1")]
    pub range: u32,
    /// Line offsets, ascending.
    #[prost(uint64, repeated, tag = "2")]
    pub offsets: Vec<u64>,
}

/// Storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File-system error.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record failed its checksum or framing where it must be intact.
    #[error("corrupt record in {path} at offset {offset}: {why}")]
    Corrupt {
        /// Segment.
        path: PathBuf,
        /// Record offset.
        offset: u64,
        /// What is wrong.
        why: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Encodes a record.
pub fn encode_record(header: &BlockHeader, payload: &[u8]) -> Vec<u8> {
    let h = header.encode_to_vec();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(payload);
    let mut out = Vec::with_capacity(PREFIX + h.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out
}

/// A record read back during a scan.
#[derive(Debug)]
pub struct ScannedRecord {
    /// Offset of the record in its segment.
    pub offset: u64,
    /// Total record length.
    pub len: u64,
    /// Its header.
    pub header: BlockHeader,
}

/// What a scan of a segment found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The intact records, in order.
    pub records: Vec<ScannedRecord>,
    /// Where the last intact record ends: anything after it is a torn
    /// write that was never acknowledged.
    pub valid_end: u64,
    /// Damaged stretches `(offset, len)` between intact records: skipped,
    /// never served.
    pub damaged: Vec<(u64, u64)>,
}

/// Parses the record at the start of `data` (at segment offset `pos`);
/// with `verify` the payload checksum is checked too.
fn parse_record(data: &[u8], pos: u64, verify: bool) -> Option<ScannedRecord> {
    let prefix = data.get(..PREFIX)?;
    let word =
        |i: usize| u32::from_le_bytes([prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]]);
    let (hl, pl, crc) = (word(4), word(8), word(12));
    if prefix[..4] != MAGIC || hl > MAX_PART || pl > MAX_PART {
        return None;
    }
    let total = PREFIX + hl as usize + pl as usize;
    let body = data.get(PREFIX..total)?;
    if verify && crc32fast::hash(body) != crc {
        return None;
    }
    let header = BlockHeader::decode(&body[..hl as usize]).ok()?;
    Some(ScannedRecord {
        offset: pos,
        len: total as u64,
        header,
    })
}

/// Reads every record of a segment. With `verify`, payload checksums are
/// checked; without, only framing (sealed segments were verified when they
/// were the newest).
///
/// A bad record is not the end: the scan looks for the next intact record
/// after it (by its magic, framing and, with `verify`, checksum), so one
/// damaged record does not take the acknowledged records behind it along.
/// Only what follows the last intact record is a torn tail.
pub fn scan_segment(path: &Path, verify: bool) -> Result<Scan, StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut scan = Scan::default();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    // The fast path: record after record, payloads skipped unless verified.
    while pos + PREFIX as u64 <= size {
        let mut prefix = [0u8; PREFIX];
        if r.read_exact(&mut prefix).is_err() {
            break;
        }
        let word =
            |i: usize| u32::from_le_bytes([prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]]);
        let (hl, pl, crc) = (word(4), word(8), word(12));
        let total = PREFIX as u64 + hl as u64 + pl as u64;
        if prefix[..4] != MAGIC || hl > MAX_PART || pl > MAX_PART || pos + total > size {
            break;
        }
        buf.resize(hl as usize, 0);
        if r.read_exact(&mut buf).is_err() {
            break;
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buf);
        let Ok(header) = BlockHeader::decode(buf.as_slice()) else {
            break;
        };
        if verify {
            let mut payload = vec![0u8; pl as usize];
            if r.read_exact(&mut payload).is_err() {
                break;
            }
            hasher.update(&payload);
            if hasher.finalize() != crc {
                break;
            }
        } else {
            r.seek_relative(pl as i64).map_err(io_err(path))?;
        }
        scan.records.push(ScannedRecord {
            offset: pos,
            len: total,
            header,
        });
        pos += total;
    }
    scan.valid_end = pos;
    if pos + PREFIX as u64 > size {
        return Ok(scan);
    }
    // Something bad at `pos`: read the rest and look for intact records.
    let mut rest = Vec::new();
    let mut f = r.into_inner();
    f.seek(SeekFrom::Start(pos)).map_err(io_err(path))?;
    f.read_to_end(&mut rest).map_err(io_err(path))?;
    let mut at = 0usize;
    let mut bad_from: Option<usize> = Some(0);
    while at + PREFIX <= rest.len() {
        match parse_record(&rest[at..], pos + at as u64, verify) {
            Some(rec) => {
                if let Some(b) = bad_from.take() {
                    scan.damaged.push((pos + b as u64, (at - b) as u64));
                }
                at += rec.len as usize;
                scan.valid_end = rec.offset + rec.len;
                scan.records.push(rec);
            }
            None => {
                bad_from.get_or_insert(at);
                at = match memchr::memmem::find(&rest[at + 1..], &MAGIC) {
                    Some(i) => at + 1 + i,
                    None => break,
                };
            }
        }
    }
    for (off, len) in &scan.damaged {
        tracing::error!(segment = %path.display(), offset = off, len, "skipping a damaged record; the records after it are intact");
    }
    Ok(scan)
}

/// Reads one record's payload and decodes its lines.
pub fn read_block(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<(BlockHeader, LineBatch), StoreError> {
    let corrupt = |why: String| StoreError::Corrupt {
        path: path.to_owned(),
        offset,
        why,
    };
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).map_err(io_err(path))?;
    if buf.len() < PREFIX || buf[..4] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let hl = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let crc = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if PREFIX + hl > buf.len() {
        return Err(corrupt("header past record end".into()));
    }
    if crc32fast::hash(&buf[PREFIX..]) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let header =
        BlockHeader::decode(&buf[PREFIX..PREFIX + hl]).map_err(|e| corrupt(e.to_string()))?;
    let payload = &buf[PREFIX + hl..];
    let raw = zstd::bulk::decompress(payload, header.raw_len as usize + 1)
        .map_err(|e| corrupt(e.to_string()))?;
    let batch = LineBatch::decode(raw.as_slice()).map_err(|e| corrupt(e.to_string()))?;
    Ok((header, batch))
}

/// Reads blocks one after another with one zstd context and reused
/// buffers: a query or a compaction reads thousands, and a fresh context
/// and fresh pages for each cost more than the reading.
pub struct BlockReader {
    dctx: zstd::bulk::Decompressor<'static>,
    buf: Vec<u8>,
    raw: Vec<u8>,
}

impl BlockReader {
    /// A reader.
    pub fn new() -> Result<Self, StoreError> {
        Ok(BlockReader {
            dctx: zstd::bulk::Decompressor::new().map_err(io_err(Path::new("zstd")))?,
            buf: Vec::new(),
            raw: Vec::new(),
        })
    }

    /// Reads one record's payload and decodes its lines.
    pub fn read(
        &mut self,
        file: &File,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<(BlockHeader, LineBatch), StoreError> {
        self.read_if(file, path, offset, len, |_| true)?
            .ok_or_else(|| StoreError::Corrupt {
                path: path.to_owned(),
                offset,
                why: "unreachable: no filter".into(),
            })
    }

    /// Like [`BlockReader::read`], but decodes the lines only when `may`
    /// says the decompressed payload may hold a wanted line (a substring
    /// every wanted line contains can be looked for in it whole, which is
    /// much cheaper than decoding it line by line).
    pub fn read_if(
        &mut self,
        file: &File,
        path: &Path,
        offset: u64,
        len: u64,
        may: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<(BlockHeader, LineBatch)>, StoreError> {
        let corrupt = |why: String| StoreError::Corrupt {
            path: path.to_owned(),
            offset,
            why,
        };
        self.buf.resize(len as usize, 0);
        let buf = &mut self.buf;
        file.read_exact_at(buf, offset).map_err(io_err(path))?;
        if buf.len() < PREFIX || buf[..4] != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let hl = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        let crc = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
        if PREFIX + hl > buf.len() {
            return Err(corrupt("header past record end".into()));
        }
        if crc32fast::hash(&buf[PREFIX..]) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let header =
            BlockHeader::decode(&buf[PREFIX..PREFIX + hl]).map_err(|e| corrupt(e.to_string()))?;
        if header.raw_len > MAX_PART as u64 * 4 {
            return Err(corrupt("declared size too large".into()));
        }
        self.raw.clear();
        self.raw.reserve(header.raw_len as usize + 1);
        self.dctx
            .decompress_to_buffer(&buf[PREFIX + hl..], &mut self.raw)
            .map_err(|e| corrupt(e.to_string()))?;
        if !may(&self.raw) {
            return Ok(None);
        }
        let batch = LineBatch::decode(self.raw.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some((header, batch)))
    }
}

/// Path of segment `seq`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Sequence numbers of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// The segment records are appended to.
pub struct ActiveSegment {
    /// Its sequence number.
    pub seq: u64,
    /// Its path.
    pub path: PathBuf,
    file: File,
    /// Current length.
    pub len: u64,
}

impl ActiveSegment {
    /// Opens (creating if needed) segment `seq`, cutting it to `valid_len`.
    pub fn open(dir: &Path, seq: u64, valid_len: u64) -> Result<Self, StoreError> {
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len > valid_len {
            tracing::warn!(segment = %path.display(), cut = len - valid_len, "cutting torn record at segment end");
            file.set_len(valid_len).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        file.seek(SeekFrom::Start(valid_len))
            .map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok(ActiveSegment {
            seq,
            path,
            file,
            len: valid_len,
        })
    }

    /// Appends records without syncing; returns the offset of each.
    pub fn append(&mut self, records: &[Vec<u8>]) -> Result<Vec<u64>, StoreError> {
        let mut offsets = Vec::with_capacity(records.len());
        let mut all = Vec::with_capacity(records.iter().map(Vec::len).sum());
        for r in records {
            offsets.push(self.len + all.len() as u64);
            all.extend_from_slice(r);
        }
        if let Err(e) = self.file.write_all(&all) {
            // Leave no partial record behind a failed write.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(io_err(&self.path)(e));
        }
        self.len += all.len() as u64;
        Ok(offsets)
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// fsyncs a directory so that created or renamed entries survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n: u64) -> BlockHeader {
        BlockHeader {
            node: format!("n{n}"),
            lines: n,
            raw_len: 0,
            ..Default::default()
        }
    }

    #[test]
    fn records_survive_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = ActiveSegment::open(dir.path(), 1, 0).unwrap();
        let payload = zstd::bulk::compress(&[], 1).unwrap();
        let recs: Vec<_> = (0..5)
            .map(|i| encode_record(&header(i), &payload))
            .collect();
        let offs = seg.append(&recs).unwrap();
        seg.sync().unwrap();
        assert_eq!(offs[0], 0);
        let good_len = seg.len;
        // A crash mid-write leaves half a record.
        let torn = encode_record(&header(9), &payload);
        seg.append(&[torn[..torn.len() / 2].to_vec()]).unwrap();
        drop(seg);
        let path = segment_path(dir.path(), 1);
        let scan = scan_segment(&path, true).unwrap();
        let (scanned, valid) = (scan.records, scan.valid_end);
        assert_eq!(scanned.len(), 5);
        assert_eq!(valid, good_len);
        assert_eq!(scanned[4].header.node, "n4");
        let seg = ActiveSegment::open(dir.path(), 1, valid).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        let f = File::open(&path).unwrap();
        let (h, b) = read_block(&f, &path, scanned[2].offset, scanned[2].len).unwrap();
        assert_eq!(h.node, "n2");
        assert_eq!(b.line_count(), 0);
        drop(seg);
    }

    #[test]
    fn flipped_byte_fails_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = ActiveSegment::open(dir.path(), 7, 0).unwrap();
        let payload = zstd::bulk::compress(b"", 1).unwrap();
        seg.append(&[
            encode_record(&header(1), &payload),
            encode_record(&header(2), &payload),
        ])
        .unwrap();
        seg.sync().unwrap();
        let path = segment_path(dir.path(), 7);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let scan = scan_segment(&path, true).unwrap();
        assert_eq!(scan.records.len(), 1, "the damaged last record is dropped");
        assert_eq!(
            scan.valid_end, scan.records[0].len,
            "and cut as a torn tail"
        );
        assert_eq!(list_segments(dir.path()).unwrap(), vec![7]);
    }

    /// One damaged record in the middle of the newest segment: the
    /// acknowledged records after it survive; only the damaged one is
    /// skipped (the fault issue #7 names).
    #[test]
    fn records_after_a_damaged_one_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = ActiveSegment::open(dir.path(), 1, 0).unwrap();
        let payload = zstd::bulk::compress(b"some payload bytes", 1).unwrap();
        let recs: Vec<_> = (0..6)
            .map(|i| encode_record(&header(i), &payload))
            .collect();
        let offs = seg.append(&recs).unwrap();
        seg.sync().unwrap();
        let end = seg.len;
        drop(seg);
        let path = segment_path(dir.path(), 1);
        for (what, at) in [
            ("payload byte", offs[2] as usize + recs[2].len() - 3),
            ("magic", offs[2] as usize),
            ("length", offs[2] as usize + 5),
        ] {
            let mut data = std::fs::read(&path).unwrap();
            let good = data.clone();
            data[at] ^= 0x5a;
            std::fs::write(&path, &data).unwrap();
            let scan = scan_segment(&path, true).unwrap();
            let nodes: Vec<_> = scan
                .records
                .iter()
                .map(|r| r.header.node.as_str())
                .collect();
            assert_eq!(nodes, ["n0", "n1", "n3", "n4", "n5"], "{what}");
            assert_eq!(scan.valid_end, end, "{what}");
            assert_eq!(
                scan.damaged,
                vec![(offs[2], recs[2].len() as u64)],
                "{what}"
            );
            std::fs::write(&path, &good).unwrap();
        }
    }
}
