//! The dead-letter file: lines the aggregator refused for good, kept under
//! the state directory instead of vanishing.
//!
//! One JSON object per line (`dead-letter.jsonl`), with the file's labels,
//! the line's offset, timestamp, stream and flags, the aggregator's reason
//! and the text (`line_base64` when it is not valid UTF-8). The file is
//! bounded: past `max_bytes` it is renamed to `dead-letter.jsonl.1`
//! (replacing the older one), so it never holds more than twice the bound.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use logfleet_proto::v1::{FileLabels, PushRequest, Stream};
use serde::Serialize;

/// Why dead letters could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The refused payload could not be decoded (it is our own encoding,
    /// so this means a bug; the lines cannot be recovered from it).
    #[error("decoding the refused batch: {0}")]
    Decode(#[from] logfleet_proto::CodecError),
    /// Writing the file failed.
    #[error("dead-letter file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One refused line as written to the file.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the agent wrote it down, RFC 3339.
    pub refused_at: &'a str,
    /// Why the aggregator refused it.
    pub reason: &'a str,
    /// Node.
    pub node: &'a str,
    /// File identity.
    pub file_id: u64,
    /// Namespace.
    pub namespace: &'a str,
    /// Pod.
    pub pod: &'a str,
    /// Pod UID.
    pub pod_uid: &'a str,
    /// Container.
    pub container: &'a str,
    /// Restart number.
    pub restart: u32,
    /// Offset of the line in its file.
    pub offset: u64,
    /// The line's timestamp, ns since the epoch.
    pub ts: i64,
    /// `stdout`, `stderr` or `unknown`.
    pub stream: &'a str,
    /// Flag bits as on the wire.
    pub flags: u32,
    /// The text, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<&'a str>,
    /// The bytes, when the text is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_base64: Option<String>,
}

fn stream_name(s: i32) -> &'static str {
    match Stream::try_from(s) {
        Ok(Stream::Stdout) => "stdout",
        Ok(Stream::Stderr) => "stderr",
        _ => "unknown",
    }
}

/// Renders every line of a refused request as JSON lines (pure: no I/O).
/// Returns the text and the number of lines.
pub fn render(
    req: &PushRequest,
    reason: &str,
    refused_at: &str,
) -> Result<(Vec<u8>, u64), DeadLetterError> {
    let batch = logfleet_proto::decode_payload(req, logfleet_proto::Limits::default())?;
    let mut out = Vec::new();
    let mut n = 0;
    let none = FileLabels::default();
    for l in batch.lines() {
        let r = &req.ranges[l.range as usize];
        let labels = r.labels.as_ref().unwrap_or(&none);
        let text = std::str::from_utf8(&l.text).ok();
        let rec = Record {
            refused_at,
            reason,
            node: &req.node,
            file_id: r.file_id,
            namespace: &labels.namespace,
            pod: &labels.pod,
            pod_uid: &labels.pod_uid,
            container: &labels.container,
            restart: labels.restart,
            offset: l.offset,
            ts: l.ts,
            stream: stream_name(l.stream),
            flags: l.flags,
            line: text,
            line_base64: text
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(&l.text)),
        };
        // Serialising plain strings and numbers cannot fail.
        if serde_json::to_writer(&mut out, &rec).is_ok() {
            out.push(b'\n');
            n += 1;
        }
    }
    Ok((out, n))
}

/// The bounded dead-letter file.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    path: PathBuf,
    max_bytes: u64,
}

impl DeadLetters {
    /// The file `dead-letter.jsonl` in `state_dir`, rotated past `max_bytes`.
    pub fn new(state_dir: &Path, max_bytes: u64) -> Self {
        DeadLetters {
            path: state_dir.join("dead-letter.jsonl"),
            max_bytes,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the lines of a refused request durably (fsync: the
    /// checkpoint moves past them next). Returns how many lines it wrote.
    pub fn keep(&self, req: &PushRequest, reason: &str) -> Result<u64, DeadLetterError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (text, n) = render(req, reason, &now)?;
        let io = |source| DeadLetterError::Io {
            path: self.path.clone(),
            source,
        };
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size > 0 && size + text.len() as u64 > self.max_bytes {
            let old = self.path.with_extension("jsonl.1");
            std::fs::rename(&self.path, &old).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let before = f.metadata().map_err(io)?.len();
        if let Err(e) = f.write_all(&text).and_then(|()| f.sync_data()) {
            // A full disk wrote part of it: cut it back, so the retry
            // leaves neither a torn line nor the first lines twice.
            let _ = f.set_len(before);
            let _ = f.sync_data();
            return Err(io(e));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logfleet_proto::v1::{Compression, FileRange};
    use logfleet_proto::LinesBuilder;

    fn request() -> PushRequest {
        let mut b = LinesBuilder::default();
        b.push(0, 5, 10, Stream::Stderr as i32, 0, b"plain text");
        b.push(0, 6, 20, Stream::Stdout as i32, 1, b"\xff\xfe");
        let (payload, raw_len) =
            logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
        PushRequest {
            node: "n1".into(),
            compression: Compression::Zstd as i32,
            raw_len,
            ranges: vec![FileRange {
                file_id: 9,
                labels: Some(FileLabels {
                    namespace: "ns".into(),
                    pod: "p".into(),
                    container: "c".into(),
                    ..Default::default()
                }),
                start: 10,
                end: 30,
                lines_end: 0,
            }],
            payload,
        }
    }

    #[test]
    fn renders_every_line_with_labels_and_exact_bytes() {
        let (text, n) = render(&request(), "line 0 outside", "T").unwrap();
        assert_eq!(n, 2);
        let rows: Vec<serde_json::Value> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(rows[0]["line"], "plain text");
        assert_eq!(rows[0]["stream"], "stderr");
        assert_eq!(rows[0]["pod"], "p");
        assert_eq!(rows[0]["offset"], 10);
        assert_eq!(rows[0]["reason"], "line 0 outside");
        assert!(rows[1].get("line").is_none());
        assert_eq!(rows[1]["line_base64"], "//4=");
        assert_eq!(rows[1]["flags"], 1);
    }

    #[test]
    fn the_file_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path(), 600);
        for _ in 0..10 {
            assert_eq!(dl.keep(&request(), "refused").unwrap(), 2);
        }
        let cur = std::fs::metadata(dl.path()).unwrap().len();
        let old = std::fs::metadata(dl.path().with_extension("jsonl.1"))
            .unwrap()
            .len();
        assert!(cur <= 600 && old <= 600, "{cur} {old}");
    }
}
