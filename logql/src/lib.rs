//! LogQL, the language alone: the tokenizer ([`syntax`]), log queries
//! ([`selector`]: stream selectors and line filters), the log pipeline
//! ([`pipeline`]: parsers, label filters, formatters), metric queries
//! ([`metric`]) and their evaluation over samples ([`eval`]).
//!
//! Pure: no files, sockets, async runtime or store types. A store selects
//! streams with [`Query`]'s matchers (a [`Label`] is a name; what value a
//! stream has for it is the store's business), filters lines with
//! [`Query::matches_line`], runs [`pipeline::Pipeline::process`] and feeds
//! [`eval::RangeAcc`] with what it read.

pub mod eval;
pub mod labels;
pub mod metric;
pub mod pipeline;
pub mod selector;
pub mod syntax;

pub use metric::{
    parse, parse_duration, parse_step, BinOp, Expr, Grouping, Metric, RangeAgg, RangeOp, VectorOp,
};
pub use selector::{parse_log_query, Filter, Label, Matcher, Op, Query};
pub use syntax::ParseError;
