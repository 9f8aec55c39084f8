//! The rule a real API server applies to a CRD's CEL, checked on the CRD we
//! generate (no API server can run here).
//!
//! Since Kubernetes 1.25 the API server estimates, when a CRD is created or
//! updated, the worst-case cost of every `x-kubernetes-validations` rule
//! from the schema, and refuses the CRD when one rule exceeds
//! `StaticEstimatedCostLimit` (10,000,000) or all rules together exceed
//! `StaticEstimatedCRDCostLimit` (100,000,000)
//! (k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation).
//! The estimate is driven by `maxItems` and `maxLength`: an unbounded list
//! or string makes it astronomical (the API server assumes the request
//! size limit, ~3 MiB), which is how an earlier version of this CRD was
//! refused.
//!
//! This test requires that every list and string a rule reaches is bounded,
//! and computes a conservative estimate per rule (documented at
//! [`estimate`]) that must stay under both limits.

use kube::CustomResourceExt;
use logfleet_controller::crd::LogCollector;
use serde_json::Value;

const PER_RULE_LIMIT: u64 = 10_000_000;
const PER_CRD_LIMIT: u64 = 100_000_000;

/// A rule, where it sits, and how many times it may run per object (the
/// product of the `maxItems` of the lists enclosing it).
struct Found {
    path: String,
    rule: String,
    node: Value,
    cardinality: u64,
}

fn collect(node: &Value, path: &str, cardinality: u64, out: &mut Vec<Found>) {
    if let Some(rules) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            out.push(Found {
                path: path.to_owned(),
                rule: r["rule"].as_str().unwrap_or_default().to_owned(),
                node: node.clone(),
                cardinality,
            });
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            collect(v, &format!("{path}.{k}"), cardinality, out);
        }
    }
    if let Some(items) = node.get("items") {
        let n = node
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        collect(
            items,
            &format!("{path}[]"),
            cardinality.saturating_mul(n),
            out,
        );
    }
}

/// The cost of reading one value of schema `s` in full, in cel-go's units
/// (string traversal costs 0.1 per byte, rounded up; a list costs its items
/// times their cost; an object the sum of its fields). `None` when a string
/// or list on the way has no bound.
fn read_cost(s: &Value, path: &str, unbounded: &mut Vec<String>) -> u64 {
    match s.get("type").and_then(Value::as_str) {
        Some("string") => {
            if s.get("enum").is_some() {
                return 1;
            }
            match s.get("maxLength").and_then(Value::as_u64) {
                Some(n) => n.div_ceil(10).max(1),
                None => {
                    unbounded.push(path.to_owned());
                    1
                }
            }
        }
        Some("array") => {
            let items = read_cost(&s["items"], &format!("{path}[]"), unbounded);
            match s.get("maxItems").and_then(Value::as_u64) {
                Some(n) => n.saturating_mul(items.saturating_add(1)),
                None => {
                    unbounded.push(path.to_owned());
                    1
                }
            }
        }
        Some("object") => s
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .map(|(k, v)| read_cost(v, &format!("{path}.{k}"), unbounded))
                    .sum::<u64>()
            })
            .unwrap_or(1)
            .max(1),
        // integers, booleans, int-or-string
        _ => 1,
    }
}

/// The fields of `node` a rule names as `self.<field>` or
/// `oldSelf.<field>` (and, for `self == oldSelf`, the whole node).
fn referenced<'a>(rule: &str, node: &'a Value) -> Vec<(String, &'a Value)> {
    // `oldSelf` other than as `oldSelf.<field>` compares the whole node.
    let whole_old = rule
        .split("oldSelf")
        .skip(1)
        .any(|rest| !rest.starts_with('.'));
    if whole_old
        || rule.trim().starts_with("self ")
        || rule.contains("self.matches")
        || rule.contains("self.startsWith")
        || rule.trim() == "self > 0"
        || rule.contains("self ==") && !rule.contains("self.")
    {
        return vec![("self".into(), node)];
    }
    let mut out = Vec::new();
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            for whose in ["self", "oldSelf"] {
                let name = format!("{whose}.{k}");
                if rule.contains(&name) {
                    out.push((name, v));
                }
            }
        }
    }
    out
}

