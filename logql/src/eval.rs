//! Evaluation of metric queries at evenly spaced steps, pure: lines come in
//! through [`RangeAcc::add`], results leave as [`Value`]s.
//!
//! A line counts towards every step `t` with `t - range < ts + offset <= t`
//! (Loki's and Prometheus' left-open window), so memory is one number per
//! series and step, whatever the number of lines.

use std::collections::{BTreeMap, HashMap};

use crate::metric::{BinOp, Grouping, Metric, RangeAgg, RangeOp, VectorOp};
use crate::selector::Op;

/// Label name/value pairs, sorted by name.
pub type Labels = Vec<(String, String)>;

/// Per series, a value or nothing at each step.
pub type Matrix = BTreeMap<Labels, Vec<Option<f64>>>;

/// One series: its labels and its values by step.
type Series = (Labels, Vec<Option<f64>>);

/// The most steps one query may evaluate (Loki's and Prometheus' limit).
pub const MAX_STEPS: i64 = 11_000;

/// Evenly spaced evaluation times, ns, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// First step.
    pub start: i64,
    /// Last step (or earlier: the last whole step before it).
    pub end: i64,
    /// Spacing, > 0.
    pub step: i64,
}

impl Steps {
    /// One step at `t` (an instant query).
    pub fn instant(t: i64) -> Self {
        Steps {
            start: t,
            end: t,
            step: 1,
        }
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        if self.end < self.start || self.step <= 0 {
            return 0;
        }
        ((self.end - self.start) / self.step + 1) as usize
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of step `k`.
    pub fn at(&self, k: usize) -> i64 {
        self.start + k as i64 * self.step
    }
}

/// The value of an expression over all steps.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// The same number at every step.
    Scalar(f64),
    /// Series.
    Matrix(Matrix),
}

/// Accumulates the lines of one range aggregation.
#[derive(Debug)]
pub struct RangeAcc {
    op: RangeOp,
    range: i64,
    offset: i64,
    steps: Steps,
    ids: HashMap<Labels, usize>,
    labels: Vec<Labels>,
    /// Per series, per step: lines (or bytes) in the window.
    sums: Vec<Vec<f64>>,
    /// Per series, per step: the unwrapped samples in the window (only
    /// for the aggregations that need them).
    samples: Vec<Vec<Vec<(i64, f64)>>>,
    /// φ of `quantile_over_time`.
    param: f64,
    /// Per step: whether any line fell in the window (`absent_over_time`).
    any: Vec<bool>,
    /// Labels of `absent_over_time`'s result: the selector's equalities.
    absent_labels: Labels,
}

impl RangeAcc {
    /// An empty accumulator for `agg` at `steps`.
    pub fn new(agg: &RangeAgg, steps: Steps) -> Self {
        let mut absent_labels: Labels = agg
            .query
            .matchers
            .iter()
            .filter_map(|m| match &m.op {
                Op::Eq(v) => Some((m.label.name().to_owned(), v.clone())),
                _ => None,
            })
            .collect();
        absent_labels.sort();
        absent_labels.dedup_by(|a, b| a.0 == b.0);
        RangeAcc {
            op: agg.op,
            range: agg.range,
            offset: agg.offset,
            steps,
            ids: HashMap::new(),
            labels: Vec::new(),
            sums: Vec::new(),
            samples: Vec::new(),
            param: agg.param.unwrap_or(0.5),
            any: vec![false; steps.len()],
            absent_labels,
        }
    }

    /// The lines' time span this needs: `[from, to]`, ns.
    pub fn span(&self) -> (i64, i64) {
        let last = self.steps.at(self.steps.len().saturating_sub(1));
        (
            self.steps.start - self.offset - self.range + 1,
            last - self.offset,
        )
    }

    /// The id of a series, for [`RangeAcc::add`]; callers keep it per
    /// stream so that a line costs no label work.
    pub fn series(&mut self, labels: Labels) -> usize {
        if let Some(&id) = self.ids.get(&labels) {
            return id;
        }
        let id = self.labels.len();
        self.ids.insert(labels.clone(), id);
        self.labels.push(labels);
        if self.op.needs_unwrap() {
            self.samples.push(vec![Vec::new(); self.steps.len()]);
        } else {
            self.sums.push(vec![0.0; self.steps.len()]);
        }
        id
    }

