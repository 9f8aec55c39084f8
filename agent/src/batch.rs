//! Building batches: lines from many files, grouped by file range, sealed by
//! size or age into a compressed [`PushRequest`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use logfleet_proto::v1::{Compression, FileLabels, FileRange, PushRequest, Stream};
use logfleet_proto::LinesBuilder;

/// Where a sealed batch leaves a file: the checkpoint to save once the
/// aggregator acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeEnd {
    /// File identity.
    pub file_id: u64,
    /// File path when the batch was sealed.
    pub path: PathBuf,
    /// Offset the file is accounted for up to.
    pub end: u64,
}

/// A batch ready to push.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The request.
    pub request: PushRequest,
    /// Checkpoints to save after the acknowledgement.
    pub ends: Vec<RangeEnd>,
    /// Lines in the batch.
    pub lines: u64,
    /// Bytes of line text in the batch.
    pub bytes: u64,
}

/// Accumulates lines until the batch is full or old enough.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    ranges: Vec<FileRange>,
    paths: Vec<PathBuf>,
    index: HashMap<u64, usize>,
    lines: LinesBuilder,
    started: Option<Instant>,
}

impl BatchBuilder {
    /// The index of `file_id`'s range in this batch, adding the range
    /// (starting at `start`) if the file has none yet.
    pub fn range(
        &mut self,
        file_id: u64,
        labels: &FileLabels,
        path: &std::path::Path,
        start: u64,
        now: Instant,
    ) -> u32 {
        if let Some(&i) = self.index.get(&file_id) {
            return i as u32;
        }
        let i = self.ranges.len();
        self.ranges.push(FileRange {
            file_id,
            labels: Some(labels.clone()),
            start,
            end: start,
            lines_end: 0,
        });
        self.paths.push(path.to_owned());
        self.index.insert(file_id, i);
        self.started.get_or_insert(now);
        i as u32
    }

    /// Appends a line of range `idx`.
    pub fn push(
        &mut self,
        idx: u32,
        offset: u64,
        ts: i64,
        stream: Stream,
        flags: u32,
        text: &[u8],
    ) {
        // A line may lie past the range's end (the checkpoint) while a
        // partial line of the other stream is open before it: the range
        // says how far its lines reach.
        if let Some(r) = self.ranges.get_mut(idx as usize) {
            r.lines_end = r.lines_end.max(offset + 1);
        }
        self.lines.push(idx, ts, offset, stream as i32, flags, text);
    }

