//! Reading log files from their checkpoints: follows renames (by device and
//! inode), reads rotated files to their end, resumes inside files kubelet
//! gzipped, detects truncation, drains deleted files, and hands complete
//! lines to the batch builder.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logfleet_proto::v1::FileLabels;

use crate::batch::BatchBuilder;
use crate::checkpoint::Checkpoints;
use crate::cri::{Assembler, Framer, LineSink, Oddities};
use crate::discover::{FileKind, Found};
use crate::fingerprint::{self, FINGERPRINT_MAX};
use crate::metadata::Directory;
use crate::multiline::{Detector, GroupConfig, Grouper};
use logfleet_proto::v1::Stream;

/// Settings of the tailer.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Longest line kept whole; longer ones are cut into pieces.
    pub max_line: usize,
    /// How long a partial (`P`) run may wait for its end before it is
    /// emitted as an unterminated line.
    pub partial_timeout: Duration,
    /// How long a rotated file must stay unchanged before it is considered
    /// finished (the runtime may write into it until it reopens its log).
    pub rotate_wait: Duration,
    /// At most this many bytes are read from one file per pass, so that a
    /// busy file does not starve the others.
    pub read_budget: usize,
    /// Size of one read.
    pub read_chunk: usize,
    /// At most this many files are held open; more wait until some finish.
    /// Files are opened as soon as they are found, even while the
    /// aggregator is away, so a pod deleted meanwhile is still read.
    pub max_open_files: usize,
    /// Multi-line detector for pods that do not choose one by annotation;
    /// none: lines are not grouped.
    pub multiline: Option<Detector>,
    /// Timeout and size cap of multi-line records.
    pub group: GroupConfig,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            max_line: 256 << 10,
            partial_timeout: Duration::from_secs(5),
            rotate_wait: Duration::from_secs(30),
            read_budget: 4 << 20,
            read_chunk: 64 << 10,
            max_open_files: 1024,
            multiline: None,
            group: GroupConfig::default(),
        }
    }
}

enum Source {
    Plain(File),
    Gz(Box<flate2::read::GzDecoder<File>>),
}

impl Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Plain(f) => f.read(buf),
            Source::Gz(g) => g.read(buf),
        }
    }
}

type Inode = (u64, u64);

/// A finished file's identity and how it looked when it finished.
#[derive(Debug, Clone, Copy)]
struct Known {
    id: u64,
    size: u64,
    mtime_ns: i64,
}

fn stamp(md: &std::fs::Metadata) -> (u64, i64) {
    (md.len(), md.mtime() * 1_000_000_000 + md.mtime_nsec())
}

/// One open file.
struct Tracked {
    id: Option<u64>,
    labels: FileLabels,
    path: PathBuf,
    kind: FileKind,
    inode: Inode,
    source: Source,
    framer: Framer,
    asm: Assembler,
    /// Multi-line records, when the pod's setting asks for them.
    group: Option<Grouper>,
    range_start: u64,
    last_growth: Instant,
    deleted: bool,
    /// Size at the last look (decompressed bytes read, for gzip).
    size: u64,
    /// Modification time at the last look (plain files): a file rewritten
    /// to the same size between two looks changes it.
    mtime_ns: i64,
}

/// How far a file is accounted for: every line before it was emitted,
/// and no record still being assembled starts before it.
fn safe_end(asm: &Assembler, group: &Option<Grouper>) -> u64 {
    let safe = asm.safe_offset();
    match group.as_ref().and_then(Grouper::open_offset) {
        Some(open) => safe.min(open),
        None => safe,
    }
}

impl Tracked {
    /// The first bytes of the open file (plain files only; a gzipped file
    /// is identified when opened).
    fn head(&self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let Source::Plain(f) = &self.source else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; FINGERPRINT_MAX];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// The metadata of the file itself (of the compressed file for gzip).
    fn metadata(&self) -> Option<std::fs::Metadata> {
        match &self.source {
            Source::Plain(f) => f.metadata().ok(),
            Source::Gz(g) => g.get_ref().metadata().ok(),
        }
    }
}

