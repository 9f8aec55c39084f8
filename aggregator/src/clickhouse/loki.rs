//! The Loki API over the ClickHouse store, as Grafana's Explore and label
//! browser and Loki's clients use it: `query_range` for log queries,
//! `labels`, `label/<name>/values`, `series`, `index/stats`,
//! `status/buildinfo` and `/ready`, metric queries (`query_range`,
//! `query`) evaluated over lines read from ClickHouse, and `push`. The
//! parameters, envelopes and errors are the embedded store's
//! ([`crate::loki`]).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{sql, ClickHouse};
use crate::logql::Expr;
use crate::loki::params::{self, Params};
use crate::loki::{
    error, instant_request, instant_response, label_range, matrix_response, now_ns, parse_expr,
    query_error, selectors, streams_response, success, ApiError,
};

fn unavailable(e: super::ClickHouseError) -> ApiError {
    if e.is_unavailable() {
        error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    } else {
        error(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// The store once connected (the aggregator connects in the background).
pub type Store = std::sync::Arc<tokio::sync::OnceCell<ClickHouse>>;

fn connected(s: &Store) -> Result<ClickHouse, ApiError> {
    s.get().cloned().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ClickHouse store: connecting",
        )
    })
}

/// The read routes; the caller adds authentication.
pub fn router(ch: Store) -> axum::Router {
    axum::Router::new()
        .route(
            "/loki/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/loki/api/v1/query", get(instant).post(instant))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route("/loki/api/v1/label/{name}/values", get(label_values))
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route(
            "/loki/api/v1/status/buildinfo",
            get(|| async { axum::Json(json!({"version": "3.0.0"})) }),
        )
        .with_state(ch)
}

async fn query_range(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let r = params::range_request(&p, now_ns())?;
    let q = match parse_expr(&r.query)? {
        Expr::Log(q) => q,
        Expr::Metric(m) => {
            let steps = r.steps();
            let v = ch.metric(m, steps).await.map_err(query_error)?;
            return Ok(matrix_response(v, steps, started));
        }
    };
    let w = sql::Window {
        from: Some(r.start),
        to: Some(r.end),
        limit: r.limit as u64,
        backward: r.direction == logfleet_proto::v1::Direction::Backward,
    };
    let entries = if q.pipeline.is_empty() {
        ch.query(&q, w).await
    } else {
        ch.query_piped(&q, w).await
    }
    .map_err(unavailable)?;
    let lines: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                crate::query::entry_labels(e),
                e.ts_unix_nano,
                crate::query::entry_text(e),
            )
        })
        .collect();
    Ok(streams_response(lines, started))
}

async fn instant(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let ch = connected(&store)?;
    let (t, m) = instant_request(&Params::new(raw.as_deref(), &body))?;
    let v = ch
        .metric(m, crate::logql::eval::Steps::instant(t))
        .await
        .map_err(query_error)?;
    Ok(instant_response(v, t, started))
}

/// The selector of a label request (`query`), or everything.
fn selector(p: &Params) -> Result<crate::query::Query, ApiError> {
    Ok(selectors(p, "query")?
        .into_iter()
        .next()
        .unwrap_or_default())
}

async fn labels(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let (start, end) = label_range(&p)?;
    let q = selector(&p)?;
    let stmt =
        sql::label_names(ch.database(), &q, start, end).map_err(|e| unavailable(e.into()))?;
    let mut names = ch.strings(&stmt).await.map_err(unavailable)?;
    // The path labels, when any line is in the range.
    let any = sql::label_values(ch.database(), &q, "node", start, end)
        .map_err(|e| unavailable(e.into()))?;
    if !ch.strings(&any).await.map_err(unavailable)?.is_empty() {
        names.extend(crate::query::LABEL_NAMES.iter().map(|n| n.to_string()));
    }
    names.sort_unstable();
    names.dedup();
    Ok(success(json!(names)))
}

async fn label_values(
    State(store): State<Store>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let (start, end) = label_range(&p)?;
    let q = selector(&p)?;
    let stmt = sql::label_values(ch.database(), &q, &name, start, end)
        .map_err(|e| unavailable(e.into()))?;
    let values = ch.strings(&stmt).await.map_err(unavailable)?;
    Ok(success(json!(values)))
}

