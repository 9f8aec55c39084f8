//! Log queries: a stream selector `{label op "value", ...}` with `=`,
//! `!=`, `=~`, `!~` (regexes match whole values), line filters `|= "text"`,
//! `!= "text"`, `|~ "regex"`, `!~ "regex"`, then the stages of
//! [`crate::pipeline`]. What a label's value is belongs to the store;
//! here a label is a name.

use memchr::memmem;
use regex::Regex;

use crate::pipeline;
use crate::syntax::{ParseError, Parser};

/// A label a selector can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// Node name.
    Node,
    /// Namespace.
    Namespace,
    /// Pod name.
    Pod,
    /// Pod UID.
    PodUid,
    /// Container name.
    Container,
    /// Restart number.
    Restart,
    /// `stdout` or `stderr`.
    Stream,
    /// Any other label (`FileLabels.extra`): as in Loki, a line without
    /// it has the empty value.
    Other(String),
}

impl Label {
    /// The label named `name` in queries.
    pub fn from_name(name: &str) -> Label {
        match name {
            "node" => Label::Node,
            "namespace" => Label::Namespace,
            "pod" => Label::Pod,
            "pod_uid" => Label::PodUid,
            "container" => Label::Container,
            "restart" => Label::Restart,
            "stream" => Label::Stream,
            other => Label::Other(other.to_owned()),
        }
    }

    /// The label's name in queries.
    pub fn name(&self) -> &str {
        match self {
            Label::Node => "node",
            Label::Namespace => "namespace",
            Label::Pod => "pod",
            Label::PodUid => "pod_uid",
            Label::Container => "container",
            Label::Restart => "restart",
            Label::Stream => "stream",
            Label::Other(n) => n,
        }
    }
}

/// How a matcher compares.
#[derive(Debug, Clone)]
pub enum Op {
    /// Equal.
    Eq(String),
    /// Not equal.
    Ne(String),
    /// Regex matches the whole value.
    Re(Regex),
    /// Regex does not match the whole value.
    NotRe(Regex),
}

/// One `label op value`.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The label.
    pub label: Label,
    /// The comparison.
    pub op: Op,
}

/// A line filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// `|= "text"`: the line contains text.
    Contains(memmem::Finder<'static>),
    /// `!= "text"`: the line does not contain text.
    NotContains(memmem::Finder<'static>),
    /// `|~ "re"`: the regex matches somewhere in the line.
    Matches(regex::bytes::Regex),
    /// `!~ "re"`: the regex matches nowhere.
    NotMatches(regex::bytes::Regex),
}

/// A parsed query.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Selector matchers, all of which must hold.
    pub matchers: Vec<Matcher>,
    /// Line filters, all of which must hold.
    pub filters: Vec<Filter>,
    /// Pipeline stages after the first line filters (`| json`,
    /// `| level="error"`, `| drop ...`), in order.
    pub pipeline: pipeline::Pipeline,
    /// `| unwrap`: only in range aggregations.
    pub unwrap: Option<pipeline::Unwrap>,
}

/// Parses a log query (selector, line filters, stages) that is the
/// whole of `s`.
pub fn parse_log_query(s: &str) -> Result<Query, ParseError> {
    let mut p = Parser::new(s);
    let q = parse_log(&mut p)?;
    p.ws();
    if p.pos != s.len() {
        return p.err(
            "expected a line filter (|= \"text\", != \"text\", |~ \"regex\", !~ \"regex\") or a stage (| json, | logfmt, | level=\"error\", ...)",
        );
    }
    Ok(q)
}

