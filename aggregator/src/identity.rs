//! Node identity of pushing agents: each agent sends its pod's projected
//! service-account token (a JWT the API server signed for our audience),
//! and the aggregator accepts a push for node `N` only when the token's
//! node claim (`kubernetes.io.node.name`, in tokens since Kubernetes 1.30)
//! names `N`. A compromised node then cannot write lines under another
//! node's name.
//!
//! Tokens are verified here against the cluster's published keys (its
//! OIDC JWKS, fetched through a [`KeySource`]) rather than one TokenReview
//! per token: the API server is asked only when a key is new, so an API
//! server outage does not stop ingest. The cost: a token stays usable
//! until it expires (at most the hour the agent's projected token lives)
//! even if its pod is deleted sooner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The request metadata key an agent's token travels in.
pub const HEADER: &str = "logfleet-identity";

/// Where the cluster's token-signing keys come from.
pub trait KeySource: Send + Sync {
    /// The issuer (`iss`) and the current public keys.
    fn fetch(&self) -> BoxFuture<'_, Result<(String, JwkSet), String>>;
}

/// Who may push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The audience the agents' tokens are issued for.
    pub audience: String,
    /// The agents' service account, `system:serviceaccount:<ns>:<name>`.
    pub subject: String,
    /// Accept a token that names no node (Kubernetes before 1.30) for any
    /// node. Off unless asked for: such a token lets one agent push as
    /// every node.
    pub allow_without_node: bool,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node the token's pod runs on; `None` before Kubernetes 1.30.
    pub node: Option<String>,
    /// The pod, for logs.
    pub pod: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No token came with the request.
    #[error("this aggregator verifies node identity: send the pod's projected service-account token (agent flag --identity-token-file)")]
    Missing,
    /// Signature, audience, issuer or time do not hold.
    #[error("identity token refused: {0}")]
    Invalid(String),
    /// The token is some other service account's.
    #[error("identity token is for {got}, not the agents' service account {want}")]
    WrongSubject {
        /// Its subject.
        got: String,
        /// Ours.
        want: String,
    },
    /// The cluster's keys could not be fetched.
    #[error("cannot fetch the cluster's token keys: {0}")]
    Keys(String),
    /// A valid token that names no node, not allowed.
    #[error("identity token names no node (Kubernetes before 1.30): it would let one agent push as every node; accept such tokens with --identity-allow-without-node (aggregator.identityWithoutNode)")]
    NoNode,
    /// A valid token for another node.
    #[error("identity token is for node {token_node}, but the request is for node {claimed}")]
    WrongNode {
        /// Node of the token.
        token_node: String,
        /// Node the push names.
        claimed: String,
    },
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct KubeClaims {
    #[serde(default)]
    node: Option<Named>,
    #[serde(default)]
    pod: Option<Named>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(rename = "kubernetes.io", default)]
    kube: Option<KubeClaims>,
}

struct Keys {
    issuer: String,
    set: JwkSet,
    fetched: Instant,
}

/// Tokens verified once each, until they expire: pushes every second must
/// not each cost a signature check.
const CACHE_MAX: usize = 16_384;
/// Keys are re-fetched for an unknown key id at most this often.
const REFETCH: Duration = Duration::from_secs(30);