    /// The steps whose window holds a line at `ts`.
    fn window(&self, ts: i64) -> std::ops::RangeInclusive<usize> {
        let n = self.steps.len() as i64;
        let ts = ts.saturating_add(self.offset);
        // Steps t with ts <= t < ts + range.
        let first = div_ceil(ts - self.steps.start, self.steps.step).max(0);
        let last = (ts + self.range - 1 - self.steps.start)
            .div_euclid(self.steps.step)
            .min(n - 1);
        if n == 0 || last < first {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        first as usize..=last as usize
    }

    /// Counts one line of `bytes` bytes at `ts` in series `id`.
    pub fn add(&mut self, id: usize, ts: i64, bytes: usize) {
        let v = match self.op {
            RangeOp::BytesOverTime | RangeOp::BytesRate => bytes as f64,
            _ => 1.0,
        };
        self.add_value(id, ts, v);
    }

    /// Adds `lines` lines holding `bytes` bytes of text at `ts` in series
    /// `id` at once: what a store that counts lines itself hands over
    /// (`logfleet_store::evaluate::Buckets`). Only for aggregations linear
    /// in the lines (`logfleet_store::evaluate::countable`).
    pub fn add_many(&mut self, id: usize, ts: i64, lines: u64, bytes: u64) {
        let v = match self.op {
            RangeOp::BytesOverTime | RangeOp::BytesRate => bytes as f64,
            _ => lines as f64,
        };
        self.add_value(id, ts, v);
    }

    /// Adds one line's unwrapped value `v` at `ts` in series `id` (for
    /// `rate`, a value summed instead of a line counted).
    pub fn add_value(&mut self, id: usize, ts: i64, v: f64) {
        for k in self.window(ts) {
            self.any[k] = true;
            if let Some(cell) = self.samples.get_mut(id).map(|r| &mut r[k]) {
                cell.push((ts, v));
            } else if let Some(row) = self.sums.get_mut(id) {
                row[k] += v;
            }
        }
    }

    fn reduce(&self, cell: &mut [(i64, f64)]) -> Option<f64> {
        if cell.is_empty() {
            return None;
        }
        let n = cell.len() as f64;
        let sum: f64 = cell.iter().map(|c| c.1).sum();
        let mean = sum / n;
        let var = cell
            .iter()
            .map(|c| (c.1 - mean) * (c.1 - mean))
            .sum::<f64>()
            / n;
        Some(match self.op {
            RangeOp::SumOverTime => sum,
            RangeOp::AvgOverTime => mean,
            RangeOp::MinOverTime => cell.iter().map(|c| c.1).fold(f64::INFINITY, f64::min),
            RangeOp::MaxOverTime => cell.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max),
            RangeOp::StddevOverTime => var.sqrt(),
            RangeOp::StdvarOverTime => var,
            RangeOp::FirstOverTime => cell.iter().min_by_key(|c| c.0).map_or(0.0, |c| c.1),
            RangeOp::LastOverTime => cell.iter().max_by_key(|c| c.0).map_or(0.0, |c| c.1),
            RangeOp::QuantileOverTime => {
                // Prometheus' quantile: linear between the closest ranks.
                cell.sort_by(|a, b| a.1.total_cmp(&b.1));
                let q = self.param;
                if q < 0.0 {
                    return Some(f64::NEG_INFINITY);
                }
                if q > 1.0 {
                    return Some(f64::INFINITY);
                }
                let rank = q * (n - 1.0);
                let lo = rank.floor() as usize;
                let hi = (lo + 1).min(cell.len() - 1);
                let w = rank - lo as f64;
                cell[lo].1 * (1.0 - w) + cell[hi].1 * w
            }
            _ => sum,
        })
    }

    /// The result.
    pub fn finish(mut self) -> Matrix {
        let secs = self.range as f64 / 1e9;
        if self.op.needs_unwrap() {
            let samples = std::mem::take(&mut self.samples);
            return self
                .labels
                .iter()
                .zip(samples)
                .filter_map(|(l, row)| {
                    let row: Vec<Option<f64>> =
                        row.into_iter().map(|mut c| self.reduce(&mut c)).collect();
                    row.iter().any(Option::is_some).then(|| (l.clone(), row))
                })
                .collect();
        }
        if self.op == RangeOp::AbsentOverTime {
            let row: Vec<Option<f64>> = self.any.iter().map(|&a| (!a).then_some(1.0)).collect();
            let mut m = Matrix::new();
            if row.iter().any(Option::is_some) {
                m.insert(self.absent_labels, row);
            }
            return m;
        }
        self.labels
            .into_iter()
            .zip(self.sums)
            .filter_map(|(l, row)| {
                let row: Vec<Option<f64>> = row
                    .into_iter()
                    .map(|v| {
                        (v > 0.0).then_some(match self.op {
                            RangeOp::Rate | RangeOp::BytesRate => v / secs,
                            _ => v,
                        })
                    })
                    .collect();
                row.iter().any(Option::is_some).then_some((l, row))
            })
            .collect()
    }
}

