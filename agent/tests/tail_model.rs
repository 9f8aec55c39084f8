//! Model-based test of the tailer: random sequences of writes, kubelet
//! rotations, gzips, truncations, agent crashes (restart from the last
//! saved checkpoint), lost acknowledgements and pod deletion are applied to
//! real files; the batches the tailer produces are fed to a model of the
//! aggregator's de-duplication. Whatever the sequence, every written line
//! must come out exactly once after de-duplication.
//!
//! Streams interleave as CRI-O writes them: a program prints without a
//! newline (`stdout P`), the other stream writes whole lines meanwhile, and
//! the `F` comes many polls later.
//!
//! Lines are grouped as Java records: stack traces (a header and `at`
//! frames, some frames in P/F chunks) must come out whole, once, whatever
//! happens in the middle of one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logfleet_agent::batch::BatchBuilder;
use logfleet_agent::checkpoint::Checkpoints;
use logfleet_agent::discover::{self, Filter};
use logfleet_agent::tail::{TailConfig, Tailer};
use logfleet_proto::v1::Compression;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    /// Write this many lines; the bool asks for one line in P/F chunks.
    Write(usize, bool),
    /// Kubelet rotation: rename the live file, start a new one.
    Rotate,
    /// Gzip the oldest uncompressed rotated file (through .tmp).
    Gzip,
    /// Let the tailer read; `ack` false loses the acknowledgement.
    Poll { ack: bool, save: bool },
    /// Kill the agent: in-flight batches and unsaved checkpoints are lost.
    Crash,
    /// Once everything was read, truncate the live file and write anew.
    Truncate,
    /// logrotate's `copytruncate`, whatever was read: copy the live file
    /// beside it, then truncate it. Lines written since the last read are
    /// only in the copy.
    CopyTruncate,
    /// Once everything was read, truncate the live file and write this
    /// many lines before the tailer looks again: it must not take the new
    /// content for the rest of the old.
    TruncateRegrow(usize),
    /// Container restart: the next number's file.
    Restart,
    /// stdout prints without a newline: a `P` chunk that stays open (lines
    /// written meanwhile go to stderr) until `Close`.
    Open,
    /// The open stdout line gets its `F`.
    Close,
    /// A Java stack trace of this many frames; the bool splits a frame
    /// into P/F chunks. It takes more frames until anything else is written.
    Trace(usize, bool),
    /// More frames of the open trace.
    Frames(usize, bool),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1usize..30, any::<bool>()).prop_map(|(n, p)| Action::Write(n, p)),
        2 => Just(Action::Rotate),
        1 => Just(Action::Gzip),
        4 => (any::<bool>(), any::<bool>()).prop_map(|(ack, save)| Action::Poll { ack, save }),
        1 => Just(Action::Crash),
        1 => Just(Action::Truncate),
        1 => Just(Action::CopyTruncate),
        1 => (1usize..20).prop_map(Action::TruncateRegrow),
        1 => Just(Action::Restart),
        2 => Just(Action::Open),
        2 => Just(Action::Close),
        3 => (1usize..6, any::<bool>()).prop_map(|(n, p)| Action::Trace(n, p)),
        2 => (1usize..4, any::<bool>()).prop_map(|(n, p)| Action::Frames(n, p)),
    ]
}

