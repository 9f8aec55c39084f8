//! A stand-in Kubernetes API server for the pods of simulated nodes: what
//! an agent's metadata watch reads. It serves, from memory and over plain
//! HTTP on loopback:
//!
//! - `GET /api/v1/pods` and `GET /api/v1/namespaces`: lists, with
//!   `fieldSelector=spec.nodeName=<node>` for pods, and watches
//!   (`watch=true`) that stream `ADDED`/`MODIFIED`/`DELETED` events and,
//!   when asked with `allowWatchBookmarks=true`, `BOOKMARK`s;
//! - `GET /apis/apps/v1/namespaces/<ns>/replicasets/<name>` and
//!   `GET /apis/batch/v1/namespaces/<ns>/jobs/<name>`: single objects, for
//!   owner lookups.
//!
//! Every request is counted, so a test can tell a watch from a relist loop;
//! [`Api::set_down`] makes every request fail with 503, as an unreachable
//! or overloaded API server does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;

#[derive(Default)]
struct Store {
    /// Collection (`pods`, `namespaces`) → uid or name → object.
    collections: BTreeMap<String, BTreeMap<String, Value>>,
    /// Path → object, for single gets.
    objects: BTreeMap<String, Value>,
    version: u64,
    /// Recent events (version, collection, event), so that a watch from a
    /// list's resourceVersion misses nothing that happened in between.
    history: std::collections::VecDeque<(u64, String, Value)>,
}

const HISTORY: usize = 10_000;

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<(String, Value)>,
    down: AtomicBool,
    lists: AtomicU64,
    watches: AtomicU64,
    /// Every request: method, path and query.
    requests: Mutex<Vec<(String, String)>>,
}

/// A running stand-in API server.
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
    url: String,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Store> {
    s.store.lock().unwrap_or_else(|p| p.into_inner())
}

fn param(query: &Option<String>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_deref()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Whether `obj` passes a field selector of the form `spec.nodeName=<n>`
/// (the only one agents use); any other selector matches everything.
fn selected(obj: &Value, selector: Option<&str>) -> bool {
    match selector.and_then(|s| s.strip_prefix("spec.nodeName=")) {
        Some(node) => obj["spec"]["nodeName"].as_str() == Some(node),
        None => true,
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

async fn collection(
    State(s): State<Arc<Shared>>,
    Path(coll): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    record(&s, &format!("/api/v1/{coll}"), query.as_deref());
    if s.down.load(Ordering::Relaxed) {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server is down",
        );
    }
    let selector = param(&query, "fieldSelector");
    if param(&query, "watch").as_deref() == Some("true")
        || param(&query, "watch").as_deref() == Some("1")
    {
        s.watches.fetch_add(1, Ordering::Relaxed);
        let bookmarks = param(&query, "allowWatchBookmarks").as_deref() == Some("true");
        let since: u64 = param(&query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (rx, version, missed) = {
            let st = lock(&s);
            let missed: Vec<(String, Value)> = st
                .history
                .iter()
                .filter(|(v, _, _)| since > 0 && *v > since)
                .map(|(_, c, e)| (c.clone(), e.clone()))
                .collect();
            (s.events.subscribe(), st.version, missed)
        };
        let first = bookmarks.then(|| {
            Ok::<_, Infallible>(Bytes::from(
                json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                    "metadata": {"resourceVersion": version.to_string()}}})
                .to_string()
                    + "\n",
            ))
        });
        let shared = s.clone();
        let events = tokio_stream::iter(missed.into_iter().map(Ok))
            .chain(tokio_stream::wrappers::BroadcastStream::new(rx))
            .take_while(move |_| !shared.down.load(Ordering::Relaxed))
            // A watcher that fell behind the channel ends its watch, as an
            // API server ends a slow one: the client watches again from its
            // last resourceVersion and the history gives it what it missed.
            .take_while(|ev| ev.is_ok())
            .filter_map(move |ev| {
                let (c, line) = ev.ok()?;
                (c == coll).then_some(line)
            })
            .filter(move |line: &Value| selected(&line["object"], selector.as_deref()))
            .map(|line| Ok::<_, Infallible>(Bytes::from(line.to_string() + "\n")));
        let body = tokio_stream::iter(first).chain(events);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| {
                status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "response",
                )
            });
    }
    s.lists.fetch_add(1, Ordering::Relaxed);
    let st = lock(&s);
    let items: Vec<Value> = st
        .collections
        .get(&coll)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| selected(o, selector.as_deref()))
        .cloned()
        .collect();
    let kind = if coll == "pods" {
        "PodList"
    } else {
        "NamespaceList"
    };
    let body = json!({"kind": kind, "apiVersion": "v1",
        "metadata": {"resourceVersion": st.version.to_string()}, "items": items});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn record(s: &Shared, path: &str, query: Option<&str>) {
    if let Ok(mut r) = s.requests.lock() {
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        r.push(("GET".into(), target));
    }
}

async fn object(State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    record(&s, uri.path(), uri.query());
    if s.down.load(Ordering::Relaxed) {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server is down",
        );
    }
    match lock(&s).objects.get(uri.path()) {
        Some(o) => ([("content-type", "application/json")], o.to_string()).into_response(),
        None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
    }
}

