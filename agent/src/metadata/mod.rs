//! Kubernetes metadata for the lines of a pod: the owner workload, the pod
//! (and optionally namespace) labels the LogCollector selects, and the
//! per-pod controls in annotations (`logfleet.dev/exclude`,
//! `logfleet.dev/exclude-<container>`, `logfleet.dev/multiline`).
//!
//! [`Directory`] is what the tailer reads: pods by uid, filled by the watch
//! in [`watch`]. Turning a pod into [`PodInfo`] ([`describe`]) and naming
//! labels ([`sanitize`]) are pure and tested here; the watch is the I/O.

pub mod watch;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use logfleet_proto::v1::Label;

/// Annotation that keeps a whole pod out (`"true"`).
pub const EXCLUDE: &str = "logfleet.dev/exclude";
/// Prefix of the annotation that keeps one container out
/// (`logfleet.dev/exclude-<container>: "true"`).
pub const EXCLUDE_CONTAINER: &str = "logfleet.dev/exclude-";
/// Annotation that selects the multi-line detector of a pod.
pub const MULTILINE: &str = "logfleet.dev/multiline";

/// Label names the path and the store already use: a pod label that
/// sanitises to one of them gets a `label_` prefix instead.
const RESERVED: [&str; 9] = [
    "node",
    "namespace",
    "pod",
    "container",
    "stream",
    "pod_uid",
    "restart",
    "workload",
    "workload_kind",
];

/// The label set a collector takes by default: the recommended
/// `app.kubernetes.io/*` labels and `app`.
pub use logfleet_proto::labels::DEFAULT_POD_LABELS;

/// Turns a Kubernetes label key into a label name as Prometheus and Loki
/// accept it: every character outside `[A-Za-z0-9_]` becomes `_`, a leading
/// digit gets a `_` before it, and a name the agent sets itself gets a
/// `label_` prefix. `app.kubernetes.io/name` becomes
/// `app_kubernetes_io_name`.
pub fn sanitize(key: &str) -> String {
    let mut s = logfleet_logql::labels::sanitize(key);
    if s.is_empty() {
        s.push('_');
    }
    if RESERVED.contains(&s.as_str()) {
        s.insert_str(0, "label_");
    }
    s.truncate(128);
    s
}

/// Which labels to take.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Pod label keys, as written in Kubernetes (`app.kubernetes.io/name`).
    pub pod_labels: Vec<String>,
    /// Namespace label keys; empty: namespaces are not watched.
    pub namespace_labels: Vec<String>,
}

/// The owner of a pod, as far as the pod itself says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Kind (`ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, ...).
    pub kind: String,
    /// Name.
    pub name: String,
}

/// What the agent attaches to a pod's lines and how it treats its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Extra labels, sorted by name, each once.
    pub labels: Vec<Label>,
    /// The whole pod is excluded.
    pub exclude: bool,
    /// Containers excluded one by one.
    pub exclude_containers: Vec<String>,
    /// The `logfleet.dev/multiline` annotation, as written.
    pub multiline: Option<String>,
}

impl PodInfo {
    /// Whether the files of `container` are left unread.
    pub fn excludes(&self, container: &str) -> bool {
        self.exclude || self.exclude_containers.iter().any(|c| c == container)
    }
}

