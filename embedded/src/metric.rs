//! Metric queries over the embedded store: each range aggregation reads
//! its lines once, in no particular order, through [`crate::query::visit`],
//! and [`logfleet_store::evaluate`] does the rest.

use logfleet_logql::eval::{self, Matrix, Steps, Value};
use logfleet_logql::{Metric, RangeAgg};
use logfleet_store::evaluate::range_over;

use crate::ingest::Shared;
use crate::query::{self, Control, QueryError};

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
