//! LogQL's pipeline stages after the stream selector: parsers that turn
//! parts of a line into labels (`| json`, `| logfmt`, `| regexp`,
//! `| pattern`), label filters (`| level="error"`, `| status >= 500`,
//! `| duration > 1s`, `| size > 20KB`, with `and`, `or` and `,`), line
//! filters placed after them, `| line_format`, `| label_format`, `| drop`,
//! `| keep` and `| decolorize`. Pure: [`Pipeline::process`] takes a line
//! and its stream's labels and gives the labels and line to report, or
//! nothing when a filter drops it.
//!
//! Semantics follow Loki's documentation: extracted names are sanitised to
//! `[a-zA-Z_][a-zA-Z0-9_]*`, nested JSON keys are joined with `_`, a name
//! that a stream label already has gets `_extracted`, and a parser or
//! filter that cannot read a line keeps it with an `__error__` label
//! (`JSONParserErr`, `LogfmtParserErr`, `LabelFilterErr`) that
//! `| __error__=""` or `| drop __error__` removes.

use std::collections::BTreeMap;

use memchr::memmem;
use regex::Regex;

/// Label name/value pairs.
pub type Labels = BTreeMap<String, String>;

/// The label that says why a stage could not process a line.
pub const ERROR_LABEL: &str = "__error__";

/// A comparison in a label filter.
#[derive(Debug, Clone)]
pub enum Cmp {
    /// `name = "v"`
    Eq(String),
    /// `name != "v"`
    Ne(String),
    /// `name =~ "re"` (whole value)
    Re(Regex),
    /// `name !~ "re"`
    NotRe(Regex),
    /// A number, duration (seconds) or size (bytes) compared with `op`.
    Num(NumOp, f64, Unit),
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumOp {
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

/// How a label value is read as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain number.
    Number,
    /// A duration such as `250ms`, in seconds.
    Duration,
    /// A size such as `20KB` or `1.5MiB`, in bytes.
    Bytes,
}

/// A label filter expression.
#[derive(Debug, Clone)]
pub enum LabelFilter {
    /// One comparison.
    Cmp {
        /// The label.
        name: String,
        /// The comparison.
        cmp: Cmp,
    },
    /// Both hold.
    And(Box<LabelFilter>, Box<LabelFilter>),
    /// Either holds.
    Or(Box<LabelFilter>, Box<LabelFilter>),
}

/// A piece of a `line_format`/`label_format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// `{{ .name }}`: a label's value (empty when absent).
    Label(String),
    /// `{{ __line__ }}`: the line.
    Line,
}

/// A `<capture>` or literal of a `| pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    /// Text that must follow.
    Literal(String),
    /// A named capture (`<_>` is unnamed: matched, not kept).
    Capture(Option<String>),
}

/// One stage.
#[derive(Debug, Clone)]
pub enum Stage {
    /// `| json` (every field) or `| json a="x.y", b` (these).
    Json(Vec<(String, Vec<PathPart>)>),
    /// `| logfmt`.
    Logfmt,
    /// `| regexp "(?P<name>...)"`.
    Regexp(Regex),
    /// `| pattern "<a> - <b>"`.
    Pattern(Vec<PatternPart>),
    /// A label filter.
    Filter(LabelFilter),
    /// A line filter after a parser.
    Line(Box<LineFilter>),
    /// `| line_format "..."`.
    LineFormat(Vec<Piece>),
    /// `| label_format a=b, c="{{.d}}"`.
    LabelFormat(Vec<(String, Vec<Piece>)>),
    /// `| drop a, b="v"`: without these labels (with that value).
    Drop(Vec<(String, Option<String>)>),
    /// `| keep a, b`.
    Keep(Vec<String>),
    /// `| decolorize`: ANSI colour codes removed from the line.
    Decolorize,
}

