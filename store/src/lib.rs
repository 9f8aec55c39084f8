//! The store interface of the logfleet aggregator, and what every store
//! shares: [`Backend`] (the trait the servers are written against), the
//! label model of stored lines ([`labels`]), query bounds, deadlines and
//! errors ([`query`]), metric evaluation over any store's lines
//! ([`evaluate`]), live-tail fan-out ([`tail`]), push checks ([`push`]),
//! the mapping of Loki pushes to files ([`loki`]), the aggregator's
//! metrics ([`metrics`]), and a store in memory for tests ([`memory`]).
//!
//! A store is a crate that implements [`Backend`]: `logfleet-embedded`
//! (segment files on a local disk) and `logfleet-clickhouse` do.

pub mod backend;
pub mod evaluate;
pub mod labels;
pub mod loki;
pub mod memory;
pub mod metrics;
pub mod push;
pub mod query;
pub mod tail;

pub use backend::{Backend, Entries, Health, PushFailure, PushFailureKind};
