//! The install bundle (`deploy/logfleet.yaml`): the CRD, a namespace, the
//! controller's RBAC and Deployment, and a default `LogCollector`. Rendered
//! from code so the controller's permissions and the CRD cannot drift from
//! what the controller does; a test compares the checked-in file.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use crate::crd::{LogCollector, LogCollectorSpec};

/// Namespace the bundle installs into.
pub const NAMESPACE: &str = "logfleet";
/// Name of the default collector and of the controller's objects.
pub const NAME: &str = "logfleet";
/// The controller's metrics/probe port.
pub const CONTROLLER_HTTP_PORT: i32 = 9103;

/// The default `LogCollector`, as `logfleet render` renders it without `-f`.
pub fn default_collector() -> LogCollector {
    let mut lc = LogCollector::new(NAME, LogCollectorSpec::default());
    lc.metadata.namespace = Some(NAMESPACE.into());
    lc
}

/// Rules of the controller's ClusterRole: exactly the verbs reconcile, the
/// watches, events and the finalizer use (the reconcile tests check every
/// request they make against these rules).
pub fn controller_rules() -> Value {
    json!([
        // Watched (list, watch), the finalizer added and removed (patch).
        {"apiGroups": ["logfleet.dev"], "resources": ["logcollectors"],
         "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["logfleet.dev"], "resources": ["logcollectors/status"],
         "verbs": ["patch"]},
        // Owner references with blockOwnerDeletion need it.
        {"apiGroups": ["logfleet.dev"], "resources": ["logcollectors/finalizers"],
         "verbs": ["update"]},
        // Read, then server-side applied (create when absent); the owned
        // DaemonSets, StatefulSets and (over ClickHouse) Deployments are
        // watched too.
        {"apiGroups": ["apps"], "resources": ["daemonsets", "statefulsets", "deployments"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        // The aggregators' disruption budget over ClickHouse.
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
         "verbs": ["get", "create", "patch"]},
        // The DaemonSet's current revision, to judge pods as it does.
        {"apiGroups": ["apps"], "resources": ["controllerrevisions"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"],
         "verbs": ["get", "create", "patch"]},
        // The quota that admits the agents' critical priority class
        // outside kube-system (GKE).
        {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get", "create", "patch"]},
        // Tokens and certificates it creates, renews and reads (for the
        // read token and the CA that its coverage check needs).
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
         "verbs": ["get", "create", "patch"]},
        // Coverage: nodes and the agent pods; namespaces for OpenShift's
        // project node selector. The agents' ClusterRole may grant only
        // what the controller holds (RBAC refuses escalation), so the
        // controller holds what it grants them: get on pods, replicasets
        // and jobs, list and watch on namespaces.
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
        // The agents' ClusterRole and binding (cluster-scoped: deleted when
        // their collector is gone, see reconcile::sweep_agent_rbac).
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles", "clusterrolebindings"],
         "verbs": ["get", "list", "create", "patch", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// Every document of the bundle, in apply order.
pub fn bundle(image: &str) -> Result<Vec<Value>, serde_json::Error> {
    let labels = json!({
        "app.kubernetes.io/name": "logfleet",
        "app.kubernetes.io/component": "controller",
        "app.kubernetes.io/part-of": "logfleet",
    });
    let crd: CustomResourceDefinition = LogCollector::crd();
    let mut collector = serde_json::to_value(default_collector())?;
    if let Some(m) = collector.as_object_mut() {
        m.remove("status");
    }
    collector["spec"] = json!({"image": image});
    Ok(vec![
        serde_json::to_value(crd)?,
        json!({"apiVersion": "v1", "kind": "Namespace",
               // OpenShift: an empty project node selector, so that a
               // cluster-wide default selector cannot keep agents off nodes.
               "metadata": {"name": NAMESPACE,
                   "annotations": {"openshift.io/node-selector": ""},
                   "labels": {
                   // The agents mount host directories: the namespace must allow that.
                   "pod-security.kubernetes.io/enforce": "privileged",
                   "app.kubernetes.io/part-of": "logfleet"}}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "logfleet-controller", "namespace": NAMESPACE, "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "logfleet-controller", "labels": labels},
               "rules": controller_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "logfleet-controller", "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "logfleet-controller"},
               "subjects": [{"kind": "ServiceAccount", "name": "logfleet-controller", "namespace": NAMESPACE}]}),
        // Leader election only needs its Lease, in its own namespace.
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "logfleet-controller-lease", "namespace": NAMESPACE, "labels": labels},
               "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                          "verbs": ["get", "create", "update", "patch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "logfleet-controller-lease", "namespace": NAMESPACE, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "logfleet-controller-lease"},
               "subjects": [{"kind": "ServiceAccount", "name": "logfleet-controller", "namespace": NAMESPACE}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "logfleet-controller", "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "logfleet", "app.kubernetes.io/component": "controller"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "logfleet-controller",
                    // No fixed IDs: OpenShift's restricted-v2 assigns them
                    // from the namespace's range and refuses others; elsewhere
                    // the image's numeric USER (65532) satisfies runAsNonRoot.
                    "securityContext": {"runAsNonRoot": true,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "controller",
                        "image": image,
                        "args": ["controller"],
                        "env": [
                            {"name": "LOGFLEET_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "LOGFLEET_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        ],
                        "ports": [{"name": "http", "containerPort": CONTROLLER_HTTP_PORT}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 20},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 10},
                        // The node cache grows with the cluster, hence the roomy limit.
                               "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        }}),
        collector,
    ])
}

/// The bundle as one multi-document YAML text.
pub fn bundle_yaml(image: &str) -> Result<String, BundleError> {
    let docs = bundle(image)?;
    let mut out = String::from(
        "# logfleet: kubectl apply --server-side -f deploy/logfleet.yaml\n\
         # Generated by `logfleet bundle`; do not edit (a test compares it).\n",
    );
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&d)?);
    }
    Ok(out)
}

/// What OpenShift needs on top of the bundle (`deploy/openshift.yaml`): the
/// agents' SCC, and `use` of it for the controller, which grants it to each
/// collector's agents (RBAC lets only a holder grant it).
pub fn openshift_bundle() -> Vec<Value> {
    let labels = json!({
        "app.kubernetes.io/name": "logfleet",
        "app.kubernetes.io/component": "controller",
        "app.kubernetes.io/part-of": "logfleet",
    });
    let name = "logfleet-controller-openshift";
    vec![
        crate::openshift::agent_scc(),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name, "labels": labels},
               "rules": [crate::openshift::agent_scc_use_rule()]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": "logfleet-controller", "namespace": NAMESPACE}]}),
    ]
}

/// [`openshift_bundle`] as one multi-document YAML text.
pub fn openshift_bundle_yaml() -> Result<String, BundleError> {
    let mut out = String::from(
        "# logfleet on OpenShift, applied with deploy/logfleet.yaml:\n\
         #   oc apply --server-side -f deploy/openshift.yaml -f deploy/logfleet.yaml\n\
         # Generated by `logfleet bundle --openshift`; do not edit (a test compares it).\n",
    );
    for d in openshift_bundle() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&d)?);
    }
    Ok(out)
}

/// The bundle could not be rendered (a bug).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// YAML.
    #[error(transparent)]
    Yaml(#[from] serde_saphyr::SerializeError),
}
