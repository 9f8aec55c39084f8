//! `logfleet controller`: leader election, the watches that trigger
//! reconciles, the aggregator client, and the metrics/probe endpoint.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::crd::LogCollector;
use crate::metrics::Metrics;
use crate::reconcile::{self, AgentsReport, Context, PushSource};
use crate::render::{self, Options};

/// Labels of every pod and workload the controller renders.
const OWNED: &str =
    "app.kubernetes.io/part-of=logfleet,app.kubernetes.io/managed-by=logfleet-controller";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Only `LogCollector`s of this namespace; `None`: every namespace.
    pub namespace: Option<String>,
    /// Metrics and probes.
    pub http_addr: SocketAddr,
    /// A ready agent silent this long is NotReporting.
    pub silence: Duration,
    /// Changes closer together than this make one reconcile.
    pub debounce: Duration,
    /// Take a Lease before acting, so that replicas do not compete.
    pub leader_election: bool,
    /// Namespace of the Lease (the controller's own).
    pub lease_namespace: String,
    /// This replica's name in the Lease (its pod name).
    pub identity: String,
    /// What collectors may ask for.
    pub policy: crate::policy::Policy,
}

/// The controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("connecting to the Kubernetes API")]
    Connect(#[source] kube::Error),
    /// Discovery failed.
    #[error("discovering API groups")]
    Discovery(#[source] kube::Error),
    /// The metrics port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(String),
    /// Another replica took over; exiting lets Kubernetes restart this one
    /// as a follower.
    #[error("lost the leader lease")]
    LostLease,
}

/// Asks the aggregator's `/api/v1/agents` with the read token, over TLS
/// verified with the collector's CA when it has one.
pub struct AggregatorAgents {
    timeout: Duration,
}

impl Default for AggregatorAgents {
    fn default() -> Self {
        AggregatorAgents {
            timeout: Duration::from_secs(5),
        }
    }
}

type AgentsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// An HTTP(S) client trusting exactly `ca_pem` (none: plain HTTP only).
fn agents_client(ca_pem: Option<&str>) -> Result<AgentsClient, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| format!("CA: {e}"))?)
                .map_err(|e| format!("CA: {e}"))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

#[derive(serde::Deserialize)]
struct AgentJson {
    node: String,
    last_push: String,
    /// Any contact, heartbeats included (aggregators before heartbeats
    /// lack it).
    #[serde(default)]
    last_seen: Option<String>,
}

/// Parses the aggregator's agent listing into each node's latest contact:
/// its last heartbeat or push, so that an agent on a quiet node is not
/// taken for a silent one.
pub fn parse_agents(body: &[u8]) -> Result<BTreeMap<String, Timestamp>, String> {
    let agents: Vec<AgentJson> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    agents
        .into_iter()
        .map(|a| {
            let parse = |s: &str| s.parse::<Timestamp>().map_err(|e| format!("{s}: {e}"));
            let mut t = parse(&a.last_push)?;
            if let Some(seen) = a.last_seen.as_deref().filter(|s| !s.is_empty()) {
                t = t.max(parse(seen)?);
            }
            Ok((a.node, t))
        })
        .collect()
}

/// The aggregator's error body: `{"reason": ..., "message": ...}`.
#[derive(serde::Deserialize)]
struct ErrorJson {
    reason: String,
    #[serde(default)]
    message: String,
}

/// Reads an agents API answer: the listing, or the aggregator saying its
/// store is unreachable (503 with [`logfleet_proto::STORE_UNAVAILABLE`]).
pub fn classify_agents_answer(
    status: http::StatusCode,
    body: &[u8],
) -> Result<AgentsReport, String> {
    if status.is_success() {
        return parse_agents(body).map(AgentsReport::Agents);
    }
    match serde_json::from_slice::<ErrorJson>(body) {
        Ok(e)
            if status == http::StatusCode::SERVICE_UNAVAILABLE
                && e.reason == logfleet_proto::STORE_UNAVAILABLE =>
        {
            Ok(AgentsReport::StoreUnavailable(e.message))
        }
        _ => Err(format!("status {status}")),
    }
}

impl PushSource for AggregatorAgents {
    fn last_pushes(&self, access: reconcile::AgentsAccess) -> BoxFuture<'static, AgentsReport> {
        let url = format!("{}/api/v1/agents", access.url);
        let timeout = self.timeout;
        Box::pin(async move {
            let client = match agents_client(access.ca_pem.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%url, error = %e, "the collector's CA cannot be used");
                    return AgentsReport::Unknown;
                }
            };
            let mut req = http::Request::get(url.as_str());
            if let Some(t) = &access.read_token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let Ok(req) = req.body(http_body_util::Empty::new()) else {
                return AgentsReport::Unknown;
            };
            let fetch = async {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                classify_agents_answer(status, &body)
            };
            match tokio::time::timeout(timeout, fetch).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::debug!(%url, error = %e, "aggregator agents API");
                    AgentsReport::Unknown
                }
                Err(_) => {
                    tracing::debug!(%url, "aggregator agents API timed out");
                    AgentsReport::Unknown
                }
            }
        })
    }
}

