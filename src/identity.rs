//! The cluster's service-account token keys, for the aggregator's node
//! identity check: the issuer from OIDC discovery and the keys from its
//! JWKS, read through the API server with the aggregator's own
//! credentials (in-cluster config or KUBECONFIG). Every service account
//! may read both (the default `system:service-account-issuer-discovery`
//! binding), so this needs no RBAC of its own.

use futures_util::future::BoxFuture;
use logfleet_aggregator::identity::KeySource;
use serde::Deserialize;

/// Keys fetched from the cluster the process runs in.
#[derive(Default)]
pub struct ClusterKeys {
    client: tokio::sync::OnceCell<kube::Client>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

async fn get(client: &kube::Client, path: &str) -> Result<String, String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    client
        .request_text(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))
}

impl KeySource for ClusterKeys {
    fn fetch(&self) -> BoxFuture<'_, Result<(String, jsonwebtoken::jwk::JwkSet), String>> {
        Box::pin(async move {
            let client = self
                .client
                .get_or_try_init(kube::Client::try_default)
                .await
                .map_err(|e| format!("connecting to the Kubernetes API: {e}"))?;
            let discovery: Discovery =
                serde_json::from_str(&get(client, "/.well-known/openid-configuration").await?)
                    .map_err(|e| format!("OIDC discovery: {e}"))?;
            let jwks = serde_json::from_str(&get(client, "/openid/v1/jwks").await?)
                .map_err(|e| format!("JWKS: {e}"))?;
            Ok((discovery.issuer, jwks))
        })
    }
}
