//! The Secrets a collector is secured with, as pure decisions: random
//! bearer tokens (one to push, one to read) and, for TLS, a CA and a
//! serving certificate for the aggregator that is renewed well before it
//! expires. [`crate::reconcile`] reads what exists and applies what this
//! module says is missing or due.
//!
//! Certificates carry their validity in annotations (`logfleet.dev/not-
//! before`, `logfleet.dev/not-after`) so that deciding on a renewal needs
//! no X.509 parsing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use rand::RngCore;

use crate::names::{child, MAX_CHILD};

/// Secret key of the token agents push with.
pub const PUSH_TOKEN: &str = "push-token";
/// Secret key of the token queries need.
pub const READ_TOKEN: &str = "read-token";
/// Secret key of a certificate (kubernetes.io/tls).
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of a private key (kubernetes.io/tls).
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the CA that signed the serving certificate.
pub const CA_CRT: &str = "ca.crt";
/// Annotation: start of the certificate's validity (RFC 3339).
pub const NOT_BEFORE: &str = "logfleet.dev/not-before";
/// Annotation: end of the certificate's validity (RFC 3339).
pub const NOT_AFTER: &str = "logfleet.dev/not-after";
/// Annotation: the DNS names the serving certificate was issued for.
pub const DNS_NAMES: &str = "logfleet.dev/dns-names";

/// Lifetime of the controller's CA: long, since agents load it at start
/// (a new CA reaches them only when they restart).
pub const CA_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 3650);
/// Lifetime of the serving certificate; it is renewed after two thirds.
pub const SERVING_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 90);

/// A certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// rcgen refused (a bug, or a CA key in the Secret that is not one).
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// A time out of the certificate format's range.
    #[error("certificate validity out of range: {0}")]
    Time(String),
}

/// Name of the controller-made token Secret.
pub fn credentials_name(lc: &str) -> String {
    child(lc, "-credentials", MAX_CHILD)
}

/// Name of the controller's CA Secret (only the controller reads it).
pub fn ca_name(lc: &str) -> String {
    child(lc, "-ca", MAX_CHILD)
}

/// Name of the controller-made serving certificate Secret.
pub fn serving_name(lc: &str) -> String {
    child(lc, "-aggregator-tls", MAX_CHILD)
}

/// 256 random bits, hex: a bearer token.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value of a Secret as text, when present and UTF-8 (trimmed, as the
/// aggregator trims token files).
pub fn value(secret: &Secret, key: &str) -> Option<String> {
    let v = secret.data.as_ref()?.get(key)?;
    let s = std::str::from_utf8(&v.0).ok()?.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Whether a token Secret holds both tokens.
pub fn tokens_complete(secret: Option<&Secret>) -> bool {
    secret.is_some_and(|s| value(s, PUSH_TOKEN).is_some() && value(s, READ_TOKEN).is_some())
}

/// New token data (both tokens random).
pub fn new_tokens() -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (PUSH_TOKEN.into(), ByteString(random_token().into_bytes())),
        (READ_TOKEN.into(), ByteString(random_token().into_bytes())),
    ])
}

/// A certificate and its key, PEM, with its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Certificate.
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
    /// Valid from.
    pub not_before: Timestamp,
    /// Valid until.
    pub not_after: Timestamp,
}

impl Issued {
    /// The annotations recording the validity.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NOT_BEFORE.into(), self.not_before.to_string()),
            (NOT_AFTER.into(), self.not_after.to_string()),
        ])
    }
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, CredentialsError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|e| CredentialsError::Time(e.to_string()))
}

fn validity(
    now: Timestamp,
    lifetime: SignedDuration,
) -> Result<(Timestamp, Timestamp), CredentialsError> {
    // An hour of slack for clocks behind ours.
    let from = now
        .checked_sub(SignedDuration::from_hours(1))
        .map_err(|e| CredentialsError::Time(e.to_string()))?;
    let until = now
        .checked_add(lifetime)
        .map_err(|e| CredentialsError::Time(e.to_string()))?;
    Ok((from, until))
}

