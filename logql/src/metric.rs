//! LogQL metric queries around the log queries of [`crate::selector`]:
//! range aggregations (`count_over_time`, `rate`, `bytes_over_time`,
//! `bytes_rate`, `absent_over_time`), vector aggregations (`sum`, `avg`,
//! `min`, `max`, `count`, `stddev`, `stdvar`, `topk`, `bottomk`, with
//! `by`/`without`), `vector(n)`, numbers and binary operators.
//!
//! Parsing ([`parse`]) is here, evaluation in [`crate::eval`]; a store
//! feeds evaluation with its lines. Semantics follow Loki's documentation: a
//! range covers `(t - range, t]` at every step `t`, vector aggregations
//! group per step, and a comparison without `bool` filters.

use std::time::Duration;

use crate::selector::{self, Query};
pub use crate::syntax::parse_duration;
use crate::syntax::{ParseError, Parser};

/// A parsed LogQL expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// A log query: lines.
    Log(Query),
    /// A metric query: numbers.
    Metric(Metric),
}

/// A range aggregation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// Lines in the range.
    CountOverTime,
    /// Lines per second.
    Rate,
    /// Bytes of line text in the range.
    BytesOverTime,
    /// Bytes of line text per second.
    BytesRate,
    /// 1 when the range holds no line.
    AbsentOverTime,
    /// Sum of the unwrapped values.
    SumOverTime,
    /// Mean of the unwrapped values.
    AvgOverTime,
    /// Smallest unwrapped value.
    MinOverTime,
    /// Largest unwrapped value.
    MaxOverTime,
    /// Population standard deviation of the unwrapped values.
    StddevOverTime,
    /// Population variance of the unwrapped values.
    StdvarOverTime,
    /// The φ-quantile of the unwrapped values.
    QuantileOverTime,
    /// The oldest unwrapped value.
    FirstOverTime,
    /// The newest unwrapped value.
    LastOverTime,
}

impl RangeOp {
    /// Whether it reads `| unwrap`ped values (else it counts lines or
    /// bytes; `rate` does either).
    pub fn needs_unwrap(self) -> bool {
        !matches!(
            self,
            RangeOp::CountOverTime
                | RangeOp::Rate
                | RangeOp::BytesOverTime
                | RangeOp::BytesRate
                | RangeOp::AbsentOverTime
        )
    }

    fn name(self) -> &'static str {
        match self {
            RangeOp::CountOverTime => "count_over_time",
            RangeOp::Rate => "rate",
            RangeOp::BytesOverTime => "bytes_over_time",
            RangeOp::BytesRate => "bytes_rate",
            RangeOp::AbsentOverTime => "absent_over_time",
            RangeOp::SumOverTime => "sum_over_time",
            RangeOp::AvgOverTime => "avg_over_time",
            RangeOp::MinOverTime => "min_over_time",
            RangeOp::MaxOverTime => "max_over_time",
            RangeOp::StddevOverTime => "stddev_over_time",
            RangeOp::StdvarOverTime => "stdvar_over_time",
            RangeOp::QuantileOverTime => "quantile_over_time",
            RangeOp::FirstOverTime => "first_over_time",
            RangeOp::LastOverTime => "last_over_time",
        }
    }
}

/// A vector aggregation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorOp {
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Number of series.
    Count,
    /// Population standard deviation.
    Stddev,
    /// Population variance.
    Stdvar,
    /// The k largest series.
    Topk,
    /// The k smallest series.
    Bottomk,
}

/// `by (...)` or `without (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    /// Keep only these labels.
    By(Vec<String>),
    /// Drop these labels.
    Without(Vec<String>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl BinOp {
    /// Whether the operator compares (and so filters without `bool`).
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le
        )
    }

    /// Applies the operator; comparisons give 1 or 0.
    pub fn apply(self, a: f64, b: f64) -> f64 {
        let t = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            BinOp::Mod => a % b,
            BinOp::Pow => a.powf(b),
            BinOp::Eq => t(a == b),
            BinOp::Ne => t(a != b),
            BinOp::Gt => t(a > b),
            BinOp::Ge => t(a >= b),
            BinOp::Lt => t(a < b),
            BinOp::Le => t(a <= b),
        }
    }
}

/// A range aggregation over a log query.
#[derive(Debug, Clone)]
pub struct RangeAgg {
    /// The function.
    pub op: RangeOp,
    /// The lines it counts.
    pub query: Query,
    /// The range, ns.
    pub range: i64,
    /// `offset`, ns: the window ends this long before each step.
    pub offset: i64,
    /// φ of `quantile_over_time`.
    pub param: Option<f64>,
}

