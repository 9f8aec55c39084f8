//! Every object a `LogCollector` asks for, as pure functions of it: the
//! controller applies them, `logfleet render` prints them.
//!
//! Names derive from the collector's name `N`: `N-agent` (ServiceAccount,
//! ConfigMap, DaemonSet), `N-agent-metrics` (headless Service over the
//! agents' metrics ports), `N-aggregator` (ServiceAccount, Service, and a
//! StatefulSet, or over ClickHouse a Deployment and PodDisruptionBudget)
//! and `N-aggregator-headless` (the StatefulSet's governing Service; over
//! ClickHouse how the controller reaches replicas that are not ready). The agents read host files and never call the Kubernetes API,
//! so they get no RBAC and no API token: only a projected token for the
//! aggregator's audience, which proves their node. The aggregator gets an
//! API token (no RBAC) to read the cluster's token keys.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::ApiResource;
use kube::Resource;
use serde::Serialize;
use serde_json::{json, Value};

use crate::crd::{LogCollector, TlsMode, UpdateStrategyType};

/// Annotation on the agent pod template: hash of the rendered agent
/// configuration. It changes exactly when the configuration does, which
/// rolls the agents (they read it from the environment at start).
pub const CONFIG_HASH: &str = "logfleet.dev/config-hash";
/// Annotation on every applied object: hash of what was applied. A field
/// we stop sending (a removed filter, a dropped toleration) leaves the live
/// object still holding everything we send; the hash is what tells it apart.
pub const APPLIED_HASH: &str = "logfleet.dev/applied-hash";
/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "logfleet-controller";
/// Agent metrics/probe port.
pub const AGENT_HTTP_PORT: i32 = 9102;
/// Aggregator gRPC port for ingest (agents only).
pub const AGGREGATOR_GRPC_PORT: i32 = logfleet_proto::ports::INGEST as i32;
/// Aggregator gRPC port for queries (readers only).
pub const AGGREGATOR_QUERY_PORT: i32 = logfleet_proto::ports::QUERY as i32;
/// Aggregator HTTP port (metrics, probes, agents API).
pub const AGGREGATOR_HTTP_PORT: i32 = logfleet_proto::ports::HTTP as i32;
/// The uid the aggregator runs as.
pub const NONROOT_UID: i64 = 65532;
/// Where the agent and the aggregator find the tokens.
const TOKEN_DIR: &str = "/etc/logfleet/credentials";
/// Where the agent finds the CA and the aggregator its certificate.
const TLS_DIR: &str = "/etc/logfleet/tls";
/// Where the agent finds its projected identity token.
const IDENTITY_DIR: &str = "/var/run/secrets/logfleet";
/// The audience of the agents' identity tokens: not the API server's, so
/// the token is worth nothing against the API.
pub const IDENTITY_AUDIENCE: &str = "logfleet";

/// Environment the rendering depends on, beyond the resource.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The cluster serves `security.openshift.io`: add a
    /// SecurityContextConstraints for the agents.
    pub openshift: bool,
    /// The controller's namespace: its pods read the aggregator's agents
    /// API, so the NetworkPolicy admits them. `None`: not admitted.
    pub controller_namespace: Option<String>,
}

/// The Secret with the bearer tokens: the user's, or the one the
/// controller creates.
pub fn token_secret(lc: &LogCollector, name: &str) -> String {
    lc.spec
        .token_secret_name
        .clone()
        .unwrap_or_else(|| crate::credentials::credentials_name(name))
}

/// The Secret with the aggregator's certificate (`tls.crt`, `tls.key`,
/// `ca.crt`), unless TLS is off.
pub fn tls_secret(lc: &LogCollector, name: &str) -> Option<String> {
    let t = &lc.spec.aggregator.tls;
    match t.mode {
        TlsMode::Controller => Some(crate::credentials::serving_name(name)),
        TlsMode::Secret => t.secret_name.clone(),
        TlsMode::Disabled => None,
    }
}

/// One object to apply.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its API resource (group, version, kind, plural).
    pub api: ApiResource,
    /// Namespaced (else cluster-scoped).
    pub namespaced: bool,
    /// Its name.
    pub name: String,
    /// The full object as sent with server-side apply.
    pub body: Value,
}

/// Rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The resource has no name or namespace.
    #[error("the LogCollector needs a name and a namespace")]
    Unnamed,
    /// A rendered object did not serialize (a bug).
    #[error("rendering {0}: {1}")]
    Serialize(&'static str, serde_json::Error),
}

/// Conventional labels; the first three are the (immutable) selector.
pub fn selector_labels(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "logfleet".into()),
        (
            "app.kubernetes.io/instance".into(),
            crate::names::instance(name),
        ),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

/// Selector labels plus `part-of` and `managed-by`.
pub fn labels(name: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name, component);
    l.insert("app.kubernetes.io/part-of".into(), "logfleet".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "logfleet-controller".into(),
    );
    l
}

/// Name of the agent DaemonSet (and its ServiceAccount and ConfigMap).
pub fn agent_name(lc: &str) -> String {
    crate::names::child(lc, "-agent", crate::names::MAX_CHILD)
}

pub use crate::names::{aggregator_headless_name, aggregator_name};

/// The aggregator's in-cluster HTTP URL (agents API, metrics).
pub fn aggregator_http_url(lc: &str, ns: &str, tls: bool) -> String {
    format!(
        "{}://{}.{ns}.svc:{AGGREGATOR_HTTP_PORT}",
        if tls { "https" } else { "http" },
        aggregator_name(lc)
    )
}

/// Where the controller asks the aggregator for its agents. Over
/// ClickHouse the headless Service, whose DNS name holds every replica,
/// ready or not: a replica is unready exactly when ClickHouse is
/// unreachable, and that is what the controller must hear from it.
pub fn aggregator_agents_url(lc: &LogCollector, name: &str, ns: &str, tls: bool) -> String {
    match lc.spec.aggregator.clickhouse {
        None => aggregator_http_url(name, ns, tls),
        Some(_) => format!(
            "{}://{}.{ns}.svc:{AGGREGATOR_HTTP_PORT}",
            if tls { "https" } else { "http" },
            aggregator_headless_name(name)
        ),
    }
}

/// The aggregator's in-cluster query URL (gRPC), for readers.
pub fn aggregator_query_url(lc: &str, ns: &str, tls: bool) -> String {
    format!(
        "{}://{}.{ns}.svc:{AGGREGATOR_QUERY_PORT}",
        if tls { "https" } else { "http" },
        aggregator_name(lc)
    )
}

struct Ctx<'a> {
    lc: &'a LogCollector,
    name: &'a str,
    ns: &'a str,
    owner: Option<OwnerReference>,
    /// Rendering for OpenShift: pods get their user and group IDs from the
    /// namespace's range (restricted-v2), and the agent its SELinux type.
    openshift: bool,
    /// The controller's namespace (admitted to the query ports).
    controller_namespace: Option<&'a str>,
}

impl Ctx<'_> {
    fn meta(&self, name: &str, component: &str) -> Value {
        let mut m = json!({
            "name": name,
            "namespace": self.ns,
            "labels": labels(self.name, component),
        });
        if let Some(o) = &self.owner {
            m["ownerReferences"] = json!([o]);
        }
        m
    }
}

/// Renders every object, namespaced ones first. Owner references are set
/// when the resource has a uid (it came from the cluster).
pub fn render(lc: &LogCollector, opts: &Options) -> Result<Vec<Object>, RenderError> {
    let name = lc.metadata.name.as_deref().ok_or(RenderError::Unnamed)?;
    let ns = lc
        .metadata
        .namespace
        .as_deref()
        .ok_or(RenderError::Unnamed)?;
    let owner = lc.controller_owner_ref(&());
    let cx = Ctx {
        lc,
        name,
        ns,
        owner,
        openshift: opts.openshift,
        controller_namespace: opts.controller_namespace.as_deref(),
    };
    let mut out = vec![
        typed(service_account(&cx, &agent_name(name), "agent")?)?,
        typed(service_account(&cx, &aggregator_name(name), "aggregator")?)?,
        typed(agent_config_map(&cx)?)?,
    ];
    // Before the DaemonSet: its pods are refused without it.
    if let Some(q) = critical_pods_quota(&cx)? {
        out.push(typed(q)?);
    }
    out.extend([
        typed(agent_daemonset_of(&cx)?)?,
        typed(agent_metrics_service(&cx)?)?,
        typed(aggregator_service(&cx, false)?)?,
        typed(aggregator_service(&cx, true)?)?,
    ]);
    if lc.spec.aggregator.clickhouse.is_some() {
        out.push(typed(aggregator_deployment(&cx)?)?);
        out.push(typed(aggregator_disruption_budget(&cx)?)?);
    } else {
        out.push(typed(aggregator_statefulset(&cx)?)?);
    }
    if lc.spec.aggregator.network_policy.enabled {
        out.push(typed(aggregator_network_policy(&cx)?)?);
    }
    out.extend(agent_rbac(&cx));
    Ok(out)
}

