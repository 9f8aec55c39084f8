//! One reconcile of a `LogCollector`: apply what [`crate::render`] renders
//! (server-side apply, one field manager, skipped when the cluster already
//! holds it), observe, and write the status and events [`crate::status`]
//! computes — only when they changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::crd::{LogCollector, TlsMode};
use crate::credentials;
use crate::metrics::Metrics;
use crate::render::{self, Object, Options, FIELD_MANAGER};
use crate::status::{self, Observed};

/// The finalizer earlier versions added on OpenShift; the controller takes
/// it off collectors that still carry it.
pub const FINALIZER: &str = "logfleet.dev/cleanup";

/// How to ask a collector's aggregator for its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsAccess {
    /// The HTTP base URL (`https://` with TLS).
    pub url: String,
    /// The read token, when known.
    pub read_token: Option<String>,
    /// The CA (PEM) the aggregator's certificate is verified with.
    pub ca_pem: Option<String>,
}

/// What the aggregator's agents API answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentsReport {
    /// Each node's latest contact (push or heartbeat).
    Agents(BTreeMap<String, Timestamp>),
    /// The aggregator answered that its store is unreachable, with its
    /// error (then silence is not judged: the store explains it).
    StoreUnavailable(String),
    /// The aggregator could not be asked (then silence is not judged).
    Unknown,
}

/// Last push per node, from the aggregator's agents API.
pub trait PushSource: Send + Sync {
    /// Asks the aggregator.
    fn last_pushes(&self, access: AgentsAccess) -> BoxFuture<'static, AgentsReport>;
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Every node (a reflector's cache).
    pub nodes: Store<Node>,
    /// Every logfleet agent pod (a reflector's cache).
    pub pods: Store<Pod>,
    /// Publishes events.
    pub recorder: Recorder,
    /// Rendering options (OpenShift or not).
    pub options: Options,
    /// What the administrator lets collectors ask for.
    pub policy: crate::policy::Policy,
    /// The aggregator's agents API.
    pub pushes: Arc<dyn PushSource>,
    /// A ready agent silent this long is NotReporting.
    pub silence: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The clock (a fixed one in tests).
    pub now: fn() -> Timestamp,
}

impl Context {
    /// A copy sharing the same client, caches and recorder (tests change
    /// one setting of it).
    pub fn clone_of(c: &Context) -> Context {
        Context {
            client: c.client.clone(),
            nodes: c.nodes.clone(),
            pods: c.pods.clone(),
            recorder: c.recorder.clone(),
            options: c.options.clone(),
            policy: c.policy.clone(),
            pushes: c.pushes.clone(),
            silence: c.silence,
            metrics: c.metrics.clone(),
            now: c.now,
        }
    }
}

/// A reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: kube::Error,
    },
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// The node or pod cache has not been filled yet.
    #[error("the node and pod caches are not filled yet")]
    CacheNotReady,
    /// An object did not (de)serialize.
    #[error("{0}: {1}")]
    Json(&'static str, serde_json::Error),
    /// A certificate could not be issued.
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Reconciles one collector (the controller's reconcile function).
pub async fn reconcile(lc: Arc<LogCollector>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = lc.namespace().unwrap_or_default();
    let api: Api<LogCollector> = Api::namespaced(ctx.client.clone(), &ns);
    // No finalizer: owner references take every namespaced child, the
    // controller sweeps the agents' cluster-scoped RBAC of deleted
    // collectors, and on OpenShift the agents' SCC is shipped, not created.
    // A finalizer would hold a deleted collector (and its namespace and
    // CRD) in Terminating whenever the controller goes first, as with
    // `kubectl delete -f deploy/logfleet.yaml`.
    let result = without_finalizer(&api, &lc, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.is_ok());
    result
}

/// Takes off a finalizer an earlier version added, and applies unless
/// deleting.
async fn without_finalizer(
    api: &Api<LogCollector>,
    lc: &LogCollector,
    ctx: &Context,
) -> Result<Action, Error> {
    let name = lc.name_any();
    if lc.finalizers().iter().any(|f| f == FINALIZER) {
        let keep: Vec<&String> = lc.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        // resourceVersion: refused if the list changed meanwhile.
        let patch = json!({"metadata": {
            "finalizers": keep,
            "resourceVersion": lc.resource_version(),
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err(format!("removing the finalizer of {name}")))?;
    }
    if lc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    apply(lc, ctx).await
}

/// Whether `live` holds everything `want` says: every field of `want`
/// with the same value (the server adds defaults and others' fields).
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| l.get(k).is_some_and(|lv| contains(lv, wv))),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(lv, wv)| contains(lv, wv))
        }
        (Value::Number(l), Value::Number(w)) => l.as_f64() == w.as_f64(),
        (l, w) => l == w,
    }
}

