//! The one interface between the aggregator's servers and a store. The
//! gRPC services, the HTTP port and Loki's API (crate `logfleet-aggregator`)
//! are written once against [`Backend`]; the embedded segment store
//! (`logfleet-embedded`), ClickHouse (`logfleet-clickhouse`) and the
//! in-memory store of tests ([`crate::memory`]) implement it.
//!
//! Small on purpose: store a push durably, read entries, evaluate a metric
//! query, list streams, say what is stored per agent, follow new lines,
//! and say whether the store can serve. What a store can answer faster
//! (label values by SQL, counts from chunk metadata) it does inside these
//! methods or by overriding a provided one, not through a second server.

use std::sync::Arc;

use logfleet_logql::eval::{Labels, Steps, Value};
use logfleet_logql::Metric;
use logfleet_proto::v1::{AgentInfo, Entry, HeartbeatRequest, PushRequest, PushResponse};
use tokio_stream::wrappers::ReceiverStream;

use crate::query::{Bounds, Control, IndexStats, Query, QueryError};

/// Entries as a backend streams them: batches in the order asked for, or
/// the error that ended the stream.
pub type Entries = ReceiverStream<Result<Vec<Entry>, QueryError>>;

/// Whether a backend can serve now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It can.
    Ready,
    /// It serves queries but may refuse pushes (a full disk): said with
    /// 200, so that Grafana still reaches the aggregator.
    Degraded(String),
    /// It cannot serve (an external store away, or not connected yet).
    Unavailable(String),
}

/// What kind of refusal a push got: agents retry all but `Invalid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFailureKind {
    /// The push itself is wrong; retrying it cannot help.
    Invalid,
    /// No room to store it now (a full disk): agents wait.
    Full,
    /// The store cannot take it now; retried later.
    Unavailable,
}

/// A push not stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PushFailure {
    /// How the agent should take it.
    pub kind: PushFailureKind,
    /// The `reason` label of `logfleet_aggregator_rejected_pushes`; `None`:
    /// not counted there (the store counts its own unavailability).
    pub reason: Option<&'static str>,
    /// What went wrong.
    pub message: String,
}

/// A Loki push refused, with the HTTP status Loki would answer.
pub use crate::loki::Refused;

/// One of Loki's pushed streams, decoded.
pub use crate::loki::Incoming;

/// A store the aggregator serves. Blocking work runs off the async
/// threads inside the implementation.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Whether it can serve now (`/readyz`).
    fn health(&self) -> Health;

    /// Stores an agent's push and returns once it is durable, or says why
    /// not. A push stored before is acknowledged again, not stored twice.
    async fn push(&self, req: PushRequest) -> Result<PushResponse, PushFailure>;

    /// Stores a Loki push (`/loki/api/v1/push`) and returns once durable;
    /// the same entries pushed again are not stored twice.
    async fn push_loki(&self, streams: Vec<Incoming>) -> Result<(), Refused>;

    /// Records an agent's heartbeat (node name already checked).
    async fn heartbeat(&self, hb: HeartbeatRequest) -> Result<(), QueryError>;

    /// Every agent that pushed or sent a heartbeat, sorted by node.
    async fn agents(&self) -> Result<Vec<AgentInfo>, QueryError>;

    /// The entries of `q` within `b`, in `b`'s order and limit, streamed
    /// in batches. Refuses at once what it cannot run; stops when `ctl`
    /// says so or when the receiver is dropped.
    fn query(&self, q: Query, b: Bounds, ctl: Arc<Control>) -> Result<Entries, QueryError>;

    /// Entries of `q` stored from now on, as they are stored. A follower
    /// that falls too far behind gets [`QueryError::Lagged`].
    fn tail(&self, q: Query) -> Result<Entries, QueryError>;

    /// Evaluates a metric query at `steps`.
    async fn metric(&self, m: Metric, steps: Steps, ctl: Arc<Control>)
        -> Result<Value, QueryError>;

    /// The label sets (without `stream`, which is per line) of the streams
    /// any of `selectors` picks in `[start, end)`; every stream when there
    /// are none. Sorted, each once.
    async fn streams(
        &self,
        selectors: Vec<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<Labels>, QueryError>;

    /// What a log query would read: Loki's `index/stats`.
    async fn index_stats(&self, q: Query, start: i64, end: i64) -> Result<IndexStats, QueryError>;

    /// The label names of the streams `selector` picks in the range, with
    /// `stream` when any does. From [`Backend::streams`] unless the store
    /// knows faster.
    async fn label_names(
        &self,
        selector: Option<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, QueryError> {
        let streams = self
            .streams(selector.into_iter().collect(), start, end)
            .await?;
        Ok(names_of(&streams))
    }

    /// The values of label `name` among the streams `selector` picks in
    /// the range. From [`Backend::streams`] unless the store knows faster.
    async fn label_values(
        &self,
        name: String,
        selector: Option<Query>,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, QueryError> {
        let streams = self
            .streams(selector.into_iter().collect(), start, end)
            .await?;
        Ok(values_of(&streams, &name))
    }

    /// Resolves with the reason when the store failed so that nothing more
    /// may be acknowledged: the aggregator then stops. Never, by default.
    async fn failed(&self) -> String {
        std::future::pending().await
    }

    /// The aggregator is stopping: work that waits for clients ends.
    fn stopping(&self) {}

    /// Last writes before the process ends (heartbeats not yet stored).
    async fn close(&self) {}
}

/// The label names of `streams`, with `stream` when there is any: Loki's
/// answer to `labels`. Pure.
pub fn names_of(streams: &[Labels]) -> Vec<String> {
    let mut names: Vec<String> = streams
        .iter()
        .flat_map(|l| l.iter().map(|(n, _)| n.clone()))
        .collect();
    if !streams.is_empty() {
        names.push("stream".into());
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// The values of label `name` among `streams`: `stream` is per line, so
/// its values are those a line can have. Pure.
pub fn values_of(streams: &[Labels], name: &str) -> Vec<String> {
    let mut values: Vec<String> = if name == "stream" {
        if streams.is_empty() {
            Vec::new()
        } else {
            vec!["stderr".into(), "stdout".into()]
        }
    } else {
        streams
            .iter()
            .flat_map(|l| l.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()))
            .collect()
    };
    values.sort_unstable();
    values.dedup();
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn names_and_values_come_from_the_streams() {
        let s = vec![
            l(&[("app", "web"), ("namespace", "shop")]),
            l(&[("app", "api"), ("pod", "p")]),
            l(&[("app", "web")]),
        ];
        assert_eq!(names_of(&s), ["app", "namespace", "pod", "stream"]);
        assert_eq!(values_of(&s, "app"), ["api", "web"]);
        assert_eq!(values_of(&s, "stream"), ["stderr", "stdout"]);
        assert!(values_of(&s, "nope").is_empty());
        assert!(names_of(&[]).is_empty());
        assert!(values_of(&[], "stream").is_empty());
    }
}