/// Parses a log query (selector, line filters, label stages) up to the end
/// of the input or to a `[` or `)` that belongs to an enclosing metric
/// query.
pub fn parse_log(p: &mut Parser<'_>) -> Result<Query, ParseError> {
    let s = p.s;
    let mut q = Query::default();
    if !p.eat("{") {
        return p.err("a query starts with a selector such as {namespace=\"default\"}");
    }
    loop {
        if p.eat("}") {
            break;
        }
        let at = p.pos;
        let name = p.ident()?;
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            p.pos = at;
            return p.err(format!("{name:?} is not a label name"));
        }
        let label = Label::from_name(name);
        let op = if p.eat("=~") {
            let pat = p.string()?;
            Op::Re(p.regex(&pat)?)
        } else if p.eat("!~") {
            let pat = p.string()?;
            Op::NotRe(p.regex(&pat)?)
        } else if p.eat("!=") {
            Op::Ne(p.string()?)
        } else if p.eat("=") {
            Op::Eq(p.string()?)
        } else {
            return p.err("expected =, !=, =~ or !~");
        };
        q.matchers.push(Matcher { label, op });
        if p.eat(",") {
            continue;
        }
        if p.eat("}") {
            break;
        }
        return p.err("expected , or }");
    }
    loop {
        p.ws();
        if p.pos == s.len() || s[p.pos..].starts_with(['[', ')']) {
            break;
        }
        let f = if p.eat("|=") {
            Filter::Contains(memmem::Finder::new(p.string()?.as_bytes()).into_owned())
        } else if p.eat("!=") {
            Filter::NotContains(memmem::Finder::new(p.string()?.as_bytes()).into_owned())
        } else if p.eat("|~") {
            Filter::Matches(byte_regex(p)?)
        } else if p.eat("!~") {
            Filter::NotMatches(byte_regex(p)?)
        } else if p.eat("|") {
            if q.unwrap.is_some() {
                return p.err("unwrap is the last stage (label filters may follow it)");
            }
            match pipeline::parse_stage(p)? {
                pipeline::Parsed::Stage(st) => q.pipeline.stages.push(st),
                pipeline::Parsed::Unwrap(u) => q.unwrap = Some(u),
            }
            continue;
        } else {
            return p.err(
                "expected a line filter (|= \"text\", != \"text\", |~ \"regex\", !~ \"regex\") or a stage (| json, | logfmt, | level=\"error\", ...)",
            );
        };
        if q.unwrap.is_some() {
            return p.err("unwrap is the last stage (label filters may follow it)");
        }
        if q.pipeline.is_empty() {
            q.filters.push(f);
        } else {
            // After a parser: in order, on the line as it is then.
            q.pipeline
                .stages
                .push(pipeline::Stage::Line(Box::new(match f {
                    Filter::Contains(x) => pipeline::LineFilter::Contains(x),
                    Filter::NotContains(x) => pipeline::LineFilter::NotContains(x),
                    Filter::Matches(r) => pipeline::LineFilter::Matches(r),
                    Filter::NotMatches(r) => pipeline::LineFilter::NotMatches(r),
                })));
        }
    }
    Ok(q)
}

fn byte_regex(p: &mut Parser<'_>) -> Result<regex::bytes::Regex, ParseError> {
    let pat = p.string()?;
    regex::bytes::Regex::new(&pat).map_err(|e| p.bad_regex(&pat, &e))
}

impl Op {
    /// Whether a value passes.
    pub fn test(&self, v: &str) -> bool {
        match self {
            Op::Eq(x) => v == x,
            Op::Ne(x) => v != x,
            Op::Re(r) => r.is_match(v),
            Op::NotRe(r) => !r.is_match(v),
        }
    }
}

impl Query {
    /// Whether a block whose encoded lines are `raw` may hold a matching
    /// line: every `|=` text must occur in it somewhere (a line's text is
    /// stored whole in the encoding).
    pub fn may_match(&self, raw: &[u8]) -> bool {
        self.filters.iter().all(|f| match f {
            Filter::Contains(x) => x.find(raw).is_some(),
            _ => true,
        })
    }

    /// Whether a line (of a stream that matched) matches the `stream`
    /// matchers (`stream` is `stdout`, `stderr` or empty) and the filters.
    pub fn matches_line(&self, stream: &str, line: &[u8]) -> bool {
        self.matchers
            .iter()
            .filter(|m| m.label == Label::Stream)
            .all(|m| m.op.test(stream))
            && self.filters.iter().all(|f| match f {
                Filter::Contains(x) => x.find(line).is_some(),
                Filter::NotContains(x) => x.find(line).is_none(),
                Filter::Matches(r) => r.is_match(line),
                Filter::NotMatches(r) => !r.is_match(line),
            })
    }

    /// Loki's rule for a selector: at least one matcher that cannot match
    /// an empty value, so that no query selects every stream by accident.
    pub fn selects_something(&self) -> bool {
        self.matchers.iter().any(|m| !m.op.test(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_queries_say_where_and_why() {
        for (q, want) in [
            ("", "starts with a selector"),
            ("namespace=\"x\"", "starts with a selector"),
            ("{namespace=\"x\"", "expected , or }"),
            ("{9x=\"x\"}", "is not a label name"),
            ("{pod=x}", "quoted string"),
            ("{pod==\"x\"}", "quoted string"),
            ("{pod=\"x}", "unterminated"),
            ("{pod=~\"(\"}", "invalid regex"),
            ("{} |= ", "quoted string"),
            ("{} |~ \"[\"", "invalid regex"),
            ("{} | frobnicate", "label filter"),
        ] {
            let err = parse_log_query(q).unwrap_err().to_string();
            assert!(err.contains(want), "{q:?}: {err}");
        }
    }

    #[test]
    fn selects_something_as_loki_requires() {
        assert!(!parse_log_query("{}").unwrap().selects_something());
        assert!(!parse_log_query(r#"{app=~".*"}"#)
            .unwrap()
            .selects_something());
        assert!(parse_log_query(r#"{app=~".+"}"#)
            .unwrap()
            .selects_something());
        let q = parse_log_query(r#"{stream="stderr"} |= "x""#).unwrap();
        assert!(q.matches_line("stderr", b"x") && !q.matches_line("stdout", b"x"));
    }
}