/// The CA's parameters: the same for issuing it and, later, for signing
/// with it (rcgen needs the issuer's name and key usages, which are ours).
fn ca_params(collector: &str) -> Result<rcgen::CertificateParams, CredentialsError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "logfleet");
    // A CN is at most 64 characters.
    let cn: String = format!("logfleet CA {collector}")
        .chars()
        .take(64)
        .collect();
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    Ok(p)
}

/// A new CA for `collector`.
pub fn issue_ca(collector: &str, now: Timestamp) -> Result<Issued, CredentialsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = ca_params(collector)?;
    let (from, until) = validity(now, CA_LIFETIME)?;
    p.not_before = offset(from)?;
    p.not_after = offset(until)?;
    let cert = p.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before: from,
        not_after: until,
    })
}

/// A serving certificate for `dns_names`, signed by the CA `ca` of
/// `collector`.
pub fn issue_serving(
    collector: &str,
    ca: &Issued,
    dns_names: &[String],
    now: Timestamp,
) -> Result<Issued, CredentialsError> {
    let issuer = rcgen::Issuer::new(
        ca_params(collector)?,
        rcgen::KeyPair::from_pem(&ca.key_pem)?,
    );
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(dns_names.to_vec())?;
    let (from, until) = validity(now, SERVING_LIFETIME)?;
    p.not_before = offset(from)?;
    p.not_after = offset(until)?;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let mut dn = rcgen::DistinguishedName::new();
    let cn: String = dns_names
        .first()
        .map(String::as_str)
        .unwrap_or("logfleet")
        .chars()
        .take(64)
        .collect();
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before: from,
        not_after: until,
    })
}

/// The CA as stored in its Secret, when complete.
pub fn stored(secret: &Secret) -> Option<Issued> {
    let ann = secret.metadata.annotations.as_ref()?;
    Some(Issued {
        cert_pem: value(secret, TLS_CRT)?,
        key_pem: value(secret, TLS_KEY)?,
        not_before: ann.get(NOT_BEFORE)?.parse().ok()?,
        not_after: ann.get(NOT_AFTER)?.parse().ok()?,
    })
}

/// Whether a certificate valid over `[from, until]` is due for renewal at
/// `now`: two thirds of its life are gone (cert-manager's default rule).
pub fn due(from: Timestamp, until: Timestamp, now: Timestamp) -> bool {
    let life = until.duration_since(from);
    let renew_at = from.checked_add(life * 2 / 3).unwrap_or(from);
    now >= renew_at
}

/// What to do about the TLS Secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPlan {
    /// Issue a new CA (and so a new serving certificate).
    pub new_ca: bool,
    /// Issue a new serving certificate.
    pub new_serving: bool,
}

/// Decides from the live Secrets (`None`: absent) whether to issue.
pub fn plan_tls(
    ca: Option<&Secret>,
    serving: Option<&Secret>,
    dns_names: &[String],
    now: Timestamp,
) -> TlsPlan {
    let ca = ca.and_then(stored);
    let new_ca = ca
        .as_ref()
        .is_none_or(|c| due(c.not_before, c.not_after, now));
    let serving_ok = |s: &Secret| {
        let Some(issued) = stored(s) else {
            return false;
        };
        let signed_by_ours = ca
            .as_ref()
            .is_some_and(|c| value(s, CA_CRT).as_deref() == Some(c.cert_pem.trim()));
        let names = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DNS_NAMES))
            .is_some_and(|n| *n == dns_names.join(","));
        signed_by_ours && names && !due(issued.not_before, issued.not_after, now)
    };
    TlsPlan {
        new_ca,
        new_serving: new_ca || !serving.is_some_and(serving_ok),
    }
}

