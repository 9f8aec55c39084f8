//! Request parameters and response bodies of Loki's HTTP API, pure: what
//! Loki's documentation says a client sends (times as RFC 3339, Unix
//! seconds or Unix nanoseconds; `since`; `limit`; `direction`; `step`) and
//! what it gets back (the `streams`, `matrix`, `vector` and `scalar`
//! envelopes).

use std::collections::BTreeMap;

use logfleet_proto::v1::Direction;
use serde_json::{json, Value as Json};

use logfleet_logql::eval::{Labels, Matrix, Steps, Value};

/// Loki's default `limit` for log queries.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted (Loki's `max_entries_limit_per_query`
/// default).
pub const MAX_LIMIT: usize = 5000;
/// The default range when a request gives no `start`: one hour.
pub const DEFAULT_RANGE_NS: i64 = 3600 * 1_000_000_000;

/// A request's parameters: its query string and, for POST, its form body,
/// in order (a key may repeat, as `match[]` does).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a query string and a form-encoded body.
    pub fn new(query: Option<&str>, body: &[u8]) -> Self {
        let mut v: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        v.extend(form_urlencoded::parse(body).into_owned());
        Params(v)
    }

    /// The first value of `key`, when given and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A parameter that cannot be used; the text is what the client sees with
/// status 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParamError(pub String);

/// Parses a time as Loki does: a number with a `.` is Unix seconds; an
/// integer of up to 10 digits is Unix seconds and a longer one Unix
/// nanoseconds; anything else RFC 3339.
pub fn parse_time(s: &str) -> Result<i64, ParamError> {
    let bad = || {
        ParamError(format!(
            "invalid time {s:?}: use RFC 3339, Unix seconds or Unix nanoseconds"
        ))
    };
    if s.contains('.') && !s.contains(['T', 't']) {
        let secs: f64 = s.parse().map_err(|_| bad())?;
        let ns = secs * 1e9;
        return if ns.is_finite() && ns.abs() < i64::MAX as f64 {
            Ok(ns as i64)
        } else {
            Err(bad())
        };
    }
    if let Ok(n) = s.parse::<i64>() {
        let digits = s.trim_start_matches('-').len();
        return if digits <= 10 {
            n.checked_mul(1_000_000_000).ok_or_else(bad)
        } else {
            Ok(n)
        };
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(bad)
}

/// What `query_range` (and the label and series endpoints) ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeRequest {
    /// The LogQL text.
    pub query: String,
    /// Start, ns, inclusive.
    pub start: i64,
    /// End, ns.
    pub end: i64,
    /// Lines at most (log queries).
    pub limit: usize,
    /// Order of lines (log queries).
    pub direction: Direction,
    /// Step, ns (metric queries).
    pub step: i64,
}

/// Reads `start`, `end`, `since`, `limit`, `direction` and `step`, with
/// Loki's defaults: end now, start one hour (or `since`) before end, limit
/// 100, backward, and a step that gives about 250 points (at least 1 s).
pub fn range_request(p: &Params, now: i64) -> Result<RangeRequest, ParamError> {
    let end = p.get("end").map(parse_time).transpose()?.unwrap_or(now);
    let since = p
        .get("since")
        .map(|s| {
            logfleet_logql::parse_duration(s).ok_or_else(|| {
                ParamError(format!("invalid since {s:?}: use a duration such as 1h"))
            })
        })
        .transpose()?;
    let start = match p.get("start") {
        Some(s) => parse_time(s)?,
        None => end - since.unwrap_or(DEFAULT_RANGE_NS),
    };
    if end < start {
        return Err(ParamError(
            "end timestamp must not be before start time".into(),
        ));
    }
    let limit = match p.get("limit") {
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| ParamError(format!("invalid limit {s:?}: use a positive integer")))?,
        None => DEFAULT_LIMIT,
    };
    if limit == 0 {
        return Err(ParamError("limit must be a positive value".into()));
    }
    if limit > MAX_LIMIT {
        return Err(ParamError(format!(
            "max entries limit per query exceeded, limit > max_entries_limit_per_query ({limit} > {MAX_LIMIT})"
        )));
    }
    let direction = match p.get("direction").map(str::to_ascii_lowercase).as_deref() {
        None | Some("backward") => Direction::Backward,
        Some("forward") => Direction::Forward,
        Some(other) => {
            return Err(ParamError(format!(
                "invalid direction {other:?}: use forward or backward"
            )))
        }
    };
    let step = match p.get("step") {
        Some(s) => logfleet_logql::parse_step(s)
            .map(|d| d.as_nanos() as i64)
            .ok_or_else(|| {
                ParamError(format!(
                    "invalid step {s:?}: use a positive duration or number of seconds"
                ))
            })?,
        None => default_step(start, end),
    };
    Ok(RangeRequest {
        query: p.get("query").unwrap_or("").to_owned(),
        start,
        end,
        limit,
        direction,
        step,
    })
}

/// Loki's default step: the range over 250 points, whole seconds, >= 1 s.
pub fn default_step(start: i64, end: i64) -> i64 {
    let secs = ((end - start) as f64 / 1e9 / 250.0).ceil().max(1.0);
    secs as i64 * 1_000_000_000
}

impl RangeRequest {
    /// The steps of a metric query over this range.
    pub fn steps(&self) -> Steps {
        Steps {
            start: self.start,
            end: self.end,
            step: self.step,
        }
    }
}

