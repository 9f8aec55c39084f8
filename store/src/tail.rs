//! Live tails: every committed batch goes to each open tail, and what a
//! tail has not taken yet is bounded in bytes. A tail that falls further
//! behind than its budget is cut off and told it lagged, instead of holding
//! up to a thousand decoded batches (a GiB at 1 MiB batches) outside
//! `--max-inflight`, as a message-counted broadcast channel did.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use logfleet_proto::v1::{FileLabels, LineBatch};
use tokio::sync::mpsc;

use crate::backend::Entries;
use crate::query::{matching, Query, QueryError};

/// Lines just stored, for live tails.
#[derive(Debug)]
pub struct Committed {
    /// Node.
    pub node: Arc<str>,
    /// Labels per range index.
    pub labels: Vec<FileLabels>,
    /// The lines.
    pub batch: LineBatch,
    /// When they became durable.
    pub at: Instant,
    /// Their size in memory, roughly: what live tails are bounded by.
    pub bytes: u64,
}

/// Bytes of batches one tail may have waiting.
pub const TAIL_BUDGET: u64 = 16 << 20;

/// Why a tail got no more batches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    /// It fell more than its budget behind; `n` batches were not sent.
    #[error("tail fell behind and skipped {0} batches; query the range instead")]
    Lagged(u64),
    /// The store is closing.
    #[error("the store is closed")]
    Closed,
}

struct Sub {
    tx: mpsc::UnboundedSender<Arc<Committed>>,
    state: Arc<SubState>,
}

#[derive(Default)]
struct SubState {
    /// Bytes sent and not yet taken.
    queued: AtomicU64,
    /// Set once it fell behind; it gets nothing more.
    lagged: AtomicBool,
    /// Batches not sent to it since.
    skipped: AtomicU64,
}

/// Where committed batches are handed to the open tails.
pub struct TailHub {
    subs: Mutex<Vec<Sub>>,
    budget: u64,
}

impl Default for TailHub {
    fn default() -> Self {
        Self::new(TAIL_BUDGET)
    }
}

impl TailHub {
    /// A hub whose tails may each have `budget` bytes waiting.
    pub fn new(budget: u64) -> Self {
        TailHub {
            subs: Mutex::new(Vec::new()),
            budget,
        }
    }

    /// Opens a tail: it gets every batch committed from now on.
    pub fn subscribe(&self) -> TailSub {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(SubState::default());
        if let Ok(mut s) = self.subs.lock() {
            s.push(Sub {
                tx,
                state: state.clone(),
            });
        }
        TailSub { rx, state }
    }

    /// Whether any tail is open (the writer builds nothing otherwise).
    pub fn has_subscribers(&self) -> bool {
        self.subs.lock().map(|s| !s.is_empty()).unwrap_or(false)
    }

    /// Hands a batch to every open tail that has room for it; one without
    /// room is cut off (it is told it lagged), one that closed is dropped.
    pub fn send(&self, c: Arc<Committed>) {
        let bytes = c.bytes;
        let Ok(mut subs) = self.subs.lock() else {
            return;
        };
        subs.retain(|s| {
            if s.tx.is_closed() {
                return false;
            }
            let queued = s.state.queued.load(Ordering::Acquire);
            if queued + bytes > self.budget && queued > 0 {
                s.state.lagged.store(true, Ordering::Release);
                s.state.skipped.fetch_add(1, Ordering::AcqRel);
                // Dropping the sender wakes a tail waiting in `recv`.
                return false;
            }
            s.state.queued.fetch_add(bytes, Ordering::AcqRel);
            s.tx.send(c.clone()).is_ok()
        });
    }
}

/// One open tail.
pub struct TailSub {
    rx: mpsc::UnboundedReceiver<Arc<Committed>>,
    state: Arc<SubState>,
}

impl TailSub {
    /// The next committed batch; `Lagged` once the tail fell behind (at
    /// once, not after what is still queued: that would look like a tail
    /// that is keeping up).
    pub async fn recv(&mut self) -> Result<Arc<Committed>, TailError> {
        if self.state.lagged.load(Ordering::Acquire) {
            return Err(TailError::Lagged(
                self.state.skipped.load(Ordering::Acquire),
            ));
        }
        match self.rx.recv().await {
            Some(c) if !self.state.lagged.load(Ordering::Acquire) => {
                self.state.queued.fetch_sub(c.bytes, Ordering::AcqRel);
                Ok(c)
            }
            _ if self.state.lagged.load(Ordering::Acquire) => Err(TailError::Lagged(
                self.state.skipped.load(Ordering::Acquire),
            )),
            _ => Err(TailError::Closed),
        }
    }

    /// Bytes waiting for this tail.
    pub fn queued(&self) -> u64 {
        self.state.queued.load(Ordering::Acquire)
    }
}

impl TailHub {
    /// The entries of `q` in every batch sent from now on, as a store's
    /// [`crate::Backend::tail`] hands them over; a follower that falls
    /// behind its budget gets [`QueryError::Lagged`], said rather than
    /// skipped in silence.
    pub fn follow(&self, q: Query) -> Entries {
        let mut sub = self.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    got = sub.recv() => match got {
                        Ok(c) => {
                            let entries = matching(&q, &c.node, &c.labels, &c.batch);
                            if !entries.is_empty() && tx.send(Ok(entries)).await.is_err() {
                                break;
                            }
                        }
                        Err(e @ TailError::Lagged(_)) => {
                            let _ = tx.send(Err(QueryError::Lagged(e.to_string()))).await;
                            break;
                        }
                        Err(TailError::Closed) => break,
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(bytes: u64) -> Arc<Committed> {
        Arc::new(Committed {
            node: Arc::from("n"),
            labels: Vec::new(),
            batch: Default::default(),
            at: std::time::Instant::now(),
            bytes,
        })
    }

    #[tokio::test]
    async fn a_slow_tail_is_cut_off_at_its_budget_and_told_so() {
        let hub = TailHub::new(1000);
        let mut slow = hub.subscribe();
        let mut fast = hub.subscribe();
        for _ in 0..20 {
            hub.send(batch(100));
            fast.recv().await.unwrap();
            assert!(slow.queued() <= 1000, "bounded: {}", slow.queued());
        }
        assert!(matches!(slow.recv().await, Err(TailError::Lagged(1))));
        // The fast one goes on; the slow one is gone from the hub.
        hub.send(batch(100));
        assert!(fast.recv().await.is_ok());
        assert_eq!(hub.subs.lock().unwrap().len(), 1);
        // A batch larger than the budget still reaches a tail with nothing
        // queued.
        hub.send(batch(5000));
        assert!(fast.recv().await.is_ok());
        drop(fast);
        hub.send(batch(1));
        assert!(!hub.has_subscribers());
    }
}
