//! Reconcile against kube's mock API service: a small in-memory API server
//! answers every request and records it, and the tests check each one —
//! method, path, field manager, applied body, status patch, events — and
//! that an unchanged cluster gets no writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Client;
use logfleet_controller::crd::LogCollector;
use logfleet_controller::metrics::Metrics;
use logfleet_controller::reconcile::{
    self, AgentsAccess, AgentsReport, Context, PushSource, FINALIZER,
};
use logfleet_controller::render::{self, Options};
use serde_json::{json, Value};

/// One request as the API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct ApiState {
    objects: HashMap<String, Value>,
    seen: Vec<Seen>,
    /// Paths whose server-side apply the API server refuses (422).
    refuse: Vec<String>,
}

type Shared = Arc<Mutex<ApiState>>;

const LC_PATH: &str = "/apis/logfleet.dev/v1alpha1/namespaces/logfleet/logcollectors/logs";

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, ApiState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// What the cluster's own controllers would add to an applied object.
fn as_stored(path: &str, mut obj: Value, prev: Option<&Value>) -> Value {
    let generation = prev
        .and_then(|p| p["metadata"]["generation"].as_i64())
        .unwrap_or(1);
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    meta.insert("uid".into(), json!(format!("uid-{}", path.len())));
    meta.insert("resourceVersion".into(), json!("1"));
    meta.insert("generation".into(), json!(generation));
    match obj["kind"].as_str() {
        Some("DaemonSet") => {
            obj["status"] = json!({"observedGeneration": generation, "desiredNumberScheduled": 2,
                "currentNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2,
                "numberAvailable": 2, "numberMisscheduled": 0});
        }
        Some("StatefulSet") => {
            obj["status"] = json!({"observedGeneration": generation, "replicas": 1,
                "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
        }
        _ => {}
    }
    obj
}

fn answer(state: &Shared, seen: &Seen) -> (StatusCode, Value) {
    let mut st = lock(state);
    let path = seen.path.clone();
    match seen.method.as_str() {
        "GET" => match st.objects.get(&path) {
            Some(o) => (StatusCode::OK, o.clone()),
            // A collection with a label selector (`k=v,...`): a list.
            None if seen.query.contains("labelSelector=") => {
                let selector = seen
                    .query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .unwrap_or("")
                    .replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%2F", "/");
                let wanted: Vec<(&str, &str)> = selector
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(p, o)| {
                        p.rsplit_once('/').map(|(c, _)| c) == Some(path.as_str())
                            && wanted
                                .iter()
                                .all(|(k, v)| o["metadata"]["labels"][*k] == *v)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            None => not_found(),
        },
        "POST" => (StatusCode::CREATED, seen.body.clone()),
        "DELETE" => match st.objects.remove(&path) {
            Some(o) => (StatusCode::OK, o),
            None => not_found(),
        },
        "PATCH"
            if seen.content_type == "application/apply-patch+yaml" && st.refuse.contains(&path) =>
        {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "StatefulSet.apps \"logs-aggregator\" is invalid: spec.volumeClaimTemplates[0].spec.resources.requests[storage]: Invalid value: \"10GB\": quantities must match the regular expression",
                       "reason": "Invalid", "code": 422}),
            )
        }
        "PATCH" if seen.content_type == "application/apply-patch+yaml" => {
            if let Some(base) = path.strip_suffix("/status") {
                let Some(obj) = st.objects.get_mut(base) else {
                    return not_found();
                };
                obj["status"] = seen.body["status"].clone();
                (StatusCode::OK, obj.clone())
            } else {
                let stored = as_stored(&path, seen.body.clone(), st.objects.get(&path));
                st.objects.insert(path, stored.clone());
                (StatusCode::OK, stored)
            }
        }
        "PATCH" if seen.content_type == "application/json-patch+json" => {
            // The finalizer helper's add/remove of metadata.finalizers.
            let Some(obj) = st.objects.get_mut(&path) else {
                return not_found();
            };
            for op in seen.body.as_array().into_iter().flatten() {
                match op["op"].as_str() {
                    Some("add") if op["path"] == "/metadata/finalizers" => {
                        obj["metadata"]["finalizers"] = op["value"].clone();
                    }
                    Some("add") => {
                        obj["metadata"]["finalizers"]
                            .as_array_mut()
                            .expect("finalizers")
                            .push(op["value"].clone());
                    }
                    Some("remove") => {
                        obj["metadata"]["finalizers"] = json!([]);
                    }
                    _ => {}
                }
            }
            (StatusCode::OK, obj.clone())
        }
        "PATCH" if seen.content_type == "application/merge-patch+json" => {
            // RFC 7386: objects merge, null deletes, anything else replaces.
            fn merge(into: &mut Value, patch: &Value) {
                match (into.as_object_mut(), patch.as_object()) {
                    (Some(o), Some(p)) => {
                        for (k, v) in p {
                            if v.is_null() {
                                o.remove(k);
                            } else {
                                merge(o.entry(k.clone()).or_insert(Value::Null), v);
                            }
                        }
                    }
                    _ => *into = patch.clone(),
                }
            }
            let Some(obj) = st.objects.get_mut(&path) else {
                return not_found();
            };
            merge(obj, &seen.body);
            (StatusCode::OK, obj.clone())
        }
        "PATCH" => (StatusCode::OK, seen.body.clone()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
    }
}

/// Starts the mock API; returns the client and the shared state.
fn mock_api(state: Shared) -> Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or("").to_owned(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, value) = answer(&state, &seen);
            lock(&state).seen.push(seen);
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
                .expect("response");
            send.send_response(resp);
        }
    });
    Client::new(svc, "logfleet")
}

