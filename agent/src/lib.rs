//! The logfleet node agent: discovers container log files, tails them from
//! their checkpoints, parses CRI and docker records, batches and compresses
//! lines, and pushes them to the aggregator. Checkpoints move only after an
//! acknowledgement, so every line is delivered at least once and the
//! aggregator's de-duplication makes it exactly once.
//!
//! Data flow: [`discover`] -> [`tail`] (with [`cri`] and [`fingerprint`]) ->
//! [`batch`] -> [`ship`] -> [`checkpoint`]; lines the aggregator refuses go
//! to [`deadletter`]; [`report`] says how the agent is doing (readiness,
//! heartbeat).

pub mod batch;
pub mod checkpoint;
pub mod cri;
pub mod deadletter;
pub mod discover;
pub mod fingerprint;
pub mod http;
pub mod metadata;
pub mod metrics;
pub mod multiline;
pub mod report;
pub mod ship;
pub mod tail;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;

use logfleet_proto::v1::Compression;
use tokio::sync::{mpsc, Notify};

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The `node` label of every line.
    pub node_name: String,
    /// Directory holding `<namespace>_<pod>_<uid>/<container>/<n>.log`.
    pub log_root: PathBuf,
    /// Where checkpoints are kept.
    pub state_dir: PathBuf,
    /// The aggregator.
    pub target: ship::Target,
    /// Address for `/metrics`, `/healthz`, `/readyz`; none: not served.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Payload compression.
    pub compression: Compression,
    /// Compression level (zstd 1..=22, gzip 0..=9).
    pub compression_level: i32,
    /// Seal a batch at this many bytes of line text.
    pub batch_bytes: usize,
    /// Seal a batch when its oldest line waited this long.
    pub batch_wait: Duration,
    /// Full directory rescan interval (backs up file-system notifications).
    pub rescan_interval: Duration,
    /// Interval between checks of open files when no notification arrives.
    pub poll_interval: Duration,
    /// Tailer settings.
    pub tail: tail::TailConfig,
    /// Which files to take.
    pub filter: discover::Filter,
    /// Retry delays.
    pub backoff: ship::Backoff,
    /// Interval between heartbeats to the aggregator.
    pub heartbeat_interval: Duration,
    /// Largest dead-letter file before it is rotated (one older file kept).
    pub dead_letter_bytes: u64,
    /// Kubernetes metadata for lines; none: lines carry path labels only.
    pub metadata: Option<MetadataConfig>,
}

