//! A kubelet-style writer of container logs, for the demo and for tests.
//!
//! It reproduces what a node does to `/var/log/pods` (see
//! docs/ARCHITECTURE.md): CRI records split into 16 KiB `P`/`F` chunks,
//! rotation by rename with a short window in which the runtime still writes
//! into the renamed file, gzip of older rotated files through a `.tmp`
//! name, deletion beyond the maximum file count, container restarts to a
//! new `<n>.log`, lines that never get their `F`, and pod deletion. Every
//! line written is recorded, so a test can check that each one arrives
//! exactly once.

pub mod api;
pub mod clickhouse;
pub mod loki;
pub mod messages;
pub mod tools;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest CRI chunk, as containerd's default `max_container_log_line_size`.
pub const CHUNK: usize = 16 * 1024;

/// One line as written, for comparison with what is queried back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Written {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Timestamp, ns since the epoch.
    pub ts: i64,
    /// The message.
    pub line: String,
}

/// Kubelet's rotation settings.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate when the live file reaches this size.
    pub max_size: u64,
    /// Keep at most this many files per container, the live one included.
    pub max_files: usize,
    /// Records the runtime still writes into the renamed file before it
    /// reopens its log.
    pub reopen_delay_records: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 10 << 20,
            max_files: 5,
            reopen_delay_records: 3,
        }
    }
}

/// Record format a container's runtime writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// containerd / CRI-O.
    Cri,
    /// docker json-file.
    Docker,
}

/// One container's log directory and its current file.
#[derive(Debug)]
pub struct Container {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub name: String,
    dir: PathBuf,
    restart: u32,
    file: File,
    /// Path the runtime writes to (the renamed file during the reopen delay).
    writing: PathBuf,
    size: u64,
    rotations: u64,
    reopen_pending: usize,
    rotation: Rotation,
    format: Format,
}

/// A pod directory.
#[derive(Debug)]
pub struct Pod {
    /// `<namespace>_<pod>_<uid>` directory.
    pub dir: PathBuf,
    /// Its containers.
    pub containers: Vec<Container>,
}

fn rotated_name(restart: u32, n: u64) -> String {
    // Kubelet stamps with wall time at second precision; a counter keeps
    // names unique when a test rotates several times a second.
    let t = chrono::DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap_or_default();
    format!("{restart}.log.{}", t.format("%Y%m%d-%H%M%S"))
}

impl Pod {
    /// Creates the pod directory and one container directory per name.
    pub fn create(
        root: &Path,
        namespace: &str,
        pod: &str,
        uid: &str,
        containers: &[(&str, Format)],
        rotation: Rotation,
    ) -> std::io::Result<Pod> {
        let dir = root.join(format!("{namespace}_{pod}_{uid}"));
        let mut cs = Vec::new();
        for (name, format) in containers {
            let cdir = dir.join(name);
            fs::create_dir_all(&cdir)?;
            let path = cdir.join("0.log");
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            cs.push(Container {
                namespace: namespace.into(),
                pod: pod.into(),
                name: (*name).into(),
                dir: cdir,
                restart: 0,
                file,
                writing: path,
                size: 0,
                rotations: 0,
                reopen_pending: 0,
                rotation,
                format: *format,
            });
        }
        Ok(Pod {
            dir,
            containers: cs,
        })
    }

    /// Deletes the pod's directory, as kubelet does when the pod is gone.
    pub fn delete(self) -> std::io::Result<()> {
        fs::remove_dir_all(&self.dir)
    }
}

impl Container {
    fn record(&self, ts: i64, stream: &str, tag: char, msg: &str) -> Vec<u8> {
        let t = chrono::DateTime::from_timestamp_nanos(ts)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        match self.format {
            Format::Cri => format!("{t} {stream} {tag} {msg}\n").into_bytes(),
            Format::Docker => {
                let log = if tag == 'F' {
                    format!("{msg}\n")
                } else {
                    msg.to_owned()
                };
                let mut v = serde_json::to_vec(
                    &serde_json::json!({"log": log, "stream": stream, "time": t}),
                )
                .unwrap_or_default();
                v.push(b'\n');
                v
            }
        }
    }

    fn write_record(&mut self, rec: &[u8]) -> std::io::Result<()> {
        self.file.write_all(rec)?;
        self.size += rec.len() as u64;
        if self.reopen_pending > 0 {
            self.reopen_pending -= 1;
            if self.reopen_pending == 0 {
                self.reopen()?;
            }
        } else if self.size >= self.rotation.max_size {
            self.rotate()?;
        }
        Ok(())
    }