/// An aggregator that answers what the test sets (by default: it cannot
/// be reached); it keeps how it was asked.
struct NoAggregator(Mutex<Option<AgentsAccess>>, Mutex<AgentsReport>);
impl Default for NoAggregator {
    fn default() -> Self {
        NoAggregator(Mutex::new(None), Mutex::new(AgentsReport::Unknown))
    }
}
impl NoAggregator {
    fn answer(&self, r: AgentsReport) {
        *self.1.lock().expect("lock") = r;
    }
}
impl PushSource for NoAggregator {
    fn last_pushes(&self, access: AgentsAccess) -> BoxFuture<'static, AgentsReport> {
        *self.0.lock().expect("lock") = Some(access);
        let r = self.1.lock().expect("lock").clone();
        Box::pin(async move { r })
    }
}

fn fixed_now() -> Timestamp {
    "2026-11-28T10:00:00Z".parse().expect("time")
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("node")
}

fn agent_pod(node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("logs-agent-{node}"), "namespace": "logfleet",
            "labels": {"app.kubernetes.io/instance": "logs", "app.kubernetes.io/component": "agent",
                       "app.kubernetes.io/name": "logfleet", "pod-template-generation": "1"}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("pod")
}

fn stores(nodes: &[&str], pods_on: &[&str]) -> (Store<Node>, Store<Pod>) {
    // As a watcher fills them: a listing, then ready.
    let (nr, mut nw) = reflector::store::<Node>();
    nw.apply_watcher_event(&watcher::Event::Init);
    for n in nodes {
        nw.apply_watcher_event(&watcher::Event::InitApply(node(n)));
    }
    nw.apply_watcher_event(&watcher::Event::InitDone);
    let (pr, mut pw) = reflector::store::<Pod>();
    pw.apply_watcher_event(&watcher::Event::Init);
    for n in pods_on {
        pw.apply_watcher_event(&watcher::Event::InitApply(agent_pod(n)));
    }
    pw.apply_watcher_event(&watcher::Event::InitDone);
    (nr, pr)
}

fn collector(spec: Value, finalizers: &[&str], deleting: bool) -> Value {
    let mut meta = json!({"name": "logs", "namespace": "logfleet", "uid": "lc-uid",
                          "generation": 1, "resourceVersion": "1", "finalizers": finalizers});
    if deleting {
        meta["deletionTimestamp"] = json!("2026-11-28T09:00:00Z");
    }
    json!({"apiVersion": "logfleet.dev/v1alpha1", "kind": "LogCollector", "metadata": meta, "spec": spec})
}

struct Harness {
    state: Shared,
    ctx: Arc<Context>,
    pushes: Arc<NoAggregator>,
}

