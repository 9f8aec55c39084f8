//! The `LogCollector` custom resource (`logfleet.dev/v1alpha1`): what the
//! user asks for (`spec`) and what the controller found (`status`).
//!
//! The CRD is derived from these types; cross-field rules are CEL
//! (`x-kubernetes-validations`) so the API server refuses a bad resource
//! before the controller sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeAffinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image that holds the `logfleet` binary, when the spec names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/logfleet/logfleet:0.1.0";

/// One set of agents (a DaemonSet) and the aggregator they push to.
// Two printer columns share `type_ = "string"`, which clippy mistakes for a
// repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "logfleet.dev",
    version = "v1alpha1",
    kind = "LogCollector",
    namespaced,
    status = "LogCollectorStatus",
    derive = "PartialEq",
    shortname = "lc",
    category = "logfleet",
    doc = "A LogCollector runs a logfleet agent on every node and an aggregator that stores their logs.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Expected nodes with a ready, up-to-date agent"
    ),
    printcolumn(
        name = "Missing",
        type_ = "integer",
        json_path = ".status.coverage.missing",
        description = "Expected nodes without a working agent"
    ),
    printcolumn(
        name = "Config",
        type_ = "string",
        json_path = ".status.configHash",
        description = "Hash of the rendered agent configuration"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LogCollectorSpec {
    /// Image holding the `logfleet` binary, for the agents and the aggregator.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Pull policy for that image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// The per-node agents.
    #[serde(default)]
    pub agent: AgentSpec,
    /// The aggregator that stores the logs.
    #[serde(default)]
    pub aggregator: AggregatorSpec,
    /// Which nodes you expect to be covered, independent of where the
    /// DaemonSet may place pods, so that exclusions show up as gaps.
    #[serde(default)]
    pub node_scope: NodeScope,
    /// A Secret in this namespace with the bearer tokens: `push-token`
    /// (agents push with it; it cannot read) and `read-token` (queries and
    /// the agents API). Unset: the controller creates `<name>-credentials`
    /// with random tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub token_secret_name: Option<String>,
}

fn default_image() -> String {
    DEFAULT_IMAGE.into()
}

impl Default for LogCollectorSpec {
    fn default() -> Self {
        LogCollectorSpec {
            image: default_image(),
            image_pull_policy: PullPolicy::default(),
            agent: AgentSpec::default(),
            aggregator: AggregatorSpec::default(),
            node_scope: NodeScope::default(),
            token_secret_name: None,
        }
    }
}

/// Container image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node lacks the image.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Batch compression between agents and aggregator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip: for compatibility; the aggregator re-compresses it to zstd.
    Gzip,
    /// zstd (default): the least node CPU, stored as it arrives.
    #[default]
    Zstd,
    /// No compression.
    None,
}

impl Compression {
    /// The agent's `--compression` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

/// The agent DaemonSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.tolerations) || size(self.tolerations) == 0 || !self.tolerateAllTaints")
    .message("tolerations apply only when tolerateAllTaints is false")
    .field_path(".tolerations"))]
pub struct AgentSpec {
    /// Only nodes with these labels run an agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node affinity for the agent pods (the only affinity that matters to
    /// a DaemonSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    /// Tolerate every taint, so agents land on control-plane and tainted
    /// nodes too. Set to false to use `tolerations` instead.
    #[serde(default = "yes")]
    pub tolerate_all_taints: bool,
    /// Tolerations when `tolerateAllTaints` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Priority class; the default lets the scheduler preempt other pods to
    /// place an agent.
    #[serde(default = "default_priority_class")]
    #[schemars(length(max = 253))]
    pub priority_class_name: String,
    /// Resources of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How changes roll out over the nodes.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// A rollout that has not finished after this many seconds is reported
    /// as stalled (`Progressing=False`, `Degraded=True`).
    #[serde(default = "default_progress_deadline")]
    #[x_kube(validation = kube::core::Rule::new("self > 0").message("progressDeadlineSeconds must be positive"))]
    pub progress_deadline_seconds: i32,
    /// Host directories the agent reads and writes.
    #[serde(default)]
    pub host_paths: HostPaths,
    /// Which containers' logs to collect.
    #[serde(default)]
    pub filters: Filters,
    /// Seal a batch at this many bytes of raw log text (e.g. `1MiB`).
    #[serde(default = "default_batch_size")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(B|KiB|MiB)?$')").message("batchSize is a byte size such as 512KiB or 1MiB"))]
    pub batch_size: String,
    /// Seal a batch when its oldest line waited this long (e.g. `1s`).
    #[serde(default = "default_batch_wait")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(ms|s|m)$')").message("batchWait is a duration such as 500ms or 1s"))]
    pub batch_wait: String,
    /// Batch compression.
    #[serde(default)]
    pub compression: Compression,
    /// Run the agent as this non-root user instead of root. Container
    /// runtimes write logs as root with mode 0640, so this only works where
    /// the host makes them readable to `supplementalGroups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self > 0").message("runAsUser must be a non-root uid; leave it unset to run as root"))]
    pub run_as_user: Option<i64>,
    /// Extra groups for the agent process (with `runAsUser`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub supplemental_groups: Vec<i64>,
    /// Kubernetes metadata on every line: workload, selected pod labels.
    #[serde(default)]
    pub metadata: MetadataSpec,
    /// Multi-line records (stack traces) for pods without a
    /// `logfleet.dev/multiline` annotation.
    #[serde(default)]
    pub multiline: MultilineSpec,
}

