//! The rules OpenShift's admission applies, checked on what we render (no
//! OpenShift can run here). Sources: OpenShift's "Managing security context
//! constraints" (the default `restricted-v2` SCC: MustRunAsRange user,
//! MustRunAs fsGroup and SELinux context, no host namespaces or hostPath,
//! no privilege escalation, drop ALL with only NET_BIND_SERVICE addable,
//! seccomp runtime/default, volumes configMap, downwardAPI, emptyDir,
//! ephemeral, persistentVolumeClaim, projected, secret), and the SCC
//! admission rules for hostPath (`allowedHostPaths`, read-only prefixes
//! require read-only mounts) and SELinux (`MustRunAs` with options: a pod
//! may ask only for those).

use logfleet_controller::bundle::bundle_yaml;
use logfleet_controller::crd::{LogCollector, LogCollectorSpec};
use logfleet_controller::render::{self, Options};
use serde_json::{json, Value};

/// A namespace's UID range as OpenShift assigns it
/// (`openshift.io/sa.scc.uid-range: 1000660000/10000`).
const RANGE: (i64, i64) = (1_000_660_000, 1_000_669_999);

const RESTRICTED_V2_VOLUMES: [&str; 7] = [
    "configMap",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn volume_type(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        .unwrap_or_default()
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

/// What `restricted-v2` refuses in a pod spec.
fn restricted_v2(pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host] == true {
            v.push(format!("{host} is not allowed"));
        }
    }
    for vol in pod["volumes"].as_array().into_iter().flatten() {
        let t = volume_type(vol);
        if !RESTRICTED_V2_VOLUMES.contains(&t.as_str()) {
            v.push(format!("volume type {t} is not allowed"));
        }
    }
    let in_range = |x: &Value| x.as_i64().is_none_or(|u| (RANGE.0..=RANGE.1).contains(&u));
    let psc = &pod["securityContext"];
    for f in ["runAsUser", "fsGroup"] {
        if !in_range(&psc[f]) {
            v.push(format!(
                "pod {f} {} is outside the namespace's range",
                psc[f]
            ));
        }
    }
    for sc in std::iter::once(psc).chain(containers(pod).into_iter().map(|c| &c["securityContext"]))
    {
        if sc["seLinuxOptions"].is_object() {
            v.push("a custom SELinux context is not allowed (MustRunAs)".into());
        }
        if let Some(p) = sc["seccompProfile"]["type"].as_str() {
            if p != "RuntimeDefault" {
                v.push(format!("seccomp profile {p} is not allowed"));
            }
        }
    }
    for c in containers(pod) {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap_or_default();
        if sc["privileged"] == true {
            v.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] == true {
            v.push(format!("{name}: privilege escalation"));
        }
        if !in_range(&sc["runAsUser"]) {
            v.push(format!(
                "{name}: runAsUser {} outside the range",
                sc["runAsUser"]
            ));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                v.push(format!("{name}: capability {cap}"));
            }
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p.get("hostPort").is_some() {
                v.push(format!("{name}: hostPort"));
            }
        }
    }
    v
}

/// What an SCC refuses in a pod spec (the subset of its fields our SCC sets).
fn admitted_by(scc: &Value, pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let allowed_vols: Vec<&str> = scc["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mounts: Vec<&Value> = containers(pod)
        .into_iter()
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .collect();
    for vol in pod["volumes"].as_array().into_iter().flatten() {
        let t = volume_type(vol);
        if !allowed_vols.contains(&t.as_str()) {
            v.push(format!("volume type {t}"));
        }
        if t == "hostPath" {
            if scc["allowHostDirVolumePlugin"] != true {
                v.push("hostPath volumes".into());
            }
            let path = vol["hostPath"]["path"].as_str().unwrap_or_default();
            let entry = scc["allowedHostPaths"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| {
                    let p = e["pathPrefix"].as_str().unwrap_or("\u{0}");
                    path == p || path.starts_with(&format!("{}/", p.trim_end_matches('/')))
                });
            match entry {
                None => v.push(format!("host path {path} is not allowed")),
                Some(e) if e["readOnly"] == true => {
                    let writable = mounts
                        .iter()
                        .any(|m| m["name"] == vol["name"] && m["readOnly"] != true);
                    if writable {
                        v.push(format!("host path {path} is mounted writable"));
                    }
                }
                Some(_) => {}
            }
        }
    }
    let se_type = scc["seLinuxContext"]["seLinuxOptions"]["type"].as_str();
    for c in containers(pod) {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap_or_default();
        if sc["privileged"] == true && scc["allowPrivilegedContainer"] != true {
            v.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] == true && scc["allowPrivilegeEscalation"] != true {
            v.push(format!("{name}: privilege escalation"));
        }
        if scc["readOnlyRootFilesystem"] == true && sc["readOnlyRootFilesystem"] != true {
            v.push(format!("{name}: writable root filesystem"));
        }
        let allowed_caps: Vec<&Value> = scc["allowedCapabilities"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            if !allowed_caps.contains(&cap) {
                v.push(format!("{name}: capability {cap}"));
            }
        }
        if scc["seLinuxContext"]["type"] == "MustRunAs" {
            if let Some(t) = sc["seLinuxOptions"]["type"].as_str() {
                if Some(t) != se_type {
                    v.push(format!("{name}: SELinux type {t}"));
                }
            }
        }
    }
    v
}

fn collector() -> LogCollector {
    let mut lc = LogCollector::new("logs", LogCollectorSpec::default());
    lc.metadata.namespace = Some("logfleet".into());
    lc
}

/// A collector whose aggregators store in ClickHouse (a Deployment).
fn over_clickhouse() -> LogCollector {
    let mut lc = collector();
    lc.spec = serde_json::from_value(serde_json::json!({"aggregator": {"replicas": 2,
        "clickhouse": {"url": "http://ch:8123", "credentialsSecret": "ch"}}}))
    .unwrap();
    lc
}

fn rendered(openshift: bool) -> Vec<Value> {
    rendered_of(&collector(), openshift)
}

fn rendered_of(lc: &LogCollector, openshift: bool) -> Vec<Value> {
    render::render(
        lc,
        &Options {
            openshift,
            ..Default::default()
        },
    )
    .unwrap()
    .into_iter()
    .map(|o| o.body)
    .collect()
}

fn pod_of<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    &objs
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))["spec"]["template"]["spec"]
}