/// Writes one file's lines straight into the batch, opening the file's
/// range on its first line.
struct BatchSink<'a> {
    batch: &'a mut BatchBuilder,
    file_id: u64,
    labels: &'a FileLabels,
    path: &'a Path,
    start: u64,
    idx: Option<u32>,
    lines: u64,
    now: Instant,
}

impl LineSink for BatchSink<'_> {
    fn line(&mut self, offset: u64, ts: i64, stream: Stream, flags: u32, text: &[u8]) {
        let idx = match self.idx {
            Some(i) => i,
            None => {
                let i =
                    self.batch
                        .range(self.file_id, self.labels, self.path, self.start, self.now);
                self.idx = Some(i);
                i
            }
        };
        self.batch.push(idx, offset, ts, stream, flags, text);
        self.lines += 1;
    }
}

impl BatchSink<'_> {
    /// Accounts the file up to `end` and returns how many lines it added.
    fn close(self, end: u64) -> u64 {
        if self.idx.is_some() || end > self.start {
            self.batch.account(
                self.file_id,
                self.labels,
                self.path,
                self.start,
                end,
                self.now,
            );
        }
        self.lines
    }
}

/// A file read to its end, remembered until it disappears from disk.
struct Done {
    final_end: u64,
    path: PathBuf,
    seen: u64,
}

/// Counters the tailer keeps, read by the metrics endpoint.
#[derive(Debug, Default, Clone, Copy)]
pub struct TailStats {
    /// Lines emitted.
    pub lines: u64,
    /// Bytes read from files (decompressed for gzip).
    pub bytes: u64,
    /// Unusual input.
    pub odd: Oddities,
    /// Files truncated under us.
    pub truncations: u64,
    /// Checkpoints dropped at start-up because their file is gone: deleted
    /// while the agent was down (anything past the checkpoint was lost, or
    /// the file had been read to its end; the agent cannot tell which).
    pub lost_files: u64,
    /// Open files.
    pub open_files: u64,
    /// I/O errors.
    pub errors: u64,
    /// Files found but not opened because `max_open_files` were open.
    pub deferred_files: u64,
    /// Files left unread by a `logfleet.dev/exclude` annotation.
    pub excluded_files: u64,
    /// Multi-line records of more than one line emitted.
    pub records: u64,
    /// Lines joined into those records.
    pub joined_lines: u64,
}

/// The tailer: every tracked file and the state needed to find new ones.
pub struct Tailer {
    cfg: TailConfig,
    files: Vec<Tracked>,
    by_inode: HashMap<Inode, usize>,
    /// Inodes of finished files and of gzip copies of files we read, with
    /// the size and mtime they had: an inode freed by a deleted pod is soon
    /// reused by a new file, which must not pass for the old one.
    known: HashMap<Inode, Known>,
    done: HashMap<u64, Done>,
    generation: u64,
    checkpoints: Arc<Mutex<Checkpoints>>,
    /// Statistics.
    pub stats: TailStats,
    /// One read buffer for all files: records are cut straight out of it.
    readbuf: Vec<u8>,
    /// Where the next pass starts: a pass cut short by a busy shipper
    /// resumes with the files it did not reach.
    next_file: usize,
    /// Pod metadata: extra labels, exclusion, multi-line setting.
    meta: Option<Arc<Directory>>,
    /// The directory's generation the open files' labels reflect.
    meta_generation: u64,
    /// Where checkpoints are saved, to fix a file's multi-line setting
    /// before any of its lines ship; none: not saved (tests, tools).
    persist: Option<PathBuf>,
    /// Files skipped by annotation in the current scan, by identity.
    excluded: Vec<u64>,
    /// Multi-line settings fixed but not yet saved.
    settings_unsaved: bool,
    /// Checkpoints of files gone while the agent was down were dropped
    /// (done once, after the first complete scan).
    pruned: bool,
}

fn inode(md: &std::fs::Metadata) -> Inode {
    (md.dev(), md.ino())
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Reads the first bytes of a plain or gzipped file, for its fingerprint.
fn read_head(path: &Path, gz: bool) -> std::io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut head = Vec::with_capacity(FINGERPRINT_MAX);
    if gz {
        flate2::read::GzDecoder::new(f)
            .take(FINGERPRINT_MAX as u64)
            .read_to_end(&mut head)?;
    } else {
        f.take(FINGERPRINT_MAX as u64).read_to_end(&mut head)?;
    }
    Ok(head)
}