fn div_ceil(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// Why an expression cannot be evaluated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// A line could not be parsed or unwrapped, and the query did not
    /// filter such lines out.
    #[error("pipeline error: '{kind}' for series: '{series}'. Use a label filter to skip it, such as | __error__!=\"{kind}\", or | __error__=\"\" for every error")]
    Pipeline {
        /// The `__error__` value.
        kind: String,
        /// The series' labels.
        series: String,
    },
    /// Too many steps.
    #[error("exceeded maximum resolution of {MAX_STEPS} data points; try increasing the step or decreasing the time range")]
    TooManySteps,
    /// Two series of one side of an operator have the same labels.
    #[error(
        "found duplicate series for the match group {0:?} on the right hand-side of the operation"
    )]
    DuplicateMatch(String),
}

/// Evaluates `m` at `steps`, asking `range` for each range aggregation's
/// result.
pub fn evaluate<E: From<EvalError>>(
    m: &Metric,
    steps: Steps,
    range: &mut dyn FnMut(&RangeAgg) -> Result<Matrix, E>,
) -> Result<Value, E> {
    Ok(match m {
        Metric::Scalar(v) => Value::Scalar(*v),
        Metric::Vector(v) => {
            let mut out = Matrix::new();
            out.insert(Vec::new(), vec![Some(*v); steps.len()]);
            Value::Matrix(out)
        }
        Metric::Range(r) => Value::Matrix(range(r)?),
        Metric::Aggregate {
            op,
            grouping,
            param,
            inner,
        } => {
            let v = evaluate(inner, steps, range)?;
            let input = match v {
                Value::Matrix(m) => m,
                Value::Scalar(s) => {
                    let mut m = Matrix::new();
                    m.insert(Vec::new(), vec![Some(s); steps.len()]);
                    m
                }
            };
            Value::Matrix(aggregate(
                *op,
                grouping.as_ref(),
                *param,
                input,
                steps.len(),
            ))
        }
        Metric::Binary {
            op,
            bool_modifier,
            lhs,
            rhs,
        } => {
            let l = evaluate(lhs, steps, range)?;
            let r = evaluate(rhs, steps, range)?;
            binary(*op, *bool_modifier, l, r)?
        }
    })
}

/// The value of an expression without range aggregations at one step
/// (tests, and constant queries).
pub fn constant(m: &Metric) -> Option<f64> {
    let v = evaluate::<EvalError>(m, Steps::instant(0), &mut |_| Ok(Matrix::new())).ok()?;
    match v {
        Value::Scalar(s) => Some(s),
        Value::Matrix(m) => m.into_values().next().and_then(|r| r[0]),
    }
}

fn group_key(labels: &Labels, g: Option<&Grouping>) -> Labels {
    match g {
        None => Vec::new(),
        Some(Grouping::By(names)) => labels
            .iter()
            .filter(|(n, _)| names.contains(n))
            .cloned()
            .collect(),
        Some(Grouping::Without(names)) => labels
            .iter()
            .filter(|(n, _)| !names.contains(n))
            .cloned()
            .collect(),
    }
}

fn aggregate(
    op: VectorOp,
    g: Option<&Grouping>,
    k: Option<usize>,
    input: Matrix,
    n: usize,
) -> Matrix {
    // Series per group, in label order.
    let mut groups: BTreeMap<Labels, Vec<Series>> = BTreeMap::new();
    for (labels, row) in input {
        groups
            .entry(group_key(&labels, g))
            .or_default()
            .push((labels, row));
    }
    let mut out = Matrix::new();
    for (key, members) in groups {
        if let (VectorOp::Topk | VectorOp::Bottomk, Some(k)) = (op, k) {
            for step in 0..n {
                let mut present: Vec<(f64, usize)> = members
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, row))| row[step].map(|v| (v, i)))
                    .collect();
                present.sort_by(|a, b| {
                    let o = a.0.total_cmp(&b.0);
                    if op == VectorOp::Topk {
                        o.reverse()
                    } else {
                        o
                    }
                });
                for &(v, i) in present.iter().take(k) {
                    out.entry(members[i].0.clone())
                        .or_insert_with(|| vec![None; n])[step] = Some(v);
                }
            }
            continue;
        }
        let mut row = vec![None; n];
        for (step, cell) in row.iter_mut().enumerate() {
            let vals: Vec<f64> = members.iter().filter_map(|(_, r)| r[step]).collect();
            if vals.is_empty() {
                continue;
            }
            let count = vals.len() as f64;
            let sum: f64 = vals.iter().sum();
            let mean = sum / count;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / count;
            *cell = Some(match op {
                VectorOp::Sum => sum,
                VectorOp::Avg => mean,
                VectorOp::Min => vals.iter().copied().fold(f64::INFINITY, f64::min),
                VectorOp::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                VectorOp::Count => count,
                VectorOp::Stddev => var.sqrt(),
                VectorOp::Stdvar => var,
                VectorOp::Topk | VectorOp::Bottomk => sum,
            });
        }
        if row.iter().any(Option::is_some) {
            out.insert(key, row);
        }
    }
    out
}