/// A metric expression.
#[derive(Debug, Clone)]
pub enum Metric {
    /// A number.
    Scalar(f64),
    /// `vector(n)`: one series without labels.
    Vector(f64),
    /// A range aggregation.
    Range(RangeAgg),
    /// A vector aggregation.
    Aggregate {
        /// The operator.
        op: VectorOp,
        /// `by`/`without`; `None`: everything in one group.
        grouping: Option<Grouping>,
        /// k of `topk`/`bottomk`.
        param: Option<usize>,
        /// What it aggregates.
        inner: Box<Metric>,
    },
    /// A binary operation.
    Binary {
        /// The operator.
        op: BinOp,
        /// `bool` after a comparison: give 0/1 instead of filtering.
        bool_modifier: bool,
        /// Left side.
        lhs: Box<Metric>,
        /// Right side.
        rhs: Box<Metric>,
    },
}

impl Metric {
    /// The range aggregations in this expression, left to right.
    pub fn ranges(&self) -> Vec<&RangeAgg> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    fn walk<'a>(&'a self, out: &mut Vec<&'a RangeAgg>) {
        match self {
            Metric::Scalar(_) | Metric::Vector(_) => {}
            Metric::Range(r) => out.push(r),
            Metric::Aggregate { inner, .. } => inner.walk(out),
            Metric::Binary { lhs, rhs, .. } => {
                lhs.walk(out);
                rhs.walk(out);
            }
        }
    }
}

/// Parses a LogQL expression: a log query, or a metric query.
pub fn parse(s: &str) -> Result<Expr, ParseError> {
    let mut p = Parser::new(s);
    p.ws();
    if s[p.pos..].starts_with('{') {
        return selector::parse_log_query(s).map(Expr::Log);
    }
    let m = binary(&mut p, 0)?;
    p.ws();
    if p.pos != s.len() {
        return p.err("unexpected text after the expression");
    }
    Ok(Expr::Metric(m))
}

/// Operators by precedence level (lowest first), as in PromQL.
const LEVELS: [&[(&str, BinOp)]; 4] = [
    &[
        ("==", BinOp::Eq),
        ("!=", BinOp::Ne),
        (">=", BinOp::Ge),
        ("<=", BinOp::Le),
        (">", BinOp::Gt),
        ("<", BinOp::Lt),
    ],
    &[("+", BinOp::Add), ("-", BinOp::Sub)],
    &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Mod)],
    &[("^", BinOp::Pow)],
];

fn binary(p: &mut Parser<'_>, level: usize) -> Result<Metric, ParseError> {
    if level == LEVELS.len() {
        return unary(p);
    }
    let mut lhs = binary(p, level + 1)?;
    'outer: loop {
        for &(tok, op) in LEVELS[level] {
            if p.eat(tok) {
                let bool_modifier = op.is_comparison() && p.eat_word("bool");
                // `^` is right-associative.
                let rhs = if op == BinOp::Pow {
                    binary(p, level)?
                } else {
                    binary(p, level + 1)?
                };
                lhs = Metric::Binary {
                    op,
                    bool_modifier,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                };
                continue 'outer;
            }
        }
        return Ok(lhs);
    }
}

fn unary(p: &mut Parser<'_>) -> Result<Metric, ParseError> {
    if p.eat("-") {
        // As in PromQL, `^` binds tighter than a sign: -2 ^ 2 is -4.
        let inner = binary(p, LEVELS.len() - 1)?;
        return Ok(match inner {
            Metric::Scalar(v) => Metric::Scalar(-v),
            other => Metric::Binary {
                op: BinOp::Mul,
                bool_modifier: false,
                lhs: Box::new(Metric::Scalar(-1.0)),
                rhs: Box::new(other),
            },
        });
    }
    if p.eat("+") {
        return unary(p);
    }
    primary(p)
}

fn number(p: &mut Parser<'_>) -> Option<f64> {
    p.ws();
    let rest = &p.s[p.pos..];
    let n = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E'))
        .unwrap_or(rest.len());
    if n == 0 || !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let v = rest[..n].parse::<f64>().ok()?;
    p.pos += n;
    Some(v)
}