struct World {
    dir: PathBuf,
    restart: u32,
    rotations: u32,
    next: u64,
    written: Vec<String>,
    /// The stdout line waiting for its `F`: its text and timestamp.
    open: Option<(String, String)>,
    /// The trace still taking frames: its stream and lines.
    trace: Option<(&'static str, Vec<String>)>,
}

/// Timestamps from the clock, as runtimes write them: the agent ends a
/// record at the end of the file only once the clock is a timeout past its
/// last line, which holds for real runtimes' stamps.
fn stamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The multi-line timeout of the model: short, as the drain waits it out.
const GROUP_TIMEOUT: Duration = Duration::from_millis(100);

impl World {
    fn live(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.restart))
    }

    /// The name kubelet gives the live file's next rotation.
    fn next_rotated(&mut self) -> PathBuf {
        self.rotations += 1;
        self.dir.join(format!(
            "{}.log.20261127-{:06}",
            self.restart, self.rotations
        ))
    }

    /// Cuts the live file to nothing, in place.
    fn truncate_live(&self) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.live())
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    fn append(&self, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.live())
            .unwrap();
        f.write_all(data).unwrap();
    }

    fn write(&mut self, n: usize, partial: bool) {
        self.end_trace();
        let mut buf = Vec::new();
        // While stdout waits for its F, whole lines come from stderr.
        let stream = self.stream();
        for i in 0..n {
            self.next += 1;
            let text = format!("line-{}", self.next);
            let ts = stamp();
            if partial && i == 0 {
                let (a, b) = text.split_at(3);
                buf.extend_from_slice(
                    format!("{ts} {stream} P {a}\n{ts} {stream} F {b}\n").as_bytes(),
                );
            } else {
                buf.extend_from_slice(format!("{ts} {stream} F {text}\n").as_bytes());
            }
            self.written.push(text);
        }
        self.append(&buf);
    }

    /// The stream whole lines go to now: stderr while stdout waits for
    /// its `F`.
    fn stream(&self) -> &'static str {
        if self.open.is_some() {
            "stderr"
        } else {
            "stdout"
        }
    }

    /// A stack trace: a header and `n` frames; the bool splits a frame
    /// into P/F chunks. It stays open for more frames until anything else
    /// is written to its stream.
    fn trace(&mut self, n: usize, partial: bool) {
        self.end_trace();
        self.next += 1;
        let k = self.next;
        let header =
            format!("Exception in thread \"main\" java.lang.IllegalStateException: trace-{k}");
        let stream = self.stream();
        self.append(format!("{} {stream} F {header}\n", stamp()).as_bytes());
        self.trace = Some((stream, vec![header]));
        self.frames(n, partial);
    }

    /// More frames of the open trace.
    fn frames(&mut self, n: usize, partial: bool) {
        let Some((stream, lines)) = self.trace.as_mut() else {
            return;
        };
        let mut buf = Vec::new();
        for i in 0..n {
            let l = format!(
                "\tat com.example.F{}.f{}(F.java:{i})",
                self.next,
                lines.len()
            );
            let ts = stamp();
            if partial && i == 0 {
                let (a, b) = l.split_at(4);
                buf.extend_from_slice(
                    format!("{ts} {stream} P {a}\n{ts} {stream} F {b}\n").as_bytes(),
                );
            } else {
                buf.extend_from_slice(format!("{ts} {stream} F {l}\n").as_bytes());
            }
            lines.push(l);
        }
        self.append(&buf);
    }

    /// The open trace is complete: one record.
    fn end_trace(&mut self) {
        if let Some((_, lines)) = self.trace.take() {
            self.written.push(lines.join("\n"));
        }
    }

    /// stdout starts a line it does not finish yet.
    fn open(&mut self) {
        if self.open.is_some() {
            return;
        }
        self.end_trace();
        self.next += 1;
        let text = format!("open-{}", self.next);
        let ts = stamp();
        self.append(format!("{ts} stdout P {}\n", &text[..4]).as_bytes());
        self.open = Some((text, ts));
    }

    /// The open stdout line gets its end.
    fn close(&mut self) {
        self.end_trace();
        if let Some((text, ts)) = self.open.take() {
            self.append(format!("{ts} stdout F {}\n", &text[4..]).as_bytes());
            self.written.push(text);
        }
    }

    fn rotated(&self, gz: bool) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n.contains(".log.") && n.ends_with(".gz") == gz && !n.ends_with(".tmp")
            })
            .collect();
        v.sort();
        v
    }
}

