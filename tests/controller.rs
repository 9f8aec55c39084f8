//! `logfleet controller`, the real binary, against a stand-in API server
//! that serves lists and watches from memory: the collector gets its
//! finalizer and its objects, and a node joining the cluster shows up in
//! the status within seconds, then its agent when it runs.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fake_api::{fake_api, kubeconfig, lock, put, writes, Shared};
use common::*;
use serde_json::{json, Value};

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
    let kubeconfig = kubeconfig(dir.path(), &server);
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

    // Every object and a status: one node, covered. No finalizer: this
    // is not OpenShift, and owner references take every child.
    wait_for("the first status", Duration::from_secs(30), || {
        coverage(&state).filter(|(e, m, _)| (*e, *m) == (1, 0))
    });
    {
        let st = lock(&state);
        assert!(
            st.objects[LC]["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty()),
            "{}",
            st.objects[LC]["metadata"]
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
    let w0 = writes(&state);
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
    assert_eq!(writes(&state), w0, "an unchanged cluster got writes");

    // Every request the real controller made, watches included, is one the
    // bundle's ClusterRole allows (as the API server would check it).
    let rules = logfleet_controller::bundle::controller_rules();
    let requests = lock(&state).requests.clone();
    assert!(
        requests.iter().any(|(_, t)| t.contains("watch=")),
        "{requests:?}"
    );
    for (method, target) in &requests {
        let a = logfleet_controller::rbac::attributes(method, target);
        assert!(
            logfleet_controller::rbac::allows(&rules, &a),
            "the bundle's ClusterRole does not allow {a:?} ({method} {target})"
        );
    }
}
