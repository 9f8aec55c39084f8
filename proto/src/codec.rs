//! Encoding and decoding of [`PushRequest`] payloads, with the limits that
//! keep a malformed or hostile payload from exhausting the aggregator.

use std::io::{Read, Write};

use bytes::Bytes;
use prost::Message;

use crate::v1::{Compression, LineBatch, PushRequest};

/// Limits applied when decoding a payload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted decompressed payload, in bytes. A payload that
    /// claims or inflates to more is refused before it is fully inflated,
    /// which is what defeats decompression bombs.
    pub max_raw_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // 64 MiB: 64x the agent's default batch size, so honest agents with
        // a raised batch size still fit.
        Limits {
            max_raw_len: 64 << 20,
        }
    }
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The compression value is not one this version knows.
    #[error("unknown compression {0}")]
    UnknownCompression(i32),
    /// The declared raw length is above the limit.
    #[error("payload declares {declared} bytes uncompressed, above the limit of {limit}")]
    TooLarge {
        /// Declared uncompressed size.
        declared: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The payload inflates to a different size than declared.
    #[error("payload inflates to {actual} bytes, but declares {declared}")]
    LengthMismatch {
        /// Declared uncompressed size.
        declared: u64,
        /// Size found (at most declared + 1, as inflation stops there).
        actual: u64,
    },
    /// The compressed stream is corrupt.
    #[error("corrupt {compression} payload: {source}")]
    Corrupt {
        /// Which decompressor failed.
        compression: &'static str,
        /// What it reported.
        source: std::io::Error,
    },
    /// The inflated bytes are not a valid LineBatch.
    #[error("payload is not a valid LineBatch: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The columns of the batch disagree with each other.
    #[error("inconsistent LineBatch: {0}")]
    Columns(String),
    /// A line refers to a range the request does not have.
    #[error("line {line} refers to range {range}, but the request has {ranges} ranges")]
    BadRange {
        /// Index of the offending line.
        line: usize,
        /// The range index it names.
        range: u32,
        /// How many ranges the request has.
        ranges: usize,
    },
    /// Compression failed (only on the encoding side).
    #[error("compressing payload: {0}")]
    Compress(std::io::Error),
    /// Bytes follow the compressed stream.
    #[error("{bytes} bytes follow the {compression} frame")]
    Trailing {
        /// Which format.
        compression: &'static str,
        /// How many bytes (at least).
        bytes: u64,
    },
}

/// Encodes and compresses `batch`, returning the payload and its raw length.
///
/// `level` is the compression level: zstd levels (1..=22) for zstd, 0..=9 for
/// gzip; it is ignored for [`Compression::None`].
pub fn encode_payload(
    batch: &LineBatch,
    compression: Compression,
    level: i32,
) -> Result<(Bytes, u64), CodecError> {
    let raw = batch.encode_to_vec();
    let raw_len = raw.len() as u64;
    let payload = match compression {
        Compression::None => raw,
        Compression::Zstd => zstd::bulk::compress(&raw, level).map_err(CodecError::Compress)?,
        Compression::Gzip => {
            let lvl = flate2::Compression::new(level.clamp(0, 9) as u32);
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), lvl);
            enc.write_all(&raw).map_err(CodecError::Compress)?;
            enc.finish().map_err(CodecError::Compress)?
        }
    };
    Ok((Bytes::from(payload), raw_len))
}

/// Inflates and decodes the payload of `req`, refusing anything above
/// `limits`, corrupt, or inconsistent with the request's ranges.
pub fn decode_payload(req: &PushRequest, limits: Limits) -> Result<LineBatch, CodecError> {
    let raw = inflate(req, limits)?;
    let batch = LineBatch::decode(bytes::Bytes::from(raw))?;
    batch.check(req.ranges.len())?;
    Ok(batch)
}

/// Inflates the payload of `req` to exactly `raw_len` bytes, within limits.
pub fn inflate(req: &PushRequest, limits: Limits) -> Result<Vec<u8>, CodecError> {
    if req.raw_len > limits.max_raw_len {
        return Err(CodecError::TooLarge {
            declared: req.raw_len,
            limit: limits.max_raw_len,
        });
    }
    let compression = Compression::try_from(req.compression)
        .map_err(|_| CodecError::UnknownCompression(req.compression))?;
    let declared = req.raw_len;
    let raw = match compression {
        Compression::None => req.payload.to_vec(),
        Compression::Gzip => read_bounded(
            flate2::read::GzDecoder::new(req.payload.as_ref()),
            declared,
            "gzip",
        )?,
        Compression::Zstd => {
            let corrupt = |source| CodecError::Corrupt {
                compression: "zstd",
                source,
            };
            let mut dec = zstd::stream::read::Decoder::with_buffer(req.payload.as_ref())
                .map_err(corrupt)?
                .single_frame();
            let raw = read_bounded(&mut dec, declared, "zstd")?;
            if raw.len() as u64 != declared {
                return Err(CodecError::LengthMismatch {
                    declared,
                    actual: raw.len() as u64,
                });
            }
            // The payload must be exactly one frame, read to its end: bytes
            // after it would be stored as they came and then fail every
            // query over the block.
            let mut probe = [0u8; 1];
            let extra = dec.read(&mut probe).map_err(corrupt)?;
            let rest = dec.finish();
            if extra != 0 || !rest.is_empty() {
                return Err(CodecError::Trailing {
                    compression: "zstd",
                    bytes: rest.len() as u64 + extra as u64,
                });
            }
            raw
        }
    };
    if raw.len() as u64 != declared {
        return Err(CodecError::LengthMismatch {
            declared,
            actual: raw.len() as u64,
        });
    }
    Ok(raw)
}

