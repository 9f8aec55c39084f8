//! Metric queries over the store: each range aggregation reads its lines
//! once, in no particular order, through [`crate::query::visit`], and
//! [`super::eval`] does the rest.

use std::collections::HashMap;

use logfleet_proto::v1::Direction;

use super::eval::{self, Matrix, RangeAcc, Steps, Value};
use super::{Metric, RangeAgg};
use crate::index::StreamInfo;
use crate::ingest::Shared;
use crate::query::{self, Bounds, Control, QueryError};
use logfleet_proto::Line;

/// Evaluates `m` at `steps` over the store.
pub fn metric(
    shared: &Shared,
    m: &Metric,
    steps: Steps,
    ctl: &Control,
) -> Result<Value, QueryError> {
    if steps.len() as i64 > eval::MAX_STEPS {
        return Err(eval::EvalError::TooManySteps.into());
    }
    eval::evaluate(m, steps, &mut |agg| range(shared, agg, steps, ctl))
}

fn range(
    shared: &Shared,
    agg: &RangeAgg,
    steps: Steps,
    ctl: &Control,
) -> Result<Matrix, QueryError> {
    range_over(agg, steps, &mut |bounds, f| {
        query::visit(shared, &agg.query, bounds, ctl, &mut |v| {
            f(v.stream_id, v.info, v.line)
        })
    })
}

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
    if steps.len() as i64 > eval::MAX_STEPS {
        return Err(eval::EvalError::TooManySteps.into());
    }
    eval::evaluate(m, steps, &mut |agg| {
        range_over(agg, steps, &mut |bounds, f| source(agg, bounds, f))
    })
}

/// One range aggregation over the lines `source` gives.
fn range_over(
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
                let labels = query::label_pairs(&info.node, &info.labels, l.stream);
                if agg.query.pipeline.is_empty() {
                    return Some(acc.series(labels));
                }
                let stream: crate::pipeline::Labels = labels.into_iter().collect();
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
                    labels.insert(crate::pipeline::ERROR_LABEL.into(), kind.into());
                }
            }
            if !u.keeps(&labels) {
                return true;
            }
            // The unwrapped label is the value, not part of the series.
            labels.remove(&u.label);
        }
        if let Some(kind) = labels.get(crate::pipeline::ERROR_LABEL) {
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
