//! What the agent says about itself: readiness (`/readyz`), its latest
//! error, and the heartbeat it sends the aggregator, so that a quiet node is
//! told apart from a dead agent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use logfleet_proto::v1::HeartbeatRequest;

/// Where a problem was seen; each keeps its latest message until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The log root is missing or unreadable.
    LogRoot,
    /// Pushing to the aggregator fails (it is retried).
    Push,
    /// The aggregator refused lines for good (they went to the dead-letter
    /// file).
    Refused,
    /// Pod metadata is stale: lines ship, perhaps without their pod's
    /// labels. Not a readiness problem.
    Metadata,
    /// Checkpoints cannot be saved: lines ship, a crash re-sends more.
    /// Not a readiness problem.
    Checkpoint,
}

/// Shared by the reader, the shipper, the HTTP endpoint and the heartbeat.
#[derive(Debug, Default)]
pub struct Report {
    errors: Mutex<[Option<String>; 5]>,
    /// Whether the last push was acknowledged (or none was tried yet).
    pushes_ok: AtomicBool,
    /// Files open.
    pub files: AtomicU64,
    /// Bytes in open files not yet acknowledged.
    pub bytes_behind: AtomicU64,
    /// Lines written to the dead-letter file since start.
    pub dead_letter_lines: AtomicU64,
}

fn slot(s: Source) -> usize {
    match s {
        Source::LogRoot => 0,
        Source::Push => 1,
        Source::Refused => 2,
        Source::Metadata => 3,
        Source::Checkpoint => 4,
    }
}

impl Report {
    /// A report with nothing wrong yet.
    pub fn new() -> Self {
        Report {
            pushes_ok: AtomicBool::new(true),
            ..Default::default()
        }
    }

    /// Sets (`Some`) or clears (`None`) the problem of `source`.
    pub fn set(&self, source: Source, problem: Option<String>) {
        if let Ok(mut e) = self.errors.lock() {
            e[slot(source)] = problem;
        }
        if source == Source::Push {
            self.pushes_ok
                .store(self.get(Source::Push).is_none(), Ordering::Relaxed);
        }
    }

    /// The problem of `source`, if any.
    pub fn get(&self, source: Source) -> Option<String> {
        self.errors
            .lock()
            .ok()
            .and_then(|e| e[slot(source)].clone())
    }

    /// Whether the agent itself can do its job: its log root is readable.
    /// `Err` says why not. An aggregator that does not take pushes is not
    /// the agent's failure: an aggregator restart (an image bump rolls it
    /// with the agents) would mark every node unready, blame the agents
    /// and stall their rollout. It is said by [`Report::aggregator`], the
    /// push metrics and the aggregator's own view (`NotReporting`).
    pub fn ready(&self) -> Result<(), String> {
        match self.get(Source::LogRoot) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Why the aggregator does not take pushes now, if it does not.
    pub fn aggregator(&self) -> Option<String> {
        (!self.pushes_ok.load(Ordering::Relaxed)).then(|| {
            self.get(Source::Push)
                .unwrap_or_else(|| "aggregator not reachable".into())
        })
    }

    /// Whether the last push was acknowledged.
    pub fn pushes_ok(&self) -> bool {
        self.pushes_ok.load(Ordering::Relaxed)
    }

    /// The most important current problem, empty when none.
    pub fn last_error(&self) -> String {
        [
            Source::LogRoot,
            Source::Refused,
            Source::Push,
            Source::Checkpoint,
            Source::Metadata,
        ]
        .into_iter()
        .find_map(|s| self.get(s))
        .unwrap_or_default()
    }

    /// The heartbeat to send now.
    pub fn heartbeat(&self, node: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            node: node.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            files: self.files.load(Ordering::Relaxed),
            bytes_behind: self.bytes_behind.load(Ordering::Relaxed),
            last_error: self.last_error(),
            dead_letter_lines: self.dead_letter_lines.load(Ordering::Relaxed),
            metadata_stale: self.get(Source::Metadata).is_some(),
        }
    }
}

/// Checks that the log root is a readable directory.
pub fn check_log_root(root: &std::path::Path) -> Option<String> {
    match std::fs::read_dir(root) {
        Ok(_) => None,
        Err(e) => Some(format!("log root {}: {e}", root.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_and_last_error_follow_the_problems() {
        let r = Report::new();
        assert_eq!(r.ready(), Ok(()));
        assert_eq!(r.last_error(), "");
        r.set(Source::Push, Some("connection refused".into()));
        assert_eq!(
            r.ready(),
            Ok(()),
            "the aggregator's outage is not the agent's"
        );
        assert_eq!(r.aggregator(), Some("connection refused".into()));
        r.set(Source::LogRoot, Some("log root /x: not found".into()));
        assert_eq!(r.ready(), Err("log root /x: not found".into()));
        assert_eq!(r.last_error(), "log root /x: not found");
        r.set(Source::LogRoot, None);
        r.set(Source::Push, None);
        assert_eq!(r.ready(), Ok(()));
        r.set(Source::Refused, Some("refused".into()));
        assert_eq!(
            r.ready(),
            Ok(()),
            "refused lines are kept, not a reason to stop"
        );
        let hb = r.heartbeat("n1");
        assert_eq!(
            (hb.node.as_str(), hb.last_error.as_str()),
            ("n1", "refused")
        );
        assert!(!hb.metadata_stale);
        // Stale pod metadata: said in the heartbeat, lines still ship.
        r.set(Source::Refused, None);
        r.set(Source::Metadata, Some("pod metadata is stale: 503".into()));
        assert_eq!(r.ready(), Ok(()), "stale metadata does not stop the agent");
        let hb = r.heartbeat("n1");
        assert!(hb.metadata_stale);
        assert_eq!(hb.last_error, "pod metadata is stale: 503");
    }

    #[test]
    fn log_root_check() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_log_root(dir.path()), None);
        let missing = dir.path().join("nope");
        assert!(check_log_root(&missing).unwrap().contains("nope"));
    }
}
