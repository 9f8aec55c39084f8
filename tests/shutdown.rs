//! Stopping the aggregator with a live tail attached: the tail is ended
//! with "shutting down" and the aggregator exits promptly (in Kubernetes a
//! hang would last the whole grace period and end in SIGKILL).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn sigterm_with_a_tail_open_stops_promptly_and_tells_the_tail() {
    tail_then_sigterm(&[]);
}

/// The same with the aggregator over ClickHouse.
#[test]
fn the_same_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    tail_then_sigterm(&["--store", "clickhouse", "--clickhouse-url", &ch.url()]);
}

fn tail_then_sigterm(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (mut agg, url) = aggregator(dir.path(), store);
    let mut tail = Proc::start(
        "tail",
        &[
            "tail".into(),
            "--aggregator".into(),
            url.clone(),
            "{}".into(),
        ],
        dir.path(),
    );
    wait_for("the tail to attach", Duration::from_secs(30), || {
        let m = http_get(&agg.http, "/metrics")?;
        (metric(&m, "logfleet_aggregator_tails") >= 1.0).then_some(())
    });
    agg.signal(libc::SIGTERM);
    // Prompt: well inside any grace period (kubelet's default is 30 s).
    let status = wait_for("the aggregator to exit", Duration::from_secs(10), || {
        agg.exited()
    });
    assert!(status.success(), "{status:?}\n{}", agg.log_text());
    let tail_status = wait_for("the tail to exit", Duration::from_secs(10), || {
        tail.exited()
    });
    assert!(!tail_status.success());
    let said = tail.log_text();
    assert!(said.contains("shutting down"), "{said}");
}