/// The aggregator's de-duplication, as a model: per file, every line below
/// the range end is stored, and lines stored past it (while the other
/// stream's line was open) are remembered one by one.
#[derive(Default)]
struct Store {
    marks: HashMap<u64, (u64, std::collections::BTreeSet<u64>)>,
    lines: Vec<String>,
}

impl Store {
    fn push(&mut self, req: &logfleet_proto::v1::PushRequest) {
        let batch = logfleet_proto::decode_payload(req, Default::default()).unwrap();
        let mut ahead: Vec<Vec<u64>> = vec![Vec::new(); req.ranges.len()];
        for l in batch.lines() {
            let r = &req.ranges[l.range as usize];
            assert!(
                l.offset >= r.start && l.offset < r.end.max(r.lines_end),
                "line at {} outside its range [{}, {}) reaching {}: the aggregator refuses the batch",
                l.offset,
                r.start,
                r.end,
                r.lines_end
            );
            let (end, seen) = self.marks.entry(r.file_id).or_default();
            if l.offset >= *end && !seen.contains(&l.offset) {
                self.lines.push(String::from_utf8(l.text.to_vec()).unwrap());
                if l.offset >= r.end {
                    ahead[l.range as usize].push(l.offset);
                }
            }
        }
        for (r, ahead) in req.ranges.iter().zip(ahead) {
            let (end, seen) = self.marks.entry(r.file_id).or_default();
            *end = (*end).max(r.end);
            seen.extend(ahead);
            seen.retain(|o| o >= end);
        }
    }
}

/// Reads of `chunk` bytes, and at most `budget` bytes per file and pass:
/// small values end reads in the middle of records.
fn cfg(chunk: usize, budget: usize) -> TailConfig {
    TailConfig {
        max_line: 1 << 20,
        partial_timeout: Duration::from_secs(3600),
        rotate_wait: Duration::ZERO,
        read_budget: budget,
        read_chunk: chunk,
        max_open_files: 1024,
        multiline: Some(logfleet_agent::multiline::Detector::Java),
        group: logfleet_agent::multiline::GroupConfig {
            timeout: GROUP_TIMEOUT,
            ..Default::default()
        },
    }
}

/// Batches stored but not acknowledged: the shipper retries them, in
/// order, before anything newer (or a crash loses them).
type Unacked = Vec<logfleet_agent::batch::Sealed>;

fn ack_all(store: &mut Store, ckpt: &Arc<Mutex<Checkpoints>>, unacked: &mut Unacked) {
    for sealed in unacked.drain(..) {
        store.push(&sealed.request);
        let mut c = ckpt.lock().unwrap();
        for e in &sealed.ends {
            c.advance(e.file_id, &e.path, e.end);
        }
    }
}

/// Polls, acknowledging everything, until nothing moves and no record is
/// open (the last one goes a timeout after its last line).
fn drain(
    tailer: &mut Tailer,
    root: &Path,
    store: &mut Store,
    ckpt: &Arc<Mutex<Checkpoints>>,
    unacked: &mut Unacked,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let moved = poll(tailer, root, store, ckpt, unacked, true);
        if !moved && tailer.open_records() == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "records never closed");
    }
}

fn poll(
    tailer: &mut Tailer,
    root: &Path,
    store: &mut Store,
    ckpt: &Arc<Mutex<Checkpoints>>,
    unacked: &mut Unacked,
    ack: bool,
) -> bool {
    if ack {
        ack_all(store, ckpt, unacked);
    }
    tailer.apply_scan(discover::scan(root, &Filter::default()));
    let mut b = BatchBuilder::default();
    let progress = tailer.poll(&mut b, &mut |_| true);
    if !b.is_empty() {
        let sealed = b.seal("n", Compression::None, 0).unwrap();
        // Stored, and the acknowledgement is lost unless `ack`.
        store.push(&sealed.request);
        unacked.push(sealed);
        if ack {
            ack_all(store, ckpt, unacked);
        }
    }
    progress
}

fn run(actions: Vec<Action>) {
    run_with(actions, 64 << 10, 1 << 20)
}

