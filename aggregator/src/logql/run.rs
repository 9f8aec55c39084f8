//! Metric queries over the store: each range aggregation reads its lines
//! once, oldest first, through [`crate::query::execute_into`], and
//! [`super::eval`] does the rest.

use std::collections::HashMap;

use logfleet_proto::v1::Direction;

use super::eval::{self, Matrix, RangeAcc, Steps, Value};
use super::{Metric, RangeAgg};
use crate::ingest::Shared;
use crate::query::{self, Bounds, Control, QueryError};

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
    let mut acc = RangeAcc::new(agg, steps);
    let (from, to) = acc.span();
    let bounds = Bounds {
        from: Some(from),
        to: Some(to.saturating_add(1)),
        limit: 0,
        direction: Direction::Forward,
    };
    // Series ids by stream, keyed by the stream's label values in a buffer
    // used again for every line: a line costs one hash lookup.
    let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut key = Vec::new();
    query::execute_into(shared, &agg.query, bounds, ctl, &mut |e| {
        key.clear();
        let l = e.labels.as_ref();
        for part in [
            e.node.as_bytes(),
            l.map_or(&b""[..], |l| l.namespace.as_bytes()),
            l.map_or(&b""[..], |l| l.pod.as_bytes()),
            l.map_or(&b""[..], |l| l.pod_uid.as_bytes()),
            l.map_or(&b""[..], |l| l.container.as_bytes()),
        ] {
            key.extend_from_slice(part);
            key.push(0);
        }
        key.extend_from_slice(&l.map_or(0, |l| l.restart).to_le_bytes());
        key.extend_from_slice(&e.stream.to_le_bytes());
        let id = match ids.get(&key[..]) {
            Some(&id) => id,
            None => {
                let labels = agg.query.report_labels(query::label_pairs(
                    &e.node,
                    &l.cloned().unwrap_or_default(),
                    e.stream,
                ));
                let id = acc.series(labels);
                ids.insert(key.clone(), id);
                id
            }
        };
        acc.add(id, e.ts_unix_nano, e.line.len());
        true
    })?;
    Ok(acc.finish())
}
