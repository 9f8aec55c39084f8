//! What the CRD cannot check but the agents and the aggregator would refuse
//! at start: regexes that do not compile, sizes and durations their parsers
//! do not take. A spec that fails here is never rolled out (every agent
//! would crash-loop on it); the controller keeps the last good
//! configuration running and reports `Degraded` with reason `InvalidSpec`.
//!
//! Pure: the same rules the binaries apply (`^(?:pattern)$` regexes as the
//! agent's filters compile them, `bytesize` sizes and `humantime` durations
//! as their flags parse them).

use crate::crd::LogCollectorSpec;

/// One problem with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path of the field, e.g. `spec.agent.filters.excludeNamespaces[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem, joined for a condition message.
pub fn describe(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn size(field: &str, v: &str, zero_ok: bool, out: &mut Vec<Problem>) {
    match v.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() == 0 && !zero_ok => out.push(Problem {
            field: field.into(),
            message: format!("{v:?} is zero"),
        }),
        Ok(_) => {}
        Err(e) => out.push(Problem {
            field: field.into(),
            message: format!("{v:?} is not a byte size: {e}"),
        }),
    }
}

fn duration(field: &str, v: &str, zero_ok: bool, out: &mut Vec<Problem>) {
    if zero_ok && v == "0" {
        return;
    }
    match humantime::parse_duration(v) {
        Ok(d) if d.is_zero() && !zero_ok => out.push(Problem {
            field: field.into(),
            message: format!("{v:?} is zero"),
        }),
        Ok(_) => {}
        Err(e) => out.push(Problem {
            field: field.into(),
            message: format!("{v:?} is not a duration: {e}"),
        }),
    }
}

/// The regex crate's message spans lines; one line reads better in a
/// condition.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Kubernetes' quantity syntax (apimachinery's `ParseQuantity`): a signed
/// decimal number and a binary (`Ki`..`Ei`), decimal (`m`, `k`..`E`) or
/// exponent (`e3`) suffix.
fn quantity(field: &str, v: &str, out: &mut Vec<Problem>) {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"^[+-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
            .expect("a valid pattern")
    });
    if !re.is_match(v) {
        out.push(Problem {
            field: field.into(),
            message: format!("{v:?} is not a Kubernetes quantity (such as 10Gi, 500m or 1.5)"),
        });
    }
}

fn resources(
    field: &str,
    r: &Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    out: &mut Vec<Problem>,
) {
    let Some(r) = r else { return };
    for (kind, list) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (name, q) in list.iter().flatten() {
            quantity(&format!("{field}.{kind}.{name}"), &q.0, out);
        }
    }
}

fn is_zero(v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        IntOrString::Int(n) => *n == 0,
        IntOrString::String(s) => s.trim_end_matches('%').trim() == "0",
    }
}

