//! Acknowledged read positions, saved crash-safely under the state dir.
//!
//! The store is a small JSON document replaced atomically (write to a
//! temporary file, fsync, rename, fsync the directory): after a crash it
//! holds either the old or the new positions, never a torn mix. Positions
//! only ever come from acknowledged batches, so resuming from them can
//! re-send data (which the aggregator drops) but never skip any.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The acknowledged position in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The file's path when last seen (it may since have been rotated or
    /// gzipped; discovery matches files by identity, not by this path).
    pub path: PathBuf,
    /// Offset up to which the aggregator acknowledged the file.
    pub offset: u64,
    /// The multi-line setting the file is read with (`none` when lines
    /// are not grouped), fixed when the file is first read: a re-read after
    /// a crash must group lines exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<String>,
}

/// Every file's acknowledged position, by file identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoints {
    /// Format version, for future changes.
    pub version: u32,
    /// Positions by file id (as decimal strings: JSON keys are strings).
    pub files: BTreeMap<u64, Position>,
}

/// Failure to load or save checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but is not a valid checkpoint document.
    #[error("checkpoint file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

impl Checkpoints {
    /// Moves a file's position forward (never back) and records its path.
    pub fn advance(&mut self, id: u64, path: &Path, offset: u64) {
        let e = self.files.entry(id).or_insert_with(|| Position {
            path: path.to_owned(),
            offset,
            multiline: None,
        });
        e.offset = e.offset.max(offset);
        if e.path != path {
            e.path = path.to_owned();
        }
    }

    /// The acknowledged offset of a file, if any.
    pub fn offset(&self, id: u64) -> Option<u64> {
        self.files.get(&id).map(|p| p.offset)
    }
}

/// The checkpoint file inside `state_dir`.
pub fn file_in(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoints.json")
}

/// The previous save, kept beside the current one.
pub fn previous(path: &Path) -> PathBuf {
    path.with_extension("json.prev")
}

fn read(path: &Path) -> Result<Option<Checkpoints>, CheckpointError> {
    match std::fs::read(path) {
        Ok(data) => {
            serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| CheckpointError::Corrupt {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Loads checkpoints; a missing file is an empty store.
///
/// A file that does not parse (a disk that lied about a write, a copy cut
/// short) must not keep the agent from starting: the previous save is
/// loaded instead (a re-send of what came after it, which the aggregator
/// drops). With both unusable the agent starts from nothing, and the bad
/// file is kept as `checkpoints.json.corrupt`. A file that cannot be read
/// at all (EIO, EACCES) is an error: starting from nothing then would
/// re-send the whole node for a passing fault.
pub fn load(path: &Path) -> Result<Checkpoints, CheckpointError> {
    let current = read(path);
    if let Ok(Some(cp)) = current {
        return Ok(cp);
    }
    if let Err(e @ CheckpointError::Io { .. }) = current {
        return Err(e);
    }
    let prev = previous(path);
    match (current, read(&prev)) {
        (Ok(None), Ok(None)) => Ok(Checkpoints::default()),
        (cur, Ok(Some(cp))) => {
            if let Err(e) = cur {
                tracing::error!(error = %e, previous = %prev.display(), "checkpoint file unusable; resuming from the previous one");
            } else {
                // A crash between the two renames of a save.
                tracing::warn!(previous = %prev.display(), "resuming from the previous checkpoint file");
            }
            Ok(cp)
        }
        (_, Err(e @ CheckpointError::Io { .. })) => Err(e),
        (cur, _) => {
            let aside = path.with_extension("json.corrupt");
            tracing::error!(error = ?cur.err(), kept = %aside.display(), "checkpoint files unusable; starting from the beginning of every file (the aggregator drops what it already has)");
            let _ = std::fs::rename(path, &aside);
            Ok(Checkpoints::default())
        }
    }
}

/// Saves the current checkpoints: the snapshot is taken and written under
/// one lock, so that of two savers the newer snapshot always lands last and
/// no two write the temporary file at once. Every save goes through here.
pub fn save_shared(path: &Path, cp: &std::sync::Mutex<Checkpoints>) -> Result<(), CheckpointError> {
    let _one = SAVING.lock().unwrap_or_else(|p| p.into_inner());
    let snapshot = cp
        .lock()
        .map(|c| c.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    write(path, &snapshot)
}

static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Saves checkpoints atomically and durably (under the same lock as
/// [`save_shared`]).
pub fn save(path: &Path, cp: &Checkpoints) -> Result<(), CheckpointError> {
    let _one = SAVING.lock().unwrap_or_else(|p| p.into_inner());
    write(path, cp)
}

fn write(path: &Path, cp: &Checkpoints) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec(cp).map_err(|e| io(std::io::Error::other(e)))?;
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    // The current file becomes the previous one, then the new one takes its
    // place: at every moment one of the two is whole.
    match std::fs::rename(path, previous(path)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_never_moves_back() {
        let mut cp = Checkpoints::default();
        cp.advance(1, Path::new("/a"), 100);
        cp.advance(1, Path::new("/a.1"), 50);
        assert_eq!(cp.offset(1), Some(100));
        assert_eq!(cp.files[&1].path, Path::new("/a.1"));
        assert_eq!(cp.offset(2), None);
    }

    #[test]
    fn save_and_load_round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_in(dir.path());
        assert_eq!(load(&path).unwrap(), Checkpoints::default());
        let mut cp = Checkpoints::default();
        cp.advance(u64::MAX, Path::new("/x/0.log"), 12345);
        save(&path, &cp).unwrap();
        assert_eq!(load(&path).unwrap(), cp);
        assert!(!path.with_extension("json.tmp").exists());
        // Torn: the previous save (none here: the first) takes its place.
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path).unwrap(), Checkpoints::default());
    }
}
