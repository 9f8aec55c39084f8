//! A new user's first minutes: `logfleet demo` on a machine where its
//! default ports are taken, and every command it prints, pasted into a
//! shell as printed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The lines the demo printed so far.
fn printed(p: &Proc) -> Vec<String> {
    p.log_text().lines().map(str::to_owned).collect()
}

/// The commands the demo printed under "Try, in another terminal".
fn wait_for_hints(demo: &Proc) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lines = printed(demo);
        let found = lines
            .iter()
            .position(|l| l.starts_with("Try, in another terminal"))
            .map(|at| {
                // stderr (log lines) shares the file: keep only the hints.
                lines[at + 1..]
                    .iter()
                    .take_while(|l| !l.starts_with("(`cargo install"))
                    .filter(|l| l.starts_with("  "))
                    .map(|l| l.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|h| h.len() >= 4);
        if let Some(h) = found {
            return h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no hints after 60 s; the demo printed:\n{}",
            demo.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_avoids_taken_ports_and_every_printed_command_works() {
    // Hold the defaults, as a developer's other servers would. (If
    // something else holds them already, the case is the same.)
    let _grpc = std::net::TcpListener::bind("127.0.0.1:7140");
    let _http = std::net::TcpListener::bind("127.0.0.1:7142");
    let _agent_http = std::net::TcpListener::bind("127.0.0.1:9102");
    let dir = tempfile::tempdir().unwrap();
    let demo = Proc::start(
        "demo",
        &[
            "demo".into(),
            "--dir".into(),
            dir.path().join("demo").display().to_string(),
            "--duration".into(),
            "5m".into(),
        ],
        dir.path(),
    );
    let hints = wait_for_hints(&demo);
    let first = printed(&demo)
        .into_iter()
        .find(|l| l.starts_with("logfleet demo: aggregator on"))
        .unwrap();
    assert!(
        !first.contains(":7140 ") && !first.contains(":7142/"),
        "the demo printed a taken port: {first}"
    );
    for h in &hints {
        assert!(!h.contains("127.0.0.1:7140"), "{h}");
    }
    // The web view's address is printed, and it serves the page.
    let web = printed(&demo)
        .into_iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("web view: http://")
                .map(|r| r.split('/').next().unwrap_or_default().to_owned())
        })
        .expect("the demo prints the web view's address");
    assert_ne!(web, "127.0.0.1:7142", "the held default port");
    let page = http_get(&web, "/").unwrap_or_default();
    assert!(page.contains("<title>logfleet</title>"), "{page}");
    // Every command, run by a shell exactly as printed.
    for h in hints.iter().filter(|h| !h.contains(" tail ")) {
        let out = wait_for(&format!("`{h}` to answer"), Duration::from_secs(60), || {
            let out = Command::new("sh").arg("-c").arg(h).output().unwrap();
            (out.status.success() && !out.stdout.is_empty()).then_some(out)
        });
        assert!(
            out.stderr.is_empty(),
            "{h}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Lines carry their pods' labels from the stand-in API, and stack
    // traces arrive as one record each (issue 11's demo).
    let exc = hints.iter().find(|h| h.contains("workload=")).unwrap();
    wait_for(
        "a whole Java trace from {workload=\"checkout\"}",
        Duration::from_secs(90),
        || {
            let out = Command::new("sh").arg("-c").arg(exc).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("\njava.lang.IllegalStateException: ")
                && text.contains("\n\tat com.example.checkout.")
                && text.contains("\nCaused by: ")
                && text.contains(" more"))
            .then_some(())
        },
    );
    let query = exc
        .replace("{workload=\"checkout\"}", "{app=\"checkout\"}")
        .replace("--limit 3", "--limit 1 --output jsonl");
    let out = Command::new("sh").arg("-c").arg(&query).output().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{query}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(rec["labels"]["workload"], "checkout", "{rec}");
    assert_eq!(rec["labels"]["workload_kind"], "Deployment", "{rec}");
    assert_eq!(rec["labels"]["team"], "payments", "{rec}");
    let line = rec["line"].as_str().unwrap();
    assert!(
        line.starts_with("ERROR ") && line.contains("\nCaused by: "),
        "{line}"
    );
    // The tail runs until stopped: it must print matching lines.
    let tail = hints.iter().find(|h| h.contains(" tail ")).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {tail}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.contains(" 500 ") || line.contains("status=5"),
        "{tail} printed {line:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `logfleet demo --store clickhouse` with a ClickHouse reachable (Debian's,
/// on loopback): the printed commands answer from ClickHouse, and stack
/// traces arrive whole with their pods' labels.
#[test]
fn the_demo_runs_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let demo = Proc::start(
        "demo-clickhouse",
        &[
            "demo".into(),
            "--dir".into(),
            dir.path().join("demo").display().to_string(),
            "--duration".into(),
            "5m".into(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--http-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--store".into(),
            "clickhouse".into(),
            "--clickhouse-url".into(),
            ch.url(),
        ],
        dir.path(),
    );
    let hints = wait_for_hints(&demo);
    assert!(demo.log_text().contains("store: ClickHouse at"));
    let exc = hints.iter().find(|h| h.contains("workload=")).unwrap();
    wait_for(
        "a whole Java trace from ClickHouse",
        Duration::from_secs(90),
        || {
            let out = Command::new("sh").arg("-c").arg(exc).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("\njava.lang.IllegalStateException: ") && text.contains("\nCaused by: "))
                .then_some(())
        },
    );
    let agents = hints.iter().find(|h| h.contains(" agents ")).unwrap();
    let out = Command::new("sh").arg("-c").arg(agents).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("node-1"), "{text}");
    let rows: u64 = ch
        .sql("SELECT count() FROM logfleet_demo.lines")
        .unwrap()
        .parse()
        .unwrap_or(0);
    assert!(rows > 0, "the lines are in ClickHouse");
}
