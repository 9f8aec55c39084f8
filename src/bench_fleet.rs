//! `logfleet bench fleet`: a cluster's worth of agents against one real
//! aggregator process. Each simulated agent has its own connection, node
//! name, files and offsets, and pushes what its streams wrote since its last
//! push, every second as a real agent does (`--duration`), or as fast as
//! acknowledgements allow until a number of pushes is stored (`--pushes`,
//! to fill a store). Then it restarts the aggregator and queries it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logfleet_kubesim::messages::Messages;
use logfleet_proto::v1::ingest_client::IngestClient;
use logfleet_proto::v1::{Compression, Direction, FileLabels, FileRange, PushRequest};

use crate::bench::{cpu_seconds, peak_rss, run_query, start_aggregator_with};

/// What to run.
pub struct Fleet {
    /// Simulated agents.
    pub agents: usize,
    /// Streams (container log files) per agent.
    pub streams: usize,
    /// Lines per second per agent, over all its streams.
    pub lines_per_second: usize,
    /// Paced run length; `None` with `pushes`.
    pub duration: Option<Duration>,
    /// Unpaced: stop after this many pushes in all.
    pub pushes: Option<u64>,
    /// The aggregator's `--segment-age`: after the run the bench waits
    /// for the last segment to age out and be compacted.
    pub segment_age: Duration,
}

