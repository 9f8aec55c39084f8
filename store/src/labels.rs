//! The label model of stored lines: a file's labels on its node, and its
//! lines' `stream`, as the label pairs Loki clients see, and stored lines
//! as query entries. Pure; shared by both stores and the APIs.

use std::sync::Arc;

use logfleet_proto::lines::{CUT, UNPARSED, UNTERMINATED};
use logfleet_proto::v1::{Entry, FileLabels, Stream};
use logfleet_proto::Line;

/// One stream: the labels of a container's log file on a node. Each
/// container instance (pod uid, restart) is its own stream, as it is its
/// own file: the agent's de-duplication marks are per file anyway, so this
/// adds no cardinality the store does not already hold.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Node.
    pub node: Arc<str>,
    /// Labels.
    pub labels: FileLabels,
}

/// The `stream` label's value of a line: `stdout`, `stderr`, or empty.
pub fn stream_name(s: i32) -> &'static str {
    match Stream::try_from(s) {
        Ok(Stream::Stdout) => "stdout",
        Ok(Stream::Stderr) => "stderr",
        _ => "",
    }
}

/// The labels of lines: a stream's, as Loki clients see them.
pub const LABEL_NAMES: [&str; 7] = [
    "container",
    "namespace",
    "node",
    "pod",
    "pod_uid",
    "restart",
    "stream",
];

/// The value of an extra label, empty when the file has none.
pub fn extra_value<'a>(l: &'a FileLabels, name: &str) -> &'a str {
    l.extra
        .binary_search_by(|x| x.name.as_str().cmp(name))
        .ok()
        .map_or("", |i| l.extra[i].value.as_str())
}

/// A line's labels as sorted name/value pairs (empty values left out, as
/// Loki has no empty labels).
pub fn label_pairs(node: &str, l: &FileLabels, stream: i32) -> Vec<(String, String)> {
    let values = [
        l.container.clone(),
        l.namespace.clone(),
        node.to_owned(),
        l.pod.clone(),
        l.pod_uid.clone(),
        l.restart.to_string(),
        stream_name(stream).to_owned(),
    ];
    let mut out: Vec<(String, String)> = LABEL_NAMES
        .iter()
        .zip(values)
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| ((*n).to_owned(), v))
        .collect();
    if !l.extra.is_empty() {
        out.extend(
            l.extra
                .iter()
                .filter(|x| !x.value.is_empty())
                .map(|x| (x.name.clone(), x.value.clone())),
        );
        out.sort();
    }
    out
}

/// A line's label set as Loki clients see it: the pipeline's when the
/// query had stages, else the stream's.
pub fn entry_labels(e: &Entry) -> Vec<(String, String)> {
    if e.piped {
        return e
            .pipeline_labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
    }
    label_pairs(&e.node, &e.labels.clone().unwrap_or_default(), e.stream)
}

/// The text to show for a line: `line_format`'s when it ran.
pub fn entry_text(e: &Entry) -> String {
    match &e.formatted {
        Some(f) => f.clone(),
        None => String::from_utf8_lossy(&e.line).into_owned(),
    }
}

/// Sets what a query's pipeline made of an entry's line.
pub fn pipe(e: &mut Entry, p: logfleet_logql::pipeline::Processed) {
    e.piped = true;
    if p.line.as_bytes() != e.line.as_slice() {
        e.formatted = Some(p.line);
    }
    e.pipeline_labels = p
        .labels
        .into_iter()
        .map(|(name, value)| logfleet_proto::v1::Label { name, value })
        .collect();
}

/// Converts a stored line to an entry.
pub fn entry(node: &str, labels: &FileLabels, l: &Line) -> Entry {
    Entry {
        ts_unix_nano: l.ts,
        node: node.to_owned(),
        labels: Some(labels.clone()),
        stream: l.stream,
        line: l.text.to_vec(),
        unterminated: l.flags & UNTERMINATED != 0,
        cut: l.flags & CUT != 0,
        unparsed: l.flags & UNPARSED != 0,
        ..Default::default()
    }
}
