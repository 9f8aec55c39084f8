//! Reading a `kubectl get nodes,pods,daemonsets,logcollectors -A -o json` dump (a `v1
//! List`), as support bundles and must-gather archives hold, into the
//! objects [`crate::coverage::classify`] needs.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};

/// Label every logfleet object carries (`app.kubernetes.io/part-of`).
pub const PART_OF: &str = "logfleet";
/// `app.kubernetes.io/component` of the agent DaemonSet.
pub const AGENT_COMPONENT: &str = "agent";

/// The objects of a dump.
#[derive(Debug, Default)]
pub struct Dump {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// DaemonSets.
    pub daemonsets: Vec<DaemonSet>,
    /// LogCollectors (for their `nodeScope`).
    pub collectors: Vec<crate::crd::LogCollector>,
}

/// A dump that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Not JSON, or not a List.
    #[error("not a kubectl JSON list: {0}")]
    NotAList(String),
    /// An item of a known kind did not parse.
    #[error("item {index} ({kind} {name}): {source}")]
    Item {
        /// Position in the list.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// Why.
        source: serde_json::Error,
    },
    /// No logfleet agent DaemonSet in the dump.
    #[error("no logfleet agent DaemonSet (labels app.kubernetes.io/part-of=logfleet, app.kubernetes.io/component=agent) in the dump{0}")]
    NoAgents(String),
}

/// Parses a dump; items of other kinds are skipped.
pub fn parse(data: &[u8]) -> Result<Dump, DumpError> {
    // JSON, or YAML (`kubectl get -o yaml`, must-gather): JSON is YAML too,
    // but the JSON parser is faster on large dumps.
    let v: serde_json::Value = match serde_json::from_slice(data) {
        Ok(v) => v,
        // What looks like JSON gets JSON's error, which says where.
        Err(json)
            if data
                .trim_ascii_start()
                .first()
                .is_some_and(|c| b"{[".contains(c)) =>
        {
            return Err(DumpError::NotAList(json.to_string()));
        }
        Err(_) => {
            let text = std::str::from_utf8(data).map_err(|e| DumpError::NotAList(e.to_string()))?;
            serde_saphyr::from_str(text).map_err(|yaml| {
                // The YAML parser draws the place over several lines.
                let first = yaml.to_string();
                let first = first.lines().next().unwrap_or_default().to_owned();
                DumpError::NotAList(format!("not JSON or YAML: {first}"))
            })?
        }
    };
    let items = v
        .get("items")
        .and_then(|i| i.as_array())
        .ok_or_else(|| DumpError::NotAList("no \"items\" array".into()))?;
    let mut d = Dump::default();
    for (index, item) in items.iter().enumerate() {
        let kind = item
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let err = |source| DumpError::Item {
            index,
            kind: kind.clone(),
            name: item
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("?")
                .to_owned(),
            source,
        };
        match kind.as_str() {
            "Node" => d
                .nodes
                .push(serde_json::from_value(item.clone()).map_err(err)?),
            "Pod" => d
                .pods
                .push(serde_json::from_value(item.clone()).map_err(err)?),
            "DaemonSet" => d
                .daemonsets
                .push(serde_json::from_value(item.clone()).map_err(err)?),
            "LogCollector" => d
                .collectors
                .push(serde_json::from_value(item.clone()).map_err(err)?),
            _ => {}
        }
    }
    Ok(d)
}

fn label<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// The Secrets an agent DaemonSet mounts: the one with the tokens and the
/// one with the aggregator's CA (none with TLS off).
pub fn secret_names(ds: &DaemonSet) -> (Option<String>, Option<String>) {
    let volumes = ds
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref());
    let secret = |name: &str| {
        volumes?
            .iter()
            .find(|v| v.name == name)?
            .secret
            .as_ref()?
            .secret_name
            .clone()
    };
    (secret("credentials"), secret("tls"))
}

/// The agent DaemonSet of the `LogCollector` named `name` (any, when
/// `None`) in `namespace` (any, when `None`).
pub fn agent_daemonset<'a>(
    d: &'a Dump,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<&'a DaemonSet, DumpError> {
    d.daemonsets
        .iter()
        .find(|ds| {
            let m = &ds.metadata;
            label(m, "app.kubernetes.io/part-of") == Some(PART_OF)
                && label(m, "app.kubernetes.io/component") == Some(AGENT_COMPONENT)
                && namespace.is_none_or(|ns| m.namespace.as_deref() == Some(ns))
                && name.is_none_or(|n| {
                    label(m, "app.kubernetes.io/instance") == Some(&crate::names::instance(n))
                })
        })
        .ok_or_else(|| {
            DumpError::NoAgents(match (namespace, name) {
                (Some(ns), Some(n)) => format!(" for {ns}/{n}"),
                (Some(ns), None) => format!(" in namespace {ns}"),
                (None, Some(n)) => format!(" named {n}"),
                (None, None) => String::new(),
            })
        })
}

