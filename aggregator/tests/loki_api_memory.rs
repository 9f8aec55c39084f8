//! Loki's HTTP API on the in-memory store: the suite of `loki_suite`, to
//! show that a backend is whatever implements the store interface.

use std::sync::Arc;

use logfleet_store::memory::Memory;
use logfleet_store::metrics::Metrics;

#[path = "loki_suite/mod.rs"]
mod loki_suite;

/// An empty in-memory store.
pub fn open_backend(_metrics: Metrics) -> loki_suite::Opened {
    loki_suite::Opened {
        backend: Arc::new(Memory::default()),
        writer: None,
        dir: None,
    }
}