/// Loki's `series`: the label sets of the streams the `match[]` selectors
/// (label matchers only) pick in the range; all streams without one.
async fn series(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let mut sel = crate::loki::series_selectors(&p)?;
    if sel.is_empty() {
        sel.push(crate::query::Query::default());
    }
    let (start, end) = label_range(&p)?;
    let mut out = Vec::new();
    for q in &sel {
        for (node, labels) in ch.series(q, start, end).await.map_err(unavailable)? {
            out.push(crate::query::label_pairs(&node, &labels, 0));
        }
    }
    out.sort();
    out.dedup();
    Ok(success(json!(out
        .into_iter()
        .map(|l| {
            l.into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect::<serde_json::Map<_, _>>()
        })
        .collect::<Vec<_>>())))
}

/// Loki's `index/stats`: what a query would read. Lines and bytes of text
/// are exact (each line once); `chunks` counts stream-days, ClickHouse's
/// nearest to chunks.
async fn index_stats(
    State(store): State<Store>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ch = connected(&store)?;
    let p = Params::new(raw.as_deref(), &body);
    let r = params::range_request(&p, now_ns())?;
    let q = crate::query::parse(&r.query).map_err(query_error)?;
    if !q.selects_something() {
        return Err(error(StatusCode::BAD_REQUEST, crate::loki::EMPTY_SELECTOR));
    }
    let [entries, bytes, streams, chunks] = ch
        .index_stats(&q, r.start, r.end)
        .await
        .map_err(unavailable)?;
    Ok(axum::Json(json!({
        "streams": streams,
        "chunks": chunks,
        "entries": entries,
        "bytes": bytes,
    }))
    .into_response())
}

/// Text per push into the store: a Loki push (up to 64 MiB decoded) goes
/// in pieces that each fit the payload limit of an agent's push.
const PUSH_PIECE: usize = 4 << 20;

/// One Loki stream's entries as pushes into ClickHouse. Each entry's key in
/// its stream's file is a hash of its timestamp and text (xxh3, 63 bits),
/// so the same entry pushed again (a client's retry, or the same push to
/// another replica) is the same row and folds into one, as Loki drops an
/// entry identical to one it holds. Two different entries of one stream
/// share a key with odds of about n²/2⁶⁴ (one in 18 million for a million
/// entries). Pure.
/// Also returns how many entries repeated one earlier in the same push.
pub fn push_requests(
    t: &crate::loki::push::Target,
    entries: Vec<(i64, String)>,
) -> Result<(Vec<logfleet_proto::v1::PushRequest>, u64), crate::loki::push::Refused> {
    use logfleet_proto::v1::{Compression, FileRange, PushRequest};
    let mut keyed: Vec<(u64, i64, String)> = entries
        .into_iter()
        .map(|(ts, line)| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&ts.to_le_bytes());
            h.update(line.as_bytes());
            (h.digest() >> 1, ts, line)
        })
        .collect();
    // Offsets ascend within a range; an entry repeated within the push is
    // one entry.
    keyed.sort_by_key(|k| k.0);
    let sent = keyed.len();
    keyed.dedup_by_key(|k| k.0);
    let repeated = (sent - keyed.len()) as u64;
    let mut out = Vec::new();
    let mut rest = &keyed[..];
    while !rest.is_empty() {
        let mut size = 0usize;
        let n = rest
            .iter()
            .take_while(|k| {
                size += k.2.len();
                size <= PUSH_PIECE
            })
            .count()
            .max(1);
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let mut b = logfleet_proto::LinesBuilder::default();
        for (offset, ts, line) in piece {
            b.push(0, *ts, *offset, t.stream as i32, 0, line.as_bytes());
        }
        let (payload, raw_len) = logfleet_proto::encode_payload(&b.finish(), Compression::None, 0)
            .map_err(|e| crate::loki::push::Refused {
                status: 500,
                msg: e.to_string(),
            })?;
        out.push(PushRequest {
            node: t.node.clone(),
            compression: Compression::None as i32,
            raw_len,
            ranges: vec![FileRange {
                file_id: t.file_id,
                labels: Some(t.labels.clone()),
                start: piece[0].0,
                end: piece[piece.len() - 1].0 + 1,
                lines_end: 0,
            }],
            payload,
        });
    }
    Ok((out, repeated))
}