async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<impl Future<Output = ()>, RunError> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }));
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server");
        }
    })
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    cfg: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Connect)?;
    let groups = client
        .list_api_groups()
        .await
        .map_err(RunError::Discovery)?;
    let openshift = groups
        .groups
        .iter()
        .any(|g| g.name == "security.openshift.io");
    tracing::info!(openshift, namespace = ?cfg.namespace, "starting");
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(serve_http(cfg.http_addr, metrics.clone()).await?);

    // Leader election: wait for the Lease; losing it later ends the run.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let mut lease_rx = if cfg.leader_election {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "logfleet-controller")
                .with_namespace(&cfg.lease_namespace)
                .with_identity(&cfg.identity)
                .build()
                .await
                .map_err(|e| RunError::Lease(e.to_string()))?;
        let (mut rx, _task) = manager.watch().await;
        let mut stop = shutdown_rx.clone();
        tracing::info!(identity = %cfg.identity, "waiting for the leader lease");
        while !*rx.borrow_and_update() {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return Err(RunError::Lease("lease manager stopped".into()));
                },
                _ = stop.changed() => return Ok(()),
            }
        }
        tracing::info!("leading");
        Some(rx)
    } else {
        None
    };

    let (nodes, node_writer) = reflector::store::<Node>();
    // Keep of each node what placement and coverage read: the image list
    // and managed fields are most of a Node and would dominate memory.
    let node_events = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).modify(|n| {
            n.managed_fields_mut().clear();
            n.metadata.annotations = None;
            if let Some(st) = n.status.as_mut() {
                st.images = None;
                st.volumes_attached = None;
                st.volumes_in_use = None;
            }
        }),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| async move { r.ok().map(|_| ()) });
    let pod_api: Api<Pod> = match &cfg.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_events = reflector(
        pod_writer,
        watcher(pod_api, watcher::Config::default().labels(OWNED)).modify(|p| {
            p.managed_fields_mut().clear();
        }),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| async move { r.ok().map(|_| ()) });

    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = cfg.namespace.as_deref();
    let lcs: Api<LogCollector> = api(&client, ns);
    let ds: Api<DaemonSet> = api(&client, ns);
    let sts: Api<StatefulSet> = api(&client, ns);
    // Over ClickHouse the aggregators are a Deployment.
    let deploys: Api<Deployment> = api(&client, ns);
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes,
        pods,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: render::FIELD_MANAGER.into(),
                instance: Some(cfg.identity.clone()),
            },
        ),
        options: Options {
            openshift,
            controller_namespace: Some(cfg.lease_namespace.clone()),
        },
        policy: cfg.policy.clone(),
        pushes: Arc::new(AggregatorAgents::default()),
        silence: cfg.silence,
        metrics,
        now: Timestamp::now,
    });

    let mut stop = shutdown_rx.clone();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = lost.clone();
    let end = async move {
        match lease_rx.as_mut() {
            Some(rx) => tokio::select! {
                _ = stop.changed() => {}
                _ = async { while rx.changed().await.is_ok() && *rx.borrow() {} } => {
                    lost_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            },
            None => {
                let _ = stop.changed().await;
            }
        }
    };
    Controller::new(lcs, watcher::Config::default())
        .owns(ds, watcher::Config::default().labels(OWNED))
        .owns(sts, watcher::Config::default().labels(OWNED))
        .owns(deploys, watcher::Config::default().labels(OWNED))
        .reconcile_all_on(node_events)
        .reconcile_all_on(pod_events)
        .with_config(controller::Config::default().debounce(cfg.debounce))
        .graceful_shutdown_on(end)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => {
                    tracing::debug!(name = %obj.name, ns = ?obj.namespace, "reconciled")
                }
                Err(e) => tracing::warn!(error = %e, "reconcile"),
            }
        })
        .await;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RunError::LostLease);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregator_agent_listing() {
        let body = br#"[{"node":"a","first_push":"2026-11-28T09:00:00.000000001Z","last_push":"2026-11-28T10:00:00.5Z","lines":3,"bytes":9}]"#;
        let m = parse_agents(body).unwrap();
        assert_eq!(
            m["a"],
            "2026-11-28T10:00:00.5Z".parse::<Timestamp>().unwrap()
        );
        // A heartbeat after the last push counts: a quiet node is not silent.
        let body = br#"[{"node":"q","last_push":"2026-11-28T09:00:00Z","last_seen":"2026-11-28T11:00:00Z"},{"node":"r","last_push":"2026-11-28T09:00:00Z","last_seen":""}]"#;
        let m = parse_agents(body).unwrap();
        assert_eq!(m["q"], "2026-11-28T11:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(m["r"], "2026-11-28T09:00:00Z".parse::<Timestamp>().unwrap());
        assert!(parse_agents(b"{}").is_err());
        assert!(parse_agents(br#"[{"node":"a","last_push":"yesterday"}]"#).is_err());
    }

    #[test]
    fn a_store_unavailable_answer_is_told_apart_from_other_failures() {
        use http::StatusCode;
        let body = br#"{"reason":"StoreUnavailable","message":"ClickHouse at http://ch:8123 unreachable"}"#;
        assert_eq!(
            classify_agents_answer(StatusCode::SERVICE_UNAVAILABLE, body),
            Ok(AgentsReport::StoreUnavailable(
                "ClickHouse at http://ch:8123 unreachable".into()
            ))
        );
        // Another 503, a 500 with the same body, or plain text: not known.
        assert!(classify_agents_answer(StatusCode::SERVICE_UNAVAILABLE, b"busy\n").is_err());
        assert!(classify_agents_answer(StatusCode::INTERNAL_SERVER_ERROR, body).is_err());
        assert!(classify_agents_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"reason":"Other","message":"x"}"#
        )
        .is_err());
        assert!(matches!(
            classify_agents_answer(StatusCode::OK, b"[]"),
            Ok(AgentsReport::Agents(m)) if m.is_empty()
        ));
    }
}