/// What the agents attach to lines from the Kubernetes API. Each selected
/// label becomes a label of its own in the store: pick labels with few
/// values (see README, "Labels and annotations").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetadataSpec {
    /// Watch each node's pods and label lines with `workload`,
    /// `workload_kind` and `podLabels`; honour the `logfleet.dev/exclude`
    /// and `logfleet.dev/multiline` annotations. Grants the agents
    /// get/list/watch on pods and get on replicasets and jobs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Pod label keys copied onto lines, sanitised to label names
    /// (`app.kubernetes.io/name` becomes `app_kubernetes_io_name`).
    #[serde(default = "default_pod_labels")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 317)))]
    pub pod_labels: Vec<String>,
    /// Namespace label keys copied onto lines as `namespace_<name>`. Off
    /// when empty; otherwise the agents may also list and watch namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 317)))]
    pub namespace_labels: Vec<String>,
}

fn default_pod_labels() -> Vec<String> {
    logfleet_proto::labels::DEFAULT_POD_LABELS
        .map(String::from)
        .to_vec()
}

impl Default for MetadataSpec {
    fn default() -> Self {
        MetadataSpec {
            enabled: true,
            pod_labels: default_pod_labels(),
            namespace_labels: Vec::new(),
        }
    }
}

/// How lines are grouped into records by default.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MultilineSpec {
    /// `none`, `java`, `python`, `go`, `ruby`, `dotnet`, `auto` (all of
    /// them), or a regular expression matching the first line of a record.
    #[serde(default = "default_multiline")]
    #[schemars(length(min = 1, max = 1024))]
    pub default: String,
    /// A record ends when the next line of its stream is this much later.
    #[serde(default = "default_batch_wait")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(ms|s|m)$')").message("timeout is a duration such as 500ms or 1s"))]
    pub timeout: String,
    /// Largest record; longer ones ship in pieces marked as cut.
    #[serde(default = "default_multiline_max_size")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(B|KiB|MiB)?$')").message("maxSize is a byte size such as 256KiB"))]
    pub max_size: String,
}

fn default_multiline() -> String {
    "none".into()
}
fn default_multiline_max_size() -> String {
    "256KiB".into()
}

impl Default for MultilineSpec {
    fn default() -> Self {
        MultilineSpec {
            default: default_multiline(),
            timeout: default_batch_wait(),
            max_size: default_multiline_max_size(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_priority_class() -> String {
    "system-node-critical".into()
}
fn default_progress_deadline() -> i32 {
    600
}
fn default_batch_size() -> String {
    "1MiB".into()
}
fn default_batch_wait() -> String {
    "1s".into()
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            node_selector: BTreeMap::new(),
            node_affinity: None,
            tolerate_all_taints: true,
            tolerations: None,
            priority_class_name: default_priority_class(),
            resources: None,
            update_strategy: UpdateStrategy::default(),
            progress_deadline_seconds: default_progress_deadline(),
            host_paths: HostPaths::default(),
            filters: Filters::default(),
            batch_size: default_batch_size(),
            batch_wait: default_batch_wait(),
            compression: Compression::default(),
            run_as_user: None,
            supplemental_groups: Vec::new(),
            metadata: MetadataSpec::default(),
            multiline: MultilineSpec::default(),
        }
    }
}

/// DaemonSet update strategy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.type == 'RollingUpdate' || (!has(self.maxUnavailable) && !has(self.maxSurge))")
    .message("maxUnavailable and maxSurge apply only to RollingUpdate"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.maxSurge) || self.maxSurge == 0 || self.maxSurge == '0' || self.maxSurge == '0%'")
    .message("maxSurge must be 0: two agents on one node would share one state directory")
    .field_path(".maxSurge"))]