/// A conservative worst-case estimate of one rule's cost:
///
/// `2 x (product of maxItems of the lists the rule iterates, with all(),
/// exists() or in) x (1 + sum of the read costs of what it reads) x
/// (regex factor)`, times the rule's cardinality.
///
/// The regex factor is the pattern's length for `matches()` (cel-go charges
/// string length x a quarter of the pattern length; this takes the whole).
/// Nested iteration over two lists multiplies their sizes, as cel-go does
/// for `a.all(x, x in b)`. The factor 2 covers the per-operator constants.
fn estimate(f: &Found, unbounded: &mut Vec<String>) -> u64 {
    let refs = referenced(&f.rule, &f.node);
    let mut iter = 1u64;
    let mut read = 1u64;
    for (name, s) in &refs {
        let field = name
            .strip_prefix("oldSelf")
            .or_else(|| name.strip_prefix("self"));
        let path = format!("{}{}", f.path, field.unwrap_or(name));
        // Only has() or size(): constant cost, whatever the list holds.
        let uses = f.rule.matches(name.as_str()).count();
        let cheap = f.rule.matches(&format!("has({name})")).count()
            + f.rule.matches(&format!("size({name})")).count();
        if name != "self" && uses == cheap {
            continue;
        }
        let iterated = s.get("type").and_then(Value::as_str) == Some("array")
            && (f.rule.contains(&format!("{name}.all("))
                || f.rule.contains(&format!("{name}.exists("))
                || f.rule.contains(&format!("in {name}")));
        if iterated {
            // One item per step of the iteration.
            match s.get("maxItems").and_then(Value::as_u64) {
                Some(n) => iter = iter.saturating_mul(n),
                None => {
                    unbounded.push(path.clone());
                    iter = u64::MAX;
                }
            }
            read = read.saturating_add(read_cost(&s["items"], &format!("{path}[]"), unbounded));
        } else {
            read = read.saturating_add(read_cost(s, &path, unbounded));
        }
    }
    let regex = f
        .rule
        .split("matches('")
        .nth(1)
        .and_then(|r| r.split("')").next())
        .map_or(1, |p| p.len() as u64);
    2u64.saturating_mul(iter)
        .saturating_mul(read)
        .saturating_mul(regex)
        .saturating_mul(f.cardinality)
}

#[test]
fn every_rule_is_bounded_and_within_the_api_servers_cost_limits() {
    let crd = serde_json::to_value(LogCollector::crd()).unwrap();
    let mut total = 0u64;
    let mut report = Vec::new();
    let mut problems = Vec::new();
    for version in crd["spec"]["versions"].as_array().unwrap() {
        let schema = &version["schema"]["openAPIV3Schema"];
        let mut found = Vec::new();
        collect(schema, "", 1, &mut found);
        assert!(found.len() >= 10, "rules found: {}", found.len());
        for f in &found {
            let mut unbounded = Vec::new();
            let cost = estimate(f, &mut unbounded);
            if !unbounded.is_empty() {
                problems.push(format!(
                    "{} `{}` reaches unbounded {unbounded:?}",
                    f.path, f.rule
                ));
            }
            if cost > PER_RULE_LIMIT {
                problems.push(format!(
                    "{} `{}` costs {cost} > {PER_RULE_LIMIT}",
                    f.path, f.rule
                ));
            }
            report.push(format!("{cost:>10}  {}  {}", f.path, f.rule));
            total = total.saturating_add(cost);
        }
    }
    eprintln!("estimated worst-case cost per rule:\n{}", report.join("\n"));
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(total <= PER_CRD_LIMIT, "total {total} > {PER_CRD_LIMIT}");
    // The estimate must be able to fail: the filters rule over two lists
    // of 64 patterns of 1,024 bytes is the largest; without maxItems it
    // would be refused.
    assert!(report.iter().any(|r| r.contains("includeNamespaces.all")));
}

/// The same walk must catch what the API server refuses: an unbounded list
/// under a rule.
#[test]
fn the_estimate_refuses_an_unbounded_list() {
    let node = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "string", "maxLength": 10}},
            "b": {"type": "array", "maxItems": 10, "items": {"type": "string"}}
        }
    });
    let f = Found {
        path: ".x".into(),
        rule: "self.a.all(n, !(n in self.b))".into(),
        node,
        cardinality: 1,
    };
    let mut unbounded = Vec::new();
    let cost = estimate(&f, &mut unbounded);
    assert_eq!(unbounded, [".x.a", ".x.b[]"], "{cost}");
    assert!(cost > PER_RULE_LIMIT, "{cost}");
}

/// "Prefer bounds everywhere": every string and list of our own spec types
/// is bounded. Embedded Kubernetes types (affinity, tolerations,
/// resources) and label maps keep the upstream schema, which no rule reads.
#[test]
fn the_spec_is_bounded_everywhere_but_embedded_kubernetes_types() {
    let crd = serde_json::to_value(LogCollector::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut unbounded = Vec::new();
    fn walk(s: &Value, path: &str, out: &mut Vec<String>) {
        for skip in [
            "nodeAffinity",
            "tolerations",
            "resources",
            "nodeSelector",
            "maxUnavailable",
            "maxSurge",
        ] {
            if path.ends_with(skip) {
                return;
            }
        }
        match s.get("type").and_then(Value::as_str) {
            Some("string") if s.get("enum").is_none() && s.get("maxLength").is_none() => {
                out.push(path.to_owned())
            }
            Some("array") => {
                if s.get("maxItems").is_none() {
                    out.push(path.to_owned());
                }
                walk(&s["items"], &format!("{path}[]"), out);
            }
            _ => {}
        }
        if let Some(p) = s.get("properties").and_then(Value::as_object) {
            for (k, v) in p {
                walk(v, &format!("{path}.{k}"), out);
            }
        }
    }
    walk(spec, "spec", &mut unbounded);
    assert!(unbounded.is_empty(), "{unbounded:?}");
}
