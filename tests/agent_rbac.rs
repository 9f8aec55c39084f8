//! The real agent's requests to the Kubernetes API, each checked as RBAC
//! would: the verb, group and resource the API server derives from the
//! request (k8s.io/apiserver's request-info resolver, encoded in
//! `controller::rbac`) must be granted by the ClusterRole the controller
//! renders for the agents. A request outside the role would be refused in
//! a real cluster (403), and the agent's metadata would stay stale. Pod
//! requests carry the node's field selector: an agent never asks for the
//! whole cluster's pods.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use logfleet_controller::crd::{LogCollector, LogCollectorSpec};
use logfleet_controller::rbac::{allows, attributes};
use logfleet_kubesim::api::{pod, Api};
use serde_json::json;

#[test]
fn every_agent_request_is_granted_by_the_rendered_role() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(Api::start()).unwrap();
    api.put_namespace("shop", json!({"team": "payments"}));
    api.put_replicaset("shop", "checkout-5f7c9d", "checkout");
    api.put_job("batch", "report-1", "report");
    api.put_pod(pod(
        "shop",
        "checkout-5f7c9d-a",
        "uid-a",
        "node-1",
        json!({"app": "checkout"}),
        json!({}),
        Some(("ReplicaSet", "checkout-5f7c9d")),
    ));
    api.put_pod(pod(
        "batch",
        "report-1-b",
        "uid-b",
        "node-1",
        json!({}),
        json!({}),
        Some(("Job", "report-1")),
    ));
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kc).unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let mut agent = Command::new(bin())
        .args([
            "agent",
            "--node-name",
            "node-1",
            "--log-root",
            &root.display().to_string(),
            "--state-dir",
            &dir.path().join("state").display().to_string(),
            "--aggregator",
            "http://127.0.0.1:9",
            "--http-addr",
            "127.0.0.1:0",
            "--metadata",
            "--namespace-labels",
            "team",
        ])
        .env("KUBECONFIG", &kc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wanted = [
        "/api/v1/pods?",
        "/api/v1/namespaces?",
        "/apis/apps/v1/namespaces/shop/replicasets/checkout-5f7c9d",
        "/apis/batch/v1/namespaces/batch/jobs/report-1",
    ];
    let log = wait_for(
        "the agent's lists, watches and owner lookups",
        Duration::from_secs(60),
        || {
            let log = api.request_log();
            let watched = log.iter().filter(|(_, t)| t.contains("watch=true")).count() >= 2;
            (watched
                && wanted
                    .iter()
                    .all(|w| log.iter().any(|(_, t)| t.starts_with(w))))
            .then_some(log)
        },
    );
    let _ = agent.kill();
    let _ = agent.wait();

    let mut lc = LogCollector::new(
        "logs",
        serde_json::from_value::<LogCollectorSpec>(
            json!({"agent": {"metadata": {"namespaceLabels": ["team"]}}}),
        )
        .unwrap(),
    );
    lc.metadata.namespace = Some("logfleet".into());
    let rules = logfleet_controller::render::agent_rules(&lc.spec.agent);
    let without_ns = logfleet_controller::render::agent_rules(
        &serde_json::from_value::<LogCollectorSpec>(json!({}))
            .unwrap()
            .agent,
    );
    for (method, target) in &log {
        let a = attributes(method, target);
        assert!(
            allows(&rules, &a),
            "{method} {target} ({a:?}) is not granted"
        );
        if target.starts_with("/api/v1/pods") {
            assert!(
                target.contains("fieldSelector=spec.nodeName%3Dnode-1"),
                "a pod request for the whole cluster: {target}"
            );
        }
        if target.starts_with("/api/v1/namespaces?") {
            assert!(!allows(&without_ns, &a), "namespaces only when asked for");
        }
    }
}
