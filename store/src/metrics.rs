//! The aggregator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of refused requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why it was refused.
    pub reason: String,
}

/// Every metric the aggregator exports. Handles are cheap clones of shared
/// atomics, so the struct is shared by reference.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Stored batches.
    pub batches: Counter,
    /// Stored lines.
    pub lines: Counter,
    /// Stored bytes of line text.
    pub bytes: Counter,
    /// Lines dropped as already stored.
    pub duplicate_lines: Counter,
    /// Refused pushes by reason.
    pub rejected: Family<Reason, Counter>,
    /// Requests refused for a missing or wrong token.
    pub unauthenticated: Counter,
    /// Pushes whose identity token named no node (clusters before 1.30):
    /// only the service account was checked.
    pub identity_without_node: Counter,
    /// Storage failures.
    pub store_errors: Counter,
    /// Commits refused because the disk was full.
    pub disk_full: Counter,
    /// Segments deleted by retention.
    pub segments_deleted: Counter,
    /// Segments compacted into chunk files.
    pub compactions: Counter,
    /// Bytes on disk in segments.
    pub stored_bytes: Gauge,
    /// Segment count.
    pub segments: Gauge,
    /// Streams known (label sets: node and container log file).
    pub streams: Gauge,
    /// Compacted chunk files.
    pub chunk_files: Gauge,
    /// Loki push entries whose structured metadata was not kept.
    pub loki_metadata_dropped: Counter,
    /// Queries served.
    pub queries: Counter,
    /// Open live tails.
    pub tails: Gauge,
    /// Time to write and fsync a commit group.
    pub fsync_seconds: Histogram,
    /// Stored records found damaged (at start-up or by a query) and skipped.
    pub damaged_records: Counter,
    /// Queries stopped at their deadline.
    pub query_timeouts: Counter,
    /// Pushes waiting for room to be decoded.
    pub pushes_waiting: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        Self::with(registry, true)
    }

    /// The metrics of an aggregator over another store (ClickHouse): the
    /// embedded store's own (segments, chunk files, commits, bytes on
    /// disk and of text, decoding back-pressure, damaged records,
    /// compactions, retention) are not exported, rather than exported as
    /// zeros that say nothing.
    pub fn without_embedded_store(registry: &mut Registry) -> Self {
        Self::with(registry, false)
    }

    fn with(registry: &mut Registry, embedded: bool) -> Self {
        let m = Metrics {
            batches: Counter::default(),
            lines: Counter::default(),
            bytes: Counter::default(),
            duplicate_lines: Counter::default(),
            rejected: Family::default(),
            unauthenticated: Counter::default(),
            identity_without_node: Counter::default(),
            compactions: Counter::default(),
            store_errors: Counter::default(),
            disk_full: Counter::default(),
            segments_deleted: Counter::default(),
            stored_bytes: Gauge::default(),
            segments: Gauge::default(),
            streams: Gauge::default(),
            chunk_files: Gauge::default(),
            loki_metadata_dropped: Counter::default(),
            queries: Counter::default(),
            tails: Gauge::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            damaged_records: Counter::default(),
            query_timeouts: Counter::default(),
            pushes_waiting: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("logfleet_aggregator");
        r.register("batches", "Batches stored", m.batches.clone());
        r.register("lines", "Lines stored", m.lines.clone());
        r.register(
            "duplicate_lines",
            "Re-sent lines recognised and dropped",
            m.duplicate_lines.clone(),
        );
        r.register(
            "rejected_pushes",
            "Pushes refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "unauthenticated_requests",
            "Requests refused for a missing or wrong token",
            m.unauthenticated.clone(),
        );
        r.register(
            "identity_without_node",
            "Requests whose identity token named no node (Kubernetes before 1.30): only the service account was checked",
            m.identity_without_node.clone(),
        );
        r.register(
            "loki_structured_metadata_dropped",
            "Entries pushed through Loki's API whose structured metadata was not kept",
            m.loki_metadata_dropped.clone(),
        );
        r.register("queries", "Queries served", m.queries.clone());
        r.register("tails", "Live tails open", m.tails.clone());
        r.register(
            "query_timeouts",
            "Queries stopped at their deadline",
            m.query_timeouts.clone(),
        );
        if embedded {
            r.register("bytes", "Bytes of line text stored", m.bytes.clone());
            r.register(
                "pushes_waiting",
                "Pushes waiting for decoding room (back-pressure)",
                m.pushes_waiting.clone(),
            );
            r.register("store_errors", "Storage failures", m.store_errors.clone());
            r.register(
                "disk_full",
                "Commits refused because the data disk was full (agents keep the lines and retry)",
                m.disk_full.clone(),
            );
            r.register(
                "compactions",
                "Push log segments compacted into stream-shaped chunk files",
                m.compactions.clone(),
            );
            r.register(
                "segments_deleted",
                "Segments deleted by retention",
                m.segments_deleted.clone(),
            );
            r.register(
                "stored_bytes",
                "Bytes of segment files on disk",
                m.stored_bytes.clone(),
            );
            r.register("segments", "Segment files on disk", m.segments.clone());
            r.register(
                "streams",
                "Streams known: one per node and container log file (the store's label cardinality)",
                m.streams.clone(),
            );
            r.register(
                "chunk_files",
                "Compacted chunk files on disk",
                m.chunk_files.clone(),
            );
            r.register(
                "commit_seconds",
                "Time to write and fsync one commit group",
                m.fsync_seconds.clone(),
            );
            r.register(
                "damaged_records",
                "Stored records found damaged and skipped (at start-up or by a query)",
                m.damaged_records.clone(),
            );
        }

        m
    }

    /// Counts a refused push.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
