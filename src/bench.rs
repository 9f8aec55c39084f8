//! `logfleet bench`: generates a kubelet-style workload and measures the
//! real `logfleet` processes on it. CPU time comes from /proc/<pid>/stat
//! (user + sys), peak RSS from VmHWM in /proc/<pid>/status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logfleet_kubesim::messages::Messages;
use logfleet_proto::v1::query_client::QueryClient;
use logfleet_proto::v1::{Direction, ListAgentsRequest, QueryRequest, TailRequest};
use tokio_stream::StreamExt;

/// What a generated tree holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    pub files: usize,
    pub lines: u64,
    pub bytes: u64,
}

/// Writes `files` CRI files under `dir/pods` totalling about `size` bytes:
/// ~180-byte application messages, one line in 500 long enough to be split
/// into P/F chunks.
pub fn generate(dir: &Path, size: u64, files: usize) -> Result<Workload> {
    let root = dir.join("pods");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let per_file = size / files as u64;
    let mut msgs = Messages::new(1);
    let mut lines = 0u64;
    let mut bytes = 0u64;
    let mut ts: i64 = 1_795_000_000_000_000_000;
    for f in 0..files {
        let cdir = root.join(format!("bench_app-{f}_uid-{f}/app"));
        std::fs::create_dir_all(&cdir)?;
        let mut out =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(cdir.join("0.log"))?);
        let mut written = 0u64;
        while written < per_file {
            ts += 1_234_567;
            let t = chrono::DateTime::from_timestamp_nanos(ts)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let stream = if lines.is_multiple_of(10) {
                "stderr"
            } else {
                "stdout"
            };
            let msg = msgs.next_message();
            let rec = if lines % 500 == 499 {
                // A 20 KiB line: containerd writes it as a P chunk and an F chunk.
                let long = msg.repeat(20_480 / msg.len() + 1);
                let (a, b) = long.split_at(16_384);
                format!("{t} {stream} P {a}\n{t} {stream} F {b}\n")
            } else {
                format!("{t} {stream} F {msg}\n")
            };
            out.write_all(rec.as_bytes())?;
            written += rec.len() as u64;
            lines += 1;
        }
        out.flush()?;
        bytes += written;
    }
    let w = Workload {
        files,
        lines,
        bytes,
    };
    std::fs::write(dir.join("workload.json"), serde_json::to_vec(&w)?)?;
    Ok(w)
}

/// CPU seconds (user + sys) of a process.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Peak resident set size of a process, bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmHWM")?;
    Ok(kb * 1024)
}

/// A child process, killed when dropped.
pub struct Bg(pub Child);
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this binary with `args`, its output in `log`.
pub fn spawn(args: &[&str], log: &Path) -> Result<Bg> {
    spawn_env(args, log, &[])
}

/// [`spawn`] with extra environment.
pub fn spawn_env(args: &[&str], log: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Result<Bg> {
    let exe = std::env::current_exe()?;
    let f = std::fs::File::create(log)?;
    let child = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .env("LOGFLEET_LOG", "warn")
        .stdout(f.try_clone()?)
        .stderr(f)
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Bg(child))
}

/// An aggregator on free loopback ports with its store in `data`, and a
/// query client connected to it.
pub async fn start_aggregator(
    data: &Path,
    log: &Path,
) -> Result<(Bg, String, QueryClient<tonic::transport::Channel>)> {
    start_aggregator_with(data, log, &[]).await
}