pub struct UpdateStrategy {
    /// `RollingUpdate` (default) or `OnDelete`.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,
    /// Nodes whose agent may be down during a rolling update (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Must be 0 (the default): two agents on one node would share one
    /// checkpoint directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
}

/// How agent pods are replaced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UpdateStrategyType {
    /// Replace pods node by node.
    #[default]
    RollingUpdate,
    /// Replace a pod only when it is deleted.
    OnDelete,
}

/// Host directories mounted into the agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostPaths {
    /// Kubelet's pod log directory (read-only).
    #[serde(default = "default_pods_path")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    pub pod_logs: String,
    /// Kubelet's symlinks to the pod logs (read-only).
    #[serde(default = "default_containers_path")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    pub container_logs: String,
    /// Docker's container directory, the target of docker json-file logs (read-only).
    #[serde(default = "default_docker_path")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    pub docker_containers: String,
    /// Where the agent keeps its checkpoints (read-write).
    #[serde(default = "default_state_path")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    pub state: String,
}

fn default_pods_path() -> String {
    "/var/log/pods".into()
}
fn default_containers_path() -> String {
    "/var/log/containers".into()
}
fn default_docker_path() -> String {
    "/var/lib/docker/containers".into()
}
fn default_state_path() -> String {
    "/var/lib/logfleet-agent".into()
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            pod_logs: default_pods_path(),
            container_logs: default_containers_path(),
            docker_containers: default_docker_path(),
            state: default_state_path(),
        }
    }
}

/// Include/exclude patterns (regular expressions, whole-name match) over
/// namespace, pod and container names. Empty include lists include all.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.includeNamespaces) || !has(self.excludeNamespaces) || self.includeNamespaces.all(n, !(n in self.excludeNamespaces))")
    .message("a namespace pattern cannot be both included and excluded"))]
pub struct Filters {
    /// Namespaces to collect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub include_namespaces: Vec<String>,
    /// Namespaces to skip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub exclude_namespaces: Vec<String>,
    /// Pods to collect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub include_pods: Vec<String>,
    /// Pods to skip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub exclude_pods: Vec<String>,
    /// Containers to collect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub include_containers: Vec<String>,
    /// Containers to skip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub exclude_containers: Vec<String>,
}

/// The aggregator: a StatefulSet with its own volume (the embedded store),
/// or a Deployment of stateless replicas over ClickHouse.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.retentionAge != '0' || self.retentionSize != '0'")
    .message("set retentionAge or retentionSize, or the aggregator's disk fills up"))]
#[x_kube(validation = kube::core::Rule::new("has(self.clickhouse) || self.replicas <= 1")
    .message("replicas must be 0 or 1 without clickhouse: one aggregator stores all logs on its volume"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.clickhouse) || self.retentionSize == '0'")
    .message("retentionSize applies to the embedded store; over clickhouse retention is by retentionAge"))]
#[x_kube(validation = kube::core::Rule::new("has(self.clickhouse) == has(oldSelf.clickhouse)")
    .message("the store (clickhouse or the embedded volume) cannot change after creation: the stored logs would be left behind; create another LogCollector"))]