    /// Writes one line, split into `P` chunks at [`CHUNK`] bytes; with
    /// `finish` false the last chunk is `P` too (the container died mid-line).
    pub fn write(
        &mut self,
        ts: i64,
        stream: &str,
        msg: &str,
        finish: bool,
    ) -> std::io::Result<Written> {
        let bytes = msg.as_bytes();
        let mut start = 0;
        loop {
            let mut end = (start + CHUNK).min(bytes.len());
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            let last = end == bytes.len();
            let tag = if last && finish { 'F' } else { 'P' };
            let rec = self.record(ts, stream, tag, &msg[start..end]);
            self.write_record(&rec)?;
            if last {
                break;
            }
            start = end;
        }
        Ok(Written {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: self.name.clone(),
            stream: stream.into(),
            ts,
            line: msg.into(),
        })
    }

    /// Kubelet's rotation: drop temporaries, delete the oldest rotated
    /// files, gzip uncompressed rotated ones (through `.tmp`), rename the
    /// live file. The runtime keeps writing into the renamed file for a few
    /// records until it reopens.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        let prefix = format!("{}.log.", self.restart);
        let mut rotated: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        for p in rotated
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        {
            fs::remove_file(p)?;
        }
        rotated.retain(|p| p.extension().is_none_or(|e| e != "tmp"));
        rotated.sort();
        let keep = self.rotation.max_files.saturating_sub(2);
        while rotated.len() > keep {
            fs::remove_file(rotated.remove(0))?;
        }
        for p in &rotated {
            if p.extension().is_some_and(|e| e == "gz") {
                continue;
            }
            let data = fs::read(p)?;
            let tmp = PathBuf::from(format!("{}.tmp", p.display()));
            let mut enc =
                flate2::write::GzEncoder::new(File::create(&tmp)?, flate2::Compression::fast());
            enc.write_all(&data)?;
            enc.finish()?.sync_all()?;
            fs::rename(&tmp, format!("{}.gz", p.display()))?;
            fs::remove_file(p)?;
        }
        self.rotations += 1;
        let to = self.dir.join(rotated_name(self.restart, self.rotations));
        fs::rename(&self.writing, &to)?;
        self.writing = to;
        self.reopen_pending = self.rotation.reopen_delay_records.max(1);
        Ok(())
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let path = self.dir.join(format!("{}.log", self.restart));
        self.file = OpenOptions::new().create(true).append(true).open(&path)?;
        self.writing = path;
        self.size = 0;
        Ok(())
    }

    /// The container restarted: the runtime starts `<restart + 1>.log`.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.restart += 1;
        self.reopen_pending = 0;
        self.reopen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_gzips_and_restarts_like_kubelet() {
        let dir = std::env::temp_dir().join(format!("kubesim-{}", std::process::id()));
        let rot = Rotation {
            max_size: 300,
            max_files: 4,
            reopen_delay_records: 2,
        };
        let mut pod = Pod::create(&dir, "ns", "p", "u", &[("c", Format::Cri)], rot).unwrap();
        let c = &mut pod.containers[0];
        for i in 0..40 {
            c.write(i, "stdout", &format!("line {i:04}"), true).unwrap();
        }
        let w = c
            .write(99, "stderr", &"x".repeat(CHUNK + 10), false)
            .unwrap();
        assert_eq!(w.line.len(), CHUNK + 10);
        c.restart().unwrap();
        c.write(100, "stdout", "after restart", true).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.join("ns_p_u/c"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        names.sort();
        let gz = names.iter().filter(|n| n.ends_with(".gz")).count();
        let plain_rotated = names
            .iter()
            .filter(|n| n.starts_with("0.log.") && !n.ends_with(".gz"))
            .count();
        assert!(names.contains(&"1.log".to_string()), "{names:?}");
        assert_eq!(
            plain_rotated, 1,
            "only the newest rotated file stays plain: {names:?}"
        );
        // max_files - 2 survive the clean-up, then the rename adds one.
        assert_eq!(gz + plain_rotated, 3, "{names:?}");
        let newest = names
            .iter()
            .find(|n| n.starts_with("0.log.") && !n.ends_with(".gz"))
            .unwrap();
        let tail = fs::read_to_string(dir.join("ns_p_u/c").join(newest)).unwrap();
        assert!(
            tail.contains(" stderr P "),
            "the runtime wrote into the renamed file until reopen"
        );
        assert!(!names.iter().any(|n| n.ends_with(".tmp")));
        pod.delete().unwrap();
        assert!(!dir.join("ns_p_u").exists());
        let _ = fs::remove_dir_all(dir);
    }
}