fn primary(p: &mut Parser<'_>) -> Result<Metric, ParseError> {
    p.ws();
    if p.eat("(") {
        let m = binary(p, 0)?;
        if !p.eat(")") {
            return p.err("expected )");
        }
        return Ok(m);
    }
    if let Some(v) = number(p) {
        return Ok(Metric::Scalar(v));
    }
    if p.s[p.pos..].starts_with('{') {
        return p.err("a log query cannot be part of a metric query; wrap it in a range aggregation such as count_over_time({...}[5m])");
    }
    let at = p.pos;
    let name = p.ident()?;
    let range_op = match name {
        "count_over_time" => Some(RangeOp::CountOverTime),
        "rate" => Some(RangeOp::Rate),
        "bytes_over_time" => Some(RangeOp::BytesOverTime),
        "bytes_rate" => Some(RangeOp::BytesRate),
        "absent_over_time" => Some(RangeOp::AbsentOverTime),
        "sum_over_time" => Some(RangeOp::SumOverTime),
        "avg_over_time" => Some(RangeOp::AvgOverTime),
        "min_over_time" => Some(RangeOp::MinOverTime),
        "max_over_time" => Some(RangeOp::MaxOverTime),
        "stddev_over_time" => Some(RangeOp::StddevOverTime),
        "stdvar_over_time" => Some(RangeOp::StdvarOverTime),
        "quantile_over_time" => Some(RangeOp::QuantileOverTime),
        "first_over_time" => Some(RangeOp::FirstOverTime),
        "last_over_time" => Some(RangeOp::LastOverTime),
        _ => None,
    };
    if let Some(op) = range_op {
        return range_agg(p, op);
    }
    let vector_op = match name {
        "sum" => Some(VectorOp::Sum),
        "avg" => Some(VectorOp::Avg),
        "min" => Some(VectorOp::Min),
        "max" => Some(VectorOp::Max),
        "count" => Some(VectorOp::Count),
        "stddev" => Some(VectorOp::Stddev),
        "stdvar" => Some(VectorOp::Stdvar),
        "topk" => Some(VectorOp::Topk),
        "bottomk" => Some(VectorOp::Bottomk),
        _ => None,
    };
    if let Some(op) = vector_op {
        return vector_agg(p, op);
    }
    if name == "vector" {
        if !p.eat("(") {
            return p.err("expected ( after vector");
        }
        let Some(v) = number(p) else {
            return p.err("vector() takes a number");
        };
        if !p.eat(")") {
            return p.err("expected )");
        }
        return Ok(Metric::Vector(v));
    }
    p.pos = at;
    p.err(format!(
        "unknown function {name:?}; supported: count_over_time, rate, bytes_over_time, bytes_rate, absent_over_time, sum/avg/min/max/stddev/stdvar/quantile/first/last_over_time (with | unwrap), sum, avg, min, max, count, stddev, stdvar, topk, bottomk, vector"
    ))
}

fn range_agg(p: &mut Parser<'_>, op: RangeOp) -> Result<Metric, ParseError> {
    if !p.eat("(") {
        return p.err("expected (");
    }
    let param = if op == RangeOp::QuantileOverTime {
        let Some(q) = number(p) else {
            return p.err("quantile_over_time takes φ first: quantile_over_time(0.99, ...)");
        };
        if !p.eat(",") {
            return p.err("expected ,");
        }
        Some(q)
    } else {
        None
    };
    p.ws();
    let at = p.pos;
    let query = selector::parse_log(p)?;
    match (op.needs_unwrap(), query.unwrap.is_some()) {
        (true, false) => {
            p.pos = at;
            return p.err(format!("invalid aggregation {} without unwrap", op.name()));
        }
        (false, true) if op != RangeOp::Rate => {
            p.pos = at;
            return p.err(format!("invalid aggregation {} with unwrap", op.name()));
        }
        _ => {}
    }
    if !p.eat("[") {
        return p.err("expected a range such as [5m] after the log query");
    }
    let range = duration(p)?;
    if !p.eat("]") {
        return p.err("expected ]");
    }
    let offset = if p.eat_word("offset") {
        duration(p)?
    } else {
        0
    };
    if !p.eat(")") {
        return p.err("expected )");
    }
    Ok(Metric::Range(RangeAgg {
        op,
        query,
        range,
        offset,
        param,
    }))
}

fn grouping(p: &mut Parser<'_>) -> Result<Option<Grouping>, ParseError> {
    let by = if p.eat_word("by") {
        true
    } else if p.eat_word("without") {
        false
    } else {
        return Ok(None);
    };
    if !p.eat("(") {
        return p.err("expected ( after by/without");
    }
    let mut labels = Vec::new();
    if !p.eat(")") {
        loop {
            labels.push(p.ident()?.to_owned());
            if p.eat(")") {
                break;
            }
            if !p.eat(",") {
                return p.err("expected , or )");
            }
        }
    }
    Ok(Some(if by {
        Grouping::By(labels)
    } else {
        Grouping::Without(labels)
    }))
}

