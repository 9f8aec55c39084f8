//! The controller's Prometheus metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::coverage::NodeCoverage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    namespace: String,
    name: String,
    state: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Reconcile runs, failures, durations, applies and node coverage.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Counter,
    duration: Histogram,
    applies: Family<KindLabel, Counter>,
    nodes: Family<NodeLabels, Gauge>,
    // Label sets last set per collector, to zero the ones that went away.
    last: Mutex<HashMap<(String, String), Vec<NodeLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        let failures = Counter::default();
        let duration = Histogram::new([0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]);
        let applies = Family::<KindLabel, Counter>::default();
        let nodes = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "logfleet_controller_reconciles",
            "Reconcile runs",
            reconciles.clone(),
        );
        registry.register(
            "logfleet_controller_reconcile_failures",
            "Reconcile runs that failed",
            failures.clone(),
        );
        registry.register(
            "logfleet_controller_reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register(
            "logfleet_controller_applies",
            "Server-side applies sent, by kind (none when nothing changed)",
            applies.clone(),
        );
        registry.register(
            "logfleet_nodes",
            "Expected nodes by state (covered/missing) and reason",
            nodes.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            applies,
            nodes,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        self.reconciles.inc();
        if !ok {
            self.failures.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts one apply.
    pub fn applied(&self, kind: &str) {
        self.applies
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Sets the node gauges of one collector.
    pub fn coverage(&self, namespace: &str, name: &str, rows: &[NodeCoverage]) {
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for r in rows {
            let key = match &r.gap {
                None => ("covered", ""),
                Some(g) => ("missing", g.reason.as_str()),
            };
            *counts.entry(key).or_default() += 1;
        }
        let labels: Vec<NodeLabels> = counts
            .keys()
            .map(|(state, reason)| NodeLabels {
                namespace: namespace.into(),
                name: name.into(),
                state: (*state).into(),
                reason: (*reason).into(),
            })
            .collect();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = last.get(&(namespace.to_owned(), name.to_owned())) {
            for l in prev {
                if !labels.contains(l) {
                    self.nodes.remove(l);
                }
            }
        }
        for (l, n) in labels.iter().zip(counts.values()) {
            self.nodes.get_or_create(l).set(*n);
        }
        last.insert((namespace.to_owned(), name.to_owned()), labels);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coverage::{Gap, Reason};

    fn row(node: &str, gap: Option<Reason>) -> NodeCoverage {
        NodeCoverage {
            node: node.into(),
            pod: None,
            ready: gap.is_none(),
            revision: None,
            last_push: None,
            gap: gap.map(|reason| Gap {
                reason,
                message: String::new(),
            }),
        }
    }

    #[test]
    fn node_gauges_follow_the_latest_coverage() {
        let m = Metrics::new();
        m.coverage(
            "logfleet",
            "logs",
            &[
                row("a", None),
                row("b", None),
                row("c", Some(Reason::TaintNotTolerated)),
            ],
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"logfleet_nodes{namespace="logfleet",name="logs",state="covered",reason=""} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"logfleet_nodes{namespace="logfleet",name="logs",state="missing",reason="TaintNotTolerated"} 1"#), "{text}");
        // The gap closes: its series goes, rather than staying at 1.
        m.coverage(
            "logfleet",
            "logs",
            &[row("a", None), row("b", None), row("c", None)],
        );
        let text = m.encode();
        assert!(!text.contains("TaintNotTolerated"), "{text}");
        assert!(text.contains(r#"state="covered",reason=""} 3"#), "{text}");
        m.reconciled(Duration::from_millis(3), false);
        m.applied("DaemonSet");
        let text = m.encode();
        assert!(
            text.contains("logfleet_controller_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("logfleet_controller_reconcile_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"logfleet_controller_applies_total{kind="DaemonSet"} 1"#),
            "{text}"
        );
    }
}
