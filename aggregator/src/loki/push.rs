//! `POST /loki/api/v1/push`: Promtail, Grafana Alloy, Fluent Bit's `loki`
//! output and Vector's `loki` sink send here. Bodies are JSON or
//! snappy-compressed protobuf (Loki's `logproto.PushRequest`), optionally
//! gzip-encoded. Each Loki stream becomes a logfleet file of the node
//! `loki-push`: its labels become the file's (`namespace`, `pod`,
//! `pod_uid`, `container`, `restart`; `stream` when it is `stdout`/`stderr`;
//! the rest `extra`, a `node` label as `label_node`, so that no push poses
//! as an agent's node).
//!
//! Duplicates are dropped as Loki drops them: the same stream, timestamp
//! and line. Before storing, the lines the store already holds for the
//! stream in the push's time span are read and matching entries skipped
//! (under a per-stream lock, so a retry racing its original cannot slip
//! through). The lines carry no file offsets, so the aggregator assigns
//! them, increasing per stream; the push is acknowledged (204) only after
//! the writer made it durable, like every other push.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use logfleet_proto::v1::{Compression, FileLabels, FileRange, Label, PushRequest, Stream};
use prost::Message;

use crate::ingest::{Shared, Writer};
use crate::query::{self, Bounds, Control};

/// The node of every line pushed through Loki's API.
pub const DEFAULT_NODE: &str = "loki-push";
/// The most a push body may decompress to.
pub const MAX_DECODED: usize = 64 << 20;

/// Loki's `PushRequest` (pkg/push/push.proto): field numbers as published.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LokiPushRequest {
    /// Streams.
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<LokiStream>,
}

/// Loki's `StreamAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LokiStream {
    /// Labels in Prometheus text form: `{a="b", c="d"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    /// Entries.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<LokiEntry>,
    /// Loki's hash of the labels (unused).
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// Loki's `EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LokiEntry {
    /// When.
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<LokiTimestamp>,
    /// The line.
    #[prost(string, tag = "2")]
    pub line: String,
    /// Structured metadata (not kept: counted).
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LokiLabelPair>,
}

/// Loki's `LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LokiLabelPair {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LokiTimestamp {
    /// Seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A push that cannot be taken: status and reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Why.
    pub msg: String,
}

fn bad(msg: impl Into<String>) -> Refused {
    Refused {
        status: 400,
        msg: msg.into(),
    }
}

/// One Loki stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Label name/value pairs as sent.
    pub labels: Vec<(String, String)>,
    /// (ns, line).
    pub entries: Vec<(i64, String)>,
    /// Entries that carried structured metadata, which is not kept.
    pub with_metadata: u64,
}

/// Decodes a push body (already gunzipped): JSON when the content type
/// says so, else snappy-compressed protobuf.
pub fn decode(content_type: &str, body: &[u8]) -> Result<Vec<Incoming>, Refused> {
    if content_type.contains("json") {
        return decode_json(body);
    }
    // Snappy states the decompressed length up front: judge it before
    // allocating, or a small body claiming gigabytes would take them.
    let claimed = snap::raw::decompress_len(body)
        .map_err(|e| bad(format!("not a snappy-compressed protobuf body: {e}")))?;
    if claimed > MAX_DECODED {
        return Err(Refused {
            status: 413,
            msg: format!("the push decompresses to more than {MAX_DECODED} bytes"),
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| bad(format!("not a snappy-compressed protobuf body: {e}")))?;
    let req = LokiPushRequest::decode(raw.as_slice())
        .map_err(|e| bad(format!("not a Loki PushRequest: {e}")))?;
    req.streams
        .into_iter()
        .map(|s| {
            Ok(Incoming {
                with_metadata: s
                    .entries
                    .iter()
                    .filter(|e| !e.structured_metadata.is_empty())
                    .count() as u64,
                labels: parse_labels(&s.labels)?,
                entries: s
                    .entries
                    .into_iter()
                    .map(|e| {
                        let t = e.timestamp.unwrap_or_default();
                        let ns = t
                            .seconds
                            .checked_mul(1_000_000_000)
                            .and_then(|n| n.checked_add(i64::from(t.nanos)))
                            .ok_or_else(|| bad("timestamp out of range"))?;
                        Ok((ns, e.line))
                    })
                    .collect::<Result<_, Refused>>()?,
            })
        })
        .collect()
}

fn decode_json(body: &[u8]) -> Result<Vec<Incoming>, Refused> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let streams = v
        .get("streams")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("expected {\"streams\": [...]}"))?;
    let mut out = Vec::new();
    for s in streams {
        let labels = s
            .get("stream")
            .and_then(|l| l.as_object())
            .ok_or_else(|| bad("each stream needs a \"stream\" object of labels"))?
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_owned()))
                    .ok_or_else(|| bad(format!("label {k:?} is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let values = s
            .get("values")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("each stream needs \"values\": [[\"<ns>\", \"<line>\"], ...]"))?;
        let mut entries = Vec::with_capacity(values.len());
        let mut with_metadata = 0;
        for v in values {
            if v.get(2)
                .is_some_and(|m| m.as_object().is_some_and(|o| !o.is_empty()))
            {
                with_metadata += 1;
            }
            let (Some(ts), Some(line)) = (
                v.get(0).and_then(|t| t.as_str()),
                v.get(1).and_then(|l| l.as_str()),
            ) else {
                return Err(bad("each value is [\"<unix ns as a string>\", \"<line>\"]"));
            };
            let ts: i64 = ts
                .parse()
                .map_err(|_| bad(format!("timestamp {ts:?} is not Unix nanoseconds")))?;
            entries.push((ts, line.to_owned()));
        }
        out.push(Incoming {
            labels,
            entries,
            with_metadata,
        });
    }
    Ok(out)
}