fn dyn_api(client: &Client, ns: &str, o: &Object) -> Api<DynamicObject> {
    if o.namespaced {
        Api::namespaced_with(client.clone(), ns, &o.api)
    } else {
        Api::all_with(client.clone(), &o.api)
    }
}

/// The agent DaemonSet's current `controller-revision-hash`, from the
/// ControllerRevisions it owns (they carry its pod template's labels).
/// `None` when they cannot be read: status then falls back to template
/// generations.
async fn current_revision_hash(
    ctx: &Context,
    ns: &str,
    name: &str,
    ds: &DaemonSet,
) -> Option<String> {
    let selector = render::selector_labels(name, "agent")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => crate::dump::current_revision_hash(&list.items, ds),
        Err(e) => {
            tracing::debug!(error = %e, "reading the agent DaemonSet's ControllerRevisions");
            None
        }
    }
}

/// Reads one object as the cluster has it, without changing it.
async fn read(ctx: &Context, ns: &str, o: &Object) -> Result<Option<Value>, Error> {
    let what = format!("{} {}", o.api.kind, o.name);
    dyn_api(&ctx.client, ns, o)
        .get_opt(&o.name)
        .await
        .map_err(kube_err(format!("reading {what}")))?
        .map(|l| serde_json::to_value(l).map_err(|e| Error::Json("live object", e)))
        .transpose()
}

/// Applies one object unless the cluster already holds it; returns it as
/// the cluster has it.
async fn ensure(ctx: &Context, ns: &str, o: &Object) -> Result<Value, Error> {
    let api = dyn_api(&ctx.client, ns, o);
    let what = format!("{} {}", o.api.kind, o.name);
    let live = api
        .get_opt(&o.name)
        .await
        .map_err(kube_err(format!("reading {what}")))?;
    if let Some(l) = live {
        let l = serde_json::to_value(l).map_err(|e| Error::Json("live object", e))?;
        if contains(&l, &o.body) {
            return Ok(l);
        }
    }
    tracing::info!(kind = %o.api.kind, name = %o.name, "applying");
    // force: this controller owns these fields; another manager's edit of
    // them is drift to undo.
    let applied = api
        .patch(
            &o.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&o.body),
        )
        .await
        .map_err(kube_err(format!("applying {what}")))?;
    ctx.metrics.applied(&o.api.kind);
    serde_json::to_value(applied).map_err(|e| Error::Json("applied object", e))
}

