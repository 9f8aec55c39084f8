//! `logfleet demo`: the whole pipeline on one machine, no cluster. An
//! aggregator with its store, and three simulated nodes, each a
//! kubelet-style writer (rotation, gzip, restarts, pod churn) with its own
//! agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use logfleet_kubesim::{messages::Messages, Format, Pod, Rotation};
use rand::Rng;

pub struct DemoConfig {
    pub dir: Option<PathBuf>,
    /// None: the default port, or a free one when it is taken.
    pub grpc_addr: Option<SocketAddr>,
    /// None: the default port, or a free one when it is taken.
    pub http_addr: Option<SocketAddr>,
    pub duration: Option<Duration>,
    /// Store lines in this ClickHouse instead of the demo's directory.
    pub clickhouse: Option<logfleet_clickhouse::Config>,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Namespace, pod name prefix and containers of a simulated workload.
type PodSpec = (
    &'static str,
    &'static str,
    &'static [(&'static str, Format)],
);

/// The pod object the stand-in API serves for a simulated pod: labels,
/// annotations and an owner as a real cluster's controllers would set them.
fn pod_object(spec: usize, node: usize, name: &str, uid: &str) -> serde_json::Value {
    use serde_json::json;
    let node = format!("node-{node}");
    match spec {
        0 => logfleet_kubesim::api::pod(
            "default",
            name,
            uid,
            &node,
            json!({"app": "web", "app.kubernetes.io/name": "web", "pod-template-hash": "6b8f5c"}),
            json!({"logfleet.dev/multiline": "python"}),
            Some(("ReplicaSet", "web-6b8f5c")),
        ),
        1 => logfleet_kubesim::api::pod(
            "shop",
            name,
            uid,
            &node,
            json!({"app": "checkout", "app.kubernetes.io/name": "checkout", "team": "payments",
                "pod-template-hash": "7d4b9c"}),
            json!({"logfleet.dev/multiline": "java"}),
            Some(("ReplicaSet", "checkout-7d4b9c")),
        ),
        _ => logfleet_kubesim::api::pod(
            "kube-system",
            name,
            uid,
            &node,
            json!({"app": "legacy-proxy"}),
            json!({}),
            Some(("DaemonSet", "legacy-proxy")),
        ),
    }
}