/// Where pod metadata comes from and what is taken.
#[derive(Debug, Clone, Default)]
pub struct MetadataConfig {
    /// Labels to take from pods and namespaces.
    pub selection: metadata::Selection,
    /// How long and how many deleted pods are remembered.
    pub limits: metadata::Limits,
    /// A kubeconfig to use instead of the in-cluster configuration (the
    /// demo's stand-in API server); none: inferred.
    pub kubeconfig: Option<PathBuf>,
}

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory is unusable.
    #[error("state dir {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Checkpoints could not be loaded.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The aggregator connection could not be set up.
    #[error(transparent)]
    Connect(#[from] ship::ConnectError),
    /// The HTTP endpoint could not be served.
    #[error("http endpoint {addr}: {source}")]
    Http {
        /// Address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The reader thread failed.
    #[error("reader thread: {0}")]
    Reader(String),
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| AgentError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    })?;
    let cp_path = checkpoint::file_in(&cfg.state_dir);
    let checkpoints = Arc::new(Mutex::new(checkpoint::load(&cp_path)?));
    let metrics = Arc::new(Mutex::new(metrics::AgentMetrics::new()));
    let report = Arc::new(report::Report::new());
    if let Some(problem) = report::check_log_root(&cfg.log_root) {
        // Not fatal (the directory may appear later), but not a silent
        // success either: /readyz and the heartbeat say it too.
        tracing::warn!(problem = %problem, "cannot read the log root; is the host path mounted?");
        report.set(report::Source::LogRoot, Some(problem));
    }
    let heartbeat = Arc::new(AtomicI64::new(chrono::Utc::now().timestamp()));
    let directory = match &cfg.metadata {
        Some(m) => Some(start_metadata(&cfg.node_name, m, report.clone()).await),
        None => None,
    };
    if let Some((d, _)) = &directory {
        // The first list usually takes milliseconds: waiting for it (never
        // longer than METADATA_START_WAIT) keeps the files found at start
        // from shipping without their pods' labels and multi-line settings.
        let deadline = tokio::time::Instant::now() + METADATA_START_WAIT;
        while !d.is_synced() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !d.is_synced() {
            tracing::warn!("pod metadata not listed yet; reading without it meanwhile");
        }
    }

    let channel = ship::channel(&cfg.target)?;
    let token = ship::BearerToken::new(cfg.target.token.as_deref())?
        .with_identity(cfg.target.identity_token_file.clone());
    let client = logfleet_proto::v1::ingest_client::IngestClient::with_interceptor(channel, token)
        .max_decoding_message_size(4 << 20)
        .max_encoding_message_size(256 << 20);

    if let Some(addr) = cfg.http_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Http { addr, source })?;
        let state = http::State {
            metrics: metrics.clone(),
            report: report.clone(),
            heartbeat: heartbeat.clone(),
        };
        tokio::spawn(http::serve(listener, state));
    }

    // One batch being built, one waiting, one in flight: memory stays at a
    // few batch sizes however far behind the aggregator is.
    let (tx, rx) = mpsc::channel(1);
    let (wake, wake_rx) = Wake::new();
    let acked = Arc::new(Notify::new());
    let shipper = ship::Shipper {
        client: client.clone(),
        checkpoints: checkpoints.clone(),
        acked: acked.clone(),
        metrics: metrics.clone(),
        backoff: cfg.backoff,
        report: report.clone(),
        dead_letters: deadletter::DeadLetters::new(&cfg.state_dir, cfg.dead_letter_bytes),
        on_taken: {
            let w = wake.clone();
            Box::new(move || w.event(false))
        },
    };
    let ship_task = tokio::spawn(shipper.run(rx));
    let beat_task = tokio::spawn(send_heartbeats(
        client,
        cfg.node_name.clone(),
        cfg.heartbeat_interval,
        report.clone(),
    ));
    let saver = tokio::spawn(save_checkpoints(
        cp_path.clone(),
        checkpoints.clone(),
        acked.clone(),
        metrics.clone(),
        report.clone(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let ctx = ReadLoop {
            cfg: cfg.clone(),
            checkpoints: checkpoints.clone(),
            metrics: metrics.clone(),
            tx,
            stop: stop.clone(),
            heartbeat: heartbeat.clone(),
            report: report.clone(),
            directory: directory.as_ref().map(|(d, _)| d.clone()),
            checkpoint_path: cp_path.clone(),
        };
        std::thread::Builder::new()
            .name("logfleet-reader".into())
            .spawn(move || ctx.run(wake, wake_rx))
            .map_err(|e| AgentError::Reader(e.to_string()))?
    };
    tracing::info!(node = %cfg.node_name, root = %cfg.log_root.display(), aggregator = %cfg.target.url, "agent started");

    shutdown.await;
    tracing::info!("agent stopping");
    stop.store(true, Ordering::Relaxed);
    // The reader may be blocked handing over a batch; dropping the shipper
    // closes the channel and frees it. Unsent data is re-read next start.
    ship_task.abort();
    beat_task.abort();
    let _ = ship_task.await;
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    saver.abort();
    if let Some((_, task)) = directory {
        task.abort();
    }
    // Under the savers' lock: an aborted periodic save may still be
    // writing (abort does not stop a blocking task).
    checkpoint::save_shared(&cp_path, &checkpoints)?;
    Ok(())
}

/// Longest wait at start for the first list of pods.
const METADATA_START_WAIT: Duration = Duration::from_secs(2);

/// Starts the pod watch. Without a usable client the agent still runs:
/// lines ship with their path labels and the metadata is reported stale.
async fn start_metadata(
    node: &str,
    m: &MetadataConfig,
    report: Arc<report::Report>,
) -> (Arc<metadata::Directory>, tokio::task::JoinHandle<()>) {
    let dir = Arc::new(metadata::Directory::new(m.limits.clone()));
    let cfg = metadata::watch::WatchConfig {
        node: node.to_owned(),
        selection: m.selection.clone(),
    };
    let task = match metadata::watch::client(m.kubeconfig.as_deref()).await {
        Ok(client) => tokio::spawn(metadata::watch::run(client, cfg, dir.clone(), report)),
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes client (in-cluster config or KUBECONFIG): lines ship without pod metadata");
            report.set(
                report::Source::Metadata,
                Some(format!("no Kubernetes client: {e}")),
            );
            tokio::spawn(async {})
        }
    };
    (dir, task)
}

