//! `logfleet bench pushers` and `logfleet bench outage`: the data path under
//! load and through an outage, measured on the real processes (peak RSS
//! from VmHWM, CPU from /proc, as in `bench`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logfleet_kubesim::messages::Messages;
use logfleet_proto::v1::ingest_client::IngestClient;
use logfleet_proto::v1::{Compression, FileLabels, FileRange, PushRequest};

use crate::bench::{
    cpu_seconds, fresh, peak_rss, spawn, spawn_agent, start_aggregator, stored_lines,
};

fn mib(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

/// A compressed batch of about `raw` bytes of realistic lines.
fn batch(raw: u64) -> Result<(bytes::Bytes, u64, u64)> {
    let mut msgs = Messages::new(11);
    let mut b = logfleet_proto::LinesBuilder::default();
    let (mut offset, mut n) = (0u64, 0u64);
    while (b.text_len() as u64) < raw {
        let m = msgs.next_message();
        b.push(
            0,
            1_795_000_000_000_000_000 + n as i64,
            offset,
            1,
            0,
            m.as_bytes(),
        );
        offset += m.len() as u64 + 40;
        n += 1;
    }
    let (payload, raw_len) = logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1)?;
    Ok((payload, raw_len, offset))
}

/// `clients` concurrent pushers, each on its own connection with its own
/// node name, each sending `pushes` batches of `batch_size` raw bytes as
/// fast as they are acknowledged, against one real aggregator process.
pub async fn pushers(dir: &Path, clients: usize, pushes: usize, batch_size: u64) -> Result<()> {
    let data = dir.join("data-pushers");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(dir)?;
    let (agg, url, mut qc) = start_aggregator(&data, &dir.join("aggregator-pushers.log")).await?;
    let (payload, raw_len, span) = batch(batch_size)?;
    println!(
        "  {clients} pushers x {pushes} pushes of {:.1} MiB raw ({:.2} MiB zstd)",
        mib(raw_len),
        mib(payload.len() as u64)
    );
    let retries = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, payload, retries) = (url.clone(), payload.clone(), retries.clone());
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)?.connect_lazy();
            let mut client = IngestClient::new(channel).max_encoding_message_size(64 << 20);
            let mut lat = Vec::with_capacity(pushes);
            for p in 0..pushes as u64 {
                let req = PushRequest {
                    node: format!("pusher-{c}"),
                    compression: Compression::Zstd as i32,
                    raw_len,
                    // One file per push: the shared payload's offsets start
                    // at 0 in each.
                    ranges: vec![FileRange {
                        file_id: p + 1,
                        labels: Some(FileLabels {
                            namespace: "bench".into(),
                            pod: format!("pod-{c}"),
                            ..Default::default()
                        }),
                        start: 0,
                        end: span,
                        lines_end: 0,
                    }],
                    payload: payload.clone(),
                };
                let sent = Instant::now();
                loop {
                    match client.push(req.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::InvalidArgument => {
                            bail!("push refused: {}", s.message())
                        }
                        Err(_) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                lat.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let wall = t0.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let pid = agg.0.id();
    let total = raw_len * (clients * pushes) as u64;
    let lines = stored_lines(&mut qc).await?;
    println!(
        "  all acknowledged in {:.1} s ({:.0} MB/s raw), {} lines stored, {} retries",
        wall.as_secs_f64(),
        total as f64 / 1e6 / wall.as_secs_f64(),
        lines,
        retries.load(Ordering::Relaxed)
    );
    println!(
        "  ack latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "  aggregator: peak RSS {:.1} MiB, {:.1} CPU-s",
        mib(peak_rss(pid)?),
        cpu_seconds(pid)?
    );
    Ok(())
}

/// The aggregator is down for `seconds` while a container writes `rate`
/// bytes per second (kubelet-style rotation: 10 MiB files, 5 kept, older
/// ones gzipped). Reports the agent's peak RSS during the outage, then
/// starts the aggregator and reports how long the agent takes to catch up
/// with what is still on disk.
pub async fn outage(dir: &Path, seconds: u64, rate: u64) -> Result<()> {
    let root = dir.join("outage-pods");
    let state = dir.join("state-outage");
    let data = dir.join("data-outage");
    fresh(&[&root, &state, &data])?;
    std::fs::create_dir_all(&root)?;
    // A port nobody listens on: the aggregator is "down".
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{grpc}");
    let agent = spawn_agent(
        "outage",
        &root,
        &state,
        &url,
        &["--compression", "zstd"],
        &dir.join("agent-outage.log"),
    )?;
    let mut pod = logfleet_kubesim::Pod::create(
        &root,
        "bench",
        "writer",
        "uid-w",
        &[("app", logfleet_kubesim::Format::Cri)],
        logfleet_kubesim::Rotation {
            max_size: 10 << 20,
            max_files: 5,
            reopen_delay_records: 3,
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || -> Result<()> {
            let mut msgs = Messages::new(5);
            let t0 = Instant::now();
            let mut ts = 1_795_000_000_000_000_000i64;
            let mut bytes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Write in 10 ms slices to keep the rate even.
                let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                while bytes < due {
                    ts += 1000;
                    let m = msgs.next_message();
                    pod.containers[0].write(ts, "stdout", &m, true)?;
                    bytes += m.len() as u64 + 40;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            written.store(bytes, Ordering::Relaxed);
            Ok(())
        })
    };
    let pid = agent.0.id();
    let t0 = Instant::now();
    let mut rss_max = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(current_rss(pid)?);
    }
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let hwm = peak_rss(pid)?;
    let cpu = cpu_seconds(pid)?;
    println!(
        "  outage of {seconds} s, {:.1} MB written at {:.1} MB/s: agent peak RSS {:.1} MiB (VmHWM), {:.1} CPU-s",
        written.load(Ordering::Relaxed) as f64 / 1e6,
        rate as f64 / 1e6,
        mib(hwm.max(rss_max)),
        cpu
    );
    // The aggregator comes back on the agent's address.
    let http = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _agg = spawn(
        &[
            "aggregator",
            "--data-dir",
            &data.display().to_string(),
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--retention-age",
            "0s",
        ],
        &dir.join("aggregator-outage.log"),
    )?;
    let on_disk = lines_on_disk(&root)?;
    let mut qc = crate::bench::client(&url).await?;
    let t1 = Instant::now();
    loop {
        let n = stored_lines(&mut qc).await?;
        if n >= on_disk {
            break;
        }
        if t1.elapsed() > Duration::from_secs(600) {
            bail!("agent did not catch up: {n} of {on_disk} lines");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  caught up with the {on_disk} lines still on disk in {:.1} s; agent peak RSS over the whole run {:.1} MiB",
        t1.elapsed().as_secs_f64(),
        mib(peak_rss(pid)?)
    );
    Ok(())
}

/// Lines in the CRI files (plain and gzipped) under `root`.
fn lines_on_disk(root: &Path) -> Result<u64> {
    use std::io::Read;
    let mut n = 0u64;
    for pod in std::fs::read_dir(root)? {
        for c in std::fs::read_dir(pod?.path())? {
            for f in std::fs::read_dir(c?.path())? {
                let p = f?.path();
                let name = p.file_name().and_then(|s| s.to_str()).unwrap_or_default();
                if name.ends_with(".tmp") {
                    continue;
                }
                let mut data = Vec::new();
                let file = std::fs::File::open(&p)?;
                if name.ends_with(".gz") {
                    flate2::read::GzDecoder::new(file).read_to_end(&mut data)?;
                } else {
                    std::io::BufReader::new(file).read_to_end(&mut data)?;
                }
                // Every record is whole here (no P chunks are written).
                n += memchr_count(&data);
            }
        }
    }
    Ok(n)
}

fn memchr_count(data: &[u8]) -> u64 {
    data.iter().filter(|b| **b == b'\n').count() as u64
}

/// Current resident set size (VmRSS), bytes.
fn current_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}