fn labels_json(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

/// A sample value as Prometheus writes it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn seconds(ns: i64) -> Json {
    // Milliseconds precision, as Loki and Prometheus give.
    let ms = ns.div_euclid(1_000_000);
    json!(ms as f64 / 1000.0)
}

/// The `streams` result: lines grouped by label set, each group in the
/// order given.
pub fn streams_json(lines: Vec<(Labels, i64, String)>) -> Json {
    let mut groups: BTreeMap<Labels, Vec<Json>> = BTreeMap::new();
    for (labels, ts, line) in lines {
        groups
            .entry(labels)
            .or_default()
            .push(json!([ts.to_string(), line]));
    }
    Json::Array(
        groups
            .into_iter()
            .map(|(l, values)| json!({"stream": labels_json(&l), "values": values}))
            .collect(),
    )
}

/// A range query's metric result: `matrix`, or `scalar` given as a matrix
/// without labels (as Loki answers range queries).
pub fn matrix_json(v: Value, steps: Steps) -> Json {
    let m: Matrix = match v {
        Value::Matrix(m) => m,
        Value::Scalar(s) => {
            let mut m = Matrix::new();
            m.insert(Vec::new(), vec![Some(s); steps.len()]);
            m
        }
    };
    Json::Array(
        m.into_iter()
            .map(|(l, row)| {
                let values: Vec<Json> = row
                    .into_iter()
                    .enumerate()
                    .filter_map(|(k, v)| v.map(|v| json!([seconds(steps.at(k)), format_value(v)])))
                    .collect();
                json!({"metric": labels_json(&l), "values": values})
            })
            .collect(),
    )
}

/// An instant query's metric result: `(resultType, result)`.
pub fn instant_json(v: Value, t: i64) -> (&'static str, Json) {
    match v {
        Value::Scalar(s) => ("scalar", json!([seconds(t), format_value(s)])),
        Value::Matrix(m) => (
            "vector",
            Json::Array(
                m.into_iter()
                    .filter_map(|(l, row)| {
                        row.first().copied().flatten().map(|v| {
                            json!({"metric": labels_json(&l), "value": [seconds(t), format_value(v)]})
                        })
                    })
                    .collect(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_loki_reads_them() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000_000_000_000));
        assert_eq!(parse_time("1700000000.5"), Ok(1_700_000_000_500_000_000));
        assert_eq!(
            parse_time("1700000000123456789"),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.25Z"),
            Ok(1_700_000_000_250_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00"),
            Ok(1_700_000_000_000_000_000)
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn defaults_and_limits() {
        let now = 10_000 * 1_000_000_000;
        let r = range_request(&Params::new(Some("query=%7Bpod%3D%22a%22%7D"), b""), now).unwrap();
        assert_eq!(r.query, "{pod=\"a\"}");
        assert_eq!((r.start, r.end), (now - DEFAULT_RANGE_NS, now));
        assert_eq!(r.limit, 100);
        assert_eq!(r.direction, Direction::Backward);
        assert_eq!(
            r.step,
            15 * 1_000_000_000,
            "3600 s / 250 points, rounded up"
        );
        let r = range_request(
            &Params::new(Some("since=5m&direction=FORWARD"), b"limit=7&step=30s"),
            now,
        )
        .unwrap();
        assert_eq!(r.start, now - 300 * 1_000_000_000);
        assert_eq!((r.limit, r.direction), (7, Direction::Forward));
        assert_eq!(r.step, 30 * 1_000_000_000);
        for (q, want) in [
            ("limit=5001", "max entries limit"),
            ("limit=0", "positive"),
            ("direction=up", "direction"),
            ("start=20&end=10", "end timestamp"),
            ("step=-1", "step"),
            ("start=soon", "invalid time"),
        ] {
            let e = range_request(&Params::new(Some(q), b""), now).unwrap_err();
            assert!(e.0.contains(want), "{q}: {e}");
        }
    }

    #[test]
    fn repeated_keys_are_kept() {
        let p = Params::new(
            Some("match[]=%7Ba%3D%22b%22%7D&match[]=%7Bc%3D%22d%22%7D"),
            b"",
        );
        assert_eq!(p.all("match[]"), ["{a=\"b\"}", "{c=\"d\"}"]);
    }

    #[test]
    fn envelopes() {
        let l = vec![("pod".to_owned(), "a".to_owned())];
        let s = streams_json(vec![
            (l.clone(), 2, "two".into()),
            (l.clone(), 1, "one".into()),
        ]);
        assert_eq!(
            s,
            json!([{"stream": {"pod": "a"}, "values": [["2", "two"], ["1", "one"]]}])
        );
        let steps = Steps {
            start: 1_000_000_000,
            end: 3_000_000_000,
            step: 1_000_000_000,
        };
        let mut m = Matrix::new();
        m.insert(l, vec![Some(1.0), None, Some(0.5)]);
        assert_eq!(
            matrix_json(Value::Matrix(m), steps),
            json!([{"metric": {"pod": "a"}, "values": [[1.0, "1"], [3.0, "0.5"]]}])
        );
        assert_eq!(
            instant_json(Value::Scalar(2.0), 1_500_000_000),
            ("scalar", json!([1.5, "2"]))
        );
        assert_eq!(format_value(f64::INFINITY), "+Inf");
    }
}
