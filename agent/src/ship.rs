//! Pushing sealed batches to the aggregator, one at a time and in order,
//! retrying with exponential backoff and jitter until acknowledged. Only an
//! acknowledgement moves the checkpoint.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logfleet_proto::v1::ingest_client::IngestClient;
use tokio::sync::{mpsc, Notify};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::batch::{split_by_file, Sealed};
use crate::checkpoint::Checkpoints;
use crate::deadletter::{DeadLetterError, DeadLetters};
use crate::metrics::AgentMetrics;
use crate::report::{Report, Source};
use logfleet_proto::v1::PushResponse;

/// Failure to set up the connection to the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The aggregator URL is not valid.
    #[error("invalid aggregator address {addr:?}: {source}")]
    Address {
        /// The address given.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The CA file could not be read.
    #[error("reading CA certificate {path}: {source}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token has characters not allowed in a header.
    #[error("the token is not a valid header value")]
    Token,
}

/// How to reach the aggregator.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Bearer token, if the aggregator wants one.
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the aggregator's TLS certificate.
    pub tls_ca: Option<PathBuf>,
    /// The same CA, already read (wins over `tls_ca`).
    pub tls_ca_pem: Option<Vec<u8>>,
    /// The pod's projected service-account token, sent so the aggregator
    /// can check this agent runs on the node it names.
    pub identity_token_file: Option<PathBuf>,
}

