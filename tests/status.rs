//! `logfleet status --from-file`: the coverage report from a kubectl dump.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn node(name: &str, os: &str, ready: bool, taints: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": os}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn pod(
    name: &str,
    node: &str,
    ready: bool,
    generation: &str,
    waiting: Option<(&str, &str)>,
) -> serde_json::Value {
    let mut statuses = vec![];
    if let Some((reason, last)) = waiting {
        statuses.push(json!({
            "name": "agent", "image": "logfleet:1", "ready": false, "restartCount": 5, "imageID": "", "containerID": "",
            "state": {"waiting": {"reason": reason}},
            "lastState": {"terminated": {"reason": last, "exitCode": 137}}
        }));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "logfleet",
            "labels": {"pod-template-generation": generation},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "logfleet-agent", "uid": "ds-uid", "controller": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "logfleet:1"}]},
        "status": {
            "phase": if ready { "Running" } else { "Pending" },
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": statuses
        }
    })
}

/// `logfleet status --output json` on `file`, with extra arguments.
fn status_json(file: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "status",
        "--from-file",
        file,
        "--output",
        "json",
        "--exit-zero",
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dump() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            node("n1", "linux", true, json!([])),
            node("n2", "linux", true, json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])),
            node("n3", "linux", true, json!([])),
            node("n4", "linux", true, json!([])),
            node("n5", "linux", false, json!([])),
            node("win1", "windows", true, json!([])),
            {
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {
                    "name": "logfleet-agent", "namespace": "logfleet", "uid": "ds-uid", "generation": 2,
                    "labels": {"app.kubernetes.io/part-of": "logfleet", "app.kubernetes.io/component": "agent", "app.kubernetes.io/instance": "default"}
                },
                "spec": {
                    "selector": {"matchLabels": {"app.kubernetes.io/component": "agent"}},
                    "template": {"spec": {"containers": [{"name": "agent", "image": "logfleet:1"}]}}
                }
            },
            pod("agent-n1", "n1", true, "2", None),
            pod("agent-n3", "n3", true, "1", None),
            pod("agent-n4", "n4", false, "2", Some(("CrashLoopBackOff", "OOMKilled"))),
            // A pod of something else on n1 is not an agent.
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": {"nodeName": "n1", "containers": []}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ignored"}}
        ]
    })
}

#[test]
fn reports_every_expected_node_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.json");
    std::fs::write(&file, serde_json::to_vec(&dump()).unwrap()).unwrap();
    let f = file.display().to_string();

    let doc = status_json(&f, &[]);
    let reasons: Vec<(String, serde_json::Value)> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap().to_owned(), n["reason"].clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("n1".into(), json!(null)),
            ("n2".into(), json!("TaintNotTolerated")),
            ("n3".into(), json!("Outdated")),
            ("n4".into(), json!("CrashLoopBackOff")),
            ("n5".into(), json!("NodeNotReady")),
        ],
        "the Windows node is not expected"
    );
    assert_eq!(
        doc["summary"],
        json!({"expected": 5, "ready": 2, "upToDate": 1, "missing": 4})
    );
    assert!(doc["nodes"][3]["message"]
        .as_str()
        .unwrap()
        .contains("OOMKilled"));
    assert_eq!(doc["nodes"][0]["pod"], "agent-n1");

    let out = cli(&["status", "--from-file", &f]);
    // Nodes lack an agent: exit 3 (not 1, an error), for scripts and CI.
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NODE"), "{table}");
    // The same dump as YAML (must-gather, `kubectl get -o yaml`).
    let yaml = dir.path().join("dump.yaml");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    std::fs::write(&yaml, serde_saphyr::to_string(&v).unwrap()).unwrap();
    let from_yaml = cli(&[
        "status",
        "--from-file",
        &yaml.display().to_string(),
        "--exit-zero",
    ]);
    assert!(from_yaml.status.success(), "{from_yaml:?}");
    assert_eq!(String::from_utf8_lossy(&from_yaml.stdout), table);
    assert!(table.contains("TaintNotTolerated: taint node-role.kubernetes.io/control-plane:NoSchedule is not tolerated"), "{table}");
    assert!(
        table
            .trim_end()
            .ends_with("5 nodes expected, 2 with a ready agent, 1 up to date, 4 missing an agent"),
        "{table}"
    );

    // With the aggregator: n1 pushed, n3 is ready but silent.
    let (_agg, url) = aggregator(dir.path(), &[]);
    let root = dir.path().join("pods");
    let c = root.join("ns_p_uid/c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(
        c.join("0.log"),
        "2026-11-27T10:00:00.000000001Z stdout F hi\n",
    )
    .unwrap();
    let _agent = agent(dir.path(), "n1", &root, &url, &[]);
    wait_for("n1 to push", Duration::from_secs(30), || {
        query_all(&url, "{}", &[])
            .filter(|v| !v.is_empty())
            .map(|_| ())
    });
    let doc = status_json(&f, &["--aggregator", &url]);
    assert!(doc["nodes"][0]["lastPush"].is_string(), "{doc}");
    assert_eq!(doc["nodes"][0]["reason"], json!(null));
    // n3's pod is outdated; make it current to see the silence.
    let mut d = dump();
    for item in d["items"].as_array_mut().unwrap() {
        if item["metadata"]["name"] == "agent-n3" {
            item["metadata"]["labels"]["pod-template-generation"] = json!("2");
        }
    }
    std::fs::write(&file, serde_json::to_vec(&d).unwrap()).unwrap();
    let doc = status_json(&f, &["--aggregator", &url]);
    assert_eq!(doc["nodes"][2]["reason"], "NotReporting", "{doc}");
}