#[test]
fn controller_and_aggregator_pass_restricted_v2() {
    let bundle: Vec<Value> = serde_saphyr::from_multiple(&bundle_yaml("img").unwrap()).unwrap();
    let controller = pod_of(&bundle, "Deployment");
    assert_eq!(restricted_v2(controller), Vec::<String>::new());
    let objs = rendered(true);
    assert_eq!(
        restricted_v2(pod_of(&objs, "StatefulSet")),
        Vec::<String>::new()
    );
    // The check can fail: what we render for other clusters pins uid and
    // fsGroup 65532, which restricted-v2 refuses (the bug this guards).
    let elsewhere = rendered(false);
    let refused = restricted_v2(pod_of(&elsewhere, "StatefulSet"));
    assert!(
        refused.iter().any(|r| r.contains("runAsUser")),
        "{refused:?}"
    );
    assert!(refused.iter().any(|r| r.contains("fsGroup")), "{refused:?}");
    // Off OpenShift the aggregator stays non-root.
    assert_eq!(
        pod_of(&elsewhere, "StatefulSet")["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(controller["securityContext"]["runAsNonRoot"], true);

    // Over ClickHouse the aggregators are a Deployment: the same rules.
    let objs = rendered_of(&over_clickhouse(), true);
    assert_eq!(
        restricted_v2(pod_of(&objs, "Deployment")),
        Vec::<String>::new()
    );
    let refused = restricted_v2(pod_of(
        &rendered_of(&over_clickhouse(), false),
        "Deployment",
    ));
    assert!(
        refused.iter().any(|r| r.contains("runAsUser")),
        "{refused:?}"
    );
}

#[test]
fn the_agent_needs_its_own_scc_and_the_scc_allows_exactly_that() {
    let objs = rendered(true);
    let agent = pod_of(&objs, "DaemonSet");
    // restricted-v2 would refuse it (hostPath): the SCC is needed.
    assert!(!restricted_v2(agent).is_empty());
    let scc = objs
        .iter()
        .find(|o| o["kind"] == "SecurityContextConstraints")
        .expect("an SCC on OpenShift");
    assert_eq!(admitted_by(scc, agent), Vec::<String>::new());
    // What it allows is what the agent needs and no more.
    assert_eq!(scc["allowPrivilegedContainer"], false);
    assert_eq!(scc["allowHostNetwork"], false);
    assert_eq!(
        scc["seLinuxContext"],
        json!({"type": "MustRunAs", "seLinuxOptions": {"type": "spc_t"}})
    );
    let c = &agent["containers"][0]["securityContext"];
    assert_eq!(
        c["seLinuxOptions"]["type"], "spc_t",
        "reads /var/log/pods under SELinux"
    );
    // And it can refuse: a writable log mount, or another SELinux type.
    let mut bad = agent.clone();
    for m in bad["containers"][0]["volumeMounts"].as_array_mut().unwrap() {
        m["readOnly"] = json!(false);
    }
    bad["containers"][0]["securityContext"]["seLinuxOptions"]["type"] = json!("unconfined_t");
    let refused = admitted_by(scc, &bad);
    assert!(
        refused.iter().any(|r| r.contains("mounted writable")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|r| r.contains("unconfined_t")),
        "{refused:?}"
    );
    // Off OpenShift there is no SCC and no SELinux type.
    let elsewhere = rendered(false);
    assert!(elsewhere
        .iter()
        .all(|o| o["kind"] != "SecurityContextConstraints"));
    assert!(
        pod_of(&elsewhere, "DaemonSet")["containers"][0]["securityContext"]
            .get("seLinuxOptions")
            .is_none()
    );
}

#[test]
fn the_bundle_namespace_clears_the_project_node_selector() {
    let bundle: Vec<Value> = serde_saphyr::from_multiple(&bundle_yaml("img").unwrap()).unwrap();
    let ns = bundle.iter().find(|o| o["kind"] == "Namespace").unwrap();
    assert_eq!(
        ns["metadata"]["annotations"]["openshift.io/node-selector"],
        ""
    );
}
