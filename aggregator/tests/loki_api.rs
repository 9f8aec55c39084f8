//! Loki's HTTP API on the embedded store: the suite of `loki_suite`.

use std::sync::Arc;
use std::time::Duration;

use logfleet_embedded::ingest::StoreConfig;
use logfleet_embedded::Embedded;
use logfleet_store::metrics::Metrics;

mod loki_suite;

/// The embedded store in a fresh directory.
pub fn open_backend(metrics: Metrics) -> loki_suite::Opened {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        data_dir: dir.path().to_owned(),
        segment_bytes: 1 << 30,
        segment_age: Duration::from_secs(3600),
        retention_age: None,
        retention_bytes: None,
        zstd_level: 1,
    };
    let embedded = Embedded::open(cfg, metrics, Default::default(), 64 << 20).unwrap();
    loki_suite::Opened {
        writer: Some(embedded.writer().clone()),
        backend: Arc::new(embedded),
        dir: Some(dir),
    }
}
