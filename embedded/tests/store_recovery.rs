//! The store after crashes and retention: everything acknowledged is there,
//! a torn tail is cut, and de-duplication state survives both.

use std::path::Path;
use std::time::Duration;

use logfleet_embedded::ingest::{self, StoreConfig, Writer};
use logfleet_embedded::query::{self, Bounds};
use logfleet_proto::v1::{Compression, Direction, FileLabels, FileRange, PushRequest};
use logfleet_proto::LinesBuilder;
use logfleet_store::metrics::Metrics;
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

/// Closes a store and waits until its writer thread has finished (it
/// seals and snapshots after answering, so files change until then).
fn close(shared: std::sync::Arc<ingest::Shared>, w: Writer) {
    let weak = std::sync::Arc::downgrade(&shared);
    drop(w);
    drop(shared);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while weak.upgrade().is_some() {
        assert!(std::time::Instant::now() < deadline, "writer did not stop");
        std::thread::yield_now();
    }
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
    // The gauge follows the segment as it grows (it stayed 0 until a roll).
    let seg_len = std::fs::metadata(&seg).unwrap().len() as i64;
    let before = shared.metrics.stored_bytes.get();
    w.push(push(2, 0, 5, Compression::Zstd), Default::default())
        .await
        .unwrap();
    let grown = std::fs::metadata(&seg).unwrap().len() as i64;
    assert!(grown > seg_len);
    assert_eq!(shared.metrics.stored_bytes.get() - before, grown - seg_len);
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
    assert_eq!(lines.len(), 50);
    let mut sorted = lines.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 50, "no line twice");
    let agents = shared.index.read().unwrap().agents.clone();
    assert_eq!(agents["node-a"].lines, 50);
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
    // Retention deletes what a durable snapshot covers; the snapshot is
    // written off the acknowledgement path, so this comes soon after.
    let lines = wait_until(|| {
        let lines = all(&shared);
        (!lines.iter().any(|l| l.starts_with("file 1 "))).then_some(lines)
    });
    assert!(lines.contains(&"fresh".to_string()), "{lines:?}");
}

