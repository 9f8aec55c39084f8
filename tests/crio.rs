//! What CRI-O writes, end to end with the real binaries: stdout and stderr
//! share one file, and a program that prints without a newline leaves a
//! `P` chunk open while the other stream writes whole lines (CRI-O's
//! `internal/oci/container_*` log writer; see also kubelet's
//! `pkg/kubelet/kuberuntime/logs`, which merges `P` chunks per stream).
//! The issue that found it: every batch holding a line of the other stream
//! was refused by the aggregator and dropped, 97% of a node's lines.

mod common;

use std::time::Duration;

use common::*;

fn lines(url: &str) -> Vec<(String, String)> {
    query_all(url, "{}", &[])
        .unwrap_or_default()
        .iter()
        .map(|v| {
            (
                v["stream"].as_str().unwrap_or_default().to_owned(),
                v["line"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn other_stream_is_shipped_while_a_partial_line_waits_and_a_crash_stores_nothing_twice() {
    partial_lines(&[]);
}

/// The same with the aggregator over ClickHouse.
#[test]
fn the_same_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    partial_lines(&["--store", "clickhouse", "--clickhouse-url", &ch.url()]);
}

fn partial_lines(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    let cdir = root.join("shop_api_uid-1/server");
    std::fs::create_dir_all(&cdir).unwrap();
    let log = cdir.join("0.log");
    let (_agg, url) = aggregator(dir.path(), store);
    // The F comes long after the P: no timeout may cut the line in two.
    let mut agent = agent(
        dir.path(),
        "n1",
        &root,
        &url,
        &["--partial-timeout", "120s"],
    );
    append(
        &log,
        "2026-11-27T10:00:00.000000001+00:00 stdout F first\n\
         2026-11-27T10:00:00.000000002+00:00 stdout P partial-start-\n\
         2026-11-27T10:00:00.000000003+00:00 stderr F an stderr line\n",
    );
    // The stderr line must arrive without waiting for the stdout F.
    wait_for("the stderr line stored", Duration::from_secs(30), || {
        lines(&url)
            .contains(&("stderr".into(), "an stderr line".into()))
            .then_some(())
    });
    // The checkpoint cannot pass the open stdout line: a crash now makes
    // the agent read the stderr line again, and the aggregator must know it.
    agent.kill9();
    agent.restart();
    append(
        &log,
        "2026-11-27T10:00:00.000000004+00:00 stderr F another stderr line\n",
    );
    wait_for("the second stderr line", Duration::from_secs(30), || {
        lines(&url)
            .contains(&("stderr".into(), "another stderr line".into()))
            .then_some(())
    });
    append(
        &log,
        "2026-11-27T10:00:00.000000005+00:00 stdout F partial-end\n\
         2026-11-27T10:00:00.000000006+00:00 stdout F last\n",
    );
    let got = wait_for("every line", Duration::from_secs(30), || {
        let l = lines(&url);
        l.contains(&("stdout".into(), "last".into())).then_some(l)
    });
    let want: Vec<(String, String)> = [
        ("stdout", "first"),
        ("stdout", "partial-start-partial-end"),
        ("stderr", "an stderr line"),
        ("stderr", "another stderr line"),
        ("stdout", "last"),
    ]
    .iter()
    .map(|(s, l)| (s.to_string(), l.to_string()))
    .collect();
    assert_eq!(got, want, "each line once, whole, in timestamp order");
    let text = agent.log_text();
    assert!(!text.contains("refused"), "{text}");
}
