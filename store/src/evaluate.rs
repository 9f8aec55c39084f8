//! Metric queries over any store's lines: a store hands each range
//! aggregation's lines (or, for [`countable`] ones, its own counts per
//! [`Buckets`]) once, in no particular order, and [`logfleet_logql::eval`]
//! does the rest.

use std::collections::HashMap;

use logfleet_proto::v1::Direction;

use crate::labels::StreamInfo;
use crate::query::{self, Bounds, QueryError};
use logfleet_logql::eval::{self, Matrix, RangeAcc, Steps, Value};
use logfleet_logql::{Metric, RangeAgg};
use logfleet_proto::Line;

/// A source of a range aggregation's lines: called with the time bounds,
/// it hands every line of `agg.query`'s selector and line filters (before
/// its pipeline) to `f` with its stream's id and labels, until `f` returns
/// false.
pub type LineSource<'a> = dyn FnMut(Bounds, &mut dyn FnMut(u32, &StreamInfo, &Line) -> bool) -> Result<(), QueryError>
    + 'a;

/// Where the lines of every range aggregation of a metric query come
/// from: called with the aggregation and the time bounds, it hands the
/// lines to the callback as a [`LineSource`] does.
pub type RangeSource<'a> =
    dyn FnMut(&RangeAgg, Bounds, &mut LineSink<'_>) -> Result<(), QueryError> + 'a;

/// Receives a line with its stream's id and labels; false stops.
pub type LineSink<'a> = dyn FnMut(u32, &StreamInfo, &Line) -> bool + 'a;

/// Evaluates `m` at `steps` over lines from `source` (any store).
pub fn metric_over(
    m: &Metric,
    steps: Steps,
    source: &mut RangeSource<'_>,
) -> Result<Value, QueryError> {
    metric_over_buckets(m, steps, source, None)
}

/// Whether a range aggregation's value is a sum over its lines (a count
/// or bytes, per window) and its labels follow from the stream's alone
/// (no stage reads the line: Grafana's `| drop __error__` does not):
/// then a store may count the lines itself, in [`Buckets`], instead of
/// handing over each.
pub fn countable(agg: &RangeAgg) -> bool {
    use logfleet_logql::RangeOp as O;
    matches!(
        agg.op,
        O::CountOverTime | O::Rate | O::BytesOverTime | O::BytesRate | O::AbsentOverTime
    ) && agg.query.pipeline.is_label_only()
        && agg.query.unwrap.is_none()
}

/// How a store counts a [`countable`] aggregation's lines: by series and
/// bucket of `width` ns, bucket `b` holding the lines with
/// `from + b * width <= ts < from + (b + 1) * width`. Every line of a
/// bucket falls in the same windows (the width divides both the step and
/// the range, and the windows' edges lie on bucket edges), so a bucket
/// counts as its lines would.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    /// The time bounds of the lines (as for [`LineSource`]).
    pub bounds: Bounds,
    /// The first bucket's start (`bounds.from`).
    pub from: i64,
    /// Bucket width, ns.
    pub width: i64,
}