/// The workload a pod belongs to, from its controlling owner and what is
/// known of that owner's own owner (`owners_owner`: the Deployment of a
/// ReplicaSet, the CronJob of a Job). A pod without a controller is its own
/// workload (kind `Pod`).
pub fn workload(pod_name: &str, owner: Option<&Owner>, owners_owner: Option<&Owner>) -> Owner {
    match (owner, owners_owner) {
        (Some(_), Some(up)) => up.clone(),
        (Some(o), None) => o.clone(),
        (None, _) => Owner {
            kind: "Pod".into(),
            name: pod_name.to_owned(),
        },
    }
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Describes a pod: the labels `sel` picks from it and its namespace, its
/// workload, and its annotations. Label values are cut at 1 KiB (the
/// store's limit); a selected key the pod lacks is left out.
pub fn describe(
    sel: &Selection,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
    workload: &Owner,
) -> PodInfo {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut take = |keys: &[String], from: &BTreeMap<String, String>, prefix: &str| {
        for k in keys {
            if let Some(v) = from.get(k) {
                let mut v = v.clone();
                if v.len() > 1024 {
                    let mut cut = 1024;
                    while !v.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    v.truncate(cut);
                }
                out.insert(format!("{prefix}{}", sanitize(k)), v);
            }
        }
    };
    if let Some(ns) = namespace_labels {
        take(&sel.namespace_labels, ns, "namespace_");
    }
    // Pod labels win over namespace labels of the same name.
    take(&sel.pod_labels, labels, "");
    out.insert("workload".into(), workload.name.clone());
    out.insert("workload_kind".into(), workload.kind.clone());
    let exclude_containers = annotations
        .iter()
        .filter_map(|(k, v)| {
            let c = k.strip_prefix(EXCLUDE_CONTAINER)?;
            truthy(Some(v)).then(|| c.to_owned())
        })
        .collect();
    PodInfo {
        labels: out
            .into_iter()
            .map(|(name, value)| Label { name, value })
            .collect(),
        exclude: truthy(annotations.get(EXCLUDE)),
        exclude_containers,
        multiline: annotations.get(MULTILINE).cloned(),
    }
}

/// Settings of the [`Directory`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a deleted pod's metadata is kept for files still being read.
    pub deleted_ttl: Duration,
    /// At most this many deleted pods are kept (the oldest go first).
    pub max_deleted: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deleted_ttl: Duration::from_secs(600),
            max_deleted: 512,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<String, Arc<PodInfo>>,
    /// Deleted pods, oldest first, with when they were deleted.
    deleted: VecDeque<(String, Instant)>,
    gone: HashMap<String, Arc<PodInfo>>,
}

/// The pods of this node, by uid, as the watch last saw them; deleted pods
/// stay for a bounded time so that their last lines keep their labels.
#[derive(Debug, Default)]
pub struct Directory {
    inner: RwLock<Inner>,
    limits: Limits,
    generation: AtomicU64,
    synced: AtomicBool,
    stale: AtomicBool,
}

impl Directory {
    /// An empty directory.
    pub fn new(limits: Limits) -> Self {
        Directory {
            limits,
            stale: AtomicBool::new(true),
            ..Default::default()
        }
    }

    /// What is known of the pod with this uid.
    pub fn pod(&self, uid: &str) -> Option<Arc<PodInfo>> {
        let inner = self.inner.read().ok()?;
        inner.live.get(uid).or_else(|| inner.gone.get(uid)).cloned()
    }

    /// Changes whenever any pod's metadata changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the watch is behind (not yet listed, or failing): lines ship
    /// with what is known, possibly without their pod's labels.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Whether the first list completed.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Live pods and deleted pods kept.
    pub fn len(&self) -> (usize, usize) {
        self.inner
            .read()
            .map(|i| (i.live.len(), i.gone.len()))
            .unwrap_or_default()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Marks the watch as current or behind.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A pod was added or changed.
    pub fn upsert(&self, uid: &str, info: PodInfo) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if inner.live.get(uid).is_some_and(|old| **old == info) {
            return;
        }
        inner.gone.remove(uid);
        inner.live.insert(uid.to_owned(), Arc::new(info));
        drop(inner);
        self.bump();
    }