impl Harness {
    fn new(lc: Value, nodes: &[&str], pods_on: &[&str], openshift: bool) -> Self {
        let state: Shared = Arc::default();
        lock(&state).objects.insert(LC_PATH.into(), lc);
        lock(&state).objects.insert(
            "/api/v1/namespaces/logfleet".into(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "logfleet", "annotations": {"openshift.io/node-selector": ""}}}),
        );
        let client = mock_api(state.clone());
        let (nodes, pods) = stores(nodes, pods_on);
        let pushes = Arc::new(NoAggregator::default());
        let ctx = Arc::new(Context {
            client: client.clone(),
            nodes,
            pods,
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "logfleet-controller".into(),
                    instance: None,
                },
            ),
            options: Options {
                openshift,
                controller_namespace: Some("logfleet-system".into()),
            },
            policy: Default::default(),
            pushes: pushes.clone(),
            silence: std::time::Duration::from_secs(300),
            metrics: Arc::new(Metrics::new()),
            now: fixed_now,
        });
        Harness { state, ctx, pushes }
    }

    /// The same cluster, with the administrator's `policy`.
    fn with_policy(&self, policy: logfleet_controller::policy::Policy) -> Harness {
        let mut ctx = Context::clone_of(&self.ctx);
        ctx.policy = policy;
        Harness {
            state: self.state.clone(),
            ctx: Arc::new(ctx),
            pushes: self.pushes.clone(),
        }
    }

    /// The same cluster, with the controller's clock at `now`.
    fn at(&self, now: fn() -> Timestamp) -> Harness {
        let mut ctx = Context::clone_of(&self.ctx);
        ctx.now = now;
        let ctx = Arc::new(ctx);
        Harness {
            state: self.state.clone(),
            ctx,
            pushes: self.pushes.clone(),
        }
    }

    fn object(&self, path: &str) -> Option<Value> {
        lock(&self.state).objects.get(path).cloned()
    }

    fn lc(&self) -> LogCollector {
        serde_json::from_value(lock(&self.state).objects[LC_PATH].clone())
            .expect("stored LogCollector")
    }

    /// Like [`Harness::reconcile`], for a reconcile that may fail.
    async fn try_reconcile(&self) -> (Result<(), String>, Vec<Seen>) {
        let before = lock(&self.state).seen.len();
        let r = reconcile::reconcile(Arc::new(self.lc()), self.ctx.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        (r, lock(&self.state).seen[before..].to_vec())
    }

    /// Runs one reconcile of the stored collector; returns its requests,
    /// each checked against the bundle's RBAC as the API server would.
    async fn reconcile(&self) -> Vec<Seen> {
        let before = lock(&self.state).seen.len();
        reconcile::reconcile(Arc::new(self.lc()), self.ctx.clone())
            .await
            .expect("reconcile");
        let seen = lock(&self.state).seen[before..].to_vec();
        let rules = logfleet_controller::bundle::controller_rules();
        for s in &seen {
            let target = format!("{}?{}", s.path, s.query);
            let a = logfleet_controller::rbac::attributes(&s.method, &target);
            assert!(
                logfleet_controller::rbac::allows(&rules, &a),
                "the bundle's ClusterRole does not allow {a:?} ({} {})",
                s.method,
                s.path
            );
        }
        seen
    }
}

/// The condition `type_` of the status the reconcile wrote.
fn condition(seen: &[Seen], type_: &str) -> Value {
    let status = seen
        .iter()
        .find(|s| s.path.ends_with("/logcollectors/logs/status"))
        .expect("status written");
    status.body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
        .clone()
}

fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.is_write())
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

#[tokio::test]
async fn first_reconcile_applies_everything_then_a_second_writes_nothing() {
    // Three nodes, agents ready on two: node-c lacks one.
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a", "node-b", "node-c"],
        &["node-a", "node-b"],
        false,
    );
    let seen = h.reconcile().await;

    // Every rendered object: read, then applied with our field manager,
    // forced, as an apply patch whose body is exactly the rendered object.
    let rendered = render::render(&h.lc(), &h.ctx.options).expect("render");
    for o in &rendered {
        let patches: Vec<&Seen> = seen
            .iter()
            .filter(|s| {
                s.method == "PATCH"
                    && s.path.ends_with(&format!("/{}", o.name))
                    && s.path.contains(&o.api.plural)
            })
            .collect();
        assert_eq!(
            patches.len(),
            1,
            "{} {}: {:?}",
            o.api.kind,
            o.name,
            writes(&seen)
        );
        let p = patches[0];
        assert_eq!(p.content_type, "application/apply-patch+yaml");
        assert!(
            p.query.contains("fieldManager=logfleet-controller"),
            "{}",
            p.query
        );
        assert!(p.query.contains("force=true"), "{}", p.query);
        assert_eq!(p.body, o.body, "{} body", o.name);
        assert!(
            p.path.starts_with(if o.api.group.is_empty() {
                "/api/v1/namespaces/logfleet/"
            } else {
                "/apis/"
            }),
            "{}",
            p.path
        );
    }
    let ds = seen
        .iter()
        .find(|s| {
            s.method == "PATCH"
                && s.path == "/apis/apps/v1/namespaces/logfleet/daemonsets/logs-agent"
        })
        .expect("DaemonSet applied");
    assert_eq!(ds.body["metadata"]["ownerReferences"][0]["uid"], "lc-uid");

    // The status: one apply on the status subresource.
    let status: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path == format!("{LC_PATH}/status"))
        .collect();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].method, "PATCH");
    assert!(status[0].query.contains("fieldManager=logfleet-controller"));
    let st = &status[0].body["status"];
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["coverage"]["expected"], 3);
    assert_eq!(st["coverage"]["missing"], 1);
    assert_eq!(st["ready"], "2/3");
    assert_eq!(st["missingNodes"][0]["node"], "node-c");
    assert_eq!(st["missingNodes"][0]["reason"], "FailedCreate");
    assert_eq!(st["missingNodes"][0]["since"], "2026-11-28T10:00:00Z");
    let conds: BTreeMap<&str, (&str, &str)> = st["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or(""),
                (
                    c["status"].as_str().unwrap_or(""),
                    c["reason"].as_str().unwrap_or(""),
                ),
            )
        })
        .collect();
    assert_eq!(conds["Available"], ("False", "NodesMissing"));
    assert_eq!(conds["Progressing"], ("False", "RolloutComplete"));
    assert_eq!(conds["Degraded"], ("True", "NodesMissing"));

    // One coverage event: node-c lost coverage, regarding the collector.
    let events: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.contains("/events") && s.body["reason"] != "CertificateIssued")
        .collect();
    assert_eq!(events.len(), 1, "{:?}", writes(&seen));
    let e = events[0];
    assert_eq!(
        (e.method.as_str(), e.path.as_str()),
        ("POST", "/apis/events.k8s.io/v1/namespaces/logfleet/events")
    );
    assert_eq!(e.body["reason"], "NodeLostCoverage");
    assert_eq!(e.body["type"], "Warning");
    assert_eq!(e.body["regarding"]["kind"], "LogCollector");
    assert!(e.body["note"].as_str().unwrap_or("").contains("node-c"));
    assert_eq!(e.body["reportingController"], "logfleet-controller");

    // Nothing changed: the second reconcile only reads.
    let again = h.reconcile().await;
    assert!(!again.is_empty());
    assert_eq!(writes(&again), Vec::<String>::new());
}

