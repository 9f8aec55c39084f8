//! The install bundle and the rendered objects, through the real binary:
//! the checked-in bundle is what `logfleet bundle` prints, its CRD is what
//! `logfleet crd` prints, and every document parses into its type.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use logfleet_controller::crd::LogCollector;
use serde_json::Value;

fn stdout(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "logfleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("valid YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Parses a document into the k8s-openapi type of its kind; the kind list
/// is closed, so an unexpected kind fails.
fn parse_typed(d: &Value) -> String {
    fn p<T: serde::de::DeserializeOwned>(d: &Value) {
        if let Err(e) = serde_json::from_value::<T>(d.clone()) {
            panic!("{} does not parse: {e}", d["kind"]);
        }
    }
    let kind = d["kind"].as_str().unwrap_or("").to_owned();
    match kind.as_str() {
        "CustomResourceDefinition" => p::<CustomResourceDefinition>(d),
        "Namespace" => p::<Namespace>(d),
        "ServiceAccount" => p::<ServiceAccount>(d),
        "ClusterRole" => p::<ClusterRole>(d),
        "ClusterRoleBinding" => p::<ClusterRoleBinding>(d),
        "Role" => p::<Role>(d),
        "RoleBinding" => p::<RoleBinding>(d),
        "Deployment" => p::<Deployment>(d),
        "DaemonSet" => p::<DaemonSet>(d),
        "StatefulSet" => p::<StatefulSet>(d),
        "PodDisruptionBudget" => p::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(d),
        "Service" => p::<Service>(d),
        "ConfigMap" => p::<ConfigMap>(d),
        "ResourceQuota" => p::<k8s_openapi::api::core::v1::ResourceQuota>(d),
        "NetworkPolicy" => p::<k8s_openapi::api::networking::v1::NetworkPolicy>(d),
        "LogCollector" => p::<LogCollector>(d),
        other => panic!("unexpected kind {other:?} in the bundle"),
    }
    kind
}

#[test]
fn checked_in_bundle_is_what_the_binary_prints() {
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/logfleet.yaml"))
            .expect("deploy/logfleet.yaml");
    let printed = stdout(&["bundle"]);
    assert!(
        checked_in == printed,
        "deploy/logfleet.yaml is stale: run `cargo run -- bundle > deploy/logfleet.yaml`"
    );
    let crd_docs = docs(&stdout(&["crd"]));
    assert_eq!(crd_docs.len(), 1);
    let bundle = docs(&checked_in);
    assert_eq!(bundle[0], crd_docs[0], "the bundle's CRD is `logfleet crd`");

    let kinds: Vec<String> = bundle.iter().map(parse_typed).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "LogCollector",
        ]
    );
    // The controller runs non-root on a read-only root filesystem.
    let dep: Deployment = serde_json::from_value(bundle[7].clone()).expect("deployment");
    let pod = dep.spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
}

#[test]
fn checked_in_openshift_bundle_is_what_the_binary_prints() {
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/openshift.yaml"
    ))
    .expect("deploy/openshift.yaml");
    assert!(
        checked_in == stdout(&["bundle", "--openshift"]),
        "deploy/openshift.yaml is stale: run `cargo run -- bundle --openshift > deploy/openshift.yaml`"
    );
    let kinds: Vec<String> = docs(&checked_in)
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "SecurityContextConstraints",
            "ClusterRole",
            "ClusterRoleBinding"
        ]
    );
}