    /// A pod was deleted at `now`: its metadata is kept for the TTL.
    pub fn remove(&self, uid: &str, now: Instant) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if let Some(info) = inner.live.remove(uid) {
            inner.gone.insert(uid.to_owned(), info);
            inner.deleted.push_back((uid.to_owned(), now));
        }
        Self::expire(&mut inner, &self.limits, now);
    }

    /// The full list after a (re)list: pods missing from it were deleted.
    pub fn replace(&self, pods: Vec<(String, PodInfo)>, now: Instant) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        let fresh: HashMap<String, Arc<PodInfo>> = pods
            .into_iter()
            .map(|(uid, info)| (uid, Arc::new(info)))
            .collect();
        let old = std::mem::take(&mut inner.live);
        for (uid, info) in old {
            if !fresh.contains_key(&uid) {
                inner.gone.insert(uid.clone(), info);
                inner.deleted.push_back((uid, now));
            }
        }
        for uid in fresh.keys() {
            inner.gone.remove(uid);
        }
        inner.live = fresh;
        Self::expire(&mut inner, &self.limits, now);
        drop(inner);
        self.synced.store(true, Ordering::Relaxed);
        self.bump();
    }

    /// Forgets deleted pods past the TTL or beyond the count.
    pub fn expire_now(&self, now: Instant) {
        if let Ok(mut inner) = self.inner.write() {
            Self::expire(&mut inner, &self.limits, now);
        }
    }

    fn expire(inner: &mut Inner, limits: &Limits, now: Instant) {
        while let Some((uid, at)) = inner.deleted.front() {
            let old = now.saturating_duration_since(*at) >= limits.deleted_ttl;
            if !old && inner.deleted.len() <= limits.max_deleted {
                break;
            }
            let uid = uid.clone();
            inner.deleted.pop_front();
            // Re-added meanwhile: it is live again, keep it.
            if !inner.live.contains_key(&uid) {
                inner.gone.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_keys_become_prometheus_names_and_never_shadow_ours() {
        assert_eq!(sanitize("app.kubernetes.io/name"), "app_kubernetes_io_name");
        assert_eq!(sanitize("team"), "team");
        assert_eq!(sanitize("1st"), "_1st");
        assert_eq!(sanitize("pod"), "label_pod");
        assert_eq!(sanitize("workload"), "label_workload");
        assert_eq!(sanitize("a-b"), "a_b");
    }

    #[test]
    fn describe_takes_selected_labels_workload_and_annotations() {
        let sel = Selection {
            pod_labels: vec!["app".into(), "team".into(), "missing".into()],
            namespace_labels: vec!["env".into()],
        };
        let info = describe(
            &sel,
            &map(&[("app", "checkout"), ("team", "pay"), ("other", "x")]),
            &map(&[
                (EXCLUDE, "false"),
                ("logfleet.dev/exclude-sidecar", "true"),
                ("logfleet.dev/exclude-main", "false"),
                (MULTILINE, "java"),
            ]),
            Some(&map(&[("env", "prod")])),
            &Owner {
                kind: "Deployment".into(),
                name: "checkout".into(),
            },
        );
        let names: Vec<(&str, &str)> = info
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("app", "checkout"),
                ("namespace_env", "prod"),
                ("team", "pay"),
                ("workload", "checkout"),
                ("workload_kind", "Deployment"),
            ]
        );
        assert!(!info.exclude);
        assert!(info.excludes("sidecar"));
        assert!(!info.excludes("main"));
        assert_eq!(info.multiline.as_deref(), Some("java"));
    }

    #[test]
    fn workload_follows_owners_up_one_level() {
        let rs = Owner {
            kind: "ReplicaSet".into(),
            name: "web-7d4b9".into(),
        };
        let dep = Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        };
        assert_eq!(workload("p", Some(&rs), Some(&dep)), dep);
        assert_eq!(workload("p", Some(&rs), None), rs);
        assert_eq!(workload("p", None, None).kind, "Pod");
    }

    #[test]
    fn deleted_pods_stay_for_the_ttl_and_up_to_the_count() {
        let d = Directory::new(Limits {
            deleted_ttl: Duration::from_secs(10),
            max_deleted: 2,
        });
        let t0 = Instant::now();
        let info = |v: &str| PodInfo {
            multiline: Some(v.into()),
            ..Default::default()
        };
        d.replace(vec![("a".into(), info("a")), ("b".into(), info("b"))], t0);
        let g = d.generation();
        d.upsert("a", info("a"));
        assert_eq!(d.generation(), g, "an unchanged pod is no change");
        d.remove("a", t0);
        assert_eq!(d.pod("a").unwrap().multiline.as_deref(), Some("a"));
        d.replace(vec![("c".into(), info("c"))], t0 + Duration::from_secs(1));
        assert!(d.pod("b").is_some(), "missing from a relist: deleted, kept");
        d.upsert("d", info("d"));
        d.remove("d", t0 + Duration::from_secs(2));
        assert!(d.pod("a").is_none(), "over the count: the oldest goes");
        d.expire_now(t0 + Duration::from_millis(11_500));
        assert!(d.pod("b").is_none(), "past the TTL");
        assert!(d.pod("d").is_some());
        assert_eq!(d.len(), (1, 1));
    }
}
