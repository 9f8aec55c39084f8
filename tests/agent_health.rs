//! What an agent does when the aggregator refuses its lines, when its node
//! has nothing to say, when its log root is missing, and with the filters
//! the controller renders for it: nothing vanishes silently, and a quiet
//! agent is told apart from a dead one.

mod common;

use std::time::Duration;

use common::*;
use logfleet_kubesim::{Format, Pod, Rotation};

fn agents_jsonl(url: &str) -> Vec<serde_json::Value> {
    let out = cli(&["agents", "--aggregator", url, "--output", "jsonl"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One file's batch is refused for good (a line larger than the
/// aggregator's payload limit): the other file's lines in the same batch
/// are stored, the refused ones are kept in the dead-letter file, counted
/// and reported, and the agent keeps shipping.
#[test]
fn a_refused_file_goes_to_the_dead_letter_file_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let (_agg, url) = aggregator(dir.path(), &["--max-payload", "200KiB"]);
    let mut good = Pod::create(
        &root,
        "ns",
        "good",
        "u1",
        &[("c", Format::Cri)],
        Rotation::default(),
    )
    .unwrap();
    let mut bad = Pod::create(
        &root,
        "ns",
        "bad",
        "u2",
        &[("c", Format::Cri)],
        Rotation::default(),
    )
    .unwrap();
    let ts = 1_795_000_000_000_000_000i64;
    for i in 0..50 {
        good.containers[0]
            .write(ts + i, "stdout", &format!("good {i}"), true)
            .unwrap();
    }
    bad.containers[0]
        .write(ts, "stdout", &"x".repeat(300 << 10), true)
        .unwrap();
    bad.containers[0]
        .write(ts + 1, "stdout", "bad small", true)
        .unwrap();
    // One batch holds both files: large batches, a long wait.
    let agent = agent(
        dir.path(),
        "n1",
        &root,
        &url,
        &[
            "--max-line",
            "1MiB",
            "--batch-size",
            "4MiB",
            "--batch-wait",
            "1s",
            "--http-addr",
            "127.0.0.1:0",
        ],
    );
    let got = wait_for("the good file's lines", Duration::from_secs(30), || {
        let v = query_all(&url, r#"{pod="good"}"#, &[])?;
        (v.len() >= 50).then_some(v)
    });
    assert_eq!(got.len(), 50);
    let dl = dir.path().join("state-n1/dead-letter.jsonl");
    let kept = wait_for("the dead-letter file", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(&dl).ok()?;
        (t.lines().count() >= 2).then_some(t)
    });
    let rows: Vec<serde_json::Value> = kept
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "both lines of the refused file, once");
    assert!(rows
        .iter()
        .all(|r| r["pod"] == "bad" && r["namespace"] == "ns"));
    assert_eq!(rows[0]["line"].as_str().unwrap().len(), 300 << 10);
    assert_eq!(rows[1]["line"], "bad small");
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap()
            .contains("InvalidArgument"),
        "{}",
        rows[0]
    );
    // Shipping goes on, for both files.
    good.containers[0]
        .write(ts + 100, "stdout", "good later", true)
        .unwrap();
    bad.containers[0]
        .write(ts + 100, "stdout", "bad later", true)
        .unwrap();
    wait_for("later lines of both files", Duration::from_secs(30), || {
        let v = query_all(&url, r#"{pod=~"good|bad"} |~ "later""#, &[])?;
        (v.len() == 2).then_some(())
    });
    assert!(query_all(&url, r#"{pod="bad"} |= "bad small""#, &[])
        .unwrap()
        .is_empty());
    // Counted, and said at error level and in the heartbeat.
    let log = agent.log_text();
    assert!(log.contains("dead-letter"), "{log}");
    let a = wait_for(
        "the refusal in the agent listing",
        Duration::from_secs(30),
        || {
            let a = agents_jsonl(&url).into_iter().find(|a| a["node"] == "n1")?;
            (a["dead_letter_lines"] == 2).then_some(a)
        },
    );
    assert!(a["last_error"].as_str().unwrap().contains("refused"), "{a}");
}

/// A node with no containers still shows up, and its agent stays "seen";
/// a missing log root is reported, not taken for a quiet node.
#[test]
fn quiet_and_misconfigured_agents_report_through_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    let port = free_port();
    let _quiet = agent(
        dir.path(),
        "quiet",
        &empty,
        &url,
        &["--heartbeat-interval", "200ms"],
    );
    let _lost = agent(
        dir.path(),
        "lost",
        &dir.path().join("no-such-root"),
        &url,
        &[
            "--heartbeat-interval",
            "200ms",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let (quiet, lost) = wait_for("both agents listed", Duration::from_secs(30), || {
        let all = agents_jsonl(&url);
        let find = |n: &str| all.iter().find(|a| a["node"] == n).cloned();
        Some((find("quiet")?, find("lost")?))
    });
    assert!(quiet["last_push"].is_null(), "{quiet}");
    assert!(quiet["last_seen"].as_str().is_some(), "{quiet}");
    assert_eq!(quiet["last_error"], "");
    assert!(
        lost["last_error"]
            .as_str()
            .unwrap()
            .contains("no-such-root"),
        "{lost}"
    );
    // last_seen moves on without any line.
    let first = quiet["last_seen"].as_str().unwrap().to_owned();
    wait_for("a later heartbeat", Duration::from_secs(30), || {
        let all = agents_jsonl(&url);
        let q = all.iter().find(|a| a["node"] == "quiet")?;
        (q["last_seen"].as_str()? > first.as_str()).then_some(())
    });
    let ready = wait_for("the lost agent's readyz", Duration::from_secs(30), || {
        http_get(&format!("127.0.0.1:{port}"), "/readyz")
    });
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("no-such-root"), "{ready}");
    // The table shows both times.
    let out = cli(&["agents", "--aggregator", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("LAST SEEN") && text.contains("LAST PUSH"),
        "{text}"
    );
}

/// A collector's filters reach the agents through their ConfigMap: a regex
/// with a comma (`team-[a-z]{2,4}`) once was split there, and every agent
/// exited ("unclosed counted repetition"). Rendered by the controller's own
/// code, set as the environment `envFrom` sets, read by the real agent.
#[test]
fn filters_with_commas_reach_the_agent_whole() {
    use logfleet_controller::render::{render, Options};
    // Children inherit a soft limit of open files below the hard one, as
    // on most systems (1024), and must raise it themselves (checked below).
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_cur.min(1024).min(lim.rlim_max.saturating_sub(1));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let (_agg, url) = aggregator(dir.path(), &[]);
    let lc: logfleet_controller::crd::LogCollector = serde_json::from_value(serde_json::json!({
        "apiVersion": "logfleet.dev/v1alpha1", "kind": "LogCollector",
        "metadata": {"name": "logs", "namespace": "logfleet"},
        "spec": {"agent": {"filters": {
            "excludeNamespaces": ["team-[a-z]{2,4}", "kube-.*"],
            "includeContainers": ["c|d", "e{1,2}"],
        }}},
    }))
    .unwrap();
    let objs = render(&lc, &Options::default()).unwrap();
    let cm = objs
        .iter()
        .find(|o| o.api.kind == "ConfigMap")
        .expect("the agents' ConfigMap");
    let env: Vec<(String, String)> = cm.body["data"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("_INCLUDE_") || k.contains("_EXCLUDE_"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(env.len(), 2, "{env:?}");
    let ts = 1_795_000_000_000_000_000i64;
    for (i, (ns, container)) in [
        ("team-ab", "c"),
        ("kube-system", "c"),
        ("team-abcdef", "c"),
        ("shop", "ee"),
        ("shop2", "f"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut pod = Pod::create(
            &root,
            ns,
            &format!("p{i}"),
            &format!("u{i}"),
            &[(container, Format::Cri)],
            Rotation::default(),
        )
        .unwrap();
        pod.containers[0]
            .write(ts + i as i64, "stdout", &format!("from {ns}"), true)
            .unwrap();
    }
    let mut agent = agent_with_env(dir.path(), "node-a", &root, &url, &[], &env);
    let lines = wait_for("the kept lines", Duration::from_secs(30), || {
        assert!(agent.is_running(), "the agent exited: {}", agent.log_text());
        query_all(&url, "{}", &[]).filter(|v| v.len() >= 2)
    });
    let got: Vec<&str> = lines.iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(got, ["from team-abcdef", "from shop"]);
    // Both raised their soft limit of open files to the hard one (EMFILE
    // at 1024 once reached seals and checkpoints).
    for p in [&agent, &_agg] {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid().unwrap())).unwrap();
        let row = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files row");
        let v: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(v[3], v[4], "{}: {row}", p.name);
    }
}
