//! What one reconcile's pure work costs as the cluster grows: every node or
//! agent pod event recomputes the whole coverage and status of a
//! collector (debounced), so this bounds the controller's CPU per event.
//!
//! `cargo bench -p logfleet-controller --bench coverage`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use logfleet_controller::crd::{LogCollector, LogCollectorSpec, LogCollectorStatus, NodeScope};
use logfleet_controller::render::{self, Options};
use logfleet_controller::status::{compute, Observed};
use serde_json::json;

fn node(i: usize) -> Node {
    let taints = if i.is_multiple_of(10) {
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:05}"), "labels": {
            "kubernetes.io/os": "linux", "kubernetes.io/hostname": format!("node-{i:05}"),
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("node")
}

fn pod(i: usize) -> Pod {
    let ready = i % 50 != 1; // one in fifty agents not ready
    serde_json::from_value(json!({
        "metadata": {"name": format!("logs-agent-{i:05}"), "namespace": "logfleet",
            "labels": {"pod-template-generation": "1"}},
        "spec": {"nodeName": format!("node-{i:05}"), "containers": []},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    }))
    .expect("pod")
}

fn main() {
    let mut lc = LogCollector::new("logs", LogCollectorSpec::default());
    lc.metadata.namespace = Some("logfleet".into());
    lc.spec.agent.tolerate_all_taints = false;
    let ds = render::agent_daemonset(&lc).expect("render");
    let template = ds.spec.template.spec.clone().unwrap_or_default();
    let mut live: DaemonSet = ds.clone();
    live.metadata.generation = Some(1);
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"generation": 1},
        "spec": {"replicas": 1, "selector": {}, "serviceName": "x", "template": {}},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }))
    .expect("sts");
    println!("nodes   status+coverage (median of 21)   render all objects");
    for n in [100usize, 1_000, 5_000, 15_000] {
        let nodes: Vec<Node> = (0..n).map(node).collect();
        // Tainted nodes (every 10th) have no pod: the DaemonSet does not tolerate them.
        let pods: Vec<Pod> = (0..n).filter(|i| !i.is_multiple_of(10)).map(pod).collect();
        let now: k8s_openapi::jiff::Timestamp = "2026-11-28T10:00:00Z".parse().expect("time");
        let pushes: BTreeMap<String, _> = (0..n).map(|i| (format!("node-{i:05}"), now)).collect();
        let mut old = LogCollectorStatus::default();
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            let out = compute(
                Observed {
                    generation: Some(1),
                    daemonset: Some(&live),
                    rendered_template: &template,
                    aggregator: Some((&sts).into()),
                    store_unavailable: None,
                    nodes: &nodes,
                    pods: &pods,
                    scope: &NodeScope::default(),
                    project_node_selector: None,
                    namespace: "logfleet",
                    last_push: Some(&pushes),
                    silence: Duration::from_secs(300),
                    config_hash: "x",
                    progress_deadline: Duration::from_secs(600),
                    invalid_spec: None,
                    apply_error: None,
                    current_revision_hash: None,
                    now,
                },
                &old,
            );
            times.push(t.elapsed());
            old = out.status;
        }
        times.sort();
        let t = Instant::now();
        let objs = render::render(&lc, &Options::default()).expect("render");
        let render_time = t.elapsed();
        let missing = old.coverage.as_ref().map(|c| c.missing).unwrap_or(0);
        println!(
            "{n:>6}  {:>10.2} ms ({missing} missing)       {:>6.1} µs for {} objects",
            times[10].as_secs_f64() * 1e3,
            render_time.as_secs_f64() * 1e6,
            objs.len()
        );
    }
}
