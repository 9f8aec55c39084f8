//! What a real API server and the controller would say of a LogCollector
//! file before anything is applied, for `logfleet render -f`: the file may
//! hold several documents (the LogCollectors are picked); a document whose
//! kind or apiVersion is wrong, a field the schema does not have (as
//! `kubectl apply`'s strict field validation reports it), a CEL rule of the
//! CRD, or a value the agents would refuse ([`crate::validate`]) is an error
//! naming the document and the field.
//!
//! Pure: text in, collectors or errors out.

use kube::CustomResourceExt;
use serde_json::Value;

use crate::crd::LogCollector;

/// Why a file holds no usable LogCollector.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The text is not YAML or JSON.
    #[error("not YAML: {0}")]
    Syntax(String),
    /// No document is a LogCollector.
    #[error("no LogCollector in the file (kinds found: {0})")]
    None(String),
    /// One or more documents are refused.
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>),
}

const API_VERSION: &str = "logfleet.dev/v1alpha1";

/// Fields of `value` that `schema` does not have, as `spec.agent.x` paths.
/// Embedded objects whose schema allows anything (`x-kubernetes-preserve-
/// unknown-fields`, maps) are not descended into.
pub fn unknown_fields(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match props.get(k) {
                        Some(s) => unknown_fields(v, s, &p, out),
                        None => out.push(p),
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, v) in m {
                    unknown_fields(v, ap, &format!("{path}.{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    unknown_fields(v, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Every LogCollector in `text` (one or more YAML documents), checked; a
/// collector without a namespace gets `default_namespace`.
pub fn collectors_in(text: &str, default_namespace: &str) -> Result<Vec<LogCollector>, CheckError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| CheckError::Syntax(e.to_string()))?;
    let crd = LogCollector::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let mut kinds = Vec::new();
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("(none)");
        let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let at = format!("document {} ({kind} {name})", i + 1);
        kinds.push(kind.to_owned());
        let looks_like_ours = api.starts_with("logfleet.dev/")
            || kind.eq_ignore_ascii_case("logcollector")
            || kind.to_ascii_lowercase().starts_with("logcollect");
        if kind != "LogCollector" || api != API_VERSION {
            if looks_like_ours {
                errors.push(format!(
                    "{at}: want apiVersion {API_VERSION} and kind LogCollector, got {api:?} and {kind:?}"
                ));
            }
            continue;
        }
        let mut unknown = Vec::new();
        for part in ["spec", "metadata"] {
            if let (Some(v), Some(s)) = (
                doc.get(part),
                schema.pointer(&format!("/properties/{part}")),
            ) {
                if part == "spec" {
                    unknown_fields(v, s, "spec", &mut unknown);
                }
            }
        }
        for u in &unknown {
            errors.push(format!("{at}: unknown field \"{u}\""));
        }
        if !unknown.is_empty() {
            continue;
        }
        let mut lc: LogCollector = match serde_json::from_value(doc.clone()) {
            Ok(lc) => lc,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                continue;
            }
        };
        if lc.metadata.name.is_none() {
            errors.push(format!("{at}: metadata.name is missing"));
            continue;
        }
        if lc.metadata.namespace.is_none() {
            lc.metadata.namespace = Some(default_namespace.into());
        }
        if let Err(e) = kube::core::cel::validate_cel(&lc) {
            errors.push(format!("{at}: {e}"));
            continue;
        }
        if let Err(p) = crate::validate::validate(&lc.spec) {
            errors.push(format!("{at}: {}", crate::validate::describe(&p)));
            continue;
        }
        out.push(lc);
    }
    if !errors.is_empty() {
        return Err(CheckError::Refused(errors));
    }
    if out.is_empty() {
        return Err(CheckError::None(if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        collectors_in(text, "logfleet").unwrap_err().to_string()
    }

    #[test]
    fn picks_the_collectors_of_a_multi_document_file() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: logfleet}\n---\n\
                    apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata: {name: a}\nspec: {}\n---\n\
                    apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata: {name: b, namespace: x}\nspec: {}\n";
        let got = collectors_in(text, "logfleet").unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|l| {
                (
                    l.metadata.name.clone().unwrap(),
                    l.metadata.namespace.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [("a".into(), "logfleet".into()), ("b".into(), "x".into())]
        );
    }

    /// What the API server would refuse, and what would crash the agents.
    #[test]
    fn refuses_what_the_api_server_or_the_agents_would() {
        let head = "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata: {name: a}\n";
        let e = err(&format!(
            "{head}spec: {{agent: {{tolerateAllTaint: false}}}}\n"
        ));
        assert!(
            e.contains("unknown field \"spec.agent.tolerateAllTaint\""),
            "{e}"
        );
        let e = err("apiVersion: logfleet.dev/v1alpha1\nkind: LogColector\nmetadata: {name: a}\n");
        assert!(
            e.contains("kind LogCollector") && e.contains("LogColector"),
            "{e}"
        );
        let e = err(&format!(
            "{head}spec: {{aggregator: {{retentionAge: 1 week}}}}\n"
        ));
        assert!(e.contains("retentionAge"), "{e}");
        let e = err(&format!(
            "{head}spec: {{agent: {{filters: {{excludeNamespaces: [\"kube-(\"]}}}}}}\n"
        ));
        assert!(e.contains("not a valid regular expression"), "{e}");
        let e = err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n");
        assert!(
            e.contains("no LogCollector") && e.contains("ConfigMap"),
            "{e}"
        );
    }

    #[test]
    fn maps_and_embedded_types_are_not_flagged() {
        let text = "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata: {name: a}\n\
                    spec:\n  agent:\n    nodeSelector: {disk: ssd}\n    tolerateAllTaints: false\n    \
                    tolerations: [{key: k, operator: Exists, effect: NoSchedule}]\n";
        assert_eq!(collectors_in(text, "ns").unwrap().len(), 1);
    }
}