impl Tailer {
    /// A tailer that resumes from `checkpoints`.
    pub fn new(cfg: TailConfig, checkpoints: Arc<Mutex<Checkpoints>>) -> Self {
        let readbuf = vec![0; cfg.read_chunk.max(1)];
        Tailer {
            cfg,
            files: Vec::new(),
            by_inode: HashMap::new(),
            known: HashMap::new(),
            done: HashMap::new(),
            generation: 0,
            checkpoints,
            stats: TailStats::default(),
            readbuf,
            next_file: 0,
            meta: None,
            meta_generation: u64::MAX,
            persist: None,
            excluded: Vec::new(),
            settings_unsaved: false,
            pruned: false,
        }
    }

    /// Takes labels, exclusion and multi-line settings of pods from `dir`.
    pub fn with_metadata(mut self, dir: Arc<Directory>) -> Self {
        self.meta = Some(dir);
        self
    }

    /// Saves checkpoints to `path` whenever a file's multi-line setting is
    /// fixed, before any of its lines are read.
    pub fn persist_settings(mut self, path: PathBuf) -> Self {
        self.persist = Some(path);
        self
    }

    fn pod_info(&self, labels: &FileLabels) -> Option<Arc<crate::metadata::PodInfo>> {
        self.meta.as_ref()?.pod(&labels.pod_uid)
    }