fn conditions(st: &Value) -> BTreeMap<String, (String, String, String)> {
    st["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
            (s("type"), (s("status"), s("reason"), s("message")))
        })
        .collect()
}

#[tokio::test]
async fn over_clickhouse_a_deployment_and_budget_and_the_store_in_the_status() {
    let h = Harness::new(
        collector(
            json!({"aggregator": {"replicas": 3, "clickhouse": {
                "url": "http://clickhouse.logs.svc:8123", "credentialsSecret": "ch-writer"}}}),
            &[],
            false,
        ),
        &["node-a"],
        &["node-a"],
        false,
    );
    h.pushes.answer(AgentsReport::StoreUnavailable(
        "ClickHouse at http://clickhouse.logs.svc:8123 unreachable: connection refused".into(),
    ));
    let seen = h.reconcile().await;
    let applied = writes(&seen);
    let deploy = "PATCH /apis/apps/v1/namespaces/logfleet/deployments/logs-aggregator";
    let pdb = "PATCH /apis/policy/v1/namespaces/logfleet/poddisruptionbudgets/logs-aggregator";
    assert!(applied.iter().any(|w| w == deploy), "{applied:?}");
    assert!(applied.iter().any(|w| w == pdb), "{applied:?}");
    assert!(
        !applied.iter().any(|w| w.contains("statefulsets")),
        "no StatefulSet over ClickHouse: {applied:?}"
    );
    let d = h
        .object("/apis/apps/v1/namespaces/logfleet/deployments/logs-aggregator")
        .expect("deployment stored");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "lc-uid");
    // Asked where unready replicas answer too.
    let asked = h.pushes.0.lock().expect("lock").clone().expect("asked");
    assert!(
        asked.url.contains("logs-aggregator-headless.logfleet.svc"),
        "{}",
        asked.url
    );

    // The stored Deployment has no ready replica yet, and the aggregator
    // said why: Degraded, StoreUnavailable, with ClickHouse's error, and
    // one Warning event.
    let status = seen
        .iter()
        .find(|s| s.path == format!("{LC_PATH}/status"))
        .expect("status written");
    let c = conditions(&status.body["status"]);
    assert_eq!(
        (c["Degraded"].0.as_str(), c["Degraded"].1.as_str()),
        ("True", "StoreUnavailable")
    );
    assert!(
        c["Degraded"].2.contains("connection refused"),
        "{:?}",
        c["Degraded"]
    );
    assert_eq!(c["Available"].1, "StoreUnavailable");
    let warned: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.contains("/events") && s.body["reason"] == "StoreUnavailable")
        .collect();
    assert_eq!(warned.len(), 1, "{applied:?}");
    assert_eq!(warned[0].body["type"], "Warning");

    // ClickHouse is back and the replicas ready: the status clears.
    {
        let mut st = lock(&h.state);
        let d = st
            .objects
            .get_mut("/apis/apps/v1/namespaces/logfleet/deployments/logs-aggregator")
            .expect("deployment");
        d["metadata"]["generation"] = json!(1);
        d["status"] = json!({"observedGeneration": 1, "replicas": 3, "readyReplicas": 3,
                             "updatedReplicas": 3, "availableReplicas": 3});
    }
    h.pushes.answer(AgentsReport::Agents(
        [("node-a".to_owned(), fixed_now())].into_iter().collect(),
    ));
    let seen = h.reconcile().await;
    let status = seen
        .iter()
        .find(|s| s.path == format!("{LC_PATH}/status"))
        .expect("status written");
    let c = conditions(&status.body["status"]);
    assert_eq!(
        (c["Degraded"].0.as_str(), c["Degraded"].1.as_str()),
        ("False", "AsExpected")
    );
    assert_eq!(c["Available"].0, "True", "{:?}", c["Available"]);
    assert!(seen
        .iter()
        .any(|s| s.path.contains("/events") && s.body["reason"] == "StoreAvailable"));
}

