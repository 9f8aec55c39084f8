//! The ingest path: the gRPC `Push` handler validates and decodes a batch,
//! then hands it to the single writer thread, which de-duplicates it,
//! appends it to the active segment and fsyncs (one fsync for every batch
//! that arrived meanwhile: group commit) before anyone is acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use logfleet_proto::v1::{Compression, LineBatch, PushRequest, PushResponse};
use logfleet_proto::{Limits, LinesBuilder};
use prost::Message;
use tokio::sync::oneshot;

use crate::chunks;
use crate::fs::{DirLock, Fs, RealFs};
use crate::index::{self, BlockMeta, ChunkFile, FileMark, HighWater, Index, Snapshot};
use crate::store::{self, ActiveSegment, BlockHeader, StoreError};
use logfleet_store::metrics::Metrics;

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root of the aggregator's files.
    pub data_dir: PathBuf,
    /// A segment is sealed at this size...
    pub segment_bytes: u64,
    /// ...or when this old, which partitions storage by time.
    pub segment_age: Duration,
    /// Delete data older than this (by line timestamp); none: keep.
    pub retention_age: Option<Duration>,
    /// Delete the oldest segments while the store is larger; none: no cap.
    pub retention_bytes: Option<u64>,
    /// zstd level for payloads that arrive uncompressed or gzipped.
    pub zstd_level: i32,
}

pub use logfleet_store::tail::Committed;

/// State shared by the writer, the services and the HTTP endpoint.
pub struct Shared {
    /// The query index.
    pub index: RwLock<Index>,
    /// Directory of the segments.
    pub segments_dir: PathBuf,
    /// Stored lines, for tails.
    pub tail: logfleet_store::tail::TailHub,
    /// Metrics.
    pub metrics: Metrics,
    /// Set, with the reason, when storage failed in a way that forbids any
    /// further acknowledgement (a failed fsync): the aggregator must exit.
    pub failed: tokio::sync::watch::Sender<Option<String>>,
    /// Faults to inject, for tests of what a failing disk does.
    pub faults: Faults,
    /// Set when the aggregator is stopping: live tails and running queries
    /// end at once, with "aggregator shutting down", so that the server's
    /// graceful shutdown does not wait for clients that never leave.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Directory of the chunk files.
    pub chunks_dir: PathBuf,
    /// Segments up to this one are in the snapshot (may be compacted).
    pub snapshot_through: std::sync::atomic::AtomicU64,
    /// Set by the snapshot thread when a snapshot became durable: the
    /// writer applies retention to what it now covers.
    pub snapshot_advanced: std::sync::atomic::AtomicBool,
    /// The segment being appended to.
    pub active_seq: std::sync::atomic::AtomicU64,
    /// Held while files are deleted or swapped for others (retention,
    /// compaction), so the two never act on one file at once.
    pub files: std::sync::Mutex<()>,
    /// The file system the store's files are on.
    pub fs: Arc<dyn Fs>,
    /// Why the store cannot take pushes now (a full disk), for `/readyz`;
    /// cleared by the next commit that succeeds.
    pub degraded: std::sync::Mutex<Option<String>>,
    /// Chunk files set aside as unreadable (`*.bad`) when the store
    /// opened: their lines are not served until someone repairs them,
    /// which `/readyz` says.
    pub quarantined: Vec<u64>,
    /// The data directory's lock: one aggregator per directory.
    _lock: DirLock,
}

/// Takes the data directory's lock, waiting up to 30 s for a previous
/// aggregator (or test) to let go of it.
fn lock_dir(fs: &dyn Fs, dir: &Path) -> Result<DirLock, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match fs.try_lock(dir) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(store::io_err(&dir.join("lock"))(e)),
        }
    }
}

/// Faults a test can make the writer meet, as a failing disk would.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next fsync of a segment fails with EIO.
    pub fail_next_sync: std::sync::atomic::AtomicBool,
    /// The next compaction stops at this point and the compactor stops, as
    /// if the process had been killed there.
    pub compaction_crash: std::sync::Mutex<Option<chunks::CrashPoint>>,
}

/// A decoded, validated batch waiting for the writer.
struct WriteReq {
    node: String,
    req: PushRequest,
    batch: LineBatch,
    received: i64,
    reply: oneshot::Sender<Result<PushResponse, StoreError>>,
}

/// Submits batches to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::SyncSender<WriteReq>,
    /// Room for decompressed payloads, in KiB.
    room: Arc<tokio::sync::Semaphore>,
    room_kib: u32,
    metrics: Metrics,
}

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The payload could not be decoded.
    #[error(transparent)]
    Codec(#[from] logfleet_proto::CodecError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer is gone (shutting down).
    #[error("aggregator is shutting down")]
    Closed,
}

impl From<Invalid> for PushError {
    fn from(e: Invalid) -> Self {
        PushError::Invalid(e.0)
    }
}

pub use logfleet_store::push::{check_extra, validate, Invalid, MAX_EXTRA_LABELS};