/// The expected-node scope of the collector that owns an agent DaemonSet
/// (`None`, every Linux node, when the collector is not known).
pub fn scope_of(d: &Dump, ds: &DaemonSet) -> Option<k8s_openapi::api::core::v1::NodeSelector> {
    let instance = label(&ds.metadata, "app.kubernetes.io/instance")?;
    let lc = d.collectors.iter().find(|c| {
        c.metadata
            .name
            .as_deref()
            .is_some_and(|n| crate::names::instance(n) == instance)
            && c.metadata.namespace == ds.metadata.namespace
    })?;
    crate::placement::scope_selector(&lc.spec.node_scope)
}

/// The pods a DaemonSet owns.
pub fn owned_pods(d: &Dump, ds: &DaemonSet) -> Vec<Pod> {
    let uid = ds.metadata.uid.as_deref();
    d.pods
        .iter()
        .filter(|p| {
            p.metadata.namespace == ds.metadata.namespace
                && p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "DaemonSet" && Some(o.uid.as_str()) == uid)
        })
        .cloned()
        .collect()
}

/// The DaemonSet's template generation, which its up-to-date pods carry in
/// their `pod-template-generation` label. The API server keeps it in the
/// `deprecated.daemonset.template.generation` annotation and bumps it only
/// when the template changes; `metadata.generation` also moves with other
/// spec changes (the update strategy), after which no pod would match it.
pub fn template_generation(ds: &DaemonSet) -> Option<String> {
    ds.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deprecated.daemonset.template.generation"))
        .cloned()
        .or_else(|| ds.metadata.generation.map(|g| g.to_string()))
}

/// The `controller-revision-hash` of a DaemonSet's current revision, as the
/// DaemonSet controller decides it: of the ControllerRevisions it owns, the
/// one with the highest `revision`. A rollback reuses an old revision (and
/// raises its number), so pods on that template are current, not outdated,
/// which a comparison of template generations gets wrong.
pub fn current_revision_hash(
    revisions: &[k8s_openapi::api::apps::v1::ControllerRevision],
    ds: &DaemonSet,
) -> Option<String> {
    let uid = ds.metadata.uid.as_deref();
    revisions
        .iter()
        .filter(|r| {
            uid.is_none()
                || r.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| Some(o.uid.as_str()) == uid)
        })
        .max_by_key(|r| r.revision)
        .and_then(|r| {
            label(&r.metadata, "controller-revision-hash")
                .map(str::to_owned)
                .or_else(|| {
                    r.metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.rsplit('-').next())
                        .map(str::to_owned)
                })
        })
}

/// Reads the same objects from the cluster the current kubeconfig (or the
/// pod's service account) points at: every node, and the logfleet agent
/// DaemonSets and pods of `namespace` (every namespace when `None`).
pub async fn from_cluster(
    client: kube::Client,
    namespace: Option<&str>,
) -> Result<Dump, kube::Error> {
    use kube::api::ListParams;
    use kube::Api;
    let agents = ListParams::default().labels(&format!(
        "app.kubernetes.io/part-of={PART_OF},app.kubernetes.io/component={AGENT_COMPONENT}"
    ));
    let (ds_api, pod_api): (Api<DaemonSet>, Api<Pod>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let lc_api: Api<crate::crd::LogCollector> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Without the CRD (agents deployed by hand) there is no scope to read.
    let collectors = match lc_api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(Dump {
        nodes: Api::<Node>::all(client)
            .list(&ListParams::default())
            .await?
            .items,
        pods: pod_api.list(&agents).await?.items,
        daemonsets: ds_api.list(&agents).await?.items,
        collectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_revision_is_the_highest_owned_one() {
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "uid": "ds-uid"},
            "spec": {"selector": {}, "template": {}},
        }))
        .unwrap();
        let rev = |hash: &str, n: i64, owner: &str| {
            serde_json::from_value::<k8s_openapi::api::apps::v1::ControllerRevision>(
                serde_json::json!({
                    "metadata": {"name": format!("a-{hash}"),
                        "labels": {"controller-revision-hash": hash},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                             "name": "a", "uid": owner}]},
                    "revision": n,
                }),
            )
            .unwrap()
        };
        // Rolled out v1 (1), v2 (2), then rolled back to v1: the DaemonSet
        // controller gives v1's revision the next number (3).
        let revs = vec![
            rev("v1hash", 3, "ds-uid"),
            rev("v2hash", 2, "ds-uid"),
            rev("zz", 9, "other"),
        ];
        assert_eq!(current_revision_hash(&revs, &ds).as_deref(), Some("v1hash"));
        assert_eq!(current_revision_hash(&[], &ds), None);
    }

    #[test]
    fn template_generation_follows_the_template_not_the_spec() {
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "generation": 5,
                "annotations": {"deprecated.daemonset.template.generation": "3"}},
            "spec": {"selector": {}, "template": {}},
        }))
        .unwrap();
        assert_eq!(template_generation(&ds).as_deref(), Some("3"));
        let mut bare = ds.clone();
        bare.metadata.annotations = None;
        assert_eq!(template_generation(&bare).as_deref(), Some("5"));
    }
}
