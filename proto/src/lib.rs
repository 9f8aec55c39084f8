//! The `logfleet.v1` wire protocol: message types and gRPC service stubs
//! generated from `proto/logfleet/v1/logfleet.proto`, plus the batch codec
//! both ends share ([`codec`], [`lines`]).

pub mod codec;
pub mod labels;
pub mod lines;
pub mod ports;

/// The `reason` of the aggregator's HTTP error body (`{"reason": ...,
/// "message": ...}`, status 503) when its store (ClickHouse) is
/// unreachable: the controller reports it as the collector's
/// `Degraded` reason.
pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";

/// Generated protobuf messages and tonic services of package `logfleet.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/logfleet.v1.rs"));
}

pub use codec::{decode_payload, encode_payload, CodecError, Limits};
pub use lines::{Line, LinesBuilder};