/// The names agents and readers reach the aggregator by: its Service in
/// every form cluster DNS answers, and its pod through the headless one.
pub fn serving_dns_names(collector: &str, ns: &str) -> Vec<String> {
    let svc = crate::names::aggregator_name(collector);
    let headless = crate::names::aggregator_headless_name(collector);
    vec![
        format!("{svc}.{ns}.svc"),
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}-0.{headless}.{ns}.svc"),
        // Every replica over ClickHouse (the controller asks there).
        format!("{headless}.{ns}.svc"),
        // Through `kubectl port-forward`, for `logfleet query` and status.
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(data: &[(&str, &str)], ann: BTreeMap<String, String>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(ann),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn tokens_are_random_and_complete_only_with_both() {
        let a = new_tokens();
        let b = new_tokens();
        assert_ne!(a, b);
        assert_ne!(a[PUSH_TOKEN], a[READ_TOKEN]);
        assert_eq!(a[PUSH_TOKEN].0.len(), 64);
        let full = Secret {
            data: Some(a),
            ..Default::default()
        };
        assert!(tokens_complete(Some(&full)));
        assert!(!tokens_complete(None));
        assert!(!tokens_complete(Some(&secret(
            &[(PUSH_TOKEN, "p")],
            BTreeMap::new()
        ))));
        assert!(!tokens_complete(Some(&secret(
            &[(PUSH_TOKEN, "p"), (READ_TOKEN, " \n")],
            BTreeMap::new()
        ))));
    }

    #[test]
    fn renewal_after_two_thirds_of_the_life() {
        let from = t("2026-01-01T00:00:00Z");
        let until = t("2026-04-01T00:00:00Z"); // 90 days
        assert!(!due(from, until, t("2026-02-28T00:00:00Z")));
        assert!(due(from, until, t("2026-03-02T00:00:00Z")));
    }

    #[test]
    fn plan_issues_what_is_missing_due_or_mismatched() {
        let now = t("2026-12-02T00:00:00Z");
        let names = serving_dns_names("logs", "logfleet");
        let ca = issue_ca("logs", now).unwrap();
        let serving = issue_serving("logs", &ca, &names, now).unwrap();
        let ca_secret = secret(
            &[(TLS_CRT, &ca.cert_pem), (TLS_KEY, &ca.key_pem)],
            ca.annotations(),
        );
        let mut ann = serving.annotations();
        ann.insert(DNS_NAMES.into(), names.join(","));
        let serving_secret = secret(
            &[
                (TLS_CRT, &serving.cert_pem),
                (TLS_KEY, &serving.key_pem),
                (CA_CRT, &ca.cert_pem),
            ],
            ann.clone(),
        );
        let keep = TlsPlan {
            new_ca: false,
            new_serving: false,
        };
        assert_eq!(
            plan_tls(Some(&ca_secret), Some(&serving_secret), &names, now),
            keep
        );
        // Nothing yet: both.
        assert_eq!(
            plan_tls(None, None, &names, now),
            TlsPlan {
                new_ca: true,
                new_serving: true
            }
        );
        // The serving certificate 61 days on: renewed, the CA kept.
        let later = now
            .checked_add(SignedDuration::from_hours(24 * 61))
            .unwrap();
        assert_eq!(
            plan_tls(Some(&ca_secret), Some(&serving_secret), &names, later),
            TlsPlan {
                new_ca: false,
                new_serving: true
            }
        );
        // Other names (a renamed Service) or another CA: reissued.
        assert!(plan_tls(Some(&ca_secret), Some(&serving_secret), &names[1..], now).new_serving);
        let other_ca = issue_ca("logs", now).unwrap();
        let other = secret(
            &[(TLS_CRT, &other_ca.cert_pem), (TLS_KEY, &other_ca.key_pem)],
            other_ca.annotations(),
        );
        assert!(plan_tls(Some(&other), Some(&serving_secret), &names, now).new_serving);
        // Annotations lost: cannot tell the validity, so reissue.
        let bare = secret(
            &[(TLS_CRT, &ca.cert_pem), (TLS_KEY, &ca.key_pem)],
            BTreeMap::new(),
        );
        assert!(plan_tls(Some(&bare), Some(&serving_secret), &names, now).new_ca);
    }

    #[test]
    fn the_serving_certificate_verifies_against_the_ca_for_every_name() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let now = Timestamp::now();
        let names = serving_dns_names("a.long.dotted.name", "ns");
        let ca = issue_ca("a.long.dotted.name", now).unwrap();
        let serving = issue_serving("a.long.dotted.name", &ca, &names, now).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).unwrap();
        for n in &names {
            let name = ServerName::try_from(n.clone()).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        let wrong = ServerName::try_from("other.ns.svc").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &wrong, &[], UnixTime::now())
            .is_err());
    }
}