/// Checks a spec; `Err` lists every problem.
pub fn validate(spec: &LogCollectorSpec) -> Result<(), Vec<Problem>> {
    let mut out = Vec::new();
    let a = &spec.agent;
    let f = &a.filters;
    for (name, list) in [
        ("includeNamespaces", &f.include_namespaces),
        ("excludeNamespaces", &f.exclude_namespaces),
        ("includePods", &f.include_pods),
        ("excludePods", &f.exclude_pods),
        ("includeContainers", &f.include_containers),
        ("excludeContainers", &f.exclude_containers),
    ] {
        for (i, p) in list.iter().enumerate() {
            if let Err(e) = regex::Regex::new(&format!("^(?:{p})$")) {
                let msg = one_line(&e);
                out.push(Problem {
                    field: format!("spec.agent.filters.{name}[{i}]"),
                    message: format!("{p:?} is not a valid regular expression: {msg}"),
                });
            }
        }
    }
    size("spec.agent.batchSize", &a.batch_size, false, &mut out);
    duration("spec.agent.batchWait", &a.batch_wait, false, &mut out);
    let m = &a.multiline;
    // The agent's own rule (`multiline::Detector::parse`): a known name or
    // a regular expression for the first line of a record.
    let named = [
        "", "none", "off", "java", "python", "go", "ruby", "dotnet", "auto",
    ];
    if !named.contains(&m.default.trim()) {
        if let Err(e) = regex::bytes::RegexBuilder::new(m.default.trim())
            .size_limit(1 << 20)
            .build()
        {
            let msg = one_line(&e);
            out.push(Problem {
                field: "spec.agent.multiline.default".into(),
                message: format!(
                    "{:?} is neither none, java, python, go, ruby, dotnet, auto nor a valid regular expression: {msg}",
                    m.default
                ),
            });
        }
    }
    duration("spec.agent.multiline.timeout", &m.timeout, false, &mut out);
    size("spec.agent.multiline.maxSize", &m.max_size, false, &mut out);
    resources("spec.agent.resources", &a.resources, &mut out);
    // The API server refuses a DaemonSet that may never replace a pod.
    let u = &a.update_strategy;
    let surge_zero = u.max_surge.as_ref().is_none_or(is_zero);
    if u.type_ == crate::crd::UpdateStrategyType::RollingUpdate
        && surge_zero
        && u.max_unavailable.as_ref().is_some_and(is_zero)
    {
        out.push(Problem {
            field: "spec.agent.updateStrategy.maxUnavailable".into(),
            message: "may not be 0 when maxSurge is 0: no agent could ever be replaced".into(),
        });
    }
    let g = &spec.aggregator;
    // Fixed at creation (the volume claim template is immutable): a typo
    // here could only be mended by deleting the collector.
    quantity("spec.aggregator.storage.size", &g.storage.size, &mut out);
    resources("spec.aggregator.resources", &g.resources, &mut out);
    duration(
        "spec.aggregator.retentionAge",
        &g.retention_age,
        true,
        &mut out,
    );
    size(
        "spec.aggregator.retentionSize",
        &g.retention_size,
        true,
        &mut out,
    );
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> LogCollectorSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_default_spec_is_valid() {
        assert_eq!(validate(&LogCollectorSpec::default()), Ok(()));
        assert_eq!(
            validate(&spec(serde_json::json!({
                "agent": {"filters": {"excludeNamespaces": ["kube-.*", "openshift-(logging|monitoring)"]},
                          "batchSize": "512KiB", "batchWait": "250ms",
                          "multiline": {"default": "^\\d{4}-\\d{2}-\\d{2} ", "timeout": "2s"}},
                "aggregator": {"retentionAge": "0", "retentionSize": "50GiB"}
            }))),
            Ok(())
        );
    }

    /// What the API server refuses of the rendered objects: caught before,
    /// with the field named (it used to pass `render -f` and fail at apply).
    #[test]
    fn what_the_api_server_would_refuse_is_refused() {
        let e = validate(&spec(serde_json::json!({
            "agent": {"updateStrategy": {"type": "RollingUpdate", "maxUnavailable": 0},
                      "resources": {"limits": {"memory": "lots"}}},
            "aggregator": {"storage": {"size": "10GB"}, "resources": {"requests": {"cpu": "100m"}}}
        })))
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.agent.resources.limits.memory",
                "spec.agent.updateStrategy.maxUnavailable",
                "spec.aggregator.storage.size"
            ]
        );
        for ok in ["10Gi", "500m", "1.5", "1e3", "+2", ".5Mi", "128974848"] {
            let mut out = Vec::new();
            quantity("q", ok, &mut out);
            assert!(out.is_empty(), "{ok}");
        }
        for bad in ["10GB", "lots", "1.2.3", "", "Gi", "1 Gi"] {
            let mut out = Vec::new();
            quantity("q", bad, &mut out);
            assert_eq!(out.len(), 1, "{bad}");
        }
        assert!(validate(&spec(serde_json::json!({
            "agent": {"updateStrategy": {"type": "RollingUpdate", "maxUnavailable": "10%"}}
        })))
        .is_ok());
    }

    /// The issue's case: `kube-(` passed the CRD, rendered, and every agent
    /// exited at start with "bad pattern".
    #[test]
    fn what_would_crash_every_agent_is_refused() {
        let e = validate(&spec(serde_json::json!({
            "agent": {"filters": {"excludeNamespaces": ["ok", "kube-("]}, "batchSize": "0", "batchWait": "1 fortnight",
                      "multiline": {"default": "^[", "timeout": "0s"}},
            "aggregator": {"retentionAge": "7x"}
        })))
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.agent.filters.excludeNamespaces[1]",
                "spec.agent.batchSize",
                "spec.agent.batchWait",
                "spec.agent.multiline.default",
                "spec.agent.multiline.timeout",
                "spec.aggregator.retentionAge"
            ]
        );
        let text = describe(&e);
        assert!(
            text.contains("\"kube-(\" is not a valid regular expression"),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }
}