/// A step of a `| json` path: `a.b[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A line filter (`|=`, `!=`, `|~`, `!~`).
#[derive(Debug, Clone)]
pub enum LineFilter {
    /// Contains.
    Contains(memmem::Finder<'static>),
    /// Does not contain.
    NotContains(memmem::Finder<'static>),
    /// Regex matches.
    Matches(regex::bytes::Regex),
    /// Regex does not match.
    NotMatches(regex::bytes::Regex),
}

impl LineFilter {
    /// Whether the line passes.
    pub fn test(&self, line: &[u8]) -> bool {
        match self {
            LineFilter::Contains(x) => x.find(line).is_some(),
            LineFilter::NotContains(x) => x.find(line).is_none(),
            LineFilter::Matches(r) => r.is_match(line),
            LineFilter::NotMatches(r) => !r.is_match(line),
        }
    }
}

/// The stages of a query, in order.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    /// Stages.
    pub stages: Vec<Stage>,
}

/// Replaces what may not be in a label name by `_`.
pub use crate::labels::sanitize;

/// Adds an extracted label: a name the stream already has gets
/// `_extracted`.
fn extract(labels: &mut Labels, stream: &Labels, name: &str, value: String) {
    let mut name = sanitize(name);
    if name.is_empty() {
        return;
    }
    if stream.contains_key(&name) {
        name.push_str("_extracted");
    }
    labels.insert(name, value);
}

fn json_flatten(labels: &mut Labels, stream: &Labels, prefix: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}_{k}")
                };
                json_flatten(labels, stream, &name, v);
            }
        }
        // Loki skips arrays when extracting every field.
        serde_json::Value::Array(_) => {}
        serde_json::Value::String(s) => extract(labels, stream, prefix, s.clone()),
        serde_json::Value::Null => extract(labels, stream, prefix, String::new()),
        other => extract(labels, stream, prefix, other.to_string()),
    }
}

fn json_path<'a>(mut v: &'a serde_json::Value, path: &[PathPart]) -> Option<&'a serde_json::Value> {
    for p in path {
        v = match p {
            PathPart::Key(k) => v.get(k)?,
            PathPart::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

/// Parses logfmt: `k=v k2="quoted \" v" flag`.
fn logfmt(line: &str) -> Result<Vec<(String, String)>, ()> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b' ' {
            if b[i] == b'"' {
                return Err(());
            }
            i += 1;
        }
        let key = &line[start..i];
        if i >= b.len() || b[i] == b' ' {
            out.push((key.to_owned(), String::new()));
            continue;
        }
        i += 1; // '='
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = String::new();
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        let c = b[i + 1];
                        v.push(match c {
                            b'n' => '\n',
                            b't' => '\t',
                            other => other as char,
                        });
                        i += 2;
                    }
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    _ => {
                        let ch = line[i..].chars().next().ok_or(())?;
                        v.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            if !closed {
                return Err(());
            }
            out.push((key.to_owned(), v));
        } else {
            let s = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            out.push((key.to_owned(), line[s..i].to_owned()));
        }
        if key.is_empty() {
            return Err(());
        }
    }
    Ok(out)
}

fn pattern_match(parts: &[PatternPart], line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = line;
    let mut i = 0;
    while i < parts.len() {
        match &parts[i] {
            PatternPart::Literal(l) => {
                rest = rest.strip_prefix(l.as_str())?;
            }
            PatternPart::Capture(name) => {
                // Up to the next literal, or the rest of the line.
                let (value, after) = match parts.get(i + 1) {
                    Some(PatternPart::Literal(l)) => {
                        let at = rest.find(l.as_str())?;
                        (&rest[..at], &rest[at..])
                    }
                    _ => (rest, ""),
                };
                if let Some(n) = name {
                    out.push((n.clone(), value.to_owned()));
                }
                rest = after;
            }
        }
        i += 1;
    }
    Some(out)
}

/// Reads a duration label value (`1.5s`, `250ms`, `1h2m`) as seconds.
pub fn parse_duration_secs(s: &str) -> Option<f64> {
    crate::syntax::parse_duration(s.trim()).map(|ns| ns as f64 / 1e9)
}

/// Reads a size (`20KB`, `1.5MiB`, `512`, `3 kB`) as bytes.
pub fn parse_bytes(s: &str) -> Option<f64> {
    let s = s.trim();
    let n = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let v: f64 = s[..n].parse().ok()?;
    let unit = s[n..].trim().to_ascii_lowercase();
    let m = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" | "ki" => 1024.0,
        "mib" | "mi" => 1024.0 * 1024.0,
        "gib" | "gi" => 1024.0 * 1024.0 * 1024.0,
        "tib" | "ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(v * m)
}

