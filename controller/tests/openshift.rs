//! The rules OpenShift's admission applies, checked on what we render (no
//! OpenShift can run here). Sources: OpenShift's "Managing security context
//! constraints" (the default `restricted-v2` SCC: MustRunAsRange user,
//! MustRunAs fsGroup and SELinux context, no host namespaces or hostPath,
//! no privilege escalation, drop ALL with only NET_BIND_SERVICE addable,
//! seccomp runtime/default, volumes configMap, downwardAPI, emptyDir,
//! ephemeral, persistentVolumeClaim, projected, secret); the
//! SecurityContextConstraints schema as openshift/api publishes it
//! (`security/v1/zz_generated.crd-manifests/0000_03_config-operator_01_securitycontextconstraints.crd.yaml`
//! at commit d00047cc205276eb2b83213c598d4e0e5fffc94a: its properties, their
//! types, `nullable` and `required`, no unknown fields preserved), which the
//! API server applies to every SCC; and the SCC admission's SELinux rule as
//! openshift/apiserver-library-go implements it
//! (`pkg/securitycontextconstraints/selinux/mustrunas.go`, `runasany.go`,
//! commit 4b0354dd99788194475eb97da1dfdf2e424122ee): `MustRunAs` fills its
//! options (with the namespace's `openshift.io/sa.scc.mcs` level when the SCC
//! names none) only into a context that sets no SELinux options, then
//! requires level, role, type and user to be equal; `RunAsAny` checks nothing.

use logfleet_controller::bundle::{bundle_yaml, openshift_bundle};
use logfleet_controller::crd::{LogCollector, LogCollectorSpec};
use logfleet_controller::openshift::AGENT_SCC;
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

/// A property of type `t`; `nullable` as the schema says.
fn prop(t: &str, nullable: bool) -> Value {
    json!({"type": t, "nullable": nullable})
}

fn list_of(item: Value, nullable: bool) -> Value {
    json!({"type": "array", "items": item, "nullable": nullable})
}

fn object(props: Value, required: &[&str], nullable: bool) -> Value {
    json!({"type": "object", "properties": props, "required": required, "nullable": nullable})
}

/// The SecurityContextConstraints schema of openshift/api (see the module
/// doc for the file and commit): every property with its type, which are
/// nullable, which required. `metadata` is checked by the API server's own
/// ObjectMeta rules, not by this schema.
fn scc_schema() -> Value {
    let strings = |nullable| list_of(prop("string", false), nullable);
    let id_range = object(
        json!({"max": prop("integer", false), "min": prop("integer", false)}),
        &[],
        false,
    );
    let ranged = |nullable| {
        object(
            json!({"ranges": list_of(id_range.clone(), false), "type": prop("string", false)}),
            &[],
            nullable,
        )
    };
    object(
        json!({
            "allowHostDirVolumePlugin": prop("boolean", false),
            "allowHostIPC": prop("boolean", false),
            "allowHostNetwork": prop("boolean", false),
            "allowHostPID": prop("boolean", false),
            "allowHostPorts": prop("boolean", false),
            "allowPrivilegeEscalation": prop("boolean", true),
            "allowPrivilegedContainer": prop("boolean", false),
            "allowedCapabilities": strings(true),
            "allowedFlexVolumes": list_of(
                object(json!({"driver": prop("string", false)}), &["driver"], false), true),
            "allowedUnsafeSysctls": strings(true),
            "apiVersion": prop("string", false),
            "defaultAddCapabilities": strings(true),
            "defaultAllowPrivilegeEscalation": prop("boolean", true),
            "forbiddenSysctls": strings(true),
            "fsGroup": ranged(true),
            "groups": strings(true),
            "kind": prop("string", false),
            "metadata": {"type": "object", "x-any": true},
            "priority": prop("integer", true),
            "readOnlyRootFilesystem": prop("boolean", false),
            "requiredDropCapabilities": strings(true),
            "runAsUser": object(json!({
                "type": prop("string", false),
                "uid": prop("integer", false),
                "uidRangeMax": prop("integer", false),
                "uidRangeMin": prop("integer", false),
            }), &[], true),
            "seLinuxContext": object(json!({
                "seLinuxOptions": object(json!({
                    "level": prop("string", false),
                    "role": prop("string", false),
                    "type": prop("string", false),
                    "user": prop("string", false),
                }), &[], false),
                "type": prop("string", false),
            }), &[], true),
            "seccompProfiles": strings(true),
            "supplementalGroups": ranged(true),
            "users": strings(true),
            "volumes": strings(true),
        }),
        &[
            "allowHostDirVolumePlugin",
            "allowHostIPC",
            "allowHostNetwork",
            "allowHostPID",
            "allowHostPorts",
            "allowPrivilegedContainer",
            "allowedCapabilities",
            "defaultAddCapabilities",
            "priority",
            "readOnlyRootFilesystem",
            "requiredDropCapabilities",
            "volumes",
        ],
        false,
    )
}

