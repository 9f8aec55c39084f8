//! The embedded store on a simulated disk that fails and crashes
//! (`logfleet_embedded::fs::SimFs`): full disks with short writes, EIO on
//! reads, fsyncs, renames and unlinks, and crashes that lose every write and
//! directory entry no fsync made durable. Agents are modelled as they
//! behave (a file's lines in order; a refused push sent again; after the
//! aggregator goes away, everything since the last acknowledgement sent
//! again), and after every crash the store must open and hold every
//! acknowledged line once, under its own labels.
//!
//! `LOGFLEET_FAULT_SEEDS=N` runs N seeds (CI runs the default, 24).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use logfleet_embedded::fs::{Op, SimFs};
use logfleet_embedded::ingest::{self, Shared, StoreConfig, Writer};
use logfleet_embedded::query::{self, Bounds};
use logfleet_proto::v1::{Compression, Direction, FileLabels, FileRange, PushRequest};
use logfleet_proto::LinesBuilder;
use logfleet_store::metrics::Metrics;
use prometheus_client::registry::Registry;

/// A small deterministic generator (xorshift64*): the seed alone decides
/// the run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const FILES: u64 = 12;
/// Files below this write lines stamped in 1970, which retention (a day)
/// may delete; the others write lines stamped now, which must all stay.
const OLD_FILES: u64 = 3;

fn data_dir() -> PathBuf {
    PathBuf::from("/var/lib/logfleet")
}

/// A disk whose `/var/lib` exists, durably (the volume the data directory
/// is on).
fn disk() -> SimFs {
    use logfleet_embedded::fs::Fs;
    let fs = SimFs::new();
    fs.create_dir_all(Path::new("/var/lib")).unwrap();
    for d in ["/", "/var", "/var/lib"] {
        fs.sync_dir(Path::new(d)).unwrap();
    }
    fs
}

fn cfg() -> StoreConfig {
    StoreConfig {
        data_dir: data_dir(),
        // Small segments: seals, snapshots, compaction and retention all
        // happen within a few dozen pushes.
        segment_bytes: 2 << 10,
        segment_age: Duration::from_secs(3600),
        retention_age: Some(Duration::from_secs(86_400)),
        retention_bytes: None,
        zstd_level: 1,
    }
}

fn text(file: u64, line: u64) -> String {
    format!(
        "file {file} line {line} {}",
        "x".repeat((line % 7) as usize * 9)
    )
}

/// A push of lines `[first, first + n)` of `file`; line `i` is 100 bytes of
/// the file at offset `i * 100`.
fn push(file: u64, first: u64, n: u64, now: i64) -> PushRequest {
    let mut b = LinesBuilder::default();
    for i in first..first + n {
        let ts = if file < OLD_FILES {
            1_000_000 + i as i64
        } else {
            now + i as i64
        };
        b.push(0, ts, i * 100, 1, 0, text(file, i).as_bytes());
    }
    let c = if file.is_multiple_of(2) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let (payload, raw_len) = logfleet_proto::encode_payload(&b.finish(), c, 1).unwrap();
    PushRequest {
        node: format!("node-{}", file % 3),
        compression: c as i32,
        raw_len,
        ranges: vec![FileRange {
            file_id: file,
            labels: Some(FileLabels {
                namespace: "ns".into(),
                pod: format!("pod-{file}"),
                container: "c".into(),
                ..Default::default()
            }),
            start: first * 100,
            end: (first + n) * 100,
            lines_end: 0,
        }],
        payload,
    }
}

/// An agent's view of one file.
#[derive(Default, Clone)]
struct Agent {
    /// Lines acknowledged so far (what must be stored).
    acked: u64,
    /// Where the agent reads next: its saved checkpoint after it crashed,
    /// which may lie before `acked` (saves are periodic), so it sends
    /// acknowledged lines again.
    next: u64,
    /// A push sent and not acknowledged, to send again as it was.
    pending: Option<(u64, u64)>,
}