/// Annotation naming the collector (`<namespace>/<name>`) of a
/// cluster-scoped object, which no owner reference can: the controller
/// deletes the object once that collector is gone.
pub const COLLECTOR_ANNOTATION: &str = "logfleet.dev/collector";

/// Name of the agents' ClusterRole and ClusterRoleBinding (cluster-scoped,
/// so it carries the namespace).
pub fn agent_role_name(lc: &str, ns: &str) -> String {
    // `-` may stand in either name, so `<ns>-<name>` alone is the same for
    // (`a`, `b-c`) and (`a-b`, `c`): the hash of `<ns>/<name>` (neither may
    // hold a `/`) keeps two collectors' roles apart.
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{ns}/{lc}").as_bytes()) as u32;
    crate::names::child(&format!("logfleet-{ns}-{lc}-{hash:08x}"), "-agent", 253)
}

/// What the agents may read of the API: with metadata on, the pods (of
/// their node: the agent asks with a field selector), the ReplicaSets and
/// Jobs that own them, and namespaces when their labels are asked for;
/// with it off, nothing (the role stays, empty).
pub fn agent_rules(spec: &crate::crd::AgentSpec) -> Value {
    let m = &spec.metadata;
    if !m.enabled {
        return json!([]);
    }
    let mut rules = vec![
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]}),
        json!({"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]}),
    ];
    if !m.namespace_labels.is_empty() {
        rules.push(json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}));
    }
    json!(rules)
}

/// One regex matching what any of `patterns` matches: an environment
/// variable holds one value, and no delimiter survives every regex (a comma
/// is part of `{2,4}`). The agent matches whole values, so the groups need
/// no anchors; each keeps its own flags (`(?i)` stays inside its group).
pub fn any_of(patterns: &[String]) -> String {
    match patterns {
        [one] => one.clone(),
        many => many
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|"),
    }
}

/// The agents' ClusterRole and its binding to their ServiceAccount. A
/// namespaced owner cannot own cluster-scoped objects: no owner reference;
/// the controller deletes them once their collector is gone.
fn agent_rbac(cx: &Ctx<'_>) -> [Object; 2] {
    let name = agent_role_name(cx.name, cx.ns);
    let meta = json!({"name": name, "labels": labels(cx.name, "agent"),
        "annotations": {COLLECTOR_ANNOTATION: format!("{}/{}", cx.ns, cx.name)}});
    let rbac = |kind: &str, plural: &str| ApiResource {
        group: "rbac.authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta.clone(),
        "rules": agent_rules(&cx.lc.spec.agent),
    });
    if cx.openshift {
        // The SCC itself ships in deploy/openshift.yaml: the controller
        // only grants its use, so it needs no rights over SCCs, which
        // would let it put anyone into `privileged`.
        let rules = role["rules"].as_array_mut();
        let scc_use = crate::openshift::agent_scc_use_rule();
        match rules {
            Some(r) => r.push(scc_use),
            None => role["rules"] = json!([scc_use]),
        }
    }
    let mut binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": agent_name(cx.name), "namespace": cx.ns}],
    });
    prune(&mut role);
    prune(&mut binding);
    stamp(&mut role);
    stamp(&mut binding);
    [
        Object {
            api: rbac("ClusterRole", "clusterroles"),
            namespaced: false,
            name: name.clone(),
            body: role,
        },
        Object {
            api: rbac("ClusterRoleBinding", "clusterrolebindings"),
            namespaced: false,
            name,
            body: binding,
        },
    ]
}

fn typed<K>(k: K) -> Result<Object, RenderError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Serialize,
{
    let api = ApiResource::erase::<K>(&());
    let name = k.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(&k).map_err(|e| RenderError::Serialize("object", e))?;
    // Server-side apply needs apiVersion and kind in the body.
    body["apiVersion"] = json!(api.api_version);
    body["kind"] = json!(api.kind);
    prune(&mut body);
    stamp(&mut body);
    Ok(Object {
        api,
        namespaced: true,
        name,
        body,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    v: Value,
) -> Result<T, RenderError> {
    serde_json::from_value(v).map_err(|e| RenderError::Serialize(what, e))
}

fn service_account(
    cx: &Ctx<'_>,
    name: &str,
    component: &str,
) -> Result<ServiceAccount, RenderError> {
    // No API token unless a pod asks for one (the aggregator, to verify
    // node identity).
    from_json(
        "ServiceAccount",
        json!({"metadata": cx.meta(name, component), "automountServiceAccountToken": false}),
    )
}

/// The priority classes the API server may limit to namespaces holding a
/// ResourceQuota that names them (the `Priority` admission plugin's
/// `limitedResources`, which GKE sets for both; Kubernetes documents it as
/// "Limit Priority Class consumption by default").
pub const CRITICAL_PRIORITY_CLASSES: [&str; 2] =
    ["system-node-critical", "system-cluster-critical"];

/// Name of the ResourceQuota that admits the agents' priority class.
pub fn critical_pods_quota_name(lc: &str) -> String {
    crate::names::child(lc, "-critical-pods", crate::names::MAX_CHILD)
}

/// Outside `kube-system`, a pod of a critical priority class is admitted
/// only where a ResourceQuota's scope selector names that class (GKE
/// refuses it otherwise, and the default install then put no agent on any
/// node). The quota only makes room: one pod per node, and the largest
/// clusters Kubernetes supports have 5,000.
fn critical_pods_quota(cx: &Ctx<'_>) -> Result<Option<ResourceQuota>, RenderError> {
    let class = cx.lc.spec.agent.priority_class_name.as_str();
    if !CRITICAL_PRIORITY_CLASSES.contains(&class) || cx.ns == "kube-system" {
        return Ok(None);
    }
    from_json(
        "ResourceQuota",
        json!({
            "metadata": cx.meta(&critical_pods_quota_name(cx.name), "agent"),
            "spec": {
                "hard": {"pods": "10000"},
                "scopeSelector": {"matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": [class]},
                ]},
            },
        }),
    )
    .map(Some)
}