pub struct AggregatorSpec {
    /// Replicas. With the embedded store each would store on its own
    /// volume, so only 0 (paused) and 1; with `clickhouse` any number up to
    /// 32, behind one Service.
    #[serde(default = "one")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0 && self <= 32").message("replicas must be between 0 and 32"))]
    pub replicas: i32,
    /// Store in this ClickHouse server or cluster instead of a volume: the
    /// aggregators keep no state and run as a Deployment (with a
    /// PodDisruptionBudget). Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<ClickHouseSpec>,
    /// The data volume. Fixed at creation: a StatefulSet's volume claim
    /// template cannot change.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("storage cannot change after creation (the StatefulSet's volume claim template is immutable)"))]
    pub storage: Storage,
    /// Delete data older than this (e.g. `7d`, `0` for no limit by age; at
    /// most 99999d, which is longer than any disk lasts).
    #[serde(default = "default_retention_age")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(0|[0-9]{1,8}m|[0-9]{1,6}h|[0-9]{1,5}d)$')").message("retentionAge is a duration such as 12h or 7d (at most 99999d), or 0"))]
    pub retention_age: String,
    /// Delete the oldest data beyond this size (e.g. `50GiB`, `0` for no limit by size).
    #[serde(default = "zero")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(B|KiB|MiB|GiB|TiB)?$')").message("retentionSize is a byte size such as 50GiB, or 0"))]
    pub retention_size: String,
    /// Resources of the aggregator container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Keep the data volume when the LogCollector is deleted (default:
    /// delete it, so that deleting the collector leaves nothing behind).
    #[serde(default)]
    pub retain_volume_on_delete: bool,
    /// TLS on the aggregator's ports (agents verify it).
    #[serde(default)]
    pub tls: TlsSpec,
    /// Which pods may reach the aggregator's ports.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Accept a node's lines only from an agent whose projected
    /// service-account token names that node (Kubernetes 1.30+; before
    /// that, see `identityWithoutNode`). The aggregator then gets an API
    /// token, to read the cluster's token keys.
    #[serde(default = "yes")]
    pub verify_node_identity: bool,
    /// Before Kubernetes 1.30 tokens name no node: accept them for any node
    /// (only the service account is checked). Off by default: such a token
    /// lets one agent push as every node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity_without_node: bool,
}

/// A ClickHouse server or cluster as the store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClickHouseSpec {
    /// ClickHouse's HTTP interface, e.g. `http://clickhouse.logs.svc:8123`.
    #[schemars(length(min = 8, max = 512))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^http://[^/?#@]+/?$')").message("url is ClickHouse's HTTP interface: http://host:port"))]
    pub url: String,
    /// Database, created when missing.
    #[serde(default = "default_clickhouse_database")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("database is a ClickHouse identifier: letters, digits and _"))]
    pub database: String,
    /// A cluster of the server's `remote_servers`: the schema is created on
    /// every server of it, replicated tables under Distributed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9_.-]+$')").message("cluster is a remote_servers name: letters, digits, _ . -"))]
    pub cluster: Option<String>,
    /// A Secret in this namespace with keys `username` and `password`;
    /// unset: ClickHouse's default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

fn default_clickhouse_database() -> String {
    "logfleet".into()
}

/// Where the aggregator's serving certificate comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TlsMode {
    /// The controller issues a CA and a serving certificate (Secrets
    /// `<name>-ca` and `<name>-aggregator-tls`) and renews the certificate
    /// before it expires.
    #[default]
    Controller,
    /// A Secret you keep (`secretName`) with `tls.crt`, `tls.key` and
    /// `ca.crt`: what cert-manager writes for a Certificate.
    Secret,
    /// Plaintext; keep the aggregator's ports private some other way.
    Disabled,
}

/// TLS between the agents (and readers) and the aggregator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.mode == 'Secret' ? has(self.secretName) : !has(self.secretName)")
    .message("secretName is set exactly when mode is Secret"))]
pub struct TlsSpec {
    /// Who provides the certificate.
    #[serde(default)]
    pub mode: TlsMode,
    /// The Secret for mode `Secret`, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// The aggregator's NetworkPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Render a NetworkPolicy: only this collector's agents reach the
    /// ingest port; only pods in `queryNamespaces` and the controller's
    /// namespace reach the query and HTTP ports.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Namespaces whose pods may query (the query port and the HTTP port:
    /// agents API, metrics), e.g. where Grafana or Prometheus runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub query_namespaces: Vec<String>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            query_namespaces: Vec::new(),
        }
    }
}

fn one() -> i32 {
    1
}
fn default_retention_age() -> String {
    "7d".into()
}
fn zero() -> String {
    "0".into()
}

impl Default for AggregatorSpec {
    fn default() -> Self {
        AggregatorSpec {
            replicas: 1,
            clickhouse: None,
            storage: Storage::default(),
            retention_age: default_retention_age(),
            retention_size: zero(),
            resources: None,
            retain_volume_on_delete: false,
            tls: TlsSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            verify_node_identity: true,
            identity_without_node: false,
        }
    }
}