async fn apply(lc: &LogCollector, ctx: &Context) -> Result<Action, Error> {
    // Coverage from half-filled caches would report nodes missing that
    // are not; the watches fill them within seconds of start.
    let wait = Duration::from_secs(30);
    let ready = async {
        ctx.nodes.wait_until_ready().await.ok()?;
        ctx.pods.wait_until_ready().await.ok()
    };
    if !matches!(tokio::time::timeout(wait, ready).await, Ok(Some(()))) {
        return Err(Error::CacheNotReady);
    }
    let name = lc.name_any();
    let ns = lc.namespace().unwrap_or_default();
    // A spec the agents or the aggregator would refuse at start is not
    // applied: whatever runs now keeps running, and the status says why.
    // So is one the administrator's policy does not allow.
    let mut problems = crate::validate::validate(&lc.spec)
        .err()
        .unwrap_or_default();
    problems.extend(ctx.policy.check(&ns, &lc.spec).err().unwrap_or_default());
    let invalid = (!problems.is_empty()).then(|| crate::validate::describe(&problems));
    // The Secrets first: the pods rendered below mount them.
    let access = secure(ctx, lc, &ns, &name, invalid.is_none()).await?;
    let objects = render::render(lc, &ctx.options)?;
    let mut daemonset: Option<DaemonSet> = None;
    let mut aggregator: Option<status::Workload> = None;
    let mut rendered_template = Default::default();
    // An object the API server refuses does not end the reconcile before
    // the status: the rest is read as it is, the status says why, and the
    // reconcile fails afterwards to be tried again.
    let mut apply_error: Option<Error> = None;
    for o in &objects {
        let live = if invalid.is_some() || apply_error.is_some() {
            match read(ctx, &ns, o).await? {
                Some(l) => l,
                None => continue,
            }
        } else {
            match ensure(ctx, &ns, o).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "applying failed");
                    apply_error = Some(e);
                    match read(ctx, &ns, o).await? {
                        Some(l) => l,
                        None => continue,
                    }
                }
            }
        };
        match o.api.kind.as_str() {
            "DaemonSet" => {
                let rendered: DaemonSet = serde_json::from_value(o.body.clone())
                    .map_err(|e| Error::Json("rendered DaemonSet", e))?;
                rendered_template = rendered.spec.template.spec.unwrap_or_default();
                daemonset =
                    Some(serde_json::from_value(live).map_err(|e| Error::Json("DaemonSet", e))?);
            }
            "StatefulSet" => {
                let s: StatefulSet =
                    serde_json::from_value(live).map_err(|e| Error::Json("StatefulSet", e))?;
                aggregator = Some((&s).into());
            }
            "Deployment" => {
                let d: Deployment =
                    serde_json::from_value(live).map_err(|e| Error::Json("Deployment", e))?;
                aggregator = Some((&d).into());
            }
            _ => {}
        }
    }

    sweep_agent_rbac(ctx).await;

    let nodes: Vec<Node> = ctx.nodes.state().iter().map(|n| (**n).clone()).collect();
    let instance = crate::names::instance(&name);
    let pods: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && p.labels().get("app.kubernetes.io/instance") == Some(&instance)
                && p.labels()
                    .get("app.kubernetes.io/component")
                    .map(String::as_str)
                    == Some("agent")
        })
        .map(|p| (**p).clone())
        .collect();
    let project = if ctx.options.openshift {
        let namespace = Api::<Namespace>::all(ctx.client.clone())
            .get(&ns)
            .await
            .map_err(kube_err(format!("reading namespace {ns}")))?;
        namespace
            .annotations()
            .get("openshift.io/node-selector")
            .filter(|s| !s.trim().is_empty())
            .cloned()
    } else {
        None
    };
    let (pushes, store_unavailable) = match ctx.pushes.last_pushes(access).await {
        AgentsReport::Agents(m) => (Some(m), None),
        AgentsReport::StoreUnavailable(e) => (None, Some(e)),
        AgentsReport::Unknown => (None, None),
    };
    let revision_hash = match &daemonset {
        Some(ds) => current_revision_hash(ctx, &ns, &name, ds).await,
        None => None,
    };
    // Whole seconds: what the API keeps of condition times, so that an
    // unchanged status reads back equal.
    let now = Timestamp::from_second((ctx.now)().as_second()).unwrap_or((ctx.now)());
    let config_hash = render::config_hash(&render::agent_config(lc, &name, &ns));
    let old = lc.status.clone().unwrap_or_default();
    let outcome = status::compute(
        Observed {
            generation: lc.metadata.generation,
            daemonset: daemonset.as_ref(),
            rendered_template: &rendered_template,
            aggregator,
            store_unavailable: store_unavailable.as_deref(),
            nodes: &nodes,
            pods: &pods,
            scope: &lc.spec.node_scope,
            project_node_selector: project.as_deref(),
            namespace: &ns,
            last_push: pushes.as_ref(),
            silence: ctx.silence,
            config_hash: &config_hash,
            progress_deadline: Duration::from_secs(
                lc.spec.agent.progress_deadline_seconds.max(1) as u64
            ),
            invalid_spec: invalid.as_deref(),
            apply_error: apply_error.as_ref().map(|e| e.to_string()).as_deref(),
            current_revision_hash: revision_hash.as_deref(),
            now,
        },
        &old,
    );
    ctx.metrics.coverage(&ns, &name, &outcome.rows);

    if outcome.status != old {
        let api: Api<LogCollector> = Api::namespaced(ctx.client.clone(), &ns);
        let body = json!({
            "apiVersion": LogCollector::api_version(&()),
            "kind": LogCollector::kind(&()),
            "status": outcome.status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_err(format!("writing the status of {ns}/{name}")))?;
    }
    let reference = lc.object_ref(&());
    for n in &outcome.notices {
        let ev = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.into(),
            note: Some(truncate(&n.note, 1000)),
            action: n.action.into(),
            secondary: None,
        };
        // An event that cannot be written is logged, not retried: the
        // status holds the same facts.
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason = n.reason, "publishing an event");
        }
    }
    if let Some(e) = apply_error {
        return Err(e);
    }
    // Silence and progress deadlines change with time alone.
    let rolling = outcome
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == status::PROGRESSING && c.status == "True");
    Ok(Action::requeue(Duration::from_secs(if rolling {
        15
    } else {
        60
    })))
}

