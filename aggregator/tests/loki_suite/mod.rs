//! Loki's HTTP read API, checked against the request and response shapes of
//! Loki's HTTP API documentation (grafana.com/docs/loki/latest/reference/
//! loki-http-api/) and against the gRPC query path over the same data:
//! envelopes, defaults, errors and status codes, the queries Grafana's Loki
//! data source sends (its health check and Explore's log-volume query), and
//! metric results against brute force over the known lines.
//!
//! One suite, run by `loki_api.rs` on the embedded store and by
//! `loki_api_memory.rs` on the in-memory one: whatever implements
//! [`Backend`] serves the same API. Each test target gives
//! `crate::open_backend`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use logfleet_aggregator::http::{router, HttpState};
use logfleet_aggregator::loki::LokiState;
use logfleet_aggregator::service::Auth;
use logfleet_proto::v1::{Compression, Direction, FileLabels, FileRange, PushRequest, Stream};
use logfleet_proto::LinesBuilder;
use logfleet_store::backend::Backend;
use logfleet_store::metrics::Metrics;
use logfleet_store::query::{self, Bounds, QueryExt};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tower::ServiceExt;

const S: i64 = 1_000_000_000;
/// Lines are written at T0 + i seconds.
const T0: i64 = 1_700_000_000 * S;
const TOKEN: &str = "read-token";
const PUSH_TOKEN: &str = "push-token";

/// A store for the suite, as a test target opens it.
pub struct Opened {
    /// The store.
    pub backend: Arc<dyn Backend>,
    /// Its writer, when it has one to saturate (the embedded store's).
    pub writer: Option<logfleet_embedded::ingest::Writer>,
    /// Its directory, when it has one.
    pub dir: Option<tempfile::TempDir>,
}

struct Fixture {
    _dir: Option<tempfile::TempDir>,
    _stop: tokio::sync::watch::Sender<bool>,
    backend: Arc<dyn Backend>,
    writer: Option<logfleet_embedded::ingest::Writer>,
    app: axum::Router,
    /// Turns for queries (two at once here).
    queries: Arc<tokio::sync::Semaphore>,
}

/// Two pods on two nodes: pod `web` writes lines 0..60 (one a second,
/// every third on stderr, every fifth an error), pod `db` lines 0..30.
async fn fixture() -> Fixture {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let Opened {
        backend,
        writer,
        dir,
    } = crate::open_backend(metrics.clone());
    for (node, pod, n) in [("node-a", "web", 60u64), ("node-b", "db", 30)] {
        backend.push(push(node, pod, n)).await.unwrap();
    }
    let queries = Arc::new(tokio::sync::Semaphore::new(2));
    // Never sent: the suite's aggregator does not stop.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let app = router(HttpState {
        backend: backend.clone(),
        registry: Arc::new(registry),
        auth: Auth::new(Some(TOKEN.into()), "read", metrics.clone()),
        loki: LokiState {
            backend: backend.clone(),
            timeout: Duration::from_secs(30),
            queries: queries.clone(),
            metrics: metrics.clone(),
            stopping: stop_rx,
        },
        push_auth: Auth::new(Some(PUSH_TOKEN.into()), "push", metrics),
    });
    Fixture {
        _dir: dir,
        _stop: stop,
        backend,
        writer,
        app,
        queries,
    }
}

fn line(pod: &str, i: u64) -> String {
    if i.is_multiple_of(5) {
        format!("level=error pod={pod} n={i} failed")
    } else {
        format!("level=info pod={pod} n={i} ok")
    }
}

fn push(node: &str, pod: &str, n: u64) -> PushRequest {
    let mut b = LinesBuilder::default();
    let mut off = 0;
    for i in 0..n {
        let text = line(pod, i);
        let stream = if i.is_multiple_of(3) {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        b.push(0, T0 + i as i64 * S, off, stream as i32, 0, text.as_bytes());
        off += text.len() as u64 + 1;
    }
    let (payload, raw_len) =
        logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
    PushRequest {
        node: node.into(),
        compression: Compression::Zstd as i32,
        raw_len,
        ranges: vec![FileRange {
            file_id: 1,
            labels: Some(FileLabels {
                namespace: "shop".into(),
                pod: pod.into(),
                pod_uid: format!("uid-{pod}"),
                container: "app".into(),
                restart: 0,
                extra: Vec::new(),
            }),
            start: 0,
            end: off,
            lines_end: 0,
        }],
        payload,
    }
}

/// The entries of `q` in `b`, as the gRPC path reads them.
async fn execute(
    backend: &Arc<dyn Backend>,
    q: query::Query,
    b: Bounds,
) -> Result<Vec<logfleet_proto::v1::Entry>, query::QueryError> {
    use tokio_stream::StreamExt;
    let mut s = backend.query(q, b, Default::default())?;
    let mut out = Vec::new();
    while let Some(batch) = s.next().await {
        out.extend(batch?);
    }
    Ok(out)
}

/// What the store says of the agent on `node`.
async fn agent(backend: &Arc<dyn Backend>, node: &str) -> logfleet_proto::v1::AgentInfo {
    backend
        .agents()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.node == node)
        .unwrap()
}

