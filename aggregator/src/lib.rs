//! The logfleet aggregator's server: receives batches from node agents,
//! hands them to a store, and answers queries, live tails and agent
//! listings, over gRPC ([`service`]) and HTTP ([`http`]: metrics, health,
//! agents, Loki's API in [`loki`], the web view in [`web`]).
//!
//! Written once against the store interface
//! ([`logfleet_store::Backend`]); [`run_on`] opens the embedded store
//! (`logfleet-embedded`) or ClickHouse (`logfleet-clickhouse`) and
//! [`serve`] serves it.

pub mod http;
pub mod identity;
pub mod loki;
pub mod service;
pub mod transport;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use logfleet_proto::v1::ingest_server::IngestServer;
use logfleet_proto::v1::query_server::QueryServer;
use logfleet_proto::Limits;
use logfleet_store::metrics::Metrics;
use logfleet_store::Backend;
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
    pub store: logfleet_embedded::StoreConfig,
    /// gRPC address (ingest, and queries unless `query_addr` is set).
    pub grpc_addr: SocketAddr,
    /// gRPC address for queries only; `None`: queries share `grpc_addr`.
    /// A port of their own lets a NetworkPolicy admit agents to ingest and
    /// readers to queries separately.
    pub query_addr: Option<SocketAddr>,
    /// HTTP address (metrics, health, agents JSON).
    pub http_addr: SocketAddr,
    /// Bearer tokens: one to push, one to read.
    pub tokens: service::Tokens,
    /// TLS certificate and key (PEM) for every port; none: plaintext.
    pub tls: Option<transport::CertFiles>,
    /// How often the TLS files are checked for a renewed certificate.
    pub tls_reload: std::time::Duration,
    /// Verify that pushes come from an agent on the node they name.
    pub identity: Option<Arc<identity::Verifier>>,
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
    /// Store lines in ClickHouse instead of `store`'s directory.
    pub clickhouse: Option<logfleet_clickhouse::Config>,
}

/// Why the aggregator could not start.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] logfleet_embedded::store::StoreError),
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The tokens leave one role open while another is closed.
    #[error(transparent)]
    Tokens(#[from] service::TokensError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// Storage failed so that nothing more may be acknowledged.
    #[error("stopped acknowledging: {0}")]
    StorageFailed(String),
}

/// The aggregator's listening sockets, bound before anything else
/// happens, so that a taken port is an error at once.
pub struct Listeners {
    /// gRPC (ingest, and queries without a query port).
    pub grpc: std::net::TcpListener,
    /// HTTP (metrics, health, agents).
    pub http: std::net::TcpListener,
    /// gRPC queries, when they have a port of their own.
    pub query: Option<std::net::TcpListener>,
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
            query: cfg.query_addr.map(bind).transpose()?,
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
    cfg.tokens.check()?;
    let mut registry = Registry::default();
    let (backend, metrics): (Arc<dyn Backend>, _) = match cfg.clickhouse.clone() {
        Some(ch) => {
            let metrics = Metrics::without_embedded_store(&mut registry);
            let wcfg = logfleet_clickhouse::WriterConfig {
                max_inflight_bytes: cfg.max_inflight_bytes,
                ..Default::default()
            };
            let b = logfleet_clickhouse::backend::ClickHouseBackend::start(
                ch,
                wcfg,
                cfg.limits,
                metrics.clone(),
                &mut registry,
            );
            (b, metrics)
        }
        None => {
            let metrics = Metrics::new(&mut registry);
            let b = logfleet_embedded::Embedded::open(
                cfg.store.clone(),
                metrics.clone(),
                cfg.limits,
                cfg.max_inflight_bytes,
            )?;
            (Arc::new(b), metrics)
        }
    };
    serve(cfg, listeners, backend, registry, metrics, shutdown).await
}

/// Serves `backend` on the sockets of `listeners` until `shutdown`
/// resolves or the backend fails: gRPC ingest and queries, and the HTTP
/// port (metrics, health, agents, Loki's API, the web view). The one
/// server, whatever the store.
pub async fn serve(
    cfg: AggregatorConfig,
    listeners: Listeners,
    backend: Arc<dyn Backend>,
    registry: Registry,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AggregatorError> {
    cfg.tokens.check()?;
    let push_auth = service::Auth::new(cfg.tokens.push.clone(), "push", metrics.clone());
    let read_auth = service::Auth::new(cfg.tokens.read.clone(), "read", metrics.clone());
    let (grpc_tls, http_tls) = tls_configs(&cfg)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (failed_tx, mut failed_rx) = tokio::sync::watch::channel(None::<String>);
    {
        let backend = backend.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                why = backend.failed() => {
                    failed_tx.send_replace(Some(why));
                }
            }
            tracing::info!("stopping: ending live tails and queries");
            backend.stopping();
            stop_tx.send_replace(true);
        });
    }
    let stopped = {
        let stop_rx = stop_rx.clone();
        move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };

    let app = http::router(http::HttpState {
        backend: backend.clone(),
        registry: Arc::new(registry),
        auth: read_auth.clone(),
        loki: loki::LokiState {
            backend: backend.clone(),
            timeout: cfg.query_timeout,
            queries: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrent_requests.max(1),
            )),
            metrics: metrics.clone(),
            stopping: stop_rx.clone(),
        },
        push_auth: push_auth.clone(),
    });
    serve_http(app, listeners.http, http_tls, cfg.http_addr)?;

    let ingest = tonic::service::interceptor::InterceptedService::new(
        IngestServer::new(service::IngestService {
            backend: backend.clone(),
            metrics: metrics.clone(),
            identity: cfg.identity.clone(),
        })
        .max_decoding_message_size(cfg.max_message),
        push_auth,
    );
    let query = tonic::service::interceptor::InterceptedService::new(
        QueryServer::new(service::QueryService {
            backend: backend.clone(),
            timeout: cfg.query_timeout,
            metrics: metrics.clone(),
            stopping: stop_rx,
        })
        .max_encoding_message_size(cfg.limits.max_raw_len as usize + (1 << 20)),
        read_auth,
    );
    let store = if cfg.clickhouse.is_some() {
        "clickhouse".to_owned()
    } else {
        cfg.store.data_dir.display().to_string()
    };
    tracing::info!(grpc = %cfg.grpc_addr, query = ?cfg.query_addr, http = %cfg.http_addr, tls = cfg.tls.is_some(), %store, "aggregator started");
    serve_grpc(
        &cfg,
        listeners.grpc,
        listeners.query,
        grpc_tls,
        GrpcServices::new(ingest, query),
        stopped,
    )
    .await?;
    backend.close().await;
    if let Some(why) = failed_rx.borrow_and_update().clone() {
        tracing::error!(reason = %why, "aggregator stopped: storage failed");
        return Err(AggregatorError::StorageFailed(why));
    }
    tracing::info!("aggregator stopped");
    Ok(())
}

