//! A Loki push as every store takes it: the decoded streams, the file a
//! stream's labels map to, and the refusal a client hears. Decoding the
//! HTTP body is the server's; de-duplicating the entries is each store's.

use logfleet_proto::v1::{Compression, FileLabels, FileRange, Label, PushRequest, Stream};

/// The node of every line pushed through Loki's API.
pub const DEFAULT_NODE: &str = "loki-push";

/// A push that cannot be taken: status and reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Why.
    pub msg: String,
}

impl Refused {
    /// A push that is wrong as sent: 400, as Loki answers it.
    pub fn bad(msg: impl Into<String>) -> Refused {
        Refused {
            status: 400,
            msg: msg.into(),
        }
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
        return Err(Refused::bad("a label appears twice"));
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
                    .map_err(|_| Refused::bad(format!("label restart={v:?} is not a number")))?;
            }
            "stream" => {
                t.stream = match v.as_str() {
                    "stdout" => Stream::Stdout,
                    "stderr" => Stream::Stderr,
                    _ => {
                        return Err(Refused::bad(format!(
                            "label stream={v:?}: stdout or stderr"
                        )))
                    }
                }
            }
            _ => t.labels.extra.push(Label { name: k, value: v }),
        }
    }
    // `label_node` stood where `node` sorts.
    t.labels.extra.sort_by(|a, b| a.name.cmp(&b.name));
    crate::push::check_extra(&t.labels.extra).map_err(Refused::bad)?;
    Ok(t)
}

impl Target {
    /// The push of `lines` (offset, ns, text; offsets ascending) into this
    /// stream's file, as an agent would send it.
    pub fn request<'a>(
        &self,
        lines: impl IntoIterator<Item = (u64, i64, &'a str)>,
        compression: Compression,
        level: i32,
    ) -> Result<PushRequest, Refused> {
        let mut b = logfleet_proto::LinesBuilder::default();
        let (mut start, mut end) = (None, 0);
        for (offset, ts, line) in lines {
            start.get_or_insert(offset);
            end = offset + 1;
            b.push(0, ts, offset, self.stream as i32, 0, line.as_bytes());
        }
        let (payload, raw_len) = logfleet_proto::encode_payload(&b.finish(), compression, level)
            .map_err(|e| Refused {
                status: 500,
                msg: e.to_string(),
            })?;
        Ok(PushRequest {
            node: self.node.clone(),
            compression: compression as i32,
            raw_len,
            ranges: vec![FileRange {
                file_id: self.file_id,
                labels: Some(self.labels.clone()),
                start: start.unwrap_or(0),
                end,
                lines_end: 0,
            }],
            payload,
        })
    }
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
    }
}