fn binary(op: BinOp, bool_modifier: bool, l: Value, r: Value) -> Result<Value, EvalError> {
    let cmp = op.is_comparison();
    Ok(match (l, r) {
        (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(op.apply(a, b)),
        (Value::Matrix(m), Value::Scalar(s)) => Value::Matrix(with_scalar(m, |v| {
            let x = op.apply(v, s);
            filter(cmp, bool_modifier, v, x)
        })),
        (Value::Scalar(s), Value::Matrix(m)) => Value::Matrix(with_scalar(m, |v| {
            let x = op.apply(s, v);
            filter(cmp, bool_modifier, v, x)
        })),
        (Value::Matrix(a), Value::Matrix(b)) => {
            let mut out = Matrix::new();
            for (labels, la) in a {
                let Some(lb) = b.get(&labels) else { continue };
                let row: Vec<Option<f64>> = la
                    .iter()
                    .zip(lb)
                    .map(|(x, y)| match (x, y) {
                        (Some(x), Some(y)) => filter(cmp, bool_modifier, *x, op.apply(*x, *y)),
                        _ => None,
                    })
                    .collect();
                if row.iter().any(Option::is_some) {
                    out.insert(labels, row);
                }
            }
            Value::Matrix(out)
        }
    })
}

/// A comparison without `bool` keeps the sample (`keep`) when true and
/// drops it when false; everything else gives the computed value.
fn filter(cmp: bool, bool_modifier: bool, keep: f64, computed: f64) -> Option<f64> {
    if !cmp || bool_modifier {
        return Some(computed);
    }
    (computed != 0.0).then_some(keep)
}

fn with_scalar(m: Matrix, f: impl Fn(f64) -> Option<f64>) -> Matrix {
    m.into_iter()
        .filter_map(|(l, row)| {
            let row: Vec<Option<f64>> = row.into_iter().map(|v| v.and_then(&f)).collect();
            row.iter().any(Option::is_some).then_some((l, row))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::{parse, Expr};

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    const S: i64 = 1_000_000_000;

    /// Lines: (labels, ts seconds, bytes). Evaluates `q` at steps by brute
    /// force over the lines and through [`RangeAcc`], and checks both agree.
    fn run(q: &str, steps: Steps, lines: &[(Labels, i64, usize)]) -> Value {
        let Expr::Metric(m) = parse(q).unwrap() else {
            panic!("not a metric query")
        };
        evaluate::<EvalError>(&m, steps, &mut |agg| {
            let mut acc = RangeAcc::new(agg, steps);
            for (labels, ts, bytes) in lines {
                let id = acc.series(labels.clone());
                acc.add(id, *ts, *bytes);
            }
            let fast = acc.finish();
            // Brute force: every step, every line.
            let mut slow = Matrix::new();
            for (labels, _, _) in lines {
                let row: Vec<Option<f64>> = (0..steps.len())
                    .map(|k| {
                        let t = steps.at(k);
                        let inside: Vec<usize> = lines
                            .iter()
                            .filter(|(ll, ts, _)| {
                                ll == labels
                                    && *ts + agg.offset > t - agg.range
                                    && *ts + agg.offset <= t
                            })
                            .map(|x| x.2)
                            .collect();
                        let secs = agg.range as f64 / 1e9;
                        (!inside.is_empty()).then(|| match agg.op {
                            RangeOp::CountOverTime => inside.len() as f64,
                            RangeOp::Rate => inside.len() as f64 / secs,
                            RangeOp::BytesOverTime => inside.iter().sum::<usize>() as f64,
                            RangeOp::BytesRate => inside.iter().sum::<usize>() as f64 / secs,
                            _ => 0.0,
                        })
                    })
                    .collect();
                if row.iter().any(Option::is_some) {
                    slow.insert(labels.clone(), row);
                }
            }
            if agg.op != RangeOp::AbsentOverTime {
                assert_eq!(fast, slow, "{q}");
            }
            Ok(fast)
        })
        .unwrap()
    }

    fn lines() -> Vec<(Labels, i64, usize)> {
        let a = l(&[("namespace", "a"), ("pod", "p1")]);
        let b = l(&[("namespace", "a"), ("pod", "p2")]);
        let c = l(&[("namespace", "b"), ("pod", "p3")]);
        vec![
            (a.clone(), S, 10),
            (a.clone(), 2 * S, 20),
            (a.clone(), 10 * S, 5),
            (b.clone(), 2 * S, 7),
            (b.clone(), 3 * S, 7),
            (c.clone(), 9 * S, 100),
            (a, 60 * S, 1),
        ]
    }

    #[test]
    fn range_aggregations_match_brute_force() {
        for (q, step) in [
            ("count_over_time({namespace=\"a\"}[10s])", 5),
            ("rate({namespace=\"a\"}[10s])", 3),
            ("bytes_over_time({namespace=\"a\"}[2s])", 1),
            ("bytes_rate({namespace=\"a\"}[30s])", 7),
            ("count_over_time({namespace=\"a\"}[5s] offset 2s)", 4),
        ] {
            let steps = Steps {
                start: 0,
                end: 70 * S,
                step: step * S,
            };
            run(q, steps, &lines());
        }
    }

    #[test]
    fn the_window_is_open_on_the_left() {
        let steps = Steps {
            start: 0,
            end: 4 * S,
            step: S,
        };
        let one = vec![(l(&[("pod", "x")]), 2 * S, 1)];
        let Value::Matrix(m) = run("count_over_time({pod=\"x\"}[1s])", steps, &one) else {
            panic!()
        };
        assert_eq!(m[&l(&[("pod", "x")])], [None, None, Some(1.0), None, None]);
    }

    #[test]
    fn vector_aggregations_group_per_step() {
        let steps = Steps {
            start: 10 * S,
            end: 10 * S,
            step: S,
        };
        let v = run(
            "sum by (namespace) (count_over_time({namespace=~\".+\"}[10s]))",
            steps,
            &lines(),
        );
        let Value::Matrix(m) = v else { panic!() };
        assert_eq!(m[&l(&[("namespace", "a")])], [Some(5.0)]);
        assert_eq!(m[&l(&[("namespace", "b")])], [Some(1.0)]);
        let Value::Matrix(m) = run(
            "topk(1, count_over_time({namespace=~\".+\"}[10s]))",
            steps,
            &lines(),
        ) else {
            panic!()
        };
        assert_eq!(m.len(), 1);
        assert_eq!(m[&l(&[("namespace", "a"), ("pod", "p1")])], [Some(3.0)]);
        let Value::Matrix(m) = run(
            "count without (pod) (count_over_time({namespace=~\".+\"}[10s])) > 1",
            steps,
            &lines(),
        ) else {
            panic!()
        };
        assert_eq!(m.len(), 1, "the comparison filters namespace b out: {m:?}");
        // Grouping by labels nobody has: one series without labels, as
        // Grafana's log-volume query expects.
        let Value::Matrix(m) = run(
            "sum by (level) (count_over_time({namespace=~\".+\"} | drop __error__ [10s]))",
            steps,
            &lines(),
        ) else {
            panic!()
        };
        assert_eq!(m[&Vec::new()], [Some(6.0)]);
    }

    #[test]
    fn health_check_and_absent() {
        let Value::Matrix(m) = run("vector(1)+vector(1)", Steps::instant(5), &[]) else {
            panic!()
        };
        assert_eq!(m[&Vec::new()], [Some(2.0)]);
        let steps = Steps {
            start: 0,
            end: 20 * S,
            step: 10 * S,
        };
        let Value::Matrix(m) = run(
            "absent_over_time({namespace=\"b\", pod=~\"p.*\"}[5s])",
            steps,
            &[(l(&[("namespace", "b")]), 9 * S, 1)],
        ) else {
            panic!()
        };
        assert_eq!(m[&l(&[("namespace", "b")])], [Some(1.0), None, Some(1.0)]);
    }

    #[test]
    fn steps_are_counted_inclusively() {
        let s = Steps {
            start: 0,
            end: 10,
            step: 5,
        };
        assert_eq!(s.len(), 3);
        assert_eq!(Steps::instant(7).len(), 1);
    }
}
