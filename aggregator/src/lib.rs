//! The logfleet aggregator: receives batches from node agents, stores them
//! durably and exactly once in an embedded segment store, and answers
//! queries, live tails and agent listings.
//!
//! Data flow: [`service`] (gRPC) -> [`ingest`] (validate, de-duplicate,
//! group commit) -> [`store`] (segment files) and [`index`] (in memory) ->
//! [`query`].

pub mod http;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use logfleet_proto::v1::ingest_server::IngestServer;
use logfleet_proto::v1::query_server::QueryServer;
use logfleet_proto::Limits;
use prometheus_client::registry::Registry;

/// HTTP/2 flow-control window per connection and per stream: what a peer
/// may send before the aggregator reads it. Requests that wait for a
/// handler hold at most this much each, so with many agents waiting it is
/// what bounds memory (500 connections x 256 KiB = 125 MiB); on a LAN it
/// still allows hundreds of MB/s per connection.
const WINDOW: u32 = 256 << 10;

/// Everything the aggregator needs to run.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// Storage settings.
    pub store: ingest::StoreConfig,
    /// gRPC address (ingest and query).
    pub grpc_addr: SocketAddr,
    /// HTTP address (metrics, health, agents JSON).
    pub http_addr: SocketAddr,
    /// Bearer token required from agents and clients; none: open.
    pub token: Option<String>,
    /// TLS certificate and key (PEM) for both ports; none: plaintext.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Payload limits.
    pub limits: Limits,
    /// Largest accepted gRPC message (compressed push), bytes.
    pub max_message: usize,
    /// Requests handled at once; more wait (HTTP/2 flow control holds their
    /// bytes back) instead of failing: back-pressure towards agents.
    pub max_concurrent_requests: usize,
    /// Decompressed push bytes held at once; a push waits for room.
    pub max_inflight_bytes: u64,
    /// A query stops after this long.
    pub query_timeout: std::time::Duration,
}

/// Why the aggregator could not start.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS files could not be read.
    #[error("reading TLS file {path}: {source}")]
    Tls {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// Storage failed so that nothing more may be acknowledged.
    #[error("stopped acknowledging: {0}")]
    StorageFailed(String),
}

/// The aggregator's two listening sockets, bound before anything else
/// happens, so that a taken port is an error at once.
pub struct Listeners {
    /// gRPC (ingest and queries).
    pub grpc: std::net::TcpListener,
    /// HTTP (metrics, health, agents).
    pub http: std::net::TcpListener,
}

impl Listeners {
    /// Binds both addresses of `cfg`.
    pub fn bind(cfg: &AggregatorConfig) -> Result<Self, AggregatorError> {
        let bind = |addr: SocketAddr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| AggregatorError::Bind { addr, source })
        };
        Ok(Listeners {
            grpc: bind(cfg.grpc_addr)?,
            http: bind(cfg.http_addr)?,
        })
    }
}

/// Runs the aggregator until `shutdown` resolves.
pub async fn run(
    cfg: AggregatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AggregatorError> {
    let listeners = Listeners::bind(&cfg)?;
    run_on(cfg, listeners, shutdown).await
}

/// Runs the aggregator on sockets already bound (their addresses win over
/// the configuration's) until `shutdown` resolves.
pub async fn run_on(
    cfg: AggregatorConfig,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AggregatorError> {
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::new(&mut registry);
    let (shared, writer) = ingest::open(cfg.store.clone(), metrics.clone())?;
    let writer = writer.with_inflight_limit(cfg.max_inflight_bytes);
    let auth = service::Auth::new(cfg.token.clone(), metrics.clone());
    let mut failed = shared.failed.subscribe();
    let stopping = shared.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            _ = failed.wait_for(Option::is_some) => {}
        }
        tracing::info!("stopping: ending live tails and queries");
        stopping.shutdown.send_replace(true);
    };
    let failed = shared.failed.subscribe();

    let app = http::router(http::HttpState {
        shared: shared.clone(),
        registry: Arc::new(registry),
        auth: auth.clone(),
    });
    let http_listener = listeners.http;
    match &cfg.tls {
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| AggregatorError::Tls {
                    path: cert.clone(),
                    source,
                })?;
            let server = axum_server::from_tcp_rustls(http_listener, tls).map_err(|source| {
                AggregatorError::Bind {
                    addr: cfg.http_addr,
                    source,
                }
            })?;
            tokio::spawn(async move {
                if let Err(e) = server.serve(app.into_make_service()).await {
                    tracing::error!(error = %e, "https endpoint failed");
                }
            });
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(http_listener).map_err(|source| {
                AggregatorError::Bind {
                    addr: cfg.http_addr,
                    source,
                }
            })?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "http endpoint failed");
                }
            });
        }
    }

    let grpc_listener = tokio::net::TcpListener::from_std(listeners.grpc).map_err(|source| {
        AggregatorError::Bind {
            addr: cfg.grpc_addr,
            source,
        }
    })?;
    let ingest = tonic::service::interceptor::InterceptedService::new(
        IngestServer::new(service::IngestService {
            writer,
            limits: cfg.limits,
            metrics: metrics.clone(),
            shared: shared.clone(),
        })
        .max_decoding_message_size(cfg.max_message),
        auth.clone(),
    );
    let query = tonic::service::interceptor::InterceptedService::new(
        QueryServer::new(service::QueryService {
            shared,
            timeout: cfg.query_timeout,
        })
        .max_encoding_message_size(cfg.limits.max_raw_len as usize + (1 << 20)),
        auth,
    );
    // Bounded: so many requests at once, so many streams per connection,
    // and windows that hold back the bytes of those that wait.
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(64))
        .initial_connection_window_size(Some(WINDOW))
        .initial_stream_window_size(Some(WINDOW))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            cfg.max_concurrent_requests.max(1),
        ));
    if let Some((cert, key)) = &cfg.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| AggregatorError::Tls {
                path: p.clone(),
                source,
            })
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    tracing::info!(grpc = %cfg.grpc_addr, http = %cfg.http_addr, data = %cfg.store.data_dir.display(), "aggregator started");
    server
        .add_service(ingest)
        .add_service(query)
        .serve_with_incoming_shutdown(
            // Small replies (acks, query chunks) must not wait for Nagle's
            // algorithm and the peer's delayed ACK: that costs ~40 ms each.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                |conn| {
                    if let Ok(c) = &conn {
                        let _ = c.set_nodelay(true);
                    }
                    conn
                },
            ),
            stop,
        )
        .await?;
    if let Some(why) = failed.borrow().clone() {
        tracing::error!(reason = %why, "aggregator stopped: storage failed");
        return Err(AggregatorError::StorageFailed(why));
    }
    tracing::info!("aggregator stopped");
    Ok(())
}