impl Api {
    /// Starts serving on a free loopback port (inside the current tokio
    /// runtime).
    pub async fn start() -> std::io::Result<Api> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            down: AtomicBool::new(false),
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/api/v1/{collection}", get(collection))
            .route(
                "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
                get(object),
            )
            .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(object))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Api { shared, url })
    }

    /// The server's address, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes a kubeconfig for this server (no credentials) to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n\
                 users:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n\
                 current-context: sim\n",
                self.url
            ),
        )
    }

    fn event(&self, coll: &str, kind: &str, key: &str, mut obj: Value) {
        let mut st = lock(&self.shared);
        st.version += 1;
        obj["metadata"]["resourceVersion"] = json!(st.version.to_string());
        let m = st.collections.entry(coll.to_owned()).or_default();
        if kind == "DELETED" {
            m.remove(key);
        } else {
            m.insert(key.to_owned(), obj.clone());
        }
        // Sent under the lock: watchers see events in version order.
        let ev = json!({"type": kind, "object": obj});
        let v = st.version;
        st.history.push_back((v, coll.to_owned(), ev.clone()));
        if st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.shared.events.send((coll.to_owned(), ev));
    }

    /// Adds or replaces a pod (keyed by `metadata.uid`).
    pub fn put_pod(&self, pod: Value) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let exists = lock(&self.shared)
            .collections
            .get("pods")
            .is_some_and(|m| m.contains_key(&uid));
        let kind = if exists { "MODIFIED" } else { "ADDED" };
        self.event("pods", kind, &uid, pod);
    }

    /// Deletes a pod by uid.
    pub fn delete_pod(&self, uid: &str) {
        let pod = lock(&self.shared)
            .collections
            .get("pods")
            .and_then(|m| m.get(uid).cloned());
        if let Some(p) = pod {
            self.event("pods", "DELETED", uid, p);
        }
    }

    /// Adds or replaces a namespace.
    pub fn put_namespace(&self, name: &str, labels: Value) {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels}});
        self.event("namespaces", "ADDED", name, ns);
    }

    /// Stores a ReplicaSet owned by a Deployment, for owner lookups.
    pub fn put_replicaset(&self, namespace: &str, name: &str, deployment: &str) {
        self.put_owned(
            &format!("/apis/apps/v1/namespaces/{namespace}/replicasets/{name}"),
            "apps/v1",
            "ReplicaSet",
            namespace,
            name,
            ("apps/v1", "Deployment", deployment),
        );
    }

    /// Stores a Job owned by a CronJob, for owner lookups.
    pub fn put_job(&self, namespace: &str, name: &str, cronjob: &str) {
        self.put_owned(
            &format!("/apis/batch/v1/namespaces/{namespace}/jobs/{name}"),
            "batch/v1",
            "Job",
            namespace,
            name,
            ("batch/v1", "CronJob", cronjob),
        );
    }

    fn put_owned(
        &self,
        path: &str,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        owner: (&str, &str, &str),
    ) {
        let obj = json!({"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                "resourceVersion": "1",
                "ownerReferences": [{"apiVersion": owner.0, "kind": owner.1, "name": owner.2,
                    "uid": format!("uid-{}", owner.2), "controller": true}]}});
        lock(&self.shared).objects.insert(path.to_owned(), obj);
    }

    /// Makes every request fail with 503 (and ends open watches), or
    /// serves again.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Relaxed);
        if down {
            // Wake the watches so that they notice and end.
            let _ = self.shared.events.send((String::new(), Value::Null));
        }
    }

    /// Every request so far, as (method, path with query): what RBAC would
    /// be asked about.
    pub fn request_log(&self) -> Vec<(String, String)> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Lists and watches served so far.
    pub fn requests(&self) -> (u64, u64) {
        (
            self.shared.lists.load(Ordering::Relaxed),
            self.shared.watches.load(Ordering::Relaxed),
        )
    }
}

/// A pod object as the API server returns it: on `node`, with `labels`,
/// `annotations` and an optional controlling owner (kind, name).
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    labels: Value,
    annotations: Value,
    owner: Option<(&str, &str)>,
) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid,
            "labels": labels, "annotations": annotations},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running"}});
    if let Some((kind, owner)) = owner {
        let api = if kind == "Job" { "batch/v1" } else { "apps/v1" };
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": api, "kind": kind,
            "name": owner, "uid": format!("uid-{owner}"), "controller": true}]);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let q = Some("fieldSelector=spec.nodeName%3Dnode-1&watch=true".to_string());
        assert_eq!(
            param(&q, "fieldSelector").as_deref(),
            Some("spec.nodeName=node-1")
        );
        assert_eq!(param(&q, "watch").as_deref(), Some("true"));
        assert_eq!(param(&q, "x"), None);
        let p = json!({"spec": {"nodeName": "node-1"}});
        assert!(selected(&p, Some("spec.nodeName=node-1")));
        assert!(!selected(&p, Some("spec.nodeName=node-2")));
    }
}