fn vector_agg(p: &mut Parser<'_>, op: VectorOp) -> Result<Metric, ParseError> {
    let before = grouping(p)?;
    if !p.eat("(") {
        return p.err("expected (");
    }
    let param = if matches!(op, VectorOp::Topk | VectorOp::Bottomk) {
        let Some(k) = number(p) else {
            return p.err("topk and bottomk take a number first: topk(5, ...)");
        };
        if k < 1.0 || k.fract() != 0.0 {
            return p.err("k must be a positive integer");
        }
        if !p.eat(",") {
            return p.err("expected ,");
        }
        Some(k as usize)
    } else {
        None
    };
    let inner = binary(p, 0)?;
    if !p.eat(")") {
        return p.err("expected )");
    }
    let after = grouping(p)?;
    if before.is_some() && after.is_some() {
        return p.err("by/without given twice");
    }
    Ok(Metric::Aggregate {
        op,
        grouping: before.or(after),
        param,
        inner: Box::new(inner),
    })
}

/// A Prometheus-style duration: `5m`, `1h30m`, `250ms`, `2d`.
fn duration(p: &mut Parser<'_>) -> Result<i64, ParseError> {
    p.ws();
    let rest = &p.s[p.pos..];
    let n = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .unwrap_or(rest.len());
    match parse_duration(&rest[..n]) {
        Some(d) if d > 0 => {
            p.pos += n;
            Ok(d)
        }
        _ => p.err(format!(
            "bad duration {:?}: use a number and a unit (ms, s, m, h, d, w, y), such as 5m",
            &rest[..n]
        )),
    }
}

/// Parses a duration for an HTTP parameter: a LogQL duration, or a number
/// of seconds (`step=15`, `step=0.5`).
pub fn parse_step(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs));
    }
    parse_duration(s)
        .filter(|&ns| ns > 0)
        .map(|ns| Duration::from_nanos(ns as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval;

    fn metric(s: &str) -> Metric {
        match parse(s).unwrap_or_else(|e| panic!("{s}: {e}")) {
            Expr::Metric(m) => m,
            Expr::Log(_) => panic!("{s}: parsed as a log query"),
        }
    }

    #[test]
    fn grafana_queries_parse() {
        // The data source's health check.
        match metric("vector(1)+vector(1)") {
            Metric::Binary { op: BinOp::Add, .. } => {}
            m => panic!("{m:?}"),
        }
        // Explore's log-volume query.
        match metric(
            r#"sum by (level, detected_level) (count_over_time({namespace="a"} | drop __error__[1m]))"#,
        ) {
            Metric::Aggregate {
                op: VectorOp::Sum,
                grouping: Some(Grouping::By(l)),
                inner,
                ..
            } => {
                assert_eq!(l, ["level", "detected_level"]);
                match *inner {
                    Metric::Range(r) => {
                        assert_eq!(r.op, RangeOp::CountOverTime);
                        assert_eq!(r.range, 60_000_000_000);
                        assert!(matches!(
                            r.query.pipeline.stages.as_slice(),
                            [crate::pipeline::Stage::Drop(d)] if d == &[("__error__".to_owned(), None)]
                        ));
                    }
                    m => panic!("{m:?}"),
                }
            }
            m => panic!("{m:?}"),
        }
        match metric(r#"topk(3, sum(rate({pod=~"a.+"} |= "x" [5m] offset 1h)) without (node))"#) {
            Metric::Aggregate {
                op: VectorOp::Topk,
                param: Some(3),
                ..
            } => {}
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn precedence_and_associativity() {
        let eval =
            |s: &str| eval::constant(&metric(s)).unwrap_or_else(|| panic!("{s}: not constant"));
        assert_eq!(eval("1 + 2 * 3"), 7.0);
        assert_eq!(eval("(1 + 2) * 3"), 9.0);
        assert_eq!(eval("2 ^ 3 ^ 2"), 512.0);
        assert_eq!(eval("10 - 4 - 3"), 3.0);
        assert_eq!(eval("-2 ^ 2"), -4.0);
        assert_eq!(eval("1 < bool 2"), 1.0);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("0.5s"), Some(500_000_000));
        assert_eq!(parse_duration("5minutes"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_step("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_step("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_step("0"), None);
    }

    #[test]
    fn bad_metric_queries_say_why() {
        for (q, want) in [
            ("rate({pod=\"a\"})", "expected a range"),
            ("rate({pod=\"a\"}[5minutes])", "bad duration"),
            ("sum(", "expected a label name"),
            ("topk(x, vector(1))", "take a number"),
            ("frobnicate(vector(1))", "unknown function"),
            ("vector(1) +", "expected a label name"),
            ("sum by (a) (vector(1)) by (b)", "twice"),
            ("{pod=\"a\"} | json | x >", "a number, a duration"),
        ] {
            let err = parse(q).unwrap_err().to_string();
            assert!(err.contains(want), "{q:?}: {err}");
        }
    }
}