fn open(fs: &SimFs) -> (Arc<Shared>, Writer) {
    ingest::open_on(
        Arc::new(fs.clone()),
        cfg(),
        Metrics::new(&mut Registry::default()),
    )
    .unwrap_or_else(|e| panic!("the store must open after any crash: {e}"))
}

/// Every stored line: text -> (times stored, pod label).
fn stored(shared: &Shared) -> HashMap<String, (usize, String)> {
    let q = query::parse("{}").unwrap();
    let b = Bounds {
        from: None,
        to: None,
        limit: 0,
        direction: Direction::Forward,
    };
    let mut out: HashMap<String, (usize, String)> = HashMap::new();
    for e in query::execute(shared, &q, b).unwrap() {
        let pod = e.labels.unwrap_or_default().pod;
        let t = String::from_utf8(e.line).unwrap();
        let v = out.entry(t).or_insert((0, pod));
        v.0 += 1;
    }
    out
}

/// Nothing acknowledged is lost (lines stamped now), nothing is stored
/// twice, every line is under its own file's labels, and nothing is there
/// that was never pushed.
fn check(seed: u64, step: usize, shared: &Shared, agents: &[Agent], sent: &[u64]) {
    let got = stored(shared);
    for (t, (n, pod)) in &got {
        assert_eq!(*n, 1, "seed {seed} step {step}: {t:?} stored {n} times");
        let mut w = t.split(' ');
        let file: u64 = w.nth(1).and_then(|f| f.parse().ok()).unwrap_or(u64::MAX);
        let line: u64 = w.nth(1).and_then(|l| l.parse().ok()).unwrap_or(u64::MAX);
        assert_eq!(
            pod,
            &format!("pod-{file}"),
            "seed {seed} step {step}: {t:?} under another pod's labels"
        );
        assert!(
            file < FILES && line < sent[file as usize],
            "seed {seed} step {step}: {t:?} was never pushed"
        );
    }
    for (file, a) in agents.iter().enumerate().skip(OLD_FILES as usize) {
        for line in 0..a.acked {
            let t = text(file as u64, line);
            assert!(
                got.contains_key(&t),
                "seed {seed} step {step}: acknowledged {t:?} is lost"
            );
        }
    }
}

/// Pushes lines `[10 * from, 10 * to)` of `file`, ten a push, each
/// acknowledged.
async fn push_range(w: &Writer, file: u64, from: u64, to: u64, now: i64) {
    for i in from..to {
        w.push(push(file, i * 10, 10, now), Default::default())
            .await
            .unwrap();
    }
}

/// A store on a fresh simulated disk, and the time lines are stamped with.
fn start() -> (SimFs, i64, Arc<Shared>, Writer) {
    let fs = disk();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let (shared, w) = open(&fs);
    (fs, now, shared, w)
}

/// Waits until at least `files` chunk files exist and every sealed segment
/// is compacted, so that no compaction opens files while a test counts.
fn compacted(shared: &Shared, files: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let active = shared.active_seq.load(std::sync::atomic::Ordering::SeqCst);
        {
            let ix = shared.index.read().unwrap();
            if ix.chunk_files.len() >= files && ix.blocks.iter().all(|b| b.seq >= active) {
                return;
            }
        }
        assert!(std::time::Instant::now() < deadline, "not compacted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens the store on `fs` in place of the one running (which goes on
/// writing to its own, now lost, disk until it stops).
fn restart(fs: &SimFs, shared: &mut Arc<Shared>, w: &mut Writer) {
    let (s2, w2) = open(fs);
    let old_s = std::mem::replace(shared, s2);
    let old_w = std::mem::replace(w, w2);
    close(old_s, old_w);
}

/// Closes a store and waits until its threads have let go of it.
fn close(shared: Arc<Shared>, w: Writer) {
    let weak = Arc::downgrade(&shared);
    drop(w);
    drop(shared);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while weak.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not stop"
        );
        std::thread::yield_now();
    }
}