fn run_with(actions: Vec<Action>, chunk: usize, budget: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = root.join("ns_pod_uid/c");
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = World {
        dir,
        restart: 0,
        rotations: 0,
        next: 0,
        written: Vec::new(),
        open: None,
        trace: None,
    };
    let ckpt = Arc::new(Mutex::new(Checkpoints::default()));
    let mut saved = Checkpoints::default();
    let mut tailer = Tailer::new(cfg(chunk, budget), ckpt.clone());
    let mut store = Store::default();
    let mut unacked = Unacked::new();
    let un = &mut unacked;
    for a in actions {
        // The runtime reopens its file, and kubelet truncates or a container
        // restarts, only between lines in this model: a line open across a
        // rotation arrives as two lines, which is another test's subject.
        if matches!(
            a,
            Action::Rotate
                | Action::Truncate
                | Action::CopyTruncate
                | Action::TruncateRegrow(_)
                | Action::Restart
        ) {
            w.close();
            w.end_trace();
        }
        match a {
            Action::Write(n, p) => w.write(n, p),
            Action::Trace(n, p) => w.trace(n, p),
            Action::Frames(n, p) => w.frames(n, p),
            Action::Open => w.open(),
            Action::Close => w.close(),
            Action::Rotate => {
                if w.live().exists() {
                    let to = w.next_rotated();
                    std::fs::rename(w.live(), to).unwrap();
                }
            }
            Action::Gzip => {
                if let Some(p) = w.rotated(false).first() {
                    let data = std::fs::read(p).unwrap();
                    let tmp = PathBuf::from(format!("{}.tmp", p.display()));
                    let mut e = flate2::write::GzEncoder::new(
                        std::fs::File::create(&tmp).unwrap(),
                        Default::default(),
                    );
                    e.write_all(&data).unwrap();
                    e.finish().unwrap();
                    std::fs::rename(&tmp, format!("{}.gz", p.display())).unwrap();
                    std::fs::remove_file(p).unwrap();
                }
            }
            Action::Poll { ack, save } => {
                poll(&mut tailer, &root, &mut store, &ckpt, un, ack);
                if save {
                    saved = ckpt.lock().unwrap().clone();
                }
            }
            Action::Crash => {
                un.clear();
                *ckpt.lock().unwrap() = saved.clone();
                tailer = Tailer::new(cfg(chunk, budget), ckpt.clone());
            }
            Action::Truncate => {
                drain(&mut tailer, &root, &mut store, &ckpt, un);
                poll(&mut tailer, &root, &mut store, &ckpt, un, true);
                if w.live().exists() {
                    std::fs::File::create(w.live()).unwrap();
                    // The next poll must see the file shorter before it grows
                    // back, or the truncation is invisible (as for any tailer).
                    poll(&mut tailer, &root, &mut store, &ckpt, un, true);
                }
            }
            Action::CopyTruncate => {
                if w.live().exists() {
                    let to = w.next_rotated();
                    std::fs::copy(w.live(), to).unwrap();
                    w.truncate_live();
                }
            }
            Action::TruncateRegrow(n) => {
                drain(&mut tailer, &root, &mut store, &ckpt, un);
                if w.live().exists() {
                    w.truncate_live();
                    // At least as long as before, so that only the first
                    // line tells.
                    w.write(n.max(30), false);
                }
            }
            Action::Restart => w.restart += 1,
        }
    }
    w.close();
    w.end_trace();
    // Drain: poll until nothing moves and no record is open (the last one
    // goes a timeout after its last line), acknowledging everything.
    drain(&mut tailer, &root, &mut store, &ckpt, un);
    poll(&mut tailer, &root, &mut store, &ckpt, un, true);
    let mut got = store.lines.clone();
    got.sort();
    let mut want = w.written.clone();
    want.sort();
    assert_eq!(
        got.len(),
        want.len(),
        "stored {} of {} lines: {got:#?} vs {want:#?}",
        got.len(),
        want.len()
    );
    assert_eq!(got, want);
    // Deleting the pod: finished files are forgotten once gone.
    std::fs::remove_dir_all(root.join("ns_pod_uid")).unwrap();
    poll(&mut tailer, &root, &mut store, &ckpt, un, true);
    poll(&mut tailer, &root, &mut store, &ckpt, un, true);
    assert_eq!(tailer.open_files(), 0);
    assert!(
        ckpt.lock().unwrap().files.is_empty(),
        "checkpoints of deleted files are dropped"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn every_line_once_whatever_happens(actions in proptest::collection::vec(action(), 1..40)) {
        run(actions);
    }

    /// The same with reads that end in the middle of records.
    #[test]
    fn every_line_once_with_tiny_reads(
        actions in proptest::collection::vec(action(), 1..30),
        chunk in 1usize..48,
        budget in 1usize..200,
    ) {
        run_with(actions, chunk, budget);
    }
}

#[test]
fn crash_after_gzip_of_unacked_file() {
    use Action::*;
    run(vec![
        Write(10, false),
        Poll {
            ack: true,
            save: true,
        },
        Write(5, true),
        Poll {
            ack: false,
            save: false,
        },
        Crash,
        Rotate,
        Write(3, false),
        Rotate,
        Gzip,
        Write(2, false),
    ]);
}

/// logrotate's copytruncate between two reads: the lines written after
/// the last read are only in the copy, and must come out of it once.
#[test]
fn copy_truncate_loses_nothing_written_after_the_last_read() {
    use Action::*;
    run(vec![
        Write(5, false),
        Poll {
            ack: true,
            save: true,
        },
        Write(7, false),
        CopyTruncate,
        Write(3, false),
        Poll {
            ack: true,
            save: true,
        },
        Write(2, false),
    ]);
}

/// Copy-truncate, then the copy compressed before the tailer looked: it
/// reads on inside the gzip.
#[test]
fn copy_truncate_then_gzip_of_the_copy() {
    use Action::*;
    run(vec![
        Open,
        Poll {
            ack: false,
            save: false,
        },
        CopyTruncate,
        Gzip,
    ]);
}

/// Truncated and written again to a larger size between two looks: the
/// size alone does not show it; the first line does.
#[test]
fn truncate_and_regrowth_between_two_reads_is_seen() {
    use Action::*;
    run(vec![Write(10, false), TruncateRegrow(30), Write(1, false)]);
}

#[test]
fn truncate_rotate_gzip_truncate() {
    use Action::*;
    run(vec![
        Write(1, false),
        Truncate,
        Write(1, false),
        Rotate,
        Gzip,
        Write(1, false),
        Truncate,
    ]);
}

/// The CRI-O case from issue #7: `stdout P`, then a whole stderr line, the
/// tailer reads and ships (the stderr line must not wait for stdout), then
/// the `F` many polls later; a crash before the checkpoint is saved makes
/// the agent read the stderr line again.
#[test]
fn other_stream_ships_while_a_partial_line_is_open() {
    use Action::*;
    let poll = |ack| Poll { ack, save: ack };
    run(vec![
        Write(2, false),
        poll(true),
        Open,
        Write(3, false),
        poll(true),
        poll(true),
        Write(1, true),
        poll(false),
        Crash,
        poll(true),
        Close,
        Write(2, false),
    ]);
}

/// A crash in the middle of a record: the trace's first lines were read
/// and the batch before it acknowledged, the rest not yet written; after
/// the restart the record comes out whole, once.
#[test]
fn crash_in_the_middle_of_a_record() {
    use Action::*;
    let poll = |ack| Poll { ack, save: ack };
    run(vec![
        Write(2, false),
        Trace(3, false),
        poll(true),
        Frames(2, true),
        poll(true),
        Crash,
        Frames(1, false),
        poll(true),
        Frames(2, false),
        poll(false),
        Crash,
        poll(true),
        Write(1, false),
        Open,
        Trace(4, true),
        poll(true),
        Frames(1, true),
        Close,
    ]);
}