/// GET `path?query` with the token; status and body.
async fn get(app: &axum::Router, path: &str, params: &[(&str, &str)]) -> (StatusCode, String) {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let uri = if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    };
    send(
        app,
        Request::get(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("x-scope-orgid", "tenant-1")
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn get_json(app: &axum::Router, path: &str, params: &[(&str, &str)]) -> Value {
    let (status, body) = get(app, path, params).await;
    assert_eq!(status, StatusCode::OK, "{path} {params:?}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    v["data"].clone()
}

fn range(start: i64, end: i64) -> (String, String) {
    (start.to_string(), end.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_queries_match_the_grpc_path() {
    let f = fixture().await;
    let (start, end) = range(T0, T0 + 3600 * S);
    let q = r#"{namespace="shop"} |= "error""#;
    let data = get_json(
        &f.app,
        "/loki/api/v1/query_range",
        &[
            ("query", q),
            ("start", &start),
            ("end", &end),
            ("limit", "1000"),
        ],
    )
    .await;
    assert_eq!(data["resultType"], "streams");
    assert!(data["stats"]["summary"].is_object());
    // Every (labels, ts, line) the API gives, against the gRPC path's.
    let mut api: Vec<(String, String, i64, String)> = Vec::new();
    for s in data["result"].as_array().unwrap() {
        let labels = &s["stream"];
        assert_eq!(labels["namespace"], "shop");
        assert!(labels["stream"] == "stdout" || labels["stream"] == "stderr");
        let values = s["values"].as_array().unwrap();
        // Backward by default: newest first within a stream.
        let ts: Vec<i64> = values
            .iter()
            .map(|v| v[0].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{ts:?}");
        for v in values {
            api.push((
                labels["pod"].as_str().unwrap().to_owned(),
                labels["stream"].as_str().unwrap().to_owned(),
                v[0].as_str().unwrap().parse().unwrap(),
                v[1].as_str().unwrap().to_owned(),
            ));
        }
    }
    let grpc = execute(
        &f.backend,
        query::parse(q).unwrap(),
        Bounds {
            from: Some(T0),
            to: Some(T0 + 3600 * S),
            limit: 1000,
            direction: Direction::Backward,
        },
    )
    .await
    .unwrap();
    let mut grpc: Vec<(String, String, i64, String)> = grpc
        .into_iter()
        .map(|e| {
            (
                e.labels.unwrap().pod,
                if e.stream == Stream::Stderr as i32 {
                    "stderr"
                } else {
                    "stdout"
                }
                .to_owned(),
                e.ts_unix_nano,
                String::from_utf8(e.line).unwrap(),
            )
        })
        .collect();
    api.sort();
    grpc.sort();
    assert_eq!(api.len(), 12 + 6, "every fifth line of 60 and of 30");
    assert_eq!(api, grpc);

    // limit and direction: the 5 oldest lines of db, in order.
    let data = get_json(
        &f.app,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"{pod="db"}"#),
            ("start", &start),
            ("end", &end),
            ("limit", "5"),
            ("direction", "forward"),
        ],
    )
    .await;
    let mut got: Vec<(i64, String)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().clone())
        .map(|v| {
            (
                v[0].as_str().unwrap().parse().unwrap(),
                v[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(i64, String)> = (0..5).map(|i| (T0 + i * S, line("db", i as u64))).collect();
    assert_eq!(got, want);

    // POST with a form body, times as RFC 3339; `| drop` removes labels.
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("query", r#"{pod="db"} | drop node, pod_uid"#),
            ("start", "2023-11-14T22:13:20Z"),
            ("end", "2023-11-14T22:13:22Z"),
        ])
        .finish();
    let (status, text) = send(
        &f.app,
        Request::post("/loki/api/v1/query_range")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let result = v["data"]["result"].as_array().unwrap();
    let n: usize = result
        .iter()
        .map(|s| s["values"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 2, "seconds 0 and 1; the end is exclusive: {text}");
    for s in result {
        assert!(s["stream"].get("node").is_none() && s["stream"].get("pod_uid").is_none());
        assert_eq!(s["stream"]["pod"], "db");
    }
}

/// HTTP queries take turns, as gRPC ones do: each holds a blocking thread
/// and files, and Grafana dashboards fire dozens at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_queries_wait_for_a_turn() {
    let f = fixture().await;
    let (start, end) = range(T0, T0 + 60 * S);
    let all = f.queries.clone().acquire_many_owned(2).await.unwrap();
    let app = f.app.clone();
    let q = tokio::spawn(async move {
        get(
            &app,
            "/loki/api/v1/query_range",
            &[
                ("query", "{namespace=\"shop\"}"),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await
    });
    // Not answered while every turn is taken...
    let waited = tokio::time::timeout(Duration::from_millis(300), async {
        while !q.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_err(), "answered without a turn");
    // ...and answered once one is free.
    drop(all);
    let (code, _) = tokio::time::timeout(Duration::from_secs(30), q)
        .await
        .expect("answered after the turn")
        .unwrap();
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_queries_match_brute_force() {
    let f = fixture().await;
    let (start, end) = range(T0, T0 + 60 * S);
    // Per pod, lines in (t - 10s, t] every 10 s.
    let data = get_json(
        &f.app,
        "/loki/api/v1/query_range",
        &[
            (
                "query",
                r#"sum by (pod) (count_over_time({namespace="shop"}[10s]))"#,
            ),
            ("start", &start),
            ("end", &end),
            ("step", "10"),
        ],
    )
    .await;
    assert_eq!(data["resultType"], "matrix");
    for s in data["result"].as_array().unwrap() {
        let pod = s["metric"]["pod"].as_str().unwrap();
        assert_eq!(s["metric"].as_object().unwrap().len(), 1, "{s}");
        let n: i64 = if pod == "web" { 60 } else { 30 };
        let mut want = Vec::new();
        for k in 0..=6 {
            let t = k * 10;
            let c = (0..n).filter(|i| *i > t - 10 && *i <= t).count();
            if c > 0 {
                want.push(json!([(T0 / S + t) as f64, c.to_string()]));
            }
        }
        assert_eq!(s["values"], Value::Array(want), "{pod}");
    }
    // Explore's log-volume query: grouped by labels the lines do not have,
    // one series without labels.
    let data = get_json(
        &f.app,
        "/loki/api/v1/query_range",
        &[
            (
                "query",
                r#"sum by (level, detected_level) (count_over_time({namespace="shop"} | drop __error__[1m]))"#,
            ),
            ("start", &start),
            ("end", &end),
            ("step", "60s"),
        ],
    )
    .await;
    assert_eq!(
        data["result"],
        json!([{"metric": {}, "values": [[(T0 / S) as f64, "2"], [(T0 / S + 60) as f64, "88"]]}]),
        "second 0 of both pods, then the 59 + 29 after it"
    );
    // rate and bytes_over_time for one stream, as an instant query.
    let t = (T0 + 59 * S).to_string();
    let data = get_json(
        &f.app,
        "/loki/api/v1/query",
        &[
            ("query", r#"rate({pod="web", stream="stdout"}[20s])"#),
            ("time", &t),
        ],
    )
    .await;
    assert_eq!(data["resultType"], "vector");
    // Seconds 40..=59 not divisible by 3: 14 lines in 20 s.
    let want = 14.0 / 20.0;
    assert_eq!(data["result"][0]["value"][1], format!("{want}"));
    assert_eq!(data["result"][0]["metric"]["stream"], "stdout");
    let data = get_json(
        &f.app,
        "/loki/api/v1/query",
        &[
            ("query", r#"bytes_over_time({pod="db"}[5s])"#),
            ("time", &(T0 + 4 * S).to_string()),
        ],
    )
    .await;
    let bytes: usize = (0..5).map(|i| line("db", i).len()).sum();
    let total: f64 = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, bytes as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_health_check_labels_series_and_buildinfo() {
    let f = fixture().await;
    // The Loki data source's "Save & test".
    let data = get_json(
        &f.app,
        "/loki/api/v1/query",
        &[("query", "vector(1)+vector(1)"), ("time", "1700000000")],
    )
    .await;
    assert_eq!(
        data,
        json!({"resultType": "vector", "result": [{"metric": {}, "value": [1700000000.0, "2"]}],
               "stats": data["stats"].clone()})
    );
    let (start, end) = range(T0, T0 + 3600 * S);
    let span = [("start", start.as_str()), ("end", end.as_str())];
    // By default, the last six hours, as Loki: the fixture is older.
    let data = get_json(&f.app, "/loki/api/v1/labels", &[]).await;
    assert_eq!(data, json!([]));
    let data = get_json(&f.app, "/loki/api/v1/labels", &span).await;
    assert_eq!(
        data,
        json!([
            "container",
            "namespace",
            "node",
            "pod",
            "pod_uid",
            "restart",
            "stream"
        ])
    );
    let data = get_json(&f.app, "/loki/api/v1/label/pod/values", &span).await;
    assert_eq!(data, json!(["db", "web"]));
    // Only streams with lines in the range: db wrote for 30 s, web for 60.
    let after = (T0 + 40 * S).to_string();
    let data = get_json(
        &f.app,
        "/loki/api/v1/label/pod/values",
        &[("start", after.as_str()), span[1]],
    )
    .await;
    assert_eq!(data, json!(["web"]));
    let data = get_json(
        &f.app,
        "/loki/api/v1/label/node/values",
        &[("query", r#"{pod="web"}"#), span[0], span[1]],
    )
    .await;
    assert_eq!(data, json!(["node-a"]));
    let data = get_json(
        &f.app,
        "/loki/api/v1/series",
        &[
            ("match[]", r#"{pod="db"}"#),
            ("match[]", r#"{node="nowhere"}"#),
            span[0],
            span[1],
        ],
    )
    .await;
    assert_eq!(
        data,
        json!([{"container": "app", "namespace": "shop", "node": "node-b", "pod": "db",
                "pod_uid": "uid-db", "restart": "0"}])
    );
    // index/stats: from the indexes, the two pods' single block each.
    let (status, body) = get(
        &f.app,
        "/loki/api/v1/index/stats",
        &[
            ("query", r#"{namespace="shop"}"#),
            ("start", &T0.to_string()),
            ("end", &(T0 + 3600 * S).to_string()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["streams"].as_u64(), v["entries"].as_u64()),
        (Some(2), Some(90)),
        "{v}"
    );
    assert!(
        v["chunks"].as_u64() == Some(2) && v["bytes"].as_u64() > Some(0),
        "{v}"
    );
    let (_, body) = get(
        &f.app,
        "/loki/api/v1/index/stats",
        &[
            ("query", r#"{pod="db"}"#),
            ("start", &(T0 + 7200 * S).to_string()),
            ("end", &(T0 + 9000 * S).to_string()),
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["entries"], 0, "nothing in that range: {v}");
    let (status, body) = get(&f.app, "/loki/api/v1/status/buildinfo", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["version"].as_str().unwrap().starts_with('3'), "{body}");
    // /ready is open, like Loki's.
    let (status, body) = send(&f.app, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_lokis_errors() {
    let f = fixture().await;
    for (path, params, status, want) in [
        (
            "/loki/api/v1/query_range",
            vec![("query", "{}")],
            400,
            "at least one regexp or equality matcher",
        ),
        (
            "/loki/api/v1/query_range",
            vec![("query", r#"{pod=~".*"}"#)],
            400,
            "empty-compatible",
        ),
        (
            "/loki/api/v1/query_range",
            vec![("query", r#"{pod="a""#)],
            400,
            "parse error at line 1, col",
        ),
        (
            "/loki/api/v1/query_range",
            vec![("query", r#"rate({pod="a"}[5minutes])"#)],
            400,
            "bad duration",
        ),
        (
            "/loki/api/v1/query_range",
            vec![("query", r#"{pod="a"}"#), ("limit", "100000")],
            400,
            "max entries limit",
        ),
        (
            "/loki/api/v1/query_range",
            vec![("query", r#"{pod="a"}"#), ("start", "later")],
            400,
            "invalid time",
        ),
        (
            "/loki/api/v1/query_range",
            vec![
                ("query", r#"count_over_time({pod="a"}[1s])"#),
                ("start", "0"),
                ("end", "1700000000"),
                ("step", "1"),
            ],
            400,
            "maximum resolution",
        ),
        (
            "/loki/api/v1/query",
            vec![("query", r#"{pod="a"}"#)],
            400,
            "log queries are not supported as an instant query",
        ),
        (
            "/loki/api/v1/series",
            vec![("match[]", r#"{pod="a"} |= "x""#)],
            400,
            "only label matchers",
        ),
    ] {
        let (got, body) = get(&f.app, path, &params).await;
        assert_eq!(got.as_u16(), status, "{params:?}: {body}");
        assert!(body.contains(want), "{params:?}: {body}");
    }
    // Without the read token: 401, as for gRPC queries.
    let (status, _) = send(
        &f.app,
        Request::get("/loki/api/v1/labels")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// `/loki/api/v1/tail` over a real socket: the history first (oldest
/// first, up to `limit`), then each newly stored line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sends_history_then_new_lines() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = f.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("query", r#"{pod="db"} |= "error""#),
            ("start", &T0.to_string()),
            ("limit", "3"),
        ])
        .finish();
    let mut req = format!("ws://{addr}/loki/api/v1/tail?{q}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // db's errors are lines 0, 5, ..., 25: the newest three.
    assert_eq!(
        next_lines(&mut ws).await,
        [line("db", 15), line("db", 20), line("db", 25)]
    );
    // New lines of db: 30..40 (errors at 30 and 35) and of web (not tailed).
    let mut more = push("node-b", "db", 40);
    // Only the new range: lines 30..40 (offsets past what was stored).
    let mut b = logfleet_proto::LinesBuilder::default();
    let mut off = 0u64;
    let mut start = 0;
    for i in 0..40u64 {
        let text = line("db", i);
        if i >= 30 {
            if i == 30 {
                start = off;
            }
            b.push(
                0,
                T0 + i as i64 * S,
                off,
                Stream::Stdout as i32,
                0,
                text.as_bytes(),
            );
        }
        off += text.len() as u64 + 1;
    }
    let (payload, raw_len) =
        logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
    more.payload = payload;
    more.raw_len = raw_len;
    more.ranges[0].start = start;
    f.backend.push(more).await.unwrap();
    assert_eq!(next_lines(&mut ws).await, [line("db", 30), line("db", 35)]);
    // The text and instant of a line the history sent, but on stderr of
    // another container: another line, which the tail must send.
    let mut b = logfleet_proto::LinesBuilder::default();
    let text = line("db", 25);
    b.push(0, T0 + 25 * S, 0, Stream::Stderr as i32, 0, text.as_bytes());
    let (payload, raw_len) =
        logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
    let mut other = push("node-b", "db", 1);
    other.payload = payload;
    other.raw_len = raw_len;
    other.ranges[0].file_id = 2;
    other.ranges[0].labels.as_mut().unwrap().container = "sidecar".into();
    other.ranges[0].end = text.len() as u64 + 1;
    f.backend.push(other).await.unwrap();
    assert_eq!(next_lines(&mut ws).await, [line("db", 25)]);
    ws.send(Message::Close(None)).await.unwrap();
}

/// The lines of the next tail message, sorted.
async fn next_lines<S>(ws: &mut S) -> Vec<String>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("a tail message within 30 s")
        .expect("open")
        .expect("a message");
    let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
        panic!("{m:?}")
    };
    let v: Value = serde_json::from_str(&t).unwrap();
    let mut lines: Vec<String> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().clone())
        .map(|v| v[1].as_str().unwrap().to_owned())
        .collect();
    lines.sort();
    lines
}

/// Parser stages, label filters, line_format and unwrap, through the API
/// and the gRPC path, against what the known lines say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_stages_parse_filter_and_unwrap() {
    let f = fixture().await;
    let (start, end) = range(T0, T0 + 3600 * S);
    let q = r#"{namespace="shop"} | logfmt | level="error" and n >= 10 | line_format "{{.pod_extracted}}#{{.n}}""#;
    let data = get_json(
        &f.app,
        "/loki/api/v1/query_range",
        &[
            ("query", q),
            ("start", &start),
            ("end", &end),
            ("limit", "1000"),
        ],
    )
    .await;
    let mut got: Vec<String> = Vec::new();
    for s in data["result"].as_array().unwrap() {
        assert_eq!(s["stream"]["level"], "error", "{s}");
        assert_eq!(
            s["stream"]["pod"], s["stream"]["pod_extracted"],
            "clash renamed"
        );
        for v in s["values"].as_array().unwrap() {
            got.push(v[1].as_str().unwrap().to_owned());
        }
    }
    got.sort();
    let mut want: Vec<String> = (10..60)
        .step_by(5)
        .map(|i| format!("web#{i}"))
        .chain((10..30).step_by(5).map(|i| format!("db#{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want);
    // The gRPC path gives the same lines, with the same labels.
    let entries = execute(
        &f.backend,
        query::parse(q).unwrap(),
        Bounds {
            from: None,
            to: None,
            limit: 0,
            direction: Direction::Forward,
        },
    )
    .await
    .unwrap();
    assert_eq!(entries.len(), want.len());
    assert!(entries.iter().all(|e| e.piped
        && e.pipeline_labels
            .iter()
            .any(|l| l.name == "level" && l.value == "error")));
    let mut texts: Vec<String> = entries
        .iter()
        .map(logfleet_store::labels::entry_text)
        .collect();
    texts.sort();
    assert_eq!(texts, want);

    let at = (T0 + 59 * S).to_string();
    let instant = |q: &'static str| {
        let app = f.app.clone();
        let at = at.clone();
        async move { get_json(&app, "/loki/api/v1/query", &[("query", q), ("time", &at)]).await }
    };
    let data =
        instant(r#"sum by (level) (count_over_time({namespace="shop"} | logfmt [1h]))"#).await;
    let by: std::collections::BTreeMap<String, String> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["level"].as_str().unwrap().to_owned(),
                s["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(by["error"], "18");
    assert_eq!(by["info"], "72");
    let data = instant(r#"sum(sum_over_time({pod="db"} | logfmt | unwrap n [1h]))"#).await;
    assert_eq!(data["result"][0]["value"][1], "435", "0 + 1 + ... + 29");
    let data = instant(
        r#"quantile_over_time(0.5, {pod="db"} | logfmt | drop level, failed, ok, stream | unwrap n [1h])"#,
    )
    .await;
    assert_eq!(data["result"].as_array().unwrap().len(), 1, "{data}");
    assert_eq!(data["result"][0]["value"][1], "14.5");
    // Lines that are not JSON: Loki's pipeline error, unless filtered.
    let (status, body) = get(
        &f.app,
        "/loki/api/v1/query",
        &[
            ("query", r#"count_over_time({pod="db"} | json [1h])"#),
            ("time", &at),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("pipeline error: 'JSONParserErr'"), "{body}");
    let data = instant(r#"sum(count_over_time({pod="db"} | json | drop __error__ [1h]))"#).await;
    assert_eq!(data["result"][0]["value"][1], "30");
    let data = instant(r#"sum(count_over_time({pod="db"} | json | __error__="" [1h]))"#).await;
    assert_eq!(data["result"], json!([]));
    let (status, body) = get(
        &f.app,
        "/loki/api/v1/query",
        &[("query", r#"sum_over_time({pod="db"}[1h])"#), ("time", &at)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("without unwrap"), "{body}");
}

/// Every line the fixture wrote: (node, pod, stream, ts, text).
fn fixture_lines() -> Vec<(&'static str, &'static str, Stream, i64, String)> {
    let mut out = Vec::new();
    for (node, pod, n) in [("node-a", "web", 60u64), ("node-b", "db", 30)] {
        for i in 0..n {
            let stream = if i.is_multiple_of(3) {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            out.push((node, pod, stream, T0 + i as i64 * S, line(pod, i)));
        }
    }
    out
}

/// A LogQL table: each query's line count written out by hand from the
/// fixture, and its lines, in both directions and at several limits,
/// against brute force over the known lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logql_table_against_brute_force() {
    let f = fixture().await;
    let table: [(&str, usize); 14] = [
        (r#"{namespace="shop"}"#, 90),
        (r#"{pod="web"}"#, 60),
        (r#"{pod=~"w.*"}"#, 60),
        (r#"{pod!="web", namespace="shop"}"#, 30),
        (r#"{node=~"node-(a|b)", stream="stderr"}"#, 20 + 10),
        (r#"{namespace="shop"} |= "error""#, 18),
        (r#"{namespace="shop"} != "error" |~ "n=1[0-9] ""#, 8 + 8),
        (r#"{namespace="shop"} !~ "n=[0-9] ""#, 90 - 10 - 10),
        (r#"{namespace="shop"} | logfmt | n > 55"#, 4),
        (
            r#"{namespace="shop"} | logfmt | n >= 20 and n < 30 or level="error" and pod_extracted="db""#,
            20 + 6 - 2,
        ),
        (
            r#"{pod="db"} | pattern "level=<level> pod=<_> n=<n> <word>" | word="ok""#,
            24,
        ),
        (
            r#"{pod="db"} | regexp "n=(?P<num>\\d+)" | num=~"2." |= "ok""#,
            8,
        ),
        (
            r#"{namespace="shop"} | logfmt | line_format "{{.n}}" |= "5""#,
            15 + 3,
        ),
        (r#"{namespace="nowhere"}"#, 0),
    ];
    let all = fixture_lines();
    let (start, end) = (T0.to_string(), (T0 + 3600 * S).to_string());
    for (q, count) in table {
        let parsed = query::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        // Brute force: every fixture line through the pure matching code.
        let mut want: Vec<(i64, String)> = all
            .iter()
            .filter_map(|(node, pod, stream, ts, text)| {
                let fl = FileLabels {
                    namespace: "shop".into(),
                    pod: (*pod).into(),
                    pod_uid: format!("uid-{pod}"),
                    container: "app".into(),
                    restart: 0,
                    extra: Vec::new(),
                };
                if !parsed.matches_file(node, &fl)
                    || !parsed.matches_stored(*stream as i32, text.as_bytes())
                {
                    return None;
                }
                if parsed.pipeline.is_empty() {
                    return Some((*ts, text.clone()));
                }
                let p = parsed.pipe(node, &fl, *stream as i32, text.as_bytes())?;
                Some((*ts, p.line))
            })
            .collect();
        assert_eq!(want.len(), count, "{q}: the hand count");
        want.sort();
        for (direction, limit) in [
            ("forward", 1000),
            ("backward", 1000),
            ("forward", 7),
            ("backward", 7),
        ] {
            let data = get_json(
                &f.app,
                "/loki/api/v1/query_range",
                &[
                    ("query", q),
                    ("start", &start),
                    ("end", &end),
                    ("limit", &limit.to_string()),
                    ("direction", direction),
                ],
            )
            .await;
            let mut got: Vec<(i64, String)> = data["result"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["values"].as_array().unwrap().clone())
                .map(|v| {
                    (
                        v[0].as_str().unwrap().parse().unwrap(),
                        v[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            got.sort();
            let mut expect = want.clone();
            if limit < expect.len() {
                expect = if direction == "forward" {
                    expect[..limit].to_vec()
                } else {
                    expect[expect.len() - limit..].to_vec()
                };
            }
            // Ties at one timestamp (both pods write at T0 + i) may be cut
            // either way at the limit: compare the timestamps there.
            if limit < want.len() {
                let ts = |v: &[(i64, String)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
                assert_eq!(ts(&got), ts(&expect), "{q} {direction} {limit}");
            } else {
                assert_eq!(got, expect, "{q} {direction} {limit}");
            }
        }
    }
}

/// Labels beyond the path's (FileLabels.extra: Kubernetes metadata, Loki
/// pushes) are selected, listed, grouped by and refused when malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_labels_are_labels_like_the_others() {
    let f = fixture().await;
    let label = |n: &str, v: &str| logfleet_proto::v1::Label {
        name: n.into(),
        value: v.into(),
    };
    let mut p = push("node-c", "checkout-1", 4);
    p.ranges[0].labels.as_mut().unwrap().extra =
        vec![label("app", "checkout"), label("team", "payments")];
    f.backend.push(p).await.unwrap();
    let (start, end) = range(T0, T0 + 3600 * S);
    let data = get_json(
        &f.app,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"{app="checkout"} |= "error""#),
            ("start", &start),
            ("end", &end),
        ],
    )
    .await;
    let result = data["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{data}");
    assert_eq!(result[0]["stream"]["app"], "checkout");
    assert_eq!(result[0]["stream"]["team"], "payments");
    assert_eq!(result[0]["values"][0][1], line("checkout-1", 0));
    // A label nobody has: the empty value, as in Loki.
    let data = get_json(
        &f.app,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"{namespace="shop", app=""}"#),
            ("start", &start),
            ("end", &end),
            ("limit", "1000"),
        ],
    )
    .await;
    let n: usize = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["values"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 90, "the fixture's lines have no app label");
    let names = get_json(&f.app, "/loki/api/v1/labels", &[("start", "0")]).await;
    assert!(names.as_array().unwrap().contains(&json!("app")), "{names}");
    let values = get_json(&f.app, "/loki/api/v1/label/team/values", &[("start", "0")]).await;
    assert_eq!(values, json!(["payments"]));
    let t = (T0 + 10 * S).to_string();
    let data = get_json(
        &f.app,
        "/loki/api/v1/query",
        &[
            (
                "query",
                r#"sum by (app) (count_over_time({namespace="shop"}[1h]))"#,
            ),
            ("time", &t),
        ],
    )
    .await;
    let mut by: Vec<(String, String)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["app"].as_str().unwrap_or("").to_owned(),
                s["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by.sort();
    // Lines 0..=10 of web and of db have no app; checkout-1's 4 have one.
    let want = [("", "22"), ("checkout", "4")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(by, want);
    // Malformed extras are refused with the reason.
    for (extra, why) in [
        (vec![label("team", "a"), label("app", "b")], "sorted"),
        (vec![label("pod", "x")], "built-in"),
        (vec![label("a-b", "x")], "not a label name"),
    ] {
        let mut p = push("node-d", "bad", 1);
        p.ranges[0].labels.as_mut().unwrap().extra = extra;
        let err = f.backend.push(p).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
}

fn loki_protobuf(labels: &str, entries: &[(i64, &str)]) -> Vec<u8> {
    logfleet_kubesim::loki::push_protobuf(labels, entries)
}

async fn push_body(
    app: &axum::Router,
    token: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = Request::post("/loki/api/v1/push")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    send(app, req.body(Body::from(body)).unwrap()).await
}

/// Lines of `{job="promtail"}` through the Loki API, sorted.
async fn job_lines(app: &axum::Router) -> Vec<(String, String)> {
    let data = get_json(
        app,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"{job="promtail"}"#),
            ("start", "0"),
            ("end", &(T0 + 3600 * S).to_string()),
            ("limit", "1000"),
        ],
    )
    .await;
    let mut out: Vec<(String, String)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().clone())
        .map(|v| {
            (
                v[0].as_str().unwrap().to_owned(),
                v[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The push token is shared by every client: a Loki push that names node
/// `node-a` must not store lines as that agent's, nor keep its last push
/// fresh (its NotReporting would never fire). It is loki-push's, with the
/// label kept as `label_node`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loki_push_cannot_pose_as_an_agents_node() {
    let f = fixture().await;
    let before = agent(&f.backend, "node-a").await;
    let json = format!(
        r#"{{"streams":[{{"stream":{{"node":"node-a","namespace":"shop","pod":"web"}},"values":[["{}","posing"]]}}]}}"#,
        T0 + 5
    );
    let (status, body) = push_body(
        &f.app,
        PUSH_TOKEN,
        "application/json",
        None,
        json.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let after = agent(&f.backend, "node-a").await;
    assert_eq!(
        (after.last_push_unix_nano, after.lines),
        (before.last_push_unix_nano, before.lines),
        "node-a's record is untouched"
    );
    let data = get_json(
        &f.app,
        "/loki/api/v1/series",
        &[("match[]", r#"{label_node="node-a"}"#), ("start", "0")],
    )
    .await;
    assert_eq!(data.as_array().map(Vec::len), Some(1), "{data}");
    assert_eq!(data[0]["node"], "loki-push");
}

/// Loki clients push here: JSON, gzip, snappy protobuf; durable before the
/// 204; a resent push stored once; the same instant with another line
/// kept; Loki's status codes for bad input; the push token, not the read
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_clients_push_and_retries_are_stored_once() {
    let f = fixture().await;
    let json = format!(
        r#"{{"streams":[{{"stream":{{"job":"promtail","namespace":"shop","stream":"stderr"}},"values":[["{}","first"],["{}","second"]]}}]}}"#,
        T0 + 1,
        T0 + 2
    );
    let (status, body) = push_body(
        &f.app,
        PUSH_TOKEN,
        "application/json",
        None,
        json.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let want = |extra: &[(i64, &str)]| {
        let mut v: Vec<(String, String)> = [(T0 + 1, "first"), (T0 + 2, "second")]
            .iter()
            .chain(extra)
            .map(|(t, l)| (t.to_string(), (*l).to_owned()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(job_lines(&f.app).await, want(&[]));
    // Labels as sent: job is an extra label, stream the line's stream.
    let data = get_json(
        &f.app,
        "/loki/api/v1/series",
        &[("match[]", r#"{job="promtail"}"#), ("start", "0")],
    )
    .await;
    assert_eq!(data[0]["node"], "loki-push");
    assert_eq!(data[0]["namespace"], "shop");
    // The client retries (its ack was lost), gzip-encoded this time.
    let gz = gzip(json.as_bytes());
    let (status, _) = push_body(&f.app, PUSH_TOKEN, "application/json", Some("gzip"), gz).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(job_lines(&f.app).await, want(&[]), "stored once");
    // Protobuf: the same stream (labels in another order), one repeat, one
    // new line at an instant already used, one new instant.
    let pb = loki_protobuf(
        r#"{stream="stderr", namespace="shop", job="promtail"}"#,
        &[
            (T0 + 2, "second"),
            (T0 + 2, "other at the same instant"),
            (T0 + 3, "third"),
        ],
    );
    let (status, body) = push_body(&f.app, PUSH_TOKEN, "application/x-protobuf", None, pb).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        job_lines(&f.app).await,
        want(&[(T0 + 2, "other at the same instant"), (T0 + 3, "third")])
    );
    // Bad input: Loki's codes, with the reason.
    for (ct, enc, body, code, why) in [
        ("application/json", None, b"{".to_vec(), 400, "invalid JSON"),
        (
            "application/x-protobuf",
            None,
            b"garbage".to_vec(),
            400,
            "snappy",
        ),
        (
            "application/json",
            Some("br"),
            b"{}".to_vec(),
            415,
            "Content-Encoding",
        ),
        (
            "application/json",
            None,
            br#"{"streams":[{"stream":{"stream":"sideways"},"values":[["1","x"]]}]}"#.to_vec(),
            400,
            "stdout or stderr",
        ),
        ("application/json", None, vec![b' '; 33 << 20], 413, ""),
        // A gzip bomb: 65 MiB of spaces in a few dozen KiB.
        (
            "application/json",
            Some("gzip"),
            gzip(&vec![b' '; 65 << 20]),
            413,
            "decompresses to more than",
        ),
    ] {
        let (status, text) = push_body(&f.app, PUSH_TOKEN, ct, enc, body).await;
        assert_eq!(status.as_u16(), code, "{text}");
        assert!(text.contains(why), "{text}");
    }
    // Structured metadata is not kept: the line is, and the metadata is
    // counted, not dropped in silence.
    let md = format!(
        r#"{{"streams":[{{"stream":{{"job":"promtail"}},"values":[["{}","with metadata",{{"trace_id":"abc"}}]]}}]}}"#,
        T0 + 8
    );
    let (status, _) = push_body(
        &f.app,
        PUSH_TOKEN,
        "application/json",
        None,
        md.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, metrics) = send(
        &f.app,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(
        metrics.contains("logfleet_aggregator_loki_structured_metadata_dropped_total 1"),
        "{metrics}"
    );
    // A saturated aggregator says 429, as Loki does, and takes the push
    // once it has room.
    // (The in-memory store has no in-flight limit.)
    let Some(writer) = &f.writer else {
        return;
    };
    let held = writer.take_all_room().expect("room");
    let late = format!(
        r#"{{"streams":[{{"stream":{{"job":"promtail"}},"values":[["{}","late"]]}}]}}"#,
        T0 + 9
    );
    let (status, text) = push_body(
        &f.app,
        PUSH_TOKEN,
        "application/json",
        None,
        late.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    drop(held);
    let (status, _) = push_body(
        &f.app,
        PUSH_TOKEN,
        "application/json",
        None,
        late.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The read token cannot push.
    let (status, _) = push_body(&f.app, TOKEN, "application/json", None, json.into_bytes()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Offsets of pushed lines are the aggregator's: should the stream's mark
/// already lie past the clock (a clock set back since a restart), the
/// writer calls them duplicates, and they are sent again further on, not
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_lines_below_the_streams_mark_are_not_lost() {
    use logfleet_store::loki as push;
    let f = fixture().await;
    let labels = vec![("job".to_owned(), "promtail".to_owned())];
    let t = push::target(&labels).unwrap();
    // A line of that stream stored at an offset far past any clock.
    let far = 1u64 << 62;
    let mut b = logfleet_proto::LinesBuilder::default();
    b.push(0, T0, far, Stream::Unknown as i32, 0, b"from before");
    let (payload, raw_len) =
        logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
    f.backend
        .push(PushRequest {
            node: t.node.clone(),
            compression: Compression::Zstd as i32,
            raw_len,
            ranges: vec![FileRange {
                file_id: t.file_id,
                labels: Some(t.labels.clone()),
                start: far,
                end: far + 1,
                lines_end: 0,
            }],
            payload,
        })
        .await
        .unwrap();
    let json = format!(
        r#"{{"streams":[{{"stream":{{"job":"promtail"}},"values":[["{}","a"],["{}","b"]]}}]}}"#,
        T0 + 5,
        T0 + 6
    );
    let (status, body) = push_body(
        &f.app,
        PUSH_TOKEN,
        "application/json",
        None,
        json.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let lines: Vec<String> = job_lines(&f.app).await.into_iter().map(|x| x.1).collect();
    assert_eq!(lines, ["from before", "a", "b"]);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The web view's files are served from the binary, open, with a policy
/// that lets the page load nothing from elsewhere and run no injected
/// script (a log line is data, never markup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_is_served_with_a_strict_policy() {
    let f = fixture().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let resp = f
            .app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}: no token needed");
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert!(h("content-type").starts_with(kind), "{path}");
        let csp = h("content-security-policy");
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(rule), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h("x-content-type-options"), "nosniff");
    }
}