/// Reads a label value in `unit`.
pub fn convert(v: &str, unit: Unit) -> Option<f64> {
    match unit {
        Unit::Number => v.trim().parse::<f64>().ok(),
        Unit::Duration => parse_duration_secs(v),
        Unit::Bytes => parse_bytes(v),
    }
}

impl LabelFilter {
    /// Whether the labels pass; `Err` when a value cannot be compared.
    fn test(&self, labels: &Labels) -> Result<bool, String> {
        match self {
            LabelFilter::And(a, b) => Ok(a.test(labels)? && b.test(labels)?),
            LabelFilter::Or(a, b) => Ok(a.test(labels)? || b.test(labels)?),
            LabelFilter::Cmp { name, cmp } => {
                let v = labels.get(name).map(String::as_str).unwrap_or("");
                Ok(match cmp {
                    Cmp::Eq(x) => v == x,
                    Cmp::Ne(x) => v != x,
                    Cmp::Re(r) => r.is_match(v),
                    Cmp::NotRe(r) => !r.is_match(v),
                    Cmp::Num(op, x, unit) => {
                        let Some(n) = convert(v, *unit) else {
                            return Err(format!("cannot read {name}={v:?} as a {unit:?}"));
                        };
                        match op {
                            NumOp::Eq => n == *x,
                            NumOp::Ne => n != *x,
                            NumOp::Gt => n > *x,
                            NumOp::Ge => n >= *x,
                            NumOp::Lt => n < *x,
                            NumOp::Le => n <= *x,
                        }
                    }
                })
            }
        }
    }
}

fn render(pieces: &[Piece], labels: &Labels, line: &str) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Label(n) => out.push_str(labels.get(n).map(String::as_str).unwrap_or("")),
            Piece::Line => out.push_str(line),
        }
    }
    out
}

/// Removes ANSI escape sequences (colours, cursor moves).
pub fn decolorize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What a line becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// Its labels: the stream's and the extracted ones, after the stages.
    pub labels: Labels,
    /// Its text (changed by `line_format` or `decolorize`).
    pub line: String,
}

impl Pipeline {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Whether the result depends on the stream's labels only (no parser,
    /// no line filter or format): then it can run once per stream instead
    /// of once per line, as for Grafana's `| drop __error__`.
    /// (Numeric label filters are left out: they can fail per value, and a
    /// failure must reach the query as Loki's pipeline error.)
    pub fn is_label_only(&self) -> bool {
        fn strings_only(f: &LabelFilter) -> bool {
            match f {
                LabelFilter::Cmp { cmp, .. } => !matches!(cmp, Cmp::Num(..)),
                LabelFilter::And(a, b) | LabelFilter::Or(a, b) => {
                    strings_only(a) && strings_only(b)
                }
            }
        }
        self.stages.iter().all(|s| match s {
            Stage::Drop(_) | Stage::Keep(_) => true,
            Stage::Filter(f) => strings_only(f),
            Stage::LabelFormat(rules) => rules.iter().all(|(_, t)| !t.contains(&Piece::Line)),
            _ => false,
        })
    }

