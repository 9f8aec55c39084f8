//! The agent during an aggregator outage: it keeps finding and opening new
//! files while batches wait, so a pod created and deleted while the
//! aggregator is away is still shipped once it is back.

mod common;

use std::time::Duration;

use common::*;
use logfleet_kubesim::{Format, Pod, Rotation};

#[test]
fn a_pod_deleted_during_an_outage_is_shipped_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(&root).unwrap();
    let grpc = free_port();
    let url = format!("http://127.0.0.1:{grpc}");
    let http = free_port();
    let agent = agent(
        dir.path(),
        "n1",
        &root,
        &url,
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
    // The aggregator comes back.
    let data = dir.path().join("data").display().to_string();
    let _agg = Proc::start(
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
    );
    let got = wait_for("every line of both pods", Duration::from_secs(60), || {
        let v = query_all(&url, "{}", &[])?;
        (v.len() >= 420).then_some(v)
    });
    assert_eq!(got.len(), 420, "each line once");
    let brief_lines = got.iter().filter(|v| v["pod"] == "brief").count();
    assert_eq!(brief_lines, 20, "the deleted pod's lines");
    drop(agent);
}
