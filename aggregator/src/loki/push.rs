//! `POST /loki/api/v1/push`: Promtail, Grafana Alloy, Fluent Bit's `loki`
//! output and Vector's `loki` sink send here. Bodies are JSON or
//! snappy-compressed protobuf (Loki's `logproto.PushRequest`), optionally
//! gzip-encoded. Each Loki stream becomes a logfleet file of the node
//! `loki-push`: its labels become the file's (`namespace`, `pod`,
//! `pod_uid`, `container`, `restart`; `stream` when it is `stdout`/`stderr`;
//! the rest `extra`, a `node` label as `label_node`, so that no push poses
//! as an agent's node).
//! Here the body is decoded; the store maps each stream to a file
//! ([`logfleet_store::loki::target`]) and drops entries it holds already,
//! as Loki does.

use logfleet_store::query;
use prost::Message;

pub use logfleet_store::loki::{Incoming, Refused};

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

/// Decodes a push body (already gunzipped): JSON when the content type
/// says so, else snappy-compressed protobuf.
pub fn decode(content_type: &str, body: &[u8]) -> Result<Vec<Incoming>, Refused> {
    if content_type.contains("json") {
        return decode_json(body);
    }
    // Snappy states the decompressed length up front: judge it before
    // allocating, or a small body claiming gigabytes would take them.
    let claimed = snap::raw::decompress_len(body)
        .map_err(|e| Refused::bad(format!("not a snappy-compressed protobuf body: {e}")))?;
    if claimed > MAX_DECODED {
        return Err(Refused {
            status: 413,
            msg: format!("the push decompresses to more than {MAX_DECODED} bytes"),
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| Refused::bad(format!("not a snappy-compressed protobuf body: {e}")))?;
    let req = LokiPushRequest::decode(raw.as_slice())
        .map_err(|e| Refused::bad(format!("not a Loki PushRequest: {e}")))?;
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
                            .ok_or_else(|| Refused::bad("timestamp out of range"))?;
                        Ok((ns, e.line))
                    })
                    .collect::<Result<_, Refused>>()?,
            })
        })
        .collect()
}

fn decode_json(body: &[u8]) -> Result<Vec<Incoming>, Refused> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Refused::bad(format!("invalid JSON: {e}")))?;
    let streams = v
        .get("streams")
        .and_then(|s| s.as_array())
        .ok_or_else(|| Refused::bad("expected {\"streams\": [...]}"))?;
    let mut out = Vec::new();
    for s in streams {
        let labels = s
            .get("stream")
            .and_then(|l| l.as_object())
            .ok_or_else(|| Refused::bad("each stream needs a \"stream\" object of labels"))?
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_owned()))
                    .ok_or_else(|| Refused::bad(format!("label {k:?} is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let values = s.get("values").and_then(|v| v.as_array()).ok_or_else(|| {
            Refused::bad("each stream needs \"values\": [[\"<ns>\", \"<line>\"], ...]")
        })?;
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
                return Err(Refused::bad(
                    "each value is [\"<unix ns as a string>\", \"<line>\"]",
                ));
            };
            let ts: i64 = ts
                .parse()
                .map_err(|_| Refused::bad(format!("timestamp {ts:?} is not Unix nanoseconds")))?;
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
    let q = query::parse(s).map_err(|e| Refused::bad(format!("labels {s:?}: {e}")))?;
    q.matchers
        .into_iter()
        .map(|m| match m.op {
            query::Op::Eq(v) => Ok((m.label.name().to_owned(), v)),
            _ => Err(Refused::bad(format!(
                "labels {s:?}: only name=\"value\" pairs"
            ))),
        })
        .collect()
}

/// Structured metadata is not kept (no place for it yet): counted and
/// said, not dropped in silence.
pub fn count_metadata(incoming: &[Incoming], metrics: &logfleet_store::metrics::Metrics) {
    let metadata: u64 = incoming.iter().map(|s| s.with_metadata).sum();
    if metadata > 0 {
        metrics.loki_metadata_dropped.inc_by(metadata);
        tracing::warn!(
            entries = metadata,
            "Loki push carried structured metadata, which logfleet does not keep"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_parse_as_selectors_of_equalities() {
        assert_eq!(
            parse_labels(r#"{job="a", x="y z"}"#).unwrap(),
            vec![
                ("job".to_owned(), "a".to_owned()),
                ("x".into(), "y z".into())
            ]
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
