//! The agent's pod watch (kube-rs's real client and watcher) against the
//! stand-in API server: pods of this node only, workloads through their
//! owners, namespace labels, deleted pods kept, an unreachable server
//! reported as stale and caught up after, and one list then watches (no
//! relist loop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use logfleet_agent::metadata::watch::{self, WatchConfig};
use logfleet_agent::metadata::{Directory, Limits, PodInfo, Selection};
use logfleet_agent::report::{Report, Source};
use logfleet_kubesim::api::{pod, Api};
use serde_json::json;

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn label<'a>(info: &'a PodInfo, name: &str) -> Option<&'a str> {
    info.labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_this_node_with_workloads_labels_and_staleness() {
    let api = Api::start().await.unwrap();
    api.put_namespace("shop", json!({"team": "payments"}));
    api.put_replicaset("shop", "checkout-5f7c9d", "checkout");
    api.put_job("batch", "report-28911", "report");
    api.put_pod(pod(
        "shop",
        "checkout-5f7c9d-abcde",
        "uid-checkout",
        "node-1",
        json!({"app": "checkout", "app.kubernetes.io/name": "checkout", "pod-template-hash": "5f7c9d"}),
        json!({"logfleet.dev/multiline": "java", "logfleet.dev/exclude-istio-proxy": "true"}),
        Some(("ReplicaSet", "checkout-5f7c9d")),
    ));
    api.put_pod(pod(
        "batch",
        "report-28911-xyz",
        "uid-report",
        "node-1",
        json!({}),
        json!({}),
        Some(("Job", "report-28911")),
    ));
    api.put_pod(pod(
        "shop",
        "other-node",
        "uid-elsewhere",
        "node-2",
        json!({"app": "x"}),
        json!({}),
        None,
    ));
    let tmp = tempfile::tempdir().unwrap();
    let kc = tmp.path().join("kubeconfig");
    api.write_kubeconfig(&kc).unwrap();
    let client = watch::client(Some(&kc)).await.unwrap();
    let dir = Arc::new(Directory::new(Limits::default()));
    let report = Arc::new(Report::new());
    let cfg = WatchConfig {
        node: "node-1".into(),
        selection: Selection {
            pod_labels: vec!["app".into(), "app.kubernetes.io/name".into()],
            namespace_labels: vec!["team".into()],
        },
    };
    let task = tokio::spawn(watch::run(client, cfg, dir.clone(), report.clone()));

    let checkout = until("the checkout pod", || {
        dir.pod("uid-checkout")
            .filter(|p| label(p, "namespace_team").is_some())
    })
    .await;
    assert_eq!(label(&checkout, "app"), Some("checkout"));
    assert_eq!(label(&checkout, "app_kubernetes_io_name"), Some("checkout"));
    assert_eq!(label(&checkout, "workload"), Some("checkout"));
    assert_eq!(label(&checkout, "workload_kind"), Some("Deployment"));
    assert_eq!(label(&checkout, "namespace_team"), Some("payments"));
    assert_eq!(checkout.multiline.as_deref(), Some("java"));
    assert!(checkout.excludes("istio-proxy") && !checkout.excludes("server"));
    let report_pod = dir.pod("uid-report").expect("listed with the other");
    assert_eq!(label(&report_pod, "workload"), Some("report"));
    assert_eq!(label(&report_pod, "workload_kind"), Some("CronJob"));
    assert!(dir.pod("uid-elsewhere").is_none(), "another node's pod");
    assert!(!dir.is_stale());
    assert_eq!(report.get(Source::Metadata), None);

    // A new pod without an owner is its own workload; a label change shows.
    api.put_pod(pod(
        "shop",
        "debug",
        "uid-debug",
        "node-1",
        json!({"app": "dbg"}),
        json!({}),
        None,
    ));
    let debug = until("the new pod", || dir.pod("uid-debug")).await;
    assert_eq!(label(&debug, "workload_kind"), Some("Pod"));
    api.put_namespace("shop", json!({"team": "checkout-team"}));
    until("the namespace label change", || {
        dir.pod("uid-checkout")
            .filter(|p| label(p, "namespace_team") == Some("checkout-team"))
    })
    .await;

    // Deleted: kept for its files' last lines.
    api.delete_pod("uid-debug");
    until("the deletion", || (dir.len().1 == 1).then_some(())).await;
    assert!(dir.pod("uid-debug").is_some());

    // The API server goes away: stale, said in the report; pods added
    // meanwhile arrive once it is back, and it is current again.
    api.set_down(true);
    until("staleness", || dir.is_stale().then_some(())).await;
    assert!(report
        .get(Source::Metadata)
        .is_some_and(|e| e.contains("stale")));
    api.put_pod(pod(
        "shop",
        "late",
        "uid-late",
        "node-1",
        json!({"app": "late"}),
        json!({}),
        None,
    ));
    api.set_down(false);
    until("the pod added while down", || dir.pod("uid-late")).await;
    until("fresh again", || (!dir.is_stale()).then_some(())).await;
    assert_eq!(report.get(Source::Metadata), None);

    let (lists, watches) = api.requests();
    // One list of pods and one of namespaces; every later request is a
    // watch resuming from its resourceVersion.
    assert_eq!(lists, 2, "relisted: {lists} lists, {watches} watches");
    assert!(watches >= 2, "{watches} watches");
    task.abort();
}
