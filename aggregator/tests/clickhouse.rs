//! The ClickHouse store against a real ClickHouse server (Debian's
//! `clickhouse-server`, 18.16 on this distribution; installed when missing
//! and running as root, as CI does), started on loopback for the test:
//! the schema is created by several aggregators at once, pushes re-sent
//! through two writers (two aggregator replicas) show up once in every
//! query, queries give what a brute-force evaluation of LogQL gives, bytes
//! come back exact, and a server that goes away is an error to the pusher
//! (the agent keeps its data and retries) until it is back.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logfleet_aggregator::clickhouse::sql::Window;
use logfleet_aggregator::clickhouse::{ClickHouse, ClickHouseError, Config, Writer, WriterConfig};
use logfleet_proto::v1::{Compression, FileLabels, FileRange, Label, PushRequest, Stream};
use logfleet_proto::LinesBuilder;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Debian's `clickhouse-server`, installed when missing and root.
fn server_binary() -> PathBuf {
    if !have("clickhouse-server") {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if root {
            let ok = Command::new("sh")
                .args([
                    "-c",
                    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null",
                ])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "installing Debian's clickhouse-server failed");
        }
    }
    let out = Command::new("sh")
        .args(["-c", "command -v clickhouse-server"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "this test needs ClickHouse: apt-get install clickhouse-server"
    );
    PathBuf::from(path)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A ClickHouse server of its own, in a temporary directory.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    http: u16,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let http = free_port();
        let tcp = free_port();
        let users = ["/etc/clickhouse-server/users.xml"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("clickhouse-server's users.xml");
        std::fs::write(
            dir.join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n\
                 <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/err.log</errorlog></logger>\n\
                 <http_port>{http}</http_port><tcp_port>{tcp}</tcp_port><listen_host>127.0.0.1</listen_host>\n\
                 <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><user_files_path>{d}/files/</user_files_path>\n\
                 <users_config>{users}</users_config><default_profile>default</default_profile>\n\
                 <default_database>default</default_database><mark_cache_size>5368709</mark_cache_size>\n\
                 </yandex>\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut s = Server {
            child: None,
            dir,
            http,
            _tmp: tmp,
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let child = Command::new(server_binary())
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.http)).is_err() {
            assert!(
                Instant::now() < deadline,
                "clickhouse-server did not listen: {}",
                std::fs::read_to_string(self.dir.join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn config(&self, db: &str) -> Config {
        Config {
            url: format!("http://127.0.0.1:{}", self.http),
            database: db.into(),
            user: None,
            password: None,
            retention_days: None,
        }
    }

    /// A plain-text query over HTTP (checks outside the store's code).
    fn sql(&self, q: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{q}",
            q.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{q}: {out}");
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // Chunked: the value is the line after the first chunk size.
        body.lines().nth(1).unwrap_or("").trim().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
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
    let mut server = Server::start();
    let cfg = server.config("logfleet");
    // Three aggregators starting at once create the schema once.
    let (a, b, c) = tokio::join!(
        ClickHouse::connect(cfg.clone()),
        ClickHouse::connect(cfg.clone()),
        ClickHouse::connect(cfg.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    c.unwrap();
    assert_eq!(
        server.sql("SELECT uniqExact(version), max(version) FROM logfleet.schema_migrations"),
        "1\t1"
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
        let parsed = logfleet_aggregator::query::parse(q).unwrap();
        let mut want: Vec<(i64, Vec<u8>)> = all
            .iter()
            .filter(|g| {
                parsed.matches_file(&g.node, &g.labels)
                    && parsed.matches_line(g.stream as i32, &g.text)
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
    let parsed = logfleet_aggregator::query::parse(r#"{app="checkout"}"#).unwrap();
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
    server.sql("OPTIMIZE TABLE logfleet.lines FINAL");
    assert_eq!(
        server
            .sql("SELECT count() FROM logfleet.lines")
            .parse::<usize>()
            .unwrap(),
        all.len()
    );

    // ClickHouse goes away: a push is an error (the agent keeps the data
    // and retries); back, the same push is stored, still once.
    server.stop();
    let err = w1.push(reqs[0].clone()).await.unwrap_err();
    assert!(matches!(err, ClickHouseError::Unreachable { .. }), "{err}");
    server.run();
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
    let everything = logfleet_aggregator::query::parse("{}").unwrap();
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