impl Writer {
    /// Bounds the decompressed bytes of pushes being decoded, validated and
    /// written at once: a push waits for room (back-pressure, no error).
    pub fn with_inflight_limit(mut self, bytes: u64) -> Self {
        let kib = (bytes / 1024).clamp(1, u32::MAX as u64 >> 4) as u32;
        self.room = Arc::new(tokio::sync::Semaphore::new(kib as usize));
        self.room_kib = kib;
        self
    }

    /// Whether a push of `raw_len` decompressed bytes finds room now:
    /// HTTP clients that expect 429 under back-pressure (Loki's) are told
    /// so instead of waiting, as agents do.
    pub fn has_room(&self, raw_len: u64) -> bool {
        let want = ((raw_len / 1024) as u32 + 1).min(self.room_kib);
        self.room.available_permits() >= want as usize
    }

    /// Takes all the room until the permit is dropped: what a saturated
    /// aggregator looks like (tests of back-pressure).
    pub fn take_all_room(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.room.clone().try_acquire_many_owned(self.room_kib).ok()
    }

    /// Decodes, validates and stores one push; returns once it is durable.
    pub async fn push(&self, req: PushRequest, limits: Limits) -> Result<PushResponse, PushError> {
        // A push larger than the whole room takes all of it.
        let want = ((req.raw_len / 1024) as u32 + 1).min(self.room_kib);
        self.metrics.pushes_waiting.inc();
        let permit = self.room.clone().acquire_many_owned(want).await;
        self.metrics.pushes_waiting.dec();
        let _permit = permit.map_err(|_| PushError::Closed)?;
        let received = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.clone();
        // One trip to the blocking pool: decode, validate, then queue. The
        // queue is bounded, so a full queue blocks here, which is
        // backpressure towards the agents.
        tokio::task::spawn_blocking(move || {
            let batch = logfleet_proto::decode_payload(&req, limits)?;
            validate(&req, &batch)?;
            let w = WriteReq {
                node: req.node.clone(),
                req,
                batch,
                received,
                reply,
            };
            tx.send(w).map_err(|_| PushError::Closed)
        })
        .await
        .map_err(|_| PushError::Closed)??;
        Ok(rx.await.map_err(|_| PushError::Closed)??)
    }
}

struct WriterState {
    cfg: StoreConfig,
    shared: Arc<Shared>,
    active: ActiveSegment,
    opened: Instant,
    hwm: HighWater,
    /// Snapshots to write, for the snapshot thread.
    snapshots: mpsc::Sender<Snapshot>,
    /// Records in the active segment: a segment is also sealed at
    /// [`SEGMENT_RECORDS`], so the blocks held in memory until compaction
    /// stay bounded however small the pushes.
    records: usize,
    /// No seal is tried before this, after one failed (a full disk): each
    /// try serialises every de-duplication mark.
    roll_after: Option<Instant>,
    /// Seals failed in a row, for the back-off.
    roll_failures: u32,
    /// The last write failed (a full disk): retention runs now, not only
    /// after a seal or when idle, which a full disk never reaches.
    write_failed: bool,
    /// When retention last ran.
    retention_ran: Instant,
    /// A snapshot was handed over and is not known to be durable yet.
    awaiting_snapshot: bool,
}

/// The oldest line time that retention by `age` keeps at `now` (ns since
/// the epoch); `None`, keep everything, when `age` reaches back further
/// than an i64 of nanoseconds can say (about 292 years): a wrapped cutoff
/// would land in the future and delete everything.
pub fn retention_cutoff(now: i64, age: Duration) -> Option<i64> {
    let age = i64::try_from(age.as_nanos()).ok()?;
    now.checked_sub(age)
}

/// A segment is sealed at this many records.
pub const SEGMENT_RECORDS: usize = 100_000;

/// Opens the store: loads the snapshot, replays segments, cuts a torn tail,
/// and starts the writer thread.
pub fn open(cfg: StoreConfig, metrics: Metrics) -> Result<(Arc<Shared>, Writer), StoreError> {
    open_on(Arc::new(RealFs), cfg, metrics)
}