/// Polls `f` until it gives a value (30 s at most).
fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A retention age past what an i64 of nanoseconds holds (`150000d`, about
/// 410 years) keeps everything: the cutoff once wrapped into the future and
/// retention deleted every sealed segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_age_of_centuries_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path(), 1, None);
    c.retention_age = Some(Duration::from_secs(150_000 * 86_400));
    let (shared, w) = open(c);
    // One-byte segments: every push seals one, and retention runs at each.
    for i in 0..5 {
        w.push(push(1, i * 10, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
    }
    assert_eq!(all(&shared).len(), 50);
    assert_eq!(
        ingest::retention_cutoff(0, Duration::from_secs(150_000 * 86_400)),
        None
    );
    assert_eq!(
        ingest::retention_cutoff(1_000, Duration::from_nanos(10)),
        Some(990)
    );
    // Before the epoch (a clock at 0) is no overflow either.
    assert_eq!(
        ingest::retention_cutoff(i64::MIN + 5, Duration::from_nanos(10)),
        None
    );
}

/// A crash after the snapshot of a sealed segment was written but before
/// the next segment existed: the store must not append to the sealed
/// segment, whose records replay would then skip (re-sent data stored
/// twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_snapshot_and_next_segment_stores_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    {
        // One-byte segments: the first push seals segment 1 and snapshots.
        let (s, w) = open(cfg(tmp.path(), 1, None));
        w.push(push(1, 0, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
        close(s, w);
    }
    assert!(tmp.path().join("snapshot.json").exists());
    // The crash: the snapshot covers segment 1, segment 2 never got made.
    let segs = tmp.path().join("segments");
    for e in std::fs::read_dir(&segs).unwrap() {
        let p = e.unwrap().path();
        if std::fs::metadata(&p).unwrap().len() == 0 {
            std::fs::remove_file(p).unwrap();
        }
    }
    {
        let (s, w) = open(cfg(tmp.path(), 1 << 30, None));
        let r = w
            .push(push(1, 10, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
        assert_eq!(r.stored_lines, 10);
        close(s, w);
    }
    let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
    let r = w
        .push(push(1, 0, 20, Compression::Zstd), Default::default())
        .await
        .unwrap();
    assert_eq!((r.stored_lines, r.duplicate_lines), (0, 20));
    assert_eq!(all(&shared).len(), 20);
}

/// A failed fsync: nothing of that group is acknowledged, the writer takes
/// nothing more, and the store says it failed so the process exits; after a
/// restart a re-send stores the data exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_acknowledgements() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
        w.push(push(1, 0, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
        shared
            .faults
            .fail_next_sync
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let err = w
            .push(push(1, 10, 10, Compression::Zstd), Default::default())
            .await;
        assert!(err.is_err(), "not acknowledged");
        assert!(shared.failed.borrow().is_some(), "the store says it failed");
        // Even with a healthy disk again, nothing more is acknowledged.
        let err = w
            .push(push(2, 0, 10, Compression::Zstd), Default::default())
            .await;
        assert!(err.is_err(), "the writer stopped");
        close(shared, w);
    }
    let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
    let r = w
        .push(push(1, 0, 20, Compression::Zstd), Default::default())
        .await
        .unwrap();
    // The unsynced records may or may not have reached the disk: either way
    // every line is there once.
    assert_eq!(r.stored_lines + r.duplicate_lines, 20);
    let mut lines = all(&shared);
    assert_eq!(lines.len(), 20);
    lines.dedup();
    assert_eq!(lines.len(), 20);
}

/// One line from the future must not keep its segment, and everything after
/// it, from aging out; marks of files past retention are forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_timestamp_does_not_stall_retention_and_old_marks_go() {
    let tmp = tempfile::tempdir().unwrap();
    // Everything is past a retention of 1 ns by the time a segment is
    // sealed: each push seals one, and retention runs at each seal.
    let mut c = cfg(tmp.path(), 1, None);
    c.retention_age = Some(Duration::from_nanos(1));
    let (shared, w) = open(c);
    let mut b = LinesBuilder::default();
    b.push(0, 1_000, 0, 1, 0, b"old");
    // 2200-01-01: a clock far ahead, or a crafted push.
    b.push(0, 7_258_118_400_000_000_000, 100, 1, 0, b"future");
    let (payload, raw_len) =
        logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
    let mut skewed = push(1, 0, 2, Compression::Zstd);
    skewed.payload = payload;
    skewed.raw_len = raw_len;
    w.push(skewed, Default::default()).await.unwrap();
    for i in 0..3 {
        w.push(push(2, i * 10, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
    }
    // Retention follows the snapshots, which are written off the
    // acknowledgement path: soon, not at once.
    wait_until(|| {
        let lines = all(&shared);
        (!lines.iter().any(|l| l == "old" || l == "future")).then_some(())
    });
    // File 1's data is gone, and so is its mark, in the next snapshot.
    let marked = |path: &Path| -> Option<bool> {
        let snap: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        Some(
            snap["marks"]
                .as_array()?
                .iter()
                .any(|m| m[1].as_u64() == Some(1)),
        )
    };
    // Each push seals a segment and hands over a snapshot of the marks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while marked(&tmp.path().join("snapshot.json")) != Some(false) {
        assert!(std::time::Instant::now() < deadline, "file 1's mark stayed");
        w.push(push(3, i * 10, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    close(shared, w);
    let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
    let lines = all(&shared);
    assert!(
        !lines.iter().any(|l| l == "old" || l == "future"),
        "the future line's segment aged out: {lines:?}"
    );
    close(shared, w);
}

/// A block damaged on disk after it was stored: queries skip it and count
/// it, and still answer with everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_is_skipped_by_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
    for i in 0..3 {
        w.push(push(1, i * 10, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
    }
    let b = shared.index.read().unwrap().blocks[1].clone();
    let path = tmp
        .path()
        .join("segments")
        .join(format!("{:020}.seg", b.seq));
    let mut data = std::fs::read(&path).unwrap();
    let at = (b.offset + b.len - 2) as usize;
    data[at] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let lines = all(&shared);
    assert_eq!(lines.len(), 20, "the other blocks are served");
    assert!(lines.contains(&"file 1 line 0".to_string()));
    assert!(lines.contains(&"file 1 line 29".to_string()));
}

/// Without a limit the result is streamed block by block; it must come in
/// the same order as a limited query would give it, in both directions,
/// even when blocks overlap in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_results_are_in_order_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
    // Three files whose pushes interleave in time (timestamps 1_000_000+i).
    for round in 0..4 {
        for file in 1..=3u64 {
            w.push(
                push(file, round * 5, 5, Compression::Zstd),
                Default::default(),
            )
            .await
            .unwrap();
        }
    }
    let q = query::parse("{}").unwrap();
    let run = |limit: usize, direction: Direction| -> Vec<(i64, String)> {
        let b = Bounds {
            from: None,
            to: None,
            limit,
            direction,
        };
        query::execute(&shared, &q, b)
            .unwrap()
            .into_iter()
            .map(|e| (e.ts_unix_nano, String::from_utf8(e.line).unwrap()))
            .collect()
    };
    let fwd = run(0, Direction::Forward);
    assert_eq!(fwd.len(), 60);
    assert!(fwd.windows(2).all(|p| p[0].0 <= p[1].0), "{fwd:?}");
    assert_eq!(fwd, run(1000, Direction::Forward));
    let mut bwd = run(0, Direction::Backward);
    assert!(bwd.windows(2).all(|p| p[0].0 >= p[1].0), "{bwd:?}");
    assert_eq!(bwd, run(1000, Direction::Backward));
    bwd.sort();
    let mut f = fwd.clone();
    f.sort();
    assert_eq!(bwd, f, "the same lines");
}

/// Waits until `n` chunk files are in the index (the compactor runs in the
/// background after each sealed segment).
fn wait_compacted(shared: &ingest::Shared, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ix = shared.index.read().unwrap();
        if ix.chunk_files.len() >= n {
            return;
        }
        drop(ix);
        assert!(
            std::time::Instant::now() < deadline,
            "compaction did not happen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Many small pushes of interleaved streams become chunks of one stream
/// each: the push log's blocks leave memory, the segments go, queries give
/// the same answer, and re-sent lines are still recognised, after a
/// restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_line_once_and_frees_the_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    // 1 KiB segments: a few pushes each.
    let (shared, w) = open(cfg(tmp.path(), 1024, None));
    for i in 0..60u64 {
        // Three files, their pushes interleaved.
        w.push(
            push(i % 3, (i / 3) * 5, 5, Compression::Zstd),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let want = all(&shared);
    assert_eq!(want.len(), 300);
    let sealed = shared
        .snapshot_through
        .load(std::sync::atomic::Ordering::SeqCst) as usize;
    assert!(sealed >= 3, "{sealed} segments sealed");
    wait_compacted(&shared, sealed);
    {
        let ix = shared.index.read().unwrap();
        assert!(
            ix.blocks.iter().all(|b| b.seq > sealed as u64),
            "blocks of compacted segments are gone from memory"
        );
        // A chunk holds one stream.
        assert!(ix.chunk_files.values().all(|c| c.streams > 0));
    }
    let segs = std::fs::read_dir(tmp.path().join("segments"))
        .unwrap()
        .count();
    assert!(segs <= 2, "{segs} segments left");
    let mut got = all(&shared);
    assert_eq!(got.len(), 300);
    got.sort();
    let mut w2 = want.clone();
    w2.sort();
    assert_eq!(got, w2, "the same lines after compaction");
    // Per pod, in order.
    let q = query::parse(r#"{pod="pod-1"}"#).unwrap();
    let pod1: Vec<String> = query::execute(
        &shared,
        &q,
        Bounds {
            from: None,
            to: None,
            limit: 0,
            direction: Direction::Forward,
        },
    )
    .unwrap()
    .into_iter()
    .map(|e| String::from_utf8(e.line).unwrap())
    .collect();
    assert_eq!(pod1.len(), 100);
    assert_eq!(pod1[0], "file 1 line 0");
    assert_eq!(pod1[99], "file 1 line 99");
    let r = w
        .push(push(1, 0, 100, Compression::Zstd), Default::default())
        .await
        .unwrap();
    assert_eq!((r.stored_lines, r.duplicate_lines), (0, 100));
    close(shared, w);

    // After a restart: read from the chunk files' summaries, same answer.
    let (shared, w) = open(cfg(tmp.path(), 1024, None));
    assert!(!shared.index.read().unwrap().chunk_files.is_empty());
    assert_eq!(all(&shared).len(), 300);
    let r = w
        .push(push(2, 0, 100, Compression::Zstd), Default::default())
        .await
        .unwrap();
    assert_eq!((r.stored_lines, r.duplicate_lines), (0, 100));
}

/// A crash inside a compaction, at each point where the files on disk
/// differ: after a restart every acknowledged line is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_compaction_loses_and_doubles_nothing() {
    use logfleet_embedded::chunks::CrashPoint;
    for point in [CrashPoint::AfterData, CrashPoint::AfterIndex] {
        let tmp = tempfile::tempdir().unwrap();
        let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
        *shared.faults.compaction_crash.lock().unwrap() = Some(point);
        // A large segment limit, then one byte: the first push seals.
        for i in 0..5u64 {
            w.push(
                push(i % 2, i * 10, 10, Compression::Zstd),
                Default::default(),
            )
            .await
            .unwrap();
        }
        close(shared, w);
        // Reopen with tiny segments: the next push seals the segment, and
        // the compactor stops at the crash point.
        let (shared, w) = open(cfg(tmp.path(), 1, None));
        *shared.faults.compaction_crash.lock().unwrap() = Some(point);
        w.push(push(7, 0, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
        let cdir = tmp.path().join("chunks");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while shared.faults.compaction_crash.lock().unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "no compaction");
            std::thread::sleep(Duration::from_millis(10));
        }
        close(shared, w);
        let names: Vec<String> = std::fs::read_dir(&cdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        match point {
            CrashPoint::AfterData => assert!(
                names.iter().any(|n| n.ends_with(".data"))
                    && !names.iter().any(|n| n.ends_with(".index")),
                "{point:?}: {names:?}"
            ),
            CrashPoint::AfterIndex => assert!(
                names.iter().any(|n| n.ends_with(".index")),
                "{point:?}: {names:?}"
            ),
        }
        // Restart: recovery settles the files, then everything once.
        let (shared, w) = open(cfg(tmp.path(), 1 << 30, None));
        let mut got = all(&shared);
        got.sort();
        let mut want: Vec<String> = (0..5u64)
            .flat_map(|i| (i * 10..i * 10 + 10).map(move |l| format!("file {} line {l}", i % 2)))
            .chain((0..10).map(|l| format!("file 7 line {l}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "{point:?}");
        let r = w
            .push(push(0, 0, 10, Compression::Zstd), Default::default())
            .await
            .unwrap();
        assert_eq!((r.stored_lines, r.duplicate_lines), (0, 10), "{point:?}");
        close(shared, w);
    }
}

/// Pushes already the size of a chunk are copied into the chunk file as
/// they are (no second compression), next to small pushes that are
/// regrouped: every line stays there once, in order, after a restart too,
/// and re-sent ranges of either kind are still recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pushes_are_copied_by_compaction_and_small_ones_regrouped() {
    let tmp = tempfile::tempdir().unwrap();
    // Lines that do not compress: a block of 3,000 is far above 64 KiB.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut text = |file: u64, i: u64| {
        let mut s = format!("file {file} line {i} ");
        for _ in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push_str(&format!("{seed:016x}"));
        }
        s
    };
    let big = |file: u64, first: u64, n: u64, text: &mut dyn FnMut(u64, u64) -> String| {
        let mut b = LinesBuilder::default();
        let mut lines = Vec::new();
        for i in first..first + n {
            let t = text(file, i);
            b.push(0, 1_000_000 + i as i64, i * 200, 1, 0, t.as_bytes());
            lines.push(t);
        }
        let (payload, raw_len) =
            logfleet_proto::encode_payload(&b.finish(), Compression::Zstd, 1).unwrap();
        assert!(payload.len() as u64 > logfleet_embedded::chunks::COPY_RECORD);
        let req = PushRequest {
            node: "node-a".into(),
            compression: Compression::Zstd as i32,
            raw_len,
            ranges: vec![FileRange {
                file_id: file,
                labels: Some(FileLabels {
                    namespace: "ns".into(),
                    pod: format!("pod-{file}"),
                    ..Default::default()
                }),
                start: first * 200,
                end: (first + n) * 200,
                lines_end: 0,
            }],
            payload,
        };
        (req, lines)
    };
    // 64 KiB segments: each large push seals one.
    let (shared, w) = open(cfg(tmp.path(), 64 << 10, None));
    let mut want = Vec::new();
    for round in 0..4u64 {
        let (req, lines) = big(7, round * 3000, 3000, &mut text);
        assert_eq!(
            w.push(req, Default::default()).await.unwrap().stored_lines,
            3000
        );
        want.extend(lines);
        w.push(push(1, round * 5, 5, Compression::Zstd), Default::default())
            .await
            .unwrap();
        want.extend((round * 5..round * 5 + 5).map(|i| format!("file 1 line {i}")));
    }
    let sealed = shared
        .snapshot_through
        .load(std::sync::atomic::Ordering::SeqCst) as usize;
    assert!(sealed >= 3, "{sealed} segments sealed");
    wait_compacted(&shared, sealed);
    let check = |shared: &ingest::Shared| {
        let mut got = all(shared);
        got.sort();
        let mut w2 = want.clone();
        w2.sort();
        assert_eq!(got.len(), w2.len());
        assert!(got == w2, "the same lines after compaction");
        // One stream, in order, across copied records.
        let q = query::parse(r#"{pod="pod-7"}"#).unwrap();
        let b = Bounds {
            from: None,
            to: None,
            limit: 0,
            direction: Direction::Forward,
        };
        let pod7: Vec<String> = query::execute(shared, &q, b)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.line).unwrap())
            .collect();
        assert_eq!(pod7.len(), 12_000);
        assert!(pod7[0].starts_with("file 7 line 0 "));
        assert!(pod7[11_999].starts_with("file 7 line 11999 "));
    };
    check(&shared);
    close(shared, w);
    let (shared, w) = open(cfg(tmp.path(), 64 << 10, None));
    check(&shared);
    let (again, _) = big(7, 0, 3000, &mut text);
    let r = w.push(again, Default::default()).await.unwrap();
    assert_eq!((r.stored_lines, r.duplicate_lines), (0, 3000));
}

/// A chunk file whose index cannot be read is set aside at start-up (its
/// lines are not served), and the store says so on `/readyz` instead of
/// looking ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_file_set_aside_makes_the_store_degraded() {
    use logfleet_store::backend::{Backend, Health};
    let tmp = tempfile::tempdir().unwrap();
    let (shared, w) = open(cfg(tmp.path(), 1024, None));
    for i in 0..30u64 {
        w.push(
            push(i % 3, (i / 3) * 5, 5, Compression::Zstd),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let sealed = shared
        .snapshot_through
        .load(std::sync::atomic::Ordering::SeqCst) as usize;
    wait_compacted(&shared, sealed);
    close(shared, w);
    let reopen = || {
        logfleet_embedded::Embedded::open(
            cfg(tmp.path(), 1024, None),
            Metrics::new(&mut Registry::default()),
            Default::default(),
            64 << 20,
        )
        .expect("open store")
    };
    assert_eq!(reopen().health(), Health::Ready);
    let chunks = tmp.path().join("chunks");
    let index = std::fs::read_dir(&chunks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".index"))
        .expect("a chunk index");
    std::fs::write(&index, b"\x02\x00\x00\x00\xff\xff").unwrap();
    match reopen().health() {
        Health::Degraded(why) => assert!(why.contains("set aside"), "{why}"),
        h => panic!("{h:?}"),
    }
}
