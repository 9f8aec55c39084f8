//! The ClickHouse store against a real ClickHouse server (Debian's
//! `clickhouse-server`, 18.16 on this distribution; installed when missing
//! and running as root, as CI does), started on loopback for the test:
//! the schema is created by several aggregators at once, pushes re-sent
//! through two writers (two aggregator replicas) show up once in every
//! query, queries give what a brute-force evaluation of LogQL gives, bytes
//! come back exact, and a server that goes away is an error to the pusher
//! (the agent keeps its data and retries) until it is back.

use std::time::{Duration, Instant};

use logfleet_clickhouse::sql::Window;
use logfleet_clickhouse::{ClickHouse, Config, Writer, WriterConfig};
use logfleet_kubesim::clickhouse::Server;
use logfleet_proto::v1::{Compression, FileLabels, FileRange, Label, PushRequest, Stream};
use logfleet_proto::LinesBuilder;
use logfleet_store::query::QueryExt;

/// Connects as the aggregator does at start: again until a deadline while
/// the server refuses connections (a cluster server listens before it
/// is done starting, and under load stops answering for a moment).
async fn connect_within(cfg: Config) -> Result<ClickHouse, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ClickHouse::connect(cfg.clone()).await {
            Ok(ch) => return Ok(ch),
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                eprintln!("connect to {}: {e}; again", cfg.url);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("connect to {}: {e}", cfg.url)),
        }
    }
}

/// Connects to `server`, or fails the test with what the server said:
/// a server that stops answering is the cluster test's known flake, and
/// its log is what can tell why.
async fn connect_to(server: &mut Server, cfg: Config) -> ClickHouse {
    match connect_within(cfg).await {
        Ok(ch) => ch,
        Err(e) => panic!("{e}\n{}", server.diagnosis()),
    }
}

/// The settings for a stand-in server at `addr`.
fn stand_in(addr: std::net::SocketAddr) -> Config {
    Config {
        url: format!("http://{addr}"),
        database: "x".into(),
        user: None,
        password: None,
        retention_days: None,
        cluster: None,
    }
}

fn config(s: &Server, db: &str) -> Config {
    Config {
        url: s.url(),
        database: db.into(),
        user: None,
        password: None,
        retention_days: None,
        cluster: None,
    }
}

/// One generated line, with what a query sees of it.
#[derive(Debug, Clone)]
struct Gen {
    node: String,
    labels: FileLabels,
    ts: i64,
    stream: Stream,
    text: Vec<u8>,
}

/// Pushes of `files` files on two nodes: each push one range of one file,
/// lines at increasing offsets and distinct timestamps.
fn pushes() -> (Vec<PushRequest>, Vec<Gen>) {
    let mut out = Vec::new();
    let mut all = Vec::new();
    let mut ts = 1_764_756_000_000_000_000i64;
    for f in 0..6u64 {
        let node = format!("node-{}", f % 2);
        let labels = FileLabels {
            namespace: ["shop", "default"][(f % 2) as usize].into(),
            pod: format!("{}-{f}", ["checkout", "web", "cart"][(f % 3) as usize]),
            pod_uid: format!("uid-{f}"),
            container: "app".into(),
            restart: (f % 2) as u32,
            extra: if f < 4 {
                vec![Label {
                    name: "app".into(),
                    value: ["checkout", "web"][(f % 2) as usize].into(),
                }]
            } else {
                Vec::new()
            },
        };
        let mut offset = 0u64;
        for p in 0..3 {
            let mut b = LinesBuilder::default();
            let start = offset;
            for i in 0..20 {
                ts += 1_000;
                let stream = if i % 5 == 0 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                let text = match i % 4 {
                    0 => format!("ERROR payment {f}/{p}/{i} status=500").into_bytes(),
                    1 => format!("GET /x {f}/{p}/{i} status=200 it's").into_bytes(),
                    2 => {
                        let mut t = format!("bytes {f}/{p}/{i} ").into_bytes();
                        t.extend_from_slice(b"\xff\xfe\n\tat x");
                        t
                    }
                    _ => format!("info {f}/{p}/{i}").into_bytes(),
                };
                b.push(0, ts, offset, stream as i32, 0, &text);
                all.push(Gen {
                    node: node.clone(),
                    labels: labels.clone(),
                    ts,
                    stream,
                    text,
                });
                offset += 100;
            }
            let batch = b.finish();
            let raw = prost::Message::encode_to_vec(&batch);
            out.push(PushRequest {
                node: node.clone(),
                compression: Compression::None as i32,
                raw_len: raw.len() as u64,
                ranges: vec![FileRange {
                    file_id: 0xfeed_0000 + f,
                    labels: Some(labels.clone()),
                    start,
                    end: offset,
                    lines_end: 0,
                }],
                payload: raw.into(),
            });
        }
    }
    (out, all)
}