/// [`open`] on the file system `fs` (tests put a failing one there).
pub fn open_on(
    fs: Arc<dyn Fs>,
    cfg: StoreConfig,
    metrics: Metrics,
) -> Result<(Arc<Shared>, Writer), StoreError> {
    let seg_dir = cfg.data_dir.join("segments");
    let chunks_dir = chunks::dir(&cfg.data_dir);
    // Created, and their entries made durable up to the data directory's
    // parent: a directory created but not synced into its parent can
    // vanish with everything in it.
    for d in [&seg_dir, &chunks_dir] {
        fs.create_dir_all(d).map_err(store::io_err(d))?;
    }
    for d in [
        seg_dir.as_path(),
        chunks_dir.as_path(),
        cfg.data_dir.as_path(),
    ]
    .into_iter()
    .chain(cfg.data_dir.parent())
    {
        store::sync_dir(&*fs, d)?;
    }
    let lock = lock_dir(&*fs, &cfg.data_dir)?;
    let snap_path = cfg.data_dir.join("snapshot.json");
    let snap: Snapshot = match fs.read(&snap_path) {
        Ok(d) => serde_json::from_slice(&d).map_err(|e| StoreError::Corrupt {
            path: snap_path.clone(),
            offset: 0,
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
        Err(e) => return Err(store::io_err(&snap_path)(e)),
    };
    let mut hwm: HighWater = snap.high_water();
    let mut ix = Index {
        agents: snap.agents.clone(),
        ..Default::default()
    };
    // The streams chunk files refer to, then the chunk files: what
    // start-up reads of compacted data is their summaries, not their data.
    let loaded = chunks::load_streams(&*fs, &cfg.data_dir.join("streams.log"))?;
    metrics.damaged_records.inc_by(loaded.damaged.len() as u64);
    for (id, s) in loaded.streams.into_iter().enumerate() {
        ix.streams
            .push_loaded(s, loaded.damaged.contains(&(id as u32)));
    }
    ix.streams.persisted = ix.streams.len();
    for seq in chunks::recover(&*fs, &chunks_dir)? {
        let sum = match chunks::read_summary(&*fs, &chunks::index_path(&chunks_dir, seq)) {
            Ok(sum) => sum,
            Err(e) => {
                // One unreadable index must not stop start-up: the file is
                // set aside (its segment is gone, so its lines are not
                // served until someone repairs it), counted and logged.
                tracing::error!(seq, error = %e, "setting aside a chunk file whose index cannot be read");
                metrics.damaged_records.inc();
                chunks::quarantine(&*fs, &chunks_dir, seq)?;
                continue;
            }
        };
        ix.chunk_files.insert(
            seq,
            Arc::new(ChunkFile {
                seq,
                min_ts: sum.min_ts,
                max_ts: sum.max_ts,
                retention_ts: sum.retention_ts,
                streams: sum.streams.len(),
            }),
        );
    }
    let mut seqs = Vec::new();
    for seq in store::list_segments(&*fs, &seg_dir)? {
        if ix.chunk_files.contains_key(&seq) {
            // Compacted; the crash came before the segment was deleted.
            let p = store::segment_path(&seg_dir, seq);
            fs.remove_file(&p).map_err(store::io_err(&p))?;
        } else {
            seqs.push(seq);
        }
    }
    let mut valid_end = 0;
    let mut active_records = 0;
    for (i, &seq) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = store::segment_path(&seg_dir, seq);
        let scan = store::scan_segment(&*fs, &path)?;
        metrics.damaged_records.inc_by(scan.damaged.len() as u64);
        for r in &scan.records {
            ix.add_block(seq, r.offset, r.len, &r.header);
            if seq > snap.through {
                index::advance(&mut hwm, &r.header, seq);
                ix.count(&r.header);
            }
        }
        if last {
            valid_end = scan.valid_end;
            active_records = scan.records.len();
        }
    }
    let newest = seqs
        .last()
        .copied()
        .max(ix.chunk_files.keys().next_back().copied());
    // The newest segment is appended to, unless the snapshot already covers
    // it (a crash between writing the snapshot and creating the next
    // segment): records appended to it would then never be replayed into
    // the marks, and re-sent data would be stored twice.
    let active = match seqs.last() {
        Some(&last) if last > snap.through => ActiveSegment::open(&*fs, &seg_dir, last, valid_end)?,
        _ => {
            active_records = 0;
            ActiveSegment::open(&*fs, &seg_dir, newest.unwrap_or(0).max(snap.through) + 1, 0)?
        }
    };
    tracing::info!(
        segments = seqs.len(),
        blocks = ix.blocks.len(),
        chunk_files = ix.chunk_files.len(),
        streams = ix.streams.len(),
        files = hwm.len(),
        "store opened"
    );
    let quarantined = chunks::quarantined(&*fs, &chunks_dir)?;
    if !quarantined.is_empty() {
        tracing::error!(files = ?quarantined, dir = %chunks_dir.display(), "chunk files set aside as unreadable (*.bad); their lines are not served");
    }
    let shared = Arc::new(Shared {
        index: RwLock::new(ix),
        segments_dir: seg_dir,
        tail: logfleet_store::tail::TailHub::default(),
        metrics,
        failed: tokio::sync::watch::channel(None).0,
        faults: Faults::default(),
        shutdown: tokio::sync::watch::channel(false).0,
        chunks_dir,
        snapshot_through: std::sync::atomic::AtomicU64::new(snap.through),
        snapshot_advanced: std::sync::atomic::AtomicBool::new(false),
        active_seq: std::sync::atomic::AtomicU64::new(active.seq),
        files: std::sync::Mutex::new(()),
        fs: fs.clone(),
        degraded: std::sync::Mutex::new(None),
        quarantined,
        _lock: lock,
    });
    let (compact, compact_rx) = mpsc::channel();
    // Small: the pushes that wait here hold decoded batches.
    let (tx, rx) = mpsc::sync_channel(16);
    let (snap_tx, snap_rx) = mpsc::channel();
    let snapshotter = Snapshotter {
        shared: shared.clone(),
        data_dir: cfg.data_dir.clone(),
        compact,
    };
    let st = WriterState {
        cfg,
        shared: shared.clone(),
        active,
        opened: Instant::now(),
        hwm,
        snapshots: snap_tx,
        records: active_records,
        roll_after: None,
        roll_failures: 0,
        write_failed: false,
        retention_ran: Instant::now(),
        awaiting_snapshot: false,
    };
    st.update_gauges();
    let compactor = Compactor {
        shared: shared.clone(),
        data_dir: st.cfg.data_dir.clone(),
        level: st.cfg.zstd_level,
        streams_len: loaded.valid_len,
        failed: HashMap::new(),
    };
    std::thread::Builder::new()
        .name("logfleet-writer".into())
        .spawn(move || st.run(rx))
        .map_err(store::io_err(Path::new("writer thread")))?;
    std::thread::Builder::new()
        .name("logfleet-snapshot".into())
        .spawn(move || snapshotter.run(snap_rx))
        .map_err(store::io_err(Path::new("snapshot thread")))?;
    std::thread::Builder::new()
        .name("logfleet-compactor".into())
        .spawn(move || {
            let mut compactor = compactor;
            compactor.run(compact_rx)
        })
        .map_err(store::io_err(Path::new("compactor thread")))?;
    let metrics = shared.metrics.clone();
    let writer = Writer {
        tx,
        room: Arc::new(tokio::sync::Semaphore::new(256 << 10)),
        room_kib: 256 << 10,
        metrics,
    }
    .with_inflight_limit(64 << 20);
    Ok((shared, writer))
}

/// A push of a group being committed: a record to write, or (no header)
/// nothing but duplicates, answered once the group is durable.
struct Pending {
    header: Option<BlockHeader>,
    node: String,
    received: i64,
    batch: LineBatch,
    reply: oneshot::Sender<Result<PushResponse, StoreError>>,
    duplicates: u64,
}

impl WriterState {
    fn run(mut self, rx: mpsc::Receiver<WriteReq>) {
        loop {
            // While a snapshot is being written, look often whether it is
            // durable: retention may then delete what it covers.
            let wait = if self.awaiting_snapshot {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(5)
            };
            let first = match rx.recv_timeout(wait) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Idle housekeeping (age seals, retention, gauges) every
                    // 5 s still, even while a snapshot keeps failing.
                    let advanced = self.snapshot_advanced();
                    if !self.awaiting_snapshot
                        || advanced
                        || self.retention_ran.elapsed() >= Duration::from_secs(5)
                    {
                        self.housekeeping(true);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < 256 {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            if !self.commit(group) {
                return;
            }
            self.housekeeping(false);
        }
        let _ = self.active.sync();
    }

    /// Stores a group of pushes with one fsync. Returns false when the
    /// store can no longer be trusted (an fsync failed): the writer stops.
    fn commit(&mut self, group: Vec<WriteReq>) -> bool {
        let started = Instant::now();
        // Marks moved by this group: applied only once the group is durable,
        // so a failed write cannot make a retry look like a duplicate.
        let mut overlay: HashMap<(String, u64), FileMark> = HashMap::new();
        let mut records = Vec::new();
        let mut pending = Vec::new();
        let seq = self.active.seq;
        for w in group {
            let node = w.node;
            let keys: Vec<(String, u64)> = w
                .req
                .ranges
                .iter()
                .map(|r| (node.clone(), r.file_id))
                .collect();
            let d = {
                let marks: Vec<&FileMark> = keys
                    .iter()
                    .map(|k| {
                        overlay
                            .get(k)
                            .or_else(|| self.hwm.get(k))
                            .unwrap_or(&index::NO_MARK)
                    })
                    .collect();
                index::dedup(&marks, &w.req.ranges, &w.batch)
            };
            let kept_all = d.keep.is_none();
            let batch = match &d.keep {
                None => w.batch,
                Some(keep) => {
                    let mut b = LinesBuilder::default();
                    for (l, _) in w.batch.lines().zip(keep).filter(|(_, k)| **k) {
                        b.push_line(&l);
                    }
                    b.finish()
                }
            };
            let count = batch.line_count();
            if count == 0 && !d.advances {
                // All duplicates. The data they duplicate may belong to this
                // very group: answer once the group is durable.
                pending.push(Pending {
                    header: None,
                    node,
                    received: w.received,
                    batch,
                    reply: w.reply,
                    duplicates: d.duplicates,
                });
                continue;
            }
            let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
            for l in batch.lines() {
                min_ts = min_ts.min(l.ts);
                max_ts = max_ts.max(l.ts);
            }
            let text = batch.text.len() as u64;
            // An agent's zstd payload is stored as it came: no second
            // compression on the hot path.
            let zstd_as_is = kept_all && w.req.compression == Compression::Zstd as i32;
            let (payload, raw_len) = if zstd_as_is {
                (w.req.payload.clone(), w.req.raw_len)
            } else {
                let raw = batch.encode_to_vec();
                match zstd::bulk::compress(&raw, self.cfg.zstd_level) {
                    Ok(c) => (Bytes::from(c), raw.len() as u64),
                    Err(e) => {
                        let _ = w.reply.send(Err(store::io_err(&self.active.path)(e)));
                        continue;
                    }
                }
            };
            let header = BlockHeader {
                node: node.clone(),
                received_unix_nano: w.received,
                min_ts: if count == 0 { 0 } else { min_ts },
                max_ts: if count == 0 { 0 } else { max_ts },
                lines: count as u64,
                text_bytes: text,
                ahead: index::lines_ahead(&w.req.ranges, &batch),
                ranges: w.req.ranges,
                raw_len,
            };
            for (i, (r, k)) in header.ranges.iter().zip(keys).enumerate() {
                let ahead = header
                    .ahead
                    .iter()
                    .find(|a| a.range as usize == i)
                    .map_or(&[][..], |a| &a.offsets[..]);
                let hwm = &self.hwm;
                overlay
                    .entry(k)
                    .or_insert_with_key(|k| hwm.get(k).cloned().unwrap_or_default())
                    .apply(r.end, ahead, seq);
            }
            records.push(store::encode_record(&header, &payload));
            pending.push(Pending {
                header: Some(header),
                node,
                received: w.received,
                batch,
                reply: w.reply,
                duplicates: d.duplicates,
            });
        }
        if pending.is_empty() {
            return true;
        }
        let written = if records.is_empty() {
            Ok(Vec::new())
        } else {
            self.active
                .append(&records)
                .map_err(|e| (e, false))
                .and_then(|offs| {
                    let injected = self
                        .shared
                        .faults
                        .fail_next_sync
                        .swap(false, std::sync::atomic::Ordering::Relaxed);
                    if injected {
                        let eio = std::io::Error::from_raw_os_error(5);
                        return Err((store::io_err(&self.active.path)(eio), true));
                    }
                    self.active.sync().map_err(|e| (e, true))?;
                    Ok(offs)
                })
        };
        let offsets = match written {
            Ok(o) => o,
            Err((e, fsync)) => {
                tracing::error!(error = %e, "storing batch failed");
                self.shared.metrics.store_errors.inc();
                let msg = e.to_string();
                if fsync {
                    // After a failed fsync the kernel may have dropped the
                    // dirty pages and cleared the error: a later fsync can
                    // succeed over lost data (PostgreSQL's "fsyncgate",
                    // 2018). Acknowledge nothing more; a restart recovers
                    // from what is really on disk. Said before anyone is
                    // answered, so no caller sees the refusal first.
                    self.shared.failed.send_replace(Some(format!(
                        "fsync of {} failed: {msg}",
                        self.active.path.display()
                    )));
                }
                if e.is_disk_full() {
                    self.shared.metrics.disk_full.inc();
                    if let Ok(mut d) = self.shared.degraded.lock() {
                        d.get_or_insert_with(|| {
                            format!(
                                "the data disk is full since {}: {msg}",
                                chrono::Utc::now()
                                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            )
                        });
                    }
                }
                for p in pending {
                    let _ = p.reply.send(Err(e.again()));
                }
                if fsync {
                    return false;
                }
                self.write_failed = true;
                return true;
            }
        };
        for (k, v) in overlay {
            self.hwm.insert(k, v);
        }
        if let Ok(mut d) = self.shared.degraded.lock() {
            d.take();
        }
        self.records += records.len();
        let m = &self.shared.metrics;
        if !records.is_empty() {
            m.fsync_seconds.observe(started.elapsed().as_secs_f64());
        }
        if let Ok(mut ix) = self.shared.index.write() {
            let stored = pending.iter().filter_map(|p| p.header.as_ref());
            for ((h, off), rec) in stored.zip(&offsets).zip(&records) {
                ix.add_block(seq, *off, rec.len() as u64, h);
                ix.count(h);
                ix.seen(&h.node, h.received_unix_nano);
            }
            for p in pending.iter().filter(|p| p.header.is_none()) {
                ix.touch(&p.node, p.received);
            }
        }
        m.stored_bytes
            .inc_by(records.iter().map(|r| r.len() as i64).sum());
        let now = Instant::now();
        for p in pending {
            m.duplicate_lines.inc_by(p.duplicates);
            let Some(header) = p.header else {
                let _ = p.reply.send(Ok(PushResponse {
                    stored_lines: 0,
                    duplicate_lines: p.duplicates,
                }));
                continue;
            };
            m.batches.inc();
            m.lines.inc_by(header.lines);
            m.bytes.inc_by(header.text_bytes);
            let _ = p.reply.send(Ok(PushResponse {
                stored_lines: header.lines,
                duplicate_lines: p.duplicates,
            }));
            if self.shared.tail.has_subscribers() && p.batch.line_count() > 0 {
                let bytes = (p.batch.text.len() + p.batch.line_count() * 32) as u64;
                self.shared.tail.send(Arc::new(Committed {
                    node: Arc::from(header.node.as_str()),
                    labels: header
                        .ranges
                        .iter()
                        .map(|r| r.labels.clone().unwrap_or_default())
                        .collect(),
                    batch: p.batch,
                    at: now,
                    bytes,
                }));
            }
        }
        true
    }

    /// Seals the segment when due; on a roll or when `idle`, also applies
    /// retention and refreshes the size gauges (directory listings are kept
    /// off the per-batch path).
    fn housekeeping(&mut self, idle: bool) {
        let age_due = self.opened.elapsed() >= self.cfg.segment_age && self.active.len > 0;
        let mut rolled = false;
        let due =
            self.active.len >= self.cfg.segment_bytes || age_due || self.records >= SEGMENT_RECORDS;
        if due && self.roll_after.is_none_or(|t| Instant::now() >= t) {
            rolled = true;
            match self.roll() {
                Ok(()) => {
                    self.roll_failures = 0;
                    self.roll_after = None;
                }
                Err(e) => {
                    self.roll_failures += 1;
                    let wait = Duration::from_millis(500 << self.roll_failures.min(6));
                    tracing::error!(error = %e, retry_in = ?wait, "sealing segment failed; appends go on to the open segment");
                    self.shared.metrics.store_errors.inc();
                    self.roll_after = Some(Instant::now() + wait);
                }
            }
        }
        // A full disk: free what retention may, at most once a second.
        let pressed = std::mem::take(&mut self.write_failed)
            && self.retention_ran.elapsed() >= Duration::from_secs(1);
        let advanced = self.snapshot_advanced();
        if !(rolled || idle || pressed || advanced) {
            return;
        }
        self.retention_ran = Instant::now();
        if let Err(e) = self.retention() {
            tracing::error!(error = %e, "retention failed");
            self.shared.metrics.store_errors.inc();
        }
        self.update_gauges();
    }

    /// Whether a snapshot became durable since last asked.
    fn snapshot_advanced(&mut self) -> bool {
        let advanced = self
            .shared
            .snapshot_advanced
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if advanced {
            self.awaiting_snapshot = self
                .shared
                .snapshot_through
                .load(std::sync::atomic::Ordering::SeqCst)
                < self.active.seq - 1;
        }
        advanced
    }

    /// Seals the active segment and snapshots the state it completes.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.active.sync()?;
        let through = self.active.seq;
        let agents = self
            .shared
            .index
            .read()
            .map(|ix| ix.agents.clone())
            .unwrap_or_default();
        let snap = Snapshot {
            through,
            hwm: Vec::new(),
            marks: self
                .hwm
                .iter()
                .map(|((n, id), m)| (n.clone(), *id, m.clone()))
                .collect(),
            agents,
        };
        let fs = &*self.shared.fs;
        // The next segment first: once the snapshot covers this one,
        // nothing may be appended to it (replay would skip those records'
        // marks, and re-sent data would be stored twice).
        let next = ActiveSegment::open(fs, &self.shared.segments_dir, through + 1, 0)?;
        // Serialising and fsyncing every mark (hundreds of MB at a large
        // fleet) happens on the snapshot thread, off the path that
        // acknowledges pushes; until it is durable the segment is neither
        // compacted nor deleted (`Shared::snapshot_through`).
        if self.snapshots.send(snap).is_err() {
            return Err(store::io_err(&self.cfg.data_dir)(std::io::Error::other(
                "the snapshot thread is gone",
            )));
        }
        self.awaiting_snapshot = true;
        self.active = next;
        self.shared
            .active_seq
            .store(through + 1, std::sync::atomic::Ordering::SeqCst);
        self.records = 0;
        self.opened = Instant::now();
        tracing::debug!(sealed = through, "segment sealed");
        Ok(())
    }

    /// Deletes sealed segments and chunk files past the age or size
    /// limits, oldest first.
    fn retention(&mut self) -> Result<(), StoreError> {
        if self.cfg.retention_age.is_none() && self.cfg.retention_bytes.is_none() {
            return Ok(());
        }
        let dir = self.shared.segments_dir.clone();
        let cdir = self.shared.chunks_dir.clone();
        let _files = self.shared.files.lock().map_err(|_| StoreError::Corrupt {
            path: dir.clone(),
            offset: 0,
            why: "file lock poisoned".into(),
        })?;
        // Every sequence number with its files, size and newest time.
        let mut units: BTreeMap<u64, (Vec<PathBuf>, u64, i64)> = BTreeMap::new();
        {
            let ix = self.shared.index.read().map_err(|_| StoreError::Corrupt {
                path: dir.clone(),
                offset: 0,
                why: "index lock poisoned".into(),
            })?;
            for b in &ix.blocks {
                let u = units
                    .entry(b.seq)
                    .or_insert_with(|| (vec![store::segment_path(&dir, b.seq)], 0, i64::MIN));
                u.2 = u.2.max(b.retention_ts());
            }
            for (seq, c) in &ix.chunk_files {
                units.insert(
                    *seq,
                    (
                        // The index first: it is what makes a chunk file
                        // complete, so a crash between the two leaves a
                        // data file that start-up removes, never an index
                        // without its data.
                        vec![
                            chunks::index_path(&cdir, *seq),
                            chunks::data_path(&cdir, *seq),
                        ],
                        0,
                        c.retention_ts,
                    ),
                );
            }
        }
        let fs = self.shared.fs.clone();
        for seq in store::list_segments(&*fs, &dir)? {
            units
                .entry(seq)
                .or_insert_with(|| (vec![store::segment_path(&dir, seq)], 0, i64::MIN));
        }
        for u in units.values_mut() {
            u.1 = u.0.iter().filter_map(|p| fs.file_len(p).ok()).sum();
        }
        let mut total: u64 = units.values().map(|u| u.1).sum();
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let cutoff = self
            .cfg
            .retention_age
            .and_then(|a| retention_cutoff(now, a));
        let mut doomed = Vec::new();
        for (seq, (paths, size, newest)) in &units {
            // Only sealed data whose state the snapshot already holds.
            let snapshot_through = self
                .shared
                .snapshot_through
                .load(std::sync::atomic::Ordering::SeqCst);
            if *seq >= self.active.seq || *seq > snapshot_through {
                break;
            }
            let too_old = cutoff.is_some_and(|c| *newest < c);
            let too_big = self.cfg.retention_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            doomed.push((*seq, paths.clone()));
            total -= size;
        }
        if doomed.is_empty() {
            return Ok(());
        }
        if let Ok(mut ix) = self.shared.index.write() {
            let seqs: Vec<u64> = doomed.iter().map(|d| d.0).collect();
            ix.blocks
                .retain(|b: &Arc<BlockMeta>| !seqs.contains(&b.seq));
            for s in &seqs {
                ix.chunk_files.remove(s);
            }
        }
        for (_, paths) in &doomed {
            for p in paths {
                match fs.remove_file(p) {
                    Ok(()) => tracing::info!(file = %p.display(), "deleted by retention"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(store::io_err(p)(e)),
                }
            }
            self.shared.metrics.segments_deleted.inc();
        }
        // Marks of files whose newest data is gone with these: such a file
        // is older than retention (kubelet has long removed it), and
        // keeping its mark would grow the snapshot forever.
        if let Some(newest_deleted) = doomed.iter().map(|d| d.0).max() {
            let before = self.hwm.len();
            self.hwm.retain(|_, m| m.seq > newest_deleted);
            let pruned = before - self.hwm.len();
            if pruned > 0 {
                tracing::info!(
                    pruned,
                    "forgot the de-duplication marks of files past retention"
                );
            }
        }
        store::sync_dir(&*fs, &dir)?;
        store::sync_dir(&*fs, &cdir)
    }

    fn update_gauges(&self) {
        let dir = &self.shared.segments_dir;
        let fs = &*self.shared.fs;
        if let Ok(seqs) = store::list_segments(fs, dir) {
            let mut bytes: u64 = seqs
                .iter()
                .filter_map(|s| fs.file_len(&store::segment_path(dir, *s)).ok())
                .sum();
            let cdir = &self.shared.chunks_dir;
            if let Ok(names) = fs.read_dir(cdir) {
                bytes += names
                    .iter()
                    .filter_map(|n| fs.file_len(&cdir.join(n)).ok())
                    .sum::<u64>();
            }
            self.shared.metrics.stored_bytes.set(bytes as i64);
            self.shared.metrics.segments.set(seqs.len() as i64);
        }
        if let Ok(ix) = self.shared.index.read() {
            self.shared.metrics.streams.set(ix.streams.len() as i64);
            self.shared
                .metrics
                .chunk_files
                .set(ix.chunk_files.len() as i64);
        }
    }
}

/// Writes the snapshots seals hand over, newest first, off the writer's
/// path; only once one is durable may the segments it covers be compacted
/// or deleted.
struct Snapshotter {
    shared: Arc<Shared>,
    data_dir: PathBuf,
    /// Wakes the compactor when a snapshot is durable.
    compact: mpsc::Sender<()>,
}

impl Snapshotter {
    fn run(self, jobs: mpsc::Receiver<Snapshot>) {
        let mut pending: Option<Snapshot> = None;
        let mut failures = 0u32;
        loop {
            let got = match &pending {
                None => jobs
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                // A failed write is tried again after a back-off, or as soon
                // as a newer snapshot comes.
                Some(_) => jobs.recv_timeout(Duration::from_millis(500 << failures.min(6))),
            };
            match got {
                Ok(s) => pending = Some(s),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) if pending.is_none() => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            // Only the newest matters: it holds every mark the older did.
            while let Ok(s) = jobs.try_recv() {
                pending = Some(s);
            }
            let Some(snap) = pending.take() else { continue };
            match self.write(&snap) {
                Ok(()) => {
                    failures = 0;
                    self.shared
                        .snapshot_through
                        .fetch_max(snap.through, std::sync::atomic::Ordering::SeqCst);
                    self.shared
                        .snapshot_advanced
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    // The segments it covers may be compacted now.
                    let _ = self.compact.send(());
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, through = snap.through, "writing the snapshot failed; tried again");
                    self.shared.metrics.store_errors.inc();
                    pending = Some(snap);
                    if matches!(jobs.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                        return;
                    }
                }
            }
        }
    }

    fn write(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let fs = &*self.shared.fs;
        let path = self.data_dir.join("snapshot.json");
        let tmp = chunks::TempFile::new(fs, self.data_dir.join("snapshot.json.tmp"));
        let data =
            serde_json::to_vec(snap).map_err(|e| store::io_err(&path)(std::io::Error::other(e)))?;
        chunks::write_synced(fs, &tmp.path, &data)?;
        tmp.rename_to(&path)?;
        store::sync_dir(fs, &self.data_dir)
    }
}

/// Compacts sealed segments into chunk files, off the writer's path.
struct Compactor {
    shared: Arc<Shared>,
    data_dir: PathBuf,
    level: i32,
    /// Where the intact records of `streams.log` end.
    streams_len: u64,
    /// Segments whose compaction failed: failures so far and when to try
    /// again (30 s doubling, up to an hour), so that a segment that cannot
    /// be compacted neither blocks the later ones nor is re-read every 5 s.
    failed: HashMap<u64, (u32, Instant)>,
}

impl Compactor {
    fn run(&mut self, wake: mpsc::Receiver<()>) {
        loop {
            match wake.recv_timeout(Duration::from_secs(5)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while wake.try_recv().is_ok() {}
            match self.compact_due() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!(error = %e, "listing segments to compact failed");
                    self.shared.metrics.store_errors.inc();
                }
            }
        }
    }

    /// Compacts every sealed segment the snapshot covers, oldest first;
    /// one that fails stays a segment (its lines are served from it) and is
    /// tried again later. Returns false when a test's crash point stopped
    /// it.
    fn compact_due(&mut self) -> Result<bool, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let through = self.shared.snapshot_through.load(SeqCst);
        let active = self.shared.active_seq.load(SeqCst);
        let now = Instant::now();
        for seq in store::list_segments(&*self.shared.fs, &self.shared.segments_dir)? {
            if seq > through || seq >= active {
                break;
            }
            if self.failed.get(&seq).is_some_and(|(_, at)| now < *at) {
                continue;
            }
            match self.compact(seq) {
                Ok(true) => {
                    self.failed.remove(&seq);
                }
                Ok(false) => return Ok(false),
                Err(e) => {
                    let n = self.failed.get(&seq).map_or(0, |f| f.0) + 1;
                    let wait = Duration::from_secs(30 << n.min(7)).min(Duration::from_secs(3600));
                    tracing::error!(seq, error = %e, retry_in = ?wait, "compaction failed; the segment stays and is tried again");
                    self.shared.metrics.store_errors.inc();
                    self.failed.insert(seq, (n, now + wait));
                }
            }
        }
        Ok(true)
    }

    fn compact(&mut self, seq: u64) -> Result<bool, StoreError> {
        let poisoned = || StoreError::Corrupt {
            path: self.data_dir.clone(),
            offset: 0,
            why: "index lock poisoned".into(),
        };
        let started = Instant::now();
        let (blocks, streams, persisted) = {
            let ix = self.shared.index.read().map_err(|_| poisoned())?;
            let blocks: Vec<Arc<BlockMeta>> =
                ix.blocks.iter().filter(|b| b.seq == seq).cloned().collect();
            (blocks, ix.streams.all().to_vec(), ix.streams.persisted)
        };
        // Every stream the chunks will name is in streams.log first.
        if streams.len() > persisted {
            let new: Vec<index::StreamInfo> =
                streams[persisted..].iter().map(|s| (**s).clone()).collect();
            self.streams_len = chunks::append_streams(
                &*self.shared.fs,
                &self.data_dir.join("streams.log"),
                self.streams_len,
                persisted as u32,
                &new,
            )?;
            if let Ok(mut ix) = self.shared.index.write() {
                ix.streams.persisted = ix.streams.persisted.max(streams.len());
            }
        }
        let crash = self
            .shared
            .faults
            .compaction_crash
            .lock()
            .ok()
            .and_then(|mut c| c.take());
        let segment = store::segment_path(&self.shared.segments_dir, seq);
        let summary = match chunks::compact(
            &*self.shared.fs,
            &segment,
            &blocks,
            &streams,
            seq,
            &self.shared.chunks_dir,
            self.level,
            crash,
        ) {
            Ok(s) => s,
            Err(_) if crash.is_some() => return Ok(false),
            Err(e) => return Err(e),
        };
        let _files = self.shared.files.lock().map_err(|_| poisoned())?;
        let fs = &*self.shared.fs;
        if !fs.exists(&segment) {
            // Retention took it meanwhile: so goes what was made of it.
            for p in [
                chunks::data_path(&self.shared.chunks_dir, seq),
                chunks::index_path(&self.shared.chunks_dir, seq),
            ] {
                let _ = fs.remove_file(&p);
            }
            return Ok(true);
        }
        if let Ok(mut ix) = self.shared.index.write() {
            ix.blocks.retain(|b| b.seq != seq);
            ix.chunk_files.insert(
                seq,
                Arc::new(ChunkFile {
                    seq,
                    min_ts: summary.min_ts,
                    max_ts: summary.max_ts,
                    retention_ts: summary.retention_ts,
                    streams: summary.streams.len(),
                }),
            );
        }
        // Queries that planned before the swap hold the segment open.
        fs.remove_file(&segment).map_err(store::io_err(&segment))?;
        store::sync_dir(fs, &self.shared.segments_dir)?;
        self.shared.metrics.compactions.inc();
        tracing::debug!(
            seq,
            blocks = blocks.len(),
            lines = summary.lines,
            ms = started.elapsed().as_millis() as u64,
            "segment compacted"
        );
        Ok(true)
    }
}