#[tokio::test]
async fn drift_and_config_changes_are_applied_others_fields_survive() {
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a"],
        &["node-a"],
        false,
    );
    h.reconcile().await;
    let ds_path = "/apis/apps/v1/namespaces/logfleet/daemonsets/logs-agent";
    let hash_of = |v: &Value| {
        v["spec"]["template"]["metadata"]["annotations"]["logfleet.dev/config-hash"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let first_hash = hash_of(&lock(&h.state).objects[ds_path]);

    // `kubectl rollout restart` (another field manager) adds a template
    // annotation: not ours, nothing to undo.
    {
        let mut st = lock(&h.state);
        let ds = st.objects.get_mut(ds_path).expect("ds");
        ds["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
            json!("2026-11-28T09:59:00Z");
    }
    assert_eq!(writes(&h.reconcile().await), Vec::<String>::new());

    // Someone edits a field we own: applied back.
    {
        let mut st = lock(&h.state);
        let ds = st.objects.get_mut(ds_path).expect("ds");
        ds["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:latest");
    }
    assert_eq!(writes(&h.reconcile().await), [format!("PATCH {ds_path}")]);

    // A configuration change: the ConfigMap and a new hash on the template.
    {
        let mut st = lock(&h.state);
        let lc = st.objects.get_mut(LC_PATH).expect("lc");
        lc["spec"]["agent"] = json!({"compression": "gzip"});
        lc["metadata"]["generation"] = json!(2);
    }
    let seen = h.reconcile().await;
    let w = writes(&seen);
    assert!(
        w.contains(&"PATCH /api/v1/namespaces/logfleet/configmaps/logs-agent".to_string()),
        "{w:?}"
    );
    assert!(w.contains(&format!("PATCH {ds_path}")), "{w:?}");
    assert!(
        !w.iter().any(|p| p.contains("statefulsets")),
        "the aggregator is not touched: {w:?}"
    );
    let ds = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path == ds_path)
        .expect("ds patch");
    assert_ne!(hash_of(&ds.body), first_hash);
    assert_eq!(
        ds.body["spec"]["template"]["metadata"]["annotations"]
            .get("kubectl.kubernetes.io/restartedAt"),
        None,
        "we never send fields we do not own"
    );

    // Taking a setting away is a change too: the live ConfigMap still
    // holds every key we send, yet it must be applied without the old one.
    {
        let mut st = lock(&h.state);
        st.objects.get_mut(LC_PATH).expect("lc")["spec"]["agent"] =
            json!({"compression": "gzip", "filters": {"excludeNamespaces": ["kube-system"]}});
    }
    let with_filter = writes(&h.reconcile().await);
    assert!(
        with_filter
            .iter()
            .any(|w| w.ends_with("/configmaps/logs-agent")),
        "{with_filter:?}"
    );
    {
        let mut st = lock(&h.state);
        st.objects.get_mut(LC_PATH).expect("lc")["spec"]["agent"] = json!({"compression": "gzip"});
    }
    let removed = h.reconcile().await;
    let cm = removed
        .iter()
        .find(|s| s.method == "PATCH" && s.path.ends_with("/configmaps/logs-agent"))
        .expect("the ConfigMap is applied without the filter");
    assert!(cm.body["data"].get("LOGFLEET_EXCLUDE_NAMESPACE").is_none());
}

/// On OpenShift too, no finalizer (`oc delete -f deploy/logfleet.yaml`
/// takes the controller with the collector, and one would hang there): the
/// agents' SCC is shipped in deploy/openshift.yaml, so the controller
/// writes no SCC; it grants the agents `use` of it in their ClusterRole.
#[tokio::test]
async fn on_openshift_no_finalizer_and_no_scc_is_written() {
    let h = Harness::new(collector(json!({}), &[], false), &["node-a"], &[], true);
    let seen = h.reconcile().await;
    let w = writes(&seen);
    assert!(!w.iter().any(|p| p == &format!("PATCH {LC_PATH}")), "{w:?}");
    assert!(
        !w.iter().any(|p| p.contains("securitycontextconstraints")),
        "{w:?}"
    );
    assert!(h.lc().metadata.finalizers.unwrap_or_default().is_empty());
    let role = seen
        .iter()
        .find(|s| {
            s.method == "PATCH"
                && s.path.ends_with(&format!(
                    "/clusterroles/{}",
                    render::agent_role_name("logs", "logfleet")
                ))
        })
        .expect("the agents' ClusterRole");
    assert!(
        role.body["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |r| r["resourceNames"] == json!([logfleet_controller::openshift::AGENT_SCC])
                    && r["verbs"] == json!(["use"])
            ),
        "{}",
        role.body
    );
    assert!(
        seen.iter()
            .any(|s| s.method == "GET" && s.path == "/api/v1/namespaces/logfleet"),
        "project node selector read"
    );

    // A collector an earlier version gave its finalizer, deleted: the
    // finalizer comes off, nothing else is written.
    let h = Harness::new(
        collector(json!({}), &[FINALIZER], true),
        &["node-a"],
        &[],
        true,
    );
    assert_eq!(writes(&h.reconcile().await), [format!("PATCH {LC_PATH}")]);
}

/// Issue 11: the agents' ClusterRole and binding are cluster-scoped, so no
/// owner reference removes them and (off OpenShift) no finalizer holds a
/// collector for them: a reconcile deletes those whose collector is gone,
/// and leaves the others.
#[tokio::test]
async fn agent_rbac_of_deleted_collectors_is_swept() {
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a"],
        &["node-a"],
        false,
    );
    let seen = h.reconcile().await;
    let role = &format!(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/{}",
        render::agent_role_name("logs", "logfleet")
    );
    let applied = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path == *role)
        .expect("the agents' ClusterRole is applied");
    assert_eq!(applied.body["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(
        applied.body["metadata"]["annotations"]["logfleet.dev/collector"],
        "logfleet/logs"
    );
    // A collector deleted while no controller ran left its RBAC behind.
    let gone = render::agent_role_name("gone", "old");
    let gone_role = &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{gone}");
    let gone_binding = &format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{gone}");
    // And this collector's role under the name an earlier version gave it
    // (no hash: another collector's could have had the same).
    let old = "logfleet-logfleet-logs-agent";
    let old_role = &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{old}");
    let old_binding = &format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{old}");
    {
        let mut st = lock(&h.state);
        let mut orphan = st.objects[role].clone();
        orphan["metadata"]["name"] = json!(gone);
        orphan["metadata"]["annotations"]["logfleet.dev/collector"] = json!("old/gone");
        st.objects.insert(gone_role.into(), orphan.clone());
        orphan["kind"] = json!("ClusterRoleBinding");
        st.objects.insert(gone_binding.into(), orphan);
        let mut renamed = st.objects[role].clone();
        renamed["metadata"]["name"] = json!(old);
        st.objects.insert(old_role.into(), renamed.clone());
        renamed["kind"] = json!("ClusterRoleBinding");
        st.objects.insert(old_binding.into(), renamed);
    }
    let seen = h.reconcile().await;
    let deletes: Vec<String> = writes(&seen)
        .into_iter()
        .filter(|w| w.starts_with("DELETE"))
        .collect();
    let mut deletes = deletes;
    deletes.sort();
    let mut want = vec![
        format!("DELETE {gone_binding}"),
        format!("DELETE {gone_role}"),
        format!("DELETE {old_binding}"),
        format!("DELETE {old_role}"),
    ];
    want.sort();
    assert_eq!(deletes, want);
    let st = lock(&h.state);
    assert!(!st.objects.contains_key(gone_role) && !st.objects.contains_key(gone_binding));
    assert!(!st.objects.contains_key(old_role) && !st.objects.contains_key(old_binding));
    assert!(
        st.objects.contains_key(role),
        "the live collector's role stays"
    );
}