/// Server configurations for the gRPC and the HTTP port (`None`: plaintext);
/// a renewed certificate is picked up without a restart.
type TlsConfig = Option<Arc<rustls::ServerConfig>>;

fn tls_configs(cfg: &AggregatorConfig) -> Result<(TlsConfig, TlsConfig), AggregatorError> {
    let Some(files) = &cfg.tls else {
        return Ok((None, None));
    };
    let cert = transport::ReloadingCert::load(files.clone())?;
    cert.spawn_reloader(cfg.tls_reload);
    let grpc = cert.server_config(&[b"h2"]).map(Arc::new)?;
    let http = cert.server_config(&[b"h2", b"http/1.1"]).map(Arc::new)?;
    Ok((Some(grpc), Some(http)))
}

/// Serves `app` on the HTTP port, over TLS when configured.
fn serve_http(
    app: axum::Router,
    listener: std::net::TcpListener,
    tls: TlsConfig,
    addr: SocketAddr,
) -> Result<(), AggregatorError> {
    match tls {
        Some(tls) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(tls);
            let server = axum_server::from_tcp_rustls(listener, tls)
                .map_err(|source| AggregatorError::Bind { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = server.serve(app.into_make_service()).await {
                    tracing::error!(error = %e, "https endpoint failed");
                }
            });
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|source| AggregatorError::Bind { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "http endpoint failed");
                }
            });
        }
    }
    Ok(())
}

/// The gRPC services, as one set and apart (for a query port of its own).
struct GrpcServices {
    /// Ingest only.
    pub ingest: tonic::service::Routes,
    /// Queries only.
    pub query: tonic::service::Routes,
    /// Both.
    pub both: tonic::service::Routes,
}

impl GrpcServices {
    /// The routes of `ingest` and `query`.
    pub fn new<I, Q>(ingest: I, query: Q) -> Self
    where
        I: tower::Service<::http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        I::Response: axum::response::IntoResponse,
        I::Future: Send + 'static,
        Q: tower::Service<::http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        Q::Response: axum::response::IntoResponse,
        Q::Future: Send + 'static,
    {
        GrpcServices {
            ingest: tonic::service::Routes::new(ingest.clone()),
            query: tonic::service::Routes::new(query.clone()),
            both: tonic::service::Routes::new(ingest).add_service(query),
        }
    }
}

/// Serves ingest and queries on the gRPC port, or each on its own when a
/// query port is bound, until `stopped` resolves. Bounded: so many requests
/// at once over every gRPC port, so many streams per connection, and
/// windows that hold back the bytes of those that wait.
async fn serve_grpc<F, Fut>(
    cfg: &AggregatorConfig,
    grpc: std::net::TcpListener,
    query_port: Option<std::net::TcpListener>,
    tls: TlsConfig,
    services: GrpcServices,
    stopped: F,
) -> Result<(), AggregatorError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let tokio_listener = |l: std::net::TcpListener, addr: SocketAddr| {
        tokio::net::TcpListener::from_std(l)
            .map_err(|source| AggregatorError::Bind { addr, source })
    };
    let grpc_listener = tokio_listener(grpc, cfg.grpc_addr)?;
    let limit = tower::limit::GlobalConcurrencyLimitLayer::new(cfg.max_concurrent_requests.max(1));
    let builder = || {
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(64))
            .initial_connection_window_size(Some(WINDOW))
            .initial_stream_window_size(Some(WINDOW))
            .layer(limit.clone())
    };
    const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);
    match query_port {
        None => {
            builder()
                .add_routes(services.both)
                .serve_with_incoming_shutdown(
                    transport::incoming(grpc_listener, tls, HANDSHAKE),
                    stopped(),
                )
                .await?;
        }
        Some(q) => {
            let addr = cfg.query_addr.unwrap_or(cfg.grpc_addr);
            let query_listener = tokio_listener(q, addr)?;
            let ingest_server = builder()
                .add_routes(services.ingest)
                .serve_with_incoming_shutdown(
                    transport::incoming(grpc_listener, tls.clone(), HANDSHAKE),
                    stopped(),
                );
            let query_server = builder()
                .add_routes(services.query)
                .serve_with_incoming_shutdown(
                    transport::incoming(query_listener, tls, HANDSHAKE),
                    stopped(),
                );
            let (a, b) = tokio::join!(ingest_server, query_server);
            a?;
            b?;
        }
    }
    Ok(())
}
