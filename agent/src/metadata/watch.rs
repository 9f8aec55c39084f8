//! The watch that fills the [`Directory`]: the pods of this node
//! (`spec.nodeName=<node>`), their owners' owners (a ReplicaSet's
//! Deployment, a Job's CronJob) and, when asked, namespace labels.
//!
//! kube-rs's watcher lists once (from the API server's cache), then watches
//! from that resourceVersion with bookmarks, re-listing only when the server
//! says the version is too old. Nothing here blocks the tailer: it reads the
//! directory as it is, and the directory says when it is stale.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

use super::{describe, workload, Directory, Owner, Selection};
use crate::report::{Report, Source};

/// What the watch needs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// This node's name.
    pub node: String,
    /// The labels to take.
    pub selection: Selection,
}

/// The parts of a pod the directory is made from, kept so that a namespace
/// label change can re-describe its pods.
#[derive(Debug, Clone)]
struct PodRaw {
    namespace: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    workload: Owner,
}

/// Owners looked up so far: (namespace, kind, name) → the owner's own
/// controller, if it has one. Bounded: cleared when it grows past the cap
/// (lookups are cheap to repeat and pods rarely change owners).
#[derive(Default)]
struct Owners {
    known: HashMap<(String, String, String), Option<Owner>>,
}

const MAX_OWNERS: usize = 1024;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

fn controller_of(
    refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
) -> Option<Owner> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
}

impl Owners {
    /// The Deployment of a ReplicaSet, the CronJob of a Job. A failed lookup
    /// falls back to what the names say (a ReplicaSet named
    /// `<deployment>-<pod-template-hash>`) and is tried again next time.
    async fn up(
        &mut self,
        client: &kube::Client,
        ns: &str,
        owner: &Owner,
        pod_labels: &BTreeMap<String, String>,
    ) -> Option<Owner> {
        if owner.kind != "ReplicaSet" && owner.kind != "Job" {
            return None;
        }
        let key = (ns.to_owned(), owner.kind.clone(), owner.name.clone());
        if let Some(known) = self.known.get(&key) {
            return known.clone();
        }
        let looked = if owner.kind == "ReplicaSet" {
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(&owner.name))
                .await
                .map(|r| r.map(|m| m.map(|m| m.metadata.owner_references)))
        } else {
            let api: Api<Job> = Api::namespaced(client.clone(), ns);
            tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(&owner.name))
                .await
                .map(|r| r.map(|m| m.map(|m| m.metadata.owner_references)))
        };
        match looked {
            Ok(Ok(refs)) => {
                let up = refs.and_then(|r| controller_of(r.as_ref()));
                if self.known.len() >= MAX_OWNERS {
                    self.known.clear();
                }
                self.known.insert(key, up.clone());
                up
            }
            Ok(Err(e)) => {
                tracing::debug!(kind = %owner.kind, name = %owner.name, error = %e, "owner lookup failed");
                guess_up(owner, pod_labels)
            }
            Err(_) => guess_up(owner, pod_labels),
        }
    }
}

/// A ReplicaSet's Deployment from names alone: kubelet's pods of a
/// Deployment carry `pod-template-hash`, and the ReplicaSet is named
/// `<deployment>-<hash>`.
fn guess_up(owner: &Owner, pod_labels: &BTreeMap<String, String>) -> Option<Owner> {
    let hash = pod_labels.get("pod-template-hash")?;
    let name = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    (owner.kind == "ReplicaSet" && !name.is_empty()).then(|| Owner {
        kind: "Deployment".into(),
        name: name.to_owned(),
    })
}

struct Watch {
    client: kube::Client,
    cfg: WatchConfig,
    dir: Arc<Directory>,
    report: Arc<Report>,
    owners: Owners,
    pods: HashMap<String, PodRaw>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Pods listed since the last `Init`, applied at `InitDone`.
    listing: Option<Vec<String>>,
    last_error: Option<Instant>,
}

impl Watch {
    fn info(&self, raw: &PodRaw) -> super::PodInfo {
        let ns = (!self.cfg.selection.namespace_labels.is_empty())
            .then(|| self.namespaces.get(&raw.namespace))
            .flatten();
        describe(
            &self.cfg.selection,
            &raw.labels,
            &raw.annotations,
            ns,
            &raw.workload,
        )
    }

    async fn raw(&mut self, pod: &Pod) -> Option<(String, PodRaw)> {
        let uid = pod.metadata.uid.clone()?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let owner = controller_of(pod.metadata.owner_references.as_ref());
        let up = match &owner {
            Some(o) => self.owners.up(&self.client, &namespace, o, &labels).await,
            None => None,
        };
        let raw = PodRaw {
            workload: workload(&name, owner.as_ref(), up.as_ref()),
            namespace,
            labels,
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        };
        Some((uid, raw))
    }