/// One simulated node's kubelet and workloads, until `stop`. Each pod is
/// on the stand-in API before its first line is written, as in a cluster.
fn write_node(
    root: PathBuf,
    node: usize,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    api: logfleet_kubesim::api::Api,
) -> std::io::Result<()> {
    let rotation = Rotation {
        max_size: 256 << 10,
        max_files: 5,
        reopen_delay_records: 3,
    };
    let mut rng = rand::rng();
    let mut msgs = Messages::new(node as u64);
    let specs: [PodSpec; 3] = [
        (
            "default",
            "web",
            &[("nginx", Format::Cri), ("app", Format::Cri)],
        ),
        ("shop", "checkout", &[("server", Format::Cri)]),
        ("kube-system", "legacy-proxy", &[("proxy", Format::Docker)]),
    ];
    let mut generation = 0u32;
    let make = |spec: usize, generation: u32| {
        let (ns, base, cs) = specs[spec];
        let pod = format!("{base}-{node}{generation:03}");
        let uid = format!("uid-{node}-{spec}-{generation}");
        api.put_pod(pod_object(spec, node, &pod, &uid));
        Pod::create(&root, ns, &pod, &uid, cs, rotation)
    };
    let mut pods: Vec<(usize, Pod)> = Vec::new();
    for s in 0..specs.len() {
        pods.push((s, make(s, 0)?));
    }
    let mut last_restart = Instant::now();
    let mut last_churn = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (_, pod) in pods.iter_mut() {
            for c in pod.containers.iter_mut() {
                for _ in 0..rng.random_range(1..8) {
                    let stream = if rng.random_ratio(1, 10) {
                        "stderr"
                    } else {
                        "stdout"
                    };
                    let mut msg = msgs.next_message();
                    while msg.starts_with('\t') {
                        // The generator's lone stack frame is no line an
                        // application writes on its own: the demo writes
                        // whole traces instead (below).
                        msg = msgs.next_message();
                    }
                    if rng.random_ratio(1, 500) {
                        // Now and then a line longer than a CRI chunk.
                        msg = msg.repeat(200);
                    }
                    c.write(now_ns(), stream, &msg, true)?;
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Now and then a stack trace, written line by line as a runtime
        // does: the checkout server's in Java, the web app's in Python.
        for (spec, pod) in pods.iter_mut() {
            let spec = *spec;
            let trace = match (spec, rng.random_ratio(1, 40)) {
                (1, true) => msgs.java_trace(),
                (0, true) => msgs.python_trace(),
                _ => continue,
            };
            let Some(c) = pod.containers.last_mut() else {
                continue;
            };
            let stream = if spec == 0 { "stderr" } else { "stdout" };
            for line in &trace {
                c.write(now_ns(), stream, line, true)?;
            }
            written.fetch_add(trace.len() as u64, Ordering::Relaxed);
        }
        if last_restart.elapsed() > Duration::from_secs(20) {
            last_restart = Instant::now();
            let i = rng.random_range(0..pods.len());
            let c = &mut pods[i].1.containers[0];
            println!("  node-{node}: container {}/{} restarted", c.pod, c.name);
            c.restart()?;
        }
        if last_churn.elapsed() > Duration::from_secs(45) {
            last_churn = Instant::now();
            generation += 1;
            let (spec, old) = pods.remove(0);
            let name = old.containers[0].pod.clone();
            if let Some(uid) = old
                .dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit('_').next())
            {
                api.delete_pod(uid);
            }
            old.delete()?;
            let new = make(spec, generation)?;
            println!(
                "  node-{node}: pod {name} deleted, {} created",
                new.containers[0].pod
            );
            pods.push((spec, new));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The demo's default addresses: the aggregator's own defaults, on loopback.
const DEFAULT_GRPC: &str = logfleet_proto::ports::LOCAL_INGEST;
const DEFAULT_HTTP: &str = logfleet_proto::ports::LOCAL_HTTP;

/// Binds `addr` when given (a taken address is an error: it was asked
/// for), else `default`, else (taken) a free loopback port.
fn bind(addr: Option<SocketAddr>, default: &str) -> Result<std::net::TcpListener> {
    let l = match addr {
        Some(a) => std::net::TcpListener::bind(a).with_context(|| format!("binding {a}"))?,
        None => match std::net::TcpListener::bind(default) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?
            }
            Err(e) => return Err(e).with_context(|| format!("binding {default}")),
        },
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

/// A path as a shell word: quoted when it holds anything but plain
/// characters, so a printed command works when pasted.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The commands the demo suggests, for the binary at `exe` and the
/// aggregator at `url`. Each works when pasted into a POSIX shell.
pub fn hints(exe: &str, url: &str) -> Vec<String> {
    let exe = shell_word(exe);
    vec![
        format!("{exe} agents --aggregator {url}"),
        format!("{exe} query --aggregator {url} '{{namespace=\"shop\"}} |= \"ERROR\"' --limit 20"),
        format!("{exe} query --aggregator {url} '{{workload=\"checkout\"}} |= \"Exception\"' --limit 3"),
        format!("{exe} query --aggregator {url} '{{node=\"node-2\", stream=\"stderr\"}}' --since 5m --output jsonl"),
        // A raw (backtick) string keeps the regex free of escapes.
        format!("{exe} tail --aggregator {url} '{{pod=~\"web-.*\"}} |~ `status=5..|\" 5[0-9][0-9] `'"),
    ]
}

pub async fn run(cfg: DemoConfig) -> Result<()> {
    // Ports first: nothing is printed or started until both are ours.
    let listeners = logfleet_aggregator::Listeners {
        grpc: bind(cfg.grpc_addr, DEFAULT_GRPC)?,
        http: bind(cfg.http_addr, DEFAULT_HTTP)?,
        query: None,
    };
    let grpc_addr = listeners.grpc.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let (dir, _guard) = match cfg.dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("logfleet-demo-")
                .tempdir()
                .context("creating demo directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let agg_cfg = logfleet_aggregator::AggregatorConfig {
        store: logfleet_embedded::StoreConfig {
            data_dir: dir.join("aggregator"),
            segment_bytes: 16 << 20,
            segment_age: Duration::from_secs(600),
            retention_age: None,
            retention_bytes: Some(1 << 30),
            zstd_level: 3,
        },
        grpc_addr,
        query_addr: None,
        http_addr,
        tokens: Default::default(),
        tls: None,
        tls_reload: Duration::from_secs(30),
        identity: None,
        limits: logfleet_proto::Limits::default(),
        max_message: 32 << 20,
        max_concurrent_requests: 16,
        max_inflight_bytes: 64 << 20,
        query_timeout: Duration::from_secs(60),
        clickhouse: cfg.clickhouse.clone(),
    };
    let aggregator = tokio::spawn(logfleet_aggregator::run_on(
        agg_cfg,
        listeners,
        stopped(stop_rx.clone()),
    ));
    let url = format!("http://{grpc_addr}");
    println!("logfleet demo: aggregator on {url} (metrics on http://{http_addr}/metrics)");
    match &cfg.clickhouse {
        // The web view and the Loki API are not served over ClickHouse yet.
        Some(ch) => println!("  store: ClickHouse at {}, database {}", ch.url, ch.database),
        None => println!(
            "  web view: http://{http_addr}/#q=%7Bnamespace%3D~%22.%2B%22%7D  (Grafana: a Loki data source at http://{http_addr})"
        ),
    }
    println!("  files under {}", dir.display());

    let stop_writers = Arc::new(AtomicBool::new(false));
    // A stand-in API server with the simulated pods, labels and owners:
    // the agents label lines with workloads and app labels from it, and
    // group stack traces as the pods' annotations ask.
    let api = logfleet_kubesim::api::Api::start()
        .await
        .context("starting the stand-in API server")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    for (ns, rs, deployment) in [
        ("default", "web-6b8f5c", "web"),
        ("shop", "checkout-7d4b9c", "checkout"),
    ] {
        api.put_replicaset(ns, rs, deployment);
    }
    let mut agents = Vec::new();
    let mut writers = Vec::new();
    let mut counters = Vec::new();
    for node in 1..=3 {
        let root = dir.join(format!("node-{node}/pods"));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let written = Arc::new(AtomicU64::new(0));
        counters.push(written.clone());
        let (s, r, a) = (stop_writers.clone(), root.clone(), api.clone());
        writers.push(std::thread::spawn(move || {
            if let Err(e) = write_node(r, node, s, written, a) {
                eprintln!("  node-{node}: writer failed: {e}");
            }
        }));
        let agent_cfg = logfleet_agent::AgentConfig {
            node_name: format!("node-{node}"),
            log_root: root,
            state_dir: dir.join(format!("node-{node}/state")),
            target: logfleet_agent::ship::Target {
                url: url.clone(),
                token: None,
                tls_ca: None,
                tls_ca_pem: None,
                identity_token_file: None,
            },
            http_addr: None,
            compression: logfleet_proto::v1::Compression::Zstd,
            compression_level: 1,
            batch_bytes: 1 << 20,
            batch_wait: Duration::from_millis(500),
            rescan_interval: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
            tail: logfleet_agent::tail::TailConfig {
                rotate_wait: Duration::from_secs(5),
                ..Default::default()
            },
            filter: Default::default(),
            backoff: logfleet_agent::ship::Backoff {
                min: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            heartbeat_interval: Duration::from_secs(10),
            dead_letter_bytes: 64 << 20,
            metadata: Some(logfleet_agent::MetadataConfig {
                selection: logfleet_agent::metadata::Selection {
                    pod_labels: ["team"]
                        .into_iter()
                        .chain(logfleet_agent::metadata::DEFAULT_POD_LABELS)
                        .map(str::to_owned)
                        .collect(),
                    namespace_labels: Vec::new(),
                },
                limits: Default::default(),
                kubeconfig: Some(kubeconfig.clone()),
            }),
        };
        agents.push(tokio::spawn(logfleet_agent::run(
            agent_cfg,
            stopped(stop_rx.clone()),
        )));
        println!("  node-{node}: kubelet-style writer and agent started");
    }
    println!();
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "logfleet".into());
    // One write: the agents' and aggregator's log lines (stderr) must not
    // land between the hints.
    let mut block = String::from("Try, in another terminal:\n");
    for h in hints(&exe, &url) {
        block.push_str(&format!("  {h}\n"));
    }
    block.push_str("(`cargo install --path .` puts `logfleet` on your PATH.)\n\n");
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(block.as_bytes())?;
        out.flush()?;
    }
    println!("Ctrl-C stops the demo.");

    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = until => break,
            _ = ticker.tick() => {
                let written: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                println!("  lines written per node: {written:?} (see `logfleet agents` for what is stored)");
            }
        }
    }
    println!("stopping...");
    stop_writers.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let _ = stop_tx.send(true);
    for a in agents {
        a.await.context("agent task")??;
    }
    aggregator.await.context("aggregator task")??;
    println!("demo stopped");
    Ok(())
}
