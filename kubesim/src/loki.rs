//! What Loki clients (Promtail, Grafana Alloy, the Docker driver) send to
//! `/loki/api/v1/push`, for tests of the aggregator's push endpoint.

use prost::encoding::{encode_key, encode_varint, WireType};

/// Loki's protobuf push, encoded field by field from Loki's published
/// `pkg/push/push.proto` (PushRequest.streams = 1; StreamAdapter.labels = 1,
/// entries = 2; EntryAdapter.timestamp = 1, line = 2; Timestamp.seconds = 1,
/// nanos = 2), independently of the aggregator's decoder, then snappy
/// (raw, not framed), as clients send it.
pub fn push_protobuf(labels: &str, entries: &[(i64, &str)]) -> Vec<u8> {
    fn len_field(tag: u32, body: &[u8], out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let mut stream = Vec::new();
    len_field(1, labels.as_bytes(), &mut stream);
    for (ns, line) in entries {
        let mut ts = Vec::new();
        encode_key(1, WireType::Varint, &mut ts);
        encode_varint((ns / 1_000_000_000) as u64, &mut ts);
        encode_key(2, WireType::Varint, &mut ts);
        encode_varint((ns % 1_000_000_000) as u64, &mut ts);
        let mut entry = Vec::new();
        len_field(1, &ts, &mut entry);
        len_field(2, line.as_bytes(), &mut entry);
        len_field(2, &entry, &mut stream);
    }
    let mut req = Vec::new();
    len_field(1, &stream, &mut req);
    // Compressing a Vec in memory cannot fail but for a length beyond
    // snappy's 4 GiB frame, which no test pushes.
    snap::raw::Encoder::new()
        .compress_vec(&req)
        .unwrap_or_default()
}
