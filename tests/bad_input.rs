//! Bad input gets a clear error, never a crash or silent loss of the good
//! data around it.

mod common;

use std::time::Duration;

use common::*;
use logfleet_proto::v1::{
    ingest_client::IngestClient, Compression, FileLabels, FileRange, LineBatch, PushRequest,
};
use logfleet_proto::{Line, LinesBuilder};
use prost::Message;

#[test]
fn malformed_binary_endless_and_empty_files_keep_the_good_lines() {
    malformed_files(&[]);
}

/// The same with the lines stored in ClickHouse.
#[test]
fn malformed_files_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    malformed_files(&["--store", "clickhouse", "--clickhouse-url", &ch.url()]);
}

fn malformed_files(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    let c = root.join("ns_bad_uid/c");
    let e = root.join("ns_empty_uid2/c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::create_dir_all(&e).unwrap();
    std::fs::write(e.join("0.log"), b"").unwrap();
    let mut data = Vec::new();
    data.extend_from_slice(b"2026-11-27T10:00:00.000000001Z stdout F good 1\n");
    data.extend_from_slice(b"this is not a CRI line\n");
    data.extend_from_slice(b"\x00\x01\x02\xff\xfe binary\n");
    data.extend_from_slice(b"2026-11-27T10:00:00.000000002Z stdout F bad utf8 \xc3\x28 kept\n");
    data.extend_from_slice(b"2026-11-27T10:00:00.000000003Z stdout X wrong tag\n");
    data.extend_from_slice(b"2026-11-27T10:00:00.000000004Z stdout F good 2\n");
    data.extend(std::iter::repeat_n(b'x', 50 << 20));
    data.extend_from_slice(b"\n2026-11-27T10:00:00.000000005Z stderr F good 3\n");
    std::fs::write(c.join("0.log"), &data).unwrap();

    let (_agg, url) = aggregator(dir.path(), store);
    let _agent = agent(dir.path(), "n1", &root, &url, &["--compression", "zstd"]);
    let good = wait_for("good lines", Duration::from_secs(60), || {
        let v = query_all(&url, r#"{pod="bad"} |= "good""#, &[])?;
        (v.len() == 3).then_some(v)
    });
    assert_eq!(good[2]["stream"], "stderr");
    assert_eq!(good[2]["ts"], "2026-11-27T10:00:00.000000005Z");
    let odd = query_all(&url, r#"{pod="bad"} != "good" != "xxxxxxxxxx""#, &[]).unwrap();
    let texts: Vec<&str> = odd.iter().map(|v| v["line"].as_str().unwrap()).collect();
    assert_eq!(odd.len(), 4, "{texts:?}");
    assert!(
        odd.iter().filter(|v| v["unparsed"] == true).count() == 3,
        "{odd:?}"
    );
    let utf8 = odd
        .iter()
        .find(|v| v.get("line_base64").is_some())
        .expect("invalid UTF-8 kept");
    assert!(utf8["line_base64"].as_str().unwrap().len() > 10);
    // The endless line arrives whole, in pieces that say so.
    let pieces = wait_for("all pieces", Duration::from_secs(60), || {
        let v = query_all(&url, r#"{pod="bad"} |= "xxxxxxxxxx""#, &[])?;
        let total: usize = v.iter().map(|p| p["line"].as_str().unwrap().len()).sum();
        (total == 50 << 20).then_some(v)
    });
    assert!(pieces.len() >= 50 << 20 >> 18, "cut at the 256 KiB default");
    assert!(pieces[..pieces.len() - 1].iter().all(|p| p["cut"] == true));
    assert!(pieces.last().unwrap().get("cut").is_none());
    assert_eq!(query_all(&url, r#"{pod="empty"}"#, &[]).unwrap().len(), 0);
}

fn push_req(ranges: Vec<FileRange>, lines: Vec<Line>, c: Compression) -> PushRequest {
    let mut b = LinesBuilder::default();
    for l in &lines {
        b.push_line(l);
    }
    let (payload, raw_len) = logfleet_proto::encode_payload(&b.finish(), c, 1).unwrap();
    PushRequest {
        node: "attacker".into(),
        compression: c as i32,
        raw_len,
        ranges,
        payload,
    }
}

fn range(id: u64, start: u64, end: u64) -> FileRange {
    FileRange {
        file_id: id,
        labels: Some(FileLabels {
            namespace: "ns".into(),
            pod: "../../etc/passwd".into(),
            ..Default::default()
        }),
        start,
        end,
        lines_end: 0,
    }
}

fn line(offset: u64, text: &str) -> Line {
    Line {
        offset,
        ts: 1,
        text: text.as_bytes().to_vec().into(),
        stream: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bombs_oversize_and_wrong_tokens_are_refused_and_counted() {
    refused_and_counted(&[]).await;
}

/// The same with the lines stored in ClickHouse: what is refused is
/// refused before it reaches ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    refused_and_counted(&["--store", "clickhouse", "--clickhouse-url", &ch.url()]).await;
}

async fn refused_and_counted(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let tok = token.display().to_string();
    let (agg, url) = tokio::task::block_in_place(|| {
        let mut args = vec![
            "--token-file",
            &tok,
            "--max-message",
            "1MiB",
            "--max-payload",
            "4MiB",
        ];
        args.extend_from_slice(store);
        ready_aggregator(dir.path(), &args)
    });
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        Ok(r)
    };
    let mut client =
        IngestClient::with_interceptor(channel.clone(), auth).max_encoding_message_size(64 << 20);

    let ok = client
        .push(push_req(
            vec![range(1, 0, 10)],
            vec![line(0, "fine")],
            Compression::Zstd,
        ))
        .await
        .expect("valid push");
    assert_eq!(ok.into_inner().stored_lines, 1);

    let mut bad: Vec<(&str, PushRequest)> = Vec::new();
    let mut garbage = push_req(vec![range(2, 0, 10)], vec![], Compression::Zstd);
    garbage.payload = vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5].into();
    garbage.raw_len = 100;
    bad.push(("garbage", garbage));
    let zeros = vec![0u8; 256 << 20];
    let mut bomb = push_req(vec![range(3, 0, 10)], vec![], Compression::Zstd);
    bomb.payload = zstd::bulk::compress(&zeros, 3).unwrap().into();
    bomb.raw_len = 1000;
    bad.push(("bomb", bomb));
    let mut big_claim = push_req(vec![range(4, 0, 10)], vec![], Compression::Zstd);
    big_claim.raw_len = 1 << 40;
    bad.push(("claims 1 TiB", big_claim));
    bad.push((
        "line outside its range",
        push_req(
            vec![range(5, 100, 200)],
            vec![line(50, "x")],
            Compression::Gzip,
        ),
    ));
    bad.push(("no labels", {
        let mut r = push_req(vec![range(6, 0, 10)], vec![line(0, "x")], Compression::None);
        r.ranges[0].labels = None;
        r
    }));
    let mut unknown = push_req(vec![range(7, 0, 10)], vec![], Compression::None);
    unknown.compression = 42;
    bad.push(("unknown compression", unknown));
    for (what, req) in bad {
        let err = client.push(req).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(!err.message().is_empty());
    }
    // Over the message limit: refused before it is even decoded.
    let mut huge = push_req(vec![range(8, 0, 10)], vec![], Compression::None);
    huge.payload = vec![7u8; 2 << 20].into();
    let err = client.push(huge).await.expect_err("oversized message");
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    // Raw bytes that are not protobuf at all.
    let mut raw = IngestClient::with_interceptor(channel.clone(), auth);
    let not_proto = PushRequest {
        payload: b"\xff\xff\xff".to_vec().into(),
        ..Default::default()
    };
    assert!(raw.push(not_proto).await.is_err());

    // Wrong and missing tokens.
    for header in [Some("Bearer nope"), None] {
        let with = move |mut r: tonic::Request<()>| {
            if let Some(h) = header {
                r.metadata_mut().insert("authorization", h.parse().unwrap());
            }
            Ok(r)
        };
        let mut intruder = IngestClient::with_interceptor(channel.clone(), with);
        let req = push_req(
            vec![range(9, 0, 10)],
            vec![line(0, "intruder")],
            Compression::None,
        );
        let err = intruder.push(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{header:?}");
    }

    // Loki's push takes the push token too, and nothing without it.
    let push = r#"{"streams":[{"stream":{"job":"x"},"values":[["1","loki line"]]}]}"#;
    let post = |headers: &[(&str, &str)]| {
        tokio::task::block_in_place(|| {
            http_post(&agg.http, "/loki/api/v1/push", headers, push.as_bytes()).unwrap_or_default()
        })
    };
    let ct = ("content-type", "application/json");
    let r = post(&[ct]);
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = post(&[ct, ("authorization", "Bearer s3cret")]);
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");

    // The server still serves, stored exactly the one good line (and the
    // Loki push), and counted
    // what it refused.
    let (out, metrics) = tokio::task::block_in_place(|| {
        let out = cli(&[
            "query",
            "--aggregator",
            &url,
            "--token-file",
            &tok,
            "{}",
            "--output",
            "jsonl",
            "--limit",
            "0",
        ]);
        (out, http_get(&agg.http, "/metrics").unwrap_or_default())
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains("loki line"), "{stdout}");
    assert!(
        stdout.contains("\"pod\":\"../../etc/passwd\""),
        "labels are data: {stdout}"
    );
    assert!(!dir.path().join("etc").exists());
    assert_eq!(
        metric(
            &metrics,
            "logfleet_aggregator_unauthenticated_requests_total"
        ),
        // Two gRPC pushes and the Loki push without a token.
        3.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "logfleet_aggregator_rejected_pushes_total") >= 1.0,
        "{metrics}"
    );
    // The embedded store's own metrics only where it stores: over
    // ClickHouse they would be zeros that say nothing.
    assert_eq!(
        metrics.contains("\nlogfleet_aggregator_segments "),
        store.is_empty(),
        "{metrics}"
    );
    let _ = LineBatch::decode(&b""[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_columns_are_refused() {
    inconsistent_columns(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_columns_are_refused_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    inconsistent_columns(&["--store", "clickhouse", "--clickhouse-url", &ch.url()]).await;
}

async fn inconsistent_columns(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (_agg, url) = tokio::task::block_in_place(|| ready_aggregator(dir.path(), store));
    let mut client = IngestClient::connect(url).await.unwrap();
    let mut b = LinesBuilder::default();
    b.push(0, 1, 0, 1, 0, b"abc");
    let mut batch = b.finish();
    batch.len[0] = 1000;
    let raw = batch.encode_to_vec();
    let req = PushRequest {
        node: "n".into(),
        compression: Compression::None as i32,
        raw_len: raw.len() as u64,
        ranges: vec![range(1, 0, 10)],
        payload: raw.into(),
    };
    let err = client.push(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("inconsistent"), "{}", err.message());
}

#[test]
fn cli_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let (_agg, url) = aggregator(dir.path(), &["--token-file", &token.display().to_string()]);
    let tok = token.display().to_string();
    for (args, want) in [
        (
            vec![
                "query",
                "--aggregator",
                url.as_str(),
                "--token-file",
                &tok,
                r#"{9foo="x"}"#,
            ],
            "\"9foo\" is not a label name",
        ),
        (
            vec![
                "query",
                "--aggregator",
                url.as_str(),
                "--token-file",
                &tok,
                r#"{pod=~"("}"#,
            ],
            "invalid regex",
        ),
        (
            vec![
                "query",
                "--aggregator",
                url.as_str(),
                "--token-file",
                &tok,
                "pod",
            ],
            "starts with a selector",
        ),
        (
            vec!["query", "--aggregator", url.as_str(), "{}"],
            "refused the token",
        ),
        (
            vec![
                "query",
                "--aggregator",
                url.as_str(),
                "{}",
                "--from",
                "2026-11-28T10:00:00Z",
                "--to",
                "2026-11-27T10:00:00Z",
            ],
            "the time range is empty",
        ),
        (
            vec!["agents", "--aggregator", "http://127.0.0.1:1"],
            "unreachable",
        ),
        (
            vec![
                "query",
                "--aggregator",
                url.as_str(),
                "--token-file",
                &tok,
                "{}",
                "--from",
                "yesterday",
            ],
            "bad time",
        ),
    ] {
        let out = cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Addresses as people type them: a bare `host:port` works, and the
/// aggregator's HTTP port is named as the mistake it is (it used to say
/// "grpc-status header missing, mapped from HTTP status code 404").
#[test]
fn bare_addresses_work_and_the_http_port_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (agg, url) = aggregator(dir.path(), &[]);
    let bare = url.trim_start_matches("http://");
    let out = cli(&["agents", "--aggregator", bare]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["agents", "--aggregator", &format!("http://{}", agg.http)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not gRPC") && err.contains("gRPC port"),
        "{err}"
    );
}

/// `logfleet query --output jsonl | head -1`: a reader that stops early
/// ends the command quietly with 0, as for `raw` (it printed "Broken pipe"
/// and exited 1).
#[test]
fn a_closed_stdout_ends_a_query_quietly() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    store_lines(&url, 20_000, 100, |i| {
        format!("line {i} {}", "x".repeat(60))
    });
    for output in ["jsonl", "raw"] {
        let mut child = std::process::Command::new(bin())
            .args([
                "query",
                "--aggregator",
                &url,
                "{}",
                "--limit",
                "0",
                "--output",
                output,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        // The reader is gone (like `head -1`): the rest hits a closed pipe.
        let out = child.wait_with_output().unwrap();
        assert!(!first.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{output}: {:?} {err}", out.status);
        assert!(!err.contains("Broken pipe"), "{output}: {err}");
        let _ = std::io::stderr().flush();
    }
}

/// Bench arguments that made no sense (`--seconds 0` printed "NaN%",
/// `--files 0` a bare "No such file or directory") are refused up front.
#[test]
fn bench_arguments_are_checked() {
    for (args, want) in [
        (["bench", "idle", "--seconds", "0"], "--seconds"),
        (["bench", "idle", "--files", "0"], "--files"),
    ] {
        let out = cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains(want) && err.contains("not in 1.."),
            "{args:?}: {err}"
        );
    }
}

/// With a token configured, the HTTP agents listing needs it like gRPC
/// queries do; the probes and metrics stay open for kubelet and
/// Prometheus (issue 14: it answered anyone).
#[test]
fn the_agents_listing_needs_the_token_probes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (agg, _url) = aggregator(dir.path(), &["--token-file", &token.display().to_string()]);
    let get = |path: &str, auth: Option<&str>| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&agg.http).unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get("/api/v1/agents", None).starts_with("HTTP/1.1 401"));
    assert!(get("/api/v1/agents", Some("Bearer wrong")).starts_with("HTTP/1.1 401"));
    assert!(get("/api/v1/agents", Some("Bearer s3cret")).starts_with("HTTP/1.1 200"));
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert!(get(open, None).starts_with("HTTP/1.1 200"), "{open}");
    }
}

/// The newest N lines in time order (a stack trace read newest-first is
/// upside down): `--limit N --reverse`.
#[test]
fn the_newest_lines_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    store_lines(&url, 10, 10, |i| format!("frame {i}"));
    let out = cli(&[
        "query",
        "--aggregator",
        &url,
        "{}",
        "--limit",
        "3",
        "--reverse",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "frame 7\nframe 8\nframe 9\n"
    );
    let out = cli(&[
        "query",
        "--aggregator",
        &url,
        "{}",
        "--limit",
        "0",
        "--reverse",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give a --limit"));
}

/// One spelling works everywhere: `json` for `agents` (which prints JSON
/// lines) as `jsonl` does (issue 14).
#[test]
fn output_spellings_are_accepted_by_each_command() {
    let dir = tempfile::tempdir().unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    for spelling in ["json", "jsonl"] {
        let out = cli(&["agents", "--aggregator", &url, "--output", spelling]);
        assert!(out.status.success(), "{spelling}: {out:?}");
    }
    let out = cli(&["status", "--from-file", "/nonexistent", "--output", "jsonl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("invalid value"), "{err}");
}

/// A query mistake is reported before any round trip, with its position,
/// even when no aggregator answers (it said "unreachable"; issue 13).
#[test]
fn query_mistakes_are_found_before_connecting() {
    let nobody = format!("http://127.0.0.1:{}", free_port());
    for cmd in ["query", "tail"] {
        let out = cli(&[cmd, "--aggregator", &nobody, r#"{namespace="x""#]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("bad query at position"), "{cmd}: {err}");
        assert!(!err.contains("unreachable"), "{cmd}: {err}");
    }
}

/// Stores `n` lines of one file through a real push: line `i` at offset
/// `i * step`, timestamp `1000 + i`, text `text(i)`.
fn store_lines(url: &str, n: u64, step: u64, text: impl Fn(u64) -> String) {
    let mut lines = logfleet_proto::LinesBuilder::default();
    for i in 0..n {
        lines.push(0, 1_000 + i as i64, i * step, 1, 0, text(i).as_bytes());
    }
    let (payload, raw_len) =
        logfleet_proto::encode_payload(&lines.finish(), Compression::Zstd, 1).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        logfleet_proto::v1::ingest_client::IngestClient::connect(url.to_owned())
            .await
            .unwrap()
            .push(PushRequest {
                node: "n".into(),
                compression: Compression::Zstd as i32,
                raw_len,
                ranges: vec![range(1, 0, n * step)],
                payload,
            })
            .await
            .unwrap();
    });
}
