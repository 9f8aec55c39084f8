//! Which expected nodes lack a working agent, and why: the comparison of
//! `kubectl get nodes` with the agent pods that people otherwise make by
//! hand. Pure: the controller and `logfleet status` feed it the objects
//! they read and the aggregator's last-push times.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelector, Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;

use crate::placement::{placement, selector_matches};

/// Why a node lacks a working agent. Ordered from the most basic cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The node itself is not Ready.
    NodeNotReady,
    /// A taint the agent pods do not tolerate.
    TaintNotTolerated,
    /// The DaemonSet's node selector excludes the node.
    NodeSelectorMismatch,
    /// The DaemonSet's required node affinity excludes the node.
    AffinityMismatch,
    /// The agent pod exists but the scheduler cannot place it.
    Unschedulable,
    /// The node should run an agent but has no agent pod.
    FailedCreate,
    /// The agent image cannot be pulled.
    ImagePullBackOff,
    /// The agent container cannot be created from its configuration,
    /// typically a Secret or ConfigMap it refers to is missing.
    CreateContainerConfigError,
    /// The agent keeps crashing.
    CrashLoopBackOff,
    /// The agent pod runs but is not ready.
    NotReady,
    /// The agent pod runs an older revision of the template.
    Outdated,
    /// The agent is ready but the aggregator has not heard from it lately.
    NotReporting,
    /// The node joined less than [`NODE_GRACE`] ago and its agent is not
    /// working yet: it is starting, not lost.
    Starting,
}

/// How long a new node's agent may take to start before the node counts
/// as lost: its pod is created, its image pulled and the agent's first
/// push made within this on a healthy cluster.
pub const NODE_GRACE: std::time::Duration = std::time::Duration::from_secs(180);

impl Reason {
    /// Whether a new node's gap of this reason is its agent starting (and
    /// not a fault that a grace period must not hide: a crash loop, an
    /// image that cannot be pulled, a node the agents may not run on).
    pub fn may_be_starting(self) -> bool {
        matches!(
            self,
            Reason::FailedCreate | Reason::NotReady | Reason::NodeNotReady | Reason::NotReporting
        )
    }

    /// Whether the gap is explained without a fault: a rollout replacing
    /// the pod, or a new node's agent starting. Neither counts against
    /// availability, raises `NodeLostCoverage` or makes the collector
    /// Degraded.
    pub fn explained(reason: &str) -> bool {
        reason == Reason::Outdated.as_str() || reason == Reason::Starting.as_str()
    }
}

impl Reason {
    /// The reason as status and events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NodeNotReady => "NodeNotReady",
            Reason::TaintNotTolerated => "TaintNotTolerated",
            Reason::NodeSelectorMismatch => "NodeSelectorMismatch",
            Reason::AffinityMismatch => "AffinityMismatch",
            Reason::Unschedulable => "Unschedulable",
            Reason::FailedCreate => "FailedCreate",
            Reason::ImagePullBackOff => "ImagePullBackOff",
            Reason::CreateContainerConfigError => "CreateContainerConfigError",
            Reason::CrashLoopBackOff => "CrashLoopBackOff",
            Reason::NotReady => "NotReady",
            Reason::Outdated => "Outdated",
            Reason::NotReporting => "NotReporting",
            Reason::Starting => "Starting",
        }
    }
}

/// A gap in coverage on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Why.
    pub reason: Reason,
    /// What to look at, for a person.
    pub message: String,
}

/// One expected node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCoverage {
    /// Node name.
    pub node: String,
    /// The agent pod on it, if any.
    pub pod: Option<String>,
    /// Whether that pod is Ready.
    pub ready: bool,
    /// Its template revision (`controller-revision-hash`).
    pub revision: Option<String>,
    /// When the aggregator last heard from the node.
    pub last_push: Option<Timestamp>,
    /// Why the node lacks a working agent; `None` when covered.
    pub gap: Option<Gap>,
}