/// Waits until the push log holds nothing but an empty active segment:
/// everything sealed and compacted.
async fn wait_compacted(data: &Path, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let segs: Vec<u64> = std::fs::read_dir(data.join("segments"))?
            .flatten()
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .collect();
        let tmp = std::fs::read_dir(data.join("chunks"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .unwrap_or(false);
        if segs.len() <= 1 && segs.iter().all(|&l| l == 0) && !tmp {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("compaction did not finish within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const NEEDLE: &str = "needle-7f3a9c2e-found-me";

/// A pool of realistic lines, shared by every agent.
fn pool() -> Arc<Vec<String>> {
    let mut m = Messages::new(5);
    Arc::new((0..4096).map(|_| m.next_message()).collect())
}

struct Agent {
    node: String,
    /// Per stream: next offset.
    offsets: Vec<u64>,
    next_line: usize,
}

impl Agent {
    /// One push: `lines` lines spread over the streams.
    fn push(
        &mut self,
        pool: &[String],
        lines: usize,
        now_ns: i64,
        needle: bool,
    ) -> Result<(PushRequest, u64)> {
        let s = self.offsets.len();
        let mut b = logfleet_proto::LinesBuilder::default();
        let starts = self.offsets.clone();
        for i in 0..lines {
            let stream = i % s;
            let text = if needle && i == 0 {
                NEEDLE
            } else {
                &pool[self.next_line % pool.len()]
            };
            self.next_line += 1;
            b.push(
                stream as u32,
                now_ns + i as i64,
                self.offsets[stream],
                1,
                0,
                text.as_bytes(),
            );
            // CRI framing around the message: timestamp, stream, tag.
            self.offsets[stream] += text.len() as u64 + 40;
        }
        let batch = b.finish();
        let text = batch.text.len() as u64;
        let (payload, raw_len) = logfleet_proto::encode_payload(&batch, Compression::Zstd, 1)?;
        let ranges = (0..s)
            .map(|i| FileRange {
                file_id: i as u64 + 1,
                labels: Some(FileLabels {
                    namespace: format!("ns-{}", i % 10),
                    pod: format!("{}-pod-{i}", self.node),
                    pod_uid: format!("uid-{}-{i}", self.node),
                    container: "app".into(),
                    restart: 0,
                    extra: Vec::new(),
                }),
                start: starts[i],
                end: self.offsets[i],
                lines_end: 0,
            })
            .collect();
        Ok((
            PushRequest {
                node: self.node.clone(),
                compression: Compression::Zstd as i32,
                raw_len,
                ranges,
                payload,
            },
            text,
        ))
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Runs the fleet, then restarts the aggregator and queries.
pub async fn fleet(dir: &Path, f: Fleet) -> Result<()> {
    let data = dir.join("data-fleet");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(dir)?;
    let log = dir.join("aggregator-fleet.log");
    let age = format!("{}s", f.segment_age.as_secs().max(1));
    let extra = ["--segment-age", age.as_str()];
    let (agg, url, _) = start_aggregator_with(&data, &log, &extra).await?;
    let pid = agg.0.id();
    let pool = pool();
    let per_push = (f.lines_per_second).max(1);
    println!(
        "  {} agents x {} streams, {} lines per push{}",
        f.agents,
        f.streams,
        per_push,
        match (f.duration, f.pushes) {
            (Some(d), _) => format!(", one push a second each for {} s", d.as_secs()),
            (None, Some(p)) => format!(", unpaced until {p} pushes"),
            _ => String::new(),
        }
    );
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let text_bytes = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    let deadline = f.duration.map(|d| t0 + d);
    let mut tasks = Vec::new();
    for a in 0..f.agents {
        let (url, pool) = (url.clone(), pool.clone());
        let (sent, refused, retried, text_bytes) = (
            sent.clone(),
            refused.clone(),
            retried.clone(),
            text_bytes.clone(),
        );
        let limit = f.pushes;
        let streams = f.streams.max(1);
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)?
                .tcp_nodelay(true)
                .connect_lazy();
            let mut client = IngestClient::new(channel).max_encoding_message_size(64 << 20);
            let mut agent = Agent {
                node: format!("node-{a:05}"),
                offsets: vec![0; streams],
                next_line: a * 131,
            };
            let mut lat = Vec::new();
            // Agents start spread over the first second, as real ones are.
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now()
                    + Duration::from_micros((a as u64 * 1_000_003) % 1_000_000),
                Duration::from_secs(1),
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                if deadline.is_some() {
                    tick.tick().await;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                } else if limit.is_some_and(|l| sent.fetch_add(1, Ordering::Relaxed) >= l) {
                    break;
                }
                let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
                // One needle in the whole run: agent 0's tenth push.
                let (req, text) = agent.push(&pool, per_push, now_ns, a == 0 && n == 10)?;
                n += 1;
                let started = Instant::now();
                loop {
                    match client.push(req.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::InvalidArgument => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(_) => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                lat.push(started.elapsed());
                text_bytes.fetch_add(text, Ordering::Relaxed);
                if deadline.is_some() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    // Progress, and the aggregator's resident memory while it ingests.
    let mut peak_live = 0u64;
    let progress = {
        let sent = sent.clone();
        async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                peak_live = peak_live.max(rss(pid).unwrap_or(0));
                if last.elapsed() >= Duration::from_secs(30) {
                    last = Instant::now();
                    println!(
                        "    {:>5.0} s: {} pushes, aggregator RSS {:.0} MiB",
                        t0.elapsed().as_secs_f64(),
                        sent.load(Ordering::Relaxed),
                        mib(rss(pid).unwrap_or(0))
                    );
                }
            }
        }
    };
    let mut lat = Vec::new();
    tokio::select! {
        r = async {
            for t in tasks {
                lat.extend(t.await??);
            }
            Ok::<_, anyhow::Error>(())
        } => r?,
        () = progress => {}
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu0;
    if lat.is_empty() {
        bail!("nothing was pushed");
    }
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let raw = text_bytes.load(Ordering::Relaxed);
    println!(
        "  {} pushes in {wall:.0} s ({:.0}/s), {:.0} MB of line text ({:.1} MB/s)",
        lat.len(),
        lat.len() as f64 / wall,
        raw as f64 / 1e6,
        raw as f64 / 1e6 / wall
    );
    println!(
        "  ack latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; refused {}, retried {}",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        refused.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed)
    );
    println!(
        "  aggregator while ingesting: {cpu:.1} CPU-s ({:.3} CPU-s per MB), peak RSS {:.0} MiB",
        cpu / (raw as f64 / 1e6),
        mib(peak_rss(pid)?)
    );

    let settle = wait_compacted(&data, f.segment_age + Duration::from_secs(600)).await?;
    println!(
        "  everything compacted {:.0} s after the last push (segment age {} s); RSS then {:.0} MiB",
        settle.as_secs_f64(),
        f.segment_age.as_secs(),
        mib(rss(pid)?)
    );
    let cpu_total = cpu_seconds(pid)? - cpu0;
    println!(
        "  aggregator CPU with compaction: {cpu_total:.1} CPU-s ({:.3} CPU-s per MB)",
        cpu_total / (raw as f64 / 1e6)
    );

    // Restart: time until the first query is answered.
    drop(agg);
    let t = Instant::now();
    let (agg, url, mut c) = start_aggregator_with(&data, &log, &extra).await?;
    let pid = agg.0.id();
    loop {
        match run_query(&mut c, r#"{namespace="ns-0"}"#, 1, Direction::Backward).await {
            Ok(_) => break,
            Err(_) if t.elapsed() < Duration::from_secs(600) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => return Err(e),
        }
    }
    println!(
        "  restart to first query: {:.2} s; RSS then {:.0} MiB",
        t.elapsed().as_secs_f64(),
        mib(rss(pid)?)
    );
    let _ = url;

    // Needle: every line is scanned.
    for _ in 0..2 {
        let cpu0 = cpu_seconds(pid)?;
        let t = Instant::now();
        let n = run_query(
            &mut c,
            &format!(r#"{{}} |= "{NEEDLE}""#),
            0,
            Direction::Forward,
        )
        .await?;
        let (w, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds(pid)? - cpu0);
        println!(
            "  needle scan: {n} hit(s), wall {w:.2} s, {cpu:.2} CPU-s, {:.0} MB of line text per CPU-s",
            raw as f64 / 1e6 / cpu.max(0.001)
        );
    }
    // The newest 1,000 lines of one pod.
    let mut times = Vec::new();
    let pods = f.agents.min(20);
    for i in 0..pods {
        let q = format!(r#"{{pod="node-{:05}-pod-0"}}"#, (i * 37) % f.agents);
        let t = Instant::now();
        run_query(&mut c, &q, 1000, Direction::Backward).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "  newest 1,000 lines of one pod among {} streams: median {:.0} ms, max {:.0} ms ({pods} pods)",
        f.agents * f.streams,
        times[times.len() / 2],
        times[times.len() - 1]
    );
    println!(
        "  aggregator after the queries: RSS {:.0} MiB, peak {:.0} MiB",
        mib(rss(pid)?),
        mib(peak_rss(pid)?)
    );
    drop(agg);
    Ok(())
}
