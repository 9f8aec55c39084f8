//! Multi-line records through the real binaries: the agent is killed with
//! SIGKILL while a stack trace is half written and half read, the rest is
//! written while it is down, and after its restart the trace is stored
//! once, whole, with every other line once.

mod common;

use std::time::Duration;

use common::*;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn rec(stream: &str, msg: &str) -> String {
    format!("{} {stream} F {msg}\n", now())
}

#[test]
fn a_trace_cut_by_sigkill_is_stored_once_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    let cdir = root.join("shop_checkout-1_uid-1/server");
    std::fs::create_dir_all(&cdir).unwrap();
    let log = cdir.join("0.log");
    let (_agg, url) = aggregator(dir.path(), &[]);
    // A timeout long enough that the open record is still open when the
    // agent dies, short enough that the last records close at the end.
    let flags = ["--multiline", "java", "--multiline-timeout", "8s"];
    let mut agent = agent(dir.path(), "node-1", &root, &url, &flags);

    let head = [
        "ERROR payment failed order=42",
        "java.lang.IllegalStateException: declined",
        "\tat com.example.Checkout.pay(Checkout.java:42)",
    ];
    let tail = [
        "\tat com.example.Main.main(Main.java:7)",
        "Caused by: java.io.IOException: timeout",
        "\t... 2 more",
    ];
    append(&log, &rec("stdout", "INFO started"));
    append(&log, &rec("stderr", "warn one"));
    for l in head {
        append(&log, &rec("stdout", l));
    }
    append(&log, &rec("stderr", "warn two"));
    // "INFO started" is shipped once the trace's first line starts the next
    // record: the agent has read into the trace.
    wait_for("the line before the trace", Duration::from_secs(30), || {
        query_all(&url, r#"{namespace="shop"} |= "INFO started""#, &[]).filter(|v| v.len() == 1)
    });
    agent.kill9();
    for l in tail {
        append(&log, &rec("stdout", l));
    }
    append(&log, &rec("stdout", "INFO next"));
    append(&log, &rec("stderr", "warn three"));
    agent.restart();

    let trace = [&head[..], &tail[..]].concat().join("\n");
    let want = multiset(
        [
            "INFO started",
            trace.as_str(),
            "INFO next",
            "warn one",
            "warn two",
            "warn three",
        ]
        .map(str::to_owned),
    );
    let got = wait_for("every record", Duration::from_secs(60), || {
        let lines = query_all(&url, r#"{namespace="shop"}"#, &[])?;
        let got = multiset(
            lines
                .iter()
                .map(|l| l["line"].as_str().unwrap_or_default().to_owned()),
        );
        (got.len() == want.len()).then_some(got)
    });
    assert_eq!(got, want, "each record once, the trace whole");
}
