//! The `LogCollector` status and the events of a reconcile, as a pure
//! function of what the controller observed and the previous status.
//!
//! Times in the status (`lastTransitionTime`, `since`) change only on
//! transitions, so an unchanged cluster yields an unchanged status and the
//! controller writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::coverage::{self, Inputs, NodeCoverage, Reason};
use crate::crd::{AgentCounts, Coverage, LogCollectorStatus, MissingNode, NodeScope};

/// At most this many nodes are listed in `status.missingNodes`.
pub const MAX_MISSING_LISTED: usize = 50;
/// At most this many nodes are named in one coverage event.
const MAX_NODES_PER_EVENT: usize = 5;

/// Condition types.
pub const AVAILABLE: &str = "Available";
/// Condition types.
pub const PROGRESSING: &str = "Progressing";
/// Condition types.
pub const DEGRADED: &str = "Degraded";

/// What a reconcile observed.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The collector's `metadata.generation`.
    pub generation: Option<i64>,
    /// The agent DaemonSet as the cluster has it (after apply).
    pub daemonset: Option<&'a DaemonSet>,
    /// The rendered agent pod spec, for placement when the DaemonSet is not
    /// there yet.
    pub rendered_template: &'a PodSpec,
    /// The aggregator's StatefulSet or Deployment as the cluster has it.
    pub aggregator: Option<Workload>,
    /// The aggregator answered that its store (ClickHouse) is unreachable,
    /// with its error.
    pub store_unavailable: Option<&'a str>,
    /// Every node.
    pub nodes: &'a [Node],
    /// This collector's agent pods.
    pub pods: &'a [Pod],
    /// Which nodes should be covered.
    pub scope: &'a NodeScope,
    /// OpenShift's project node selector on the namespace
    /// (`openshift.io/node-selector`), when set and not empty.
    pub project_node_selector: Option<&'a str>,
    /// The namespace (for the fix command).
    pub namespace: &'a str,
    /// Last push per node; `None` when the aggregator could not be asked.
    pub last_push: Option<&'a BTreeMap<String, Timestamp>>,
    /// A ready agent silent this long is `NotReporting`.
    pub silence: Duration,
    /// Hash of the rendered agent configuration.
    pub config_hash: &'a str,
    /// A rollout older than this has stalled.
    pub progress_deadline: Duration,
    /// Why the spec was not rolled out (see [`crate::validate`]), if it
    /// was refused: the last good configuration keeps running.
    pub invalid_spec: Option<&'a str>,
    /// Why applying a rendered object failed in this reconcile, if it did:
    /// said rather than leaving the last status standing.
    pub apply_error: Option<&'a str>,
    /// The `controller-revision-hash` of the DaemonSet's current
    /// ControllerRevision, when known: pods are judged by it, as the
    /// DaemonSet controller does; else by template generation.
    pub current_revision_hash: Option<&'a str>,
    /// Now.
    pub now: Timestamp,
}

/// An event to publish about the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Warning (else Normal).
    pub warning: bool,
    /// Reason, PascalCase.
    pub reason: &'static str,
    /// Action, PascalCase.
    pub action: &'static str,
    /// Note for people.
    pub note: String,
}

/// The outcome of [`compute`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The new status.
    pub status: LogCollectorStatus,
    /// Events for the transitions since the previous status.
    pub notices: Vec<Notice>,
    /// Per-node coverage (for metrics).
    pub rows: Vec<NodeCoverage>,
}

/// Parses `openshift.io/node-selector` (`k=v,k2=v2`).
fn parse_selector(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The reason of `Degraded` (and `Available=False`) when the aggregator
/// cannot reach ClickHouse.
pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";

fn store_message(error: &str) -> String {
    format!(
        "the aggregator cannot reach its store, agents keep their lines in their files until it is back: {error}"
    )
}

/// What status needs of the aggregator's StatefulSet or Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    /// Replicas wanted.
    pub replicas: i32,
    /// Replicas running the current template.
    pub updated: i32,
    /// Ready replicas.
    pub ready: i32,
}

impl From<&StatefulSet> for Workload {
    fn from(s: &StatefulSet) -> Self {
        let st = s.status.clone().unwrap_or_default();
        Workload {
            generation: s.metadata.generation,
            observed_generation: st.observed_generation,
            replicas: s.spec.replicas.unwrap_or(1),
            updated: st.updated_replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
        }
    }
}

impl From<&Deployment> for Workload {
    fn from(d: &Deployment) -> Self {
        let st = d.status.clone().unwrap_or_default();
        Workload {
            generation: d.metadata.generation,
            observed_generation: st.observed_generation,
            replicas: d.spec.replicas.unwrap_or(1),
            updated: st.updated_replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
        }
    }
}

