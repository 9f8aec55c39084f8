//! The embedded store's file system: every open, read, write, fsync,
//! rename, unlink and directory fsync of the store goes through [`Fs`], so
//! that a test can put [`SimFs`] underneath and inject what real disks do:
//! a full disk (short writes and ENOSPC), failed reads and fsyncs (EIO), and
//! a crash that loses every write and directory entry no fsync made
//! durable, as LazyFS (used by Jepsen) and TigerBeetle's simulated storage
//! do. [`RealFs`] is the operating system's.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; created when missing, kept as it is otherwise.
    ReadWrite,
    /// Read and write; created when missing, emptied otherwise.
    Truncate,
}

/// An open file. Reads and writes name their offset, so one handle serves
/// several readers at once.
pub trait FsFile: Send + Sync {
    /// Reads at `off`; returns how much was read (0 at the end).
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// Writes at `off`; returns how much was written (less on a full disk).
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<usize>;
    /// The file's length.
    fn size(&self) -> io::Result<u64>;
    /// Cuts or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (fsync).
    fn sync(&self) -> io::Result<()>;
}

impl dyn FsFile + '_ {
    /// Fills `buf` from `off`, or fails (`UnexpectedEof` past the end).
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, off) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    off += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `off`, or fails (a full disk: `StorageFull`
    /// after a short write; what was written stays, for the caller to cut).
    pub fn write_all_at(&self, mut buf: &[u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, off) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    off += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The whole file.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.size()? as usize];
        self.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// Sequential reads of an [`FsFile`], for `BufReader`.
pub struct Reader<'a> {
    file: &'a dyn FsFile,
    /// Where the next read starts.
    pub pos: u64,
}

impl<'a> Reader<'a> {
    /// Reads `file` from `pos`.
    pub fn new(file: &'a dyn FsFile, pos: u64) -> Self {
        Reader { file, pos }
    }
}

impl io::Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Sequential writes to an [`FsFile`], for `BufWriter`.
pub struct Writer {
    file: Arc<dyn FsFile>,
    /// Where the next write starts.
    pub pos: u64,
}

impl Writer {
    /// Writes `file` from `pos`.
    pub fn new(file: Arc<dyn FsFile>, pos: u64) -> Self {
        Writer { file, pos }
    }

    /// The file written to.
    pub fn file(&self) -> &Arc<dyn FsFile> {
        &self.file
    }
}

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A held directory lock; released when dropped.
pub type DirLock = Box<dyn std::any::Any + Send + Sync>;