/// The aggregator's volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Requested size (a Kubernetes quantity).
    #[serde(default = "default_storage_size")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[+-]?([0-9]+|[0-9]+[.][0-9]*|[.][0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$')").message("size is a Kubernetes quantity such as 50Gi"))]
    pub size: String,
    /// Storage class; unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Which nodes should have an agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeScope {
    /// Nodes with these labels are expected to be covered; empty means every
    /// Linux node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// What the controller observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogCollectorStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `ready/expected` nodes, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Hash of the rendered agent configuration (the pod template annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The agent DaemonSet's own counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<AgentCounts>,
    /// Coverage of the expected nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// Up to 50 expected nodes without a working agent (the most basic
    /// causes first); `coverage.missing` is the exact count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub missing_nodes: Vec<MissingNode>,
}

/// The DaemonSet's counts, as its status reports them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentCounts {
    /// Nodes the DaemonSet wants a pod on (excludes nodes it cannot place on).
    pub desired: i32,
    /// Nodes running a pod.
    pub current: i32,
    /// Nodes with a ready pod.
    pub ready: i32,
    /// Nodes running the current template.
    pub updated: i32,
    /// Nodes with an available pod.
    pub available: i32,
}

/// Coverage of the expected nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Coverage {
    /// Nodes in scope.
    pub expected: i32,
    /// Of those, nodes with a ready agent.
    pub ready: i32,
    /// Of those, nodes with a ready agent of the current revision.
    pub up_to_date: i32,
    /// Nodes without a working agent.
    pub missing: i32,
    /// Missing nodes per reason (exact).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_reason: BTreeMap<String, i32>,
}

/// A node without a working agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MissingNode {
    /// Node name.
    pub node: String,
    /// Why, e.g. `TaintNotTolerated`.
    pub reason: String,
    /// What to look at.
    pub message: String,
    /// Since when the node has lacked an agent for this reason (RFC 3339).
    pub since: String,
}