    /// Runs the stages over a line of a stream with labels `stream`.
    /// `None`: a filter dropped it.
    pub fn process(&self, stream: &Labels, line: &[u8]) -> Option<Processed> {
        let mut labels = stream.clone();
        let mut line = String::from_utf8_lossy(line).into_owned();
        for st in &self.stages {
            match st {
                Stage::Json(fields) => match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) if v.is_object() => {
                        if fields.is_empty() {
                            json_flatten(&mut labels, stream, "", &v);
                        } else {
                            for (name, path) in fields {
                                let value = match json_path(&v, path) {
                                    Some(serde_json::Value::String(s)) => s.clone(),
                                    Some(serde_json::Value::Null) | None => String::new(),
                                    Some(other) => other.to_string(),
                                };
                                extract(&mut labels, stream, name, value);
                            }
                        }
                    }
                    _ => {
                        labels.insert(ERROR_LABEL.into(), "JSONParserErr".into());
                    }
                },
                Stage::Logfmt => match logfmt(&line) {
                    Ok(pairs) => {
                        for (k, v) in pairs {
                            extract(&mut labels, stream, &k, v);
                        }
                    }
                    Err(()) => {
                        labels.insert(ERROR_LABEL.into(), "LogfmtParserErr".into());
                    }
                },
                Stage::Regexp(re) => {
                    if let Some(caps) = re.captures(&line) {
                        for name in re.capture_names().flatten() {
                            let v = caps.name(name).map_or("", |m| m.as_str()).to_owned();
                            extract(&mut labels, stream, name, v);
                        }
                    }
                }
                Stage::Pattern(parts) => {
                    if let Some(pairs) = pattern_match(parts, &line) {
                        for (k, v) in pairs {
                            extract(&mut labels, stream, &k, v);
                        }
                    }
                }
                Stage::Filter(f) => match f.test(&labels) {
                    Ok(true) => {}
                    Ok(false) => return None,
                    // Kept, and said, as Loki does.
                    Err(_) => {
                        labels.insert(ERROR_LABEL.into(), "LabelFilterErr".into());
                    }
                },
                Stage::Line(f) => {
                    if !f.test(line.as_bytes()) {
                        return None;
                    }
                }
                Stage::LineFormat(t) => line = render(t, &labels, &line),
                Stage::LabelFormat(rules) => {
                    let before = labels.clone();
                    for (dst, t) in rules {
                        // `dst=src` renames: the source goes.
                        if let [Piece::Label(src)] = t.as_slice() {
                            if let Some(v) = before.get(src) {
                                labels.remove(src);
                                labels.insert(dst.clone(), v.clone());
                            }
                            continue;
                        }
                        labels.insert(dst.clone(), render(t, &before, &line));
                    }
                }
                Stage::Drop(names) => {
                    for (n, v) in names {
                        if v.as_ref().is_none_or(|v| labels.get(n) == Some(v)) {
                            labels.remove(n);
                        }
                    }
                }
                Stage::Keep(names) => labels.retain(|k, _| names.contains(k)),
                Stage::Decolorize => line = decolorize(&line),
            }
        }
        Some(Processed { labels, line })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Labels {
        [("pod", "web"), ("namespace", "shop")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    fn run(stages: Vec<Stage>, line: &str) -> Option<Processed> {
        Pipeline { stages }.process(&stream(), line.as_bytes())
    }

    fn num(name: &str, op: NumOp, v: f64, unit: Unit) -> Stage {
        Stage::Filter(LabelFilter::Cmp {
            name: name.into(),
            cmp: Cmp::Num(op, v, unit),
        })
    }

    #[test]
    fn json_flattens_sanitises_and_renames_clashes() {
        let p = run(
            vec![Stage::Json(vec![])],
            r#"{"level":"error","http":{"status":503,"path":"/x"},"tags":["a"],"pod":"other","a-b":true,"n":null}"#,
        )
        .unwrap();
        let l = &p.labels;
        assert_eq!(l["level"], "error");
        assert_eq!(l["http_status"], "503");
        assert_eq!(l["http_path"], "/x");
        assert_eq!(l["pod"], "web", "the stream's label stays");
        assert_eq!(l["pod_extracted"], "other");
        assert_eq!(l["a_b"], "true");
        assert_eq!(l["n"], "");
        assert!(!l.contains_key("tags"), "arrays are skipped");
        let bad = run(vec![Stage::Json(vec![])], "not json").unwrap();
        assert_eq!(bad.labels[ERROR_LABEL], "JSONParserErr");
        let picked = run(
            vec![Stage::Json(vec![
                (
                    "code".into(),
                    vec![PathPart::Key("http".into()), PathPart::Key("status".into())],
                ),
                (
                    "first".into(),
                    vec![PathPart::Key("tags".into()), PathPart::Index(0)],
                ),
            ])],
            r#"{"http":{"status":503},"tags":["a","b"]}"#,
        )
        .unwrap();
        assert_eq!(picked.labels["code"], "503");
        assert_eq!(picked.labels["first"], "a");
        assert!(!picked.labels.contains_key("http_status"));
    }

    #[test]
    fn logfmt_and_pattern_and_regexp() {
        let p = run(
            vec![Stage::Logfmt],
            r#"level=warn msg="slow \"db\" call" duration=1.5s flag"#,
        )
        .unwrap();
        assert_eq!(p.labels["level"], "warn");
        assert_eq!(p.labels["msg"], "slow \"db\" call");
        assert_eq!(p.labels["duration"], "1.5s");
        assert_eq!(p.labels["flag"], "");
        assert_eq!(
            run(vec![Stage::Logfmt], r#"msg="unterminated"#)
                .unwrap()
                .labels[ERROR_LABEL],
            "LogfmtParserErr"
        );
        let parts = vec![
            PatternPart::Capture(Some("ip".into())),
            PatternPart::Literal(" - - [".into()),
            PatternPart::Capture(None),
            PatternPart::Literal("] \"".into()),
            PatternPart::Capture(Some("method".into())),
            PatternPart::Literal(" ".into()),
            PatternPart::Capture(Some("path".into())),
            PatternPart::Literal(" ".into()),
            PatternPart::Capture(None),
            PatternPart::Literal("\" ".into()),
            PatternPart::Capture(Some("status".into())),
        ];
        let p = run(
            vec![Stage::Pattern(parts)],
            r#"10.0.0.1 - - [03/Dec/2026:07:00:00 +0000] "GET /api/x HTTP/1.1" 503"#,
        )
        .unwrap();
        assert_eq!(p.labels["ip"], "10.0.0.1");
        assert_eq!(p.labels["method"], "GET");
        assert_eq!(p.labels["path"], "/api/x");
        assert_eq!(p.labels["status"], "503");
        let re = Regex::new(r"took (?P<ms>\d+)ms").unwrap();
        assert_eq!(
            run(vec![Stage::Regexp(re)], "call took 250ms")
                .unwrap()
                .labels["ms"],
            "250"
        );
    }

    #[test]
    fn label_filters_compare_numbers_durations_and_sizes() {
        let json = Stage::Json(vec![]);
        let line = r#"{"status":"503","took":"1.5s","size":"20KB","level":"error"}"#;
        let keep = |f: Stage| run(vec![json.clone(), f], line).is_some();
        assert!(keep(num("status", NumOp::Ge, 500.0, Unit::Number)));
        assert!(!keep(num("status", NumOp::Lt, 500.0, Unit::Number)));
        assert!(keep(num("took", NumOp::Gt, 1.0, Unit::Duration)));
        assert!(!keep(num("took", NumOp::Gt, 2.0, Unit::Duration)));
        assert!(keep(num("size", NumOp::Ge, 20_000.0, Unit::Bytes)));
        let or = Stage::Filter(LabelFilter::Or(
            Box::new(LabelFilter::Cmp {
                name: "level".into(),
                cmp: Cmp::Eq("warn".into()),
            }),
            Box::new(LabelFilter::Cmp {
                name: "status".into(),
                cmp: Cmp::Eq("503".into()),
            }),
        ));
        assert!(keep(or));
        // A value that is not a number: kept, with the error said.
        let p = run(
            vec![json.clone(), num("level", NumOp::Gt, 1.0, Unit::Number)],
            line,
        )
        .unwrap();
        assert_eq!(p.labels[ERROR_LABEL], "LabelFilterErr");
        // ... which `__error__=""` then removes.
        let none = run(
            vec![
                json,
                num("level", NumOp::Gt, 1.0, Unit::Number),
                Stage::Filter(LabelFilter::Cmp {
                    name: ERROR_LABEL.into(),
                    cmp: Cmp::Eq(String::new()),
                }),
            ],
            line,
        );
        assert!(none.is_none());
    }

    #[test]
    fn formats_drop_keep_and_decolorize() {
        let p = run(
            vec![
                Stage::Logfmt,
                Stage::LineFormat(vec![
                    Piece::Label("level".into()),
                    Piece::Text(": ".into()),
                    Piece::Label("msg".into()),
                    Piece::Text(" (".into()),
                    Piece::Line,
                    Piece::Text(")".into()),
                ]),
                Stage::LabelFormat(vec![
                    ("severity".into(), vec![Piece::Label("level".into())]),
                    (
                        "where".into(),
                        vec![
                            Piece::Label("namespace".into()),
                            Piece::Text("/".into()),
                            Piece::Label("pod".into()),
                        ],
                    ),
                ]),
                Stage::Drop(vec![
                    ("msg".into(), None),
                    ("namespace".into(), Some("other".into())),
                ]),
            ],
            "level=info msg=hi",
        )
        .unwrap();
        assert_eq!(p.line, "info: hi (level=info msg=hi)");
        assert_eq!(p.labels["severity"], "info");
        assert!(!p.labels.contains_key("level"), "renamed");
        assert_eq!(p.labels["where"], "shop/web");
        assert!(!p.labels.contains_key("msg"));
        assert_eq!(
            p.labels["namespace"], "shop",
            "dropped only with that value"
        );
        let k = run(vec![Stage::Keep(vec!["pod".into()])], "x").unwrap();
        assert_eq!(k.labels.len(), 1);
        assert_eq!(
            run(vec![Stage::Decolorize], "\u{1b}[31mred\u{1b}[0m plain")
                .unwrap()
                .line,
            "red plain"
        );
    }

    #[test]
    fn label_only_pipelines_are_recognised() {
        let only = |stages: Vec<Stage>| Pipeline { stages }.is_label_only();
        assert!(only(vec![]));
        assert!(only(vec![Stage::Drop(vec![(ERROR_LABEL.into(), None)])]));
        assert!(only(vec![Stage::Filter(LabelFilter::Cmp {
            name: "pod".into(),
            cmp: Cmp::Eq("a".into()),
        })]));
        assert!(!only(vec![num("restart", NumOp::Gt, 1.0, Unit::Number)]));
        assert!(!only(vec![Stage::Logfmt]));
        assert!(!only(vec![Stage::LabelFormat(vec![(
            "x".into(),
            vec![Piece::Line]
        )])]));
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_bytes("1.5MiB"), Some(1.5 * 1024.0 * 1024.0));
        assert_eq!(parse_bytes("20KB"), Some(20_000.0));
        assert_eq!(parse_bytes("12"), Some(12.0));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(sanitize("http.status-code"), "http_status_code");
        assert_eq!(sanitize("1x"), "_1x");
    }
}

/// `| unwrap [duration|duration_seconds|bytes](label)` in a range
/// aggregation: the number a line contributes.
#[derive(Debug, Clone)]
pub struct Unwrap {
    /// The label read.
    pub label: String,
    /// How it is read.
    pub unit: Unit,
    /// Label filters after it (`| __error__=""`).
    pub post: Vec<LabelFilter>,
}

impl Unwrap {
    /// The sample of a line with `labels`: the value, or the error label
    /// the line gets when the value cannot be read.
    pub fn sample(&self, labels: &Labels) -> Result<f64, &'static str> {
        labels
            .get(&self.label)
            .and_then(|v| convert(v, self.unit))
            .ok_or("SampleExtractionErr")
    }

    /// Whether the post-filters keep a line with these labels.
    pub fn keeps(&self, labels: &Labels) -> bool {
        self.post.iter().all(|f| f.test(labels).unwrap_or(true))
    }
}

