//! Whether the DaemonSet controller places a daemon pod on a node, and if
//! not, why. This is the first half of coverage: a node the user expects
//! to be covered but that no daemon pod may run on is a gap a DaemonSet's
//! own counts never show (`desiredNumberScheduled` leaves such nodes out).
//!
//! The rules follow the DaemonSet controller (`pkg/controller/daemon` in
//! kubernetes/kubernetes): the pod's node selector, its required node
//! affinity, and taints with effect `NoSchedule` or `NoExecute` that the
//! pod does not tolerate, counting the tolerations Kubernetes adds to every
//! DaemonSet pod ([`daemonset_tolerations`]). `PreferNoSchedule` never
//! keeps a daemon pod off a node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Why a daemon pod does not belong on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misplacement {
    /// A `NoSchedule` or `NoExecute` taint the pod does not tolerate.
    TaintNotTolerated {
        /// Taint key.
        key: String,
        /// Taint value, if any.
        value: Option<String>,
        /// `NoSchedule` or `NoExecute`.
        effect: String,
    },
    /// A `nodeSelector` entry the node's labels do not satisfy.
    NodeSelectorMismatch {
        /// Label key.
        key: String,
        /// Value the pod asks for.
        want: String,
        /// Value the node has, if any.
        have: Option<String>,
    },
    /// No term of the required node affinity matches the node.
    AffinityMismatch {
        /// The first requirement of the first term that fails, as
        /// `key operator [values]` with what the node has.
        unmet: String,
    },
}

impl std::fmt::Display for Misplacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Misplacement::TaintNotTolerated { key, value, effect } => match value {
                Some(v) => write!(f, "taint {key}={v}:{effect} is not tolerated"),
                None => write!(f, "taint {key}:{effect} is not tolerated"),
            },
            Misplacement::NodeSelectorMismatch { key, want, have } => match have {
                Some(h) => write!(f, "node selector wants {key}={want}, node has {key}={h}"),
                None => write!(
                    f,
                    "node selector wants {key}={want}, node has no {key} label"
                ),
            },
            Misplacement::AffinityMismatch { unmet } => {
                write!(
                    f,
                    "no term of the required node affinity matches the node: {unmet}"
                )
            }
        }
    }
}

impl Misplacement {
    /// The reason as the controller's status reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            Misplacement::TaintNotTolerated { .. } => "TaintNotTolerated",
            Misplacement::NodeSelectorMismatch { .. } => "NodeSelectorMismatch",
            Misplacement::AffinityMismatch { .. } => "AffinityMismatch",
        }
    }

    /// Whether only scheduling is refused (a `NoSchedule` taint): a pod
    /// already running on the node stays, as the DaemonSet controller
    /// leaves it; only `NoExecute` evicts.
    pub fn schedule_only(&self) -> bool {
        matches!(self, Misplacement::TaintNotTolerated { effect, .. } if effect == "NoSchedule")
    }
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Default::default()
    }
}

/// The tolerations the DaemonSet controller adds to every daemon pod, so
/// that node conditions do not evict or keep out node agents
/// (`network-unavailable` only for host-network pods).
pub fn daemonset_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut t = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        t.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    t
}

/// Whether `t` tolerates `taint` (core/v1 `Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    // An empty key with Exists matches every taint.
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

fn label_value<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    labels.get(key).map(String::as_str)
}

/// Whether one requirement holds for the node's labels (or, for
/// `matchFields`, for its name under `metadata.name`).
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        // Gt and Lt compare integers; a value that is not one fails.
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches: all its requirements hold. A term
/// with no requirements matches nothing, as in Kubernetes.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_holds(r, label_value(labels, &r.key)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_holds(r, Some(name)))
}

/// The first requirement of the first term that does not hold, said with
/// the node's value (for the status message).
fn unmet(sel: &NodeSelector, labels: &BTreeMap<String, String>, name: &str) -> String {
    let Some(term) = sel.node_selector_terms.first() else {
        return "the affinity has no terms".into();
    };
    let exprs = term
        .match_expressions
        .iter()
        .flatten()
        .map(|r| (r, label_value(labels, &r.key)));
    let fields = term.match_fields.iter().flatten().map(|r| (r, Some(name)));
    for (r, have) in exprs.chain(fields) {
        if !requirement_holds(r, have) {
            let values = r.values.as_deref().unwrap_or(&[]).join(", ");
            let has = match have {
                Some(v) => format!("node has {}={v}", r.key),
                None => format!("node has no {}", r.key),
            };
            return format!("{} {} [{values}] ({has})", r.key, r.operator);
        }
    }
    "a term with no requirements matches nothing".into()
}

/// Whether a required node selector (terms ORed) matches the node.
pub fn selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or("");
    sel.node_selector_terms
        .iter()
        .any(|t| term_matches(t, labels, name))
}

