//! `logfleet controller`, the real binary, against a stand-in API server
//! that serves lists and watches from memory: the collector gets its
//! finalizer and its objects, and a node joining the cluster shows up in
//! the status within seconds, then its agent when it runs.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    /// Object path → object.
    objects: BTreeMap<String, Value>,
    /// Open watches: collection path and the connection.
    watches: Vec<(String, TcpStream)>,
    version: u64,
    /// Request lines of writes.
    writes: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn collection(path: &str) -> &str {
    path.rsplit_once('/').map(|(c, _)| c).unwrap_or(path)
}

/// Stores an object and tells the watches of its collection.
fn put(state: &Shared, path: &str, mut obj: Value) -> Value {
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
    if method != "GET" {
        lock(&state).writes.push(format!("{method} {path}"));
    }
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
                    .filter(|(p, _)| collection(p) == path)
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

fn fake_api() -> (String, Shared) {
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

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn agent_pod(node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("logs-agent-{node}"), "namespace": "logfleet",
            "labels": {"app.kubernetes.io/name": "logfleet", "app.kubernetes.io/instance": "logs",
                "app.kubernetes.io/component": "agent", "app.kubernetes.io/part-of": "logfleet",
                "app.kubernetes.io/managed-by": "logfleet-controller", "pod-template-generation": "1"}},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "x"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
}

const LC: &str = "/apis/logfleet.dev/v1alpha1/namespaces/logfleet/logcollectors/logs";

struct Controller(Child);
impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coverage(state: &Shared) -> Option<(i64, i64, Vec<String>)> {
    let st = lock(state);
    let c = &st.objects.get(LC)?["status"]["coverage"];
    let missing = st.objects[LC]["status"]["missingNodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    format!(
                        "{}:{}",
                        m["node"].as_str().unwrap_or(""),
                        m["reason"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some((c["expected"].as_i64()?, c["missing"].as_i64()?, missing))
}

#[test]
fn controller_applies_and_follows_nodes_and_agents() {
    let (server, state) = fake_api();
    put(&state, "/api/v1/nodes/node-a", node("node-a"));
    put(
        &state,
        "/api/v1/namespaces/logfleet/pods/logs-agent-node-a",
        agent_pod("node-a"),
    );
    put(
        &state,
        LC,
        json!({"apiVersion": "logfleet.dev/v1alpha1", "kind": "LogCollector",
        "metadata": {"name": "logs", "namespace": "logfleet", "uid": "lc-uid", "generation": 1},
        "spec": {}}),
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: me\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: me\n\
         current-context: fake\n")).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let _c = Controller(
        Command::new(bin())
            .args([
                "controller",
                "--namespace",
                "logfleet",
                "--leader-election",
                "false",
                "--debounce",
                "200ms",
                "--http-addr",
                &http,
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // The finalizer, then every object and a status: one node, covered.
    wait_for("the first status", Duration::from_secs(30), || {
        coverage(&state).filter(|(e, m, _)| (*e, *m) == (1, 0))
    });
    {
        let st = lock(&state);
        assert_eq!(
            st.objects[LC]["metadata"]["finalizers"],
            json!(["logfleet.dev/cleanup"])
        );
        for p in [
            "/apis/apps/v1/namespaces/logfleet/daemonsets/logs-agent",
            "/apis/apps/v1/namespaces/logfleet/statefulsets/logs-aggregator",
            "/api/v1/namespaces/logfleet/configmaps/logs-agent",
            "/api/v1/namespaces/logfleet/services/logs-aggregator",
        ] {
            assert!(st.objects.contains_key(p), "{p} applied");
        }
        let avail = st.objects[LC]["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Available")
            .unwrap()
            .clone();
        assert_eq!(avail["status"], "True", "{avail}");
    }

    // A node joins: within seconds it is expected and missing its agent.
    put(&state, "/api/v1/nodes/node-b", node("node-b"));
    wait_for("node-b in the status", Duration::from_secs(15), || {
        coverage(&state).filter(|(e, m, _)| (*e, *m) == (2, 1))
    });
    assert_eq!(coverage(&state).unwrap().2, ["node-b:FailedCreate"]);

    // Its agent runs: covered again.
    put(
        &state,
        "/api/v1/namespaces/logfleet/pods/logs-agent-node-b",
        agent_pod("node-b"),
    );
    wait_for("node-b covered", Duration::from_secs(15), || {
        coverage(&state).filter(|(e, m, _)| (*e, *m) == (2, 0))
    });

    // Metrics tell the same.
    let metrics = http_get(&http, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains(
            r#"logfleet_nodes{namespace="logfleet",name="logs",state="covered",reason=""} 2"#
        ),
        "{metrics}"
    );

    // A change that changes nothing (a node re-sent as is) triggers a
    // reconcile that only reads.
    let reconciles = |m: &str| metric(m, "logfleet_controller_reconciles_total");
    let r0 = reconciles(&metrics);
    let w0 = lock(&state).writes.clone();
    let a = lock(&state).objects["/api/v1/nodes/node-a"].clone();
    put(&state, "/api/v1/nodes/node-a", a);
    wait_for(
        "a reconcile after the node event",
        Duration::from_secs(15),
        || {
            let m = http_get(&http, "/metrics")?;
            (reconciles(&m) > r0).then_some(())
        },
    );
    assert_eq!(lock(&state).writes, w0, "an unchanged cluster got writes");
}
