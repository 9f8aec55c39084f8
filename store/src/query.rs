//! Log queries as stores run them: the language is
//! [`logfleet_logql`]'s; here a selector's labels meet stored files
//! (`node`, `namespace`, `pod`, `pod_uid`, `container`, `restart`, extra
//! labels, and `stream` per line), with the bounds, limits, deadlines and
//! errors every store shares.

use std::collections::HashMap;

use logfleet_logql::pipeline::{Labels as PipelineLabels, Processed};
pub use logfleet_logql::{Filter, Label, Matcher, Op, Query};
use logfleet_proto::v1::{Direction, Entry, FileLabels, LineBatch};
use logfleet_proto::Line;

use crate::labels::{entry, extra_value, label_pairs, pipe, stream_name, StreamInfo};

/// A query that could not be run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Syntax error, with the byte position.
    #[error("bad query at position {pos}: {msg}")]
    Parse {
        /// Byte offset in the query.
        pos: usize,
        /// What is wrong.
        msg: String,
    },
    /// An external store (ClickHouse) could not be read; retrying may help.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The query ran past its deadline.
    #[error("query stopped after {0:?}: narrow the time range or the selector")]
    Timeout(std::time::Duration),
    /// The client went away.
    #[error("query cancelled")]
    Cancelled,
    /// This store cannot run this query (ClickHouse: a regex SQL cannot
    /// express).
    #[error("{0}")]
    Unsupported(String),
    /// The store failed to answer (a malformed reply, say).
    #[error("the store failed: {0}")]
    Failed(String),
    /// A live tail fell further behind than it may.
    #[error("{0}")]
    Lagged(String),
    /// A metric query could not be evaluated.
    #[error(transparent)]
    Eval(#[from] logfleet_logql::eval::EvalError),
}

impl From<logfleet_logql::ParseError> for QueryError {
    fn from(e: logfleet_logql::ParseError) -> Self {
        QueryError::Parse {
            pos: e.pos,
            msg: e.msg,
        }
    }
}

/// When a running query must stop early.
#[derive(Debug, Default)]
pub struct Control {
    /// Set when the client went away.
    pub cancelled: std::sync::atomic::AtomicBool,
    /// Stop with [`QueryError::Timeout`] after this instant.
    pub deadline: Option<(std::time::Instant, std::time::Duration)>,
}

impl Control {
    /// Whether to go on: an error once cancelled or past the deadline.
    pub fn check(&self) -> Result<(), QueryError> {
        if self.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(QueryError::Cancelled);
        }
        match self.deadline {
            Some((at, after)) if std::time::Instant::now() >= at => Err(QueryError::Timeout(after)),
            _ => Ok(()),
        }
    }
}

/// `selectors`, or one that selects every stream when there are none: what
/// Loki's label and series endpoints take as "no selector".
pub fn or_everything(selectors: Vec<Query>) -> Vec<Query> {
    if selectors.is_empty() {
        vec![Query::default()]
    } else {
        selectors
    }
}

/// Parses a log query.
pub fn parse(s: &str) -> Result<Query, QueryError> {
    Ok(logfleet_logql::parse_log_query(s)?)
}

/// What a log query asks of stored files and lines; the values of the
/// labels a [`Label`] names are those of [`crate::labels`].
pub trait QueryExt {
    /// Whether lines of a file with these labels on `node` can match
    /// (everything but `stream`, which is per line).
    fn matches_file(&self, node: &str, l: &FileLabels) -> bool;

    /// Whether a stored line (of a file that matched) matches the `stream`
    /// matchers and the line filters.
    fn matches_stored(&self, stream: i32, line: &[u8]) -> bool;

    /// Runs the pipeline over a line that passed the selector and line
    /// filters: `None` when a stage drops it.
    fn pipe(&self, node: &str, labels: &FileLabels, stream: i32, text: &[u8]) -> Option<Processed>;
}

impl QueryExt for Query {
    fn matches_file(&self, node: &str, l: &FileLabels) -> bool {
        self.matchers.iter().all(|m| match &m.label {
            Label::Node => m.op.test(node),
            Label::Namespace => m.op.test(&l.namespace),
            Label::Pod => m.op.test(&l.pod),
            Label::PodUid => m.op.test(&l.pod_uid),
            Label::Container => m.op.test(&l.container),
            Label::Restart => m.op.test(&l.restart.to_string()),
            Label::Stream => true,
            Label::Other(name) => m.op.test(extra_value(l, name)),
        })
    }

    fn matches_stored(&self, stream: i32, line: &[u8]) -> bool {
        self.matches_line(stream_name(stream), line)
    }

    fn pipe(&self, node: &str, labels: &FileLabels, stream: i32, text: &[u8]) -> Option<Processed> {
        let stream_labels: PipelineLabels = label_pairs(node, labels, stream).into_iter().collect();
        self.pipeline.process(&stream_labels, text)
    }
}