/// An object the API server refuses once ended the reconcile before the
/// status was written, leaving a stale Available=True: now the status says
/// ApplyFailed with the server's message, the rest is still read, one
/// warning event goes out, and the reconcile fails to be tried again.
#[tokio::test]
async fn an_apply_the_api_server_refuses_is_in_the_status() {
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a"],
        &["node-a"],
        false,
    );
    h.reconcile().await;
    let sts = "/apis/apps/v1/namespaces/logfleet/statefulsets/logs-aggregator";
    {
        let mut st = lock(&h.state);
        st.refuse.push(sts.into());
        st.objects.remove(sts);
        let lc = st.objects.get_mut(LC_PATH).expect("lc");
        lc["metadata"]["generation"] = json!(2);
    }
    let (r, seen) = h.try_reconcile().await;
    assert!(r.is_err(), "tried again");
    let degraded = condition(&seen, "Degraded");
    assert_eq!(degraded["reason"], "ApplyFailed", "{degraded}");
    assert!(
        degraded["message"].as_str().unwrap().contains("10GB"),
        "{degraded}"
    );
    let available = condition(&seen, "Available");
    assert_eq!(available["status"], "False", "no aggregator: {available}");
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && s.body["reason"] == "ApplyFailed"),
        "a warning event"
    );
    // Objects after the refused one are still read, not applied.
    assert!(!writes(&seen)
        .iter()
        .any(|w| w.contains("/networkpolicies/")));
}