/// The CustomResourceDefinition as YAML, as `logfleet crd` prints it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&LogCollector::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::cel::{validate_cel, validate_cel_update};

    /// The resource as the API server sees it: defaults filled in, as
    /// `serde(default)` mirrors the schema's defaults.
    fn lc(spec: serde_json::Value) -> LogCollector {
        let obj = serde_json::json!({
            "apiVersion": "logfleet.dev/v1alpha1",
            "kind": "LogCollector",
            "metadata": {"name": "logs", "namespace": "logfleet"},
            "spec": spec,
        });
        serde_json::from_value(obj).expect("test spec deserializes")
    }

    fn errors(obj: &LogCollector) -> String {
        match validate_cel(obj) {
            Ok(()) => String::new(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn an_empty_spec_is_valid_and_gets_defaults() {
        let l = lc(serde_json::json!({}));
        assert_eq!(errors(&l), "");
        assert_eq!(l.spec.image, DEFAULT_IMAGE);
        assert!(l.spec.agent.tolerate_all_taints);
        assert_eq!(l.spec.agent.priority_class_name, "system-node-critical");
        assert_eq!(l.spec.aggregator.replicas, 1);
    }

    #[test]
    fn cross_field_rules_refuse_bad_specs() {
        let cases = [
            (
                serde_json::json!({"agent": {"tolerations": [{"operator": "Exists"}]}}),
                "tolerateAllTaints",
            ),
            (
                serde_json::json!({"agent": {"updateStrategy": {"type": "OnDelete", "maxUnavailable": 2}}}),
                "apply only to RollingUpdate",
            ),
            (
                serde_json::json!({"agent": {"filters": {"includeNamespaces": ["a", "b"], "excludeNamespaces": ["b"]}}}),
                "both included and excluded",
            ),
            (
                serde_json::json!({"agent": {"batchSize": "lots"}}),
                "batchSize",
            ),
            (
                serde_json::json!({"agent": {"batchWait": "1 hour"}}),
                "batchWait",
            ),
            (
                serde_json::json!({"agent": {"runAsUser": 0}}),
                "non-root uid",
            ),
            (
                serde_json::json!({"agent": {"hostPaths": {"podLogs": "var/log/pods"}}}),
                "absolute path",
            ),
            (
                serde_json::json!({"agent": {"updateStrategy": {"maxSurge": 1}}}),
                "maxSurge must be 0",
            ),
            (
                serde_json::json!({"agent": {"updateStrategy": {"maxSurge": "25%"}}}),
                "maxSurge must be 0",
            ),
            (
                serde_json::json!({"aggregator": {"replicas": 2}}),
                "replicas must be 0 or 1 without clickhouse",
            ),
            (
                serde_json::json!({"aggregator": {"replicas": 33, "clickhouse": {"url": "http://ch:8123"}}}),
                "between 0 and 32",
            ),
            (
                serde_json::json!({"aggregator": {"clickhouse": {"url": "https://ch:8443"}}}),
                "http://host:port",
            ),
            (
                serde_json::json!({"aggregator": {"clickhouse": {"url": "http://ch:8123/?user=x"}}}),
                "http://host:port",
            ),
            (
                serde_json::json!({"aggregator": {"clickhouse": {"url": "http://ch:8123", "database": "logs; DROP"}}}),
                "ClickHouse identifier",
            ),
            (
                serde_json::json!({"aggregator": {"clickhouse": {"url": "http://ch:8123", "cluster": "a b"}}}),
                "remote_servers name",
            ),
            (
                serde_json::json!({"aggregator": {"clickhouse": {"url": "http://ch:8123"}, "retentionSize": "1TiB"}}),
                "retention is by retentionAge",
            ),
            (
                serde_json::json!({"aggregator": {"retentionAge": "0", "retentionSize": "0"}}),
                "disk fills up",
            ),
            (
                serde_json::json!({"aggregator": {"retentionAge": "a week"}}),
                "retentionAge",
            ),
            // Immutable once created: a typo must not get in.
            (
                serde_json::json!({"aggregator": {"storage": {"size": "10GB"}}}),
                "Kubernetes quantity",
            ),
            // Past what the aggregator's nanosecond clock can subtract.
            (
                serde_json::json!({"aggregator": {"retentionAge": "150000d"}}),
                "at most 99999d",
            ),
        ];
        for (spec, want) in cases {
            let e = errors(&lc(spec.clone()));
            assert!(e.contains(want), "{spec}: expected {want:?}, got {e:?}");
        }
        // The same fields, valid.
        let ok = [
            serde_json::json!({"agent": {"tolerateAllTaints": false, "tolerations": [{"operator": "Exists"}]}}),
            serde_json::json!({"agent": {"updateStrategy": {"type": "RollingUpdate", "maxUnavailable": "10%", "maxSurge": 0}}}),
            serde_json::json!({"agent": {"updateStrategy": {"type": "RollingUpdate", "maxSurge": "0%"}}}),
            serde_json::json!({"agent": {"updateStrategy": {"type": "OnDelete"}}}),
            serde_json::json!({"agent": {"batchSize": "512KiB", "batchWait": "250ms", "runAsUser": 65532}}),
            serde_json::json!({"aggregator": {"replicas": 0, "retentionAge": "0", "retentionSize": "50GiB"}}),
            serde_json::json!({"aggregator": {"retentionAge": "99999d"}}),
            serde_json::json!({"aggregator": {"retentionAge": "43800h"}}),
            serde_json::json!({"aggregator": {"replicas": 3, "clickhouse": {"url": "http://clickhouse.logs.svc:8123",
                "database": "logs_1", "cluster": "logs", "credentialsSecret": "ch-writer"}}}),
        ];
        for spec in ok {
            assert_eq!(errors(&lc(spec.clone())), "", "{spec}");
        }
    }

    #[test]
    fn storage_cannot_change_after_creation() {
        let old = lc(serde_json::json!({"aggregator": {"storage": {"size": "10Gi"}}}));
        let grown = lc(serde_json::json!({"aggregator": {"storage": {"size": "20Gi"}}}));
        let e = validate_cel_update(&grown, &old).expect_err("storage change refused");
        assert!(format!("{e:?}").contains("immutable"), "{e:?}");
        // Other fields may change.
        let other = lc(
            serde_json::json!({"aggregator": {"storage": {"size": "10Gi"}, "retentionAge": "3d"}}),
        );
        assert!(validate_cel_update(&other, &old).is_ok());
    }

    #[test]
    fn the_store_cannot_change_after_creation() {
        let embedded = lc(serde_json::json!({"aggregator": {"replicas": 1}}));
        let ch = lc(serde_json::json!({"aggregator": {"clickhouse": {"url": "http://ch:8123"}}}));
        for (new, old) in [(&ch, &embedded), (&embedded, &ch)] {
            let e = validate_cel_update(new, old).expect_err("store change refused");
            assert!(
                format!("{e:?}").contains("cannot change after creation"),
                "{e:?}"
            );
        }
        // Scaling and moving the server are fine.
        let moved = lc(serde_json::json!({"aggregator": {"replicas": 4,
            "clickhouse": {"url": "http://other:8123"}}}));
        assert!(validate_cel_update(&moved, &ch).is_ok());
    }
}
