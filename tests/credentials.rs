//! Separate credentials and ports for pushing and reading: an agent's
//! token (every node holds one) cannot read logs, a reader's cannot push,
//! and with a query port of its own the ingest port serves no queries.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn push_and_read_tokens_are_separate_and_queries_have_their_own_port() {
    let dir = tempfile::tempdir().unwrap();
    let (push, read) = (dir.path().join("push"), dir.path().join("read"));
    std::fs::write(&push, "push-secret\n").unwrap();
    std::fs::write(&read, "read-secret\n").unwrap();
    let (p, r) = (push.display().to_string(), read.display().to_string());
    let query_port = free_port();
    let query_url = format!("http://127.0.0.1:{query_port}");
    let (agg, ingest_url) = aggregator(
        dir.path(),
        &[
            "--push-token-file",
            &p,
            "--read-token-file",
            &r,
            "--query-addr",
            &format!("127.0.0.1:{query_port}"),
        ],
    );

    let root = dir.path().join("pods");
    let cdir = root.join("ns_pod_uid/c");
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(
        cdir.join("0.log"),
        "2026-11-27T10:00:00.000000001Z stdout F pushed with the push token\n",
    )
    .unwrap();
    let _agent = agent(dir.path(), "n1", &root, &ingest_url, &["--token-file", &p]);

    let got = wait_for(
        "the line, read with the read token",
        Duration::from_secs(30),
        || {
            let v = query_all(&query_url, "{namespace=\"ns\"}", &["--token-file", &r])?;
            (!v.is_empty()).then_some(v)
        },
    );
    assert_eq!(got[0]["line"], "pushed with the push token");

    // The push token reads nothing, on either API.
    let out = cli(&[
        "query",
        "--aggregator",
        &query_url,
        "{namespace=\"ns\"}",
        "--token-file",
        &p,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the token"), "{err}");
    let agents = |token: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&agg.http).unwrap();
        write!(
            s,
            "GET /api/v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(agents("push-secret").starts_with("HTTP/1.1 401"));
    let ok = agents("read-secret");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"n1\""), "{ok}");

    // The read token cannot push: an agent holding it gets nothing in.
    let root2 = dir.path().join("pods2");
    let cdir2 = root2.join("ns2_pod_uid/c");
    std::fs::create_dir_all(&cdir2).unwrap();
    std::fs::write(
        cdir2.join("0.log"),
        "2026-11-27T10:00:00.000000001Z stdout F never stored\n",
    )
    .unwrap();
    let reader_agent = agent(dir.path(), "n2", &root2, &ingest_url, &["--token-file", &r]);
    wait_for(
        "the agent to report the refusal",
        Duration::from_secs(30),
        || {
            reader_agent
                .log_text()
                .contains("wrong bearer token")
                .then_some(())
        },
    );
    let none = query_all(&query_url, "{namespace=\"ns2\"}", &["--token-file", &r]).unwrap();
    assert!(none.is_empty(), "{none:?}");

    // The ingest port serves no queries once they have their own port.
    let out = cli(&[
        "query",
        "--aggregator",
        &ingest_url,
        "{namespace=\"ns\"}",
        "--token-file",
        &r,
    ]);
    assert!(!out.status.success(), "a query answered on the ingest port");
}

#[test]
fn a_half_open_token_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let push = dir.path().join("push");
    std::fs::write(&push, "push-secret\n").unwrap();
    let out = cli(&[
        "aggregator",
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--push-token-file",
        &push.display().to_string(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no read token"), "{err}");
}
