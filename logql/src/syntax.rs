//! The tokenizer every LogQL parser here shares: whitespace, words,
//! label names, quoted and raw strings and anchored regexes, with the
//! byte position of the first thing that does not fit.

use regex::Regex;

/// Text that is not LogQL, with the byte position where it stops being so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad query at position {pos}: {msg}")]
pub struct ParseError {
    /// Byte offset in the query.
    pub pos: usize,
    /// What is wrong.
    pub msg: String,
}

/// A LogQL tokenizer over one query string: the log-query, stage and
/// metric parsers take turns on it.
pub struct Parser<'a> {
    /// The whole query.
    pub s: &'a str,
    /// Where parsing stands, in bytes.
    pub pos: usize,
}

impl<'a> Parser<'a> {
    /// A parser at the start of `s`.
    pub fn new(s: &'a str) -> Self {
        Parser { s, pos: 0 }
    }

    /// An error at the current position.
    pub fn err<T>(&self, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            pos: self.pos,
            msg: msg.into(),
        })
    }

    /// Skips whitespace.
    pub fn ws(&mut self) {
        while self.s[self.pos..].starts_with(|c: char| c.is_whitespace()) {
            self.pos += self.s[self.pos..].chars().next().map_or(1, char::len_utf8);
        }
    }

    /// Eats `tok` (after whitespace) when it comes next.
    pub fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.s[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Eats `word` when it stands alone (not the start of a longer name).
    pub fn eat_word(&mut self, word: &str) -> bool {
        self.ws();
        let rest = &self.s[self.pos..];
        if rest.starts_with(word)
            && !rest[word.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    /// A label or function name.
    pub fn ident(&mut self) -> Result<&'a str, ParseError> {
        self.ws();
        let rest = &self.s[self.pos..];
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if n == 0 {
            return self.err("expected a label name");
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    /// A `"quoted"` or `` `raw` `` string, unescaped.
    pub fn string(&mut self) -> Result<String, ParseError> {
        self.ws();
        let rest = &self.s[self.pos..];
        if let Some(raw) = rest.strip_prefix('`') {
            let Some(end) = raw.find('`') else {
                return self.err("unterminated `raw string`");
            };
            self.pos += end + 2;
            return Ok(raw[..end].to_owned());
        }
        if !rest.starts_with('"') {
            return self.err("expected a \"quoted string\"");
        }
        let mut out = String::new();
        let mut chars = rest[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 2;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, c @ ('"' | '\\'))) => out.push(c),
                    // Keep other escapes for the regex engine (`\d`, `\.`).
                    Some((_, c)) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        self.err("unterminated \"string\"")
    }

    /// A regex that must match a whole value.
    pub fn regex(&self, pat: &str) -> Result<Regex, ParseError> {
        Regex::new(&format!("^(?:{pat})$")).map_err(|e| self.bad_regex(pat, &e))
    }

    /// The error for a pattern the regex crate refuses.
    pub fn bad_regex(&self, pat: &str, e: &dyn std::fmt::Display) -> ParseError {
        // The regex crate draws a multi-line caret diagram; its last line
        // says what is wrong, which is what fits an error line.
        let text = e.to_string();
        let why = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        ParseError {
            pos: self.pos,
            msg: format!(
                "invalid regex {pat:?}: {}",
                why.trim().trim_start_matches("error: ")
            ),
        }
    }
}

/// Parses `1h30m`, `5m`, `0.5s`, `250ms` into ns; `None` when malformed.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if n == 0 {
            return None;
        }
        let v: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            "w" => 7.0 * 86400e9,
            "y" => 365.0 * 86400e9,
            _ => return None,
        };
        rest = &rest[u..];
        total += v * unit;
    }
    (total.is_finite() && total < i64::MAX as f64).then_some(total as i64)
}