/// Saves checkpoints after acknowledgements, at most every 200 ms: fewer
/// fsyncs, and a crash costs only a re-send that the aggregator drops.
async fn save_checkpoints(
    path: PathBuf,
    checkpoints: Arc<Mutex<checkpoint::Checkpoints>>,
    acked: Arc<Notify>,
    metrics: Arc<Mutex<metrics::AgentMetrics>>,
    report: Arc<report::Report>,
) {
    loop {
        acked.notified().await;
        let p = path.clone();
        let cp = checkpoints.clone();
        let failed =
            match tokio::task::spawn_blocking(move || checkpoint::save_shared(&p, &cp)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("checkpoint task failed: {e}")),
            };
        if let Some(e) = &failed {
            // Lines still ship; a crash now re-sends more (which the
            // aggregator drops). Said in the heartbeat and counted.
            tracing::error!(error = %e, "saving checkpoints failed");
            if let Ok(m) = metrics.lock() {
                m.checkpoint_failures.inc();
            }
        }
        report.set(
            report::Source::Checkpoint,
            failed.map(|e| format!("saving checkpoints failed: {e}")),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a heartbeat every `interval`, lines or not, so that the aggregator
/// tells a quiet node from a dead agent. A failed heartbeat is retried at
/// the next interval (pushes report their own failures).
async fn send_heartbeats(
    mut client: logfleet_proto::v1::ingest_client::IngestClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            ship::BearerToken,
        >,
    >,
    node: String,
    interval: Duration,
    report: Arc<report::Report>,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = client.heartbeat(report.heartbeat(&node)).await {
            tracing::debug!(code = ?e.code(), message = e.message(), "heartbeat failed");
        }
    }
}

/// Delay of the extra scan after a change under the log root.
const FOLLOWUP_SCAN: Duration = Duration::from_millis(200);

/// Wakes the reader on file-system changes. Bounded whatever the rate of
/// events: a flag says whether any was structural, and at most one wake-up
/// waits in the channel.
#[derive(Clone)]
struct Wake {
    structural: Arc<AtomicBool>,
    tx: SyncSender<()>,
}

impl Wake {
    fn new() -> (Self, Receiver<()>) {
        let (tx, rx) = sync_channel(1);
        (
            Wake {
                structural: Arc::new(AtomicBool::new(false)),
                tx,
            },
            rx,
        )
    }

    fn event(&self, structural: bool) {
        if structural {
            self.structural.store(true, Ordering::Relaxed);
        }
        // Full: a wake-up is already pending, which is all that is needed.
        let _ = self.tx.try_send(());
    }

    fn take_structural(&self) -> bool {
        self.structural.swap(false, Ordering::Relaxed)
    }
}

/// The reader thread's state.
struct ReadLoop {
    cfg: AgentConfig,
    checkpoints: Arc<Mutex<checkpoint::Checkpoints>>,
    metrics: Arc<Mutex<metrics::AgentMetrics>>,
    tx: mpsc::Sender<batch::Sealed>,
    stop: Arc<AtomicBool>,
    heartbeat: Arc<AtomicI64>,
    report: Arc<report::Report>,
    directory: Option<Arc<metadata::Directory>>,
    checkpoint_path: PathBuf,
}

impl ReadLoop {
    fn run(self, wake: Wake, wake_rx: Receiver<()>) {
        use notify::Watcher;
        let cfg = &self.cfg;
        let w2 = wake.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                use notify::event::{EventKind, ModifyKind};
                w2.event(matches!(
                    ev.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(ModifyKind::Name(_))
                ));
            }
        })
        .ok();
        let mut watching = false;
        let mut tailer = tail::Tailer::new(cfg.tail.clone(), self.checkpoints.clone())
            .persist_settings(self.checkpoint_path.clone());
        if let Some(d) = &self.directory {
            tailer = tailer.with_metadata(d.clone());
        }
        let mut builder = batch::BatchBuilder::default();
        let mut last_scan: Option<Instant> = None;
        let mut rescan = true;
        let mut followup: Option<Instant> = None;
        let mut closed = false;
        // A sealed batch the shipper had no room for. While it waits, files
        // are still discovered and opened, but not read: the files are the
        // buffer, memory stays at a few batches however long the outage.
        let mut backlog: Option<batch::Sealed> = None;
        while !self.stop.load(Ordering::Relaxed) && !closed {
            let now = Instant::now();
            self.heartbeat
                .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
            if !watching {
                if let Some(w) = watcher.as_mut() {
                    watching = w
                        .watch(&cfg.log_root, notify::RecursiveMode::Recursive)
                        .is_ok();
                    rescan |= watching;
                }
            }
            rescan |= wake.take_structural();
            let followup_due = followup.is_some_and(|t| now >= t);
            if rescan
                || followup_due
                || last_scan.is_none_or(|t| now.duration_since(t) >= cfg.rescan_interval)
            {
                let problem = report::check_log_root(&cfg.log_root);
                if problem.is_some() != self.report.get(report::Source::LogRoot).is_some() {
                    match &problem {
                        Some(p) => tracing::warn!(problem = %p, "cannot read the log root"),
                        None => tracing::info!(root = %cfg.log_root.display(), "log root readable"),
                    }
                }
                self.report.set(report::Source::LogRoot, problem);
                tailer.apply_scanned(discover::scan_all(&cfg.log_root, &cfg.filter));
                last_scan = Some(now);
                // A directory's watch is added only after its creation
                // event: a file created in it meanwhile raises no event
                // (kubelet makes the pod directory, then the container
                // directory and file). One more scan shortly after every
                // change catches those.
                followup = rescan.then(|| now + FOLLOWUP_SCAN);
                rescan = false;
                self.report
                    .files
                    .store(tailer.open_files() as u64, Ordering::Relaxed);
                self.report
                    .bytes_behind
                    .store(tailer.bytes_behind(), Ordering::Relaxed);
            }
            if let Some(b) = backlog.take() {
                match self.tx.try_send(b) {
                    Ok(()) => {}
                    Err(TrySendError::Full(b)) => backlog = Some(b),
                    Err(TrySendError::Closed(_)) => closed = true,
                }
            }
            let mut progress = false;
            if backlog.is_none() && !closed {
                let mut ship = |b: &mut batch::BatchBuilder| -> bool {
                    if closed || backlog.is_some() {
                        return false;
                    }
                    if b.is_empty() || !b.due(Instant::now(), cfg.batch_bytes, cfg.batch_wait) {
                        return true;
                    }
                    match b.seal(&cfg.node_name, cfg.compression, cfg.compression_level) {
                        Ok(sealed) => match self.tx.try_send(sealed) {
                            Ok(()) => true,
                            Err(TrySendError::Full(s)) => {
                                backlog = Some(s);
                                false
                            }
                            Err(TrySendError::Closed(_)) => {
                                closed = true;
                                false
                            }
                        },
                        Err(e) => {
                            tracing::error!(error = %e, "sealing batch failed");
                            true
                        }
                    }
                };
                progress = tailer.poll(&mut builder, &mut ship);
                ship(&mut builder);
            }
            if let Ok(mut m) = self.metrics.lock() {
                m.sync_tail(&tailer.stats);
                if let Some(d) = &self.directory {
                    m.sync_metadata(d);
                }
            }
            if progress && backlog.is_none() {
                continue;
            }
            let mut wait = cfg.poll_interval;
            // With a batch waiting, the shipper wakes us when it takes the
            // one before it (`on_taken`); the poll interval backs that up.
            if let Some(d) = builder.deadline(cfg.batch_wait) {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            if let Some(f) = followup {
                wait = wait.min(f.saturating_duration_since(Instant::now()));
            }
            match wake_rx.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    watching = false;
                    std::thread::sleep(wait);
                }
            }
        }
    }
}
