//! `logfleet aggregator --store clickhouse`, the real binaries against
//! Debian's ClickHouse on loopback: two aggregator replicas share one
//! store; one agent pushes through replica A, then (A killed with SIGKILL)
//! through B, then (B killed, A back) through A again, with a kubelet-style
//! rotation on the way. Every written line is in the store once, through
//! either replica; `/readyz` says when ClickHouse is away; `logfleet
//! agents` is served from ClickHouse.

mod common;

use std::time::Duration;

use common::*;
use logfleet_kubesim::clickhouse::Server;

fn cri(i: usize) -> (String, String) {
    let text = format!("line {i} status={}", 200 + i % 3);
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let stream = if i.is_multiple_of(7) {
        "stderr"
    } else {
        "stdout"
    };
    (format!("{ts} {stream} F {text}\n"), text)
}

#[test]
fn replicas_fail_over_and_every_line_is_stored_once() {
    let mut ch = Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = [
        "--store",
        "clickhouse",
        "--clickhouse-url",
        &ch.url(),
        "--clickhouse-database",
        "fleet",
    ];
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (mut a, url_a) = aggregator(&da, &store);
    let (mut b, url_b) = aggregator(&db, &store);
    for p in [&a, &b] {
        wait_for("a replica ready", Duration::from_secs(60), || {
            http_get(&p.http, "/readyz").filter(|r| r.starts_with("HTTP/1.1 200"))
        });
    }
    let root = dir.path().join("pods");
    let cdir = root.join("shop_checkout-1_uid-1/server");
    std::fs::create_dir_all(&cdir).unwrap();
    let log = cdir.join("0.log");
    let mut written = Vec::new();
    let write = |from: usize, to: usize, written: &mut Vec<String>| {
        for i in from..to {
            let (rec, text) = cri(i);
            append(&log, &rec);
            written.push(text);
        }
    };
    let stored = |url: &str, n: usize| {
        wait_for(
            &format!("{n} lines stored"),
            Duration::from_secs(60),
            || query_all(url, "{}", &[]).filter(|v| v.len() >= n),
        )
    };

    // Through A.
    let mut agent = agent(dir.path(), "node-1", &root, &url_a, &[]);
    write(0, 200, &mut written);
    stored(&url_b, 200);
    // A dies; the agent's pushes fail until it is sent to B (a Service
    // would do that), more lines meanwhile, and a rotation.
    a.kill9();
    write(200, 300, &mut written);
    std::fs::rename(&log, cdir.join("0.log.20261203-101500")).unwrap();
    write(300, 400, &mut written);
    agent.kill9();
    let mut agent = common::agent(dir.path(), "node-1", &root, &url_b, &[]);
    stored(&url_b, 400);
    // B dies, A comes back and takes over.
    b.kill9();
    a.restart();
    wait_for("A ready again", Duration::from_secs(60), || {
        http_get(&a.http, "/readyz").filter(|r| r.starts_with("HTTP/1.1 200"))
    });
    write(400, 500, &mut written);
    agent.kill9();
    let _agent = common::agent(dir.path(), "node-1", &root, &url_a, &[]);
    let lines = stored(&url_a, 500);
    b.restart();
    let via_b = stored(&url_b, 500);
    for got in [&lines, &via_b] {
        let got = multiset(
            got.iter()
                .map(|l| l["line"].as_str().unwrap_or_default().to_owned()),
        );
        assert_eq!(got, multiset(written.iter().cloned()), "every line once");
    }
    assert_eq!(lines[0]["namespace"], "shop");
    assert_eq!(lines[0]["pod"], "checkout-1");

    // A filtered query, as the embedded store answers it.
    let five = query_all(
        &url_a,
        r#"{pod="checkout-1", stream="stdout"} |= "status=201""#,
        &[],
    )
    .unwrap();
    let want = (0..500)
        .filter(|i: &usize| i % 3 == 1 && !i.is_multiple_of(7))
        .count();
    assert_eq!(five.len(), want);

    // The agent list comes from ClickHouse, whichever replica answers.
    let out = cli(&["agents", "--aggregator", &url_b, "--output", "jsonl"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap_or("{}")).unwrap();
    assert_eq!(node["node"], "node-1");
    assert_eq!(node["lines"], 500);

    // Loki's read API, as Grafana asks it, from ClickHouse.
    let enc = |q: &str| -> String {
        q.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let body = |resp: Option<String>| -> serde_json::Value {
        let r = resp.unwrap_or_default();
        let b = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {r}"))
    };
    let path = format!(
        "/loki/api/v1/query_range?limit=1000&query={}",
        enc(r#"{pod="checkout-1", stream="stdout"} |= "status=201""#)
    );
    let r = body(http_get(&a.http, &path));
    assert_eq!(r["data"]["resultType"], "streams", "{r}");
    let values: usize = r["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["values"].as_array().unwrap().len())
        .sum();
    assert_eq!(values, want);
    let names = body(http_get(&a.http, "/loki/api/v1/labels"));
    for n in ["namespace", "pod", "container", "node", "stream"] {
        assert!(
            names["data"].as_array().unwrap().iter().any(|v| v == n),
            "{names}"
        );
    }
    let pods = body(http_get(&a.http, "/loki/api/v1/label/pod/values"));
    assert_eq!(pods["data"], serde_json::json!(["checkout-1"]));
    // Series: the one stream, with the labels its lines carry (stream aside).
    let series = body(http_get(
        &a.http,
        &format!(
            "/loki/api/v1/series?match[]={}",
            enc(r#"{pod="checkout-1"}"#)
        ),
    ));
    let series = series["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), 1, "{series:?}");
    let mut stream_labels = r["data"]["result"][0]["stream"].clone();
    stream_labels.as_object_mut().unwrap().remove("stream");
    assert_eq!(series[0], stream_labels);
    assert_eq!(series[0]["node"], "node-1");
    // Index stats: every line once, though ranges went to both replicas.
    let stats = body(http_get(
        &a.http,
        &format!(
            "/loki/api/v1/index/stats?query={}",
            enc(r#"{pod="checkout-1"}"#)
        ),
    ));
    assert_eq!(stats["entries"], 500, "{stats}");
    assert_eq!(stats["streams"], 1, "{stats}");
    // One stream over one day (two when the run spans midnight).
    let days = stats["chunks"].as_u64().unwrap_or(0);
    assert!((1..=2).contains(&days), "{stats}");
    let text_bytes: usize = written.iter().map(String::len).sum();
    assert_eq!(stats["bytes"], text_bytes, "{stats}");
    // Refused as Loki refuses it.
    let bad = http_get(
        &a.http,
        &format!("/loki/api/v1/index/stats?query={}", enc("{}")),
    )
    .unwrap_or_default();
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

    // Loki clients push to either replica: a push retried through the
    // other (its answer lost) is stored once, as Loki stores it.
    let t0 = chrono::Utc::now().timestamp_nanos_opt().unwrap() - 60_000_000_000;
    let json = format!(
        r#"{{"streams":[{{"stream":{{"job":"promtail","namespace":"shop","stream":"stderr"}},"values":[["{}","first"],["{}","second"]]}}]}}"#,
        t0 + 1,
        t0 + 2
    );
    let json_ct = [("content-type", "application/json")];
    for replica in [&a.http, &b.http] {
        let r =
            http_post(replica, "/loki/api/v1/push", &json_ct, json.as_bytes()).unwrap_or_default();
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    }
    // Protobuf, as Loki's proto encodes it: the same stream (labels in
    // another order), a repeat, another line at a used instant, a new one.
    let pb = logfleet_kubesim::loki::push_protobuf(
        r#"{stream="stderr", namespace="shop", job="promtail"}"#,
        &[
            (t0 + 2, "second"),
            (t0 + 2, "other at the same instant"),
            (t0 + 3, "third"),
        ],
    );
    let r = http_post(
        &b.http,
        "/loki/api/v1/push",
        &[("content-type", "application/x-protobuf")],
        &pb,
    )
    .unwrap_or_default();
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    let pushed = body(http_get(
        &a.http,
        &format!(
            "/loki/api/v1/query_range?limit=100&direction=forward&query={}",
            enc(r#"{job="promtail"}"#)
        ),
    ));
    let mut got: Vec<String> = pushed["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().clone())
        .map(|v| v[1].as_str().unwrap_or_default().to_owned())
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["first", "other at the same instant", "second", "third"],
        "{pushed}"
    );
    assert_eq!(pushed["data"]["result"][0]["stream"]["node"], "loki-push");
    let bad = http_post(&a.http, "/loki/api/v1/push", &json_ct, b"{").unwrap_or_default();
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

    // Grafana's log volume: a metric query, evaluated over ClickHouse.
    let volume = body(http_get(
        &a.http,
        &format!(
            "/loki/api/v1/query_range?step=60&query={}",
            enc(r#"sum by (pod) (count_over_time({pod="checkout-1"} |= "status=201" [1h]))"#)
        ),
    ));
    assert_eq!(volume["data"]["resultType"], "matrix", "{volume}");
    let last = volume["data"]["result"][0]["values"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(|p| p[1].as_str())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    // Over the last hour, every matching line (both streams).
    assert_eq!(
        last,
        (0..500).filter(|i: &usize| i % 3 == 1).count(),
        "{volume}"
    );

    // The agents API the controller reads, on the HTTP port.
    let agents = http_get(&b.http, "/api/v1/agents").unwrap_or_default();
    assert!(agents.contains("\"node\":\"node-1\""), "{agents}");

    // A live tail sees lines as they arrive.
    let mut tail = std::process::Command::new(bin())
        .args([
            "tail",
            "--aggregator",
            &url_a,
            r#"{pod="checkout-1"} |= "tailed""#,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let seen = loop {
        // Written until the tail (which starts from now) prints one.
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        append(&log, &format!("{ts} stdout F tailed {i}\n"));
        i += 1;
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tail printed nothing"
        );
    };
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(seen.contains("tailed "), "{seen}");

    // ClickHouse away: not ready, and why.
    ch.stop();
    let r = wait_for(
        "not ready without ClickHouse",
        Duration::from_secs(30),
        || http_get(&a.http, "/readyz").filter(|r| r.starts_with("HTTP/1.1 503")),
    );
    assert!(r.contains("ClickHouse"), "{r}");
    // The controller asks the agents API and hears why: its status then
    // says Degraded, StoreUnavailable.
    use logfleet_controller::reconcile::{AgentsAccess, AgentsReport, PushSource};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(
        logfleet_controller::run::AggregatorAgents::default().last_pushes(AgentsAccess {
            url: format!("http://{}", a.http),
            read_token: None,
            ca_pem: None,
        }),
    );
    match report {
        AgentsReport::StoreUnavailable(e) => assert!(e.contains("ClickHouse"), "{e}"),
        other => panic!("expected StoreUnavailable, got {other:?}"),
    }
}