/// Whether a rollout is under way: the agents' or the aggregator's
/// template changed and pods are being replaced (`outdated`: agent pods
/// still on an older revision). Pods not yet replaced or still starting
/// after the last old one went count until the rollout completes once
/// (`finishing`: the previous Progressing was a rollout, or there was none,
/// as at install); after that, an unavailable pod (a crash loop, a NotReady
/// node, a new node, an outage) is not a rollout but a fault, said as
/// Degraded with its reason at once.
fn rolling(o: &Observed<'_>, previous: Option<&Condition>, outdated: i32) -> bool {
    let finishing =
        previous.is_none_or(|c| c.reason == "RollingOut" || c.reason == "ProgressDeadlineExceeded");
    let ds_rolling = match o.daemonset {
        None => true,
        Some(ds) => {
            let st = ds.status.clone().unwrap_or_default();
            st.observed_generation < ds.metadata.generation
                || outdated > 0
                || (finishing
                    && (st.updated_number_scheduled.unwrap_or(0) < st.desired_number_scheduled
                        || st.number_available.unwrap_or(0) < st.desired_number_scheduled))
        }
    };
    let agg_rolling = o.aggregator.is_some_and(|w| {
        w.observed_generation < w.generation
            || w.updated < w.replicas
            || (finishing && w.ready < w.replicas)
    });
    ds_rolling || agg_rolling
}

fn aggregator_ready(o: &Observed<'_>) -> bool {
    o.aggregator
        .is_some_and(|w| w.replicas == 0 || w.ready >= w.replicas)
}