#[test]
fn unreadable_dumps_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"apiVersion":"v1","kind":"List","items":[]}"#).unwrap();
    for (file, want) in [
        (dir.path().join("missing.json"), "reading"),
        (bad, "not a kubectl JSON list"),
        (empty, "no logfleet agent DaemonSet"),
    ] {
        let out = cli(&["status", "--from-file", &file.display().to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn reads_the_live_cluster_through_the_kubeconfig() {
    // The dump's objects, served as a cluster would; the pod of something
    // else is left out, as the agent label selector would.
    let (server, state) = common::fake_api::fake_api();
    for item in dump()["items"].as_array().unwrap() {
        let name = item["metadata"]["name"].as_str().unwrap();
        let ns = item["metadata"]["namespace"].as_str().unwrap_or("");
        let path = match item["kind"].as_str().unwrap() {
            "Node" => format!("/api/v1/nodes/{name}"),
            "Pod" if name != "web" => format!("/api/v1/namespaces/{ns}/pods/{name}"),
            "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"),
            _ => continue,
        };
        common::fake_api::put(&state, &path, item.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = common::fake_api::kubeconfig(dir.path(), &server);
    let out = std::process::Command::new(bin())
        .args(["status", "--output", "json", "--exit-zero"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The same answer as from the dump of the same objects.
    assert_eq!(
        doc["summary"],
        json!({"expected": 5, "ready": 2, "upToDate": 1, "missing": 4})
    );
    assert_eq!(doc["nodes"][3]["reason"], "CrashLoopBackOff");
    let seen: Vec<String> = common::fake_api::lock(&state)
        .requests
        .iter()
        .map(|(_, target)| target.clone())
        .collect();
    let selector = "labelSelector=app.kubernetes.io%2Fpart-of%3Dlogfleet%2Capp.kubernetes.io%2Fcomponent%3Dagent";
    assert!(
        seen.iter().any(|p| p.starts_with("/api/v1/nodes")),
        "{seen:?}"
    );
    for list in ["/api/v1/pods?", "/apis/apps/v1/daemonsets?"] {
        assert!(
            seen.iter()
                .any(|p| p.starts_with(list) && p.contains(selector)),
            "{list} with the agent selector: {seen:?}"
        );
    }

    // No cluster to talk to: one clear error.
    let out = std::process::Command::new(bin())
        .args(["status"])
        .env("KUBECONFIG", dir.path().join("missing"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no cluster configured"), "{err}");
    assert!(err.contains("--from-file"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.len() < 200, "{err}");
}

#[test]
fn the_collectors_node_scope_decides_which_nodes_are_expected() {
    let mut d = dump();
    let items = d["items"].as_array_mut().unwrap();
    for item in items.iter_mut() {
        if item["metadata"]["name"] == "n1" || item["metadata"]["name"] == "n2" {
            item["metadata"]["labels"]["pool"] = json!("logging");
        }
    }
    items.push(json!({
        "apiVersion": "logfleet.dev/v1alpha1", "kind": "LogCollector",
        "metadata": {"name": "default", "namespace": "logfleet"},
        "spec": {"nodeScope": {"nodeSelector": {"pool": "logging"}}}
    }));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.json");
    std::fs::write(&file, serde_json::to_vec(&d).unwrap()).unwrap();
    let doc = status_json(&file.display().to_string(), &[]);
    let nodes: Vec<&str> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n1", "n2"]);
    assert_eq!(doc["summary"]["expected"], 2);
}

/// With `--aggregator` and no files, status asks the aggregator with the
/// collector's own read token and CA, read from the Secrets its agents
/// mount, as the controller does.
#[test]
fn status_reads_the_collectors_credentials_from_the_cluster() {
    use base64::Engine;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let p = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, tls_key, ca_file) = (
        p("tls.crt", &leaf.pem()),
        p("tls.key", &key.serialize_pem()),
        p("ca.crt", &ca_cert.pem()),
    );
    let (push, read) = (p("push", "push-secret"), p("read", "read-secret"));
    let (_agg, plain) = aggregator(
        dir.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &tls_key,
            "--push-token-file",
            &push,
            "--read-token-file",
            &read,
        ],
    );
    let url = plain.replace("http://", "https://");
    let root = dir.path().join("pods");
    let c = root.join("ns_p_uid/c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(
        c.join("0.log"),
        "2026-11-27T10:00:00.000000001Z stdout F hi\n",
    )
    .unwrap();
    let _agent = agent(
        dir.path(),
        "n1",
        &root,
        &url,
        &["--token-file", &push, "--tls-ca", &ca_file],
    );
    wait_for("n1 to push", Duration::from_secs(30), || {
        query_all(&url, "{}", &["--token-file", &read, "--tls-ca", &ca_file])
            .filter(|v| !v.is_empty())
            .map(|_| ())
    });

    // The cluster: the dump's objects, the DaemonSet mounting the two
    // Secrets the controller creates.
    let (server, state) = common::fake_api::fake_api();
    for mut item in dump()["items"].as_array().unwrap().clone() {
        let name = item["metadata"]["name"].as_str().unwrap().to_owned();
        let ns = item["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let path = match item["kind"].as_str().unwrap() {
            "Node" => format!("/api/v1/nodes/{name}"),
            "Pod" if name != "web" => format!("/api/v1/namespaces/{ns}/pods/{name}"),
            "DaemonSet" => {
                item["spec"]["template"]["spec"]["volumes"] = json!([
                    {"name": "credentials", "secret": {"secretName": "logs-credentials"}},
                    {"name": "tls", "secret": {"secretName": "logs-aggregator-tls"}},
                ]);
                format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}")
            }
            _ => continue,
        };
        common::fake_api::put(&state, &path, item);
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    common::fake_api::put(
        &state,
        "/api/v1/namespaces/logfleet/secrets/logs-credentials",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "logs-credentials"},
               "data": {"push-token": b64("push-secret"), "read-token": b64("read-secret")}}),
    );
    common::fake_api::put(
        &state,
        "/api/v1/namespaces/logfleet/secrets/logs-aggregator-tls",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "logs-aggregator-tls"},
               "data": {"ca.crt": b64(&ca_cert.pem())}}),
    );
    let kubeconfig = common::fake_api::kubeconfig(dir.path(), &server);
    let out = std::process::Command::new(bin())
        .args([
            "status",
            "--output",
            "json",
            "--exit-zero",
            "--aggregator",
            &url,
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["nodes"][0]["lastPush"].is_string(), "{doc}");
}
