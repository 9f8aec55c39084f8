//! Finding container log files under the log root and reading their labels
//! from the path `<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`.

use std::path::{Path, PathBuf};

use logfleet_proto::v1::FileLabels;
use regex::Regex;

/// What a file in a container directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `<restart>.log`: the file the runtime writes now.
    Live,
    /// `<restart>.log.<YYYYMMDD-HHMMSS>`: renamed by kubelet's rotation.
    Rotated,
    /// `<restart>.log.<YYYYMMDD-HHMMSS>.gz`: a rotated file kubelet gzipped.
    Gzipped,
}

/// A log file found under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Full path.
    pub path: PathBuf,
    /// Labels from the path.
    pub labels: FileLabels,
    /// Kind of file.
    pub kind: FileKind,
}

/// Parses the file name of a container log: restart number and kind.
/// Temporary files (`*.tmp`) and anything else give `None`.
pub fn parse_file_name(name: &str) -> Option<(u32, FileKind)> {
    let (num, rest) = name.split_once(".log")?;
    let restart: u32 = num.parse().ok()?;
    if !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rest.is_empty() {
        return Some((restart, FileKind::Live));
    }
    let stamp = rest.strip_prefix('.')?;
    let (stamp, kind) = match stamp.strip_suffix(".gz") {
        Some(s) => (s, FileKind::Gzipped),
        None => (stamp, FileKind::Rotated),
    };
    let b = stamp.as_bytes();
    let ok = b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit());
    ok.then_some((restart, kind))
}

/// Parses a pod directory name `<namespace>_<pod>_<uid>`. Neither
/// namespaces, pod names nor UIDs may contain `_`, so exactly three parts.
pub fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut it = name.split('_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((ns, pod, uid))
}

/// Include and exclude patterns on namespace, pod and container. A file is
/// taken when every include list that is set matches and no exclude does.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Namespaces to include (full match); empty: all.
    pub include_namespace: Vec<Regex>,
    /// Namespaces to exclude.
    pub exclude_namespace: Vec<Regex>,
    /// Pods to include; empty: all.
    pub include_pod: Vec<Regex>,
    /// Pods to exclude.
    pub exclude_pod: Vec<Regex>,
    /// Containers to include; empty: all.
    pub include_container: Vec<Regex>,
    /// Containers to exclude.
    pub exclude_container: Vec<Regex>,
}

/// Compiles a pattern so that it must match the whole value.
pub fn full_match(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn pass(value: &str, include: &[Regex], exclude: &[Regex]) -> bool {
    (include.is_empty() || include.iter().any(|r| r.is_match(value)))
        && !exclude.iter().any(|r| r.is_match(value))
}

impl Filter {
    /// Whether a pod directory may hold wanted files.
    pub fn pod(&self, namespace: &str, pod: &str) -> bool {
        pass(namespace, &self.include_namespace, &self.exclude_namespace)
            && pass(pod, &self.include_pod, &self.exclude_pod)
    }

    /// Whether a container is wanted.
    pub fn container(&self, container: &str) -> bool {
        pass(container, &self.include_container, &self.exclude_container)
    }
}

/// Lists every container log file under `root` that passes `filter`.
/// Unreadable directories are skipped: pods come and go while we walk.
pub fn scan(root: &Path, filter: &Filter) -> Vec<Found> {
    scan_all(root, filter).found
}

/// What a scan found, and whether it saw every directory.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The log files, oldest data first per container.
    pub found: Vec<Found>,
    /// False when a directory could not be read (the log root not mounted
    /// yet, EMFILE, EACCES): files missing from `found` may still exist,
    /// so their checkpoints must stay.
    pub complete: bool,
}