    /// Fixes the multi-line setting of file `i`, which just got its
    /// identity: the one saved with its checkpoint, else the pod's
    /// annotation, else the default. Saved before any line is read.
    fn settle(&mut self, i: usize) {
        let Some(id) = self.files[i].id else {
            return;
        };
        let saved = self
            .checkpoints
            .lock()
            .ok()
            .and_then(|c| c.files.get(&id).and_then(|p| p.multiline.clone()));
        let detector = match &saved {
            Some(name) => Detector::parse(name).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "saved multi-line setting unusable; using the default");
                self.cfg.multiline.clone()
            }),
            None => {
                let annotated = self
                    .pod_info(&self.files[i].labels)
                    .and_then(|p| p.multiline.clone());
                match annotated.map(|a| Detector::parse(&a)) {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        tracing::warn!(path = %self.files[i].path.display(), error = %e, "ignoring the pod's logfleet.dev/multiline annotation");
                        self.cfg.multiline.clone()
                    }
                    None => self.cfg.multiline.clone(),
                }
            }
        };
        let t = &mut self.files[i];
        t.group = detector.map(|d| Grouper::new(d, self.cfg.group.clone()));
        let grouping_possible = self.cfg.multiline.is_some() || self.meta.is_some();
        if saved.is_some() || !grouping_possible {
            return;
        }
        let name = t
            .group
            .as_ref()
            .map_or_else(|| "none".to_owned(), |g| g.detector().name());
        if let Ok(mut cp) = self.checkpoints.lock() {
            let e = cp
                .files
                .entry(id)
                .or_insert_with(|| crate::checkpoint::Position {
                    path: t.path.clone(),
                    offset: t.range_start,
                    multiline: None,
                });
            e.multiline = Some(name);
        }
        self.settings_unsaved = true;
    }

    /// Saves the multi-line settings fixed since the last save. Called
    /// before any line of those files is read: at the end of a scan (one
    /// save for every file it opened, not one each), and when a file is
    /// identified while being polled.
    fn save_settings(&mut self) {
        if !std::mem::take(&mut self.settings_unsaved) {
            return;
        }
        if let Some(path) = &self.persist {
            if let Err(e) = crate::checkpoint::save_shared(path, &self.checkpoints) {
                tracing::error!(error = %e, "saving checkpoints failed");
            }
        }
    }

    /// Brings the open files' labels up to date with the pod metadata, and
    /// closes files of pods or containers excluded meanwhile.
    fn refresh_metadata(&mut self) {
        let Some(dir) = self.meta.clone() else {
            return;
        };
        let gen = dir.generation();
        if gen == self.meta_generation {
            return;
        }
        self.meta_generation = gen;
        let mut drop_files = Vec::new();
        for (i, t) in self.files.iter_mut().enumerate() {
            let Some(info) = dir.pod(&t.labels.pod_uid) else {
                continue;
            };
            if info.excludes(&t.labels.container) {
                drop_files.push(i);
                continue;
            }
            if t.labels.extra != info.labels {
                t.labels.extra = info.labels.clone();
            }
        }
        for i in drop_files.into_iter().rev() {
            let t = self.files.swap_remove(i);
            tracing::info!(path = %t.path.display(), "excluded by annotation; no longer read");
            self.by_inode.remove(&t.inode);
            if let Some(moved) = self.files.get(i).map(|f| f.inode) {
                self.by_inode.insert(moved, i);
            }
        }
    }

    fn acked(&self, id: u64) -> Option<u64> {
        self.checkpoints.lock().ok().and_then(|c| c.offset(id))
    }

    fn is_tracked(&self, id: u64) -> bool {
        self.files.iter().any(|f| f.id == Some(id))
    }

    /// Takes in the result of a directory scan that saw every directory.
    pub fn apply_scan(&mut self, found: Vec<Found>) {
        self.apply_scanned(crate::discover::Scanned {
            found,
            complete: true,
        });
    }

    /// Takes in the result of a directory scan: opens new files, notes
    /// renames, and forgets finished files that left the disk. What was not
    /// seen is forgotten only after a scan that saw everything and opened
    /// everything it found: a directory that could not be read, a file
    /// deferred by `--max-open-files` or one that failed to open may still
    /// be there, and forgetting its checkpoint would read it again from
    /// the start.
    pub fn apply_scanned(&mut self, scan: crate::discover::Scanned) {
        let found = scan.found;
        let mut complete = scan.complete;
        self.generation += 1;
        let gen = self.generation;
        let mut deferred = 0u64;
        self.refresh_metadata();
        self.excluded.clear();
        for f in found {
            let Ok(md) = std::fs::metadata(&f.path) else {
                complete = false;
                continue;
            };
            let ino = inode(&md);
            if let Some(&i) = self.by_inode.get(&ino) {
                let t = &mut self.files[i];
                t.path = f.path;
                t.kind = f.kind;
                continue;
            }
            if let Some(k) = self.known.get(&ino).copied() {
                if (k.size, k.mtime_ns) == stamp(&md) {
                    if let Some(d) = self.done.get_mut(&k.id) {
                        d.seen = gen;
                        d.path = f.path;
                    }
                    continue;
                }
                // Same inode, other content: a new file on a reused inode.
                self.known.remove(&ino);
            }
            if self.files.len() >= self.cfg.max_open_files {
                deferred += 1;
                complete = false;
                continue;
            }
            complete &= self.open(f, &md, gen);
        }
        if deferred > 0 {
            tracing::warn!(
                deferred,
                open = self.files.len(),
                "too many open log files; new ones wait until some are finished (--max-open-files)"
            );
        }
        self.stats.deferred_files = deferred;
        self.stats.excluded_files = self.excluded.len() as u64;
        self.save_settings();
        // Finished files gone from disk: their checkpoints can go too, once
        // everything read from them is acknowledged.
        let gone: Vec<u64> = self
            .done
            .iter()
            .filter(|(id, d)| {
                complete && d.seen != gen && self.acked(**id).unwrap_or(0) >= d.final_end
            })
            .map(|(id, _)| *id)
            .collect();
        if !gone.is_empty() {
            self.known.retain(|_, k| !gone.contains(&k.id));
            if let Ok(mut cp) = self.checkpoints.lock() {
                for id in &gone {
                    self.done.remove(id);
                    cp.files.remove(id);
                }
            }
        }
        // Checkpoints of files no longer on disk that we never opened in
        // this run: the data after their offset is lost (deleted while the
        // agent was down). Count it once and drop the entry, at the first
        // scan that saw and opened everything.
        if complete && !self.pruned {
            self.pruned = true;
            let live: Vec<u64> = self
                .files
                .iter()
                .filter_map(|f| f.id)
                .chain(self.done.keys().copied())
                .chain(self.excluded.iter().copied())
                .collect();
            if let Ok(mut cp) = self.checkpoints.lock() {
                let before = cp.files.len();
                cp.files.retain(|id, _| live.contains(id));
                self.stats.lost_files += (before - cp.files.len()) as u64;
            }
        }
    }

    /// Opens a found file; false when it could not be read or identified
    /// (yet): its checkpoint, if any, must stay.
    fn open(&mut self, f: Found, md: &std::fs::Metadata, gen: u64) -> bool {
        let ino = inode(md);
        let gz = f.kind == FileKind::Gzipped;
        let Ok(head) = read_head(&f.path, gz) else {
            return false;
        };
        // A gzipped file is complete; for a plain one wait for a newline.
        let id = fingerprint::prefix(&head, gz).map(|p| fingerprint::file_id(&f.labels, p));
        let info = self.pod_info(&f.labels);
        if info
            .as_ref()
            .is_some_and(|p| p.excludes(&f.labels.container))
        {
            self.excluded.extend(id);
            return true;
        }
        let mut f = f;
        if let Some(info) = info {
            f.labels.extra = info.labels.clone();
        }
        if let Some(id) = id {
            if self.is_tracked(id) || self.done.contains_key(&id) {
                // The gzip copy of a file we have open or finished.
                let (size, mtime_ns) = stamp(md);
                self.known.insert(ino, Known { id, size, mtime_ns });
                if let Some(d) = self.done.get_mut(&id) {
                    d.seen = gen;
                    d.path = f.path;
                }
                return true;
            }
        } else if gz {
            return true; // empty gzip: nothing to read
        }
        let offset = id.and_then(|id| self.acked(id)).unwrap_or(0);
        let source = match self.open_at(&f.path, gz, offset) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "cannot open log file");
                self.stats.errors += 1;
                return false;
            }
        };
        let t = Tracked {
            id,
            labels: f.labels,
            path: f.path,
            kind: f.kind,
            inode: ino,
            source,
            framer: Framer::new(offset, self.cfg.max_line),
            asm: Assembler::new(offset, self.cfg.max_line),
            group: None,
            range_start: offset,
            last_growth: Instant::now(),
            deleted: false,
            size: offset,
            mtime_ns: stamp(md).1,
        };
        tracing::debug!(path = %t.path.display(), offset, "tailing");
        self.by_inode.insert(ino, self.files.len());
        self.files.push(t);
        if id.is_some() {
            self.settle(self.files.len() - 1);
        }
        self.stats.open_files = self.files.len() as u64;
        // Not identified yet (no full first line): its checkpoint, if it
        // had one, is not known to be stale.
        id.is_some()
    }

    fn open_at(&self, path: &Path, gz: bool, offset: u64) -> std::io::Result<Source> {
        let mut file = File::open(path)?;
        if gz {
            let mut dec = flate2::read::GzDecoder::new(file);
            let skipped = std::io::copy(&mut (&mut dec).take(offset), &mut std::io::sink())?;
            if skipped < offset {
                tracing::warn!(path = %path.display(), offset, skipped, "gzip file shorter than checkpoint");
            } else if offset > 0 {
                tracing::info!(path = %path.display(), offset, "resuming inside a gzipped rotated file");
            }
            Ok(Source::Gz(Box::new(dec)))
        } else {
            file.seek(SeekFrom::Start(offset))?;
            Ok(Source::Plain(file))
        }
    }

    /// Reads every file once (up to the per-file budget), passing lines to
    /// `batch`; after each file `sink` may seal and ship the batch, and
    /// returns false to end the pass there (the shipper is busy: reading on
    /// would only grow the batch). The next pass starts with the files this
    /// one did not reach. Returns true when any file produced data.
    pub fn poll(
        &mut self,
        batch: &mut BatchBuilder,
        sink: &mut dyn FnMut(&mut BatchBuilder) -> bool,
    ) -> bool {
        let now = Instant::now();
        let mut progress = false;
        let mut finished = Vec::new();
        let n = self.files.len();
        let first = if self.next_file < n {
            self.next_file
        } else {
            0
        };
        self.next_file = 0;
        for k in 0..n {
            let i = (first + k) % n;
            match self.poll_file(i, now, batch) {
                Ok((grew, fin)) => {
                    progress |= grew;
                    if fin {
                        finished.push(i);
                    }
                }
                Err(e) => {
                    self.stats.errors += 1;
                    tracing::warn!(path = %self.files[i].path.display(), error = %e, "read failed");
                }
            }
            if !sink(batch) {
                self.next_file = (i + 1) % n;
                break;
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            let t = self.files.swap_remove(i);
            self.by_inode.remove(&t.inode);
            if let Some(&moved) = self.files.get(i).map(|f| &f.inode) {
                self.by_inode.insert(moved, i);
            }
            if let Some(id) = t.id {
                if let Some(md) = t.metadata() {
                    let (size, mtime_ns) = stamp(&md);
                    self.known.insert(t.inode, Known { id, size, mtime_ns });
                }
                self.done.insert(
                    id,
                    Done {
                        final_end: safe_end(&t.asm, &t.group),
                        path: t.path,
                        seen: self.generation,
                    },
                );
            }
        }
        self.stats.open_files = self.files.len() as u64;
        progress
    }

    fn poll_file(
        &mut self,
        i: usize,
        now: Instant,
        batch: &mut BatchBuilder,
    ) -> std::io::Result<(bool, bool)> {
        let cfg = self.cfg.clone();
        let t = &mut self.files[i];
        let mut deleted = t.deleted;
        let mut unchanged = false;
        if let Source::Plain(f) = &t.source {
            let md = f.metadata()?;
            deleted = md.nlink() == 0;
            t.size = md.len();
            let mtime_ns = stamp(&md).1;
            let touched = std::mem::replace(&mut t.mtime_ns, mtime_ns) != mtime_ns;
            // Nothing new: skip the read (and its buffer) altogether.
            unchanged = md.len() == t.framer.read_offset();
            // Shorter than what was read: truncated. As long or longer but
            // with another first line: truncated and written again between
            // two looks, which the size alone cannot show.
            let rewritten = (!unchanged || touched)
                && t.id.is_some_and(|id| {
                    let head = t.head().unwrap_or_default();
                    fingerprint::prefix(&head, false)
                        .is_some_and(|p| fingerprint::file_id(&t.labels, p) != id)
                });
            if md.len() < t.framer.read_offset() || rewritten {
                self.stats.truncations += 1;
                if self.follow_copy(i)? {
                    // Copy-truncate: what was written after the last read
                    // is in the copy, which is read on from there; the
                    // truncated file is a new one at the next scan.
                    return Ok((true, false));
                }
                tracing::info!(path = %self.files[i].path.display(), "file truncated, reading from the start");
                self.truncated(i, now, batch)?;
                return Ok((true, false));
            }
        }
        self.files[i].deleted = deleted;
        if self.files[i].id.is_none() {
            if let Some(r) = self.identify(i, now, deleted, &cfg) {
                return Ok(r);
            }
        }
        let readbuf = &mut self.readbuf;
        let odd = &mut self.stats.odd;
        let t = &mut self.files[i];
        let Some(id) = t.id else {
            return Ok((false, false));
        };
        let Tracked {
            source,
            framer,
            asm,
            group,
            labels,
            path,
            range_start,
            last_growth,
            kind,
            ..
        } = t;
        let mut sink = BatchSink {
            batch,
            file_id: id,
            labels,
            path,
            start: *range_start,
            idx: None,
            lines: 0,
            now,
        };
        let mut read_total = 0usize;
        let mut eof = unchanged;
        while !eof && read_total < cfg.read_budget {
            let n = source.read(readbuf)?;
            if n == 0 {
                eof = true;
                break;
            }
            read_total += n;
            let ts = now_ns();
            match group.as_mut() {
                Some(g) => {
                    let mut grouped = g.sink(&mut sink, now);
                    framer.feed(&readbuf[..n], |rec, end| {
                        asm.feed(rec, end, now, ts, odd, &mut grouped)
                    })
                }
                None => framer.feed(&readbuf[..n], |rec, end| {
                    asm.feed(rec, end, now, ts, odd, &mut sink)
                }),
            }
        }
        let grew = read_total > 0;
        if grew {
            *last_growth = now;
        }
        // Between passes a file keeps only its unfinished record: with
        // hundreds of files catching up at once, read buffers kept per file
        // would otherwise add up to more than everything else.
        framer.shrink();
        let gz = matches!(source, Source::Gz(_));
        let finished = eof
            && (gz
                || deleted
                || (*kind != FileKind::Live
                    && now.saturating_duration_since(*last_growth) >= cfg.rotate_wait));
        let ts = now_ns();
        match group.as_mut() {
            Some(g) => {
                let mut grouped = g.sink(&mut sink, now);
                finish_pass(finished, framer, asm, odd, &mut grouped, now, ts, &cfg);
                if finished {
                    g.flush_all(&mut sink);
                } else if eof {
                    g.flush_stale(now, ts, &mut sink);
                }
                self.stats.records += g.stats.records;
                self.stats.joined_lines += g.stats.joined_lines;
                g.stats = Default::default();
            }
            None => finish_pass(finished, framer, asm, odd, &mut sink, now, ts, &cfg),
        }
        let end = safe_end(asm, group);
        let lines = sink.close(end);
        *range_start = end.max(*range_start);
        self.stats.lines += lines;
        self.stats.bytes += read_total as u64;
        Ok((grew, finished))
    }

    /// Gives an unidentified file its identity once its first line is
    /// complete. Returns what `poll_file` should return when the file cannot
    /// be read now: not yet identifiable, or an alias of a file already read.
    fn identify(
        &mut self,
        i: usize,
        now: Instant,
        deleted: bool,
        cfg: &TailConfig,
    ) -> Option<(bool, bool)> {
        let t = &self.files[i];
        let rotated_idle = t.kind != FileKind::Live
            && now.saturating_duration_since(t.last_growth) >= cfg.rotate_wait;
        // Through the open descriptor: after a rename the path may already
        // name another file.
        let head = t.head().unwrap_or_default();
        match fingerprint::prefix(&head, deleted || rotated_idle) {
            Some(p) => {
                let id = fingerprint::file_id(&t.labels, p);
                if self.done.contains_key(&id) || self.files.iter().any(|f| f.id == Some(id)) {
                    // Its content is already read under this identity (for
                    // example kubelet's gzip copy was opened first).
                    return Some((false, true));
                }
                self.files[i].id = Some(id);
                self.settle(i);
                self.save_settings();
                None
            }
            None if deleted || rotated_idle => Some((false, true)),
            None => {
                if !head.is_empty() {
                    self.files[i].last_growth = now;
                }
                Some((false, false))
            }
        }
    }

    /// A truncated file whose content was copied first (logrotate's
    /// `copytruncate`): a plain file beside it with the same identity and
    /// at least as long as what was read. Reading goes on in the copy from
    /// where it stood, with the same identity, record state and offsets, so
    /// nothing written before the truncation is lost or read twice; the
    /// truncated file is forgotten and found again as a new file. True when
    /// such a copy was found.
    fn follow_copy(&mut self, i: usize) -> std::io::Result<bool> {
        let t = &self.files[i];
        let (Some(id), Source::Plain(_)) = (t.id, &t.source) else {
            return Ok(false);
        };
        let at = t.framer.read_offset();
        let Some(dir) = t.path.parent() else {
            return Ok(false);
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(false);
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // The copy may have been compressed since (kubelet's gzip of a
            // rotated file): read on inside it, as after a restart.
            let gz = name.ends_with(".gz");
            if path == t.path || name.ends_with(".tmp") {
                continue;
            }
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            let ino = inode(&md);
            if !md.is_file()
                || (!gz && md.len() < at)
                || ino == t.inode
                || self.by_inode.contains_key(&ino)
            {
                continue;
            }
            let Ok(head) = read_head(&path, gz) else {
                continue;
            };
            let same = [false, true].into_iter().any(|finished| {
                fingerprint::prefix(&head, finished)
                    .is_some_and(|p| fingerprint::file_id(&t.labels, p) == id)
            });
            if !same {
                continue;
            }
            let source = self.open_at(&path, gz, at)?;
            let t = &self.files[i];
            tracing::info!(from = %t.path.display(), to = %path.display(), offset = at, "file truncated after a copy; reading on in the copy");
            let old = t.inode;
            self.by_inode.remove(&old);
            self.known.remove(&ino);
            self.by_inode.insert(ino, i);
            let t = &mut self.files[i];
            t.source = source;
            t.path = path;
            t.kind = if gz {
                FileKind::Gzipped
            } else {
                FileKind::Rotated
            };
            t.inode = ino;
            t.size = if gz { at } else { md.len() };
            t.mtime_ns = stamp(&md).1;
            return Ok(true);
        }
        Ok(false)
    }

    /// The file shrank: finish what we had under its old identity and start
    /// over from offset 0 as a new file.
    fn truncated(
        &mut self,
        i: usize,
        now: Instant,
        batch: &mut BatchBuilder,
    ) -> std::io::Result<()> {
        let max_line = self.cfg.max_line;
        let odd = &mut self.stats.odd;
        let t = &mut self.files[i];
        if let Some(id) = t.id {
            let mut sink = BatchSink {
                batch,
                file_id: id,
                labels: &t.labels,
                path: &t.path,
                start: t.range_start,
                idx: None,
                lines: 0,
                now,
            };
            let ts = now_ns();
            let asm = &mut t.asm;
            match t.group.as_mut() {
                Some(g) => {
                    let mut grouped = g.sink(&mut sink, now);
                    t.framer
                        .finish(|rec, end| asm.feed(rec, end, now, ts, odd, &mut grouped));
                    asm.flush_all(t.framer.record_offset(), odd, &mut grouped);
                    g.flush_all(&mut sink);
                }
                None => {
                    t.framer
                        .finish(|rec, end| asm.feed(rec, end, now, ts, odd, &mut sink));
                    asm.flush_all(t.framer.record_offset(), odd, &mut sink);
                }
            }
            let end = safe_end(asm, &t.group);
            self.stats.lines += sink.close(end);
            self.known.remove(&t.inode);
            self.done.insert(
                id,
                Done {
                    final_end: end,
                    path: t.path.clone(),
                    seen: 0,
                },
            );
        }
        if let Source::Plain(f) = &mut t.source {
            f.seek(SeekFrom::Start(0))?;
        }
        t.id = None;
        t.framer = Framer::new(0, max_line);
        t.asm = Assembler::new(0, max_line);
        t.group = None;
        t.range_start = 0;
        t.last_growth = now;
        Ok(())
    }

    /// Files with a multi-line record still being assembled.
    pub fn open_records(&self) -> usize {
        self.files
            .iter()
            .filter(|t| t.group.as_ref().is_some_and(|g| g.open_offset().is_some()))
            .count()
    }

    /// Number of open files.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// Bytes of the open files not yet acknowledged by the aggregator, as
    /// of the last pass (decompressed bytes read so far, for gzip).
    pub fn bytes_behind(&self) -> u64 {
        let Ok(cp) = self.checkpoints.lock() else {
            return 0;
        };
        self.files
            .iter()
            .map(|t| {
                let size = t.size.max(t.framer.read_offset());
                let acked = t.id.and_then(|id| cp.offset(id)).unwrap_or(0);
                size.saturating_sub(acked)
            })
            .sum()
    }
}

/// Ends one pass over a file: a finished file gives up its unfinished
/// record and partial lines; otherwise partial lines idle past the timeout
/// go out as unterminated.
#[allow(clippy::too_many_arguments)]
fn finish_pass(
    finished: bool,
    framer: &mut Framer,
    asm: &mut Assembler,
    odd: &mut Oddities,
    sink: &mut impl LineSink,
    now: Instant,
    ts: i64,
    cfg: &TailConfig,
) {
    if finished {
        framer.finish(|rec, end| asm.feed(rec, end, now, ts, odd, sink));
        asm.flush_all(framer.record_offset(), odd, sink);
    } else {
        asm.flush_stale(now, cfg.partial_timeout, framer.record_offset(), odd, sink);
    }
}
