//! End to end, with the real binary: an aggregator and three agents on
//! loopback, each tailing a log root that a kubelet-like writer fills
//! (rename rotation with a reopen window, gzip of older rotated files,
//! container restarts, pod deletion, lines over 16 KiB in P/F chunks, lines
//! that never get their F, docker json-file records), while agents and the
//! aggregator are killed with SIGKILL and restarted. Every written line must
//! then be stored exactly once, intact, with its labels and timestamp.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use logfleet_kubesim::{messages::Messages, Format, Pod, Rotation, Written};

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

type Key = (String, String, String, String, String, String, String);

fn key_of_written(node: &str, w: &Written) -> Key {
    (
        node.to_owned(),
        w.namespace.clone(),
        w.pod.clone(),
        w.container.clone(),
        w.stream.clone(),
        rfc3339(w.ts),
        w.line.clone(),
    )
}

fn key_of_json(v: &serde_json::Value) -> Key {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    (
        s("node"),
        s("namespace"),
        s("pod"),
        s("container"),
        s("stream"),
        s("ts"),
        s("line"),
    )
}

fn return_failure(missing: &[&Key]) {
    for k in missing.iter().take(40) {
        eprintln!(
            "missing {} {} {} {} {}",
            k.0,
            k.2,
            k.3,
            k.5,
            k.6.chars().take(40).collect::<String>()
        );
    }
    let per: BTreeMap<(String, String, String), usize> = multiset(
        missing
            .iter()
            .map(|k| (k.0.clone(), k.2.clone(), k.3.clone())),
    );
    panic!("missing lines per (node, pod, container): {per:#?}");
}

struct Node {
    name: String,
    pods: Vec<Pod>,
    generation: u32,
}

/// Waits until every line written to the `deleted` pods is stored.
fn drained(url: &str, deleted: &[String], expected: &[Key]) {
    for pod in deleted {
        let want = expected.iter().filter(|k| &k.2 == pod).count();
        let q = format!("{{pod=\"{pod}\"}}");
        wait_for(
            &format!("the deleted pod {pod}'s {want} lines"),
            Duration::from_secs(90),
            || {
                query_all(url, &q, &[])
                    .filter(|v| v.len() >= want)
                    .map(|_| ())
            },
        );
    }
}

fn new_pod(root: &std::path::Path, node: usize, generation: u32, rotation: Rotation) -> Pod {
    Pod::create(
        root,
        "shop",
        &format!("checkout-{node}-{generation}"),
        &format!("uid-{node}-{generation}"),
        &[("server", Format::Cri), ("sidecar", Format::Docker)],
        rotation,
    )
    .expect("create pod")
}

#[test]
fn every_line_exactly_once_through_rotation_restarts_and_crashes() {
    scenario(&[]);
}

/// The same run with the aggregator over ClickHouse (Debian's, on
/// loopback): kills, restarts, rotations and pod deletions, every line
/// once.
#[test]
fn the_same_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    let url = ch.url();
    scenario(&["--store", "clickhouse", "--clickhouse-url", &url]);
}