/// Like [`scan`], and says whether every directory could be read.
pub fn scan_all(root: &Path, filter: &Filter) -> Scanned {
    let mut found = Vec::new();
    let mut complete = true;
    let Ok(pods) = std::fs::read_dir(root) else {
        return Scanned {
            found,
            complete: false,
        };
    };
    for pod in pods.flatten() {
        let pod_name = pod.file_name();
        let Some((ns, pod_n, uid)) = pod_name.to_str().and_then(parse_pod_dir) else {
            continue;
        };
        if !filter.pod(ns, pod_n) {
            continue;
        }
        let Ok(containers) = std::fs::read_dir(pod.path()) else {
            complete = false;
            continue;
        };
        for c in containers.flatten() {
            let cname = c.file_name();
            let Some(container) = cname.to_str() else {
                continue;
            };
            if !filter.container(container) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(c.path()) else {
                complete = false;
                continue;
            };
            for f in files.flatten() {
                let fname = f.file_name();
                let Some((restart, kind)) = fname.to_str().and_then(parse_file_name) else {
                    continue;
                };
                found.push(Found {
                    path: f.path(),
                    labels: FileLabels {
                        namespace: ns.to_owned(),
                        pod: pod_n.to_owned(),
                        pod_uid: uid.to_owned(),
                        container: container.to_owned(),
                        restart,
                        extra: Vec::new(),
                    },
                    kind,
                });
            }
        }
    }
    // Oldest data first: rotated (by time stamp) before live, per container.
    found.sort_by(|a, b| {
        (
            &a.labels.pod_uid,
            &a.labels.container,
            a.labels.restart,
            a.kind == FileKind::Live,
            &a.path,
        )
            .cmp(&(
                &b.labels.pod_uid,
                &b.labels.container,
                b.labels.restart,
                b.kind == FileKind::Live,
                &b.path,
            ))
    });
    Scanned { found, complete }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("0.log"), Some((0, FileKind::Live)));
        assert_eq!(parse_file_name("12.log"), Some((12, FileKind::Live)));
        assert_eq!(
            parse_file_name("3.log.20261127-101500"),
            Some((3, FileKind::Rotated))
        );
        assert_eq!(
            parse_file_name("3.log.20261127-101500.gz"),
            Some((3, FileKind::Gzipped))
        );
        for bad in [
            "3.log.20261127-101500.tmp",
            "3.log.20261127-101500.gz.tmp",
            "x.log",
            "+1.log",
            "0.log.1",
            "0.logx",
            "log",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn pod_dirs() {
        assert_eq!(
            parse_pod_dir("kube-system_coredns-5d78c9869d-abcde_0f3e-11"),
            Some(("kube-system", "coredns-5d78c9869d-abcde", "0f3e-11"))
        );
        assert_eq!(parse_pod_dir("a_b"), None);
        assert_eq!(parse_pod_dir("a_b_c_d"), None);
        assert_eq!(parse_pod_dir("_b_c"), None);
    }

    #[test]
    fn filters() {
        let f = Filter {
            exclude_namespace: vec![full_match("kube-.*").unwrap()],
            include_container: vec![full_match("app|web").unwrap()],
            ..Default::default()
        };
        assert!(f.pod("default", "x"));
        assert!(!f.pod("kube-system", "x"));
        assert!(f.pod("mykube-system", "x"), "patterns match whole values");
        assert!(f.container("web"));
        assert!(!f.container("webber"));
    }

    #[test]
    fn scans_tree_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("ns_pod_uid/app");
        std::fs::create_dir_all(&c).unwrap();
        for n in [
            "0.log",
            "0.log.20261127-101500.gz",
            "0.log.20261127-101600",
            "1.log",
            "0.log.20261127-101700.tmp",
        ] {
            std::fs::write(c.join(n), b"").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("not-a-pod/app")).unwrap();
        std::fs::write(dir.path().join("not-a-pod/app/0.log"), b"").unwrap();
        let names: Vec<_> = scan(dir.path(), &Filter::default())
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20261127-101500.gz",
                "0.log.20261127-101600",
                "0.log",
                "1.log"
            ]
        );
    }
}