/// The file system under the store.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Opens a file.
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Arc<dyn FsFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The names in a directory.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock of a directory, or fails at once.
    fn try_lock(&self, dir: &Path) -> io::Result<DirLock>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
    /// The whole of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.open(path, Mode::Read)?.read_all()
    }
    /// The length of a file.
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.open(path, Mode::Read)?.size()
    }
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(std::fs::File);

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::write_at(&self.0, buf, off)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Fs for RealFs {
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Arc<dyn FsFile>> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        match mode {
            Mode::Read => {}
            Mode::ReadWrite => {
                o.write(true).create(true).truncate(false);
            }
            Mode::Truncate => {
                o.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(RealFile(o.open(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn try_lock(&self, dir: &Path) -> io::Result<DirLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            Ok(Box::new(f))
        } else {
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the data directory is in use by another aggregator",
            ))
        }
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
}

/// A kind of file-system call, for [`SimFs`]'s fault plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `read_at`.
    Read,
    /// `write_at` and `set_len`.
    Write,
    /// `sync` of a file.
    Sync,
    /// `sync_dir`.
    SyncDir,
    /// `rename`.
    Rename,
    /// `remove_file`.
    Remove,
    /// `open`: EMFILE for a file that exists, ENOSPC for one created.
    Open,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    /// What a crash leaves: the data as of the last successful fsync.
    durable: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    File(usize),
    Dir,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    /// Directory -> its entries now.
    dirs: BTreeMap<PathBuf, BTreeMap<String, Entry>>,
    /// Directory -> its entries as the last fsync of it left them.
    durable_dirs: BTreeMap<PathBuf, BTreeMap<String, Entry>>,
    /// Bytes of file data the disk holds at most.
    capacity: Option<u64>,
    /// Calls that fail, by kind: each fails the `n`th next call of its kind.
    fail_at: BTreeMap<Op, Vec<u64>>,
    /// Calls of each kind so far.
    calls: BTreeMap<Op, u64>,
    /// Paths whose calls may fail; none: every path.
    fault_paths: Vec<String>,
    locked: Vec<PathBuf>,
    /// Faults injected so far.
    injected: u64,
}

impl State {
    fn used(&self) -> u64 {
        // Files no directory names any more still hold their space until
        // closed; a simulation does not track handles, so it counts the
        // named ones only.
        let mut seen = std::collections::HashSet::new();
        self.dirs
            .values()
            .flat_map(|d| d.values())
            .filter_map(|e| match e {
                Entry::File(i) if seen.insert(*i) => Some(self.inodes[*i].data.len() as u64),
                _ => None,
            })
            .sum()
    }

    /// Whether this call of `op` on `path` is to fail.
    fn fault(&mut self, op: Op, path: &Path) -> bool {
        let p = path.to_string_lossy();
        if !self.fault_paths.is_empty() && !self.fault_paths.iter().any(|f| p.contains(f)) {
            return false;
        }
        let n = self.calls.entry(op).or_insert(0);
        *n += 1;
        let n = *n;
        let hit = self.fail_at.get(&op).is_some_and(|v| v.contains(&n));
        if hit {
            self.injected += 1;
        }
        hit
    }

    fn split(path: &Path) -> io::Result<(PathBuf, String)> {
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
            .to_string_lossy()
            .into_owned();
        Ok((parent, name))
    }

    fn lookup(&self, path: &Path) -> io::Result<Entry> {
        let (parent, name) = Self::split(path)?;
        self.dirs
            .get(&parent)
            .and_then(|d| d.get(&name))
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// An in-memory file system that loses what was not made durable and fails
/// where it is told to. Paths are absolute; `/` exists.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    /// Calls held back (a disk that stalls), until their [`Hold`] drops.
    holds: Holds,
    /// Handles open now (descriptors, on a real disk).
    handles: Arc<std::sync::atomic::AtomicU64>,
}

/// Held calls: (hold id, kind, path part), and the condition they wait on.
type Holds = Arc<(Mutex<Vec<(u64, Op, String)>>, std::sync::Condvar)>;

/// Calls held by [`SimFs::hold`]; they go on when this is dropped.
pub struct Hold {
    holds: Holds,
    id: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let (m, cv) = &*self.holds;
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|h| h.0 != self.id);
        cv.notify_all();
    }
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimFs")
    }
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> Self {
        let fs = SimFs::default();
        {
            let mut st = fs.lock();
            st.dirs.insert(PathBuf::from("/"), BTreeMap::new());
            st.durable_dirs.insert(PathBuf::from("/"), BTreeMap::new());
        }
        fs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test thread that panicked holding it leaves usable state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of file data the disk holds at most (a full disk refuses the
    /// rest with a short write and ENOSPC); `None`: no limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Bytes of file data held now.
    pub fn used(&self) -> u64 {
        self.lock().used()
    }

    /// Makes the `n`th next call of kind `op` fail (EIO; ENOSPC for writes),
    /// counting only calls on paths that contain one of the strings given to
    /// [`SimFs::only_paths`].
    pub fn fail_nth(&self, op: Op, n: u64) {
        let mut st = self.lock();
        let base = st.calls.get(&op).copied().unwrap_or(0);
        st.fail_at.entry(op).or_default().push(base + n);
    }

    /// Restricts injected faults to paths containing one of `parts`.
    pub fn only_paths(&self, parts: &[&str]) {
        self.lock().fault_paths = parts.iter().map(|s| s.to_string()).collect();
    }

    /// Removes every planned fault and the capacity limit.
    pub fn heal(&self) {
        let mut st = self.lock();
        st.fail_at.clear();
        st.capacity = None;
        st.fault_paths.clear();
    }

    /// Holds back calls of kind `op` on paths containing `part` (a stalled
    /// disk) until the returned [`Hold`] is dropped.
    pub fn hold(&self, op: Op, part: &str) -> Hold {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.holds
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, op, part.to_owned()));
        Hold {
            holds: self.holds.clone(),
            id,
        }
    }

    /// Waits while a [`Hold`] covers this call.
    fn wait_hold(&self, op: Op, path: &Path) {
        let p = path.to_string_lossy();
        let (m, cv) = &*self.holds;
        let mut held = m.lock().unwrap_or_else(|e| e.into_inner());
        while held
            .iter()
            .any(|(_, o, part)| *o == op && p.contains(part.as_str()))
        {
            held = cv.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Files open now: what descriptors they would hold.
    pub fn open_handles(&self) -> u64 {
        self.handles.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Calls of kind `op` so far (on the paths faults are restricted to).
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// What the machine finds after a crash now: a new file system holding
    /// only what was durable (file data as of its last fsync, directory
    /// entries as of their directory's last fsync), with no locks held and
    /// no faults planned. The old one stays usable for the processes that
    /// still write to it, which no longer matter.
    pub fn crash(&self) -> SimFs {
        let st = self.lock();
        let mut new = State::default();
        // Only what durable directory entries reach survives.
        let mut reach: Vec<PathBuf> = vec![PathBuf::from("/")];
        let mut map: BTreeMap<usize, usize> = BTreeMap::new();
        while let Some(dir) = reach.pop() {
            let entries = st.durable_dirs.get(&dir).cloned().unwrap_or_default();
            let mut kept = BTreeMap::new();
            for (name, e) in entries {
                match e {
                    Entry::Dir => {
                        // A directory whose own entries were never synced
                        // comes back empty.
                        reach.push(dir.join(&name));
                        kept.insert(name, Entry::Dir);
                    }
                    Entry::File(i) => {
                        let j = *map.entry(i).or_insert_with(|| {
                            let data = st.inodes[i].durable.clone();
                            new.inodes.push(Inode {
                                data: data.clone(),
                                durable: data,
                            });
                            new.inodes.len() - 1
                        });
                        kept.insert(name, Entry::File(j));
                    }
                }
            }
            new.dirs.insert(dir.clone(), kept.clone());
            new.durable_dirs.insert(dir, kept);
        }
        SimFs {
            state: Arc::new(Mutex::new(new)),
            holds: Default::default(),
            handles: Default::default(),
        }
    }
}

struct SimFile {
    fs: SimFs,
    inode: usize,
    path: PathBuf,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        self.fs
            .handles
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let mut st = self.fs.lock();
        if st.fault(Op::Read, &self.path) {
            return Err(eio());
        }
        let data = &st.inodes[self.inode].data;
        let off = off.min(data.len() as u64) as usize;
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<usize> {
        let mut st = self.fs.lock();
        if st.fault(Op::Write, &self.path) {
            return Err(enospc());
        }
        let len = st.inodes[self.inode].data.len() as u64;
        let end = off + buf.len() as u64;
        let mut n = buf.len();
        if let Some(cap) = st.capacity {
            let grow = end.saturating_sub(len);
            let free = cap.saturating_sub(st.used());
            if grow > free {
                // A short write of what fits, then ENOSPC, as a full disk.
                let fits = (len + free).saturating_sub(off) as usize;
                if fits == 0 {
                    return Err(enospc());
                }
                n = fits.min(buf.len());
            }
        }
        let data = &mut st.inodes[self.inode].data;
        if (data.len() as u64) < off + n as u64 {
            data.resize(off as usize + n, 0);
        }
        data[off as usize..off as usize + n].copy_from_slice(&buf[..n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.fs.lock().inodes[self.inode].data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        let cur = st.inodes[self.inode].data.len() as u64;
        if len > cur {
            if st.fault(Op::Write, &self.path) {
                return Err(enospc());
            }
            if let Some(cap) = st.capacity {
                if len - cur > cap.saturating_sub(st.used()) {
                    return Err(enospc());
                }
            }
        }
        st.inodes[self.inode].data.resize(len as usize, 0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.fs.wait_hold(Op::Sync, &self.path);
        let mut st = self.fs.lock();
        if st.fault(Op::Sync, &self.path) {
            // As Linux does after a failed writeback: the dirty pages may
            // be gone, and the error is reported once.
            let durable = st.inodes[self.inode].durable.clone();
            st.inodes[self.inode].data = durable;
            return Err(eio());
        }
        let i = &mut st.inodes[self.inode];
        i.durable = i.data.clone();
        Ok(())
    }
}

impl Fs for SimFs {
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Arc<dyn FsFile>> {
        let mut st = self.lock();
        let inode = match st.lookup(path) {
            Ok(Entry::File(_)) if st.fault(Op::Open, path) => {
                // As a process out of descriptors sees it.
                return Err(io::Error::from_raw_os_error(libc::EMFILE));
            }
            Ok(Entry::File(i)) => {
                if mode == Mode::Truncate {
                    st.inodes[i].data.clear();
                }
                i
            }
            Ok(Entry::Dir) => return Err(io::Error::from(io::ErrorKind::IsADirectory)),
            Err(e) if mode == Mode::Read => return Err(e),
            Err(_) => {
                if st.fault(Op::Open, path) {
                    return Err(enospc());
                }
                let (parent, name) = State::split(path)?;
                st.inodes.push(Inode::default());
                let i = st.inodes.len() - 1;
                st.dirs
                    .get_mut(&parent)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
                    .insert(name, Entry::File(i));
                i
            }
        };
        self.handles
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            inode,
            path: path.to_owned(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.fault(Op::Rename, to) {
            return Err(eio());
        }
        let e = st.lookup(from)?;
        let (fp, fname) = State::split(from)?;
        let (tp, tname) = State::split(to)?;
        if !st.dirs.contains_key(&tp) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if let Some(d) = st.dirs.get_mut(&fp) {
            d.remove(&fname);
        }
        if let Some(d) = st.dirs.get_mut(&tp) {
            d.insert(tname, e);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.fault(Op::Remove, path) {
            return Err(eio());
        }
        match st.lookup(path)? {
            Entry::Dir => Err(io::ErrorKind::IsADirectory.into()),
            Entry::File(_) => {
                let (p, name) = State::split(path)?;
                if let Some(d) = st.dirs.get_mut(&p) {
                    d.remove(&name);
                }
                Ok(())
            }
        }
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        st.dirs
            .get(dir)
            .map(|d| d.keys().cloned().collect())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let mut at = PathBuf::from("/");
        for c in dir.components().skip(1) {
            let next = at.join(c);
            if !st.dirs.contains_key(&next) {
                let name = c.as_os_str().to_string_lossy().into_owned();
                st.dirs
                    .get_mut(&at)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
                    .insert(name, Entry::Dir);
                st.dirs.insert(next.clone(), BTreeMap::new());
            }
            at = next;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.fault(Op::SyncDir, dir) {
            return Err(eio());
        }
        let entries = st
            .dirs
            .get(dir)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.durable_dirs.insert(dir.to_owned(), entries);
        Ok(())
    }

    fn try_lock(&self, dir: &Path) -> io::Result<DirLock> {
        let mut st = self.lock();
        if st.locked.iter().any(|d| d == dir) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the data directory is in use by another aggregator",
            ));
        }
        st.locked.push(dir.to_owned());
        Ok(Box::new(SimLock {
            fs: self.clone(),
            dir: dir.to_owned(),
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().lookup(path).is_ok()
    }

    // A stat, as on a real disk: no open, so no open fault.
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let st = self.lock();
        match st.lookup(path)? {
            Entry::File(i) => Ok(st.inodes[i].data.len() as u64),
            Entry::Dir => Err(io::ErrorKind::IsADirectory.into()),
        }
    }
}

struct SimLock {
    fs: SimFs,
    dir: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.lock().locked.retain(|d| d != &self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn a_crash_keeps_only_what_was_synced() {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/d/sub")).unwrap();
        fs.sync_dir(&p("/")).unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        let f = fs.open(&p("/d/sub/a"), Mode::ReadWrite).unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync().unwrap();
        f.write_all_at(b" and lost", 7).unwrap();
        // The file's data is synced but its entry is not: gone.
        assert!(!fs.crash().exists(&p("/d/sub/a")));
        fs.sync_dir(&p("/d/sub")).unwrap();
        let after = fs.crash();
        assert_eq!(after.read(&p("/d/sub/a")).unwrap(), b"durable");
        // A rename not followed by a directory fsync is undone.
        fs.rename(&p("/d/sub/a"), &p("/d/sub/b")).unwrap();
        let after = fs.crash();
        assert!(after.exists(&p("/d/sub/a")) && !after.exists(&p("/d/sub/b")));
        // A directory never synced into its parent vanishes with its files.
        fs.create_dir_all(&p("/e")).unwrap();
        let g = fs.open(&p("/e/x"), Mode::ReadWrite).unwrap();
        g.sync().unwrap();
        fs.sync_dir(&p("/e")).unwrap();
        assert!(!fs.crash().exists(&p("/e/x")));
    }

    #[test]
    fn a_full_disk_writes_what_fits_then_refuses() {
        let fs = SimFs::new();
        fs.set_capacity(Some(10));
        let f = fs.open(&p("/a"), Mode::ReadWrite).unwrap();
        assert_eq!(f.write_at(b"0123456789abc", 0).unwrap(), 10);
        let e = f.write_at(b"x", 10).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let f: &dyn FsFile = &*f;
        assert!(f.write_all_at(b"more", 10).is_err());
        // Overwriting in place needs no room.
        f.write_all_at(b"AB", 0).unwrap();
        f.set_len(4).unwrap();
        assert_eq!(fs.used(), 4);
    }

    #[test]
    fn planned_faults_fail_the_nth_call_once() {
        let fs = SimFs::new();
        let f = fs.open(&p("/a"), Mode::ReadWrite).unwrap();
        fs.fail_nth(Op::Sync, 2);
        f.write_all_at(b"one", 0).unwrap();
        f.sync().unwrap();
        f.write_all_at(b"two", 3).unwrap();
        assert!(f.sync().is_err());
        // The failed fsync dropped the dirty data, as Linux may.
        assert_eq!(f.size().unwrap(), 3);
        f.sync().unwrap();
        assert_eq!(fs.injected(), 1);
        fs.only_paths(&["other"]);
        fs.fail_nth(Op::Read, 1);
        let mut b = [0u8; 3];
        let f: &dyn FsFile = &*f;
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"one");
    }

    #[test]
    fn the_lock_is_exclusive_until_dropped() {
        let fs = SimFs::new();
        let l = fs.try_lock(&p("/")).unwrap();
        assert!(fs.try_lock(&p("/")).is_err());
        drop(l);
        assert!(fs.try_lock(&p("/")).is_ok());
    }
}