/// What follows a `|` in a log query.
pub enum Parsed {
    /// A stage.
    Stage(Stage),
    /// `unwrap`: only in range aggregations.
    Unwrap(Unwrap),
}

use crate::syntax::{ParseError, Parser};

/// Parses what follows `|` (the `|` eaten): a named stage or a label
/// filter expression.
pub fn parse_stage(p: &mut Parser<'_>) -> Result<Parsed, ParseError> {
    let at = p.pos;
    let word = p.ident()?;
    let stage = match word {
        "json" => Stage::Json(json_params(p)?),
        "logfmt" => {
            // Loki's flags change nothing here: values are kept as written.
            while p.eat("--strict") || p.eat("--keep-empty") {}
            Stage::Logfmt
        }
        "regexp" => {
            let pat = p.string()?;
            let re = Regex::new(&pat).map_err(|e| p.bad_regex(&pat, &e))?;
            if re.capture_names().flatten().next().is_none() {
                return p.err("regexp needs at least one named group, such as (?P<name>...)");
            }
            Stage::Regexp(re)
        }
        "pattern" => Stage::Pattern(pattern(p)?),
        "line_format" => Stage::LineFormat(template(p)?),
        "label_format" => {
            let mut rules = Vec::new();
            loop {
                let dst = sanitize(p.ident()?);
                if !p.eat("=") {
                    return p.err("expected = in label_format");
                }
                p.ws();
                let t = if p.s[p.pos..].starts_with(['"', '`']) {
                    template(p)?
                } else {
                    vec![Piece::Label(p.ident()?.to_owned())]
                };
                rules.push((dst, t));
                if !p.eat(",") {
                    break;
                }
            }
            Stage::LabelFormat(rules)
        }
        "drop" => {
            let mut names = Vec::new();
            loop {
                let n = p.ident()?.to_owned();
                let v = if p.eat("=") { Some(p.string()?) } else { None };
                names.push((n, v));
                if !p.eat(",") {
                    break;
                }
            }
            Stage::Drop(names)
        }
        "keep" => {
            let mut names = vec![p.ident()?.to_owned()];
            while p.eat(",") {
                names.push(p.ident()?.to_owned());
            }
            Stage::Keep(names)
        }
        "decolorize" => Stage::Decolorize,
        "unwrap" => {
            let first = p.ident()?;
            let (unit, label) = match first {
                "duration" | "duration_seconds" | "bytes" if p.eat("(") => {
                    let l = p.ident()?.to_owned();
                    if !p.eat(")") {
                        return p.err("expected )");
                    }
                    let unit = if first == "bytes" {
                        Unit::Bytes
                    } else {
                        Unit::Duration
                    };
                    (unit, l)
                }
                l => (Unit::Number, l.to_owned()),
            };
            let mut post = Vec::new();
            loop {
                p.ws();
                if !p.s[p.pos..].starts_with('|') {
                    break;
                }
                p.pos += 1;
                post.push(filter_or(p)?);
            }
            return Ok(Parsed::Unwrap(Unwrap { label, unit, post }));
        }
        _ => {
            p.pos = at;
            return Ok(Parsed::Stage(Stage::Filter(filter_or(p)?)));
        }
    };
    Ok(Parsed::Stage(stage))
}

