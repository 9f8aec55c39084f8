//! TLS on both aggregator ports: agents and the CLI verify the server with
//! --tls-ca; a plaintext client gets a clear error.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn agent_and_cli_over_tls_and_plaintext_is_refused() {
    over_tls(&[]);
}

/// The same with the aggregator over ClickHouse.
#[test]
fn the_same_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    let url = ch.url();
    over_tls(&["--store", "clickhouse", "--clickhouse-url", &url]);
}

fn over_tls(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec!["--tls-cert", c.as_str(), "--tls-key", k.as_str()];
    args.extend_from_slice(store);
    let (agg, plain_url) = aggregator(dir.path(), &args);
    let url = plain_url.replace("http://", "https://");

    let root = dir.path().join("pods");
    let cdir = root.join("ns_pod_uid/c");
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(
        cdir.join("0.log"),
        "2026-11-27T10:00:00.000000001Z stdout F over tls\n",
    )
    .unwrap();
    let _agent = agent(dir.path(), "n1", &root, &url, &["--tls-ca", &c]);

    let got = wait_for("the line over TLS", Duration::from_secs(30), || {
        let v = query_all(&url, "{}", &["--tls-ca", &c])?;
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(got[0]["line"], "over tls");

    // Plaintext against the TLS port: a clear, single-line error.
    let out = cli(&["agents", "--aggregator", &plain_url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Without the CA the server is not trusted.
    let out = cli(&["agents", "--aggregator", &url]);
    assert!(!out.status.success());

    // The HTTP port speaks TLS too: a plaintext request gets no metrics.
    let mut s = std::net::TcpStream::connect(&agg.http).unwrap();
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("logfleet_aggregator"),
        "metrics served in plaintext"
    );
}

/// A CA and a serving certificate for 127.0.0.1 signed by it, as PEM.
fn issue(dir: &std::path::Path, tag: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
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
    let ca_path = dir.join(format!("ca-{tag}.pem"));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    (
        ca_path.display().to_string(),
        leaf.pem(),
        key.serialize_pem(),
    )
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (ca1, c1, k1) = issue(dir.path(), "one");
    let (ca2, c2, k2) = issue(dir.path(), "two");
    std::fs::write(&cert, c1).unwrap();
    std::fs::write(&key, k1).unwrap();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let (mut agg, plain_url) = aggregator(
        dir.path(),
        &[
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
            "--tls-reload-interval",
            "200ms",
        ],
    );
    let url = plain_url.replace("http://", "https://");
    let agents = |ca: &str| cli(&["agents", "--aggregator", &url, "--tls-ca", ca]).status;
    assert!(agents(&ca1).success());
    assert!(
        !agents(&ca2).success(),
        "trusted by a CA that did not sign it"
    );

    // A renewal as a Secret update delivers it: both files change.
    std::fs::write(&cert, c2).unwrap();
    std::fs::write(&key, k2).unwrap();
    wait_for("the renewed certificate", Duration::from_secs(30), || {
        agents(&ca2).success().then_some(())
    });
    assert!(
        !agents(&ca1).success(),
        "the old certificate is still served"
    );
    assert!(agg.is_running(), "the aggregator restarted");
}