/// Reads at most `declared + 1` bytes: enough to tell that a stream is
/// longer than declared without inflating a bomb any further.
fn read_bounded<R: Read>(
    reader: R,
    declared: u64,
    compression: &'static str,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(declared.min(64 << 20) as usize);
    reader
        .take(declared + 1)
        .read_to_end(&mut out)
        .map_err(|source| CodecError::Corrupt {
            compression,
            source,
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{FileRange, Stream};
    use crate::LinesBuilder;

    fn batch(n: usize) -> LineBatch {
        let mut b = LinesBuilder::default();
        for i in 0..n {
            let text = format!("line {i} with some text");
            b.push(
                0,
                1_700_000_000_000_000_000 + i as i64,
                (i * 100) as u64,
                Stream::Stdout as i32,
                0,
                text.as_bytes(),
            );
        }
        b.finish()
    }

    fn request(b: &LineBatch, c: Compression) -> PushRequest {
        let (payload, raw_len) = encode_payload(b, c, 1).unwrap();
        PushRequest {
            node: "n1".into(),
            compression: c as i32,
            raw_len,
            ranges: vec![FileRange::default()],
            payload,
        }
    }

    #[test]
    fn round_trips_every_compression() {
        let b = batch(500);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let got = decode_payload(&request(&b, c), Limits::default()).unwrap();
            assert_eq!(got, b, "{c:?}");
        }
    }

    #[test]
    fn refuses_declared_size_over_limit() {
        let req = request(&batch(10), Compression::Zstd);
        let err = decode_payload(&req, Limits { max_raw_len: 10 }).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn refuses_bomb_that_lies_about_its_size() {
        // 100 MiB of zeros compresses to a few KiB; the request claims 1 KiB.
        let zeros = vec![0u8; 100 << 20];
        for c in [Compression::Zstd, Compression::Gzip] {
            let payload = match c {
                Compression::Zstd => zstd::bulk::compress(&zeros, 3).unwrap(),
                _ => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                    e.write_all(&zeros).unwrap();
                    e.finish().unwrap()
                }
            };
            let req = PushRequest {
                compression: c as i32,
                raw_len: 1024,
                payload: payload.into(),
                ..Default::default()
            };
            let err = decode_payload(&req, Limits::default()).unwrap_err();
            assert!(
                matches!(err, CodecError::LengthMismatch { actual: 1025, .. }),
                "{c:?}: {err}"
            );
        }
    }

    #[test]
    fn refuses_garbage_and_unknown_compression() {
        for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let req = PushRequest {
                compression: c as i32,
                raw_len: 11,
                payload: Bytes::from_static(b"\xff\xfegarbage!"),
                ranges: vec![FileRange::default()],
                ..Default::default()
            };
            assert!(decode_payload(&req, Limits::default()).is_err(), "{c:?}");
        }
        let req = PushRequest {
            compression: 9,
            ..Default::default()
        };
        assert!(matches!(
            decode_payload(&req, Limits::default()),
            Err(CodecError::UnknownCompression(9))
        ));
    }

    /// A zstd frame with bytes after it used to be stored and then fail
    /// every query over its block.
    #[test]
    fn refuses_bytes_after_the_zstd_frame() {
        let mut req = request(&batch(10), Compression::Zstd);
        assert!(decode_payload(&req, Limits::default()).is_ok());
        let mut p = req.payload.to_vec();
        p.extend_from_slice(b"junk");
        req.payload = p.into();
        let err = decode_payload(&req, Limits::default()).unwrap_err();
        assert!(matches!(err, CodecError::Trailing { .. }), "{err}");
        // A second frame is trailing data too.
        let mut req = request(&batch(10), Compression::Zstd);
        let mut p = req.payload.to_vec();
        p.extend_from_slice(&zstd::bulk::compress(b"more", 1).unwrap());
        req.payload = p.into();
        assert!(decode_payload(&req, Limits::default()).is_err());
    }

    #[test]
    fn refuses_line_pointing_outside_ranges() {
        let mut b = batch(3);
        b.range[2] = 1;
        let err = decode_payload(&request(&b, Compression::None), Limits::default()).unwrap_err();
        assert!(matches!(err, CodecError::BadRange { line: 2, .. }), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512), c in 0i32..3, raw_len in 0u64..4096) {
            let req = PushRequest { compression: c, raw_len, payload: data.into(), ranges: vec![FileRange::default()], ..Default::default() };
            let _ = decode_payload(&req, Limits::default());
        }
    }
}