fn key(e: &logfleet_proto::v1::Entry) -> (i64, Vec<u8>) {
    (e.ts_unix_nano, e.line.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_replicas_and_queries_as_logql_says() {
    let mut server = Server::start().unwrap();
    let cfg = config(&server, "logfleet");
    // Three aggregators starting at once create the schema once.
    let (a, b, c) = tokio::join!(
        ClickHouse::connect(cfg.clone()),
        ClickHouse::connect(cfg.clone()),
        ClickHouse::connect(cfg.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    c.unwrap();
    assert_eq!(
        server
            .sql("SELECT uniqExact(version), max(version) FROM logfleet.schema_migrations")
            .unwrap(),
        format!("1\t{}", logfleet_clickhouse::sql::SCHEMA_VERSION)
    );
    // Sorted for the common query, time within a container, and ending in
    // the line's identity.
    let create = server.sql("SHOW CREATE TABLE logfleet.lines").unwrap();
    assert!(
        create.contains("ORDER BY (namespace, pod, container, ts, node, file_id, offset)"),
        "{create}"
    );
    let wcfg = WriterConfig {
        batch_wait: Duration::from_millis(50),
        ..Default::default()
    };
    let (w1, w2) = (
        Writer::start(a.clone(), wcfg, Default::default()),
        Writer::start(b.clone(), wcfg, Default::default()),
    );
    let (reqs, all) = pushes();
    // Every push through replica 1; then half of them again through
    // replica 2 (the agent's retry after replica 1 died before answering),
    // concurrently with the first pushes' retries on replica 1.
    let mut tasks = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let (w1, w2, r) = (w1.clone(), w2.clone(), r.clone());
        tasks.push(tokio::spawn(async move {
            w1.push(r.clone()).await.unwrap();
            if i % 2 == 0 {
                w2.push(r.clone()).await.unwrap();
                w1.push(r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored: usize = server
        .sql("SELECT count() FROM logfleet.lines")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stored > all.len(),
        "the re-sent rows are there, unmerged: {stored}"
    );

    let cases = [
        r#"{}"#,
        r#"{namespace="shop"}"#,
        r#"{namespace!="shop", stream="stderr"}"#,
        r#"{pod=~"check.*|web-.*"}"#,
        r#"{pod!~"cart.*"} |= "ERROR""#,
        r#"{app="checkout"}"#,
        r#"{app=""}"#,
        r#"{app=~"web|"} != "status=200""#,
        r#"{node="node-1", restart="1"} |~ "status=5\\d\\d""#,
        r#"{container="app"} !~ "^info" |= "it's""#,
        r#"{namespace="default"} |= "\t""#,
    ];
    for q in cases {
        let parsed = logfleet_embedded::query::parse(q).unwrap();
        let mut want: Vec<(i64, Vec<u8>)> = all
            .iter()
            .filter(|g| {
                parsed.matches_file(&g.node, &g.labels)
                    && parsed.matches_stored(g.stream as i32, &g.text)
            })
            .map(|g| (g.ts, g.text.clone()))
            .collect();
        want.sort();
        for (ch, backward, limit) in [(&a, false, 0u64), (&b, true, 7)] {
            let w = Window {
                from: None,
                to: None,
                limit,
                backward,
            };
            let got: Vec<(i64, Vec<u8>)> = ch
                .query(&parsed, w)
                .await
                .unwrap()
                .iter()
                .map(key)
                .collect();
            let mut expect = want.clone();
            if backward {
                expect.reverse();
            }
            if limit > 0 {
                expect.truncate(limit as usize);
            }
            assert_eq!(got, expect, "{q} backward={backward} limit={limit}");
        }
    }
    // A time window, and the labels that come back.
    let parsed = logfleet_embedded::query::parse(r#"{app="checkout"}"#).unwrap();
    let (from, to) = (all[10].ts, all[30].ts);
    let got = a
        .query(
            &parsed,
            Window {
                from: Some(from),
                to: Some(to),
                limit: 0,
                backward: false,
            },
        )
        .await
        .unwrap();
    let want = all
        .iter()
        .filter(|g| g.ts >= from && g.ts < to && parsed.matches_file(&g.node, &g.labels))
        .count();
    assert_eq!(got.len(), want);
    let l = got[0].labels.as_ref().unwrap();
    assert_eq!(
        (
            got[0].node.as_str(),
            l.pod.as_str(),
            l.extra[0].value.as_str()
        ),
        ("node-0", "checkout-0", "checkout")
    );

    // Once merged, the table itself holds each line once.
    server.sql("OPTIMIZE TABLE logfleet.lines FINAL").unwrap();
    assert_eq!(
        server
            .sql("SELECT count() FROM logfleet.lines")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        all.len()
    );

    // ClickHouse goes away: a push is an error (the agent keeps the data
    // and retries); back, the same push is stored, still once.
    server.stop();
    let err = w1.push(reqs[0].clone()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    server.run().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match w1.push(reqs[0].clone()).await {
            Ok(n) => {
                assert_eq!(n, 20);
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "ClickHouse back but pushes fail: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let everything = logfleet_embedded::query::parse("{}").unwrap();
    let got = a
        .query(
            &everything,
            Window {
                from: None,
                to: None,
                limit: 0,
                backward: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), all.len());
}

/// Two ClickHouse servers replicating one shard through ZooKeeper
/// (Debian's), the schema created `ON CLUSTER` by two aggregators at once:
/// pushes through either server, a range re-sent to the other, show once
/// through both; with one server gone the other takes pushes and answers
/// with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_two_replicas_through_zookeeper() {
    let zk = logfleet_kubesim::clickhouse::ZooKeeper::start().unwrap();
    let mut servers = Server::cluster(2, zk.port).unwrap();
    let cfg = |s: &Server| Config {
        cluster: Some("logs".into()),
        ..config(s, "fleet")
    };
    let (c0, c1) = (cfg(&servers[0]), cfg(&servers[1]));
    let (a, b) = {
        let [s0, s1] = &mut servers[..] else {
            panic!("two servers")
        };
        tokio::join!(connect_to(s0, c0), connect_to(s1, c1))
    };
    for s in &servers {
        assert_eq!(
            s.sql("SELECT engine FROM system.tables WHERE database = 'fleet' AND name = 'lines_local'").unwrap(),
            "ReplicatedReplacingMergeTree"
        );
    }
    let wcfg = WriterConfig {
        batch_wait: Duration::from_millis(20),
        ..Default::default()
    };
    let (wa, wb) = (
        Writer::start(a.clone(), wcfg, Default::default()),
        Writer::start(b.clone(), wcfg, Default::default()),
    );
    let (reqs, all) = pushes();
    for (i, r) in reqs.iter().enumerate() {
        // Alternate servers; every third push again through the other.
        let (first, other) = if i % 2 == 0 { (&wa, &wb) } else { (&wb, &wa) };
        first.push(r.clone()).await.unwrap();
        if i % 3 == 0 {
            other.push(r.clone()).await.unwrap();
        }
    }
    let everything = logfleet_embedded::query::parse("{}").unwrap();
    let window = Window {
        from: None,
        to: None,
        limit: 0,
        backward: false,
    };
    let mut want: Vec<(i64, Vec<u8>)> = all.iter().map(|g| (g.ts, g.text.clone())).collect();
    want.sort();
    for ch in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: Vec<(i64, Vec<u8>)> = ch
                .query(&everything, window)
                .await
                .unwrap()
                .iter()
                .map(key)
                .collect();
            if got == want {
                break;
            }
            // Replication is asynchronous; a replica catches up.
            assert!(
                Instant::now() < deadline,
                "{} of {} lines",
                got.len(),
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Retention on a cluster: a day past it is dropped on every server
    // (ON CLUSTER), the other days stay.
    let day = 86_400_000_000_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    wa.push(push_at(99, &[now - 900 * day])).await.unwrap();
    let old = logfleet_embedded::query::parse("{namespace=\"ret\"}").unwrap();
    let (ra, rb, rold) = (&a, &b, &old);
    let on_both = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        for ch in [ra, rb] {
            while ch.query(rold, window).await.unwrap().len() != n {
                assert!(Instant::now() < deadline, "replicas disagree");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    on_both(1).await;
    let retention = ClickHouse::connect(Config {
        retention_days: Some(800),
        ..cfg(&servers[1])
    })
    .await
    .unwrap();
    assert_eq!(retention.drop_expired().await.unwrap().len(), 1);
    on_both(0).await;
    assert_eq!(a.query(&everything, window).await.unwrap().len(), all.len());

    // One server gone: the other takes the pushes and answers alone.
    servers[0].stop();
    wb.push(reqs[1].clone()).await.unwrap();
    let got = b.query(&everything, window).await.unwrap();
    assert_eq!(got.len(), all.len());
}

/// The same pushes into the embedded store and into ClickHouse: log
/// queries, pipeline stages included (they run in the aggregator after
/// ClickHouse applied the selector and the line filters), give the same
/// lines, formatted lines and labels from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_answers_as_the_embedded_store() {
    use logfleet_embedded::query::{self, Bounds};
    use logfleet_proto::v1::Direction;
    let server = Server::start().unwrap();
    let ch = ClickHouse::connect(config(&server, "same")).await.unwrap();
    let writer = Writer::start(ch.clone(), WriterConfig::default(), Default::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let (shared, embedded) = logfleet_embedded::ingest::open(
        logfleet_embedded::ingest::StoreConfig {
            data_dir: tmp.path().to_owned(),
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(3600),
            retention_age: None,
            retention_bytes: None,
            zstd_level: 1,
        },
        logfleet_store::metrics::Metrics::new(&mut registry),
    )
    .unwrap();
    let (reqs, _) = pushes();
    for (i, r) in reqs.iter().enumerate() {
        writer.push(r.clone()).await.unwrap();
        embedded.push(r.clone(), Default::default()).await.unwrap();
        // Every other push again (a retry): rows ClickHouse holds twice
        // until it merges them, which every count must see once.
        if i % 2 == 0 {
            writer.push(r.clone()).await.unwrap();
        }
    }
    let cases = [
        r#"{namespace="shop"} | logfmt | status="500""#,
        r#"{app=~".+"} |= "status" | logfmt | status >= 200 | line_format "{{.status}} from {{.pod}}""#,
        r#"{pod=~"web.*"} | regexp "(?P<word>[a-z]+) (?P<id>\\S+)" | word="info" | keep id"#,
        r#"{container="app"} != "bytes" | pattern "<verb> <path> <rest>" | verb="GET" | drop rest"#,
    ];
    let flat = |e: &logfleet_proto::v1::Entry| {
        (
            e.ts_unix_nano,
            e.line.clone(),
            e.formatted.clone(),
            e.pipeline_labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect::<Vec<_>>(),
        )
    };
    for q in cases {
        let parsed = query::parse(q).unwrap();
        for (backward, limit) in [(false, 0u64), (true, 9)] {
            let want: Vec<_> = query::execute(
                &shared,
                &parsed,
                Bounds {
                    from: None,
                    to: None,
                    limit: limit as usize,
                    direction: if backward {
                        Direction::Backward
                    } else {
                        Direction::Forward
                    },
                },
            )
            .unwrap()
            .iter()
            .map(flat)
            .collect();
            // Small pages: the cursor between pages is exercised too.
            let got: Vec<_> = ch
                .query_piped_in_pages(
                    &parsed,
                    Window {
                        from: None,
                        to: None,
                        limit,
                        backward,
                    },
                    7,
                )
                .await
                .unwrap()
                .iter()
                .map(flat)
                .collect();
            assert!(!want.is_empty(), "{q}: nothing to compare");
            assert_eq!(got, want, "{q} backward={backward} limit={limit}");
        }
    }
    // Metric queries: the same numbers. Counts and bytes of the streams'
    // labels are counted in ClickHouse by time bucket (ranges that are no
    // multiple of the step, offsets, absent series); the others are
    // evaluated by the same code over lines read from ClickHouse.
    let (first, last) = (
        1_764_756_000_000_000_000i64,
        1_764_756_000_000_000_000i64 + 400_000,
    );
    let steps = logfleet_logql::eval::Steps {
        start: first,
        end: last,
        step: 50_000,
    };
    for q in [
        r#"sum by (namespace) (count_over_time({app=~".+"} [100us]))"#,
        r#"bytes_over_time({pod=~"web.*"} |= "status" [200us])"#,
        r#"sum by (status) (count_over_time({container="app"} | logfmt | status != "" [1ms]))"#,
        r#"topk(2, sum by (pod) (rate({namespace="shop"} [300us])))"#,
        r#"sum by (stream) (bytes_rate({namespace="shop"} != "info" [75us] offset 20us))"#,
        r#"count_over_time({app="web"} [130us])"#,
        // Grafana's log volume, as Explore asks it.
        r#"sum by (level, detected_level) (count_over_time({namespace="shop"} | drop __error__ [50us]))"#,
        r#"sum by (pod) (count_over_time({namespace=~".+"} | pod != "web-1" [100us]))"#,
        r#"absent_over_time({pod="checkout-0", stream="stderr"} |= "status=500" [60us])"#,
    ] {
        let logfleet_logql::Expr::Metric(m) = logfleet_logql::parse(q).unwrap() else {
            panic!("{q} is no metric query");
        };
        let want =
            logfleet_embedded::metric::metric(&shared, &m, steps, &Default::default()).unwrap();
        let got = ch.metric(m.clone(), steps).await.unwrap();
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{q}");
        assert!(
            format!("{want:?}").len() > 40,
            "{q}: nothing to compare: {want:?}"
        );
    }
}

/// One push of one line per timestamp, for file `file_id` of node-r.
fn push_at(file_id: u64, stamps: &[i64]) -> PushRequest {
    let labels = FileLabels {
        namespace: "ret".into(),
        pod: format!("p-{file_id}"),
        pod_uid: format!("u-{file_id}"),
        container: "c".into(),
        restart: 0,
        extra: Vec::new(),
    };
    let mut b = LinesBuilder::default();
    for (i, ts) in stamps.iter().enumerate() {
        b.push(
            0,
            *ts,
            i as u64 * 10,
            Stream::Stdout as i32,
            0,
            format!("line {i}").as_bytes(),
        );
    }
    let raw = prost::Message::encode_to_vec(&b.finish());
    PushRequest {
        node: "node-r".into(),
        compression: Compression::None as i32,
        raw_len: raw.len() as u64,
        ranges: vec![FileRange {
            file_id,
            labels: Some(labels),
            start: 0,
            end: stamps.len() as u64 * 10,
            lines_end: 0,
        }],
        payload: raw.into(),
    }
}

/// Retention on a server without table TTL (18.16): days older than the
/// retention go as whole partitions, the rest stays, and running it again
/// (another replica at the same time) finds nothing more to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_expired_days_and_keeps_the_rest() {
    let server = Server::start().unwrap();
    let ch = ClickHouse::connect(Config {
        retention_days: Some(7),
        ..config(&server, "retention")
    })
    .await
    .unwrap();
    let day = 86_400_000_000_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let w = Writer::start(ch.clone(), WriterConfig::default(), Default::default());
    // 30 and 10 days old: expired; 3 days old and now: kept.
    w.push(push_at(
        1,
        &[now - 30 * day, now - 10 * day, now - 10 * day + 1],
    ))
    .await
    .unwrap();
    w.push(push_at(2, &[now - 3 * day, now])).await.unwrap();
    let count = || server.sql("SELECT count() FROM retention.lines");
    assert_eq!(count().unwrap(), "5");

    let mut dropped = ch.drop_expired().await.unwrap();
    dropped.sort();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert_eq!(count().unwrap(), "2");
    let everything = logfleet_embedded::query::parse("{namespace=\"ret\"}").unwrap();
    let window = Window {
        from: None,
        to: None,
        limit: 0,
        backward: false,
    };
    let kept: Vec<i64> = ch
        .query(&everything, window)
        .await
        .unwrap()
        .iter()
        .map(|e| e.ts_unix_nano)
        .collect();
    assert_eq!(kept, vec![now - 3 * day, now]);
    assert_eq!(ch.drop_expired().await.unwrap(), Vec::<String>::new());

    // No retention: nothing is ever dropped.
    let keep_all = ClickHouse::connect(config(&server, "retention"))
        .await
        .unwrap();
    w.push(push_at(3, &[now - 400 * day])).await.unwrap();
    assert!(keep_all.drop_expired().await.unwrap().is_empty());
    assert_eq!(count().unwrap(), "3");
}

/// A connection closed under a request (ClickHouse ending an idle
/// keep-alive connection as it is reused, or a server still starting) is
/// tried again rather than failing the push or the start: found when a
/// loaded CI run failed the cluster test's connect with "SendRequest".
/// A stand-in server drops every third connection without answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_connection_drops_is_sent_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = dropped.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            if n % 3 == 1 {
                // Read the request, then close without a response.
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let body = if String::from_utf8_lossy(&buf).contains("version") {
                    "18.16.1\n"
                } else {
                    ""
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let ch = ClickHouse::connect(stand_in(addr))
        .await
        .expect("connects despite dropped connections");
    assert_eq!(ch.features().version, (18, 16));
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

/// Rows streamed in frames that cut them anywhere are decoded whole, each
/// once, as they arrive; a reply that ends inside a row is an error, not a
/// short answer. A stand-in server sends the rows in 7-byte chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_rows_cut_across_frames_are_read_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (reqs, all) = pushes();
    let mut rows = Vec::new();
    for r in &reqs[..4] {
        let batch = logfleet_proto::decode_payload(r, Default::default()).unwrap();
        logfleet_clickhouse::encode_rows(&mut rows, r, &batch, 42);
    }
    let want = logfleet_clickhouse::decode_stored(&rows).unwrap();
    assert_eq!(want.len(), 4 * 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = rows.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let reply: Vec<u8> = if req.contains("version") {
                    b"18.16.1\n".to_vec()
                } else if req.contains("STREAMED") {
                    body
                } else if req.contains("TRUNCATED") {
                    body[..body.len() - 3].to_vec()
                } else {
                    Vec::new()
                };
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                    .await;
                for chunk in reply.chunks(7) {
                    let _ = sock
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await;
                    let _ = sock.write_all(chunk).await;
                    let _ = sock.write_all(b"\r\n").await;
                    let _ = sock.flush().await;
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let ch = ClickHouse::connect(stand_in(addr)).await.unwrap();
    let mut got = Vec::new();
    ch.stream_stored("SELECT 'STREAMED'", &mut |r| {
        got.push((r.entry.ts_unix_nano, r.entry.line, r.file_id, r.offset));
        true
    })
    .await
    .unwrap();
    let want: Vec<_> = want
        .into_iter()
        .map(|r| (r.entry.ts_unix_nano, r.entry.line, r.file_id, r.offset))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got[0].1, all[0].text);
    // Cut inside the last row: an error after the whole rows.
    let mut n = 0;
    let err = ch
        .stream_stored("SELECT 'TRUNCATED'", &mut |_| {
            n += 1;
            true
        })
        .await;
    assert!(err.is_err());
    assert_eq!(n, 4 * 20 - 1);
    // The reader may stop early.
    let mut first = 0;
    ch.stream_stored("SELECT 'STREAMED'", &mut |_| {
        first += 1;
        first < 3
    })
    .await
    .unwrap();
    assert_eq!(first, 3);
}