fn bytes(s: String) -> k8s_openapi::ByteString {
    k8s_openapi::ByteString(s.into_bytes())
}

/// Writes a Secret the controller owns (server-side apply, forced: only
/// this controller writes it).
async fn put_secret(
    api: &Api<Secret>,
    lc: &LogCollector,
    name: &str,
    type_: &str,
    data: BTreeMap<String, k8s_openapi::ByteString>,
    annotations: BTreeMap<String, String>,
) -> Result<Secret, Error> {
    let mut meta = json!({
        "name": name,
        "labels": render::labels(&lc.name_any(), "aggregator"),
        "annotations": annotations,
    });
    if let Some(o) = lc.controller_owner_ref(&()) {
        meta["ownerReferences"] = json!([o]);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": type_,
        "data": data,
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err(format!("writing Secret {name}")))
}

/// Creates the tokens and (by default) the CA and serving certificate the
/// collector is secured with, renewing the certificate when it is due;
/// returns how to reach the aggregator's agents API. `write: false` only
/// reads (a spec that will not be applied).
async fn secure(
    ctx: &Context,
    lc: &LogCollector,
    ns: &str,
    name: &str,
    write: bool,
) -> Result<AgentsAccess, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let get = |n: String| {
        let api = api.clone();
        async move {
            api.get_opt(&n)
                .await
                .map_err(kube_err(format!("reading Secret {n}")))
        }
    };
    let token_name = render::token_secret(lc, name);
    let mut tokens = get(token_name.clone()).await?;
    if write
        && lc.spec.token_secret_name.is_none()
        && !credentials::tokens_complete(tokens.as_ref())
    {
        tracing::info!(%ns, secret = %token_name, "creating bearer tokens");
        tokens = Some(
            put_secret(
                &api,
                lc,
                &token_name,
                "Opaque",
                credentials::new_tokens(),
                BTreeMap::new(),
            )
            .await?,
        );
    }
    let read_token = tokens
        .as_ref()
        .and_then(|s| credentials::value(s, credentials::READ_TOKEN));

    let tls = &lc.spec.aggregator.tls;
    let ca_pem = match tls.mode {
        TlsMode::Disabled => None,
        TlsMode::Secret => match render::tls_secret(lc, name) {
            Some(n) => get(n)
                .await?
                .and_then(|s| credentials::value(&s, credentials::CA_CRT)),
            None => None,
        },
        TlsMode::Controller => {
            let now = (ctx.now)();
            let (ca_name, serving_name) =
                (credentials::ca_name(name), credentials::serving_name(name));
            let ca = get(ca_name.clone()).await?;
            let serving = get(serving_name.clone()).await?;
            let dns = credentials::serving_dns_names(name, ns);
            let plan = credentials::plan_tls(ca.as_ref(), serving.as_ref(), &dns, now);
            let mut issued = ca.as_ref().and_then(credentials::stored);
            if write && plan.new_ca {
                tracing::info!(%ns, secret = %ca_name, "issuing the CA");
                let c = credentials::issue_ca(name, now)?;
                put_secret(
                    &api,
                    lc,
                    &ca_name,
                    "kubernetes.io/tls",
                    BTreeMap::from([
                        (credentials::TLS_CRT.into(), bytes(c.cert_pem.clone())),
                        (credentials::TLS_KEY.into(), bytes(c.key_pem.clone())),
                    ]),
                    c.annotations(),
                )
                .await?;
                issued = Some(c);
            }
            if let (true, true, Some(c)) = (write, plan.new_serving, &issued) {
                tracing::info!(%ns, secret = %serving_name, "issuing the aggregator's certificate");
                let cert = credentials::issue_serving(name, c, &dns, now)?;
                let mut ann = cert.annotations();
                ann.insert(credentials::DNS_NAMES.into(), dns.join(","));
                put_secret(
                    &api,
                    lc,
                    &serving_name,
                    "kubernetes.io/tls",
                    BTreeMap::from([
                        (credentials::TLS_CRT.into(), bytes(cert.cert_pem)),
                        (credentials::TLS_KEY.into(), bytes(cert.key_pem)),
                        (credentials::CA_CRT.into(), bytes(c.cert_pem.clone())),
                    ]),
                    ann,
                )
                .await?;
                let ev = Event {
                    type_: EventType::Normal,
                    reason: "CertificateIssued".into(),
                    note: Some(format!(
                        "issued the aggregator's TLS certificate (Secret {serving_name}), valid until {}",
                        cert.not_after
                    )),
                    action: "IssueCertificate".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.recorder.publish(&ev, &lc.object_ref(&())).await {
                    tracing::warn!(error = %e, "publishing an event");
                }
            }
            issued.map(|c| c.cert_pem)
        }
    };
    Ok(AgentsAccess {
        url: render::aggregator_agents_url(lc, name, ns, render::tls_secret(lc, name).is_some()),
        read_token,
        ca_pem,
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Deletes the agents' ClusterRoles and ClusterRoleBindings whose
/// collector is gone, or that are not named as their collector's are now. Without a finalizer (off OpenShift) nothing else
/// would: a namespaced owner cannot own them, and a finalizer would hold a
/// deleted collector in Terminating whenever the controller goes first.
/// Best effort: a failure is logged and tried again next reconcile.
async fn sweep_agent_rbac(ctx: &Context) {
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(ctx.client.clone());
    let lp = kube::api::ListParams::default().labels(
        "app.kubernetes.io/managed-by=logfleet-controller,app.kubernetes.io/component=agent",
    );
    let list = match roles.list_metadata(&lp).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "listing agent ClusterRoles failed");
            return;
        }
    };
    for r in list {
        let role = r.name_any();
        let Some((ns, lc)) = r
            .annotations()
            .get(render::COLLECTOR_ANNOTATION)
            .and_then(|v| v.split_once('/'))
        else {
            continue;
        };
        // Roles named otherwise than this version names them (before
        // names carried a hash, two collectors could share one) go even
        // while their collector lives: it gets its own.
        if role == render::agent_role_name(lc, ns) {
            let collectors: Api<LogCollector> = Api::namespaced(ctx.client.clone(), ns);
            if !matches!(collectors.get_opt(lc).await, Ok(None)) {
                continue;
            }
        }
        tracing::info!(%role, collector = %format!("{ns}/{lc}"), "deleting the agent RBAC of a deleted collector");
        if let Err(e) = delete_agent_rbac(&ctx.client, &role).await {
            tracing::warn!(%role, error = %e, "deleting agent RBAC failed");
        }
    }
}

/// Deletes the agents' ClusterRoleBinding, then their ClusterRole (the
/// grant goes first); already gone is fine.
async fn delete_agent_rbac(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for r in [
        bindings
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
        roles
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    ] {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What the controller does after a failed reconcile: retry soon.
pub fn error_policy(_lc: Arc<LogCollector>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_ignores_what_the_server_adds_only() {
        let want = json!({"a": 1, "b": {"c": [{"d": "x"}]}});
        let live = json!({"a": 1.0, "z": 2, "b": {"c": [{"d": "x", "e": "default"}], "f": 3}});
        assert!(contains(&live, &want));
        assert!(!contains(&json!({"a": 2, "b": {"c": [{"d": "x"}]}}), &want));
        assert!(!contains(&json!({"a": 1, "b": {"c": [{"d": "y"}]}}), &want));
        assert!(!contains(&json!({"a": 1, "b": {"c": []}}), &want));
        assert!(!contains(&json!({"a": 1}), &want));
    }

    #[test]
    fn truncate_keeps_utf8_whole() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
