//! The tailer with pod metadata: lines carry their pod's labels, excluded
//! pods and containers are not read (and an open file is closed once its
//! container is excluded), and a pod's multi-line annotation groups its
//! lines.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use logfleet_agent::batch::BatchBuilder;
use logfleet_agent::checkpoint::Checkpoints;
use logfleet_agent::discover::{self, Filter};
use logfleet_agent::metadata::{Directory, Limits, PodInfo, EXCLUDE, MULTILINE};
use logfleet_agent::tail::{TailConfig, Tailer};
use logfleet_proto::v1::{Compression, Label};

fn write(root: &std::path::Path, pod: &str, container: &str, lines: &[&str]) {
    let dir = root.join(format!("ns_{pod}_uid-{pod}/{container}"));
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = lines
        .iter()
        .map(|l| format!("2026-12-03T10:00:00.000000001Z stdout F {l}\n"))
        .collect();
    std::fs::write(dir.join("0.log"), text).unwrap();
}

fn info(pod: &str, annotations: &[(&str, &str)]) -> PodInfo {
    let annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    logfleet_agent::metadata::describe(
        &Default::default(),
        &Default::default(),
        &annotations,
        None,
        &logfleet_agent::metadata::Owner {
            kind: "Deployment".into(),
            name: pod.into(),
        },
    )
}

/// One pass over the tree: (pod, extra labels, line texts) per file range.
fn pass(tailer: &mut Tailer, root: &std::path::Path) -> Vec<(String, Vec<Label>, Vec<String>)> {
    tailer.apply_scan(discover::scan(root, &Filter::default()));
    let mut b = BatchBuilder::default();
    tailer.poll(&mut b, &mut |_| true);
    if b.is_empty() {
        return Vec::new();
    }
    let sealed = b.seal("n", Compression::None, 0).unwrap();
    let batch = logfleet_proto::decode_payload(&sealed.request, Default::default()).unwrap();
    let mut out: Vec<(String, Vec<Label>, Vec<String>)> = sealed
        .request
        .ranges
        .iter()
        .map(|r| {
            let l = r.labels.clone().unwrap();
            (format!("{}/{}", l.pod, l.container), l.extra, Vec::new())
        })
        .collect();
    for l in batch.lines() {
        out[l.range as usize]
            .2
            .push(String::from_utf8_lossy(&l.text).into_owned());
    }
    out.sort();
    out
}

#[test]
fn labels_exclusion_and_multiline_come_from_the_pod() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    write(&root, "web", "app", &["hello"]);
    write(&root, "web", "sidecar", &["noise"]);
    write(&root, "secret", "app", &["do not ship"]);
    write(
        &root,
        "java",
        "app",
        &["ERROR x", "\tat a.B.c(B.java:1)", "INFO next"],
    );
    let dir = Arc::new(Directory::new(Limits::default()));
    dir.replace(
        vec![
            (
                "uid-web".into(),
                info("web", &[("logfleet.dev/exclude-sidecar", "true")]),
            ),
            ("uid-secret".into(), info("secret", &[(EXCLUDE, "true")])),
            ("uid-java".into(), info("java", &[(MULTILINE, "java")])),
        ],
        Instant::now(),
    );
    let cp = Arc::new(Mutex::new(Checkpoints::default()));
    let mut tailer = Tailer::new(TailConfig::default(), cp.clone()).with_metadata(dir.clone());
    let got = pass(&mut tailer, &root);
    let workload = |name: &str| {
        vec![
            Label {
                name: "workload".into(),
                value: name.into(),
            },
            Label {
                name: "workload_kind".into(),
                value: "Deployment".into(),
            },
        ]
    };
    assert_eq!(
        got,
        vec![
            (
                "java/app".to_string(),
                workload("java"),
                vec![
                    "ERROR x\n\tat a.B.c(B.java:1)".to_string(),
                    "INFO next".into()
                ]
            ),
            ("web/app".to_string(), workload("web"), vec!["hello".into()]),
        ]
    );
    assert_eq!(tailer.stats.excluded_files, 2);
    // The multi-line setting is kept with the file's checkpoint.
    let settings: Vec<Option<String>> = cp
        .lock()
        .unwrap()
        .files
        .values()
        .map(|p| p.multiline.clone())
        .collect();
    assert!(settings.contains(&Some("java".into())), "{settings:?}");
    assert!(settings.contains(&Some("none".into())), "{settings:?}");

    // web/app gets excluded while open: closed, nothing more read.
    dir.upsert(
        "uid-web",
        info("web", &[("logfleet.dev/exclude-app", "true")]),
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("ns_web_uid-web/app/0.log"))
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"2026-12-03T10:00:01.000000001Z stdout F later\n")
        })
        .unwrap();
    let got = pass(&mut tailer, &root);
    assert!(got.iter().all(|(pod, _, _)| pod != "web/app"), "{got:?}");
}

/// The multi-line setting a file is read with is on disk before any of its
/// lines is read: a restart after a crash must group the same bytes the
/// same way, whatever the pod's annotation says by then. One save covers
/// every file a scan opens.
#[test]
fn the_setting_is_saved_before_lines_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    write(&root, "a", "app", &["ERROR x", "\tat a.B.c(B.java:1)"]);
    write(&root, "b", "app", &["hello"]);
    let path = logfleet_agent::checkpoint::file_in(tmp.path());
    let cfg = TailConfig {
        multiline: logfleet_agent::multiline::Detector::parse("java").unwrap(),
        ..Default::default()
    };
    let cp = Arc::new(Mutex::new(Checkpoints::default()));
    let mut tailer = Tailer::new(cfg, cp).persist_settings(path.clone());
    tailer.apply_scan(discover::scan(&root, &Filter::default()));
    // Scanned, opened, nothing read yet: already on disk.
    let saved = logfleet_agent::checkpoint::load(&path).unwrap();
    let settings: Vec<Option<String>> = saved.files.values().map(|p| p.multiline.clone()).collect();
    assert_eq!(settings, vec![Some("java".to_string()); 2]);
    assert!(saved.files.values().all(|p| p.offset == 0));
    assert_eq!(tailer.stats.lines, 0);
}