    async fn on_pod(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(pod) | Event::Apply(pod) => {
                let Some((uid, raw)) = self.raw(&pod).await else {
                    return;
                };
                if let Some(l) = self.listing.as_mut() {
                    l.push(uid.clone());
                } else {
                    self.dir.upsert(&uid, self.info(&raw));
                }
                self.pods.insert(uid, raw);
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.pods.retain(|uid, _| listed.contains(uid));
                let all = self
                    .pods
                    .iter()
                    .map(|(uid, raw)| (uid.clone(), self.info(raw)))
                    .collect();
                self.dir.replace(all, Instant::now());
                tracing::info!(pods = self.pods.len(), "pod metadata listed");
            }
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.pods.remove(uid);
                    self.dir.remove(uid, Instant::now());
                }
            }
        }
        self.healthy();
    }

    fn on_namespace(&mut self, ev: Event<Namespace>) {
        let changed: Option<String> = match ev {
            Event::Init | Event::InitDone => None,
            Event::InitApply(ns) | Event::Apply(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                if self.namespaces.get(&name) == Some(&labels) {
                    None
                } else {
                    self.namespaces.insert(name.clone(), labels);
                    Some(name)
                }
            }
            Event::Delete(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                self.namespaces.remove(&name).map(|_| name)
            }
        };
        if let Some(ns) = changed {
            for (uid, raw) in self.pods.iter().filter(|(_, r)| r.namespace == ns) {
                self.dir.upsert(uid, self.info(raw));
            }
        }
        self.healthy();
    }

    fn healthy(&mut self) {
        if self.dir.is_synced() && self.dir.is_stale() {
            if self.last_error.is_some() {
                tracing::info!("pod metadata is current again");
            }
            self.dir.set_stale(false);
            self.report.set(Source::Metadata, None);
        }
        self.last_error = None;
    }

    fn failed(&mut self, what: &str, e: &watcher::Error) {
        if !self.dir.is_stale() {
            tracing::warn!(error = %e, "watching {what} failed; lines ship with the metadata known so far");
        }
        self.dir.set_stale(true);
        self.report.set(
            Source::Metadata,
            Some(format!("pod metadata is stale: watching {what}: {e}")),
        );
        self.last_error = Some(Instant::now());
    }
}

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Neither in-cluster configuration nor a kubeconfig was found.
    #[error("{0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig` when given, else as kube-rs infers it (the
/// pod's service account in a cluster, `KUBECONFIG` outside).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, ClientError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    // The watcher retries with its own backoff and says meanwhile that the
    // metadata is stale; the client's own retries of 429/503 would hide an
    // overloaded API server from it for a long time.
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// Watches until the task is dropped. Errors are retried with kube-rs's
/// default backoff; meanwhile the directory is marked stale.
pub async fn run(client: kube::Client, cfg: WatchConfig, dir: Arc<Directory>, report: Arc<Report>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let field = format!("spec.nodeName={}", cfg.node);
    let mut pod_events = watcher::watcher(
        pods,
        watcher::Config::default().fields(&field).any_semantic(),
    )
    .default_backoff()
    .boxed();
    let want_ns = !cfg.selection.namespace_labels.is_empty();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns_events = watcher::watcher(namespaces, watcher::Config::default().any_semantic())
        .default_backoff()
        .boxed();
    report.set(Source::Metadata, Some("pod metadata not listed yet".into()));
    let mut w = Watch {
        client,
        cfg,
        dir,
        report,
        owners: Owners::default(),
        pods: HashMap::new(),
        namespaces: HashMap::new(),
        listing: None,
        last_error: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            ev = pod_events.next() => match ev {
                Some(Ok(ev)) => w.on_pod(ev).await,
                Some(Err(e)) => w.failed("pods", &e),
                None => return,
            },
            ev = ns_events.next(), if want_ns => match ev {
                Some(Ok(ev)) => w.on_namespace(ev),
                Some(Err(e)) => w.failed("namespaces", &e),
                None => return,
            },
            _ = tick.tick() => {
                w.dir.expire_now(Instant::now());
                // A watch that resumed after an error yields nothing until
                // something changes; no new error for a while means it is
                // back (the backoff retries well within this).
                if w.last_error.is_some_and(|t| t.elapsed() > Duration::from_secs(45)) {
                    w.healthy();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicaset_names_its_deployment_by_the_template_hash() {
        let rs = Owner {
            kind: "ReplicaSet".into(),
            name: "checkout-7d4b9c".into(),
        };
        let labels: BTreeMap<String, String> =
            [("pod-template-hash".to_string(), "7d4b9c".to_string())].into();
        assert_eq!(
            guess_up(&rs, &labels).map(|o| o.name),
            Some("checkout".into())
        );
        assert_eq!(guess_up(&rs, &BTreeMap::new()), None);
    }
}