/// Exact counts over the expected nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Nodes the user expects covered.
    pub expected: usize,
    /// Expected nodes whose agent pod is Ready.
    pub ready: usize,
    /// Expected nodes whose agent pod is Ready and on the current revision.
    pub up_to_date: usize,
    /// Expected nodes with a gap.
    pub missing: usize,
}

/// What the classifier looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Every node.
    pub nodes: &'a [Node],
    /// The agent pods (owned by the agent DaemonSet).
    pub pods: &'a [Pod],
    /// The DaemonSet's pod template spec.
    pub template: &'a PodSpec,
    /// The template's current revision, when known.
    pub current_revision: Option<&'a str>,
    /// The pod label that holds a pod's revision (`controller-revision-hash`,
    /// or `pod-template-generation` against the DaemonSet's generation).
    pub revision_label: &'a str,
    /// Which nodes the user expects covered; `None`: every Linux node.
    pub scope: Option<&'a NodeSelector>,
    /// Last push per node name, from the aggregator's agents API.
    pub last_push: &'a BTreeMap<String, Timestamp>,
    /// Now.
    pub now: Timestamp,
    /// A ready agent silent for longer than this is `NotReporting`; `None`
    /// when nothing is known of pushes (no aggregator to ask).
    pub silence: Option<std::time::Duration>,
}

fn condition<'a>(pod: &'a Pod, kind: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn in_scope(node: &Node, scope: Option<&NodeSelector>) -> bool {
    match scope {
        Some(sel) => selector_matches(sel, node),
        None => node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/os"))
            .is_none_or(|os| os == "linux"),
    }
}

/// The gap a pod shows, from its containers and conditions.
fn pod_gap(pod: &Pod) -> Option<Gap> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    if let Some(c) = condition(pod, "PodScheduled") {
        if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") {
            return Some(Gap {
                reason: Reason::Unschedulable,
                message: format!(
                    "pod {name}: {}",
                    c.message.as_deref().unwrap_or("cannot be scheduled")
                ),
            });
        }
    }
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[]);
    for cs in statuses {
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        match waiting.and_then(|w| w.reason.as_deref()) {
            Some(
                r
                @ ("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull"),
            ) => {
                return Some(Gap {
                    reason: Reason::ImagePullBackOff,
                    message: format!(
                        "pod {name} container {}: {r}: {}",
                        cs.name,
                        waiting
                            .and_then(|w| w.message.as_deref())
                            .unwrap_or(&cs.image)
                    ),
                });
            }
            Some(
                r @ ("CreateContainerConfigError" | "CreateContainerError" | "RunContainerError"),
            ) => {
                return Some(Gap {
                    reason: Reason::CreateContainerConfigError,
                    message: format!(
                        "pod {name} container {}: {r}: {}",
                        cs.name,
                        waiting
                            .and_then(|w| w.message.as_deref())
                            .unwrap_or("its configuration cannot be used")
                    ),
                });
            }
            Some("CrashLoopBackOff") => {
                let last = cs
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| {
                        format!(
                            "{} (exit code {})",
                            t.reason.as_deref().unwrap_or("terminated"),
                            t.exit_code
                        )
                    })
                    .unwrap_or_else(|| "unknown".into());
                return Some(Gap {
                    reason: Reason::CrashLoopBackOff,
                    message: format!(
                        "pod {name} container {} restarted {} times, last termination: {last}",
                        cs.name, cs.restart_count
                    ),
                });
            }
            _ => {}
        }
    }
    let ready = condition(pod, "Ready").is_some_and(|c| c.status == "True");
    (!ready).then(|| Gap {
        reason: Reason::NotReady,
        message: format!(
            "pod {name} is {} and not ready",
            pod.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Unknown")
        ),
    })
}