/// The aggregator address as a URL: a bare `host:port` gets `http://`
/// (`https://` when a CA is given), as people type it.
pub fn normalize_url(url: &str, tls: bool) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_owned()
    } else if tls {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

/// Says what is wrong when a peer answered, but not as a logfleet gRPC
/// endpoint would (for example the aggregator's HTTP port was given).
pub fn explain(status: &tonic::Status) -> Option<String> {
    let m = status.message();
    let http = m
        .split("HTTP status code ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|c| !c.is_empty());
    if m.contains("grpc-status header missing") || http.is_some() {
        return Some(format!(
            "the server answered plain HTTP{}, not gRPC: give the aggregator's gRPC port (default 7140), not its HTTP port",
            http.map(|c| format!(" {c}")).unwrap_or_default()
        ));
    }
    None
}

/// Builds a lazily connecting channel to the aggregator.
pub fn channel(t: &Target) -> Result<Channel, ConnectError> {
    let url = normalize_url(&t.url, t.tls_ca.is_some() || t.tls_ca_pem.is_some());
    let addr_err = |source| ConnectError::Address {
        addr: url.clone(),
        source,
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(addr_err)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if t.tls_ca.is_some() || t.tls_ca_pem.is_some() || url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(pem) = &t.tls_ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        } else if let Some(ca) = &t.tls_ca {
            let pem = std::fs::read(ca).map_err(|source| ConnectError::Ca {
                path: ca.clone(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        } else {
            tls = tls.with_enabled_roots();
        }
        ep = ep.tls_config(tls).map_err(addr_err)?;
    }
    Ok(ep.connect_lazy())
}

type Ascii = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// A token file re-read when its copy is older than a minute: kubelet
/// replaces a projected token well before it expires.
#[derive(Clone)]
pub struct TokenFile {
    path: PathBuf,
    cached: Arc<std::sync::Mutex<Option<(std::time::Instant, Ascii)>>>,
}

impl TokenFile {
    const REREAD: Duration = Duration::from_secs(60);

    /// A token read from `path`.
    pub fn new(path: PathBuf) -> Self {
        TokenFile {
            path,
            cached: Arc::default(),
        }
    }

    /// The current token; the last good one when the file cannot be read.
    pub fn current(&self) -> Option<Ascii> {
        let mut c = self.cached.lock().ok()?;
        if let Some((at, v)) = c.as_ref() {
            if at.elapsed() < Self::REREAD {
                return Some(v.clone());
            }
        }
        let read = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|t| t.trim().parse::<Ascii>().map_err(|e| e.to_string()));
        match read {
            Ok(v) => {
                *c = Some((std::time::Instant::now(), v.clone()));
                Some(v)
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "reading the identity token");
                c.as_ref().map(|(_, v)| v.clone())
            }
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request, and the
/// identity token when there is one.
#[derive(Clone)]
pub struct BearerToken {
    bearer: Option<Ascii>,
    identity: Option<TokenFile>,
}

impl BearerToken {
    /// An interceptor for `token` (none: adds nothing).
    pub fn new(token: Option<&str>) -> Result<Self, ConnectError> {
        let bearer = token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| ConnectError::Token)
            })
            .transpose()?;
        Ok(BearerToken {
            bearer,
            identity: None,
        })
    }

    /// Also sends the token in `path` as the agent's identity.
    pub fn with_identity(mut self, path: Option<PathBuf>) -> Self {
        self.identity = path.map(TokenFile::new);
        self
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.bearer {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = self.identity.as_ref().and_then(TokenFile::current) {
            req.metadata_mut().insert("logfleet-identity", v);
        }
        Ok(req)
    }
}

/// Backoff between retries: exponential from `min` to `max`, full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), with `jitter` in
    /// [0, 1) scaling it ("full jitter": spreads agents that failed together).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self.min.saturating_mul(1u32 << attempt.min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// Whether a refusal is final: retrying the same batch cannot succeed.
pub fn is_permanent(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::FailedPrecondition
    )
}

/// Shared state the shipper updates.
pub struct Shipper {
    /// Client to the aggregator.
    pub client: IngestClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>,
    /// Acknowledged positions.
    pub checkpoints: Arc<Mutex<Checkpoints>>,
    /// Woken after each acknowledgement, for the checkpoint saver.
    pub acked: Arc<Notify>,
    /// Metrics.
    pub metrics: Arc<Mutex<AgentMetrics>>,
    /// Retry delays.
    pub backoff: Backoff,
    /// Readiness and last error.
    pub report: Arc<Report>,
    /// Where refused lines are kept.
    pub dead_letters: DeadLetters,
    /// Called each time a batch is taken from the channel: the reader,
    /// which stops reading while its next batch waits, goes on at once.
    pub on_taken: Box<dyn Fn() + Send + Sync>,
}

/// The outcome of sending one batch until it is answered.
enum Answer {
    Stored(PushResponse),
    Refused(tonic::Status),
}

impl Shipper {
    /// Pushes every batch from `rx`, in order, until the channel closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Sealed>) {
        while let Some(batch) = rx.recv().await {
            (self.on_taken)();
            self.push(batch).await;
        }
    }

    /// Pushes a batch until it is stored. A batch refused for good is split
    /// per file, so that one bad file cannot take the others with it; what
    /// is still refused goes to the dead-letter file. Checkpoints move only
    /// past what is stored or kept there.
    async fn push(&mut self, batch: Sealed) {
        let mut queue = std::collections::VecDeque::from([batch]);
        while let Some(batch) = queue.pop_front() {
            match self.send(&batch).await {
                Answer::Stored(r) => {
                    if let Ok(m) = self.metrics.lock() {
                        m.batches_acked.inc();
                        m.lines_acked.inc_by(r.stored_lines);
                        m.lines_duplicate.inc_by(r.duplicate_lines);
                        m.payload_bytes.inc_by(batch.request.payload.len() as u64);
                        m.last_ack_seconds.set(chrono::Utc::now().timestamp());
                    }
                    self.advance(&batch);
                }
                Answer::Refused(status) => {
                    if let Ok(m) = self.metrics.lock() {
                        m.batches_rejected.inc();
                    }
                    if batch.request.ranges.len() > 1 {
                        match split_by_file(&batch, 1) {
                            Ok(parts) => {
                                tracing::warn!(code = ?status.code(), message = status.message(), files = parts.len(), "aggregator refused a batch; sending its files one by one");
                                for p in parts.into_iter().rev() {
                                    queue.push_front(p);
                                }
                                continue;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot split a refused batch; keeping it whole");
                            }
                        }
                    }
                    self.keep_refused(&batch, &status).await;
                    self.advance(&batch);
                }
            }
        }
    }

    /// Sends until the aggregator stores or refuses the batch for good;
    /// anything else is retried with backoff.
    async fn send(&mut self, batch: &Sealed) -> Answer {
        let mut attempt = 0u32;
        loop {
            match self.client.push(batch.request.clone()).await {
                Ok(resp) => {
                    self.report.set(Source::Push, None);
                    return Answer::Stored(resp.into_inner());
                }
                Err(status) if is_permanent(status.code()) => {
                    self.report.set(Source::Push, None);
                    return Answer::Refused(status);
                }
                Err(status) => {
                    let delay = self.backoff.delay(attempt, rand::random::<f64>());
                    if status.code() == tonic::Code::ResourceExhausted {
                        // Back-pressure from a busy aggregator: wait, it is
                        // not a failure.
                        tracing::debug!(
                            message = status.message(),
                            ?delay,
                            "aggregator busy; waiting"
                        );
                    } else {
                        let why = explain(&status).unwrap_or_else(|| status.message().to_owned());
                        self.report
                            .set(Source::Push, Some(format!("push failed: {why}")));
                        tracing::warn!(code = ?status.code(), message = status.message(), attempt, ?delay, "push failed; retrying");
                    }
                    if let Ok(m) = self.metrics.lock() {
                        m.push_retries.inc();
                    }
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Writes a refused batch's lines to the dead-letter file, retrying
    /// until that works: a line may be set aside, never lost.
    async fn keep_refused(&self, batch: &Sealed, status: &tonic::Status) {
        let reason = format!("{:?}: {}", status.code(), status.message());
        let mut attempt = 0u32;
        loop {
            let (dl, req, why) = (
                self.dead_letters.clone(),
                batch.request.clone(),
                reason.clone(),
            );
            let kept = tokio::task::spawn_blocking(move || dl.keep(&req, &why)).await;
            match kept {
                Ok(Ok(n)) => {
                    tracing::error!(reason = %reason, lines = n, file = %self.dead_letters.path().display(), "aggregator refused lines; kept them in the dead-letter file");
                    self.report
                        .dead_letter_lines
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    self.report.set(
                        Source::Refused,
                        Some(format!(
                            "{n} lines refused ({reason}); see {}",
                            self.dead_letters.path().display()
                        )),
                    );
                    if let Ok(m) = self.metrics.lock() {
                        m.dead_letter_lines.inc_by(n);
                    }
                    return;
                }
                Ok(Err(DeadLetterError::Decode(e))) => {
                    // Our own payload does not decode: nothing can be kept.
                    // Say so as loudly as we can and move on.
                    tracing::error!(error = %e, lines = batch.lines, reason = %reason, "refused batch cannot be decoded; its lines are lost");
                    if let Ok(m) = self.metrics.lock() {
                        m.dead_letter_lines.inc_by(batch.lines);
                    }
                    // And in the heartbeat, where `logfleet agents` shows it.
                    self.report.set(
                        Source::Refused,
                        Some(format!(
                            "{} refused lines lost: the batch does not decode ({e})",
                            batch.lines
                        )),
                    );
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "writing the dead-letter file failed; retrying");
                }
                Err(e) => tracing::error!(error = %e, "dead-letter task failed; retrying"),
            }
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(self.backoff.delay(attempt, rand::random::<f64>())).await;
        }
    }

    fn advance(&self, batch: &Sealed) {
        if let Ok(mut cp) = self.checkpoints.lock() {
            for e in &batch.ends {
                cp.advance(e.file_id, &e.path, e.end);
            }
        }
        self.acked.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps_with_jitter() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(10));
        assert!(b.delay(30, 0.0) >= Duration::from_secs(5));
    }

    #[test]
    fn bare_addresses_and_http_ports() {
        assert_eq!(
            normalize_url("127.0.0.1:7140", false),
            "http://127.0.0.1:7140"
        );
        assert_eq!(normalize_url(" agg:7140 ", true), "https://agg:7140");
        assert_eq!(normalize_url("https://a:1", false), "https://a:1");
        let s =
            tonic::Status::unknown("grpc-status header missing, mapped from HTTP status code 404");
        let e = explain(&s).unwrap();
        assert!(
            e.contains("plain HTTP 404") && e.contains("gRPC port"),
            "{e}"
        );
        assert_eq!(
            explain(&tonic::Status::unavailable("tcp connect error")),
            None
        );
    }

    #[test]
    fn permanent_codes() {
        assert!(is_permanent(tonic::Code::InvalidArgument));
        assert!(!is_permanent(tonic::Code::Unavailable));
        assert!(!is_permanent(tonic::Code::Unauthenticated));
        assert!(!is_permanent(tonic::Code::ResourceExhausted));
    }
}