/// [`start_aggregator`] with more flags.
pub async fn start_aggregator_with(
    data: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<(Bg, String, QueryClient<tonic::transport::Channel>)> {
    let (agg, url, _, c) = start_aggregator_http(data, log, extra).await?;
    Ok((agg, url, c))
}

/// [`start_aggregator_with`], also giving the HTTP address.
pub async fn start_aggregator_http(
    data: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<(Bg, String, String, QueryClient<tonic::transport::Channel>)> {
    let (grpc, http) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{grpc}");
    let mut args = vec![
        "aggregator".to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc}"),
        "--http-addr".into(),
        format!("127.0.0.1:{http}"),
        "--retention-age".into(),
        "0s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agg = spawn(&args, log)?;
    let c = client(&url).await?;
    Ok((agg, url, format!("127.0.0.1:{http}"), c))
}

/// A GET over HTTP/1.1 on loopback: status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies: the JSON is between the chunk sizes; callers only
    // look for substrings, so keep the text as it came.
    Ok((status, body.to_owned()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Median and max of `n` runs of a Loki API GET, in ms; every run must
/// answer 200 with a body containing `expect`.
fn time_loki(http: &str, path: &str, n: usize, expect: &str) -> Result<(f64, f64)> {
    let mut times = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let (status, body) = http_get(http, path)?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        if status != 200 || !body.contains(expect) {
            bail!(
                "{path}: {status} {}",
                body.chars().take(300).collect::<String>()
            );
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[n / 2], times[n - 1]))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A query client, retrying the connection for up to 30 s.
pub async fn client(url: &str) -> Result<QueryClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match QueryClient::connect(url.to_owned()).await {
            Ok(c) => return Ok(c.max_decoding_message_size(256 << 20)),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Lines stored for every agent.
pub async fn stored_lines(c: &mut QueryClient<tonic::transport::Channel>) -> Result<u64> {
    let r = c.list_agents(ListAgentsRequest {}).await?.into_inner();
    Ok(r.agents.iter().map(|a| a.lines).sum())
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// How many records the agent makes of the tree's files with `detector`:
/// the same framing, assembly and grouping, without files read twice by the
/// agent. Without a detector, the line count.
fn expected_records(root: &Path, detector: &str, lines: u64) -> Result<u64> {
    use logfleet_agent::cri::{Assembler, Framer, Line, Oddities};
    use logfleet_agent::multiline::{Detector, GroupConfig, Grouper};
    let Some(det) = Detector::parse(detector)? else {
        return Ok(lines);
    };
    let max_line = logfleet_agent::tail::TailConfig::default().max_line;
    let mut records = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let data = std::fs::read(&p)?;
            let (mut framer, mut asm) = (Framer::new(0, max_line), Assembler::new(0, max_line));
            let mut group = Grouper::new(det.clone(), GroupConfig::default());
            let mut odd = Oddities::default();
            let mut out: Vec<Line> = Vec::new();
            let now = Instant::now();
            for chunk in data.chunks(64 << 10) {
                let mut sink = group.sink(&mut out, now);
                framer.feed(chunk, |rec, end| {
                    asm.feed(rec, end, now, 0, &mut odd, &mut sink)
                });
                records += out.len() as u64;
                out.clear();
            }
            {
                let mut sink = group.sink(&mut out, now);
                framer.finish(|rec, end| asm.feed(rec, end, now, 0, &mut odd, &mut sink));
                asm.flush_all(framer.record_offset(), &mut odd, &mut sink);
            }
            group.flush_all(&mut out);
            records += out.len() as u64;
        }
    }
    Ok(records)
}

/// A stand-in API server with `n` pods on node `bench`: the tree's pods
/// first, each owned by a ReplicaSet of a Deployment and labelled as a
/// real workload is; `n` beyond the tree's files are pods without logs.
async fn bench_api(
    dir: &Path,
    files: usize,
    n: usize,
) -> Result<(logfleet_kubesim::api::Api, PathBuf)> {
    use serde_json::json;
    let api = logfleet_kubesim::api::Api::start().await?;
    for i in 0..n {
        let (ns, name, uid) = if i < files {
            ("bench".to_string(), format!("app-{i}"), format!("uid-{i}"))
        } else {
            (
                "bench".to_string(),
                format!("idle-{i}"),
                format!("idle-uid-{i}"),
            )
        };
        let deployment = format!("svc-{}", i % 20);
        let rs = format!("{deployment}-5d8f7b");
        api.put_replicaset(&ns, &rs, &deployment);
        api.put_pod(logfleet_kubesim::api::pod(
            &ns,
            &name,
            &uid,
            "bench",
            json!({"app": deployment, "app.kubernetes.io/name": deployment,
                "app.kubernetes.io/instance": format!("{deployment}-prod"),
                "app.kubernetes.io/version": "1.4.2", "app.kubernetes.io/component": "api",
                "app.kubernetes.io/part-of": "shop", "team": format!("team-{}", i % 5),
                "pod-template-hash": "5d8f7b"}),
            json!({}),
            Some(("ReplicaSet", &rs)),
        ));
    }
    let kc = dir.join("bench-kubeconfig");
    api.write_kubeconfig(&kc)?;
    Ok((api, kc))
}

/// Ships the generated tree through a real agent into a real aggregator and
/// reports both processes' cost. Leaves the aggregator's data in `dir/data-<compression>`.
/// With `multiline` other than `none` every container's lines are grouped;
/// with `metadata_pods` the agent labels them from a stand-in API server.
pub async fn pipeline(
    dir: &Path,
    compression: &str,
    multiline: &str,
    metadata_pods: usize,
) -> Result<()> {
    let w: Workload = serde_json::from_slice(
        &std::fs::read(dir.join("workload.json")).context("run `logfleet bench generate` first")?,
    )?;
    let records = expected_records(&dir.join("pods"), multiline, w.lines)?;
    let api = if metadata_pods > 0 {
        Some(bench_api(dir, w.files as usize, metadata_pods).await?)
    } else {
        None
    };
    let data = dir.join(format!("data-{compression}"));
    let state = dir.join(format!("state-{compression}"));
    for d in [&data, &state] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    let (agg, url, mut c) = start_aggregator(&data, &dir.join("aggregator.log")).await?;
    let started = Instant::now();
    let root = dir.join("pods").display().to_string();
    let state_dir = state.display().to_string();
    let mut args = vec![
        "agent",
        "--node-name",
        "bench",
        "--log-root",
        &root,
        "--state-dir",
        &state_dir,
        "--aggregator",
        &url,
        "--http-addr",
        "127.0.0.1:0",
        "--compression",
        compression,
        "--multiline",
        multiline,
    ];
    let pod_labels = "app,app.kubernetes.io/name,app.kubernetes.io/instance,app.kubernetes.io/version,app.kubernetes.io/component,app.kubernetes.io/part-of,team";
    if api.is_some() {
        args.extend(["--metadata", "--pod-labels", pod_labels]);
    }
    let agent = match &api {
        Some((_, kc)) => spawn_env(
            &args,
            &dir.join("agent.log"),
            &[("KUBECONFIG", kc.as_os_str())],
        )?,
        None => spawn(&args, &dir.join("agent.log"))?,
    };
    let (apid, gpid) = (agent.0.id(), agg.0.id());
    let mut agent_rss = 0;
    loop {
        agent_rss = agent_rss.max(peak_rss(apid).unwrap_or(0));
        if stored_lines(&mut c).await? >= records {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("not everything arrived within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let (acpu, gcpu) = (cpu_seconds(apid)?, cpu_seconds(gpid)?);
    let (arss, grss) = (peak_rss(apid)?.max(agent_rss), peak_rss(gpid)?);
    // Before the processes go: whether lines carry their workloads.
    let labelled = if metadata_pods > 0 {
        let mut q = logfleet_proto::v1::QueryRequest {
            query: "{workload=\"svc-3\"}".into(),
            limit: 1,
            ..Default::default()
        };
        let with = c.query(q.clone()).await?.into_inner().message().await?;
        q.query = "{workload=\"\"}".into();
        let without = c.query(q).await?.into_inner().message().await?;
        let found =
            |m: Option<logfleet_proto::v1::QueryResponse>| m.is_some_and(|r| !r.entries.is_empty());
        Some((found(with), found(without)))
    } else {
        None
    };
    drop(agent);
    drop(agg);
    let disk = dir_size(&data);
    println!(
        "pipeline, {compression}: {} files, {:.0} MB raw, {} lines, wall {wall:.1} s",
        w.files,
        mb(w.bytes),
        w.lines
    );
    if multiline != "none" || metadata_pods > 0 {
        println!(
            "  multiline {multiline}: {records} records; metadata: {metadata_pods} pods served"
        );
    }
    if let Some((with, without)) = labelled {
        println!("  labelled: {{workload=\"svc-3\"}} has lines: {with}; lines without a workload: {without}");
    }
    println!(
        "  agent:      {:.2} CPU-s  {:>7.0} MB/CPU-s  {:>9.0} lines/CPU-s  peak RSS {:.1} MiB",
        acpu,
        mb(w.bytes) / acpu,
        w.lines as f64 / acpu,
        arss as f64 / 1048576.0
    );
    println!(
        "  aggregator: {:.2} CPU-s  {:>7.0} MB/CPU-s  {:>9.0} lines/CPU-s  peak RSS {:.1} MiB",
        gcpu,
        mb(w.bytes) / gcpu,
        w.lines as f64 / gcpu,
        grss as f64 / 1048576.0
    );
    let zstd1 = zstd_size(&dir.join("pods"))?;
    println!(
        "  on disk: {:.1} MB ({:.4} of raw); zstd -1 of the raw files: {:.1} MB ({:.4}); ratio {:.2}x",
        mb(disk), disk as f64 / w.bytes as f64, mb(zstd1), zstd1 as f64 / w.bytes as f64, disk as f64 / zstd1 as f64
    );
    Ok(())
}

/// What `zstd -1` makes of every file under `root`, in bytes.
pub fn zstd_size(root: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut enc = zstd::stream::write::Encoder::new(Counter(0), 1)?;
                std::io::copy(&mut std::fs::File::open(&p)?, &mut enc)?;
                total += enc.finish()?.0;
            }
        }
    }
    Ok(total)
}

struct Counter(u64);
impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The two reference queries over a stored tree: a substring found nowhere
/// (every line scanned; MB of raw log per CPU-second of the processes
/// `pids`, three runs) and the newest 1,000 lines of one pod (20 pods).
pub async fn reference_queries(
    c: &mut QueryClient<tonic::transport::Channel>,
    w: &Workload,
    pids: &[u32],
) -> Result<()> {
    let cpu = || -> Result<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
    for _ in 0..3 {
        let cpu0 = cpu()?;
        let t0 = Instant::now();
        let n = run_query(c, r#"{} |= "no-such-text-anywhere""#, 0, Direction::Forward).await?;
        let (wall, used) = (t0.elapsed().as_secs_f64(), cpu()? - cpu0);
        println!("  substring filter over everything: {n} hits, wall {wall:.2} s, {used:.2} CPU-s, {:.0} MB raw scanned per CPU-s", mb(w.bytes) / used);
    }
    let mut times = Vec::new();
    for i in 0..20 {
        let q = format!(r#"{{pod="app-{}"}}"#, (i * 7) % w.files);
        let t0 = Instant::now();
        let n = run_query(c, &q, 1000, Direction::Backward).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        if n != 1000 {
            bail!("expected 1000 lines, got {n}");
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "  newest 1,000 lines of one pod: median {:.1} ms, max {:.1} ms (20 pods)",
        times[10], times[19]
    );
    Ok(())
}

/// Queries the data a pipeline run stored.
pub async fn query(dir: &Path, compression: &str) -> Result<()> {
    let w: Workload = serde_json::from_slice(&std::fs::read(dir.join("workload.json"))?)?;
    let data = dir.join(format!("data-{compression}"));
    let (agg, _, http, mut c) =
        start_aggregator_http(&data, &dir.join("aggregator-query.log"), &[]).await?;
    reference_queries(&mut c, &w, &[agg.0.id()]).await?;
    loki_queries(&http, &c).await?;
    drop(agg);
    Ok(())
}

pub async fn run_query(
    c: &mut QueryClient<tonic::transport::Channel>,
    q: &str,
    limit: u64,
    d: Direction,
) -> Result<usize> {
    let mut s = c
        .query(QueryRequest {
            query: q.into(),
            limit,
            direction: d as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.next().await {
        n += m?.entries.len();
    }
    Ok(n)
}

/// Time from a push's acknowledgement to the line reaching a tailing client.
pub async fn tail(dir: &Path, pushes: usize) -> Result<()> {
    use logfleet_proto::v1::ingest_client::IngestClient;
    use logfleet_proto::v1::{Compression, FileLabels, FileRange, PushRequest};
    let data = dir.join("data-tail");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let (_agg, url, mut qc) = start_aggregator(&data, &dir.join("aggregator-tail.log")).await?;
    let mut ingest = IngestClient::connect(url.clone()).await?;
    let mut stream = qc
        .tail(TailRequest {
            query: r#"{pod="tail"}"#.into(),
        })
        .await?
        .into_inner();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let now = Instant::now();
            for e in m.entries {
                if let Some(i) = std::str::from_utf8(&e.line)
                    .ok()
                    .and_then(|l| l.strip_prefix("tail "))
                    .and_then(|l| l.split(' ').next())
                    .and_then(|n| n.parse().ok())
                {
                    let _ = tx.send((i, now));
                }
            }
        }
    });
    let mut lat = Vec::new();
    let mut msgs = Messages::new(3);
    for i in 0..pushes as u64 {
        let mut lines = logfleet_proto::LinesBuilder::default();
        lines.push(
            0,
            1,
            i * 200,
            1,
            0,
            format!("tail {i} {}", msgs.next_message()).as_bytes(),
        );
        let (payload, raw_len) =
            logfleet_proto::encode_payload(&lines.finish(), Compression::Zstd, 1)?;
        let req = PushRequest {
            node: "bench".into(),
            compression: Compression::Zstd as i32,
            raw_len,
            ranges: vec![FileRange {
                file_id: 1,
                labels: Some(FileLabels {
                    pod: "tail".into(),
                    ..Default::default()
                }),
                start: i * 200,
                end: i * 200 + 200,
                lines_end: 0,
            }],
            payload,
        };
        ingest.push(req).await?;
        let acked = Instant::now();
        let (n, seen) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .context("tail closed")?;
        if n != i {
            bail!("tail delivered line {n}, expected {i}");
        }
        // The tail may see the line before the ack reaches us: count that as 0.
        lat.push(seen.saturating_duration_since(acked).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    println!(
        "  live tail, {pushes} pushes: ack -> tail client p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    Ok(())
}

/// An agent idle-tailing `files` files: CPU share and RSS once caught up.
pub async fn idle(dir: &Path, files: usize, seconds: u64) -> Result<()> {
    let root = dir.join("idle-pods");
    let state = dir.join("state-idle");
    let data = dir.join("data-idle");
    fresh(&[&root, &state, &data])?;
    for f in 0..files {
        let c = root.join(format!("idle_pod-{f}_uid-{f}/app"));
        std::fs::create_dir_all(&c)?;
        std::fs::write(
            c.join("0.log"),
            format!("2026-11-27T10:00:00.{f:09}Z stdout F started {f}\n"),
        )?;
    }
    let (_agg, url, mut c) = start_aggregator(&data, &dir.join("aggregator-idle.log")).await?;
    let agent = spawn_agent(
        "idle",
        &root,
        &state,
        &url,
        &[],
        &dir.join("agent-idle.log"),
    )?;
    let t0 = Instant::now();
    while stored_lines(&mut c).await? < files as u64 {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("agent did not catch up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = agent.0.id();
    let cpu0 = cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = cpu_seconds(pid)? - cpu0;
    println!(
        "  idle tailing {files} files for {seconds} s: {:.2}% of a core, RSS peak {:.1} MiB",
        cpu / seconds as f64 * 100.0,
        peak_rss(pid)? as f64 / 1048576.0
    );
    Ok(())
}

/// Removes what earlier runs left in `dirs`.
pub fn fresh(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    Ok(())
}

/// Starts `logfleet agent` as node `node` on `root`, pushing to `url`.
pub fn spawn_agent(
    node: &str,
    root: &Path,
    state: &Path,
    url: &str,
    extra: &[&str],
    log: &Path,
) -> Result<Bg> {
    let (root, state) = (root.display().to_string(), state.display().to_string());
    let mut args = vec![
        "agent",
        "--node-name",
        node,
        "--log-root",
        &root,
        "--state-dir",
        &state,
        "--aggregator",
        url,
        "--http-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    spawn(&args, log)
}

/// Default scratch directory for benchmarks.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("logfleet-bench")
}

/// The reference queries through Loki's HTTP API, as Grafana asks: the
/// span of the data, then Explore's log-volume query over all of it (about
/// 250 points, as Grafana's $__auto gives) and the newest 1,000 lines.
pub async fn loki_queries(http: &str, c: &QueryClient<tonic::transport::Channel>) -> Result<()> {
    let http = http.to_owned();
    let edge = |d: Direction| {
        let mut c = c.clone();
        async move {
            let mut s = c
                .query(QueryRequest {
                    query: r#"{namespace="bench"}"#.into(),
                    limit: 1,
                    direction: d as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let m = s.next().await.context("empty store")??;
            let e = m.entries.first().context("empty store")?;
            anyhow::Ok(e.ts_unix_nano)
        }
    };
    let (first, last) = (
        edge(Direction::Forward).await?,
        edge(Direction::Backward).await? + 1,
    );
    let step_s = ((last - first) / 250 / 1_000_000_000).max(1);
    let volume = format!(
        "/loki/api/v1/query_range?query={}&start={first}&end={last}&step={step_s}",
        urlencode(&format!(
            r#"sum by (level, detected_level) (count_over_time({{namespace="bench"}} | drop __error__ [{step_s}s]))"#
        )),
    );
    let (med, max) = tokio::task::spawn_blocking({
        let http = http.clone();
        move || time_loki(&http, &volume, 5, "\"matrix\"")
    })
    .await??;
    println!("  Loki API, Grafana's log-volume query over the whole store ({step_s} s steps): median {med:.0} ms, max {max:.0} ms (5 runs)");
    // The same counts behind a stage that reads each line: no store can
    // count them without the lines (what every metric query cost over
    // ClickHouse before it counted in SQL).
    let per_line = format!(
        "/loki/api/v1/query_range?query={}&start={first}&end={last}&step={step_s}",
        urlencode(&format!(
            r#"sum by (level, detected_level) (count_over_time({{namespace="bench"}} | line_format "{{{{.pod}}}}" [{step_s}s]))"#
        )),
    );
    let (med, max) = tokio::task::spawn_blocking({
        let http = http.clone();
        move || time_loki(&http, &per_line, 3, "\"matrix\"")
    })
    .await??;
    println!("  Loki API, the same counts with a stage that reads every line (| line_format): median {med:.0} ms, max {max:.0} ms (3 runs)");
    let newest = format!(
        "/loki/api/v1/query_range?query={}&start={first}&end={last}&limit=1000&direction=backward",
        urlencode(r#"{pod="app-7"}"#),
    );
    let (med, max) =
        tokio::task::spawn_blocking(move || time_loki(&http, &newest, 20, "\"streams\"")).await??;
    println!("  Loki API, query_range for the newest 1,000 lines of one pod: median {med:.1} ms, max {max:.1} ms (20 runs)");
    Ok(())
}