/// Classifies every expected node; nodes sorted by name.
pub fn classify(inp: Inputs<'_>) -> (Vec<NodeCoverage>, Summary) {
    let mut by_node: BTreeMap<&str, &Pod> = BTreeMap::new();
    for p in inp.pods {
        let terminating = p.metadata.deletion_timestamp.is_some();
        if let Some(n) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .or_else(|| daemon_target(p))
        {
            // Prefer a live pod over one being deleted.
            if !terminating || !by_node.contains_key(n) {
                by_node.insert(n, p);
            }
        }
    }
    let mut out = Vec::new();
    let mut sum = Summary::default();
    let mut nodes: Vec<&Node> = inp
        .nodes
        .iter()
        .filter(|n| in_scope(n, inp.scope))
        .collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let pod = by_node.get(name.as_str()).copied();
        let ready = pod.is_some_and(|p| condition(p, "Ready").is_some_and(|c| c.status == "True"));
        let revision = pod
            .and_then(|p| p.metadata.labels.as_ref())
            .and_then(|l| l.get(inp.revision_label))
            .cloned();
        let current = match (inp.current_revision, revision.as_deref()) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        let last_push = inp.last_push.get(&name).copied();
        let gap = if !node_ready(node) {
            Some(Gap {
                reason: Reason::NodeNotReady,
                message: format!("node {name} is not Ready"),
            })
        } else if let Some(m) = placement(node, inp.template)
            .err()
            // A NoSchedule taint added after the pod was placed leaves it
            // running: judge the pod, not the taint.
            .filter(|m| !(pod.is_some() && m.schedule_only()))
        {
            let reason = match m.reason() {
                "TaintNotTolerated" => Reason::TaintNotTolerated,
                "NodeSelectorMismatch" => Reason::NodeSelectorMismatch,
                _ => Reason::AffinityMismatch,
            };
            Some(Gap {
                reason,
                message: m.to_string(),
            })
        } else if let Some(p) = pod {
            pod_gap(p)
                .or_else(|| {
                    (!current).then(|| Gap {
                        reason: Reason::Outdated,
                        message: format!(
                            "pod {} runs revision {}, the template is at {}",
                            p.metadata.name.as_deref().unwrap_or(""),
                            revision.as_deref().unwrap_or("?"),
                            inp.current_revision.unwrap_or("?")
                        ),
                    })
                })
                .or_else(|| {
                    let limit = inp.silence?;
                    let silent = last_push.is_none_or(|t| {
                        inp.now.duration_since(t).as_secs_f64() > limit.as_secs_f64()
                    });
                    silent.then(|| Gap {
                        reason: Reason::NotReporting,
                        message: match last_push {
                            Some(t) => format!("the aggregator last heard from {name} at {t}"),
                            None => format!("the aggregator has never heard from {name}"),
                        },
                    })
                })
        } else {
            Some(Gap {
                reason: Reason::FailedCreate,
                message: format!("no agent pod on {name}; see the DaemonSet's events"),
            })
        };
        sum.expected += 1;
        sum.ready += ready as usize;
        sum.up_to_date += (ready && current) as usize;
        sum.missing += gap.is_some() as usize;
        out.push(NodeCoverage {
            node: name,
            pod: pod.and_then(|p| p.metadata.name.clone()),
            ready,
            revision,
            last_push,
            gap,
        });
    }
    (out, sum)
}