/// Parses Prometheus' label text, `{a="b", c="d"}`.
pub fn parse_labels(s: &str) -> Result<Vec<(String, String)>, Refused> {
    let q = query::parse(s).map_err(|e| bad(format!("labels {s:?}: {e}")))?;
    q.matchers
        .into_iter()
        .map(|m| match m.op {
            query::Op::Eq(v) => Ok((m.label.name().to_owned(), v)),
            _ => Err(bad(format!("labels {s:?}: only name=\"value\" pairs"))),
        })
        .collect()
}

/// Where a stream's lines go: node, file labels, stdout/stderr, file id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Node.
    pub node: String,
    /// The file's labels.
    pub labels: FileLabels,
    /// The lines' stream.
    pub stream: Stream,
    /// Stable file id: FNV-1a of the sorted label set.
    pub file_id: u64,
}

/// FNV-1a, 64 bits: stable across builds and versions, which file ids
/// must be (the de-duplication marks are kept by them).
fn fnv1a(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Maps a Loki stream's labels to a logfleet file.
pub fn target(labels: &[(String, String)]) -> Result<Target, Refused> {
    let mut sorted: Vec<(String, String)> = labels.to_vec();
    sorted.sort();
    sorted.dedup_by(|a, b| a.0 == b.0);
    if sorted.len() != labels.len() {
        return Err(bad("a label appears twice"));
    }
    let mut id = 0xcbf2_9ce4_8422_2325u64;
    for (k, v) in &sorted {
        id = fnv1a(k.as_bytes(), id);
        id = fnv1a(&[0], id);
        id = fnv1a(v.as_bytes(), id);
        id = fnv1a(&[0xff], id);
    }
    let mut t = Target {
        node: DEFAULT_NODE.into(),
        labels: FileLabels::default(),
        stream: Stream::Unknown,
        file_id: id,
    };
    for (k, v) in sorted {
        match k.as_str() {
            // Not the node: the push token is shared, and a push that named
            // node N would store lines as N's agent and keep N's last push
            // fresh (so NotReporting never fired for a dead node). Lines
            // pushed here are the `loki-push` node's; the label is kept as
            // `label_node`, as other names logfleet uses itself are.
            "node" => t.labels.extra.push(Label {
                name: "label_node".into(),
                value: v,
            }),
            "namespace" => t.labels.namespace = v,
            "pod" => t.labels.pod = v,
            "pod_uid" => t.labels.pod_uid = v,
            "container" => t.labels.container = v,
            "restart" => {
                t.labels.restart = v
                    .parse()
                    .map_err(|_| bad(format!("label restart={v:?} is not a number")))?;
            }
            "stream" => {
                t.stream = match v.as_str() {
                    "stdout" => Stream::Stdout,
                    "stderr" => Stream::Stderr,
                    _ => return Err(bad(format!("label stream={v:?}: stdout or stderr"))),
                }
            }
            _ => t.labels.extra.push(Label { name: k, value: v }),
        }
    }
    // `label_node` stood where `node` sorts.
    t.labels.extra.sort_by(|a, b| a.name.cmp(&b.name));
    crate::ingest::check_extra(&t.labels.extra).map_err(bad)?;
    Ok(t)
}

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

/// Structured metadata is not kept (no place for it yet): counted and
/// said, not dropped in silence.
pub fn count_metadata(incoming: &[Incoming], metrics: &crate::metrics::Metrics) {
    let metadata: u64 = incoming.iter().map(|s| s.with_metadata).sum();
    if metadata > 0 {
        metrics.loki_metadata_dropped.inc_by(metadata);
        tracing::warn!(
            entries = metadata,
            "Loki push carried structured metadata, which logfleet does not keep"
        );
    }
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
            let mut b = logfleet_proto::LinesBuilder::default();
            for (i, (ts, line)) in pending.iter().enumerate() {
                b.push(0, *ts, base + i as u64, t.stream as i32, 0, line.as_bytes());
            }
            let (payload, raw_len) =
                logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).map_err(|e| {
                    Refused {
                        status: 500,
                        msg: e.to_string(),
                    }
                })?;
            let req = PushRequest {
                node: t.node.clone(),
                compression: Compression::Zstd as i32,
                raw_len,
                ranges: vec![FileRange {
                    file_id: t.file_id,
                    labels: Some(t.labels.clone()),
                    start: base,
                    end: base + n,
                    lines_end: 0,
                }],
                payload,
            };
            let r = writer.push(req, limits).await.map_err(|e| match e {
                crate::ingest::PushError::Invalid(_) | crate::ingest::PushError::Codec(_) => {
                    bad(e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_map_to_a_file() {
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect::<Vec<_>>()
        };
        let t = target(&l(&[
            ("job", "varlogs"),
            ("namespace", "shop"),
            ("stream", "stderr"),
            ("node", "n1"),
            ("app", "web"),
        ]))
        .unwrap();
        // A push cannot pose as an agent's node: it is loki-push's.
        assert_eq!(t.node, DEFAULT_NODE);
        assert_eq!(t.labels.namespace, "shop");
        assert_eq!(t.stream, Stream::Stderr);
        assert_eq!(
            t.labels.extra,
            vec![
                Label {
                    name: "app".into(),
                    value: "web".into()
                },
                Label {
                    name: "job".into(),
                    value: "varlogs".into()
                },
                Label {
                    name: "label_node".into(),
                    value: "n1".into()
                }
            ]
        );
        // Order does not matter; any label does.
        let same = target(&l(&[
            ("app", "web"),
            ("node", "n1"),
            ("stream", "stderr"),
            ("namespace", "shop"),
            ("job", "varlogs"),
        ]))
        .unwrap();
        assert_eq!(t.file_id, same.file_id);
        let other = target(&l(&[("app", "web2")])).unwrap();
        assert_ne!(t.file_id, other.file_id);
        assert_eq!(other.node, DEFAULT_NODE);
        // The id is FNV-1a over the sorted pairs: stable across builds.
        assert_eq!(
            target(&l(&[("a", "b")])).unwrap().file_id,
            fnv1a(
                &[0xff],
                fnv1a(b"b", fnv1a(&[0], fnv1a(b"a", 0xcbf2_9ce4_8422_2325)))
            )
        );
        for (bad_labels, why) in [
            (l(&[("stream", "weird")]), "stdout or stderr"),
            (l(&[("restart", "x")]), "not a number"),
            (l(&[("a-b", "x")]), "not a label name"),
        ] {
            assert!(target(&bad_labels).unwrap_err().msg.contains(why));
        }
        assert_eq!(
            parse_labels(r#"{job="a", x="y z"}"#).unwrap(),
            l(&[("job", "a"), ("x", "y z")])
        );
        assert!(parse_labels(r#"{job=~"a"}"#).is_err());
    }

    #[test]
    fn a_snappy_body_claiming_too_much_is_refused_before_it_is_allocated() {
        // The varint length header alone: 1 GiB claimed, nothing behind it.
        let mut body = Vec::new();
        prost::encoding::encode_varint(1 << 30, &mut body);
        let r = decode("application/x-protobuf", &body).unwrap_err();
        assert_eq!(r.status, 413, "{}", r.msg);
        // A real one just over the limit, too.
        let big = snap::raw::Encoder::new()
            .compress_vec(&vec![0u8; MAX_DECODED + 1])
            .unwrap();
        assert_eq!(
            decode("application/x-protobuf", &big).unwrap_err().status,
            413
        );
    }

    #[test]
    fn json_bodies() {
        let v = decode(
            "application/json",
            br#"{"streams":[{"stream":{"job":"a"},"values":[["1700000000000000001","one"],["1700000000000000002","two",{"trace":"x"}]]}]}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            vec![Incoming {
                labels: vec![("job".into(), "a".into())],
                entries: vec![
                    (1_700_000_000_000_000_001, "one".into()),
                    (1_700_000_000_000_000_002, "two".into())
                ],
                with_metadata: 1,
            }]
        );
        for (body, why) in [
            (
                &br#"{"streams":[{"stream":{"job":"a"},"values":[[1700000000, "x"]]}]}"#[..],
                "as a string",
            ),
            (
                &br#"{"streams":[{"stream":{"job":"a"},"values":[["soon", "x"]]}]}"#[..],
                "Unix nanoseconds",
            ),
            (&br#"{"nope":1}"#[..], "streams"),
            (&b"{"[..], "invalid JSON"),
        ] {
            assert!(decode("application/json", body)
                .unwrap_err()
                .msg
                .contains(why));
        }
    }
}