fn scenario(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (mut agg, url) = aggregator(dir.path(), store);
    let rotation = Rotation {
        max_size: 24 << 10,
        max_files: 5,
        reopen_delay_records: 3,
    };
    let mut nodes = Vec::new();
    let mut agents = Vec::new();
    for n in 0..3 {
        let name = format!("node-{n}");
        let root = dir.path().join(&name).join("pods");
        std::fs::create_dir_all(&root).unwrap();
        let mut pods = vec![new_pod(&root, n, 0, rotation)];
        pods.push(
            Pod::create(
                &root,
                "default",
                &format!("web-{n}"),
                &format!("w-{n}"),
                &[("app", Format::Cri)],
                rotation,
            )
            .unwrap(),
        );
        agents.push(agent(dir.path(), &name, &root, &url, &[]));
        nodes.push((
            root,
            Node {
                name,
                pods,
                generation: 0,
            },
        ));
    }

    let mut expected: Vec<Key> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut msgs = Messages::new(42);
    // Stamped an hour ago: inside any retention (over ClickHouse a
    // restarted aggregator drops days past it at once).
    let mut ts: i64 = chrono::Utc::now().timestamp_nanos_opt().unwrap() - 3_600_000_000_000;
    let rounds = 400;
    for round in 0..rounds {
        // Chaos at fixed points of the run.
        match round {
            60 => agents[0].kill9(),
            110 => agents[0].restart(),
            160 => agg.kill9(),
            200 => agg.restart(),
            240 => {
                // An agent killed before the aggregator acknowledged a
                // deleted pod's last lines cannot read them again (kubelet
                // removed the files): by design, not something to test by
                // timing. Wait until they are stored.
                drained(&url, &deleted, &expected);
                agents[1].kill9();
                agents[2].kill9();
            }
            290 => {
                agents[1].restart();
                agents[2].restart();
            }
            330 => {
                drained(&url, &deleted, &expected);
                // Kill both at once while data is in flight.
                agg.kill9();
                agents[0].kill9();
                agg.restart();
                agents[0].restart();
            }
            _ => {}
        }
        for (root, node) in nodes.iter_mut() {
            for pod in node.pods.iter_mut() {
                for c in pod.containers.iter_mut() {
                    ts += 1_000_003;
                    let stream = if round % 7 == 0 { "stderr" } else { "stdout" };
                    let mut msg = format!("{} seq={round} {}", node.name, msgs.next_message());
                    if round % 37 == 5 {
                        // Longer than containerd's 16 KiB: P chunks, then F.
                        msg = msg.repeat(40_000 / msg.len() + 1);
                    }
                    let w = c.write(ts, stream, &msg, true).unwrap();
                    expected.push(key_of_written(&node.name, &w));
                }
            }
            if round % 97 == 50 {
                // The container dies mid-line: P chunks and no F, then restarts.
                let c = &mut node.pods[0].containers[0];
                ts += 1_000_003;
                let w = c
                    .write(
                        ts,
                        "stdout",
                        &format!("{} dying line {round}", node.name),
                        false,
                    )
                    .unwrap();
                expected.push(key_of_written(&node.name, &w));
                c.restart().unwrap();
            }
            if (round == 130 || round == 370) && !expected.is_empty() {
                // Pod deletion while its agent runs: kubelet removes the
                // directory; the agent drains what it holds open. Wait until
                // the agent has the files open, i.e. has shipped some of them.
                let old = node.pods.remove(0);
                let pod_name = old.containers[0].pod.clone();
                deleted.push(pod_name.clone());
                let q = format!("{{pod=\"{pod_name}\"}}");
                wait_for(
                    "the agent to ship the pod's lines",
                    Duration::from_secs(60),
                    || {
                        query_all(&url, &q, &[])
                            .filter(|v| !v.is_empty())
                            .map(|_| ())
                    },
                );
                old.delete().unwrap();
                node.generation += 1;
                let n: usize = node.name.trim_start_matches("node-").parse().unwrap();
                node.pods
                    .insert(0, new_pod(root, n, node.generation, rotation));
            }
        }
        std::thread::sleep(Duration::from_millis(15));
    }

    let want = multiset(expected.iter().cloned());
    let total = expected.len();
    // Poll until everything arrived or the deadline passed, then compare
    // whatever is there so a failure shows what is missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let got = loop {
        let v = query_all(&url, "{}", &[]).unwrap_or_default();
        if v.len() >= total || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let have = multiset(got.iter().map(key_of_json));
    let missing_all: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
    let missing: Vec<_> = missing_all
        .iter()
        .take(5)
        .map(|k| {
            (
                k.0.clone(),
                k.2.clone(),
                k.3.clone(),
                k.5.clone(),
                k.6.chars().take(60).collect::<String>(),
            )
        })
        .collect();
    if !missing_all.is_empty() {
        eprintln!(
            "{} missing; keeping {}",
            missing_all.len(),
            dir.path().display()
        );
        let _ = dir.keep();
        return_failure(&missing_all);
    }
    let extra: Vec<_> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let dups: Vec<_> = have.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && dups.is_empty(),
        "stored {} of {} lines\nmissing: {missing:#?}\nextra: {extra:#?}\nduplicated: {dups:#?}\naggregator log:\n{}",
        got.len(),
        total,
        agg.log_text()
    );
    assert_eq!(got.len(), total);

    // Flags survive: dying lines are marked unterminated, long lines are whole.
    let dying: Vec<_> = got
        .iter()
        .filter(|v| v["line"].as_str().unwrap_or("").contains("dying line"))
        .collect();
    assert!(!dying.is_empty());
    assert!(dying.iter().all(|v| v["unterminated"] == true), "{dying:?}");
    assert!(got
        .iter()
        .any(|v| v["line"].as_str().unwrap_or("").len() > 40_000));

    // Every agent reported, and the counts add up.
    let out = cli(&["agents", "--aggregator", &url, "--output", "jsonl"]);
    assert!(out.status.success());
    let agents_json: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let per_node: BTreeMap<String, u64> = agents_json
        .iter()
        .map(|a| {
            (
                a["node"].as_str().unwrap().to_owned(),
                a["lines"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_node.len(), 3);
    assert_eq!(per_node.values().sum::<u64>(), total as u64);
    for a in agents.iter_mut() {
        assert!(a.is_running(), "{} died:\n{}", a.name, a.log_text());
    }
}