impl Buckets {
    /// The buckets of `agg` at `steps`.
    pub fn of(agg: &RangeAgg, steps: Steps) -> Buckets {
        let acc = RangeAcc::new(agg, steps);
        let (from, to) = acc.span();
        let width = if steps.len() <= 1 {
            agg.range
        } else {
            gcd(steps.step, agg.range)
        }
        .max(1);
        Buckets {
            bounds: Bounds {
                from: Some(from),
                to: Some(to.saturating_add(1)),
                limit: 0,
                direction: Direction::Forward,
            },
            from,
            width,
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Receives one bucket: the series' labels (the stream's, `stream`
/// included), the bucket's index, its lines and bytes of text.
pub type BucketSink<'a> = dyn FnMut(eval::Labels, i64, u64, u64) + 'a;

/// Where a store counts the buckets of a [`countable`] aggregation.
pub type BucketSource<'a> =
    dyn FnMut(&RangeAgg, Buckets, &mut BucketSink<'_>) -> Result<(), QueryError> + 'a;

/// [`metric_over`], with the [`countable`] aggregations counted by the
/// store in `buckets` when it can.
pub fn metric_over_buckets(
    m: &Metric,
    steps: Steps,
    source: &mut RangeSource<'_>,
    mut buckets: Option<&mut BucketSource<'_>>,
) -> Result<Value, QueryError> {
    if steps.len() as i64 > eval::MAX_STEPS {
        return Err(eval::EvalError::TooManySteps.into());
    }
    eval::evaluate(m, steps, &mut |agg| match buckets.as_deref_mut() {
        Some(b) if countable(agg) => range_in_buckets(agg, steps, b),
        _ => range_over(agg, steps, &mut |bounds, f| source(agg, bounds, f)),
    })
}

/// One [`countable`] range aggregation from the store's buckets.
fn range_in_buckets(
    agg: &RangeAgg,
    steps: Steps,
    source: &mut BucketSource<'_>,
) -> Result<Matrix, QueryError> {
    let mut acc = RangeAcc::new(agg, steps);
    let b = Buckets::of(agg, steps);
    // The series of a stream, once per stream: the label-only stages
    // decide it (None: a label filter drops the stream).
    let mut series: HashMap<eval::Labels, Option<usize>> = HashMap::new();
    source(agg, b, &mut |labels, bucket, lines, bytes| {
        let id = match series.get(&labels) {
            Some(id) => *id,
            None => {
                let id = if agg.query.pipeline.is_empty() {
                    Some(acc.series(labels.clone()))
                } else {
                    let stream: logfleet_logql::pipeline::Labels = labels.iter().cloned().collect();
                    agg.query
                        .pipeline
                        .process(&stream, b"")
                        .map(|p| acc.series(p.labels.into_iter().collect()))
                };
                series.insert(labels, id);
                id
            }
        };
        if let Some(id) = id {
            acc.add_many(id, b.from + bucket * b.width, lines, bytes);
        }
    })?;
    Ok(acc.finish())
}

/// One range aggregation over the lines `source` gives.
pub fn range_over(
    agg: &RangeAgg,
    steps: Steps,
    source: &mut LineSource<'_>,
) -> Result<Matrix, QueryError> {
    let mut acc = RangeAcc::new(agg, steps);
    let (from, to) = acc.span();
    let bounds = Bounds {
        from: Some(from),
        to: Some(to.saturating_add(1)),
        limit: 0,
        direction: Direction::Forward,
    };
    // Series ids by stream id and stdout/stderr: a line costs one hash
    // lookup. With pipeline stages or unwrap the labels are per line.
    // With stages that read labels only (`| drop __error__`), the series
    // is decided once per stream too.
    let mut ids: HashMap<(u32, i32), Option<usize>> = HashMap::new();
    let mut failed: Option<eval::EvalError> = None;
    let per_line = !agg.query.pipeline.is_label_only() || agg.query.unwrap.is_some();
    let mut stream_labels = query::StreamLabels::default();
    let result = source(bounds, &mut |stream_id, info, l| {
        if !per_line {
            let id = *ids.entry((stream_id, l.stream)).or_insert_with(|| {
                let labels = crate::labels::label_pairs(&info.node, &info.labels, l.stream);
                if agg.query.pipeline.is_empty() {
                    return Some(acc.series(labels));
                }
                let stream: logfleet_logql::pipeline::Labels = labels.into_iter().collect();
                // None: a label filter drops the whole stream.
                let p = agg.query.pipeline.process(&stream, b"")?;
                Some(acc.series(p.labels.into_iter().collect()))
            });
            if let Some(id) = id {
                acc.add(id, l.ts, l.text.len());
            }
            return true;
        }
        let stream = stream_labels.get(stream_id, info, l.stream);
        let Some(p) = agg.query.pipeline.process(stream, &l.text) else {
            return true;
        };
        let mut labels = p.labels;
        let mut value = None;
        if let Some(u) = &agg.query.unwrap {
            match u.sample(&labels) {
                Ok(x) => value = Some(x),
                Err(kind) => {
                    labels.insert(logfleet_logql::pipeline::ERROR_LABEL.into(), kind.into());
                }
            }
            if !u.keeps(&labels) {
                return true;
            }
            // The unwrapped label is the value, not part of the series.
            labels.remove(&u.label);
        }
        if let Some(kind) = labels.get(logfleet_logql::pipeline::ERROR_LABEL) {
            failed = Some(eval::EvalError::Pipeline {
                kind: kind.clone(),
                series: format!("{labels:?}"),
            });
            return false;
        }
        let id = acc.series(labels.into_iter().collect());
        match value {
            Some(x) => acc.add_value(id, l.ts, x),
            None => acc.add(id, l.ts, p.line.len()),
        }
        true
    });
    if let Some(f) = failed {
        return Err(f.into());
    }
    result?;
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use logfleet_proto::v1::FileLabels;
    use proptest::prelude::*;

    fn streams() -> Vec<(String, FileLabels)> {
        (0..3)
            .map(|i| {
                (
                    format!("n{}", i % 2),
                    FileLabels {
                        namespace: "ns".into(),
                        pod: format!("p{i}"),
                        container: "c".into(),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn within(b: &Bounds, ts: i64) -> bool {
        !(b.from.is_some_and(|x| ts < x) || b.to.is_some_and(|x| ts >= x))
    }

    /// Evaluates `q` at `steps` over `lines` (stream, ts, stdout/stderr,
    /// length) line by line, and in buckets as a store's GROUP BY would.
    fn both(q: &str, steps: Steps, lines: &[(usize, i64, i32, usize)]) -> (String, String) {
        let m = match logfleet_logql::parse(q) {
            Ok(logfleet_logql::Expr::Metric(m)) => m,
            other => panic!("{q}: {other:?}"),
        };
        let streams = streams();
        let texts: Vec<Vec<u8>> = lines.iter().map(|l| vec![b'x'; l.3]).collect();
        let mut by_line = |_: &RangeAgg, b: Bounds, f: &mut LineSink<'_>| {
            for (i, l) in lines.iter().enumerate().filter(|(_, l)| within(&b, l.1)) {
                let (node, labels) = &streams[l.0];
                let info = StreamInfo {
                    node: node.as_str().into(),
                    labels: labels.clone(),
                };
                let line = Line {
                    range: 0,
                    ts: l.1,
                    offset: i as u64,
                    stream: l.2,
                    flags: 0,
                    text: texts[i].clone().into(),
                };
                f(l.0 as u32, &info, &line);
            }
            Ok(())
        };
        let want = metric_over(&m, steps, &mut by_line).unwrap();
        let mut by_bucket = |_: &RangeAgg, b: Buckets, f: &mut BucketSink<'_>| {
            let mut sums: std::collections::BTreeMap<(eval::Labels, i64), (u64, u64)> =
                Default::default();
            for l in lines.iter().filter(|l| within(&b.bounds, l.1)) {
                let (node, labels) = &streams[l.0];
                let key = (
                    crate::labels::label_pairs(node, labels, l.2),
                    (l.1 - b.from).div_euclid(b.width),
                );
                let e = sums.entry(key).or_default();
                e.0 += 1;
                e.1 += l.3 as u64;
            }
            for ((labels, bucket), (n, bytes)) in sums {
                f(labels, bucket, n, bytes);
            }
            Ok(())
        };
        let got = metric_over_buckets(&m, steps, &mut by_line, Some(&mut by_bucket)).unwrap();
        (format!("{got:?}"), format!("{want:?}"))
    }

    proptest! {
        /// Counting in buckets gives what counting line by line gives, for
        /// every countable aggregation and any step, range and offset.
        #[test]
        fn buckets_count_as_the_lines_would(
            lines in proptest::collection::vec((0usize..3, 0i64..1_000, 1i32..3, 0usize..20), 0..60),
            op in 0usize..5,
            range in 1i64..200,
            offset in proptest::option::of(1i64..100),
            start in -100i64..600,
            end in 600i64..1_300,
            step in 1i64..150,
            instant in proptest::option::of(0i64..1_200),
            stages in 0usize..3,
        ) {
            let op = ["count_over_time", "rate", "bytes_over_time", "bytes_rate", "absent_over_time"][op];
            let offset = offset.map_or(String::new(), |o| format!(" offset {o}ns"));
            // Label-only stages: Grafana's, and a label filter that drops
            // a stream.
            let stages = ["", " | drop __error__", r#" | pod != "p1""#][stages];
            let q = format!("sum by (pod, stream) ({op}({{namespace=\"ns\"}}{stages} [{range}ns]{offset}))");
            let steps = match instant {
                Some(t) => Steps::instant(t),
                None => Steps { start, end, step },
            };
            let (got, want) = both(&q, steps, &lines);
            prop_assert_eq!(got, want, "{} at {:?}", q, steps);
        }
    }

    #[test]
    fn only_sums_over_lines_are_countable() {
        // The predicate as evaluate applies it, to each aggregation.
        let mut seen = Vec::new();
        for q in [
            r#"count_over_time({a="b"} |= "x" [1m])"#,
            r#"rate({a="b"} | json [1m])"#,
            r#"sum_over_time({a="b"} | logfmt | unwrap n [1m])"#,
            r#"count_over_time({a="b"} | drop __error__ [1m])"#,
            r#"count_over_time({a="b"} | line_format "{{.a}}" [1m])"#,
        ] {
            let Ok(logfleet_logql::Expr::Metric(m)) = logfleet_logql::parse(q) else {
                panic!("{q}");
            };
            let mut none = |_: &RangeAgg, _: Bounds, _: &mut LineSink<'_>| Ok(());
            let mut record = |a: &RangeAgg, _: Buckets, _: &mut BucketSink<'_>| {
                seen.push(countable(a));
                Ok(())
            };
            let _ = metric_over_buckets(&m, Steps::instant(0), &mut none, Some(&mut record));
        }
        // Line filters are the store's, label-only stages need no line; a
        // parser, unwrap or line_format does.
        assert_eq!(seen, [true, true]);
    }
}