/// `| json a="x.y[0]", b` parameters (none: every field).
fn json_params(p: &mut Parser<'_>) -> Result<Vec<(String, Vec<PathPart>)>, ParseError> {
    let mut out = Vec::new();
    loop {
        p.ws();
        let rest = &p.s[p.pos..];
        if !rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            break;
        }
        // A following keyword ends the list (`| json | ...` never reaches
        // here; `json a, b` does).
        let at = p.pos;
        let name = p.ident()?.to_owned();
        let path = if p.eat("=") {
            let expr = p.string()?;
            json_path_parse(&expr).ok_or_else(|| ParseError {
                pos: at,
                msg: format!("bad JSON path {expr:?}: use a.b[0] or [\"a\"]"),
            })?
        } else {
            vec![PathPart::Key(name.clone())]
        };
        out.push((name, path));
        if !p.eat(",") {
            break;
        }
    }
    Ok(out)
}

/// Parses `a.b[0]["c d"]`.
pub fn json_path_parse(s: &str) -> Option<Vec<PathPart>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            if let Some(q) = inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                out.push(PathPart::Key(q.to_owned()));
            } else {
                out.push(PathPart::Index(inner.parse().ok()?));
            }
            rest = &r[end + 1..];
        } else {
            let rest2 = rest.strip_prefix('.').unwrap_or(rest);
            let end = rest2.find(['.', '[']).unwrap_or(rest2.len());
            if end == 0 {
                return None;
            }
            out.push(PathPart::Key(rest2[..end].to_owned()));
            rest = &rest2[end..];
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `"<ip> - <_> [<ts>]"`.
fn pattern(p: &mut Parser<'_>) -> Result<Vec<PatternPart>, ParseError> {
    let s = p.string()?;
    let mut parts = Vec::new();
    let mut rest = s.as_str();
    while !rest.is_empty() {
        match rest.find('<') {
            Some(i) if rest[i..].find('>').is_some() => {
                let close = i + rest[i..].find('>').unwrap_or(0);
                let name = &rest[i + 1..close];
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    parts.push(PatternPart::Literal(rest[..=close].to_owned()));
                    rest = &rest[close + 1..];
                    continue;
                }
                if i > 0 {
                    parts.push(PatternPart::Literal(rest[..i].to_owned()));
                }
                if matches!(parts.last(), Some(PatternPart::Capture(_))) {
                    return p.err("a pattern needs text between two captures");
                }
                parts.push(PatternPart::Capture((name != "_").then(|| name.to_owned())));
                rest = &rest[close + 1..];
            }
            _ => {
                parts.push(PatternPart::Literal(rest.to_owned()));
                rest = "";
            }
        }
    }
    if !parts
        .iter()
        .any(|x| matches!(x, PatternPart::Capture(Some(_))))
    {
        return p.err("a pattern needs at least one named capture such as <name>");
    }
    // Adjacent literals (from invalid <...>) join up.
    let mut merged: Vec<PatternPart> = Vec::new();
    for part in parts {
        if let (Some(PatternPart::Literal(a)), PatternPart::Literal(b)) = (merged.last_mut(), &part)
        {
            a.push_str(b);
            continue;
        }
        merged.push(part);
    }
    Ok(merged)
}

