//! Deterministic rotation cases for the agent binary.

mod common;

use std::time::Duration;

use common::*;
use logfleet_kubesim::{Format, Pod, Rotation};

fn count(url: &str, q: &str) -> usize {
    query_all(url, q, &[]).map_or(0, |v| v.len())
}

/// The agent is killed mid-file; while it is down kubelet rotates twice, so
/// the file it was reading is renamed and then gzipped. On restart it must
/// resume inside the gzip at its checkpoint: nothing lost, nothing twice.
#[test]
fn resumes_inside_gzipped_rotation_after_agent_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    let rotation = Rotation {
        max_size: u64::MAX,
        max_files: 5,
        reopen_delay_records: 1,
    };
    let mut pod = Pod::create(&root, "ns", "p", "uid", &[("c", Format::Cri)], rotation).unwrap();
    let mut agent = agent(dir.path(), "n1", &root, &url, &[]);
    let mut ts = 1_795_000_000_000_000_000i64;
    let mut written = 0;
    let mut write = |pod: &mut Pod, n: usize| {
        for _ in 0..n {
            ts += 1000;
            written += 1;
            pod.containers[0]
                .write(ts, "stdout", &format!("line {written}"), true)
                .unwrap();
        }
    };
    write(&mut pod, 100);
    wait_for("first lines stored", Duration::from_secs(30), || {
        (count(&url, "{}") == 100).then_some(())
    });
    // Killed mid-file with its checkpoint saved (it is written up to 200 ms
    // after the acknowledgement): the restart must resume inside the gzip.
    let checkpoints = dir.path().join("state-n1/checkpoints.json");
    wait_for("the checkpoint saved", Duration::from_secs(30), || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&checkpoints).ok()?).ok()?;
        v["files"]
            .as_object()?
            .values()
            .any(|p| p["offset"].as_u64() > Some(0))
            .then_some(())
    });
    agent.kill9();
    // More lines into the same file, then two rotations: the first renames
    // it, the second gzips it.
    write(&mut pod, 50);
    pod.containers[0].rotate().unwrap();
    write(&mut pod, 50);
    pod.containers[0].rotate().unwrap();
    write(&mut pod, 50);
    let names: Vec<String> = std::fs::read_dir(root.join("ns_p_uid/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".gz")).count(),
        1,
        "{names:?}"
    );
    agent.restart();
    let got = wait_for("all lines stored", Duration::from_secs(30), || {
        let v = query_all(&url, "{}", &[])?;
        (v.len() >= 250).then_some(v)
    });
    let lines: Vec<String> = got
        .iter()
        .map(|v| v["line"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (1..=250).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want, "every line once, in order");
    assert!(
        agent
            .log_text()
            .contains("resuming inside a gzipped rotated file"),
        "the gzip path was not taken:\n{}",
        agent.log_text()
    );
}

/// `logfleet tail` shows lines as they are stored, and only matching ones.
#[test]
fn tail_follows_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    let cdir = root.join("ns_p_uid/c");
    std::fs::create_dir_all(&cdir).unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    let _agent = agent(dir.path(), "n1", &root, &url, &[]);
    let out_path = dir.path().join("tail.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut tail = std::process::Command::new(bin())
        .args([
            "tail",
            "--aggregator",
            &url,
            r#"{namespace="ns"} |= "wanted""#,
            "--output",
            "jsonl",
        ])
        .stdout(out)
        .spawn()
        .unwrap();
    // Keep appending until the tail shows a wanted line (the tail may
    // start after the first lines are stored).
    let mut i = 0;
    let got = wait_for("tail output", Duration::from_secs(30), || {
        i += 1;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cdir.join("0.log"))
            .unwrap();
        use std::io::Write;
        writeln!(f, "2026-11-27T10:00:00.{i:09}Z stdout F wanted {i}").unwrap();
        writeln!(f, "2026-11-27T10:00:00.{i:09}Z stdout F other {i}").unwrap();
        let text = std::fs::read_to_string(&out_path).unwrap();
        (text.lines().count() >= 3).then_some(text)
    });
    let _ = tail.kill();
    let _ = tail.wait();
    for l in got.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["line"].as_str().unwrap().starts_with("wanted"), "{l}");
        assert_eq!(v["node"], "n1");
    }
}

/// A file that shrinks under the agent (copy-truncate) is read again from
/// its start as a new file; what was there before is not re-sent.
#[test]
fn truncated_file_is_read_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    let cdir = root.join("ns_p_uid/c");
    std::fs::create_dir_all(&cdir).unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    let http = format!("127.0.0.1:{}", free_port());
    let _agent = agent(dir.path(), "n1", &root, &url, &["--http-addr", &http]);
    let rec = |i: usize| format!("2026-11-27T10:00:00.{i:09}Z stdout F before {i}\n");
    let first: String = (0..20).map(rec).collect();
    std::fs::write(cdir.join("0.log"), &first).unwrap();
    wait_for("first lines", Duration::from_secs(30), || {
        (count(&url, "{}") == 20).then_some(())
    });
    // Truncate in place and write fewer, different lines.
    let second: String = (0..5)
        .map(|i| format!("2026-11-27T11:00:00.{i:09}Z stdout F after {i}\n"))
        .collect();
    std::fs::write(cdir.join("0.log"), &second).unwrap();
    let got = wait_for("lines after truncation", Duration::from_secs(30), || {
        let v = query_all(&url, "{}", &[])?;
        (v.len() >= 25).then_some(v)
    });
    assert_eq!(got.len(), 25);
    assert_eq!(
        got.iter()
            .filter(|v| v["line"].as_str().unwrap().starts_with("after"))
            .count(),
        5
    );
}