/// A pending daemon pod has no `nodeName` yet: its target is in the
/// `matchFields` node affinity the DaemonSet controller sets.
fn daemon_target(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first())
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        NodeCondition, NodeSpec, NodeStatus, PodCondition, PodStatus, Taint,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ready: bool, taints: Vec<Taint>, os: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("kubernetes.io/os".to_string(), os.to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(
        name: &str,
        node: &str,
        ready: bool,
        rev: &str,
        containers: Vec<ContainerStatus>,
        conds: Vec<PodCondition>,
    ) -> Pod {
        let mut c = conds;
        c.push(PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        });
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("controller-revision-hash".to_string(), rev.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(if ready { "Running" } else { "Pending" }.into()),
                conditions: Some(c),
                container_statuses: Some(containers),
                ..Default::default()
            }),
        }
    }

    fn waiting(reason: &str, last: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: "agent".into(),
            image: "logfleet:1".into(),
            restart_count: 7,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: None,
                }),
                ..Default::default()
            }),
            last_state: last.map(|r| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    reason: Some(r.into()),
                    exit_code: 137,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_reason_with_exact_counts() {
        let now: Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let recent: Timestamp = "2026-11-27T09:59:50Z".parse().unwrap();
        let old: Timestamp = "2026-11-27T09:00:00Z".parse().unwrap();
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let nodes = vec![
            node("a-ok", true, vec![], "linux"),
            node("b-down", false, vec![], "linux"),
            node("c-tainted", true, vec![taint], "linux"),
            node("d-nopod", true, vec![], "linux"),
            node("e-pull", true, vec![], "linux"),
            node("f-crash", true, vec![], "linux"),
            node("g-notready", true, vec![], "linux"),
            node("h-old", true, vec![], "linux"),
            node("i-silent", true, vec![], "linux"),
            node("j-unsched", true, vec![], "linux"),
            node("win", true, vec![], "windows"),
        ];
        let unsched = PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/10 nodes are available: 1 Insufficient memory".into()),
            ..Default::default()
        };
        let pods = vec![
            pod("p-a", "a-ok", true, "r2", vec![], vec![]),
            pod(
                "p-e",
                "e-pull",
                false,
                "r2",
                vec![waiting("ImagePullBackOff", None)],
                vec![],
            ),
            pod(
                "p-f",
                "f-crash",
                false,
                "r2",
                vec![waiting("CrashLoopBackOff", Some("OOMKilled"))],
                vec![],
            ),
            pod("p-g", "g-notready", false, "r2", vec![], vec![]),
            pod("p-h", "h-old", true, "r1", vec![], vec![]),
            pod("p-i", "i-silent", true, "r2", vec![], vec![]),
            pod("p-j", "j-unsched", false, "r2", vec![], vec![unsched]),
        ];
        let last_push: BTreeMap<String, Timestamp> =
            [("a-ok", recent), ("h-old", recent), ("i-silent", old)]
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect();
        let template = PodSpec::default();
        let (rows, sum) = classify(Inputs {
            nodes: &nodes,
            pods: &pods,
            template: &template,
            current_revision: Some("r2"),
            revision_label: "controller-revision-hash",
            scope: None,
            last_push: &last_push,
            now,
            silence: Some(std::time::Duration::from_secs(300)),
        });
        let got: Vec<(&str, Option<&str>)> = rows
            .iter()
            .map(|r| (r.node.as_str(), r.gap.as_ref().map(|g| g.reason.as_str())))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a-ok", None),
                ("b-down", Some("NodeNotReady")),
                ("c-tainted", Some("TaintNotTolerated")),
                ("d-nopod", Some("FailedCreate")),
                ("e-pull", Some("ImagePullBackOff")),
                ("f-crash", Some("CrashLoopBackOff")),
                ("g-notready", Some("NotReady")),
                ("h-old", Some("Outdated")),
                ("i-silent", Some("NotReporting")),
                ("j-unsched", Some("Unschedulable")),
            ],
            "the Windows node is out of the default scope"
        );
        assert_eq!(
            sum,
            Summary {
                expected: 10,
                ready: 3,
                up_to_date: 2,
                missing: 9
            }
        );
        let msg = |n: &str| {
            rows.iter()
                .find(|r| r.node == n)
                .and_then(|r| r.gap.as_ref())
                .map(|g| g.message.clone())
                .unwrap()
        };
        assert!(msg("f-crash").contains("OOMKilled"), "{}", msg("f-crash"));
        assert!(msg("c-tainted").contains("dedicated=db:NoSchedule"));
        assert!(msg("j-unsched").contains("Insufficient memory"));
        assert!(msg("i-silent").contains("2026-11-27T09:00:00Z"));
    }

    #[test]
    fn pending_daemon_pod_is_matched_by_its_target_node() {
        use k8s_openapi::api::core::v1::{
            Affinity, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm,
        };
        let mut p = pod("p", "", false, "r1", vec![], vec![]);
        let spec = p.spec.as_mut().unwrap();
        spec.node_name = None;
        spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: None,
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec!["n1".into()]),
                        }]),
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let nodes = vec![node("n1", true, vec![], "linux")];
        let (rows, _) = classify(Inputs {
            nodes: &nodes,
            pods: &[p],
            template: &PodSpec::default(),
            current_revision: None,
            revision_label: "controller-revision-hash",
            scope: None,
            last_push: &BTreeMap::new(),
            now: "2026-11-27T10:00:00Z".parse().unwrap(),
            silence: None,
        });
        assert_eq!(rows[0].pod.as_deref(), Some("p"));
        assert_eq!(
            rows[0].gap.as_ref().map(|g| g.reason),
            Some(Reason::NotReady)
        );
    }

    /// A missing Secret (the token, say) keeps the container from being
    /// created: its own reason, with the kubelet's message (issue 9).
    #[test]
    fn a_missing_secret_is_its_own_reason() {
        let mut cs = waiting("CreateContainerConfigError", None);
        if let Some(w) = cs.state.as_mut().and_then(|s| s.waiting.as_mut()) {
            w.message = Some("secret \"logs-token\" not found".into());
        }
        let p = pod("p-k", "k", false, "r2", vec![cs], vec![]);
        let g = pod_gap(&p).expect("a gap");
        assert_eq!(g.reason, Reason::CreateContainerConfigError);
        assert!(
            g.message.contains("secret \"logs-token\" not found"),
            "{}",
            g.message
        );
        assert!(Reason::ImagePullBackOff < Reason::CreateContainerConfigError);
    }

    /// Issue 23: waiting reasons kubelet gives that were unclassified, and
    /// a NoSchedule taint added after the pod was placed (the pod keeps
    /// running; only NoExecute evicts).
    #[test]
    fn late_taints_and_more_waiting_reasons() {
        for (reason, want) in [
            ("ErrImageNeverPull", Reason::ImagePullBackOff),
            ("RunContainerError", Reason::CreateContainerConfigError),
        ] {
            let p = pod("p", "n", false, "r2", vec![waiting(reason, None)], vec![]);
            assert_eq!(pod_gap(&p).map(|g| g.reason), Some(want), "{reason}");
        }
        let taint = |effect: &str| Taint {
            key: "maintenance".into(),
            effect: effect.into(),
            ..Default::default()
        };
        let nodes = vec![
            node("late-noschedule", true, vec![taint("NoSchedule")], "linux"),
            node("late-noexecute", true, vec![taint("NoExecute")], "linux"),
            node("no-pod", true, vec![taint("NoSchedule")], "linux"),
        ];
        let pods = vec![
            pod("p1", "late-noschedule", true, "r2", vec![], vec![]),
            pod("p2", "late-noexecute", true, "r2", vec![], vec![]),
        ];
        let (rows, _) = classify(Inputs {
            nodes: &nodes,
            pods: &pods,
            template: &PodSpec::default(),
            current_revision: Some("r2"),
            revision_label: "controller-revision-hash",
            scope: None,
            last_push: &BTreeMap::new(),
            now: "2026-11-27T10:00:00Z".parse().unwrap(),
            silence: None,
        });
        let got: Vec<(&str, Option<&str>)> = rows
            .iter()
            .map(|r| (r.node.as_str(), r.gap.as_ref().map(|g| g.reason.as_str())))
            .collect();
        assert_eq!(
            got,
            [
                ("late-noexecute", Some("TaintNotTolerated")),
                ("late-noschedule", None),
                ("no-pod", Some("TaintNotTolerated")),
            ]
        );
    }
}