/// The agent's configuration: the `LOGFLEET_*` environment of `logfleet
/// agent`. Deterministic (sorted keys), so equal specs hash equally.
pub fn agent_config(lc: &LogCollector, name: &str, ns: &str) -> BTreeMap<String, String> {
    let a = &lc.spec.agent;
    let mut c = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        c.insert(k.to_owned(), v);
    };
    let tls = tls_secret(lc, name).is_some();
    put(
        "LOGFLEET_AGGREGATOR",
        format!(
            "{}://{}.{ns}.svc:{AGGREGATOR_GRPC_PORT}",
            if tls { "https" } else { "http" },
            aggregator_name(name)
        ),
    );
    if tls {
        put("LOGFLEET_TLS_CA", format!("{TLS_DIR}/ca.crt"));
    }
    put("LOGFLEET_LOG_ROOT", a.host_paths.pod_logs.clone());
    put("LOGFLEET_STATE_DIR", "/var/lib/logfleet-agent".into());
    put("LOGFLEET_HTTP_ADDR", format!("0.0.0.0:{AGENT_HTTP_PORT}"));
    put("LOGFLEET_COMPRESSION", a.compression.as_str().into());
    put("LOGFLEET_BATCH_SIZE", a.batch_size.clone());
    put("LOGFLEET_BATCH_WAIT", a.batch_wait.clone());
    let f = &a.filters;
    for (k, v) in [
        ("LOGFLEET_INCLUDE_NAMESPACE", &f.include_namespaces),
        ("LOGFLEET_EXCLUDE_NAMESPACE", &f.exclude_namespaces),
        ("LOGFLEET_INCLUDE_POD", &f.include_pods),
        ("LOGFLEET_EXCLUDE_POD", &f.exclude_pods),
        ("LOGFLEET_INCLUDE_CONTAINER", &f.include_containers),
        ("LOGFLEET_EXCLUDE_CONTAINER", &f.exclude_containers),
    ] {
        if !v.is_empty() {
            put(k, any_of(v));
        }
    }
    let m = &a.metadata;
    if m.enabled {
        put("LOGFLEET_METADATA", "true".into());
        put("LOGFLEET_POD_LABELS", m.pod_labels.join(","));
        if !m.namespace_labels.is_empty() {
            put("LOGFLEET_NAMESPACE_LABELS", m.namespace_labels.join(","));
        }
    }
    put("LOGFLEET_MULTILINE", a.multiline.default.clone());
    put("LOGFLEET_MULTILINE_TIMEOUT", a.multiline.timeout.clone());
    put("LOGFLEET_MULTILINE_MAX_SIZE", a.multiline.max_size.clone());
    put("LOGFLEET_TOKEN_FILE", format!("{TOKEN_DIR}/push-token"));
    if lc.spec.aggregator.verify_node_identity {
        put(
            "LOGFLEET_IDENTITY_TOKEN_FILE",
            format!("{IDENTITY_DIR}/token"),
        );
    }
    c
}

