//! A real file system that fills up: a tmpfs of a few MiB under the
//! aggregator's data directory, or under the agent's state directory,
//! filled to the last byte while agents push, with small segments so that
//! seals and compaction happen while it is full. When the space returns,
//! every line is stored once, without a restart. Mounting needs root (CI
//! runs as root); elsewhere the tests say so and do nothing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use logfleet_kubesim::{Format, Pod, Rotation};

/// A mounted tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount -t tmpfs failed");
        Some(Tmpfs(at.to_owned()))
    }

    /// Fills the file system to the last byte with `ballast`, then frees
    /// `room` bytes of it; returns the ballast's path.
    fn fill(&self, room: u64) -> PathBuf {
        let p = self.0.join("ballast");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = f.flush();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(room)).unwrap();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Lines that compress badly (so a few MiB of disk fill up quickly).
fn line(pod: usize, i: usize) -> String {
    let mut x = (pod as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64;
    let mut s = format!("pod {pod} line {i} ");
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s
}

/// An hour ago: well inside the aggregator's retention.
fn base_ts() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap() - 3_600_000_000_000
}

fn write_pods(root: &Path, pods: usize, lines: usize, ts: i64) -> Vec<Pod> {
    (0..pods)
        .map(|p| {
            let mut pod = Pod::create(
                root,
                "ns",
                &format!("p{p}"),
                &format!("u{p}"),
                &[("c", Format::Cri)],
                Rotation::default(),
            )
            .unwrap();
            for i in 0..lines {
                pod.containers[0]
                    .write(ts + i as i64, "stdout", &line(p, i), true)
                    .unwrap();
            }
            pod
        })
        .collect()
}

fn every_line_once(url: &str, want: usize) {
    let got = wait_for("every line, once", Duration::from_secs(120), || {
        let v = query_all(url, "{}", &[])?;
        (v.len() >= want).then_some(v)
    });
    let counts: BTreeMap<String, usize> = multiset(
        got.iter()
            .map(|v| v["line"].as_str().unwrap_or_default().to_owned()),
    );
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert_eq!(counts.len(), want);
}

#[test]
fn a_full_aggregator_disk_loses_nothing_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("data"), "8m") else {
        return;
    };
    let (mut agg, url) = aggregator(
        dir.path(),
        &["--segment-size", "64KiB", "--segment-age", "2s"],
    );
    let ballast = fs.fill(200 << 10);
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let (pods, lines) = (3, 3000);
    let _pods = write_pods(&root, pods, lines, base_ts());
    let _agent = agent(
        dir.path(),
        "n1",
        &root,
        &url,
        &["--batch-size", "32KiB", "--batch-wait", "50ms"],
    );
    let metric_of = |name: &str| http_get(&agg.http, "/metrics").map(|t| metric(&t, name));
    wait_for("the disk to be full", Duration::from_secs(60), || {
        (metric_of("logfleet_aggregator_disk_full_total")? >= 1.0).then_some(())
    });
    let readyz = http_get(&agg.http, "/readyz").unwrap_or_default();
    assert!(readyz.contains("disk is full"), "{readyz}");
    // Seals, snapshots and compaction meet the full disk too (2 s
    // segments): whichever comes first.
    wait_for(
        "a seal, snapshot or compaction on the full disk",
        Duration::from_secs(60),
        || {
            let log = agg.log_text();
            [
                "compaction failed",
                "sealing segment failed",
                "writing the snapshot failed",
            ]
            .iter()
            .any(|m| log.contains(m))
            .then_some(())
        },
    );
    assert!(agg.is_running(), "{}", agg.log_text());
    // The space returns.
    std::fs::remove_file(&ballast).unwrap();
    every_line_once(&url, pods * lines);
    assert!(agg.is_running(), "no restart was needed");
    // No temporary file was left behind.
    let leftovers: Vec<PathBuf> = walk(&fs.0)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The agent's state directory fills up: checkpoints cannot be saved, lines
/// still ship (counted, said in the heartbeat); after the space returns and
/// the agent restarts, nothing is lost and nothing stored twice.
#[test]
fn a_full_agent_state_dir_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state-n1");
    let Some(fs) = Tmpfs::mount(&state, "1m") else {
        return;
    };
    let (_agg, url) = aggregator(dir.path(), &[]);
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let http = free_port();
    let http_addr = format!("127.0.0.1:{http}");
    let mut agent = agent(dir.path(), "n1", &root, &url, &["--http-addr", &http_addr]);
    let ts = base_ts();
    let mut pods = write_pods(&root, 2, 200, ts);
    every_line_once(&url, 400);
    let ballast = fs.fill(0);
    for (p, pod) in pods.iter_mut().enumerate() {
        for i in 200..400 {
            pod.containers[0]
                .write(ts + i as i64, "stdout", &line(p, i), true)
                .unwrap();
        }
    }
    every_line_once(&url, 800);
    let failures = wait_for("a failed checkpoint save", Duration::from_secs(30), || {
        let t = http_get(&http_addr, "/metrics")?;
        let n = metric(&t, "logfleet_agent_checkpoint_failures_total");
        (n >= 1.0).then_some(n)
    });
    assert!(failures >= 1.0);
    // The checkpoint file is whole (the old one), never torn.
    let cp = std::fs::read(state.join("checkpoints.json")).unwrap();
    serde_json::from_slice::<serde_json::Value>(&cp).expect("checkpoints.json parses");
    // Space returns; the agent is killed and started again: it re-reads
    // from its last saved checkpoint, and the aggregator drops what it has.
    std::fs::remove_file(&ballast).unwrap();
    agent.kill9();
    agent.restart();
    for (p, pod) in pods.iter_mut().enumerate() {
        for i in 400..450 {
            pod.containers[0]
                .write(ts + i as i64, "stdout", &line(p, i), true)
                .unwrap();
        }
    }
    every_line_once(&url, 900);
}

/// Lines the aggregator refuses for good go to the dead-letter file under
/// the state directory; when that is full the write fails part-way. Once
/// the space returns each refused line is there once, no line torn.
#[test]
fn a_full_state_dir_tears_no_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state-n1");
    let Some(fs) = Tmpfs::mount(&state, "1m") else {
        return;
    };
    let (_agg, url) = aggregator(dir.path(), &["--max-payload", "64KiB"]);
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let _agent = agent(dir.path(), "n1", &root, &url, &["--http-addr", &http_addr]);
    let mut pods = write_pods(&root, 1, 10, base_ts());
    every_line_once(&url, 10);
    // Room for part of the refused lines' record, not all of it.
    let ballast = fs.fill(20 << 10);
    let ts = base_ts();
    for i in 0..3 {
        // Each over the payload limit: refused for good.
        pods[0].containers[0]
            .write(
                ts + 100 + i,
                "stdout",
                &format!("huge {i} {}", "y".repeat(100 << 10)),
                true,
            )
            .unwrap();
    }
    wait_for(
        "a failed dead-letter write",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(dir.path().join("agent-n1.log")).ok()?;
            log.contains("writing the dead-letter file failed")
                .then_some(())
        },
    );
    std::fs::remove_file(&ballast).unwrap();
    let dl = state.join("dead-letter.jsonl");
    let rows = wait_for("the refused lines kept", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&dl).ok()?;
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("no torn line"))
            .collect();
        (rows.len() >= 3).then_some(rows)
    });
    let texts: Vec<&str> = rows
        .iter()
        .map(|r| {
            r["line"]
                .as_str()
                .unwrap_or_default()
                .split(' ')
                .take(2)
                .last()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(texts, ["0", "1", "2"], "each once");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