/// A `line_format`/`label_format` template: text with `{{ .label }}` and
/// `{{ __line__ }}`. Template functions are not supported.
fn template(p: &mut Parser<'_>) -> Result<Vec<Piece>, ParseError> {
    let at = p.pos;
    let s = p.string()?;
    let mut out = Vec::new();
    let mut rest = s.as_str();
    while let Some(i) = rest.find("{{") {
        if i > 0 {
            out.push(Piece::Text(rest[..i].to_owned()));
        }
        let Some(end) = rest[i..].find("}}") else {
            return Err(ParseError {
                pos: at,
                msg: "unclosed {{ in template".into(),
            });
        };
        let inner = rest[i + 2..i + end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        if inner == "__line__" {
            out.push(Piece::Line);
        } else if let Some(name) = inner.strip_prefix('.') {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ParseError {
                    pos: at,
                    msg: format!("unsupported template {{{{{inner}}}}}: use {{{{.label}}}} or {{{{__line__}}}}"),
                });
            }
            out.push(Piece::Label(name.to_owned()));
        } else {
            return Err(ParseError {
                pos: at,
                msg: format!(
                    "unsupported template {{{{{inner}}}}}: use {{{{.label}}}} or {{{{__line__}}}}"
                ),
            });
        }
        rest = &rest[i + end + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_owned()));
    }
    Ok(out)
}