/// Creating a LogCollector must not amount to root on every node: the
/// administrator's policy on the controller (its namespace, its image
/// repository, the log and state directories) decides what is rolled out.
/// A collector outside it gets nothing applied and says why.
#[tokio::test]
async fn what_the_policy_does_not_allow_is_not_rolled_out() {
    use logfleet_controller::policy::Policy;
    for (spec, ns_allowed, want) in [
        (
            json!({"image": "evil.io/root:1"}),
            "logfleet",
            "not an image this controller runs",
        ),
        (
            json!({"agent": {"hostPaths": {"state": "/etc"}}}),
            "logfleet",
            "outside the directories agents may mount",
        ),
        (json!({}), "other", "not honoured by this controller"),
    ] {
        let h = Harness::new(collector(spec, &[], false), &["node-a"], &["node-a"], false)
            .with_policy(Policy::default_for(ns_allowed));
        let seen = h.reconcile().await;
        let w = writes(&seen);
        assert!(
            !w.iter().any(|p| p.contains("/daemonsets/")
                || p.contains("/configmaps/")
                || p.contains("/statefulsets/")
                || p.contains("/clusterroles")),
            "nothing rolled out: {w:?}"
        );
        let degraded = condition(&seen, "Degraded");
        assert_eq!(degraded["reason"], "InvalidSpec", "{degraded}");
        assert!(
            degraded["message"].as_str().unwrap().contains(want),
            "{degraded}"
        );
    }
    // The default collector under the default policy is rolled out.
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a"],
        &["node-a"],
        false,
    )
    .with_policy(Policy::default_for("logfleet"));
    let w = writes(&h.reconcile().await);
    assert!(w.iter().any(|p| p.contains("/daemonsets/")), "{w:?}");
}

/// A spec every agent would crash on (`kube-(` passed the CRD, rendered,
/// and each agent exited with "bad pattern") is not rolled out: the running
/// ConfigMap and DaemonSet are left as they are, the status says
/// Degraded/InvalidSpec with the reason, and a warning event is published.
#[tokio::test]
async fn an_invalid_spec_keeps_the_last_good_configuration_running() {
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a"],
        &["node-a"],
        false,
    );
    h.reconcile().await;
    {
        let mut st = lock(&h.state);
        let lc = st.objects.get_mut(LC_PATH).expect("lc");
        lc["spec"]["agent"] = json!({"filters": {"excludeNamespaces": ["kube-("]}});
        lc["metadata"]["generation"] = json!(2);
    }
    let seen = h.reconcile().await;
    let w = writes(&seen);
    assert!(
        !w.iter()
            .any(|p| p.contains("/configmaps/") || p.contains("/daemonsets/")),
        "nothing rolled out: {w:?}"
    );
    let degraded = condition(&seen, "Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec", "{degraded}");
    assert!(
        degraded["message"].as_str().unwrap().contains("kube-("),
        "{degraded}"
    );
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && s.body["reason"] == "InvalidSpec"),
        "a warning event: {w:?}"
    );
    // Fixed: rolled out as usual.
    {
        let mut st = lock(&h.state);
        let lc = st.objects.get_mut(LC_PATH).expect("lc");
        lc["spec"]["agent"] = json!({"filters": {"excludeNamespaces": ["kube-.*"]}});
        lc["metadata"]["generation"] = json!(3);
    }
    let w = writes(&h.reconcile().await);
    assert!(
        w.iter().any(|p| p.ends_with("/configmaps/logs-agent")),
        "{w:?}"
    );
}

/// Off OpenShift nothing needs a finalizer (owner references take every
/// child), and one would hold a deleted collector, its namespace and the
/// CRD in Terminating when `kubectl delete -f deploy/logfleet.yaml` takes
/// the controller first. The deletion order of that command is replayed:
/// the collector is deleted while no controller runs, then a controller
/// that comes back finds it; nothing may wait for it.
#[tokio::test]
async fn off_openshift_no_finalizer_holds_a_deletion() {
    // A new collector: applied, and no finalizer added.
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a"],
        &["node-a"],
        false,
    );
    let w = writes(&h.reconcile().await);
    assert!(!w.iter().any(|p| p == &format!("PATCH {LC_PATH}")), "{w:?}");
    assert!(w.iter().any(|p| p.contains("/daemonsets/")), "{w:?}");

    // One left by an earlier version is taken off.
    let h = Harness::new(
        collector(json!({}), &[FINALIZER, "other.io/keep"], false),
        &["node-a"],
        &["node-a"],
        false,
    );
    let seen = h.reconcile().await;
    let p = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path == LC_PATH)
        .expect("the finalizer removed");
    assert_eq!(p.content_type, "application/merge-patch+json");
    assert_eq!(p.body["metadata"]["finalizers"], json!(["other.io/keep"]));
    assert!(p.body["metadata"]["resourceVersion"].is_string());

    // Deleted (the bundle went first, the collector is Terminating): the
    // finalizer comes off and nothing is applied.
    let h = Harness::new(
        collector(json!({}), &[FINALIZER], true),
        &["node-a"],
        &[],
        false,
    );
    let w = writes(&h.reconcile().await);
    assert_eq!(
        w,
        [format!("PATCH {LC_PATH}")],
        "only the finalizer removal"
    );
}

const SECRETS: &str = "/api/v1/namespaces/logfleet/secrets";

fn secret_value(secret: &Value, key: &str) -> String {
    use base64::Engine;
    let b = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {secret}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64"),
    )
    .expect("utf-8")
    .trim()
    .to_owned()
}

fn sixty_one_days_later() -> Timestamp {
    "2027-01-28T10:00:00Z".parse().expect("time")
}

