//! The agent's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::tail::TailStats;

/// Every metric the agent exports, registered in `registry`.
#[derive(Debug)]
pub struct AgentMetrics {
    /// The registry rendered at `/metrics`.
    pub registry: Registry,
    lines_read: Counter,
    bytes_read: Counter,
    unparsed: Counter,
    cut: Counter,
    unterminated: Counter,
    truncations: Counter,
    forgotten_files: Counter,
    read_errors: Counter,
    open_files: Gauge,
    excluded_files: Gauge,
    multiline_records: Counter,
    multiline_lines: Counter,
    metadata_stale: Gauge,
    metadata_pods: Gauge,
    metadata_deleted_pods: Gauge,
    /// Batches acknowledged by the aggregator.
    pub batches_acked: Counter,
    /// Lines acknowledged by the aggregator.
    pub lines_acked: Counter,
    /// Lines the aggregator reported as already stored.
    pub lines_duplicate: Counter,
    /// Compressed bytes sent in acknowledged batches.
    pub payload_bytes: Counter,
    /// Push attempts that failed and were retried.
    pub push_retries: Counter,
    /// Batches the aggregator refused as invalid (split per file, then
    /// what is still refused goes to the dead-letter file).
    pub batches_rejected: Counter,
    /// Lines kept in the dead-letter file because the aggregator refused them.
    pub dead_letter_lines: Counter,
    /// Checkpoint saves that failed.
    pub checkpoint_failures: Counter,
    /// Unix time of the last acknowledged push.
    pub last_ack_seconds: Gauge,
    last: TailStats,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("logfleet_agent");
        let m = AgentMetrics {
            registry: Registry::default(),
            lines_read: Counter::default(),
            bytes_read: Counter::default(),
            unparsed: Counter::default(),
            cut: Counter::default(),
            unterminated: Counter::default(),
            truncations: Counter::default(),
            forgotten_files: Counter::default(),
            read_errors: Counter::default(),
            open_files: Gauge::default(),
            excluded_files: Gauge::default(),
            multiline_records: Counter::default(),
            multiline_lines: Counter::default(),
            metadata_stale: Gauge::default(),
            metadata_pods: Gauge::default(),
            metadata_deleted_pods: Gauge::default(),
            batches_acked: Counter::default(),
            lines_acked: Counter::default(),
            lines_duplicate: Counter::default(),
            payload_bytes: Counter::default(),
            push_retries: Counter::default(),
            batches_rejected: Counter::default(),
            dead_letter_lines: Counter::default(),
            checkpoint_failures: Counter::default(),
            last_ack_seconds: Gauge::default(),
            last: TailStats::default(),
        };
        let r = &mut registry;
        r.register(
            "lines_read",
            "Lines read from log files",
            m.lines_read.clone(),
        );
        r.register(
            "bytes_read",
            "Bytes read from log files",
            m.bytes_read.clone(),
        );
        r.register(
            "unparsed_lines",
            "Records that were neither CRI nor docker json, kept whole",
            m.unparsed.clone(),
        );
        r.register(
            "cut_lines",
            "Pieces cut from lines longer than the maximum line size",
            m.cut.clone(),
        );
        r.register(
            "unterminated_lines",
            "Partial runs emitted without their final chunk",
            m.unterminated.clone(),
        );
        r.register(
            "truncations",
            "Files found truncated (copy-truncate)",
            m.truncations.clone(),
        );
        r.register(
            "forgotten_files",
            "Checkpoints dropped at start-up because their file is gone (anything past the checkpoint was deleted unread)",
            m.forgotten_files.clone(),
        );
        r.register(
            "read_errors",
            "I/O errors reading log files",
            m.read_errors.clone(),
        );
        r.register("open_files", "Log files being tailed", m.open_files.clone());
        r.register(
            "excluded_files",
            "Log files left unread by a logfleet.dev/exclude annotation",
            m.excluded_files.clone(),
        );
        r.register(
            "multiline_records",
            "Multi-line records (more than one line) shipped",
            m.multiline_records.clone(),
        );
        r.register(
            "multiline_lines",
            "Lines joined into multi-line records",
            m.multiline_lines.clone(),
        );
        r.register(
            "metadata_stale",
            "1 while pod metadata is not current (watch failing or not listed yet): lines ship with the labels known",
            m.metadata_stale.clone(),
        );
        r.register(
            "metadata_pods",
            "Pods of this node whose metadata is known",
            m.metadata_pods.clone(),
        );
        r.register(
            "metadata_deleted_pods",
            "Deleted pods whose metadata is kept for files still being read",
            m.metadata_deleted_pods.clone(),
        );
        r.register(
            "batches_acked",
            "Batches acknowledged by the aggregator",
            m.batches_acked.clone(),
        );
        r.register(
            "lines_acked",
            "Lines acknowledged by the aggregator",
            m.lines_acked.clone(),
        );
        r.register(
            "lines_duplicate",
            "Lines the aggregator had already stored",
            m.lines_duplicate.clone(),
        );
        r.register(
            "payload_bytes",
            "Compressed payload bytes acknowledged",
            m.payload_bytes.clone(),
        );
        r.register(
            "push_retries",
            "Failed push attempts that were retried",
            m.push_retries.clone(),
        );
        r.register(
            "batches_rejected",
            "Batches refused by the aggregator as invalid",
            m.batches_rejected.clone(),
        );
        r.register(
            "dead_letter_lines",
            "Lines the aggregator refused, kept in the dead-letter file under the state dir",
            m.dead_letter_lines.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoint saves that failed (lines still ship; a crash re-sends more)",
            m.checkpoint_failures.clone(),
        );
        r.register(
            "last_ack_timestamp_seconds",
            "Unix time of the last acknowledged push",
            m.last_ack_seconds.clone(),
        );
        AgentMetrics { registry, ..m }
    }

    /// Adds what the tailer counted since the last call.
    pub fn sync_tail(&mut self, s: &TailStats) {
        let l = self.last;
        self.lines_read.inc_by(s.lines - l.lines);
        self.bytes_read.inc_by(s.bytes - l.bytes);
        self.unparsed.inc_by(s.odd.unparsed - l.odd.unparsed);
        self.cut.inc_by(s.odd.cut - l.odd.cut);
        self.unterminated
            .inc_by(s.odd.unterminated - l.odd.unterminated);
        self.truncations.inc_by(s.truncations - l.truncations);
        self.forgotten_files.inc_by(s.lost_files - l.lost_files);
        self.read_errors.inc_by(s.errors - l.errors);
        self.open_files.set(s.open_files as i64);
        self.excluded_files.set(s.excluded_files as i64);
        self.multiline_records.inc_by(s.records - l.records);
        self.multiline_lines.inc_by(s.joined_lines - l.joined_lines);
        self.last = *s;
    }

    /// Takes the state of the pod metadata.
    pub fn sync_metadata(&mut self, d: &crate::metadata::Directory) {
        let (live, gone) = d.len();
        self.metadata_stale.set(i64::from(d.is_stale()));
        self.metadata_pods.set(live as i64);
        self.metadata_deleted_pods.set(gone as i64);
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