/// What the API server's structural schema validation refuses of `v`:
/// undeclared fields (server-side apply: "field not declared in schema"),
/// wrong types, null where not nullable, missing required fields.
fn schema_errors(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    if v.is_null() {
        if schema["nullable"] != true {
            errs.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    let t = schema["type"].as_str().unwrap_or_default();
    let ok = match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        _ => false,
    };
    if !ok {
        errs.push(format!("{path}: must be of type {t}, is {v}"));
        return;
    }
    if schema["x-any"] == true {
        return;
    }
    if let Some(items) = v.as_array() {
        for (i, x) in items.iter().enumerate() {
            schema_errors(&schema["items"], x, &format!("{path}[{i}]"), errs);
        }
    }
    if let Some(fields) = v.as_object() {
        for (k, x) in fields {
            match schema["properties"].get(k) {
                Some(s) => schema_errors(s, x, &format!("{path}.{k}"), errs),
                None => errs.push(format!("{path}.{k}: field not declared in schema")),
            }
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !fields.contains_key(r) {
                errs.push(format!("{path}.{r}: Required value"));
            }
        }
    }
}

/// A namespace's MCS level as OpenShift assigns it
/// (`openshift.io/sa.scc.mcs`).
const MCS: &str = "s0:c26,c5";

/// `equalLevels` of the SCC admission: equal strings, or the same
/// sensitivity and the same set of categories.
fn equal_levels(want: &str, got: &str) -> bool {
    if want == got {
        return true;
    }
    let (Some((ws, wc)), Some((gs, gc))) = (want.split_once(':'), got.split_once(':')) else {
        return false;
    };
    fn cats(c: &str) -> Vec<&str> {
        let mut v: Vec<&str> = c.split(',').collect();
        v.sort_unstable();
        v
    }
    ws == gs && cats(wc) == cats(gc)
}

/// The SCC's SELinux strategy on one security context (a pod's or a
/// container's), mutation first, as admission runs it.
fn selinux_refusals(scc: &Value, sc: &Value, what: &str) -> Vec<String> {
    let ctx = &scc["seLinuxContext"];
    if ctx["type"] != "MustRunAs" {
        return Vec::new(); // RunAsAny
    }
    let mut opts = ctx["seLinuxOptions"].clone();
    if opts.is_null() {
        return vec![format!("{what}: MustRunAs requires SELinuxOptions")];
    }
    if opts["level"].as_str().unwrap_or_default().is_empty() {
        opts["level"] = json!(MCS);
    }
    // MutateContainer: only when the context sets no options.
    let have = if sc["seLinuxOptions"].is_object() {
        sc["seLinuxOptions"].clone()
    } else {
        opts.clone()
    };
    let field = |o: &Value, k: &str| o[k].as_str().unwrap_or_default().to_string();
    let mut v = Vec::new();
    if !equal_levels(&field(&opts, "level"), &field(&have, "level")) {
        v.push(format!(
            "{what}.seLinuxOptions.level: Invalid value: {:?}: must be {}",
            field(&have, "level"),
            field(&opts, "level")
        ));
    }
    for k in ["role", "type", "user"] {
        if field(&opts, k) != field(&have, k) {
            v.push(format!(
                "{what}.seLinuxOptions.{k}: Invalid value: {:?}: must be {}",
                field(&have, k),
                field(&opts, k)
            ));
        }
    }
    v
}

/// What an SCC refuses in a pod spec (the fields our SCC sets). An SCC
/// cannot restrict host paths: `allowHostDirVolumePlugin` allows any.
fn admitted_by(scc: &Value, pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let allowed_vols: Vec<&str> = scc["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for vol in pod["volumes"].as_array().into_iter().flatten() {
        let t = volume_type(vol);
        if !allowed_vols.contains(&t.as_str()) && !allowed_vols.contains(&"*") {
            v.push(format!("volume type {t}"));
        }
        if t == "hostPath" && scc["allowHostDirVolumePlugin"] != true {
            v.push("hostPath volumes".into());
        }
    }
    v.extend(selinux_refusals(scc, &pod["securityContext"], "pod"));
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
        v.extend(selinux_refusals(scc, sc, name));
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

fn agent_scc() -> Value {
    openshift_bundle()
        .into_iter()
        .find(|o| o["kind"] == "SecurityContextConstraints")
        .expect("the OpenShift bundle ships the agents' SCC")
}

#[test]
fn the_shipped_scc_is_what_the_scc_schema_accepts() {
    let scc = agent_scc();
    let mut errs = Vec::new();
    schema_errors(&scc_schema(), &scc, "scc", &mut errs);
    assert_eq!(errs, Vec::<String>::new());
    // The check can fail: the SCC of earlier versions, a field the schema
    // lacks (`allowedHostPaths` is PodSecurityPolicy's), and the required
    // fields `prune` dropped because they were empty.
    let mut old = scc.clone();
    old["allowedHostPaths"] = json!([{"pathPrefix": "/var/log/pods", "readOnly": true}]);
    let o = old.as_object_mut().unwrap();
    for k in ["allowedCapabilities", "defaultAddCapabilities", "priority"] {
        o.remove(k);
    }
    old["priority"] = json!("high");
    let mut errs = Vec::new();
    schema_errors(&scc_schema(), &old, "scc", &mut errs);
    assert!(
        errs.contains(&"scc.allowedHostPaths: field not declared in schema".to_string()),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"scc.allowedCapabilities: Required value".to_string()),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("scc.priority: must be of type integer")),
        "{errs:?}"
    );
    // Every document of the OpenShift bundle parses as its kind.
    for d in openshift_bundle() {
        if d["kind"] == "ClusterRole" {
            serde_json::from_value::<k8s_openapi::api::rbac::v1::ClusterRole>(d).unwrap();
        } else if d["kind"] == "ClusterRoleBinding" {
            serde_json::from_value::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(d).unwrap();
        }
    }
}