/// Streams' label sets as pipelines start from them, built once per
/// stream (and stdout/stderr) instead of once per line.
#[derive(Default)]
pub struct StreamLabels(HashMap<(u32, i32), PipelineLabels>);

impl StreamLabels {
    /// The labels of lines of stream `sid` (`info`) on `stream`.
    pub fn get(&mut self, sid: u32, info: &StreamInfo, stream: i32) -> &PipelineLabels {
        self.0.entry((sid, stream)).or_insert_with(|| {
            label_pairs(&info.node, &info.labels, stream)
                .into_iter()
                .collect()
        })
    }
}

/// Time bounds, limit and order of a query.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Inclusive lower bound, ns.
    pub from: Option<i64>,
    /// Exclusive upper bound, ns.
    pub to: Option<i64>,
    /// Maximum lines; 0: all.
    pub limit: usize,
    /// Order.
    pub direction: Direction,
}

impl Bounds {
    /// Whether `ts` lies within.
    pub fn contains(&self, ts: i64) -> bool {
        self.from.is_none_or(|f| ts >= f) && self.to.is_none_or(|t| ts < t)
    }

    /// Whether `[min_ts, max_ts]` overlaps.
    pub fn overlaps_range(&self, min_ts: i64, max_ts: i64) -> bool {
        self.from.is_none_or(|f| max_ts >= f) && self.to.is_none_or(|t| min_ts < t)
    }
}

/// Converts a stored line to an entry, with what the pipeline made of it.
pub fn entry_piped(node: &str, labels: &FileLabels, l: &Line, piped: Option<Processed>) -> Entry {
    let mut e = entry(node, labels, l);
    if let Some(p) = piped {
        pipe(&mut e, p);
    }
    e
}

/// What a selector would read over a time range, from the indexes alone
/// (no line is read): Loki's `index/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Streams the selector picks.
    pub streams: u64,
    /// Blocks and chunks to read.
    pub chunks: u64,
    /// Lines in them (a record shared by quiet streams counts whole).
    pub entries: u64,
    /// Their size on disk (compressed).
    pub bytes: u64,
}

/// Lines of a just-committed block that match, for live tails.
pub fn matching(q: &Query, node: &str, labels: &[FileLabels], batch: &LineBatch) -> Vec<Entry> {
    let ok: Vec<bool> = labels.iter().map(|l| q.matches_file(node, l)).collect();
    batch
        .lines()
        .filter(|l| {
            ok.get(l.range as usize).copied().unwrap_or(false)
                && q.matches_stored(l.stream, &l.text)
        })
        .filter_map(|l| {
            let fl = &labels[l.range as usize];
            if q.pipeline.is_empty() {
                return Some(entry(node, fl, &l));
            }
            let piped = q.pipe(node, fl, l.stream, &l.text)?;
            Some(entry_piped(node, fl, &l, Some(piped)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use logfleet_proto::v1::Stream;

    fn labels(ns: &str, pod: &str, c: &str) -> FileLabels {
        FileLabels {
            namespace: ns.into(),
            pod: pod.into(),
            pod_uid: "u1".into(),
            container: c.into(),
            restart: 2,
            extra: Vec::new(),
        }
    }

    #[test]
    fn parses_selectors_and_filters() {
        let q = parse(r#"{namespace="default", pod=~"web-.*", container!="istio", node!~"n[0-9]"} |= "GET" != "health" |~ "status=5\d\d" !~ `(?i)debug`"#).unwrap();
        assert_eq!(q.matchers.len(), 4);
        assert_eq!(q.filters.len(), 4);
        assert!(q.matches_file("node-a", &labels("default", "web-1", "app")));
        assert!(
            !q.matches_file("n1", &labels("default", "web-1", "app")),
            "node !~"
        );
        assert!(
            !q.matches_file("node-a", &labels("default", "xweb-1", "app")),
            "regex is anchored"
        );
        assert!(!q.matches_file("node-a", &labels("default", "web-1", "istio")));
        assert!(q.matches_stored(1, b"GET /x status=503"));
        assert!(!q.matches_stored(1, b"GET /health status=503"));
        assert!(!q.matches_stored(1, b"GET /x status=200"));
        assert!(!q.matches_stored(1, b"GET /x status=500 DEBUG"));
    }

    #[test]
    fn stream_restart_and_empty_selector() {
        let q = parse(r#"{stream="stderr", restart="2"}"#).unwrap();
        assert!(q.matches_file("n", &labels("a", "b", "c")));
        assert!(q.matches_stored(Stream::Stderr as i32, b"x"));
        assert!(!q.matches_stored(Stream::Stdout as i32, b"x"));
        let all = parse("{}").unwrap();
        assert!(all.matches_file("n", &labels("a", "b", "c")) && all.matches_stored(0, b""));
        let q = parse(r#"{pod="a\"b\\c"}"#).unwrap();
        assert!(q.matches_file("n", &labels("x", "a\"b\\c", "c")));
    }
}