/// Verifies agents' tokens against a policy.
pub struct Verifier {
    policy: Policy,
    source: Arc<dyn KeySource>,
    keys: tokio::sync::Mutex<Option<Keys>>,
    /// token -> (identity, expiry as Unix seconds)
    cache: Mutex<HashMap<String, (Identity, u64)>>,
    now: fn() -> u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.policy)
            .finish()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// A verifier fetching keys from `source`.
    pub fn new(policy: Policy, source: Arc<dyn KeySource>) -> Self {
        Self::with_clock(policy, source, unix_now)
    }

    /// The same, with a clock (Unix seconds) for tests.
    pub fn with_clock(policy: Policy, source: Arc<dyn KeySource>, now: fn() -> u64) -> Self {
        Verifier {
            policy,
            source,
            keys: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            now,
        }
    }

    /// Verifies `token` (absent: [`IdentityError::Missing`]) and that it
    /// may push for `node`.
    pub async fn check(&self, token: Option<&str>, node: &str) -> Result<Identity, IdentityError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let id = self.verify(token.ok_or(IdentityError::Missing)?).await?;
        match &id.node {
            Some(n) if n != node => Err(IdentityError::WrongNode {
                token_node: n.clone(),
                claimed: node.to_owned(),
            }),
            None if !self.policy.allow_without_node => Err(IdentityError::NoNode),
            _ => Ok(id),
        }
    }

    /// Verifies a token: signature by a current cluster key, audience,
    /// issuer, expiry, and the agents' service account.
    pub async fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        let now = (self.now)();
        if let Ok(cache) = self.cache.lock() {
            if let Some((id, exp)) = cache.get(token) {
                if *exp > now {
                    return Ok(id.clone());
                }
            }
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::ES384 | Algorithm::PS256
        ) {
            return Err(IdentityError::Invalid(format!(
                "signature algorithm {:?} is not one the API server uses",
                header.alg
            )));
        }
        let kid = header.kid.unwrap_or_default();
        let (key, issuer) = self.key(&kid).await?;
        let mut v = Validation::new(header.alg);
        v.set_audience(&[&self.policy.audience]);
        v.set_issuer(&[&issuer]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        // Times are checked below against our clock (a test's, too).
        v.validate_exp = false;
        v.validate_nbf = false;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let c = data.claims;
        const LEEWAY: u64 = 60;
        if c.exp + LEEWAY <= now {
            return Err(IdentityError::Invalid("the token has expired".into()));
        }
        if c.nbf.is_some_and(|nbf| nbf > now + LEEWAY) {
            return Err(IdentityError::Invalid("the token is not valid yet".into()));
        }
        if c.sub != self.policy.subject {
            return Err(IdentityError::WrongSubject {
                got: c.sub,
                want: self.policy.subject.clone(),
            });
        }
        let kube = c.kube.unwrap_or(KubeClaims {
            node: None,
            pod: None,
        });
        let id = Identity {
            node: kube.node.map(|n| n.name),
            pod: kube.pod.map(|p| p.name),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, exp)| *exp > now);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (id.clone(), c.exp));
        }
        Ok(id)
    }

    /// The key `kid` and the issuer, fetching the keys when they are not
    /// loaded or do not know `kid` (the API server rotated its key).
    async fn key(&self, kid: &str) -> Result<(DecodingKey, String), IdentityError> {
        let mut keys = self.keys.lock().await;
        let known = keys.as_ref().is_some_and(|k| k.set.find(kid).is_some());
        let stale = keys.as_ref().is_none_or(|k| k.fetched.elapsed() >= REFETCH);
        if !known && stale {
            let (issuer, set) = self.source.fetch().await.map_err(IdentityError::Keys)?;
            *keys = Some(Keys {
                issuer,
                set,
                fetched: Instant::now(),
            });
        }
        let k = keys
            .as_ref()
            .ok_or_else(|| IdentityError::Keys("no keys".into()))?;
        let jwk = k
            .set
            .find(kid)
            .ok_or_else(|| IdentityError::Invalid(format!("unknown signing key {kid:?}")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        Ok((key, k.issuer.clone()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// A cluster's signing key, as the API server publishes it.
    pub struct TestIssuer {
        pub key: EncodingKey,
        pub kid: String,
        pub jwks: JwkSet,
    }

    impl TestIssuer {
        pub fn new(kid: &str) -> Self {
            let kp = rcgen::KeyPair::generate().unwrap();
            let raw = kp.public_key_raw(); // 0x04 || X || Y
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let jwks: JwkSet = serde_json::from_value(json!({"keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            }]}))
            .unwrap();
            TestIssuer {
                key: EncodingKey::from_ec_der(&kp.serialize_der()),
                kid: kid.into(),
                jwks,
            }
        }

        pub fn token(&self, claims: serde_json::Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
        }
    }

    struct Fixed(String, JwkSet, Arc<std::sync::atomic::AtomicUsize>);
    impl KeySource for Fixed {
        fn fetch(&self) -> BoxFuture<'_, Result<(String, JwkSet), String>> {
            self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = Ok((self.0.clone(), self.1.clone()));
            Box::pin(async move { r })
        }
    }

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const SUB: &str = "system:serviceaccount:logfleet:logs-agent";

    fn now() -> u64 {
        1_800_000_000
    }

    fn claims(node: Option<&str>) -> serde_json::Value {
        let mut kube = json!({"namespace": "logfleet", "pod": {"name": "logs-agent-x", "uid": "p"},
                              "serviceaccount": {"name": "logs-agent", "uid": "s"}});
        if let Some(n) = node {
            kube["node"] = json!({"name": n, "uid": "n"});
        }
        json!({"iss": ISS, "sub": SUB, "aud": ["logfleet"], "exp": now() + 3600,
               "iat": now(), "nbf": now(), "kubernetes.io": kube})
    }

    fn verifier(issuer: &TestIssuer) -> (Verifier, Arc<std::sync::atomic::AtomicUsize>) {
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let v = Verifier::with_clock(
            Policy {
                audience: "logfleet".into(),
                subject: SUB.into(),
                allow_without_node: false,
            },
            Arc::new(Fixed(ISS.into(), issuer.jwks.clone(), fetches.clone())),
            now,
        );
        (v, fetches)
    }

    #[tokio::test]
    async fn a_token_pushes_for_its_own_node_only() {
        let iss = TestIssuer::new("k1");
        let (v, fetches) = verifier(&iss);
        let t = iss.token(claims(Some("node-a")));
        let id = v.check(Some(&t), "node-a").await.unwrap();
        assert_eq!(id.node.as_deref(), Some("node-a"));
        assert_eq!(id.pod.as_deref(), Some("logs-agent-x"));
        assert_eq!(
            v.check(Some(&t), "node-b").await,
            Err(IdentityError::WrongNode {
                token_node: "node-a".into(),
                claimed: "node-b".into()
            })
        );
        assert_eq!(v.check(None, "node-a").await, Err(IdentityError::Missing));
        // Verified once, then from the cache; keys fetched once.
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn forged_expired_foreign_and_misdirected_tokens_are_refused() {
        let iss = TestIssuer::new("k1");
        let (v, _) = verifier(&iss);
        // Signed by a key the cluster does not publish, under its kid.
        let mut forger = TestIssuer::new("k1");
        forger.jwks = iss.jwks.clone();
        let forged = forger.token(claims(Some("node-a")));
        assert!(matches!(
            v.check(Some(&forged), "node-a").await,
            Err(IdentityError::Invalid(_))
        ));
        let mut c = claims(Some("node-a"));
        c["exp"] = json!(now() - 3600);
        assert!(matches!(
            v.check(Some(&iss.token(c)), "node-a").await,
            Err(IdentityError::Invalid(_))
        ));
        let mut c = claims(Some("node-a"));
        c["aud"] = json!(["https://kubernetes.default.svc"]);
        assert!(matches!(
            v.check(Some(&iss.token(c)), "node-a").await,
            Err(IdentityError::Invalid(_))
        ));
        let mut c = claims(Some("node-a"));
        c["sub"] = json!("system:serviceaccount:default:web");
        assert!(matches!(
            v.check(Some(&iss.token(c)), "node-a").await,
            Err(IdentityError::WrongSubject { .. })
        ));
        assert!(matches!(
            v.check(Some("not.a.jwt"), "node-a").await,
            Err(IdentityError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn without_a_node_claim_only_an_explicit_opt_in_accepts() {
        // Clusters before 1.30 put no node in the token: by default such a
        // token is refused, as it would pass for any node.
        let iss = TestIssuer::new("k1");
        let (v, _) = verifier(&iss);
        let t = iss.token(claims(None));
        assert!(matches!(
            v.check(Some(&t), "any-node").await,
            Err(IdentityError::NoNode)
        ));
        // Opted in: the service account is still checked.
        let (mut v, _) = verifier(&iss);
        v.policy.allow_without_node = true;
        assert_eq!(v.check(Some(&t), "any-node").await.unwrap().node, None);
    }
}