#[test]
fn the_agent_is_admitted_by_the_shipped_scc_and_only_by_it() {
    let objs = rendered(true);
    let agent = pod_of(&objs, "DaemonSet");
    // restricted-v2 would refuse it (hostPath): the SCC is needed.
    assert!(!restricted_v2(agent).is_empty());
    let scc = agent_scc();
    assert_eq!(admitted_by(&scc, agent), Vec::<String>::new());
    // What it allows is what the agent needs and no more.
    assert_eq!(scc["allowPrivilegedContainer"], false);
    assert_eq!(scc["allowHostNetwork"], false);
    assert_eq!(scc["allowHostPID"], false);
    assert_eq!(scc["requiredDropCapabilities"], json!(["ALL"]));
    let c = &agent["containers"][0]["securityContext"];
    assert_eq!(
        c["seLinuxOptions"],
        json!({"type": "spc_t"}),
        "reads /var/log/pods under SELinux"
    );
    // It can refuse: privileges and added capabilities.
    let mut bad = agent.clone();
    bad["containers"][0]["securityContext"]["privileged"] = json!(true);
    bad["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"]);
    let refused = admitted_by(&scc, &bad);
    assert!(
        refused.iter().any(|r| r.contains("privileged")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|r| r.contains("SYS_ADMIN")),
        "{refused:?}"
    );

    // The SCC of earlier versions (MustRunAs with the type alone) refuses
    // this agent for its empty level, as OpenShift did: admission fills the
    // namespace's level only into containers without SELinux options.
    let mut must_run_as = scc.clone();
    must_run_as["seLinuxContext"] =
        json!({"type": "MustRunAs", "seLinuxOptions": {"type": "spc_t"}});
    let refused = admitted_by(&must_run_as, agent);
    assert_eq!(
        refused,
        [format!(
            "agent.seLinuxOptions.level: Invalid value: \"\": must be {MCS}"
        )]
    );
    // Under MustRunAs, a container without options gets them, a matching
    // level in any category order passes, and another type does not.
    let mut unset = agent.clone();
    unset["containers"][0]["securityContext"]
        .as_object_mut()
        .unwrap()
        .remove("seLinuxOptions");
    assert_eq!(admitted_by(&must_run_as, &unset), Vec::<String>::new());
    let mut reordered = agent.clone();
    reordered["containers"][0]["securityContext"]["seLinuxOptions"]["level"] = json!("s0:c5,c26");
    assert_eq!(admitted_by(&must_run_as, &reordered), Vec::<String>::new());
    reordered["containers"][0]["securityContext"]["seLinuxOptions"]["type"] = json!("unconfined_t");
    let refused = admitted_by(&must_run_as, &reordered);
    assert!(
        refused.iter().any(|r| r.contains("unconfined_t")),
        "{refused:?}"
    );

    // Only the agents may use it: their ClusterRole grants `use` of this
    // SCC by name and nothing else of SCCs; no SCC is rendered per
    // collector, and the controller holds `use` (RBAC lets only a holder
    // grant it) and no other right over SCCs.
    assert!(objs
        .iter()
        .all(|o| o["kind"] != "SecurityContextConstraints"));
    let role = objs
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("the agents' ClusterRole");
    let scc_rules: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["apiGroups"] == json!(["security.openshift.io"]))
        .collect();
    assert_eq!(
        scc_rules,
        [
            &json!({"apiGroups": ["security.openshift.io"], "resources": ["securitycontextconstraints"],
                 "resourceNames": [AGENT_SCC], "verbs": ["use"]})
        ]
    );
    let controller_rules: Vec<Value> = openshift_bundle()
        .into_iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .chain(
            logfleet_controller::bundle::controller_rules()
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )
        .filter(|r| r["apiGroups"] == json!(["security.openshift.io"]))
        .collect();
    assert_eq!(
        controller_rules,
        scc_rules.into_iter().cloned().collect::<Vec<_>>()
    );

    // Off OpenShift there is no SCC rule and no SELinux type.
    let elsewhere = rendered(false);
    assert!(elsewhere
        .iter()
        .all(|o| o.to_string().find("security.openshift.io").is_none()));
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