#[test]
fn render_prints_typed_objects_and_refuses_bad_input() {
    let kinds: Vec<String> = docs(&stdout(&["render"])).iter().map(parse_typed).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ServiceAccount",
            "ConfigMap",
            "ResourceQuota",
            "DaemonSet",
            "Service",
            "Service",
            "Service",
            "StatefulSet",
            "NetworkPolicy",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
    );

    let dir = tempfile::tempdir().expect("tempdir");
    // Over ClickHouse: stateless replicas and their budget, no volume.
    let ch = dir.path().join("ch.yaml");
    std::fs::write(&ch, "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata:\n  name: big\n  namespace: obs\nspec:\n  aggregator:\n    replicas: 3\n    clickhouse:\n      url: http://clickhouse.obs.svc:8123\n").expect("write");
    let kinds: Vec<String> = docs(&stdout(&["render", "-f", ch.to_str().expect("path")]))
        .iter()
        .map(parse_typed)
        .collect();
    assert!(kinds.contains(&"Deployment".to_owned()), "{kinds:?}");
    assert!(
        kinds.contains(&"PodDisruptionBudget".to_owned()),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"StatefulSet".to_owned()), "{kinds:?}");
    // The CRD's rules, as the API server applies them: more than one
    // replica needs ClickHouse.
    std::fs::write(&ch, "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata:\n  name: big\n  namespace: obs\nspec:\n  aggregator:\n    replicas: 3\n").expect("write");
    let out = cli(&["render", "-f", ch.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without clickhouse"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let file = dir.path().join("lc.yaml");
    std::fs::write(&file, "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata:\n  name: edge\n  namespace: obs\nspec:\n  agent:\n    compression: gzip\n").expect("write");
    let objs = docs(&stdout(&[
        "render",
        "-f",
        file.to_str().expect("path"),
        "--openshift",
    ]));
    assert_eq!(objs.len(), 12);
    assert!(objs.iter().all(|o| o["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.contains("edge"))));
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("configmap");
    assert_eq!(cm["data"]["LOGFLEET_COMPRESSION"], "gzip");
    assert_eq!(cm["metadata"]["namespace"], "obs");
    // The agents may use the SCC of deploy/openshift.yaml; none is rendered.
    assert!(objs
        .iter()
        .all(|o| o["kind"] != "SecurityContextConstraints"));
    let role = objs
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("the agents' role");
    assert!(role["rules"].to_string().contains("\"use\""), "{role}");

    // What the API server or the agents would refuse (issue 14), with a
    // message naming the field.
    let head = "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\n";
    for (text, want) in [
        (
            "kind: LogCollector\nmetadata: {name: x}\nspec: {}\n".to_string(),
            "want apiVersion logfleet.dev/v1alpha1",
        ),
        (
            format!("{head}metadata: {{namespace: x}}\nspec: {{}}\n"),
            "metadata.name is missing",
        ),
        (
            format!("{head}metadata: {{name: x}}\nspec:\n  agent:\n    compression: lz4\n"),
            "lz4",
        ),
        (
            format!("{head}metadata: {{name: x}}\nspec:\n  agent:\n    tolerateAllTaint: false\n"),
            "unknown field \"spec.agent.tolerateAllTaint\"",
        ),
        (
            format!("{head}metadata: {{name: x}}\nspec:\n  aggregator:\n    retentionAge: 1 week\n"),
            "retentionAge",
        ),
        (
            format!("{head}metadata: {{name: x}}\nspec:\n  agent:\n    filters:\n      excludeNamespaces: [\"kube-(\"]\n"),
            "not a valid regular expression",
        ),
        (
            "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollection\nmetadata: {name: x}\nspec: {}\n".to_string(),
            "LogCollection",
        ),
        (": : :\n".to_string(), "not YAML"),
    ] {
        std::fs::write(&file, &text).expect("write");
        let out = cli(&["render", "-f", file.to_str().expect("path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} accepted");
        assert!(err.contains(want), "{text:?}: {err}");
    }

    // A multi-document file (the bundle itself) renders its LogCollector.
    let bundle =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/logfleet.yaml"))
            .expect("bundle");
    std::fs::write(&file, bundle).expect("write");
    let objs = docs(&stdout(&["render", "-f", file.to_str().expect("path")]));
    assert!(objs.iter().any(|o| o["kind"] == "DaemonSet"));
}

/// `logfleet completions <shell>`: a script each shell accepts, naming the
/// subcommands (bash is checked with `bash -n`; issue 13).
#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let text = stdout(&["completions", shell]);
        assert!(
            text.contains("aggregator") && text.contains("query"),
            "{shell}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("logfleet.bash");
    std::fs::write(&script, stdout(&["completions", "bash"])).expect("write");
    let ok = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(ok.success());
}

/// kubectl, installed from Debian (`kubernetes-client`) when missing, as
/// README's test command must work on a fresh machine.
fn ensure_kubectl() {
    let have = || {
        std::process::Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return;
    }
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "kubernetes-client"][..],
    ] {
        let _ = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    assert!(
        have(),
        "kubectl is needed: apt-get install kubernetes-client"
    );
}

fn kubectl_kustomize(dir: &std::path::Path) -> String {
    ensure_kubectl();
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (Debian: kubernetes-client; .ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn by_kind_and_name(docs: Vec<Value>) -> std::collections::BTreeMap<(String, String), Value> {
    docs.into_iter()
        .map(|d| {
            let k = (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            (k, d)
        })
        .collect()
}

/// The two install paths cannot drift: `kubectl kustomize deploy/` (offline)
/// renders exactly the objects of `logfleet bundle`, and the documented
/// image patch changes the controller's image and nothing else (issue 13).
#[test]
fn kustomize_renders_the_bundle_and_its_documented_patch() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let bundle = by_kind_and_name(docs(&stdout(&["bundle"])));
    let kustomized = by_kind_and_name(docs(&kubectl_kustomize(&deploy)));
    assert_eq!(
        kustomized.keys().collect::<Vec<_>>(),
        bundle.keys().collect::<Vec<_>>()
    );
    for (k, v) in &bundle {
        assert_eq!(&kustomized[k], v, "{k:?}");
    }
    // The patch README and kustomization.yaml document.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        deploy.join("logfleet.yaml"),
        dir.path().join("logfleet.yaml"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources:\n  - logfleet.yaml\nimages:\n  - name: ghcr.io/logfleet/logfleet\n    newTag: 0.1.1\n",
    )
    .expect("write");
    let patched = by_kind_and_name(docs(&kubectl_kustomize(dir.path())));
    let key = ("Deployment".to_string(), "logfleet-controller".to_string());
    assert_eq!(
        patched[&key]["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/logfleet/logfleet:0.1.1"
    );
    for (k, v) in &bundle {
        if *k != key {
            assert_eq!(&patched[k], v, "{k:?} changed");
        }
    }
}

/// Every `LOGFLEET_*` variable the controller renders is one the binary
/// reads: a renamed flag would otherwise be ignored in the cluster, not
/// refused (clap only reads the variables it knows).
#[test]
fn every_rendered_variable_is_a_flag_of_its_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = dir.path().join("ch.yaml");
    std::fs::write(&ch, "apiVersion: logfleet.dev/v1alpha1\nkind: LogCollector\nmetadata:\n  name: big\n  namespace: obs\nspec:\n  aggregator:\n    clickhouse:\n      url: http://ch:8123\n      cluster: logs\n      credentialsSecret: ch\n").expect("write");
    // Both stores: the StatefulSet's variables and the Deployment's.
    let mut objs = docs(&stdout(&["render"]));
    objs.extend(docs(&stdout(&["render", "-f", ch.to_str().expect("path")])));
    let help = |cmd: &str| stdout(&[cmd, "--help"]);
    let (agent_help, agg_help) = (help("agent"), help("aggregator"));
    let mut checked = 0;
    for o in &objs {
        let (names, help): (Vec<String>, &str) = match o["kind"].as_str() {
            Some("ConfigMap") => (
                o["data"]
                    .as_object()
                    .expect("data")
                    .keys()
                    .cloned()
                    .collect(),
                &agent_help,
            ),
            Some("StatefulSet" | "Deployment") => (
                o["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .expect("env")
                    .iter()
                    .map(|e| e["name"].as_str().unwrap_or("").to_owned())
                    .collect(),
                &agg_help,
            ),
            _ => continue,
        };
        for n in names.iter().filter(|n| n.starts_with("LOGFLEET_")) {
            assert!(
                help.contains(&format!("[env: {n}")),
                "{n} is no flag of {}",
                o["kind"]
            );
            checked += 1;
        }
    }
    assert!(checked > 15, "only {checked} variables checked");
}