fn cond(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let prev = old.iter().find(|c| c.type_ == type_);
    let last_transition_time = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn by_reason_text(by: &BTreeMap<String, i32>) -> String {
    by.iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn name_nodes(nodes: &[&MissingNode], with_reason: bool) -> String {
    let mut s: Vec<String> = nodes
        .iter()
        .take(MAX_NODES_PER_EVENT)
        .map(|m| {
            if with_reason {
                format!("{} ({}: {})", m.node, m.reason, m.message)
            } else {
                m.node.clone()
            }
        })
        .collect();
    if nodes.len() > MAX_NODES_PER_EVENT {
        s.push(format!("and {} more", nodes.len() - MAX_NODES_PER_EVENT));
    }
    s.join("; ")
}

/// Computes the status and the events.
pub fn compute(o: Observed<'_>, old: &LogCollectorStatus) -> Outcome {
    let mut template = o
        .daemonset
        .and_then(|d| d.spec.template.spec.clone())
        .unwrap_or_else(|| o.rendered_template.clone());
    // OpenShift merges the project node selector into every pod of the
    // namespace: the agents can only land where it matches.
    if let Some(p) = o.project_node_selector {
        let extra = parse_selector(p);
        template
            .node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(extra);
    }
    let (revision, revision_label) = match o.current_revision_hash {
        Some(h) => (Some(h.to_owned()), "controller-revision-hash"),
        None => (
            o.daemonset.and_then(crate::dump::template_generation),
            "pod-template-generation",
        ),
    };
    let scope = crate::placement::scope_selector(o.scope);
    let empty = BTreeMap::new();
    let (mut rows, summary) = coverage::classify(Inputs {
        nodes: o.nodes,
        pods: o.pods,
        template: &template,
        current_revision: revision.as_deref(),
        revision_label,
        scope: scope.as_ref(),
        last_push: o.last_push.unwrap_or(&empty),
        now: o.now,
        silence: o.last_push.map(|_| o.silence),
    });

    // A node that joined within the grace period is starting, not lost.
    for r in &mut rows {
        let Some(g) = r.gap.as_mut() else { continue };
        let created = o
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(r.node.as_str()))
            .and_then(|n| n.metadata.creation_timestamp.as_ref());
        let age = created.map(|c| o.now.duration_since(c.0).unsigned_abs());
        if let (Some(age), true) = (age, g.reason.may_be_starting()) {
            if age < coverage::NODE_GRACE {
                g.message = format!(
                    "the node joined {}s ago; its agent is starting ({}: {})",
                    age.as_secs(),
                    g.reason.as_str(),
                    g.message
                );
                g.reason = Reason::Starting;
            }
        }
    }

    // Missing nodes: most basic cause first, then by name; `since` kept
    // from the previous status while the reason holds.
    let old_since: BTreeMap<(&str, &str), &str> = old
        .missing_nodes
        .iter()
        .map(|m| ((m.node.as_str(), m.reason.as_str()), m.since.as_str()))
        .collect();
    let mut gaps: Vec<(&NodeCoverage, &coverage::Gap)> = rows
        .iter()
        .filter_map(|r| r.gap.as_ref().map(|g| (r, g)))
        .collect();
    gaps.sort_by(|a, b| a.1.reason.cmp(&b.1.reason).then(a.0.node.cmp(&b.0.node)));
    let mut by_reason: BTreeMap<String, i32> = BTreeMap::new();
    for (_, g) in &gaps {
        *by_reason.entry(g.reason.as_str().into()).or_default() += 1;
    }
    let now_text = o.now.to_string();
    let missing_nodes: Vec<MissingNode> = gaps
        .iter()
        .take(MAX_MISSING_LISTED)
        .map(|(r, g)| MissingNode {
            node: r.node.clone(),
            reason: g.reason.as_str().into(),
            message: g.message.clone(),
            since: old_since
                .get(&(r.node.as_str(), g.reason.as_str()))
                .map(|s| s.to_string())
                .unwrap_or_else(|| now_text.clone()),
        })
        .collect();

    let is_rolling = rolling(
        &o,
        old.conditions.iter().find(|c| c.type_ == PROGRESSING),
        by_reason
            .get(Reason::Outdated.as_str())
            .copied()
            .unwrap_or(0),
    );
    let agg_ready = aggregator_ready(&o);
    // Gaps a rollout explains by itself.
    let serious: i32 = by_reason
        .iter()
        .filter(|(r, _)| !Reason::explained(r))
        .map(|(_, n)| *n)
        .sum();
    let gen = o.generation;
    let set = |type_: &str, status: bool, reason: &str, message: String| {
        cond(&old.conditions, type_, status, reason, message, gen, o.now)
    };

    // Progressing, with a deadline counted from when this rollout began.
    // With OnDelete, pods change only when someone deletes them: no
    // deadline can be missed, and waiting is not a fault.
    let on_delete = o
        .daemonset
        .and_then(|d| d.spec.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete");
    let old_prog = old.conditions.iter().find(|c| c.type_ == PROGRESSING);
    let progressing = if is_rolling && on_delete {
        set(
            PROGRESSING,
            false,
            "WaitingForPodDeletion",
            "updateStrategy OnDelete: an agent pod runs the new template once it is deleted".into(),
        )
    } else if is_rolling {
        let same_rollout = old_prog.is_some_and(|c| {
            c.observed_generation == gen
                && (c.reason == "RollingOut" || c.reason == "ProgressDeadlineExceeded")
        });
        let started = match old_prog {
            Some(c) if same_rollout && c.reason == "RollingOut" => c.last_transition_time.0,
            _ => o.now,
        };
        let stalled = (same_rollout
            && old_prog.is_some_and(|c| c.reason == "ProgressDeadlineExceeded"))
            || o.now.duration_since(started).unsigned_abs() > o.progress_deadline;
        if stalled {
            set(
                PROGRESSING,
                false,
                "ProgressDeadlineExceeded",
                format!(
                    "the rollout has not finished within {}s",
                    o.progress_deadline.as_secs()
                ),
            )
        } else {
            let mut c = set(
                PROGRESSING,
                true,
                "RollingOut",
                "agents or aggregator are being updated".into(),
            );
            if !same_rollout {
                c.last_transition_time = Time(o.now);
            }
            c
        }
    } else {
        set(
            PROGRESSING,
            false,
            "RolloutComplete",
            "every agent and the aggregator run the current spec".into(),
        )
    };
    let stalled = progressing.reason == "ProgressDeadlineExceeded";

    let available = if summary.expected == 0 {
        set(
            AVAILABLE,
            false,
            "NoEligibleNodes",
            "no node is in scope (nodeScope) of this collector".into(),
        )
    } else if let (false, Some(e)) = (agg_ready, o.store_unavailable) {
        set(AVAILABLE, false, STORE_UNAVAILABLE, store_message(e))
    } else if !agg_ready {
        set(
            AVAILABLE,
            false,
            "AggregatorNotReady",
            "the aggregator is not ready".into(),
        )
    } else if serious > 0 {
        set(
            AVAILABLE,
            false,
            "NodesMissing",
            format!(
                "{serious} of {} expected nodes lack a working agent: {}",
                summary.expected,
                by_reason_text(&by_reason)
            ),
        )
    } else {
        set(
            AVAILABLE,
            true,
            "AllNodesCovered",
            format!("all {} expected nodes have a ready agent", summary.expected),
        )
    };

    // Degraded: what needs a person, not what a rollout in progress explains.
    let blocked = o.project_node_selector.and_then(|p| {
        let n = by_reason
            .get(Reason::NodeSelectorMismatch.as_str())
            .copied()
            .unwrap_or(0);
        (n > 0).then(|| {
            format!(
                "the project node selector {p:?} of namespace {ns} keeps agents off {n} nodes; \
             fix: oc annotate namespace {ns} openshift.io/node-selector='' --overwrite",
                ns = o.namespace
            )
        })
    });
    let degraded = if let Some(why) = o.invalid_spec {
        set(
            DEGRADED,
            true,
            "InvalidSpec",
            format!("not rolled out, the last good configuration keeps running: {why}"),
        )
    } else if let Some(e) = o.apply_error {
        set(
            DEGRADED,
            true,
            "ApplyFailed",
            format!("applying failed (tried again): {e}"),
        )
    } else if let Some(e) = o.store_unavailable {
        set(DEGRADED, true, STORE_UNAVAILABLE, store_message(e))
    } else if summary.expected == 0 {
        set(
            DEGRADED,
            true,
            "NoEligibleNodes",
            "no node is in scope (nodeScope) of this collector".into(),
        )
    } else if let Some(msg) = blocked {
        set(DEGRADED, true, "ProjectNodeSelector", msg)
    } else if stalled {
        set(
            DEGRADED,
            true,
            "ProgressDeadlineExceeded",
            format!(
                "rollout stalled; {}",
                if by_reason.is_empty() {
                    "no node gaps".into()
                } else {
                    by_reason_text(&by_reason)
                }
            ),
        )
    } else if !is_rolling && !agg_ready {
        set(
            DEGRADED,
            true,
            "AggregatorNotReady",
            "the aggregator is not ready, and no rollout explains it".into(),
        )
    } else if !is_rolling && serious > 0 {
        set(
            DEGRADED,
            true,
            "NodesMissing",
            format!(
                "{serious} expected nodes lack a working agent: {}",
                by_reason_text(&by_reason)
            ),
        )
    } else {
        set(DEGRADED, false, "AsExpected", String::new())
    };

    // Events for the transitions.
    let mut notices = Vec::new();
    // A warning when a Degraded reason starts, not at every reconcile.
    let was = |reason: &str| {
        old.conditions
            .iter()
            .any(|c| c.type_ == DEGRADED && c.reason == reason)
    };
    for (now, reason, action, what) in [
        (o.invalid_spec, "InvalidSpec", "Validate", "not rolled out"),
        (o.apply_error, "ApplyFailed", "Apply", "applying failed"),
    ] {
        if let (Some(why), false) = (now, was(reason)) {
            notices.push(Notice {
                warning: true,
                reason,
                action,
                note: format!("{what}: {why}"),
            });
        }
    }
    let was_unavailable = was(STORE_UNAVAILABLE);

    match (was_unavailable, o.store_unavailable) {
        (false, Some(e)) => notices.push(Notice {
            warning: true,
            reason: STORE_UNAVAILABLE,
            action: "Store",
            note: store_message(e),
        }),
        (true, None) if o.last_push.is_some() => notices.push(Notice {
            warning: false,
            reason: "StoreAvailable",
            action: "Store",
            note: "the aggregator reaches its store again".into(),
        }),
        _ => {}
    }
    let old_reason = old_prog.map(|c| c.reason.as_str());
    match (old_reason, progressing.reason.as_str()) {
        (prev, "RollingOut")
            if prev != Some("RollingOut")
                || old_prog.and_then(|c| c.observed_generation) != gen =>
        {
            notices.push(Notice {
                warning: false,
                reason: "RolloutStarted",
                action: "Rollout",
                note: format!("rolling out generation {}", gen.unwrap_or(0)),
            });
        }
        (Some("RollingOut"), "RolloutComplete") => notices.push(Notice {
            warning: false,
            reason: "RolloutFinished",
            action: "Rollout",
            note: format!(
                "{} of {} expected nodes run the current agent",
                summary.up_to_date, summary.expected
            ),
        }),
        (prev, "ProgressDeadlineExceeded") if prev != Some("ProgressDeadlineExceeded") => {
            notices.push(Notice {
                warning: true,
                reason: "RolloutStalled",
                action: "Rollout",
                note: progressing.message.clone(),
            });
        }
        _ => {}
    }
    // Outdated comes and goes with every rollout (the rollout events say
    // it), and a new node's agent is starting.
    let counted = |m: &&MissingNode| !Reason::explained(&m.reason);
    let old_missing: BTreeSet<&str> = old
        .missing_nodes
        .iter()
        .filter(counted)
        .map(|m| m.node.as_str())
        .collect();
    let new_missing: BTreeSet<&str> = missing_nodes
        .iter()
        .filter(counted)
        .map(|m| m.node.as_str())
        .collect();
    let lost: Vec<&MissingNode> = missing_nodes
        .iter()
        .filter(counted)
        .filter(|m| !old_missing.contains(m.node.as_str()))
        .collect();
    let regained: Vec<&MissingNode> = old
        .missing_nodes
        .iter()
        .filter(counted)
        .filter(|m| !new_missing.contains(m.node.as_str()))
        .collect();
    if !lost.is_empty() {
        notices.push(Notice {
            warning: true,
            reason: "NodeLostCoverage",
            action: "Coverage",
            note: format!(
                "{} node(s) lack a working agent: {}",
                lost.len(),
                name_nodes(&lost, true)
            ),
        });
    }
    if !regained.is_empty() {
        notices.push(Notice {
            warning: false,
            reason: "NodeRegainedCoverage",
            action: "Coverage",
            note: format!(
                "{} node(s) have a working agent again: {}",
                regained.len(),
                name_nodes(&regained, false)
            ),
        });
    }

    let agents = o
        .daemonset
        .and_then(|d| d.status.as_ref())
        .map(|s| AgentCounts {
            desired: s.desired_number_scheduled,
            current: s.current_number_scheduled,
            ready: s.number_ready,
            updated: s.updated_number_scheduled.unwrap_or(0),
            available: s.number_available.unwrap_or(0),
        });
    let status = LogCollectorStatus {
        observed_generation: gen,
        conditions: vec![available, progressing, degraded],
        ready: Some(format!("{}/{}", summary.up_to_date, summary.expected)),
        config_hash: Some(o.config_hash.to_owned()),
        agents,
        coverage: Some(Coverage {
            expected: summary.expected as i32,
            ready: summary.ready as i32,
            up_to_date: summary.up_to_date as i32,
            missing: summary.missing as i32,
            by_reason,
        }),
        missing_nodes,
    };
    Outcome {
        status,
        notices,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn pod(nodename: &str, ready: bool, generation: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("logs-agent-{nodename}"),
                         "labels": {"pod-template-generation": generation.to_string()}},
            "spec": {"nodeName": nodename, "containers": []},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn ds(generation: i64, observed: i64, desired: i32, updated: i32, available: i32) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "logs-agent", "generation": generation},
            "spec": {"selector": {}, "template": {"spec": {"containers": [],
                "tolerations": [{"operator": "Exists"}]}}},
            "status": {"observedGeneration": observed, "desiredNumberScheduled": desired,
                "currentNumberScheduled": desired, "numberReady": available,
                "updatedNumberScheduled": updated, "numberAvailable": available,
                "numberMisscheduled": 0},
        }))
        .unwrap()
    }

    fn sts(ready: i32) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "logs-aggregator", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "x", "template": {}},
            "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": ready, "updatedReplicas": 1},
        }))
        .unwrap()
    }

    struct World {
        nodes: Vec<Node>,
        pods: Vec<Pod>,
        ds: DaemonSet,
        sts: StatefulSet,
        scope: NodeScope,
        project: Option<&'static str>,
        generation: i64,
        invalid: Option<&'static str>,
        revision_hash: Option<&'static str>,
        /// Over ClickHouse: the aggregators' Deployment instead of `sts`.
        deployment: Option<Deployment>,
        store_unavailable: Option<&'static str>,
        pushes: Option<BTreeMap<String, Timestamp>>,
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    fn run(w: &World, now: &str, old: &LogCollectorStatus) -> Outcome {
        compute(
            Observed {
                generation: Some(w.generation),
                daemonset: Some(&w.ds),
                rendered_template: &PodSpec::default(),
                aggregator: Some(match &w.deployment {
                    Some(d) => Workload::from(d),
                    None => Workload::from(&w.sts),
                }),
                store_unavailable: w.store_unavailable,
                nodes: &w.nodes,
                pods: &w.pods,
                scope: &w.scope,
                project_node_selector: w.project,
                namespace: "logfleet",
                last_push: w.pushes.as_ref(),
                silence: Duration::from_secs(300),
                config_hash: "abc",
                progress_deadline: Duration::from_secs(600),
                invalid_spec: w.invalid,
                apply_error: None,
                current_revision_hash: w.revision_hash,
                now: at(now),
            },
            old,
        )
    }

    fn c<'a>(s: &'a LogCollectorStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn world() -> World {
        World {
            nodes: ["a", "b", "c"]
                .iter()
                .map(|n| node(n, json!({"kubernetes.io/os": "linux"})))
                .collect(),
            pods: vec![pod("a", true, 1), pod("b", true, 1)],
            ds: ds(1, 1, 3, 3, 2),
            sts: sts(1),
            scope: NodeScope::default(),
            project: None,
            generation: 1,
            invalid: None,
            revision_hash: None,
            deployment: None,
            store_unavailable: None,
            pushes: None,
        }
    }

    #[test]
    fn a_node_without_an_agent_then_with_one() {
        let mut w = world();
        // The DaemonSet counts say nothing is rolling; node c has no pod.
        w.ds = ds(1, 1, 3, 3, 3);
        let o1 = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default());
        let s1 = &o1.status;
        assert_eq!(c(s1, AVAILABLE), ("False", "NodesMissing"));
        assert_eq!(c(s1, PROGRESSING), ("False", "RolloutComplete"));
        assert_eq!(c(s1, DEGRADED), ("True", "NodesMissing"));
        let cov = s1.coverage.as_ref().unwrap();
        assert_eq!((cov.expected, cov.ready, cov.missing), (3, 2, 1));
        assert_eq!(cov.by_reason["FailedCreate"], 1);
        assert_eq!(s1.missing_nodes[0].node, "c");
        assert_eq!(s1.missing_nodes[0].since, "2026-11-27T10:00:00Z");
        assert_eq!(s1.ready.as_deref(), Some("2/3"));
        assert_eq!(s1.observed_generation, Some(1));
        assert!(s1
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1)));
        let lost: Vec<_> = o1
            .notices
            .iter()
            .filter(|n| n.reason == "NodeLostCoverage")
            .collect();
        assert_eq!(lost.len(), 1);
        assert!(
            lost[0].warning && lost[0].note.contains("c (FailedCreate"),
            "{:?}",
            lost[0]
        );

        // Nothing changed: the same status, to the timestamp, and no events.
        let o2 = run(&w, "2026-11-27T10:05:00Z", s1);
        assert_eq!(&o2.status, s1);
        assert!(o2.notices.is_empty(), "{:?}", o2.notices);

        // The agent on c comes up.
        w.pods.push(pod("c", true, 1));
        let o3 = run(&w, "2026-11-27T10:06:00Z", &o2.status);
        assert_eq!(c(&o3.status, AVAILABLE), ("True", "AllNodesCovered"));
        assert_eq!(c(&o3.status, DEGRADED), ("False", "AsExpected"));
        assert!(o3.status.missing_nodes.is_empty());
        let avail = o3
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == AVAILABLE)
            .unwrap();
        assert_eq!(avail.last_transition_time.0, at("2026-11-27T10:06:00Z"));
        assert_eq!(o3.notices.len(), 1);
        assert_eq!(o3.notices[0].reason, "NodeRegainedCoverage");
        assert!(!o3.notices[0].warning && o3.notices[0].note.contains('c'));
    }

    /// Issue 23, item 19: a node that just joined has no working agent
    /// for a while (its pod is created, its image pulled): that is not a
    /// lost node. Within the grace period it is `Starting`, with no
    /// `NodeLostCoverage` and no Degraded; past it, the real reason.
    #[test]
    fn a_new_node_gets_a_grace_period() {
        let mut w = world();
        w.pods.push(pod("c", true, 1));
        w.ds = ds(1, 1, 3, 3, 3);
        let steady = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default()).status;
        let mut d = node("d", json!({"kubernetes.io/os": "linux"}));
        d.metadata.creation_timestamp = Some(Time("2026-11-27T10:00:30Z".parse().unwrap()));
        w.nodes.push(d);
        w.ds = ds(1, 1, 4, 3, 3);
        let o = run(&w, "2026-11-27T10:01:00Z", &steady);
        assert_eq!(o.status.missing_nodes.len(), 1);
        assert_eq!(o.status.missing_nodes[0].reason, "Starting");
        assert!(
            o.status.missing_nodes[0].message.contains("FailedCreate"),
            "{}",
            o.status.missing_nodes[0].message
        );
        assert!(
            o.notices.iter().all(|n| n.reason != "NodeLostCoverage"),
            "{:?}",
            o.notices
        );
        assert_eq!(c(&o.status, DEGRADED), ("False", "AsExpected"));
        // Still no agent four minutes after it joined: lost, and said.
        let late = run(&w, "2026-11-27T10:04:30Z", &o.status);
        assert_eq!(late.status.missing_nodes[0].reason, "FailedCreate");
        assert!(
            late.notices.iter().any(|n| n.reason == "NodeLostCoverage"),
            "{:?}",
            late.notices
        );
        assert_eq!(c(&late.status, DEGRADED), ("True", "NodesMissing"));
        // A crash loop is a fault even on a new node.
        let mut crashing = pod("d", false, 1);
        crashing.status.as_mut().unwrap().container_statuses = Some(vec![serde_json::from_value(
            json!({"name": "agent", "ready": false, "restartCount": 5, "image": "i", "imageID": "",
                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}}),
        )
        .unwrap()]);
        w.pods.push(crashing);
        let o = run(&w, "2026-11-27T10:01:00Z", &steady);
        assert_eq!(o.status.missing_nodes[0].reason, "CrashLoopBackOff");
    }

    /// Issue 23, item 11: an agent that stops being ready after the
    /// rollout completed (a crash loop, a NotReady node) is not a rollout:
    /// no `RolloutStarted`, no `Progressing=True`, and `Degraded` at once
    /// with the reason, not 600 s later as a stalled rollout.
    #[test]
    fn unavailability_outside_a_rollout_is_degraded_at_once() {
        let mut w = world();
        w.pods.push(pod("c", true, 1));
        w.ds = ds(1, 1, 3, 3, 3);
        let steady = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default()).status;
        assert_eq!(c(&steady, PROGRESSING), ("False", "RolloutComplete"));
        // Node c's agent crash-loops: same template, one fewer available.
        w.pods[2] = pod("c", false, 1);
        w.ds = ds(1, 1, 3, 3, 2);
        let o = run(&w, "2026-11-27T10:01:00Z", &steady);
        assert_eq!(c(&o.status, PROGRESSING), ("False", "RolloutComplete"));
        assert_eq!(c(&o.status, DEGRADED), ("True", "NodesMissing"));
        assert!(
            o.notices.iter().all(|n| n.reason != "RolloutStarted"),
            "{:?}",
            o.notices
        );
        // An aggregator that stops being ready, template unchanged.
        w.pods[2] = pod("c", true, 1);
        w.ds = ds(1, 1, 3, 3, 3);
        w.sts = sts(0);
        let o = run(&w, "2026-11-27T10:02:00Z", &steady);
        assert_eq!(c(&o.status, PROGRESSING), ("False", "RolloutComplete"));
        assert_eq!(c(&o.status, DEGRADED), ("True", "AggregatorNotReady"));
        // At install, pods starting are the rollout's.
        let fresh = run(&w, "2026-11-27T10:02:00Z", &LogCollectorStatus::default());
        assert_eq!(c(&fresh.status, PROGRESSING), ("True", "RollingOut"));
    }

    #[test]
    fn a_rollout_starts_finishes_or_stalls() {
        let mut w = world();
        w.pods.push(pod("c", true, 1));
        w.ds = ds(1, 1, 3, 3, 3);
        let steady = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default()).status;
        assert_eq!(c(&steady, PROGRESSING), ("False", "RolloutComplete"));

        // New spec: generation 2, one node updated so far.
        w.generation = 2;
        w.ds = ds(2, 2, 3, 1, 3);
        w.pods[0] = pod("a", true, 2);
        let o = run(&w, "2026-11-27T10:01:00Z", &steady);
        assert_eq!(c(&o.status, PROGRESSING), ("True", "RollingOut"));
        assert_eq!(
            c(&o.status, DEGRADED),
            ("False", "AsExpected"),
            "outdated nodes are the rollout's business"
        );
        assert_eq!(c(&o.status, AVAILABLE), ("True", "AllNodesCovered"));
        assert_eq!(o.status.coverage.as_ref().unwrap().by_reason["Outdated"], 2);
        assert_eq!(
            o.notices.iter().map(|n| n.reason).collect::<Vec<_>>(),
            ["RolloutStarted"]
        );

        // Still rolling within the deadline: no change, no event.
        let o2 = run(&w, "2026-11-27T10:05:00Z", &o.status);
        assert_eq!(o2.status, o.status);
        assert!(o2.notices.is_empty());

        // Past the deadline: stalled.
        let o3 = run(&w, "2026-11-27T10:12:00Z", &o2.status);
        assert_eq!(
            c(&o3.status, PROGRESSING),
            ("False", "ProgressDeadlineExceeded")
        );
        assert_eq!(
            c(&o3.status, DEGRADED),
            ("True", "ProgressDeadlineExceeded")
        );
        assert_eq!(
            o3.notices
                .iter()
                .map(|n| (n.reason, n.warning))
                .collect::<Vec<_>>(),
            [("RolloutStalled", true)]
        );
        // And it stays stalled, quietly.
        let o4 = run(&w, "2026-11-27T10:20:00Z", &o3.status);
        assert_eq!(o4.status, o3.status);
        assert!(o4.notices.is_empty());

        // The rollout completes.
        w.ds = ds(2, 2, 3, 3, 3);
        w.pods = vec![pod("a", true, 2), pod("b", true, 2), pod("c", true, 2)];
        let o5 = run(&w, "2026-11-27T10:21:00Z", &o4.status);
        assert_eq!(c(&o5.status, PROGRESSING), ("False", "RolloutComplete"));
        assert_eq!(c(&o5.status, DEGRADED), ("False", "AsExpected"));
    }

    /// A rollback reuses the old ControllerRevision: the pods still on it
    /// are current, though their template generation is older (issue 9).
    #[test]
    fn after_a_rollback_pods_on_the_restored_revision_are_current() {
        let mut w = world();
        w.generation = 3;
        w.ds = ds(3, 3, 3, 3, 3);
        w.pods = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let mut p = pod(n, true, 1);
                p.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("controller-revision-hash".into(), "v1hash".into());
                p
            })
            .collect();
        // By template generation every pod looks outdated.
        let by_generation = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default());
        assert_eq!(
            by_generation.status.coverage.as_ref().unwrap().up_to_date,
            0
        );
        // By the current revision, as the DaemonSet controller judges: all current.
        w.revision_hash = Some("v1hash");
        let by_revision = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default());
        let cov = by_revision.status.coverage.as_ref().unwrap();
        assert_eq!((cov.up_to_date, cov.missing), (3, 0));
        assert!(!cov.by_reason.contains_key("Outdated"));
    }

    /// OnDelete replaces a pod only when someone deletes it: an old
    /// template long after the change is no stalled rollout (issue 9).
    #[test]
    fn on_delete_never_misses_a_deadline() {
        let mut w = world();
        let steady = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default());
        w.generation = 2;
        w.ds = ds(2, 2, 3, 1, 3);
        w.ds.spec.update_strategy = Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        w.pods[0] = pod("a", true, 2);
        let o = run(&w, "2026-11-27T10:01:00Z", &steady.status);
        let later = run(&w, "2026-11-28T10:00:00Z", &o.status);
        assert_eq!(
            c(&later.status, PROGRESSING),
            ("False", "WaitingForPodDeletion")
        );
        assert_eq!(c(&later.status, DEGRADED), ("False", "AsExpected"));
        assert!(later.notices.iter().all(|n| n.reason != "RolloutStalled"));
    }

    /// A spec the agents would crash on is not rolled out: Degraded with
    /// InvalidSpec and the reason, one warning event, not one per reconcile.
    #[test]
    fn an_invalid_spec_is_reported_once_and_wins_over_other_reasons() {
        let mut w = world();
        w.invalid = Some(
            "spec.agent.filters.excludeNamespaces[0]: \"kube-(\" is not a valid regular expression",
        );
        let first = run(&w, "2026-11-28T10:00:00Z", &LogCollectorStatus::default());
        assert_eq!(c(&first.status, DEGRADED), ("True", "InvalidSpec"));
        let cond = first
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert!(cond.message.contains("kube-("), "{}", cond.message);
        assert!(
            cond.message.contains("last good configuration"),
            "{}",
            cond.message
        );
        let events: Vec<_> = first
            .notices
            .iter()
            .filter(|n| n.reason == "InvalidSpec")
            .collect();
        assert_eq!(events.len(), 1);
        assert!(events[0].warning);
        let again = run(&w, "2026-11-28T10:01:00Z", &first.status);
        assert!(again.notices.iter().all(|n| n.reason != "InvalidSpec"));
        // Fixed: back to the ordinary reasons.
        w.invalid = None;
        let fixed = run(&w, "2026-11-28T10:02:00Z", &again.status);
        assert_ne!(c(&fixed.status, DEGRADED).1, "InvalidSpec");
    }

    #[test]
    fn degraded_reasons_people_must_act_on() {
        // No node in scope.
        let mut w = world();
        w.scope
            .node_selector
            .insert("pool".into(), "logging".into());
        let s = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default()).status;
        assert_eq!(c(&s, DEGRADED), ("True", "NoEligibleNodes"));
        assert_eq!(c(&s, AVAILABLE), ("False", "NoEligibleNodes"));

        // OpenShift's project node selector keeps agents off node c.
        let mut w = world();
        w.nodes[0] = node("a", json!({"kubernetes.io/os": "linux", "role": "infra"}));
        w.nodes[1] = node("b", json!({"kubernetes.io/os": "linux", "role": "infra"}));
        w.project = Some("role=infra");
        w.ds = ds(1, 1, 2, 2, 2);
        let s = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default()).status;
        let d = s.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ProjectNodeSelector")
        );
        assert!(
            d.message
                .contains("oc annotate namespace logfleet openshift.io/node-selector=''"),
            "{}",
            d.message
        );
        assert_eq!(s.missing_nodes[0].reason, "NodeSelectorMismatch");

        // The aggregator is down.
        let mut w = world();
        w.pods.push(pod("c", true, 1));
        w.ds = ds(1, 1, 3, 3, 3);
        w.sts = sts(0);
        let s = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default()).status;
        assert_eq!(c(&s, AVAILABLE), ("False", "AggregatorNotReady"));
    }

    fn deployment(replicas: i32, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "logs-aggregator", "generation": 2},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": replicas,
                       "readyReplicas": ready, "updatedReplicas": replicas},
        }))
        .unwrap()
    }

    #[test]
    fn over_clickhouse_the_deployment_counts_and_an_unreachable_store_is_degraded() {
        let mut w = world();
        w.pods.push(pod("c", true, 1));
        w.ds = ds(1, 1, 3, 3, 3);
        // Three replicas, all ready: available, not rolling.
        w.deployment = Some(deployment(3, 3));
        let up = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default());
        assert_eq!(c(&up.status, AVAILABLE), ("True", "AllNodesCovered"));
        assert_eq!(c(&up.status, PROGRESSING), ("False", "RolloutComplete"));
        assert_eq!(c(&up.status, DEGRADED), ("False", "AsExpected"));
        // Two of three ready, template unchanged: not a rollout (issue 23,
        // item 11) but a fault, said at once.
        w.deployment = Some(deployment(3, 2));
        let s = run(&w, "2026-11-27T10:00:00Z", &up.status).status;
        assert_eq!(c(&s, PROGRESSING), ("False", "RolloutComplete"));
        assert_eq!(c(&s, AVAILABLE), ("False", "AggregatorNotReady"));
        assert_eq!(c(&s, DEGRADED), ("True", "AggregatorNotReady"));

        // ClickHouse goes away: the replicas turn unready, and the status
        // says why, once as an event.
        w.deployment = Some(deployment(3, 0));
        w.store_unavailable = Some("ClickHouse at http://ch:8123 unreachable: connection refused");
        let down = run(&w, "2026-11-27T10:01:00Z", &up.status);
        assert_eq!(c(&down.status, DEGRADED), ("True", STORE_UNAVAILABLE));
        assert_eq!(c(&down.status, AVAILABLE), ("False", STORE_UNAVAILABLE));
        let d = down
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert!(d.message.contains("connection refused"), "{}", d.message);
        let warned: Vec<_> = down
            .notices
            .iter()
            .filter(|n| n.reason == STORE_UNAVAILABLE)
            .collect();
        assert_eq!(warned.len(), 1, "{:?}", down.notices);
        assert!(warned[0].warning);
        // Still down past the progress deadline: no second event, and the
        // store wins over the stalled rollout it explains.
        let still = run(&w, "2026-11-27T10:20:00Z", &down.status);
        assert!(
            still.notices.iter().all(|n| n.reason != STORE_UNAVAILABLE),
            "{:?}",
            still.notices
        );
        assert_eq!(c(&still.status, PROGRESSING), ("False", "RolloutComplete"));
        assert_eq!(c(&still.status, DEGRADED), ("True", STORE_UNAVAILABLE));

        // Back: the agents list answers again.
        w.deployment = Some(deployment(3, 3));
        w.store_unavailable = None;
        let now = at("2026-11-27T10:21:00Z");
        w.pushes = Some(
            ["a", "b", "c"]
                .iter()
                .map(|n| (n.to_string(), now))
                .collect(),
        );
        let back = run(&w, "2026-11-27T10:21:00Z", &still.status);
        assert_eq!(c(&back.status, DEGRADED), ("False", "AsExpected"));
        assert_eq!(c(&back.status, AVAILABLE), ("True", "AllNodesCovered"));
        assert!(
            back.notices
                .iter()
                .any(|n| n.reason == "StoreAvailable" && !n.warning),
            "{:?}",
            back.notices
        );
    }

    #[test]
    fn the_missing_list_is_bounded_and_the_counts_exact() {
        let mut w = world();
        w.nodes = (0..120)
            .map(|i| node(&format!("n{i:03}"), json!({})))
            .collect();
        w.pods = (0..50).map(|i| pod(&format!("n{i:03}"), true, 1)).collect();
        w.ds = ds(1, 1, 120, 120, 120);
        let o = run(&w, "2026-11-27T10:00:00Z", &LogCollectorStatus::default());
        let cov = o.status.coverage.as_ref().unwrap();
        assert_eq!((cov.expected, cov.ready, cov.missing), (120, 50, 70));
        assert_eq!(o.status.missing_nodes.len(), MAX_MISSING_LISTED);
        let lost = o
            .notices
            .iter()
            .find(|n| n.reason == "NodeLostCoverage")
            .unwrap();
        assert!(lost.note.contains("and 45 more"), "{}", lost.note);
    }
}
