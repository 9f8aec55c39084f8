//! `logfleet bench clickhouse`: the generated tree through a real agent
//! into an aggregator with `--store clickhouse` and Debian's ClickHouse on
//! loopback; the cost of durable ingest counts the aggregator and
//! ClickHouse both, then bytes on disk, the two reference queries and
//! Grafana's through the Loki API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logfleet_proto::v1::Direction;

use crate::bench::{cpu_seconds, peak_rss, run_query, spawn, start_aggregator_http, Workload};

fn mb(b: f64) -> f64 {
    b / 1e6
}

pub async fn clickhouse(dir: &Path) -> Result<()> {
    let w: Workload = serde_json::from_slice(
        &std::fs::read(dir.join("workload.json")).context("run `logfleet bench generate` first")?,
    )?;
    let ch = logfleet_kubesim::clickhouse::Server::start().context("starting ClickHouse")?;
    let chpid = ch.pid().context("ClickHouse not running")?;
    let store = [
        "--store",
        "clickhouse",
        "--clickhouse-url",
        &ch.url(),
        "--clickhouse-database",
        "bench",
    ];
    let (agg, url, http, mut c) = start_aggregator_http(
        &dir.join("data-clickhouse-unused"),
        &dir.join("aggregator-clickhouse.log"),
        &store,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while run_query(&mut c, "{}", 1, Direction::Forward)
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the aggregator never connected to ClickHouse");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = dir.join("state-clickhouse");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    let (g0, c0) = (cpu_seconds(agg.0.id())?, cpu_seconds(chpid)?);
    let started = Instant::now();
    let agent = spawn(
        &[
            "agent",
            "--node-name",
            "bench",
            "--log-root",
            &dir.join("pods").display().to_string(),
            "--state-dir",
            &state.display().to_string(),
            "--aggregator",
            &url,
            "--http-addr",
            "127.0.0.1:0",
        ],
        &dir.join("agent-clickhouse.log"),
    )?;
    loop {
        let n: u64 = ch
            .sql("SELECT count() FROM bench.lines")?
            .parse()
            .unwrap_or(0);
        if n >= w.lines {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("not everything arrived within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let acpu = cpu_seconds(agent.0.id())?;
    let (gcpu, ccpu) = (cpu_seconds(agg.0.id())? - g0, cpu_seconds(chpid)? - c0);
    let (grss, crss) = (peak_rss(agg.0.id())?, peak_rss(chpid)?);
    drop(agent);
    let raw = w.bytes as f64;
    println!(
        "clickhouse store ({}): {} files, {:.0} MB raw, {} lines, wall {wall:.1} s",
        ch.sql("SELECT version()")?,
        w.files,
        mb(raw),
        w.lines
    );
    println!(
        "  agent:      {acpu:.2} CPU-s  {:>6.0} MB/CPU-s",
        mb(raw) / acpu
    );
    println!(
        "  aggregator: {gcpu:.2} CPU-s  {:>6.0} MB/CPU-s  peak RSS {:.1} MiB",
        mb(raw) / gcpu,
        grss as f64 / 1048576.0
    );
    println!(
        "  ClickHouse: {ccpu:.2} CPU-s  {:>6.0} MB/CPU-s  peak RSS {:.1} MiB",
        mb(raw) / ccpu,
        crss as f64 / 1048576.0
    );
    println!(
        "  durable ingest, aggregator + ClickHouse: {:.0} MB/CPU-s",
        mb(raw) / (gcpu + ccpu)
    );
    let disk: f64 = ch
        .sql("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' AND active")?
        .parse()
        .unwrap_or(0.0);
    let zstd1 = crate::bench::zstd_size(&dir.join("pods"))? as f64;
    println!(
        "  on disk: {:.1} MB ({:.4} of raw); zstd -1 of the raw files: {:.1} MB; ratio {:.2}x",
        mb(disk),
        disk / raw,
        mb(zstd1),
        disk / zstd1
    );
    crate::bench::reference_queries(&mut c, &w, &[agg.0.id(), chpid]).await?;
    crate::bench::loki_queries(&http, &c).await?;
    drop(agg);
    Ok(())
}