/// What Loki pushes into ClickHouse need.
#[derive(Clone)]
pub struct PushState {
    /// The writer once connected.
    pub writer: std::sync::Arc<tokio::sync::OnceCell<super::Writer>>,
    /// The aggregator's metrics.
    pub metrics: crate::metrics::Metrics,
}

/// The push route (`/loki/api/v1/push`); the caller adds the push-token
/// check.
pub fn push_router(state: PushState) -> axum::Router {
    axum::Router::new()
        .route("/loki/api/v1/push", axum::routing::post(push))
        .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
        .with_state(state)
}

/// Loki's push over ClickHouse: answered once ClickHouse holds every
/// entry; a retry of the same push stores nothing twice.
async fn push(
    State(st): State<PushState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(writer) = st.writer.get() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ClickHouse store: connecting",
        ));
    };
    let incoming = crate::loki::push_body(&headers, &body)?;
    crate::loki::push::count_metadata(&incoming, &st.metrics);
    for s in incoming {
        let t = crate::loki::push::target(&s.labels).map_err(crate::loki::refused)?;
        let (reqs, repeated) = push_requests(&t, s.entries).map_err(crate::loki::refused)?;
        // Counted with the agents' re-sent lines, as on the embedded store.
        st.metrics.duplicate_lines.inc_by(repeated);
        for req in reqs {
            let n = writer.push(req).await.map_err(|e| {
                if e.is_unavailable() {
                    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                } else {
                    error(StatusCode::BAD_REQUEST, e.to_string())
                }
            })?;
            st.metrics.lines.inc_by(n);
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> crate::loki::push::Target {
        crate::loki::push::target(&[
            ("app".into(), "web".into()),
            ("namespace".into(), "shop".into()),
        ])
        .unwrap()
    }

    fn offsets(reqs: &[logfleet_proto::v1::PushRequest]) -> Vec<(i64, u64, Vec<u8>)> {
        reqs.iter()
            .flat_map(|r| {
                let batch =
                    logfleet_proto::decode_payload(r, logfleet_proto::Limits::default()).unwrap();
                crate::ingest::validate(r, &batch).unwrap();
                batch
                    .lines()
                    .map(|l| (l.ts, l.offset, l.text.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_same_entry_has_the_same_key_and_a_push_is_valid() {
        let entries = vec![
            (3, "c".to_owned()),
            (1, "a".to_owned()),
            (2, "b".to_owned()),
            (1, "a".to_owned()),
            (1, "a again".to_owned()),
        ];
        let (reqs, repeated) = push_requests(&target(), entries.clone()).unwrap();
        assert_eq!(repeated, 1);
        let first = offsets(&reqs);
        // The repeat within the push is one entry; same time, other text
        // is another.
        assert_eq!(first.len(), 4);
        // The same push again, in another order: the same keys.
        let mut again = entries;
        again.reverse();
        let mut second = offsets(&push_requests(&target(), again).unwrap().0);
        let mut f = first.clone();
        f.sort();
        second.sort();
        assert_eq!(f, second);
        // Another stream's labels: another file.
        let other = crate::loki::push::target(&[("app".into(), "api".into())]).unwrap();
        assert_ne!(other.file_id, target().file_id);
    }

    #[test]
    fn a_large_push_goes_in_pieces_that_each_fit() {
        let line = "x".repeat(1 << 20);
        let entries: Vec<(i64, String)> = (0..10).map(|i| (i, line.clone())).collect();
        let (reqs, _) = push_requests(&target(), entries).unwrap();
        assert!(reqs.len() >= 3, "{}", reqs.len());
        assert!(reqs
            .iter()
            .all(|r| r.raw_len <= (PUSH_PIECE + (1 << 20)) as u64));
        assert_eq!(offsets(&reqs).len(), 10);
        // One line above the piece size still goes, alone.
        let (big, _) = push_requests(&target(), vec![(1, "y".repeat(PUSH_PIECE + 1))]).unwrap();
        assert_eq!(big.len(), 1);
    }
}