/// Plans one fault: a failed call of some kind soon, or a disk that is
/// full a few bytes from now.
fn plan_fault(rng: &mut Rng, fs: &SimFs) {
    let ops = [
        Op::Write,
        Op::Sync,
        Op::SyncDir,
        Op::Rename,
        Op::Remove,
        Op::Open,
        Op::Read,
    ];
    if rng.chance(30) {
        fs.set_capacity(Some(fs.used() + rng.below(4096)));
    } else {
        let op = ops[rng.below(ops.len() as u64) as usize];
        fs.fail_nth(op, 1 + rng.below(3));
    }
}

async fn run(seed: u64, steps: usize) -> (u64, u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut fs = disk();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let (mut shared, mut w) = open(&fs);
    let mut agents = vec![Agent::default(); FILES as usize];
    // Lines of each file pushed at least once (what may be stored).
    let mut sent = vec![0u64; FILES as usize];
    let mut crashes = 0;
    let mut injected = 0;
    for step in 0..steps {
        let r = rng.below(100);
        if r < 15 {
            plan_fault(&mut rng, &fs);
        } else if r < 18 {
            fs.heal();
        } else if r < 25 {
            // An agent crashes; its last saved checkpoint was older.
            let a = &mut agents[rng.below(FILES) as usize];
            a.next = rng.below(a.next + 1);
            a.pending = None;
        } else if r < 29 {
            // A crash of the machine: what no fsync made durable is gone.
            injected += fs.injected();
            fs = fs.crash();
            restart(&fs, &mut shared, &mut w);
            crashes += 1;
            for a in &mut agents {
                // The agent sends again from its checkpoint.
                a.pending = None;
            }
            check(seed, step, &shared, &agents, &sent);
        } else {
            let file = rng.below(FILES);
            let a = &mut agents[file as usize];
            let (first, n) = a.pending.unwrap_or((a.next, 1 + rng.below(12)));
            sent[file as usize] = sent[file as usize].max(first + n);
            match w.push(push(file, first, n, now), Default::default()).await {
                Ok(_) => {
                    a.acked = a.acked.max(first + n);
                    a.next = first + n;
                    a.pending = None;
                }
                Err(_) => {
                    a.pending = Some((first, n));
                    if shared.failed.borrow().is_some() {
                        // A failed fsync: the aggregator exits; kubelet
                        // restarts it on the same disk, as after a crash.
                        injected += fs.injected();
                        fs = fs.crash();
                        restart(&fs, &mut shared, &mut w);
                        crashes += 1;
                        for a in &mut agents {
                            a.pending = None;
                        }
                        check(seed, step, &shared, &agents, &sent);
                    }
                }
            }
        }
    }
    // Space and health return: everything pending goes in, and survives a
    // last crash.
    fs.heal();
    for file in 0..FILES {
        let a = agents[file as usize].clone();
        let (first, n) = a.pending.unwrap_or((a.next, 3));
        sent[file as usize] = sent[file as usize].max(first + n);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match w.push(push(file, first, n, now), Default::default()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "seed {seed}: pushes still refused after the disk healed: {e}"
                    );
                    if shared.failed.borrow().is_some() {
                        injected += fs.injected();
                        fs = fs.crash();
                        restart(&fs, &mut shared, &mut w);
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
        let a = &mut agents[file as usize];
        a.acked = a.acked.max(first + n);
        a.next = first + n;
        a.pending = None;
    }
    check(seed, steps, &shared, &agents, &sent);
    injected += fs.injected();
    let image = fs.crash();
    close(shared, w);
    let (shared, w) = open(&image);
    check(seed, steps + 1, &shared, &agents, &sent);
    close(shared, w);
    (crashes, injected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_lines_survive_faults_and_crashes() {
    let seeds: u64 = std::env::var("LOGFLEET_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let (mut crashes, mut injected) = (0, 0);
    for seed in 0..seeds {
        let (c, i) = run(seed, 400).await;
        crashes += c;
        injected += i;
    }
    // The run did what it is for.
    eprintln!("{seeds} seeds: {crashes} crashes, {injected} faults injected");
    assert!(crashes >= seeds, "{crashes} crashes over {seeds} seeds");
    assert!(
        injected >= 10 * seeds,
        "{injected} faults over {seeds} seeds"
    );
}

/// A seal whose next segment cannot be created (a failed open, as EMFILE
/// or a full disk gives) must not leave appends going to a segment the
/// snapshot already covers: after a crash their marks would not be
/// replayed and re-sent lines would be stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_that_cannot_open_the_next_segment_stores_nothing_twice() {
    let (fs, now, shared, w) = start();
    // Every open of a new segment fails from now on (the first few).
    fs.only_paths(&["/segments/"]);
    for n in 1..=50 {
        fs.fail_nth(Op::Open, n);
    }
    let mut acked = 0;
    for i in 0..40 {
        if w.push(push(5, i * 10, 10, now), Default::default())
            .await
            .is_ok()
        {
            acked = i * 10 + 10;
        }
    }
    assert!(acked > 0);
    let image = fs.crash();
    close(shared, w);
    let (shared, w) = open(&image);
    // The agent sends everything again.
    for i in 0..acked / 10 {
        w.push(push(5, i * 10, 10, now), Default::default())
            .await
            .unwrap();
    }
    let got = stored(&shared);
    for line in 0..acked {
        let t = text(5, line);
        assert_eq!(got.get(&t).map(|v| v.0), Some(1), "{t:?}");
    }
    close(shared, w);
}

/// A seal's snapshot serialises and fsyncs every de-duplication mark:
/// hundreds of MB at a large fleet. It must not hold up acknowledgements:
/// with the snapshot's fsync stalled, pushes are still acknowledged, and the
/// segments it covers are compacted only once it is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_snapshot_does_not_hold_up_acknowledgements() {
    let (fs, now, shared, w) = start();
    let hold = fs.hold(Op::Sync, "snapshot.json.tmp");
    // 2 KiB segments: these seal several times while the snapshot waits.
    let pushes = async {
        push_range(&w, 6, 0, 40, now).await;
    };
    tokio::time::timeout(Duration::from_secs(60), pushes)
        .await
        .expect("acknowledged while the snapshot's fsync is stalled");
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(shared.snapshot_through.load(SeqCst), 0, "not durable yet");
    assert_eq!(
        shared.index.read().unwrap().chunk_files.len(),
        0,
        "nothing compacted before"
    );
    drop(hold);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while shared.snapshot_through.load(SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot was never written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stored(&shared).len(), 400);
    // And after a crash everything is there once, the re-sent lines too.
    let image = fs.crash();
    close(shared, w);
    let (shared, w) = open(&image);
    push_range(&w, 6, 0, 40, now).await;
    let got = stored(&shared);
    assert_eq!(got.len(), 400);
    assert!(got.values().all(|v| v.0 == 1));
    close(shared, w);
}

/// While a snapshot cannot be written (stalled here; a full disk would keep
/// it failing), the writer's idle housekeeping still runs: a segment still
/// seals by age, which the wait for the snapshot once put off for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_housekeeping_goes_on_while_a_snapshot_waits() {
    let fs = disk();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let mut c = cfg();
    c.segment_age = Duration::from_secs(1);
    let (shared, w) = ingest::open_on(
        Arc::new(fs.clone()),
        c,
        Metrics::new(&mut Registry::default()),
    )
    .unwrap();
    let hold = fs.hold(Op::Sync, "snapshot.json.tmp");
    // Enough to seal one segment by size: its snapshot waits.
    push_range(&w, 9, 0, 20, now).await;
    use std::sync::atomic::Ordering::SeqCst;
    let sealed = shared.active_seq.load(SeqCst);
    assert!(sealed > 1, "a seal by size");
    // A few lines more, then nothing: the age seal must still come.
    push_range(&w, 9, 20, 21, now).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while shared.active_seq.load(SeqCst) == sealed {
        assert!(
            std::time::Instant::now() < deadline,
            "no seal by age while the snapshot waits"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(hold);
    close(shared, w);
}

/// A query over a long range once held two descriptors for every chunk
/// file in it until its end (thousands over a week), and the EMFILE it
/// caused reached seals and snapshots. It holds at most
/// `MAX_OPEN_CHUNK_FILES` chunk files now, and still reads every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_holds_a_bounded_number_of_files() {
    let (fs, now, shared, w) = start();
    push_range(&w, 7, 0, 400, now).await;
    compacted(&shared, 40);
    let idle = fs.open_handles();
    let q = query::parse("{}").unwrap();
    let b = Bounds {
        from: None,
        to: None,
        limit: 0,
        direction: Direction::Forward,
    };
    let (mut most, mut lines) = (0, 0);
    query::visit(&shared, &q, b, &Default::default(), &mut |_| {
        most = most.max(fs.open_handles());
        lines += 1;
        true
    })
    .unwrap();
    assert_eq!(lines, 4000);
    let files = shared.index.read().unwrap().chunk_files.len();
    eprintln!("{files} chunk files, at most {most} open");
    let segments = shared.index.read().unwrap().blocks.len() as u64 + 2;
    let cap = query::MAX_OPEN_CHUNK_FILES as u64;
    assert!(
        most <= idle + cap + segments,
        "{most} files open at once (idle {idle}, cap {cap})"
    );
    close(shared, w);
}

/// A chunk file that cannot be opened (EMFILE) while a query reads it is
/// said and counted, as an unreadable block is, not skipped in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_file_that_cannot_be_opened_is_counted() {
    let (fs, now, shared, w) = start();
    push_range(&w, 8, 0, 100, now).await;
    compacted(&shared, 5);
    let before = shared.metrics.damaged_records.get();
    fs.only_paths(&[".data"]);
    fs.fail_nth(Op::Open, 1);
    assert!(stored(&shared).len() < 1000);
    assert_eq!(shared.metrics.damaged_records.get(), before + 1);
    fs.heal();
    assert_eq!(stored(&shared).len(), 1000);
    close(shared, w);
}

/// A block that cannot be read while its segment is compacted (a passing
/// EIO) must not be skipped and its segment deleted: once the read works
/// again every line is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_error_during_compaction_loses_nothing() {
    let (fs, now, shared, w) = start();
    // The compactor's reads of segments fail a few times.
    fs.only_paths(&["/segments/"]);
    for n in 1..=3 {
        fs.fail_nth(Op::Read, n);
    }
    push_range(&w, 4, 0, 60, now).await;
    // Compaction runs on its own thread; wait until it has met the faults.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fs.injected() < 3 {
        assert!(std::time::Instant::now() < deadline, "no compaction read");
        std::thread::sleep(Duration::from_millis(5));
    }
    fs.heal();
    let got = stored(&shared);
    for line in 0..600 {
        assert!(got.contains_key(&text(4, line)), "line {line} lost");
    }
    // And after a crash, from what is durable.
    let image = fs.crash();
    close(shared, w);
    let (shared, w) = open(&image);
    let got = stored(&shared);
    assert_eq!(got.len(), 600);
    close(shared, w);
}

/// After failed writes on a full disk, no temporary file is left to hold
/// the space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_no_temporary_files() {
    let (fs, now, shared, w) = start();
    push_range(&w, 3, 0, 20, now).await;
    fs.set_capacity(Some(fs.used() + 3000));
    for i in 20..200 {
        let _ = w.push(push(3, i * 10, 10, now), Default::default()).await;
    }
    // A compaction under way holds one for a moment; a leftover stays.
    let root = data_dir();
    let tmp = || {
        let mut tmp = Vec::new();
        for d in [root.clone(), root.join("chunks"), root.join("segments")] {
            for name in logfleet_embedded::fs::Fs::read_dir(&fs, &d).unwrap() {
                if name.ends_with(".tmp") {
                    tmp.push(Path::new(&d).join(name));
                }
            }
        }
        tmp
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tmp().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "temporary files left on a full disk: {:?}",
            tmp()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    close(shared, w);
}

#[test]
fn the_generator_is_deterministic() {
    let (mut a, mut b) = (Rng(7), Rng(7));
    let x: BTreeMap<u64, u64> = (0..10).map(|i| (i, a.next())).collect();
    let y: BTreeMap<u64, u64> = (0..10).map(|i| (i, b.next())).collect();
    assert_eq!(x, y);
}
