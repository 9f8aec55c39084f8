//! The agent during an outage of the aggregator, or of the ClickHouse
//! behind it: it keeps finding and opening new files while batches wait,
//! so a pod created and deleted meanwhile is still shipped once the store
//! is back, each line once.

mod common;

use std::time::Duration;

use common::*;
use logfleet_kubesim::{Format, Pod, Rotation};

#[test]
fn a_pod_deleted_during_an_outage_is_shipped_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let url = format!("http://127.0.0.1:{grpc}");
    let data = dir.path().join("data").display().to_string();
    let mut agg = None;
    // The aggregator is away from the start and comes back.
    scenario(dir.path(), &url, || {
        agg = Some(Proc::start(
            "aggregator",
            &[
                "aggregator".into(),
                "--data-dir".into(),
                data,
                "--grpc-addr".into(),
                format!("127.0.0.1:{grpc}"),
                "--http-addr".into(),
                format!("127.0.0.1:{}", free_port()),
            ],
            dir.path(),
        ))
    });
}

/// The same over ClickHouse, with the aggregator up and ClickHouse away:
/// the aggregator refuses pushes as unavailable, the agent keeps its lines
/// (and finds new files) until ClickHouse is back, and stores each once.
#[test]
fn the_same_while_clickhouse_is_away() {
    let mut ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ch_url = ch.url();
    let (agg, url) = aggregator(
        dir.path(),
        &["--store", "clickhouse", "--clickhouse-url", &ch_url],
    );
    let ready = |code: &'static str| {
        wait_for(code, Duration::from_secs(30), || {
            http_get(&agg.http, "/readyz").filter(|r| r.starts_with(code))
        })
    };
    ready("HTTP/1.1 200");
    ch.stop();
    ready("HTTP/1.1 503");
    scenario(dir.path(), &url, || ch.run().unwrap());
    ready("HTTP/1.1 200");
}

fn scenario(dir: &std::path::Path, url: &str, end_outage: impl FnOnce()) {
    let root = dir.join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let http = free_port();
    let agent = agent(
        dir,
        "n1",
        &root,
        url,
        &[
            "--batch-size",
            "1KiB",
            "--batch-wait",
            "50ms",
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ],
    );
    // Enough lines for more batches than the agent holds: before the fix
    // its reader blocked on the full pipeline and stopped discovering.
    let mut busy = Pod::create(
        &root,
        "ns",
        "busy",
        "u1",
        &[("c", Format::Cri)],
        Rotation::default(),
    )
    .unwrap();
    let ts = 1_795_000_000_000_000_000i64;
    for i in 0..400 {
        busy.containers[0]
            .write(
                ts + i,
                "stdout",
                &format!("busy line {i} {}", "x".repeat(40)),
                true,
            )
            .unwrap();
    }
    let metric_of =
        |name: &str| http_get(&format!("127.0.0.1:{http}"), "/metrics").map(|t| metric(&t, name));
    wait_for("the pipeline to fill", Duration::from_secs(30), || {
        (metric_of("logfleet_agent_push_retries_total")? >= 1.0).then_some(())
    });
    // The agent stays ready: the outage is the store's, not this node's
    // (an aggregator restart would otherwise stall an agent rollout).
    let ready = http_get(&format!("127.0.0.1:{http}"), "/readyz").unwrap_or_default();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("does not take pushes"), "{ready}");
    let mut brief = Pod::create(
        &root,
        "ns",
        "brief",
        "u2",
        &[("c", Format::Cri)],
        Rotation::default(),
    )
    .unwrap();
    for i in 0..20 {
        brief.containers[0]
            .write(ts + 1000 + i, "stdout", &format!("brief line {i}"), true)
            .unwrap();
    }
    wait_for("the new pod's file open", Duration::from_secs(30), || {
        (metric_of("logfleet_agent_open_files")? >= 2.0).then_some(())
    });
    brief.delete().unwrap();
    // The store comes back.
    end_outage();
    let got = wait_for("every line of both pods", Duration::from_secs(60), || {
        let v = query_all(url, "{}", &[])?;
        (v.len() >= 420).then_some(v)
    });
    assert_eq!(got.len(), 420, "each line once");
    let brief_lines = got.iter().filter(|v| v["pod"] == "brief").count();
    assert_eq!(brief_lines, 20, "the deleted pod's lines");
    drop(agent);
}
