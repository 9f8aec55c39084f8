//! A stand-in Kubernetes API server for tests: objects in memory, lists
//! (namespaced and across namespaces), chunked watches, server-side apply
//! (stored as sent, with the status the cluster's own controllers would
//! add), status patches and the finalizer's JSON patch. Every request is
//! recorded. Plain HTTP on 127.0.0.1, one thread per connection.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

#[derive(Default)]
pub struct State {
    /// Object path → object.
    pub objects: BTreeMap<String, Value>,
    /// Open watches: collection path and the connection.
    watches: Vec<(String, TcpStream)>,
    version: u64,
    /// Every request: method and path with query.
    pub requests: Vec<(String, String)>,
}

pub type Shared = Arc<Mutex<State>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn collection(path: &str) -> &str {
    path.rsplit_once('/').map(|(c, _)| c).unwrap_or(path)
}

/// Stores an object and tells the watches of its collection.
pub fn put(state: &Shared, path: &str, mut obj: Value) -> Value {
    let mut st = lock(state);
    st.version += 1;
    obj["metadata"]["resourceVersion"] = json!(st.version.to_string());
    let event = if st.objects.contains_key(path) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    st.objects.insert(path.to_owned(), obj.clone());
    let line = serde_json::to_string(&json!({"type": event, "object": obj})).unwrap() + "\n";
    let coll = collection(path).to_owned();
    st.watches.retain_mut(|(c, conn)| {
        *c != coll
            || write!(conn, "{:x}\r\n{line}\r\n", line.len())
                .and_then(|_| conn.flush())
                .is_ok()
    });
    obj
}

/// `/api/v1/namespaces/x/pods` → `/api/v1/pods`: the list across namespaces.
fn across_namespaces(collection: &str) -> String {
    match collection.split_once("/namespaces/") {
        Some((head, tail)) => match tail.split_once('/') {
            Some((_, rest)) => format!("{head}/{rest}"),
            None => collection.to_owned(),
        },
        None => collection.to_owned(),
    }
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) {
    let body = serde_json::to_vec(body).unwrap();
    let _ = write!(
        conn,
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(&body);
}

fn list_kind(path: &str) -> String {
    let plural = path.rsplit('/').next().unwrap_or("");
    match plural {
        "nodes" => "NodeList",
        "pods" => "PodList",
        "daemonsets" => "DaemonSetList",
        "statefulsets" => "StatefulSetList",
        "logcollectors" => "LogCollectorList",
        _ => "List",
    }
    .into()
}

/// The objects' status as the cluster's own controllers would set it.
fn with_status(mut obj: Value, nodes: usize) -> Value {
    match obj["kind"].as_str() {
        Some("DaemonSet") => {
            obj["metadata"]["generation"] = json!(1);
            obj["status"] = json!({"observedGeneration": 1, "desiredNumberScheduled": nodes,
                "currentNumberScheduled": nodes, "numberReady": nodes, "updatedNumberScheduled": nodes,
                "numberAvailable": nodes, "numberMisscheduled": 0});
        }
        Some("StatefulSet") => {
            obj["metadata"]["generation"] = json!(1);
            obj["status"] = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                "updatedReplicas": 1, "availableReplicas": 1});
        }
        _ => {}
    }
    obj["metadata"]["uid"] = json!(format!(
        "uid-{}",
        obj["metadata"]["name"].as_str().unwrap_or("")
    ));
    obj
}

fn handle(state: Shared, mut conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut len = 0usize;
    let mut content_type = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) <= 2 {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = lower.strip_prefix("content-type:") {
            content_type = v.trim().to_owned();
        }
    }
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let path = path.to_owned();
    lock(&state).requests.push((method.clone(), target.clone()));
    match method.as_str() {
        "GET" if path == "/apis" => respond(
            &mut conn,
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        ),
        "GET" if query.contains("watch=true") => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            let _ = conn.flush();
            lock(&state).watches.push((path, conn));
        }
        "GET" => {
            let st = lock(&state);
            if let Some(o) = st.objects.get(&path) {
                let o = o.clone();
                drop(st);
                respond(&mut conn, 200, &o);
            } else {
                // A list when anything lives below the path, else 404.
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(p, _)| {
                        collection(p) == path || across_namespaces(collection(p)) == path
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                let is_collection = path.ends_with('s') && !path.contains("/logs-");
                let version = st.version.to_string();
                drop(st);
                if is_collection {
                    respond(
                        &mut conn,
                        200,
                        &json!({"apiVersion": "v1", "kind": list_kind(&path),
                        "metadata": {"resourceVersion": version}, "items": items}),
                    );
                } else {
                    respond(
                        &mut conn,
                        404,
                        &json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "NotFound", "code": 404}),
                    );
                }
            }
        }
        "POST" => respond(&mut conn, 201, &body),
        "PATCH" => {
            let nodes = lock(&state)
                .objects
                .keys()
                .filter(|p| p.starts_with("/api/v1/nodes/"))
                .count();
            if let Some(base) = path.strip_suffix("/status") {
                let Some(mut obj) = lock(&state).objects.get(base).cloned() else {
                    return respond(&mut conn, 404, &json!({}));
                };
                obj["status"] = body["status"].clone();
                let stored = put(&state, base, obj);
                respond(&mut conn, 200, &stored);
            } else if content_type.starts_with("application/json-patch") {
                let Some(mut obj) = lock(&state).objects.get(&path).cloned() else {
                    return respond(&mut conn, 404, &json!({}));
                };
                for op in body.as_array().into_iter().flatten() {
                    if op["op"] == "add" && op["path"] == "/metadata/finalizers" {
                        obj["metadata"]["finalizers"] = op["value"].clone();
                    }
                }
                let stored = put(&state, &path, obj);
                respond(&mut conn, 200, &stored);
            } else {
                let stored = put(&state, &path, with_status(body, nodes));
                respond(&mut conn, 200, &stored);
            }
        }
        _ => respond(&mut conn, 405, &json!({})),
    }
}

pub fn fake_api() -> (String, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state: Shared = Arc::default();
    let s = state.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || handle(s, conn));
        }
    });
    (url, state)
}

/// Writes a kubeconfig for `server` (no credentials) into `dir`.
pub fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: me\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: me\n\
         current-context: fake\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// The writes seen so far, as `METHOD /path`.
pub fn writes(state: &Shared) -> Vec<String> {
    lock(state)
        .requests
        .iter()
        .filter(|(m, _)| m != "GET")
        .map(|(m, t)| format!("{m} {}", t.split('?').next().unwrap_or("")))
        .collect()
}