#[tokio::test]
async fn tokens_and_certificates_are_created_once_wired_in_and_renewed_when_due() {
    let h = Harness::new(
        collector(json!({}), &[], false),
        &["node-a"],
        &["node-a"],
        false,
    );
    h.reconcile().await;

    // Random tokens, a CA and a serving certificate signed by it, all
    // owned by the collector.
    let creds = h
        .object(&format!("{SECRETS}/logs-credentials"))
        .expect("tokens");
    let (push, read) = (
        secret_value(&creds, "push-token"),
        secret_value(&creds, "read-token"),
    );
    assert_eq!(push.len(), 64);
    assert_ne!(push, read);
    let ca = h.object(&format!("{SECRETS}/logs-ca")).expect("CA");
    let tls = h
        .object(&format!("{SECRETS}/logs-aggregator-tls"))
        .expect("serving");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(secret_value(&tls, "ca.crt"), secret_value(&ca, "tls.crt"));
    for s in [&creds, &ca, &tls] {
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "lc-uid");
    }

    // The agent mounts only the push token and the CA, and talks TLS.
    let ds = h
        .object("/apis/apps/v1/namespaces/logfleet/daemonsets/logs-agent")
        .expect("ds");
    let vols = &ds["spec"]["template"]["spec"]["volumes"];
    let items = |name: &str| -> Vec<String> {
        vols.as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| {
                v["secret"]["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .map(|i| i["key"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(items("credentials"), ["push-token"]);
    assert_eq!(items("tls"), ["ca.crt"]);
    let cm = h
        .object("/api/v1/namespaces/logfleet/configmaps/logs-agent")
        .expect("cm");
    assert!(cm["data"]["LOGFLEET_AGGREGATOR"]
        .as_str()
        .unwrap_or("")
        .starts_with("https://"));

    // The coverage check asks over TLS with the read token and the CA.
    let access = h.pushes.0.lock().expect("lock").clone().expect("asked");
    assert!(
        access
            .url
            .starts_with("https://logs-aggregator.logfleet.svc:"),
        "{}",
        access.url
    );
    assert_eq!(access.read_token.as_deref(), Some(read.as_str()));
    assert_eq!(
        access.ca_pem.as_deref().map(str::trim),
        Some(secret_value(&ca, "tls.crt").trim())
    );

    // Nothing is re-issued while valid.
    let again = h.reconcile().await;
    assert!(
        !writes(&again).iter().any(|w| w.contains("/secrets/")),
        "{:?}",
        writes(&again)
    );

    // Two thirds of the serving certificate's 90 days gone: renewed under
    // the same CA; the tokens stay.
    let later = h.at(sixty_one_days_later);
    let seen = later.reconcile().await;
    let w = writes(&seen);
    assert_eq!(
        w.iter()
            .filter(|w| w.contains("/secrets/"))
            .collect::<Vec<_>>(),
        [&format!("PATCH {SECRETS}/logs-aggregator-tls")],
        "{w:?}"
    );
    let renewed = later
        .object(&format!("{SECRETS}/logs-aggregator-tls"))
        .expect("serving");
    assert_ne!(
        secret_value(&renewed, "tls.crt"),
        secret_value(&tls, "tls.crt")
    );
    assert_eq!(
        secret_value(&renewed, "ca.crt"),
        secret_value(&ca, "tls.crt")
    );
    let events: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.contains("/events") && s.body["reason"] == "CertificateIssued")
        .collect();
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn a_users_token_secret_and_certificate_are_used_not_created() {
    let h = Harness::new(
        collector(
            json!({"tokenSecretName": "mine",
                   "aggregator": {"tls": {"mode": "Secret", "secretName": "from-cert-manager"}}}),
            &[],
            false,
        ),
        &["node-a"],
        &["node-a"],
        false,
    );
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    lock(&h.state).objects.insert(
        format!("{SECRETS}/mine"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine"},
               "data": {"push-token": b64("p"), "read-token": b64("r")}}),
    );
    lock(&h.state).objects.insert(
        format!("{SECRETS}/from-cert-manager"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "from-cert-manager"},
               "data": {"ca.crt": b64("CA PEM")}}),
    );
    let seen = h.reconcile().await;
    assert!(
        !writes(&seen).iter().any(|w| w.contains("/secrets/")),
        "{:?}",
        writes(&seen)
    );
    let access = h.pushes.0.lock().expect("lock").clone().expect("asked");
    assert_eq!(access.read_token.as_deref(), Some("r"));
    assert_eq!(access.ca_pem.as_deref(), Some("CA PEM"));
    let sts = h
        .object("/apis/apps/v1/namespaces/logfleet/statefulsets/logs-aggregator")
        .expect("sts");
    let vols = sts["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(vols.contains("\"secretName\":\"mine\""), "{vols}");
    assert!(
        vols.contains("\"secretName\":\"from-cert-manager\""),
        "{vols}"
    );
}
