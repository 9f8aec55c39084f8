//! Accepted connections, plain or TLS. TLS serves a certificate that is
//! re-read when its files change, so a renewed certificate (a Secret the
//! controller or cert-manager rewrites, which kubelet swaps into the pod)
//! is served without a restart and without dropping open connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// A certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading TLS file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key does not fit the certificate, or rustls refused them.
    #[error("TLS certificate {cert} and key {key}: {source}")]
    Key {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

/// Where the serving certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The file contents it came from, to notice a change.
    source: (Vec<u8>, Vec<u8>),
}

/// Serves the latest good certificate from a pair of files.
pub struct ReloadingCert {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a certificate chain and key and checks that they belong together.
fn certified_key(
    files: &CertFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(&files.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| pem_err(&files.key, format!("no usable private key: {e}")))?;
    // from_der checks that the key is the certificate's: a renewal caught
    // half-written (new certificate, old key) is refused, not served.
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

impl ReloadingCert {
    /// Loads the files; an error here is an error at start.
    pub fn load(files: CertFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let source = (read(&files.cert)?, read(&files.key)?);
        let key = Arc::new(certified_key(&files, &source.0, &source.1, &provider)?);
        Ok(Arc::new(ReloadingCert {
            files,
            provider,
            current: RwLock::new(Loaded { key, source }),
        }))
    }

    /// Re-reads the files; returns whether a new certificate is now served.
    /// On an error the previous certificate stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let source = (read(&self.files.cert)?, read(&self.files.key)?);
        if self
            .current
            .read()
            .map(|c| c.source == source)
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let key = Arc::new(certified_key(
            &self.files,
            &source.0,
            &source.1,
            &self.provider,
        )?);
        if let Ok(mut c) = self.current.write() {
            *c = Loaded { key, source };
        }
        Ok(true)
    }

    /// A rustls server configuration serving this certificate, offering
    /// `alpn` (`h2` for gRPC; `h2` and `http/1.1` for HTTP).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Key {
                cert: self.files.cert.clone(),
                key: self.files.key.clone(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }

    /// Re-reads the files every `every` for as long as the process runs,
    /// logging what changed or why a new pair was refused.
    pub fn spawn_reloader(self: &Arc<Self>, every: std::time::Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let files = me.clone();
                match tokio::task::spawn_blocking(move || files.reload()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(cert = %me.files.cert.display(), "serving a renewed TLS certificate")
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be used; still serving the previous certificate")
                    }
                    Err(e) => tracing::warn!(error = %e, "re-reading the TLS files"),
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

/// One accepted connection.
pub enum Conn {
    /// Plaintext.
    Plain(tokio::net::TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            Conn::Plain(t) => t,
            Conn::Tls(t) => t.get_ref().0,
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        <tokio::net::TcpStream as tonic::transport::server::Connected>::connect_info(self.tcp())
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_read(cx, buf),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_write(cx, buf),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_flush(cx),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => std::pin::Pin::new(t).poll_shutdown(cx),
            Conn::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections accepted from `listener`, through TLS when `config` is set.
/// Each handshake runs in its own task (a slow or silent client cannot hold
/// up the others) and is given up after `handshake_timeout`.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: Option<Arc<ServerConfig>>,
    handshake_timeout: std::time::Duration,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let acceptor = config.map(tokio_rustls::TlsAcceptor::from);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection");
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Small replies (acks, query chunks) must not wait for Nagle's
            // algorithm and the peer's delayed ACK: that costs ~40 ms each.
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    fn leaf(c: &ReloadingCert) -> Vec<u8> {
        c.current.read().unwrap().key.cert[0].to_vec()
    }

    #[test]
    fn reload_serves_a_new_pair_and_keeps_the_old_one_on_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let (c1, k1) = pair("one");
        std::fs::write(&files.cert, &c1).unwrap();
        std::fs::write(&files.key, &k1).unwrap();
        let cert = ReloadingCert::load(files.clone()).unwrap();
        let first = leaf(&cert);
        assert!(!cert.reload().unwrap(), "unchanged files are not reloaded");

        // Half a renewal: the new certificate with the old key.
        let (c2, k2) = pair("two");
        std::fs::write(&files.cert, &c2).unwrap();
        let err = cert.reload().unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        assert_eq!(leaf(&cert), first, "the old pair stays in use");

        std::fs::write(&files.key, &k2).unwrap();
        assert!(cert.reload().unwrap());
        assert_ne!(leaf(&cert), first);

        std::fs::write(&files.cert, "not pem").unwrap();
        assert!(matches!(cert.reload(), Err(TlsError::Pem { .. })));
    }

    #[test]
    fn load_refuses_missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        assert!(matches!(
            ReloadingCert::load(files.clone()),
            Err(TlsError::Read { .. })
        ));
        std::fs::write(&files.cert, "").unwrap();
        std::fs::write(&files.key, "").unwrap();
        assert!(matches!(
            ReloadingCert::load(files),
            Err(TlsError::Pem { .. })
        ));
    }
}
