//! logfleet's default ports, in one place. They are logfleet's own: OTLP's
//! 4317/4318 (an OpenTelemetry Collector on the same host), Loki's
//! 3100/9095, Prometheus' 9090 and the ubiquitous 8080 are all taken on the
//! hosts logfleet runs on.

/// Ingest gRPC: agents push here.
pub const INGEST: u16 = 7140;
/// Query gRPC, when queries have a port of their own (in clusters, so a
/// NetworkPolicy can admit readers and agents separately).
pub const QUERY: u16 = 7141;
/// HTTP: Loki-compatible API, web view, `/metrics` and probes.
pub const HTTP: u16 = 7142;

/// The aggregator's default ingest listen address.
pub const INGEST_LISTEN: &str = "0.0.0.0:7140";
/// The aggregator's default HTTP listen address.
pub const HTTP_LISTEN: &str = "0.0.0.0:7142";
/// Where the CLI and a local agent look for an aggregator by default.
pub const LOCAL_INGEST_URL: &str = "http://127.0.0.1:7140";
/// The demo's ingest address.
pub const LOCAL_INGEST: &str = "127.0.0.1:7140";
/// The demo's HTTP address.
pub const LOCAL_HTTP: &str = "127.0.0.1:7142";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_use_the_ports() {
        let port = |s: &str| s.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        assert_eq!(port(INGEST_LISTEN), Some(INGEST));
        assert_eq!(port(LOCAL_INGEST_URL), Some(INGEST));
        assert_eq!(port(LOCAL_INGEST), Some(INGEST));
        assert_eq!(port(HTTP_LISTEN), Some(HTTP));
        assert_eq!(port(LOCAL_HTTP), Some(HTTP));
        for taken in [4317, 4318, 3100, 9095, 9090, 8080] {
            assert!(![INGEST, QUERY, HTTP].contains(&taken));
        }
    }
}