/// Whether the DaemonSet controller would place a pod with `spec` on
/// `node`; the first reason it would not, otherwise. `spec` is the
/// DaemonSet's pod template spec; the automatic DaemonSet tolerations are
/// added here.
pub fn placement(node: &Node, spec: &PodSpec) -> Result<(), Misplacement> {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if let Some(sel) = &spec.node_selector {
        for (key, want) in sel {
            let have = labels.get(key);
            if have != Some(want) {
                return Err(Misplacement::NodeSelectorMismatch {
                    key: key.clone(),
                    want: want.clone(),
                    have: have.cloned(),
                });
            }
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(req) = required {
        if !selector_matches(req, node) {
            return Err(Misplacement::AffinityMismatch {
                unmet: unmet(req, labels, node.metadata.name.as_deref().unwrap_or("")),
            });
        }
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemonset_tolerations(spec.host_network.unwrap_or(false)));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    for taint in taints {
        if taint.effect != "NoSchedule" && taint.effect != "NoExecute" {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Err(Misplacement::TaintNotTolerated {
                key: taint.key.clone(),
                value: taint.value.clone(),
                effect: taint.effect.clone(),
            });
        }
    }
    Ok(())
}

/// The node selector of a scope, as coverage takes it.
pub fn scope_selector(scope: &crate::crd::NodeScope) -> Option<NodeSelector> {
    if scope.node_selector.is_empty() {
        return None;
    }
    Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: Some(
                scope
                    .node_selector
                    .iter()
                    .map(|(k, v)| NodeSelectorRequirement {
                        key: k.clone(),
                        operator: "In".into(),
                        values: Some(vec![v.clone()]),
                    })
                    .collect(),
            ),
            match_fields: None,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(
        name: &str,
        labels: &[(&str, &str)],
        taints: &[(&str, Option<&str>, &str)],
        unschedulable: bool,
    ) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, v, e)| Taint {
                            key: k.to_string(),
                            value: v.map(str::to_string),
                            effect: e.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                unschedulable: Some(unschedulable),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tol(key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(str::to_string),
            operator: Some(op.into()),
            value: value.map(str::to_string),
            effect: effect.map(str::to_string),
            ..Default::default()
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn affinity(terms: Vec<Vec<NodeSelectorRequirement>>) -> Affinity {
        Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms
                        .into_iter()
                        .map(|e| NodeSelectorTerm {
                            match_expressions: Some(e),
                            match_fields: None,
                        })
                        .collect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn linux() -> Vec<(&'static str, &'static str)> {
        vec![
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ]
    }

    #[test]
    fn taints_and_tolerations() {
        let control = ("node-role.kubernetes.io/control-plane", None, "NoSchedule");
        let gpu = ("nvidia.com/gpu", Some("true"), "NoExecute");
        let soft = ("spot", Some("true"), "PreferNoSchedule");
        let tolerate_all = vec![tol(None, "Exists", None, None)];
        // (case, node, tolerations, expected placement)
        type Case<'a> = (&'a str, Node, Vec<Toleration>, Result<(), &'a str>);
        let cases: Vec<Case> = vec![
            (
                "untainted node",
                node("a", &linux(), &[], false),
                vec![],
                Ok(()),
            ),
            (
                "control plane, no toleration",
                node("cp", &linux(), &[control], false),
                vec![],
                Err("TaintNotTolerated"),
            ),
            (
                "control plane, tolerate everything",
                node("cp", &linux(), &[control], false),
                tolerate_all.clone(),
                Ok(()),
            ),
            (
                "NoExecute gpu, Equal with right value",
                node("g", &linux(), &[gpu], false),
                vec![tol(
                    Some("nvidia.com/gpu"),
                    "Equal",
                    Some("true"),
                    Some("NoExecute"),
                )],
                Ok(()),
            ),
            (
                "NoExecute gpu, Equal with wrong value",
                node("g", &linux(), &[gpu], false),
                vec![tol(Some("nvidia.com/gpu"), "Equal", Some("false"), None)],
                Err("TaintNotTolerated"),
            ),
            (
                "NoExecute gpu, toleration for NoSchedule only",
                node("g", &linux(), &[gpu], false),
                vec![tol(
                    Some("nvidia.com/gpu"),
                    "Exists",
                    None,
                    Some("NoSchedule"),
                )],
                Err("TaintNotTolerated"),
            ),
            (
                "PreferNoSchedule never blocks",
                node("s", &linux(), &[soft], false),
                vec![],
                Ok(()),
            ),
            // Cordoned nodes carry the unschedulable taint, which DaemonSet
            // pods tolerate automatically; so do not-ready nodes.
            (
                "cordoned node",
                node(
                    "c",
                    &linux(),
                    &[("node.kubernetes.io/unschedulable", None, "NoSchedule")],
                    true,
                ),
                vec![],
                Ok(()),
            ),
            (
                "not-ready node",
                node(
                    "n",
                    &linux(),
                    &[("node.kubernetes.io/not-ready", None, "NoExecute")],
                    false,
                ),
                vec![],
                Ok(()),
            ),
            (
                "network-unavailable without host network",
                node(
                    "w",
                    &linux(),
                    &[("node.kubernetes.io/network-unavailable", None, "NoSchedule")],
                    false,
                ),
                vec![],
                Err("TaintNotTolerated"),
            ),
        ];
        for (what, n, tolerations, want) in cases {
            let spec = PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            };
            let got = placement(&n, &spec);
            assert_eq!(
                got.as_ref().map(|_| ()).map_err(Misplacement::reason),
                want,
                "{what}: {got:?}"
            );
        }
    }

    #[test]
    fn taint_reason_names_the_taint() {
        let n = node(
            "g",
            &linux(),
            &[("dedicated", Some("db"), "NoSchedule")],
            false,
        );
        let err = placement(&n, &PodSpec::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "taint dedicated=db:NoSchedule is not tolerated"
        );
        let host = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        let n = node(
            "w",
            &linux(),
            &[("node.kubernetes.io/network-unavailable", None, "NoSchedule")],
            false,
        );
        assert_eq!(
            placement(&n, &host),
            Ok(()),
            "host-network pods tolerate network-unavailable"
        );
    }

    #[test]
    fn node_selectors() {
        let spec = PodSpec {
            node_selector: Some([("kubernetes.io/os".to_string(), "linux".to_string())].into()),
            ..Default::default()
        };
        assert_eq!(placement(&node("l", &linux(), &[], false), &spec), Ok(()));
        let win = node("w", &[("kubernetes.io/os", "windows")], &[], false);
        let err = placement(&win, &spec).unwrap_err();
        assert_eq!(err.reason(), "NodeSelectorMismatch");
        assert_eq!(
            err.to_string(),
            "node selector wants kubernetes.io/os=linux, node has kubernetes.io/os=windows"
        );
        let bare = node("b", &[], &[], false);
        assert!(placement(&bare, &spec)
            .unwrap_err()
            .to_string()
            .contains("has no kubernetes.io/os label"));
    }

    #[test]
    fn required_node_affinity() {
        let n = node("n1", &[("zone", "a"), ("pool", "7")], &[], false);
        let cases: Vec<(&str, Vec<Vec<NodeSelectorRequirement>>, bool)> = vec![
            ("In", vec![vec![req("zone", "In", &["a", "b"])]], true),
            (
                "In, other value",
                vec![vec![req("zone", "In", &["c"])]],
                false,
            ),
            ("NotIn", vec![vec![req("zone", "NotIn", &["c"])]], true),
            (
                "NotIn on a missing label holds",
                vec![vec![req("rack", "NotIn", &["x"])]],
                true,
            ),
            ("Exists", vec![vec![req("pool", "Exists", &[])]], true),
            (
                "DoesNotExist",
                vec![vec![req("pool", "DoesNotExist", &[])]],
                false,
            ),
            ("Gt", vec![vec![req("pool", "Gt", &["5"])]], true),
            ("Lt", vec![vec![req("pool", "Lt", &["5"])]], false),
            (
                "Gt on a non-number",
                vec![vec![req("zone", "Gt", &["1"])]],
                false,
            ),
            (
                "expressions in a term are ANDed",
                vec![vec![req("zone", "In", &["a"]), req("pool", "In", &["8"])]],
                false,
            ),
            (
                "terms are ORed",
                vec![
                    vec![req("zone", "In", &["x"])],
                    vec![req("pool", "In", &["7"])],
                ],
                true,
            ),
            ("an empty term matches nothing", vec![vec![]], false),
            ("no terms match nothing", vec![], false),
        ];
        for (what, terms, want) in cases {
            let spec = PodSpec {
                affinity: Some(affinity(terms)),
                ..Default::default()
            };
            let got = placement(&n, &spec);
            assert_eq!(got.is_ok(), want, "{what}: {got:?}");
            if !want {
                assert!(
                    matches!(got, Err(Misplacement::AffinityMismatch { .. })),
                    "{what}"
                );
            }
        }
        // matchFields on metadata.name pins a node.
        let pinned = PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: None,
                            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(placement(&n, &pinned), Ok(()));
        assert_eq!(
            placement(&node("n2", &[], &[], false), &pinned),
            Err(Misplacement::AffinityMismatch {
                unmet: "metadata.name In [n1] (node has metadata.name=n2)".into()
            })
        );
    }

    /// The AffinityMismatch message names what does not hold.
    #[test]
    fn an_affinity_mismatch_names_the_requirement() {
        let n = node("n1", &[("zone", "a")], &[], false);
        let spec = PodSpec {
            affinity: Some(affinity(vec![vec![req("zone", "In", &["b", "c"])]])),
            ..Default::default()
        };
        let e = placement(&n, &spec).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no term of the required node affinity matches the node: zone In [b, c] (node has zone=a)"
        );
    }
}