/// Hash of the agent configuration, 16 hex digits (xxh3: stable across
/// releases and platforms, unlike std's hasher).
pub fn config_hash(config: &BTreeMap<String, String>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in config {
        // Length-prefixed so that ("ab","c") and ("a","bc") differ.
        for s in [k, v] {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    format!("{:016x}", h.digest())
}

fn agent_config_map(cx: &Ctx<'_>) -> Result<ConfigMap, RenderError> {
    Ok(ConfigMap {
        metadata: from_json("metadata", cx.meta(&agent_name(cx.name), "agent"))?,
        data: Some(agent_config(cx.lc, cx.name, cx.ns)),
        ..Default::default()
    })
}

/// The agent DaemonSet of a named, namespaced collector.
pub fn agent_daemonset(lc: &LogCollector) -> Result<DaemonSet, RenderError> {
    let cx = Ctx {
        lc,
        name: lc.metadata.name.as_deref().ok_or(RenderError::Unnamed)?,
        ns: lc
            .metadata
            .namespace
            .as_deref()
            .ok_or(RenderError::Unnamed)?,
        owner: lc.controller_owner_ref(&()),
        openshift: false,
        controller_namespace: None,
    };
    agent_daemonset_of(&cx)
}

fn agent_daemonset_of(cx: &Ctx<'_>) -> Result<DaemonSet, RenderError> {
    let spec = &cx.lc.spec;
    let a = &spec.agent;
    let name = agent_name(cx.name);
    let hash = config_hash(&agent_config(cx.lc, cx.name, cx.ns));
    let mut node_selector = a.node_selector.clone();
    node_selector
        .entry("kubernetes.io/os".into())
        .or_insert_with(|| "linux".into());
    let tolerations = if a.tolerate_all_taints {
        json!([{"operator": "Exists"}])
    } else {
        json!(a.tolerations.clone().unwrap_or_default())
    };
    let strategy = match a.update_strategy.type_ {
        UpdateStrategyType::OnDelete => json!({"type": "OnDelete"}),
        UpdateStrategyType::RollingUpdate => json!({
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxUnavailable": a.update_strategy.max_unavailable.clone().unwrap_or(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
                "maxSurge": a.update_strategy.max_surge.clone().unwrap_or(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
            },
        }),
    };
    let resources = a.resources.clone().map(|r| json!(r)).unwrap_or_else(
        || json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}),
    );
    // Container runtimes write logs as root, mode 0640: reading them takes
    // uid 0 (no capability needed, as the owner). Everything else is
    // locked down: no capabilities, no privilege escalation, read-only
    // root filesystem.
    let run_as = match a.run_as_user {
        Some(uid) => json!({"runAsUser": uid, "runAsNonRoot": true}),
        None => json!({"runAsUser": 0, "runAsNonRoot": false}),
    };
    let mut container_sc = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    merge(&mut container_sc, &run_as);
    if cx.openshift {
        // With SELinux enforcing, container_t cannot read /var/log/pods;
        // spc_t can. As OpenShift's own log collector does, the type
        // alone: the agents' SCC (`RunAsAny` for SELinux) takes it as it
        // is. Under `MustRunAs` admission would fill no level into a
        // container that sets options, and refuse the empty level.
        container_sc["seLinuxOptions"] = json!({"type": crate::openshift::SELINUX_TYPE});
    }
    let mut pod_sc = json!({});
    if !a.supplemental_groups.is_empty() {
        pod_sc["supplementalGroups"] = json!(a.supplemental_groups);
    }
    let hp = &a.host_paths;
    let mut volumes = vec![
        json!({"name": "pod-logs", "hostPath": {"path": hp.pod_logs, "type": "Directory"}}),
        json!({"name": "container-logs", "hostPath": {"path": hp.container_logs, "type": ""}}),
        json!({"name": "docker-containers", "hostPath": {"path": hp.docker_containers, "type": ""}}),
        // One state directory per collector, so two collectors on a node
        // keep apart checkpoints.
        json!({"name": "state", "hostPath": {
            "path": format!("{}/{}_{}", hp.state.trim_end_matches('/'), cx.ns, cx.name),
            "type": "DirectoryOrCreate"}}),
    ];
    let mut mounts = vec![
        json!({"name": "pod-logs", "mountPath": hp.pod_logs, "readOnly": true}),
        json!({"name": "container-logs", "mountPath": hp.container_logs, "readOnly": true}),
        json!({"name": "docker-containers", "mountPath": hp.docker_containers, "readOnly": true}),
        json!({"name": "state", "mountPath": "/var/lib/logfleet-agent"}),
    ];
    // Only the push token and the CA: the pod holds nothing that reads
    // logs or serves as the aggregator.
    volumes.push(json!({"name": "credentials", "secret": {
        "secretName": token_secret(cx.lc, cx.name),
        "items": [{"key": crate::credentials::PUSH_TOKEN, "path": "push-token"}],
    }}));
    mounts.push(json!({"name": "credentials", "mountPath": TOKEN_DIR, "readOnly": true}));
    if let Some(secret) = tls_secret(cx.lc, cx.name) {
        volumes.push(json!({"name": "tls", "secret": {
            "secretName": secret,
            "items": [{"key": crate::credentials::CA_CRT, "path": "ca.crt"}],
        }}));
        mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
    }
    if spec.aggregator.verify_node_identity {
        // A token kubelet issues for this pod (and node), for our audience
        // only, renewed before its hour is up.
        volumes.push(
            json!({"name": "identity", "projected": {"sources": [{"serviceAccountToken": {
            "audience": IDENTITY_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}}),
        );
        mounts.push(json!({"name": "identity", "mountPath": IDENTITY_DIR, "readOnly": true}));
    }
    let probe = |path: &str, period: i32| {
        json!({
            "httpGet": {"path": path, "port": "metrics"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        })
    };
    let pod_labels = labels(cx.name, "agent");
    let mut pod_spec = json!({
        "serviceAccountName": name,
        // An API token only when the agent watches pods for metadata.
        "automountServiceAccountToken": a.metadata.enabled,
        "priorityClassName": a.priority_class_name,
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "securityContext": pod_sc,
        "terminationGracePeriodSeconds": 30,
        "containers": [{
            "name": "agent",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy.as_str(),
            "args": ["agent"],
            "envFrom": [{"configMapRef": {"name": name}}],
            "env": [{"name": "LOGFLEET_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "ports": [{"name": "metrics", "containerPort": AGENT_HTTP_PORT, "protocol": "TCP"}],
            "livenessProbe": probe("/healthz", 20),
            "readinessProbe": probe("/readyz", 10),
            "resources": resources,
            "securityContext": container_sc,
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    if let Some(aff) = &a.node_affinity {
        pod_spec["affinity"] = json!({"nodeAffinity": aff});
    }
    from_json(
        "DaemonSet",
        json!({
            "metadata": cx.meta(&name, "agent"),
            "spec": {
                "selector": {"matchLabels": selector_labels(cx.name, "agent")},
                "updateStrategy": strategy,
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": {CONFIG_HASH: hash}},
                    "spec": pod_spec,
                },
            },
        }),
    )
}

fn agent_metrics_service(cx: &Ctx<'_>) -> Result<Service, RenderError> {
    from_json(
        "Service",
        json!({
            "metadata": cx.meta(&format!("{}-metrics", agent_name(cx.name)), "agent"),
            "spec": {
                "clusterIP": "None",
                "selector": selector_labels(cx.name, "agent"),
                "ports": [{"name": "metrics", "port": AGENT_HTTP_PORT, "targetPort": "metrics"}],
            },
        }),
    )
}

fn aggregator_service(cx: &Ctx<'_>, headless: bool) -> Result<Service, RenderError> {
    let name = if headless {
        aggregator_headless_name(cx.name)
    } else {
        aggregator_name(cx.name)
    };
    let mut spec = json!({
        "selector": selector_labels(cx.name, "aggregator"),
        "ports": [
            {"name": "grpc", "port": AGGREGATOR_GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"},
            {"name": "query", "port": AGGREGATOR_QUERY_PORT, "targetPort": "query", "appProtocol": "grpc"},
            {"name": "http", "port": AGGREGATOR_HTTP_PORT, "targetPort": "http"},
        ],
    });
    if headless {
        spec["clusterIP"] = json!("None");
        spec["publishNotReadyAddresses"] = json!(true);
    }
    from_json(
        "Service",
        json!({"metadata": cx.meta(&name, "aggregator"), "spec": spec}),
    )
}

/// Where the aggregator finds the ClickHouse password.
const CLICKHOUSE_DIR: &str = "/etc/logfleet/clickhouse";

/// The aggregator's pod template, for either store.
fn aggregator_pod(cx: &Ctx<'_>) -> Value {
    let spec = &cx.lc.spec;
    let g = &spec.aggregator;
    let name = aggregator_name(cx.name);
    let resources = g.resources.clone().map(|r| json!(r)).unwrap_or_else(
        || json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}),
    );
    let tls = tls_secret(cx.lc, cx.name);
    // Kubelet's HTTPS probes do not verify the certificate.
    let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
    let probe = |path: &str, period: i32| json!({"httpGet": {"path": path, "port": "http", "scheme": scheme}, "periodSeconds": period, "timeoutSeconds": 2});
    let embedded = g.clickhouse.is_none();
    // In the order earlier releases had it: a reordered template would
    // restart every aggregator on a controller upgrade.
    let mut env = Vec::new();
    let mut mounts = Vec::new();
    if embedded {
        env.push(json!({"name": "LOGFLEET_DATA_DIR", "value": "/var/lib/logfleet"}));
        mounts.push(json!({"name": "data", "mountPath": "/var/lib/logfleet"}));
    }
    env.extend([
        json!({"name": "LOGFLEET_GRPC_ADDR", "value": format!("0.0.0.0:{AGGREGATOR_GRPC_PORT}")}),
        json!({"name": "LOGFLEET_QUERY_ADDR", "value": format!("0.0.0.0:{AGGREGATOR_QUERY_PORT}")}),
        json!({"name": "LOGFLEET_HTTP_ADDR", "value": format!("0.0.0.0:{AGGREGATOR_HTTP_PORT}")}),
        json!({"name": "LOGFLEET_RETENTION_AGE", "value": g.retention_age}),
    ]);
    if embedded {
        env.push(json!({"name": "LOGFLEET_RETENTION_SIZE", "value": g.retention_size}));
    }
    env.extend([
        json!({"name": "LOGFLEET_PUSH_TOKEN_FILE", "value": format!("{TOKEN_DIR}/push-token")}),
        json!({"name": "LOGFLEET_READ_TOKEN_FILE", "value": format!("{TOKEN_DIR}/read-token")}),
    ]);
    mounts.push(json!({"name": "credentials", "mountPath": TOKEN_DIR, "readOnly": true}));
    let mut volumes = vec![json!({"name": "credentials", "secret": {
        "secretName": token_secret(cx.lc, cx.name),
        "items": [
            {"key": crate::credentials::PUSH_TOKEN, "path": "push-token"},
            {"key": crate::credentials::READ_TOKEN, "path": "read-token"},
        ],
    }})];
    if let Some(ch) = &g.clickhouse {
        env.push(json!({"name": "LOGFLEET_STORE", "value": "clickhouse"}));
        env.push(json!({"name": "LOGFLEET_CLICKHOUSE_URL", "value": ch.url}));
        env.push(json!({"name": "LOGFLEET_CLICKHOUSE_DATABASE", "value": ch.database}));
        if let Some(c) = &ch.cluster {
            env.push(json!({"name": "LOGFLEET_CLICKHOUSE_CLUSTER", "value": c}));
        }
        if let Some(secret) = &ch.credentials_secret {
            env.push(json!({"name": "LOGFLEET_CLICKHOUSE_USER", "valueFrom":
                {"secretKeyRef": {"name": secret, "key": "username"}}}));
            env.push(json!({"name": "LOGFLEET_CLICKHOUSE_PASSWORD_FILE",
                            "value": format!("{CLICKHOUSE_DIR}/password")}));
            volumes.push(json!({"name": "clickhouse", "secret": {
                "secretName": secret,
                "items": [{"key": "password", "path": "password"}],
            }}));
            mounts
                .push(json!({"name": "clickhouse", "mountPath": CLICKHOUSE_DIR, "readOnly": true}));
        }
    }
    if let Some(secret) = &tls {
        env.push(json!({"name": "LOGFLEET_TLS_CERT", "value": format!("{TLS_DIR}/tls.crt")}));
        env.push(json!({"name": "LOGFLEET_TLS_KEY", "value": format!("{TLS_DIR}/tls.key")}));
        volumes.push(json!({"name": "tls", "secret": {
            "secretName": secret,
            "items": [
                {"key": crate::credentials::TLS_CRT, "path": "tls.crt"},
                {"key": crate::credentials::TLS_KEY, "path": "tls.key"},
            ],
        }}));
        mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
    }
    let verify = g.verify_node_identity;
    if verify {
        env.push(json!({"name": "LOGFLEET_IDENTITY_AUDIENCE", "value": IDENTITY_AUDIENCE}));
        env.push(json!({"name": "LOGFLEET_IDENTITY_SERVICE_ACCOUNT",
                        "value": format!("{}:{}", cx.ns, agent_name(cx.name))}));
        if g.identity_without_node {
            env.push(json!({"name": "LOGFLEET_IDENTITY_ALLOW_WITHOUT_NODE", "value": "true"}));
        }
    }
    // Elsewhere a fixed non-root uid (with the volume's group, so it can
    // write its claim). OpenShift's restricted-v2 refuses fixed IDs
    // outside the namespace's range and assigns both itself.
    let pod_sc = if cx.openshift {
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    } else {
        let mut sc = json!({
            "runAsUser": NONROOT_UID, "runAsGroup": NONROOT_UID, "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        });
        if embedded {
            sc["fsGroup"] = json!(NONROOT_UID);
        }
        sc
    };
    let mut pod = json!({
        "serviceAccountName": name,
        // Only to read the cluster's token keys (OIDC discovery, open to
        // every service account).
        "automountServiceAccountToken": verify,
        "securityContext": pod_sc,
        // Lets the aggregator finish its group commit (or its last insert).
        "terminationGracePeriodSeconds": 60,
        "containers": [{
            "name": "aggregator",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy.as_str(),
            "args": ["aggregator"],
            "env": env,
            "ports": [
                {"name": "grpc", "containerPort": AGGREGATOR_GRPC_PORT},
                {"name": "query", "containerPort": AGGREGATOR_QUERY_PORT},
                {"name": "http", "containerPort": AGGREGATOR_HTTP_PORT},
            ],
            "livenessProbe": probe("/healthz", 20),
            // Over ClickHouse, not ready while ClickHouse is unreachable:
            // the Service sends agents to replicas that can store.
            "readinessProbe": probe("/readyz", 10),
            "resources": resources,
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    if g.clickhouse.is_some() {
        // Replicas on different nodes where possible: a node's loss
        // leaves the others serving.
        pod["topologySpreadConstraints"] = json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(cx.name, "aggregator")},
        }]);
    }
    json!({"metadata": {"labels": labels(cx.name, "aggregator")}, "spec": pod})
}

/// The aggregator with the embedded store: one pod and its volume.
fn aggregator_statefulset(cx: &Ctx<'_>) -> Result<StatefulSet, RenderError> {
    let g = &cx.lc.spec.aggregator;
    let mut claim = json!({
        "metadata": {"name": "data", "labels": labels(cx.name, "aggregator")},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": g.storage.size}},
        },
    });
    if let Some(class) = &g.storage.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    from_json(
        "StatefulSet",
        json!({
            "metadata": cx.meta(&aggregator_name(cx.name), "aggregator"),
            "spec": {
                "replicas": g.replicas,
                "serviceName": aggregator_headless_name(cx.name),
                "selector": {"matchLabels": selector_labels(cx.name, "aggregator")},
                "template": aggregator_pod(cx),
                "volumeClaimTemplates": [claim],
                // Claims from a template outlive their StatefulSet unless
                // told otherwise (GA in Kubernetes 1.32).
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": if g.retain_volume_on_delete { "Retain" } else { "Delete" },
                    "whenScaled": "Retain",
                },
            },
        }),
    )
}

/// The aggregators over ClickHouse: stateless replicas. A rollout starts
/// a new pod before stopping an old one, so agents always have a replica
/// to push to.
fn aggregator_deployment(cx: &Ctx<'_>) -> Result<Deployment, RenderError> {
    from_json(
        "Deployment",
        json!({
            "metadata": cx.meta(&aggregator_name(cx.name), "aggregator"),
            "spec": {
                "replicas": cx.lc.spec.aggregator.replicas,
                "selector": {"matchLabels": selector_labels(cx.name, "aggregator")},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": aggregator_pod(cx),
            },
        }),
    )
}

/// Voluntary disruptions (node drains) take one aggregator replica at a
/// time: with two or more, one always serves. With one it allows the
/// drain rather than blocking it forever.
fn aggregator_disruption_budget(cx: &Ctx<'_>) -> Result<PodDisruptionBudget, RenderError> {
    from_json(
        "PodDisruptionBudget",
        json!({
            "metadata": cx.meta(&aggregator_name(cx.name), "aggregator"),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(cx.name, "aggregator")},
            },
        }),
    )
}

/// Who may reach the aggregator: this collector's agents the ingest port;
/// the controller's namespace and the listed ones the query and HTTP
/// ports. Kubelet's probes come from the node, which NetworkPolicy
/// implementations admit to local pods.
fn aggregator_network_policy(
    cx: &Ctx<'_>,
) -> Result<k8s_openapi::api::networking::v1::NetworkPolicy, RenderError> {
    let np = &cx.lc.spec.aggregator.network_policy;
    let mut readers: Vec<&str> = cx.controller_namespace.into_iter().collect();
    readers.extend(np.query_namespaces.iter().map(String::as_str));
    readers.sort_unstable();
    readers.dedup();
    let mut rules = vec![json!({
        "from": [{"podSelector": {"matchLabels": selector_labels(cx.name, "agent")}}],
        "ports": [{"protocol": "TCP", "port": AGGREGATOR_GRPC_PORT}],
    })];
    if !readers.is_empty() {
        rules.push(json!({
            "from": [{"namespaceSelector": {"matchExpressions": [{
                // Set by the API server on every namespace (1.22+).
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": readers,
            }]}}],
            "ports": [
                {"protocol": "TCP", "port": AGGREGATOR_QUERY_PORT},
                {"protocol": "TCP", "port": AGGREGATOR_HTTP_PORT},
            ],
        }));
    }
    from_json(
        "NetworkPolicy",
        json!({
            "metadata": cx.meta(&aggregator_name(cx.name), "aggregator"),
            "spec": {
                "podSelector": {"matchLabels": selector_labels(cx.name, "aggregator")},
                "policyTypes": ["Ingress"],
                "ingress": rules,
            },
        }),
    )
}

/// Sets [`APPLIED_HASH`] to the hash of the body without it.
fn stamp(body: &mut Value) {
    let h = xxhash_rust::xxh3::xxh3_64(body.to_string().as_bytes());
    body["metadata"]["annotations"][APPLIED_HASH] = json!(format!("{h:016x}"));
}

/// Drops nulls, empty lists and empty maps. The API server leaves them out
/// of what it returns (Go's `omitempty`), so a body holding one would never
/// look applied and would be applied again on every reconcile; leaving
/// them out means the same to the server.
pub fn prune(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                prune(x);
            }
            m.retain(|_, x| !is_empty(x));
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                prune(x);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Objects as multi-document YAML, as `logfleet render` prints them.
pub fn to_yaml(objects: &[Object]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&o.body)?);
    }
    Ok(out)
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::LogCollectorSpec;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn lc(spec: Value) -> LogCollector {
        let mut l = LogCollector::new(
            "logs",
            serde_json::from_value::<LogCollectorSpec>(spec).expect("spec"),
        );
        l.metadata.namespace = Some("logfleet".into());
        l
    }

    fn ds(spec: Value) -> DaemonSet {
        agent_daemonset(&lc(spec)).expect("renders")
    }

    fn hash(d: &DaemonSet) -> String {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH]
            .clone()
    }

    #[test]
    fn agent_daemonset_is_locked_down_and_reads_host_logs() {
        let d = ds(json!({}));
        let pod = d.spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
        // Root only to read root-owned 0640 logs; a uid in the spec makes it non-root.
        assert_eq!(sc.run_as_user, Some(0));
        let nonroot = ds(json!({"agent": {"runAsUser": 1000, "supplementalGroups": [4]}}));
        let np = nonroot.spec.template.spec.as_ref().unwrap();
        let nsc = np.containers[0].security_context.as_ref().unwrap();
        assert_eq!(
            (nsc.run_as_user, nsc.run_as_non_root),
            (Some(1000), Some(true))
        );
        assert_eq!(
            np.security_context.as_ref().unwrap().supplemental_groups,
            Some(vec![4])
        );

        let vols: BTreeMap<_, _> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
            .collect();
        assert_eq!(vols["pod-logs"], "/var/log/pods");
        assert_eq!(vols["container-logs"], "/var/log/containers");
        assert_eq!(vols["docker-containers"], "/var/lib/docker/containers");
        assert_eq!(vols["state"], "/var/lib/logfleet-agent/logfleet_logs");
        for m in c.volume_mounts.as_ref().unwrap() {
            assert_eq!(m.read_only == Some(true), m.name != "state", "{}", m.name);
        }
        let env = c.env.as_ref().unwrap();
        let node = env.iter().find(|e| e.name == "LOGFLEET_NODE_NAME").unwrap();
        assert_eq!(
            node.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "spec.nodeName"
        );
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            (live.path.as_deref(), ready.path.as_deref()),
            (Some("/healthz"), Some("/readyz"))
        );
        // Metadata (on by default) watches pods: an API token whose role
        // reads pods and their owners, nothing else.
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        // Every taint tolerated by default; narrowed on request.
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        let narrow = ds(json!({"agent": {"tolerateAllTaints": false,
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}}));
        let t = &narrow
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .tolerations
            .as_ref()
            .unwrap()[0];
        assert_eq!(t.key.as_deref(), Some("gpu"));
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
            "linux"
        );
    }

    #[test]
    fn rendered_bodies_hold_nothing_the_server_would_drop() {
        fn check(v: &Value, at: &str) {
            match v {
                Value::Null => panic!("null at {at}"),
                Value::Array(a) => {
                    assert!(!a.is_empty(), "empty list at {at}");
                    for (i, x) in a.iter().enumerate() {
                        check(x, &format!("{at}[{i}]"));
                    }
                }
                Value::Object(m) => {
                    assert!(!m.is_empty() || at.is_empty(), "empty map at {at}");
                    for (k, x) in m {
                        check(x, &format!("{at}.{k}"));
                    }
                }
                _ => {}
            }
        }
        let mut l = lc(json!({"agent": {"tolerateAllTaints": false}}));
        l.metadata.uid = Some("u".into());
        for o in render(
            &l,
            &Options {
                openshift: true,
                ..Default::default()
            },
        )
        .unwrap()
        {
            check(&o.body, &o.name);
        }
        let mut v = json!({"a": null, "b": [], "c": {"d": {}}, "e": [{"f": []}], "g": 0, "h": ""});
        prune(&mut v);
        assert_eq!(v, json!({"e": [{}], "g": 0, "h": ""}));
    }

    /// Issue 11: the agents may read pods (of their node), the owners of
    /// pods and, only when asked, namespaces; nothing else. The controller
    /// holds every permission it grants (RBAC refuses escalation), and
    /// metadata off leaves the role empty and the pods without a token.
    #[test]
    fn agent_rbac_is_exactly_what_metadata_needs() {
        let find = |objs: &[Object], kind: &str| {
            objs.iter()
                .find(|o| o.api.kind == kind)
                .map(|o| o.body.clone())
                .unwrap_or_else(|| panic!("no {kind}"))
        };
        let objs = render(&lc(json!({})), &Options::default()).unwrap();
        let role = find(&objs, "ClusterRole");
        assert_eq!(
            role["metadata"]["name"],
            agent_role_name("logs", "logfleet")
        );
        assert_eq!(
            role["rules"],
            json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
            ])
        );
        let binding = find(&objs, "ClusterRoleBinding");
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "logs-agent", "namespace": "logfleet"}])
        );
        assert_eq!(
            pod_of(&objs, "DaemonSet")["automountServiceAccountToken"],
            true
        );
        let env = agent_config(&lc(json!({})), "logs", "logfleet");
        assert_eq!(env["LOGFLEET_METADATA"], "true");
        assert!(env["LOGFLEET_POD_LABELS"].starts_with("app,app.kubernetes.io/name,"));
        assert_eq!(env["LOGFLEET_MULTILINE"], "none");

        let with_ns = lc(json!({"agent": {"metadata": {"namespaceLabels": ["team"]},
            "multiline": {"default": "java", "timeout": "2s"}}}));
        let objs = render(&with_ns, &Options::default()).unwrap();
        let rules = find(&objs, "ClusterRole")["rules"].clone();
        assert_eq!(rules.as_array().unwrap().len(), 4);
        assert_eq!(rules[3]["resources"], json!(["namespaces"]));
        let env = agent_config(&with_ns, "logs", "logfleet");
        assert_eq!(env["LOGFLEET_NAMESPACE_LABELS"], "team");
        assert_eq!(env["LOGFLEET_MULTILINE"], "java");
        assert_eq!(env["LOGFLEET_MULTILINE_TIMEOUT"], "2s");
        // Every permission granted is one the controller holds.
        let held = crate::bundle::controller_rules();
        for r in rules.as_array().unwrap() {
            for group in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for verb in r["verbs"].as_array().unwrap() {
                        let a = crate::rbac::Attributes {
                            verb: verb.as_str().unwrap().into(),
                            group: group.as_str().unwrap().into(),
                            resource: res.as_str().unwrap().into(),
                            discovery: false,
                        };
                        assert!(crate::rbac::allows(&held, &a), "escalation: {a:?}");
                    }
                }
            }
        }

        let off = lc(json!({"agent": {"metadata": {"enabled": false}}}));
        let objs = render(&off, &Options::default()).unwrap();
        assert_eq!(
            find(&objs, "ClusterRole")["rules"],
            Value::Null,
            "pruned empty rules"
        );
        assert_eq!(
            pod_of(&objs, "DaemonSet")["automountServiceAccountToken"],
            false
        );
        assert!(!agent_config(&off, "logs", "logfleet").contains_key("LOGFLEET_METADATA"));
    }

    #[test]
    fn labels_are_conventional_and_the_selector_is_a_subset() {
        let d = ds(json!({}));
        let l = d.metadata.labels.as_ref().unwrap();
        for (k, v) in [
            ("app.kubernetes.io/name", "logfleet"),
            ("app.kubernetes.io/instance", "logs"),
            ("app.kubernetes.io/component", "agent"),
            ("app.kubernetes.io/part-of", "logfleet"),
            ("app.kubernetes.io/managed-by", "logfleet-controller"),
        ] {
            assert_eq!(l.get(k).map(String::as_str), Some(v), "{k}");
        }
        let sel = d.spec.selector.match_labels.as_ref().unwrap();
        let pod_labels = d
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    }

    #[test]
    fn config_hash_changes_with_the_agent_config_only() {
        let base = hash(&ds(json!({})));
        assert_eq!(base, hash(&ds(json!({}))), "same spec, same hash");
        assert_eq!(base.len(), 16);
        for changed in [
            json!({"agent": {"compression": "gzip"}}),
            json!({"agent": {"batchSize": "2MiB"}}),
            json!({"agent": {"filters": {"excludeNamespaces": ["kube-system"]}}}),
            json!({"aggregator": {"tls": {"mode": "Disabled"}}}),
        ] {
            assert_ne!(base, hash(&ds(changed.clone())), "{changed}");
        }
        // Not agent configuration: the pod template changes (and rolls) by
        // itself, the config hash must not.
        for unrelated in [
            json!({"image": "example.com/logfleet:2"}),
            json!({"agent": {"resources": {"limits": {"memory": "1Gi"}}}}),
            json!({"agent": {"priorityClassName": "high"}}),
            json!({"aggregator": {"retentionAge": "1d"}}),
            // Another Secret: the volume changes, the files' paths do not.
            json!({"tokenSecretName": "logfleet-token"}),
        ] {
            assert_eq!(base, hash(&ds(unrelated.clone())), "{unrelated}");
        }
    }

    #[test]
    fn update_strategy_and_owner_references() {
        let d = ds(
            json!({"agent": {"updateStrategy": {"type": "RollingUpdate", "maxUnavailable": "10%"}}}),
        );
        let s = d.spec.update_strategy.unwrap();
        let ru = s.rolling_update.unwrap();
        assert_eq!(format!("{:?}", ru.max_unavailable), "Some(String(\"10%\"))");
        let d = ds(json!({"agent": {"updateStrategy": {"type": "OnDelete"}}}));
        let s = d.spec.update_strategy.unwrap();
        assert_eq!(s.type_.as_deref(), Some("OnDelete"));
        assert!(s.rolling_update.is_none());

        // Without a uid (rendered offline) there is no owner; from the
        // cluster every namespaced object is owned by the collector.
        let mut l = lc(json!({}));
        assert!(render(&l, &Options::default())
            .unwrap()
            .iter()
            .all(|o| o.body["metadata"].get("ownerReferences").is_none()));
        l.metadata.uid = Some("u-1".into());
        let objs = render(
            &l,
            &Options {
                openshift: true,
                ..Default::default()
            },
        )
        .unwrap();
        for o in &objs {
            let refs = &o.body["metadata"]["ownerReferences"];
            if o.namespaced {
                assert_eq!(refs[0]["uid"], "u-1", "{}", o.name);
                assert_eq!(refs[0]["controller"], true);
                assert_eq!(o.body["metadata"]["namespace"], "logfleet");
            } else {
                assert!(
                    refs.is_null(),
                    "cluster-scoped {} cannot have a namespaced owner",
                    o.name
                );
            }
            assert!(o.body["apiVersion"].is_string() && o.body["kind"].is_string());
        }
        let kinds: Vec<_> = objs
            .iter()
            .map(|o| format!("{}/{}", o.api.kind, o.name))
            .collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount/logs-agent",
                "ServiceAccount/logs-aggregator",
                "ConfigMap/logs-agent",
                "ResourceQuota/logs-critical-pods",
                "DaemonSet/logs-agent",
                "Service/logs-agent-metrics",
                "Service/logs-aggregator",
                "Service/logs-aggregator-headless",
                "StatefulSet/logs-aggregator",
                "NetworkPolicy/logs-aggregator",
                format!("ClusterRole/{}", agent_role_name("logs", "logfleet")).as_str(),
                format!("ClusterRoleBinding/{}", agent_role_name("logs", "logfleet")).as_str(),
            ]
        );
        // The agents' SCC ships in deploy/openshift.yaml; their role uses it.
        let role = &objs[10].body;
        assert_eq!(
            role["rules"].as_array().and_then(|r| r.last()),
            Some(&crate::openshift::agent_scc_use_rule())
        );
    }

    /// The rule the API server applies when its Priority admission plugin
    /// limits critical classes (GKE does; Kubernetes documents it under
    /// "Resource Quotas: Limit Priority Class consumption by default"): a pod
    /// of a limited class is admitted in a namespace only if a ResourceQuota
    /// there has a scope selector `PriorityClass In [...]` naming the class.
    fn admitted(objs: &[Object], ns: &str, class: &str) -> bool {
        ns == "kube-system"
            || objs.iter().any(|o| {
                o.api.kind == "ResourceQuota"
                    && o.body["metadata"]["namespace"] == ns
                    && o.body["spec"]["scopeSelector"]["matchExpressions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| {
                            e["scopeName"] == "PriorityClass"
                                && e["operator"] == "In"
                                && e["values"]
                                    .as_array()
                                    .is_some_and(|v| v.iter().any(|x| x == class))
                        })
            })
    }

    #[test]
    fn agents_of_a_critical_class_are_admitted_outside_kube_system() {
        for class in CRITICAL_PRIORITY_CLASSES {
            let l = lc(json!({"agent": {"priorityClassName": class}}));
            let objs = render(&l, &Options::default()).unwrap();
            let ds = objs.iter().find(|o| o.api.kind == "DaemonSet").unwrap();
            let pod = &ds.body["spec"]["template"]["spec"];
            assert_eq!(pod["priorityClassName"], class);
            assert!(admitted(&objs, "logfleet", class), "{class}");
            // Applied before the DaemonSet, whose pods need it.
            let at = |k: &str| objs.iter().position(|o| o.api.kind == k).unwrap();
            assert!(at("ResourceQuota") < at("DaemonSet"));
        }
        // The check can fail, and a class of one's own needs no quota.
        let objs = render(
            &lc(json!({"agent": {"priorityClassName": "high"}})),
            &Options::default(),
        )
        .unwrap();
        assert!(objs.iter().all(|o| o.api.kind != "ResourceQuota"));
        assert!(!admitted(&objs, "logfleet", "system-node-critical"));
    }

    #[test]
    fn identity_tokens_without_a_node_are_accepted_only_when_asked() {
        let env_of = |spec: Value| {
            let objs = render(&lc(spec), &Options::default()).unwrap();
            let sts = objs.iter().find(|o| o.api.kind == "StatefulSet").unwrap();
            sts.body["spec"]["template"]["spec"]["containers"][0]["env"].to_string()
        };
        assert!(!env_of(json!({})).contains("LOGFLEET_IDENTITY_ALLOW_WITHOUT_NODE"));
        assert!(env_of(json!({"aggregator": {"identityWithoutNode": true}}))
            .contains("LOGFLEET_IDENTITY_ALLOW_WITHOUT_NODE"));
    }

    #[test]
    fn cluster_scoped_names_of_two_collectors_never_meet() {
        // `<ns>-<name>` is the same for both; the names must not be.
        assert_ne!(agent_role_name("b-c", "a"), agent_role_name("c", "a-b"));
        let n = agent_role_name("logs", "logfleet");
        assert!(
            n.starts_with("logfleet-logfleet-logs-") && n.ends_with("-agent"),
            "{n}"
        );
        assert_eq!(n, agent_role_name("logs", "logfleet"), "stable");
        let long = agent_role_name(&"x".repeat(253), &"n".repeat(63));
        assert!(long.len() <= 253, "{}", long.len());
    }

    #[test]
    fn filter_lists_become_one_regex_that_keeps_each_whole() {
        let pats = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(any_of(&pats(&["kube-.*"])), "kube-.*");
        let re = regex::Regex::new(&format!(
            "^(?:{})$",
            any_of(&pats(&["team-[a-z]{2,4}", "(?i)ops", "a|b"]))
        ))
        .unwrap();
        for yes in ["team-ab", "team-abcd", "OPS", "a", "b"] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in ["team-abcde", "team-a", "opsx", "ab", "OPSa"] {
            assert!(!re.is_match(no), "{no}");
        }
    }

    #[test]
    fn aggregator_statefulset_is_non_root_with_its_volume() {
        let mut l = lc(
            json!({"aggregator": {"storage": {"size": "50Gi", "storageClassName": "fast"}, "retentionSize": "40GiB"}}),
        );
        l.metadata.uid = Some("u".into());
        let objs = render(&l, &Options::default()).unwrap();
        let sts: StatefulSet = serde_json::from_value(
            objs.iter()
                .find(|o| o.api.kind == "StatefulSet")
                .unwrap()
                .body
                .clone(),
        )
        .unwrap();
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(
            (psc.run_as_non_root, psc.run_as_user),
            (Some(true), Some(NONROOT_UID))
        );
        let c = &pod.containers[0];
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["LOGFLEET_RETENTION_SIZE"], "40GiB");
        let policy = spec
            .persistent_volume_claim_retention_policy
            .clone()
            .unwrap();
        assert_eq!(
            policy.when_deleted.as_deref(),
            Some("Delete"),
            "deleting the collector leaves no volume"
        );
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let cs = claim.spec.as_ref().unwrap();
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "50Gi"
        );
    }

    #[test]
    fn over_clickhouse_stateless_replicas_a_budget_and_the_store_settings() {
        let l = lc(
            json!({"aggregator": {"replicas": 3, "retentionAge": "30d", "clickhouse": {
            "url": "http://ch.logs.svc:8123", "database": "fleet", "cluster": "logs",
            "credentialsSecret": "ch-writer"}}}),
        );
        let objs = render(&l, &Options::default()).unwrap();
        let kinds: Vec<&str> = objs.iter().map(|o| o.api.kind.as_str()).collect();
        assert!(!kinds.contains(&"StatefulSet"), "{kinds:?}");
        let d: Deployment = serde_json::from_value(
            objs.iter()
                .find(|o| o.api.kind == "Deployment")
                .unwrap()
                .body
                .clone(),
        )
        .unwrap();
        assert_eq!(d.spec.replicas, Some(3));
        // A rollout starts a replica before it stops one.
        let ru = d.spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(
            (ru.max_unavailable, ru.max_surge),
            (Some(IntOrString::Int(0)), Some(IntOrString::Int(1)))
        );
        let pod = d.spec.template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!((psc.run_as_non_root, psc.fs_group), (Some(true), None));
        assert_eq!(
            pod.topology_spread_constraints.unwrap()[0].topology_key,
            "kubernetes.io/hostname"
        );
        let c = &pod.containers[0];
        let env: BTreeMap<&str, Value> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), json!(e)))
            .collect();
        assert_eq!(env["LOGFLEET_STORE"]["value"], "clickhouse");
        assert_eq!(
            env["LOGFLEET_CLICKHOUSE_URL"]["value"],
            "http://ch.logs.svc:8123"
        );
        assert_eq!(env["LOGFLEET_CLICKHOUSE_DATABASE"]["value"], "fleet");
        assert_eq!(env["LOGFLEET_CLICKHOUSE_CLUSTER"]["value"], "logs");
        assert_eq!(env["LOGFLEET_RETENTION_AGE"]["value"], "30d");
        assert_eq!(
            env["LOGFLEET_CLICKHOUSE_USER"]["valueFrom"]["secretKeyRef"],
            json!({"name": "ch-writer", "key": "username"})
        );
        // The password as a file, never in the environment.
        assert_eq!(
            env["LOGFLEET_CLICKHOUSE_PASSWORD_FILE"]["value"],
            "/etc/logfleet/clickhouse/password"
        );
        assert!(
            !env.contains_key("LOGFLEET_DATA_DIR") && !env.contains_key("LOGFLEET_RETENTION_SIZE")
        );
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/etc/logfleet/clickhouse"), "{mounts:?}");
        assert!(
            !mounts.contains(&"/var/lib/logfleet"),
            "no volume: {mounts:?}"
        );
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "clickhouse")
            .unwrap();
        assert_eq!(
            vol.secret.unwrap().secret_name.as_deref(),
            Some("ch-writer")
        );

        // The budget selects exactly the aggregator pods, one down at a time.
        let pdb: PodDisruptionBudget = serde_json::from_value(
            objs.iter()
                .find(|o| o.api.kind == "PodDisruptionBudget")
                .unwrap()
                .body
                .clone(),
        )
        .unwrap();
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        let sel = spec.selector.unwrap().match_labels.unwrap();
        let pod_labels = d.spec.template.metadata.unwrap().labels.unwrap();
        assert!(
            sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{sel:?}"
        );
        assert_eq!(sel, d.spec.selector.match_labels.unwrap());
    }

    #[test]
    fn without_credentials_no_secret_is_mounted() {
        let l = lc(json!({"aggregator": {"clickhouse": {"url": "http://ch:8123"}}}));
        let objs = render(&l, &Options::default()).unwrap();
        let pod = pod_of(&objs, "Deployment");
        let env = pod["containers"][0]["env"].to_string();
        assert!(
            !env.contains("CLICKHOUSE_USER") && !env.contains("PASSWORD"),
            "{env}"
        );
        assert!(!pod["volumes"].to_string().contains("clickhouse"));
        assert!(env.contains("\"logfleet\""), "default database: {env}");
    }

    fn pod_of(objs: &[Object], kind: &str) -> Value {
        objs.iter().find(|o| o.api.kind == kind).expect(kind).body["spec"]["template"]["spec"]
            .clone()
    }

    #[test]
    fn secure_by_default_tokens_tls_and_a_network_policy() {
        let objs = render(
            &lc(json!({"aggregator": {"networkPolicy": {"queryNamespaces": ["monitoring"]}}})),
            &Options {
                controller_namespace: Some("logfleet-system".into()),
                ..Default::default()
            },
        )
        .unwrap();
        // The agent holds the push token and the CA, nothing else.
        let agent = pod_of(&objs, "DaemonSet");
        let secrets: Vec<(String, Vec<String>)> = agent["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v.get("secret").is_some())
            .map(|v| {
                let items = v["secret"]["items"].as_array().unwrap();
                (
                    v["secret"]["secretName"].as_str().unwrap().to_owned(),
                    items
                        .iter()
                        .map(|i| i["key"].as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            secrets,
            [
                (
                    "logs-credentials".to_string(),
                    vec!["push-token".to_string()]
                ),
                (
                    "logs-aggregator-tls".to_string(),
                    vec!["ca.crt".to_string()]
                ),
            ]
        );
        let cfg = agent_config(&lc(json!({})), "logs", "logfleet");
        assert_eq!(
            cfg["LOGFLEET_AGGREGATOR"],
            "https://logs-aggregator.logfleet.svc:7140"
        );
        assert_eq!(cfg["LOGFLEET_TLS_CA"], "/etc/logfleet/tls/ca.crt");
        assert_eq!(
            cfg["LOGFLEET_TOKEN_FILE"],
            "/etc/logfleet/credentials/push-token"
        );

        // The aggregator: both tokens, its certificate, a query port, and
        // HTTPS probes.
        let agg = pod_of(&objs, "StatefulSet");
        let c = &agg["containers"][0];
        let env: BTreeMap<&str, &str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(env["LOGFLEET_QUERY_ADDR"], "0.0.0.0:7141");
        assert_eq!(
            env["LOGFLEET_READ_TOKEN_FILE"],
            "/etc/logfleet/credentials/read-token"
        );
        assert_eq!(
            env["LOGFLEET_PUSH_TOKEN_FILE"],
            "/etc/logfleet/credentials/push-token"
        );
        assert_eq!(env["LOGFLEET_TLS_CERT"], "/etc/logfleet/tls/tls.crt");
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");

        // Agents reach ingest; the controller's and the listed namespaces
        // reach queries; nobody else anything.
        let np = objs.iter().find(|o| o.api.kind == "NetworkPolicy").unwrap();
        let spec = &np.body["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "aggregator"
        );
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        let rules = spec["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "agent"
        );
        assert_eq!(
            rules[0]["ports"],
            json!([{"protocol": "TCP", "port": 7140}])
        );
        assert_eq!(
            rules[1]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["logfleet-system", "monitoring"])
        );
        assert_eq!(
            rules[1]["ports"],
            json!([{"protocol": "TCP", "port": 7141}, {"protocol": "TCP", "port": 7142}])
        );

        // Node identity: the agent's token is for our audience only; the
        // aggregator knows whose tokens to accept.
        let idv = agent["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "identity")
            .expect("identity volume");
        assert_eq!(
            idv["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            IDENTITY_AUDIENCE
        );
        // The API token is for the metadata watch (read-only role, tested
        // in agent_rbac_is_exactly_what_metadata_needs); identity uses its
        // own audience.
        assert_eq!(agent["automountServiceAccountToken"], true);
        assert_eq!(
            cfg["LOGFLEET_IDENTITY_TOKEN_FILE"],
            "/var/run/secrets/logfleet/token"
        );
        assert_eq!(
            env["LOGFLEET_IDENTITY_SERVICE_ACCOUNT"],
            "logfleet:logs-agent"
        );
        assert_eq!(agg["automountServiceAccountToken"], true);

        // Opting out: plaintext, no policy.
        let open = render(
            &lc(json!({"aggregator": {"tls": {"mode": "Disabled"}, "networkPolicy": {"enabled": false},
                                      "verifyNodeIdentity": false}})),
            &Options::default(),
        )
        .unwrap();
        assert!(!open.iter().any(|o| o.api.kind == "NetworkPolicy"));
        let agg = pod_of(&open, "StatefulSet");
        assert_eq!(
            agg["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
            "HTTP"
        );
        assert!(!agg.to_string().contains("LOGFLEET_TLS_CERT"));
        assert!(!agg.to_string().contains("LOGFLEET_IDENTITY"));
        assert_eq!(agg["automountServiceAccountToken"], false);
        assert!(!pod_of(&open, "DaemonSet")
            .to_string()
            .contains("\"identity\""));
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;
    use crate::crd::LogCollectorSpec;

    fn label_value_ok(v: &str) -> bool {
        v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    }

    /// A LogCollector may be named with up to 253 characters and dots;
    /// every object it renders must still be valid (issue 9).
    #[test]
    fn long_and_dotted_collector_names_render_valid_objects() {
        let long = format!("{}.x", "a".repeat(251));
        for name in ["team.prod.logs", long.as_str()] {
            let mut l = LogCollector::new(name, LogCollectorSpec::default());
            l.metadata.namespace = Some("logfleet".into());
            let objs = render(
                &l,
                &Options {
                    openshift: true,
                    ..Default::default()
                },
            )
            .unwrap();
            for o in &objs {
                let n = &o.name;
                let max = match o.api.kind.as_str() {
                    "Service" => 63,
                    "StatefulSet" => crate::names::MAX_CHILD,
                    _ => 253,
                };
                assert!(n.len() <= max, "{} {n}", o.api.kind);
                if o.api.kind == "Service" {
                    assert!(!n.contains('.'), "{n}");
                }
                for (k, v) in o.body["metadata"]["labels"].as_object().unwrap() {
                    assert!(label_value_ok(v.as_str().unwrap()), "{k}={v}");
                }
            }
            let ds = objs.iter().find(|o| o.api.kind == "DaemonSet").unwrap();
            let sel = &ds.body["spec"]["selector"]["matchLabels"];
            let tpl = &ds.body["spec"]["template"]["metadata"]["labels"];
            for (k, v) in sel.as_object().unwrap() {
                assert_eq!(&tpl[k], v, "the selector matches the pods");
            }
            let sts = objs.iter().find(|o| o.api.kind == "StatefulSet").unwrap();
            assert_eq!(
                sts.body["spec"]["serviceName"],
                aggregator_headless_name(name),
                "the governing Service exists under that name"
            );
        }
    }
}
