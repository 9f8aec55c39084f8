//! The store after crashes and retention: everything acknowledged is there,
//! a torn tail is cut, and de-duplication state survives both.

use std::path::Path;
use std::time::Duration;

use logfleet_aggregator::ingest::{self, StoreConfig, Writer};
use logfleet_aggregator::metrics::Metrics;
use logfleet_aggregator::query::{self, Bounds};
use logfleet_proto::v1::{Compression, Direction, FileLabels, FileRange, PushRequest};
use logfleet_proto::LinesBuilder;
use prometheus_client::registry::Registry;

fn cfg(dir: &Path, segment_bytes: u64, retention_bytes: Option<u64>) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_owned(),
        segment_bytes,
        segment_age: Duration::from_secs(3600),
        retention_age: None,
        retention_bytes,
        zstd_level: 1,
    }
}

fn open(c: StoreConfig) -> (std::sync::Arc<ingest::Shared>, Writer) {
    ingest::open(c, Metrics::new(&mut Registry::default())).expect("open store")
}

/// A push of `n` lines of file `file`, starting at line number `first`
/// (each line 100 bytes of file).
fn push(file: u64, first: u64, n: u64, c: Compression) -> PushRequest {
    let mut b = LinesBuilder::default();
    for i in first..first + n {
        b.push(
            0,
            1_000_000 + i as i64,
            i * 100,
            1,
            0,
            format!("file {file} line {i}").as_bytes(),
        );
    }
    let (payload, raw_len) = logfleet_proto::encode_payload(&b.finish(), c, 1).unwrap();
    PushRequest {
        node: "node-a".into(),
        compression: c as i32,
        raw_len,
        ranges: vec![FileRange {
            file_id: file,
            labels: Some(FileLabels {
                namespace: "ns".into(),
                pod: format!("pod-{file}"),
                ..Default::default()
            }),
            start: first * 100,
            end: (first + n) * 100,
            lines_end: 0,
        }],
        payload,
    }
}

fn all(shared: &ingest::Shared) -> Vec<String> {
    let q = query::parse("{}").unwrap();
    let b = Bounds {
        from: None,
        to: None,
        limit: 0,
        direction: Direction::Forward,
    };
    query::execute(shared, &q, b)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.line).unwrap())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_survives_a_torn_tail_and_resends_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let (_shared, w) = open(cfg(&live, 1 << 30, None));
    for (i, c) in [Compression::Zstd, Compression::Gzip, Compression::None]
        .into_iter()
        .enumerate()
    {
        let r = w
            .push(push(1, i as u64 * 10, 10, c), Default::default())
            .await
            .unwrap();
        assert_eq!(r.stored_lines, 10);
    }
    // The state a SIGKILL would leave: the files as they are, plus half a
    // record that was being written (and never acknowledged).
    let crashed = tmp.path().join("crashed");
    copy_dir(&live, &crashed);
    let seg = std::fs::read_dir(crashed.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&seg).unwrap();
    let whole = data.len();
    data.extend_from_within(..40);
    std::fs::write(&seg, &data).unwrap();

    let (shared, w) = open(cfg(&crashed, 1 << 30, None));
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        whole as u64,
        "torn tail cut"
    );
    let lines = all(&shared);
    assert_eq!(lines.len(), 30);
    assert_eq!(lines[0], "file 1 line 0");
    // The agent re-sends from an older checkpoint, batched differently.
    let r = w
        .push(push(1, 5, 40, Compression::Zstd), Default::default())
        .await
        .unwrap();
    assert_eq!((r.stored_lines, r.duplicate_lines), (15, 25));
    let r = w
        .push(push(1, 0, 45, Compression::Gzip), Default::default())
        .await
        .unwrap();
    assert_eq!((r.stored_lines, r.duplicate_lines), (0, 45));
    let lines = all(&shared);
    assert_eq!(lines.len(), 45);
    let mut sorted = lines.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 45, "no line twice");
    let agents = shared.index.read().unwrap().agents.clone();
    assert_eq!(agents["node-a"].lines, 45);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_but_remembers_what_it_stored() {
    let tmp = tempfile::tempdir().unwrap();
    // Tiny segments and a tiny cap: every push seals a segment, retention
    // keeps only the newest few.
    let (shared, w) = open(cfg(tmp.path(), 1, Some(2_000)));
    for i in 0..20 {
        w.push(push(7, i * 10, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
    }
    let stored = all(&shared);
    assert!(stored.len() < 200, "old data deleted: {}", stored.len());
    assert!(
        stored.contains(&"file 7 line 199".to_string()),
        "newest kept"
    );
    let segs = std::fs::read_dir(tmp.path().join("segments"))
        .unwrap()
        .count();
    assert!(segs < 20, "{segs} segments");
    drop(w);
    drop(shared);
    // After a restart, a re-send of deleted data is still recognised.
    let (shared, w) = open(cfg(tmp.path(), 1, Some(2_000)));
    let before = all(&shared).len();
    let r = w
        .push(push(7, 0, 200, Compression::Zstd), Default::default())
        .await
        .unwrap();
    assert_eq!((r.stored_lines, r.duplicate_lines), (0, 200));
    // Nothing stored again (retention may have deleted more meanwhile: the
    // reopened store seals its active segment at the first commit).
    let after = all(&shared);
    assert!(after.len() <= before, "{} > {before}", after.len());
    assert!(after.contains(&"file 7 line 199".to_string()));
    assert_eq!(shared.index.read().unwrap().agents["node-a"].lines, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_keeps_recent_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path(), 1, None);
    c.retention_age = Some(Duration::from_secs(86_400));
    let (shared, w) = open(c);
    // Lines from 1970 (the helper's timestamps), then lines from now.
    for i in 0..5 {
        w.push(push(1, i * 10, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
    }
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let mut b = LinesBuilder::default();
    b.push(0, now, 0, 1, 0, b"fresh");
    let (payload, raw_len) =
        logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
    let mut fresh = push(2, 0, 1, Compression::Zstd);
    fresh.payload = payload;
    fresh.raw_len = raw_len;
    // With one-byte segments every push seals one, and retention runs at
    // each seal.
    w.push(fresh, Default::default()).await.unwrap();
    w.push(push(3, 0, 1, Compression::Zstd), Default::default())
        .await
        .unwrap();
    let lines = all(&shared);
    assert!(lines.contains(&"fresh".to_string()), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("file 1 ")),
        "old lines deleted: {lines:?}"
    );
}