fn filter_or(p: &mut Parser<'_>) -> Result<LabelFilter, ParseError> {
    let mut lhs = filter_and(p)?;
    while p.eat_word("or") {
        let rhs = filter_and(p)?;
        lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
    }
    Ok(lhs)
}

fn filter_and(p: &mut Parser<'_>) -> Result<LabelFilter, ParseError> {
    let mut lhs = filter_atom(p)?;
    while p.eat_word("and") || p.eat(",") {
        let rhs = filter_atom(p)?;
        lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
    }
    Ok(lhs)
}

fn filter_atom(p: &mut Parser<'_>) -> Result<LabelFilter, ParseError> {
    if p.eat("(") {
        let f = filter_or(p)?;
        if !p.eat(")") {
            return p.err("expected )");
        }
        return Ok(f);
    }
    let name = p.ident()?.to_owned();
    let op = ["=~", "!~", "==", "!=", ">=", "<=", ">", "<", "="]
        .into_iter()
        .find(|op| p.eat(op))
        .ok_or(())
        .or_else(|()| p.err("expected a label filter such as level=\"error\" or status >= 500"))?;
    p.ws();
    let quoted = p.s[p.pos..].starts_with(['"', '`']);
    let cmp =
        if quoted {
            let v = p.string()?;
            match op {
                "=" | "==" => Cmp::Eq(v),
                "!=" => Cmp::Ne(v),
                "=~" => Cmp::Re(p.regex(&v)?),
                "!~" => Cmp::NotRe(p.regex(&v)?),
                _ => return p.err(
                    "compare with >, >=, < or <= against a number, duration or size, not a string",
                ),
            }
        } else {
            let rest = &p.s[p.pos..];
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                .unwrap_or(rest.len());
            let lit = &rest[..n];
            let (v, unit) = if let Ok(v) = lit.parse::<f64>() {
                (v, Unit::Number)
            } else if let Some(d) = parse_duration_secs(lit) {
                (d, Unit::Duration)
            } else if let Some(b) = parse_bytes(lit) {
                (b, Unit::Bytes)
            } else {
                return p.err(format!(
                "expected a \"string\", a number, a duration (1s) or a size (20KB), found {lit:?}"
            ));
            };
            p.pos += n;
            let op = match op {
                "=" | "==" => NumOp::Eq,
                "!=" => NumOp::Ne,
                ">" => NumOp::Gt,
                ">=" => NumOp::Ge,
                "<" => NumOp::Lt,
                "<=" => NumOp::Le,
                _ => return p.err("=~ and !~ take a \"regex\""),
            };
            Cmp::Num(op, v, unit)
        };
    Ok(LabelFilter::Cmp { name, cmp })
}
