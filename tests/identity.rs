//! Node identity end to end: the aggregator reads the cluster's token keys
//! through the API server (OIDC discovery and JWKS, served here by the
//! stand-in API server the way kube-apiserver serves them) and accepts a
//! node's lines only from an agent whose projected service-account token
//! names that node (the `kubernetes.io.node.name` claim of Kubernetes
//! 1.30+ tokens).

mod common;

use std::time::Duration;

use base64::Engine;
use common::fake_api::{fake_api, kubeconfig, lock};
use common::*;
use serde_json::json;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct Issuer {
    key: jsonwebtoken::EncodingKey,
    jwks: serde_json::Value,
}

impl Issuer {
    fn new() -> Self {
        let kp = rcgen::KeyPair::generate().unwrap();
        let raw = kp.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Issuer {
            key: jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
            jwks: json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                "kid": "k1", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]}),
        }
    }

    /// A projected token of the agents' service account on `node`.
    fn token(&self, node: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": ISSUER, "aud": ["logfleet"], "sub": "system:serviceaccount:logfleet:logs-agent",
            "iat": now, "nbf": now, "exp": now + 3600,
            "kubernetes.io": {"namespace": "logfleet",
                "node": {"name": node, "uid": "n"},
                "pod": {"name": format!("logs-agent-{node}"), "uid": "p"},
                "serviceaccount": {"name": "logs-agent", "uid": "s"}},
        });
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn pod_log(root: &std::path::Path, ns: &str, line: &str) {
    let cdir = root.join(format!("{ns}_pod_uid/c"));
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(
        cdir.join("0.log"),
        format!("2026-11-27T10:00:00.000000001Z stdout F {line}\n"),
    )
    .unwrap();
}

/// Both stores, one after the other: the aggregator finds the stand-in
/// API through `KUBECONFIG`, which is the process's, so the two runs must
/// not overlap.
#[test]
fn an_agent_pushes_only_for_the_node_its_token_names() {
    only_the_named_node(&[]);
    // Over ClickHouse the same check applies (it once did not: the node
    // identity was silently not verified there).
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    only_the_named_node(&["--store", "clickhouse", "--clickhouse-url", &ch.url()]);
}

fn only_the_named_node(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new();
    let (api, state) = fake_api();
    lock(&state).objects.insert(
        "/.well-known/openid-configuration".into(),
        json!({"issuer": ISSUER, "jwks_uri": format!("{api}/openid/v1/jwks")}),
    );
    lock(&state)
        .objects
        .insert("/openid/v1/jwks".into(), issuer.jwks.clone());
    // The aggregator finds the cluster as a pod would find its own.
    std::env::set_var("KUBECONFIG", kubeconfig(dir.path(), &api));
    let mut args = vec![
        "--identity-audience",
        "logfleet",
        "--identity-service-account",
        "logfleet:logs-agent",
    ];
    args.extend_from_slice(store);
    let (agg, url) = aggregator(dir.path(), &args);

    let token_a = dir.path().join("token-a");
    std::fs::write(&token_a, issuer.token("node-a")).unwrap();
    let ta = token_a.display().to_string();

    // node-a with node-a's token: stored.
    let root_a = dir.path().join("pods-a");
    pod_log(&root_a, "a", "from node-a");
    let _a = agent(
        dir.path(),
        "node-a",
        &root_a,
        &url,
        &["--identity-token-file", &ta],
    );
    let got = wait_for("node-a's line", Duration::from_secs(30), || {
        let v = query_all(&url, "{namespace=\"a\"}", &[])?;
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(got[0]["node"], "node-a", "{got:?}");

    // An agent on another node holding node-a's token, and one with no
    // token: refused, with the reason in their logs.
    let root_b = dir.path().join("pods-b");
    pod_log(&root_b, "b", "node-b claiming with node-a's token");
    let b = agent(
        dir.path(),
        "node-b",
        &root_b,
        &url,
        &["--identity-token-file", &ta],
    );
    let root_c = dir.path().join("pods-c");
    pod_log(&root_c, "c", "no token at all");
    let c = agent(dir.path(), "node-c", &root_c, &url, &[]);
    wait_for("node-b's refusal", Duration::from_secs(30), || {
        b.log_text()
            .contains("identity token is for node node-a, but the request is for node node-b")
            .then_some(())
    });
    wait_for("node-c's refusal", Duration::from_secs(30), || {
        c.log_text()
            .contains("send the pod's projected service-account token")
            .then_some(())
    });
    for ns in ["b", "c"] {
        let v = query_all(&url, &format!("{{namespace=\"{ns}\"}}"), &[]).unwrap();
        assert!(v.is_empty(), "{ns}: {v:?}");
    }
    // Counted by reason, on either store.
    let metrics = http_get(&agg.http, "/metrics").unwrap_or_default();
    assert!(
        metrics
            .contains("logfleet_aggregator_rejected_pushes_total{reason=\"identity_wrong_node\"}"),
        "{metrics}"
    );
    // The keys were fetched once, not per push.
    let fetches = lock(&state)
        .requests
        .iter()
        .filter(|(_, p)| p.starts_with("/openid/v1/jwks"))
        .count();
    assert_eq!(fetches, 1);
}