    /// Records that the file is accounted for up to `end` (adding its range
    /// if needed): the checkpoint moves there once the batch is acknowledged.
    pub fn account(
        &mut self,
        file_id: u64,
        labels: &FileLabels,
        path: &std::path::Path,
        start: u64,
        end: u64,
        now: Instant,
    ) {
        let idx = self.range(file_id, labels, path, start, now) as usize;
        let r = &mut self.ranges[idx];
        r.end = r.end.max(end);
        if self.paths[idx] != path {
            self.paths[idx] = path.to_owned();
        }
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Bytes of line text so far.
    pub fn bytes(&self) -> usize {
        self.lines.text_len()
    }

    /// Whether the batch should be sealed: `max_bytes` reached, or the
    /// oldest content waited `max_wait`.
    pub fn due(&self, now: Instant, max_bytes: usize, max_wait: Duration) -> bool {
        self.lines.text_len() >= max_bytes
            || self
                .started
                .is_some_and(|s| now.saturating_duration_since(s) >= max_wait)
    }

    /// When the batch becomes due by age, if it has content.
    pub fn deadline(&self, max_wait: Duration) -> Option<Instant> {
        self.started.map(|s| s + max_wait)
    }

    /// Seals the batch into a request and empties the builder.
    pub fn seal(
        &mut self,
        node: &str,
        compression: Compression,
        level: i32,
    ) -> Result<Sealed, logfleet_proto::CodecError> {
        let bytes = self.lines.text_len() as u64;
        let batch = self.lines.finish();
        let lines = batch.line_count() as u64;
        let (payload, raw_len) = logfleet_proto::encode_payload(&batch, compression, level)?;
        let mut ranges = std::mem::take(&mut self.ranges);
        for r in &mut ranges {
            // Only lines past the checkpoint need saying (the common case
            // leaves the field unset on the wire).
            if r.lines_end <= r.end {
                r.lines_end = 0;
            }
        }
        let ends = ranges
            .iter()
            .zip(self.paths.drain(..))
            .map(|(r, path)| RangeEnd {
                file_id: r.file_id,
                path,
                end: r.end,
            })
            .collect();
        self.index.clear();
        self.started = None;
        Ok(Sealed {
            request: PushRequest {
                node: node.to_owned(),
                compression: compression as i32,
                raw_len,
                ranges,
                payload,
            },
            ends,
            lines,
            bytes,
        })
    }
}

/// Splits a sealed batch into one batch per file, each with its lines, its
/// range and its checkpoint: when the aggregator refuses a batch for good,
/// the files it can take are stored and only the file it refuses is set
/// aside. Each part carries its file's range unchanged, so de-duplication
/// and checkpoints work as for the whole.
pub fn split_by_file(
    sealed: &Sealed,
    level: i32,
) -> Result<Vec<Sealed>, logfleet_proto::CodecError> {
    let req = &sealed.request;
    let compression = Compression::try_from(req.compression)
        .map_err(|_| logfleet_proto::CodecError::UnknownCompression(req.compression))?;
    let batch = logfleet_proto::decode_payload(req, logfleet_proto::Limits::default())?;
    let mut parts: Vec<LinesBuilder> = req.ranges.iter().map(|_| LinesBuilder::default()).collect();
    for l in batch.lines() {
        let mut one = l.clone();
        one.range = 0;
        parts[l.range as usize].push_line(&one);
    }
    req.ranges
        .iter()
        .zip(&sealed.ends)
        .zip(parts.iter_mut())
        .map(|((range, end), part)| {
            let bytes = part.text_len() as u64;
            let lines = part.finish();
            let count = lines.line_count() as u64;
            let (payload, raw_len) = logfleet_proto::encode_payload(&lines, compression, level)?;
            Ok(Sealed {
                request: PushRequest {
                    node: req.node.clone(),
                    compression: req.compression,
                    raw_len,
                    ranges: vec![range.clone()],
                    payload,
                },
                ends: vec![end.clone()],
                lines: count,
                bytes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds one line of a file, as the tailer's sink does, and accounts
    /// the file up to `end`. (Test helper: flat arguments read best at
    /// the call sites.)
    #[allow(clippy::too_many_arguments)]
    fn add(
        b: &mut BatchBuilder,
        id: u64,
        l: &FileLabels,
        path: &str,
        start: u64,
        end: u64,
        text: &str,
        t: Instant,
    ) {
        let idx = b.range(id, l, path.as_ref(), start, t);
        b.push(idx, start, start as i64, Stream::Stdout, 0, text.as_bytes());
        b.account(id, l, path.as_ref(), start, end, t);
    }

    #[test]
    fn groups_lines_by_file_and_tracks_range_ends() {
        let mut b = BatchBuilder::default();
        let t = Instant::now();
        let la = FileLabels {
            pod: "a".into(),
            ..Default::default()
        };
        let lb = FileLabels {
            pod: "b".into(),
            ..Default::default()
        };
        add(&mut b, 1, &la, "/a", 0, 10, "x", t);
        add(&mut b, 2, &lb, "/b", 5, 20, "yy", t);
        add(&mut b, 1, &la, "/a.1", 10, 30, "z", t);
        assert_eq!(b.bytes(), 4);
        assert!(!b.due(t, 100, Duration::from_secs(1)));
        assert!(b.due(t + Duration::from_secs(1), 100, Duration::from_secs(1)));
        assert!(b.due(t, 4, Duration::from_secs(1)));
        let s = b.seal("node-1", Compression::Zstd, 1).unwrap();
        assert!(b.is_empty() && b.deadline(Duration::ZERO).is_none());
        assert_eq!(s.lines, 3);
        assert_eq!(s.request.ranges.len(), 2);
        assert_eq!(
            (s.request.ranges[0].start, s.request.ranges[0].end),
            (0, 30)
        );
        assert_eq!(s.ends[0].path, std::path::Path::new("/a.1"));
        let decoded =
            logfleet_proto::decode_payload(&s.request, logfleet_proto::Limits::default()).unwrap();
        let ranges: Vec<u32> = decoded.lines().map(|l| l.range).collect();
        assert_eq!(ranges, [0, 1, 0]);
        let texts: Vec<_> = decoded.lines().map(|l| l.text).collect();
        assert_eq!(texts, ["x", "yy", "z"]);
    }

    #[test]
    fn splits_into_one_batch_per_file() {
        let mut b = BatchBuilder::default();
        let t = Instant::now();
        let l = FileLabels::default();
        add(&mut b, 1, &l, "/a", 0, 10, "x", t);
        add(&mut b, 2, &l, "/b", 5, 20, "yy", t);
        add(&mut b, 1, &l, "/a", 10, 30, "z", t);
        let s = b.seal("node-1", Compression::Gzip, 1).unwrap();
        let parts = split_by_file(&s, 1).unwrap();
        assert_eq!(parts.len(), 2);
        for (p, (id, texts, end)) in parts
            .iter()
            .zip([(1, vec!["x", "z"], 30), (2, vec!["yy"], 20)])
        {
            assert_eq!(p.request.ranges.len(), 1);
            assert_eq!(p.request.ranges[0].file_id, id);
            assert_eq!(p.ends[0].end, end);
            assert_eq!(p.lines, texts.len() as u64);
            let d = logfleet_proto::decode_payload(&p.request, Default::default()).unwrap();
            let got: Vec<_> = d.lines().map(|l| l.text).collect();
            assert_eq!(got, texts);
            assert!(d.lines().all(|l| l.range == 0));
        }
    }
}
