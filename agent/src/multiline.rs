//! Multi-line records: the lines of a stack trace joined into one record.
//!
//! A [`Detector`] says, line by line, whether a line continues the record
//! before it or starts a new one; a [`Grouper`] holds the open record of
//! each stream (stdout and stderr are grouped apart) and emits it when the
//! next record starts, when its last line is older than the timeout, or in
//! pieces when it reaches the size cap.
//!
//! Exactly-once depends on grouping the same bytes the same way after a
//! restart (a record is de-duplicated by the offset of its first line). So
//! every decision is a function of the lines alone: the state after a line
//! that starts a record depends on that line only, and the timeout compares
//! the lines' own timestamps ("a gap of at least `timeout` starts a new
//! record"). The wall clock only decides *when* a record at the end of the
//! file is emitted, and only once the clock is `timeout` past its last
//! line, when any line written later has a timestamp that starts a new
//! record anyway.
//!
//! Pure logic: no files, no clocks (callers pass the time in).

use std::sync::Arc;
use std::time::{Duration, Instant};

use logfleet_proto::v1::Stream;

use crate::cri::{LineSink, CUT, UNPARSED, UNTERMINATED};

/// How a container's lines are grouped into records.
#[derive(Debug, Clone)]
pub enum Detector {
    /// Java: `at ...` frames, `Caused by:`, `Suppressed:`, `... N more`,
    /// and an exception line right after a log line.
    Java,
    /// Python: `Traceback (most recent call last):`, indented frames, the
    /// final exception line, and chained tracebacks.
    Python,
    /// Go: `panic:` or `fatal error:`, then `goroutine N [...]:` blocks.
    Go,
    /// Ruby: `from ...` frames under the error line.
    Ruby,
    /// .NET: `at ...` frames, `---> ` inner exceptions and `--- End of`
    /// markers.
    Dotnet,
    /// All of the built-in languages at once.
    Auto,
    /// A line matching the expression starts a record; any other line
    /// continues the open one.
    Start(Arc<regex::bytes::Regex>),
}

/// A multi-line setting that is neither a known name nor a valid regular
/// expression.
#[derive(Debug, thiserror::Error)]
#[error("multi-line setting {value:?} is not java, python, go, ruby, dotnet, auto, none or a valid regular expression: {source}")]
pub struct BadDetector {
    /// The setting.
    pub value: String,
    /// Why it is not a regular expression.
    pub source: regex::Error,
}

impl Detector {
    /// Parses a setting (`logfleet.dev/multiline`, `--multiline`):
    /// `java`, `python`, `go`, `ruby`, `dotnet`, `auto`, or a regular
    /// expression matching the first line of a record. `none` (or an empty
    /// value) gives `Ok(None)`: lines are not grouped.
    pub fn parse(value: &str) -> Result<Option<Detector>, BadDetector> {
        let v = value.trim();
        Ok(Some(match v {
            "" | "none" | "off" => return Ok(None),
            "java" => Detector::Java,
            "python" => Detector::Python,
            "go" => Detector::Go,
            "ruby" => Detector::Ruby,
            "dotnet" => Detector::Dotnet,
            "auto" => Detector::Auto,
            re => Detector::Start(Arc::new(
                regex::bytes::RegexBuilder::new(re)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|source| BadDetector {
                        value: value.to_owned(),
                        source,
                    })?,
            )),
        }))
    }

    /// The setting this detector was parsed from (a regex as written).
    pub fn name(&self) -> String {
        match self {
            Detector::Java => "java".into(),
            Detector::Python => "python".into(),
            Detector::Go => "go".into(),
            Detector::Ruby => "ruby".into(),
            Detector::Dotnet => "dotnet".into(),
            Detector::Auto => "auto".into(),
            Detector::Start(re) => re.as_str().into(),
        }
    }

    fn has(&self, lang: Lang) -> bool {
        match self {
            Detector::Auto => true,
            Detector::Java => lang == Lang::Java,
            Detector::Python => lang == Lang::Python,
            Detector::Go => lang == Lang::Go,
            Detector::Ruby => lang == Lang::Ruby,
            Detector::Dotnet => lang == Lang::Dotnet,
            Detector::Start(_) => false,
        }
    }

    /// The state after `line` when it starts a record. Depends on the line
    /// alone, so a re-read from a record's start rebuilds the same state.
    fn begin(&self, line: &[u8]) -> State {
        if self.has(Lang::Python) && line == b"Traceback (most recent call last):" {
            State::PyFrames
        } else if self.has(Lang::Go)
            && (line.starts_with(b"panic: ") || line.starts_with(b"fatal error: "))
        {
            State::GoPanic
        } else if self.has(Lang::Go) && is_goroutine_header(line) {
            State::GoStack
        } else {
            State::Plain
        }
    }

    /// Whether `line` continues the open record in `state`; on `Some` the
    /// new state, on `None` the line starts a record.
    fn continues(&self, state: State, line: &[u8]) -> Option<State> {
        if let Detector::Start(re) = self {
            return (!re.is_match(line)).then_some(State::Plain);
        }
        match state {
            State::PyFrames => Some(match line.first() {
                // The final, unindented line is the exception itself.
                Some(b' ' | b'\t') | None => State::PyFrames,
                Some(_) => State::PyDone,
            }),
            State::PyDone | State::PyChain => {
                if line.is_empty() {
                    Some(state)
                } else if line
                    == b"During handling of the above exception, another exception occurred:"
                    || line
                        == b"The above exception was the direct cause of the following exception:"
                {
                    Some(State::PyChain)
                } else if state == State::PyChain && line == b"Traceback (most recent call last):" {
                    Some(State::PyFrames)
                } else {
                    None
                }
            }
            State::GoPanic => {
                if line.is_empty() || line.starts_with(b"\t") || line.starts_with(b"[signal ") {
                    Some(State::GoPanic)
                } else if is_goroutine_header(line) {
                    Some(State::GoStack)
                } else {
                    None
                }
            }
            State::GoStack => {
                if line.is_empty() {
                    Some(State::GoPanic)
                } else if line.starts_with(b"\t")
                    || line.starts_with(b"created by ")
                    || line.starts_with(b"...additional frames elided...")
                    || is_go_call(line)
                {
                    Some(State::GoStack)
                } else {
                    None
                }
            }
            State::Plain => self.plain_continues(line).then_some(State::Plain),
        }
    }

    /// The stateless continuation rules (Java, Ruby, .NET).
    fn plain_continues(&self, line: &[u8]) -> bool {
        let trimmed = trim_start(line);
        let indented = trimmed.len() < line.len();
        let (java, ruby, dotnet) = (
            self.has(Lang::Java),
            self.has(Lang::Ruby),
            self.has(Lang::Dotnet),
        );
        if indented {
            if (java || dotnet) && trimmed.starts_with(b"at ") {
                return true;
            }
            if ruby && trimmed.starts_with(b"from ") {
                return true;
            }
            if (java || ruby) && trimmed.starts_with(b"... ") {
                // `... 12 more`, `... 3 common frames omitted`, Ruby's
                // `... 7 levels...`.
                return trimmed[4..].first().is_some_and(u8::is_ascii_digit);
            }
        }
        if java && (trimmed.starts_with(b"Caused by: ") || trimmed.starts_with(b"Suppressed: ")) {
            return true;
        }
        if dotnet && (trimmed.starts_with(b"---> ") || trimmed.starts_with(b"--- End of ")) {
            return true;
        }
        (java || dotnet) && !indented && is_exception_line(line)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Java,
    Python,
    Go,
    Ruby,
    Dotnet,
}

/// Where a detector is inside a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Plain,
    /// Inside a Python traceback's frames.
    PyFrames,
    /// After a Python traceback's exception line (a chained one may follow).
    PyDone,
    /// After "During handling ..." or "The above exception ...".
    PyChain,
    /// After a Go `panic:` line, before or between goroutines.
    GoPanic,
    /// Inside a goroutine's frames.
    GoStack,
}

fn trim_start(line: &[u8]) -> &[u8] {
    let n = line
        .iter()
        .take_while(|c| **c == b' ' || **c == b'\t')
        .count();
    &line[n..]
}

/// `goroutine 1 [running]:`
fn is_goroutine_header(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"goroutine ") else {
        return false;
    };
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(b" [") && line.ends_with(b":")
}

/// A Go frame's function line: `main.main()`, `main.f(0x1, ...)`,
/// `panic({0x4a1b20?, 0xc0000140a0?})`.
fn is_go_call(line: &[u8]) -> bool {
    // Arguments may hold spaces (`{0x1, 0x2}`); the function name before
    // `(` may not.
    line.ends_with(b")")
        && memchr::memchr(b'(', line)
            .is_some_and(|i| i > 0 && !line[..i].contains(&b' ') && !line[..i].contains(&b'\t'))
}

/// `java.lang.IllegalStateException: boom`, `System.Exception`,
/// `org.example.AppError`: a qualified class name ending in Exception,
/// Error or Throwable, alone or before `: `.
fn is_exception_line(line: &[u8]) -> bool {
    let end = memchr::memchr2(b':', b' ', line).unwrap_or(line.len());
    if end < line.len() && line[end] == b' ' {
        return false;
    }
    let name = &line[..end];
    name.contains(&b'.')
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'$'))
        && (name.ends_with(b"Exception")
            || name.ends_with(b"Error")
            || name.ends_with(b"Throwable"))
}

/// Settings of multi-line grouping.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// A record ends when the next line of its stream is stamped this much
    /// later, or when the clock is this far past its last line.
    pub timeout: Duration,
    /// Largest record; a longer one is emitted in pieces marked as cut.
    pub max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            timeout: Duration::from_secs(1),
            max_bytes: 256 << 10,
        }
    }
}

#[derive(Debug)]
struct Open {
    offset: u64,
    /// Where a re-read must start: the record's first line, or the start
    /// of a line of the other stream that began before the record and was
    /// completed after it (a `P` run spanning the record's start).
    floor: u64,
    ts: i64,
    last_ts: i64,
    flags: u32,
    arrived: Instant,
}

#[derive(Debug, Default)]
struct Slot {
    open: Option<Open>,
    /// The open record's text; kept between records to save allocations.
    text: Vec<u8>,
    state: State,
}

/// Groups one file's lines into records, per stream.
#[derive(Debug)]
pub struct Grouper {
    detector: Detector,
    cfg: GroupConfig,
    slots: [Slot; 2],
    /// Records emitted, and records cut at the size cap.
    pub stats: GroupStats,
}

/// Counters of a [`Grouper`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// Records of more than one line emitted.
    pub records: u64,
    /// Lines that went into those records.
    pub joined_lines: u64,
    /// Records cut at the size cap.
    pub cut: u64,
}

fn slot_of(stream: Stream) -> Option<usize> {
    match stream {
        Stream::Stdout => Some(0),
        Stream::Stderr => Some(1),
        Stream::Unknown => None,
    }
}

fn stream_of(slot: usize) -> Stream {
    if slot == 0 {
        Stream::Stdout
    } else {
        Stream::Stderr
    }
}

impl Grouper {
    /// A grouper with nothing open.
    pub fn new(detector: Detector, cfg: GroupConfig) -> Self {
        Grouper {
            detector,
            cfg,
            slots: Default::default(),
            stats: GroupStats::default(),
        }
    }

    /// The detector in use.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Offset of the oldest open record: the file is accounted for only up
    /// to there, so a checkpoint never falls inside a record.
    pub fn open_offset(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| s.open.as_ref().map(|o| o.floor))
            .min()
    }

    /// Bytes held in open records (for memory accounting).
    pub fn pending_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.text.len()).sum()
    }

    /// Wraps `out`: lines given to the result are grouped into records
    /// that go to `out`.
    pub fn sink<'a, S: LineSink>(&'a mut self, out: &'a mut S, now: Instant) -> Grouped<'a, S> {
        Grouped { g: self, out, now }
    }

    fn emit(&mut self, i: usize, out: &mut impl LineSink, extra_flags: u32) {
        let slot = &mut self.slots[i];
        if let Some(o) = slot.open.take() {
            if memchr::memchr(b'\n', &slot.text).is_some() {
                self.stats.records += 1;
                self.stats.joined_lines +=
                    memchr::memchr_iter(b'\n', &slot.text).count() as u64 + 1;
            }
            out.line(
                o.offset,
                o.ts,
                stream_of(i),
                o.flags | extra_flags,
                &slot.text,
            );
            slot.text.clear();
            if slot.text.capacity() > 64 << 10 {
                slot.text.shrink_to(4 << 10);
            }
        }
    }

    /// One line from the assembler.
    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        out: &mut impl LineSink,
        now: Instant,
        offset: u64,
        ts: i64,
        stream: Stream,
        flags: u32,
        text: &[u8],
    ) {
        // A line that began before an open record and ends only now spans
        // that record's start: a re-read must begin at the line.
        for s in self.slots.iter_mut() {
            if let Some(o) = s.open.as_mut() {
                o.floor = o.floor.min(offset);
            }
        }
        let Some(i) = slot_of(stream) else {
            // Neither CRI nor docker: no stream to group by.
            out.line(offset, ts, stream, flags, text);
            return;
        };
        if flags & (CUT | UNTERMINATED | UNPARSED) != 0 {
            // A piece of an over-long line or a line that never ended:
            // shipped as it is, after what was open before it.
            self.emit(i, out, 0);
            self.slots[i].state = State::Plain;
            out.line(offset, ts, stream, flags, text);
            return;
        }
        let timeout = self.cfg.timeout.as_nanos().min(i64::MAX as u128) as i64;
        let slot = &self.slots[i];
        let next = match &slot.open {
            Some(o) if ts.saturating_sub(o.last_ts) < timeout => {
                self.detector.continues(slot.state, text)
            }
            _ => None,
        };
        match next {
            Some(state) => {
                if self.slots[i].text.len() + 1 + text.len() > self.cfg.max_bytes {
                    // At the cap: ship what is open as a cut piece; this
                    // line begins the next piece of the same record.
                    self.stats.cut += 1;
                    self.emit(i, out, CUT);
                    self.open(i, now, offset, ts, flags, text, state);
                } else {
                    let slot = &mut self.slots[i];
                    slot.text.push(b'\n');
                    slot.text.extend_from_slice(text);
                    slot.state = state;
                    if let Some(o) = slot.open.as_mut() {
                        o.last_ts = ts;
                        o.arrived = now;
                    }
                }
            }
            None => {
                self.emit(i, out, 0);
                let state = self.detector.begin(text);
                self.open(i, now, offset, ts, flags, text, state);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        i: usize,
        now: Instant,
        offset: u64,
        ts: i64,
        flags: u32,
        text: &[u8],
        state: State,
    ) {
        let slot = &mut self.slots[i];
        // A line longer than the cap stays whole: lines are cut by the
        // assembler's own limit, records only between lines.
        slot.text.extend_from_slice(text);
        slot.state = state;
        slot.open = Some(Open {
            offset,
            floor: offset,
            ts,
            last_ts: ts,
            flags,
            arrived: now,
        });
    }

    /// Emits the records whose last line is `timeout` old by the clock
    /// (`now_ns`, ns since the epoch, the clock the runtime stamps lines
    /// with). Call only when the file was read to its end: unread lines
    /// might still continue them. A record whose timestamps are in the
    /// future (a clock set wrong) goes after it waited four timeouts here.
    pub fn flush_stale(&mut self, now: Instant, now_ns: i64, out: &mut impl LineSink) {
        let timeout = self.cfg.timeout.as_nanos().min(i64::MAX as u128) as i64;
        let backstop = (self.cfg.timeout * 4).max(Duration::from_secs(1));
        for i in 0..2 {
            let due = self.slots[i].open.as_ref().is_some_and(|o| {
                now_ns.saturating_sub(o.last_ts) >= timeout
                    || now.saturating_duration_since(o.arrived) >= backstop
            });
            if due {
                self.emit(i, out, 0);
                self.slots[i].state = State::Plain;
            }
        }
    }

    /// Emits every open record (the file is finished).
    pub fn flush_all(&mut self, out: &mut impl LineSink) {
        let mut order = [0usize, 1];
        order.sort_by_key(|i| self.slots[*i].open.as_ref().map(|o| o.offset));
        for i in order {
            self.emit(i, out, 0);
            self.slots[i].state = State::Plain;
        }
    }
}

/// A [`LineSink`] that groups lines before they reach the inner sink.
pub struct Grouped<'a, S> {
    g: &'a mut Grouper,
    out: &'a mut S,
    now: Instant,
}

impl<S: LineSink> LineSink for Grouped<'_, S> {
    fn line(&mut self, offset: u64, ts: i64, stream: Stream, flags: u32, text: &[u8]) {
        self.g
            .line(self.out, self.now, offset, ts, stream, flags, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::Line;

    const SEC: i64 = 1_000_000_000;

    /// Groups `lines` (all on stdout, 1 ms apart), then flushes.
    fn group(det: &str, lines: &[&str]) -> Vec<String> {
        let det = Detector::parse(det).unwrap().unwrap();
        let mut g = Grouper::new(det, GroupConfig::default());
        let mut out: Vec<Line> = Vec::new();
        let now = Instant::now();
        let mut off = 0;
        for (k, l) in lines.iter().enumerate() {
            g.sink(&mut out, now)
                .line(off, k as i64 * 1_000_000, Stream::Stdout, 0, l.as_bytes());
            off += l.len() as u64 + 1;
        }
        g.flush_all(&mut out);
        out.iter()
            .map(|l| String::from_utf8_lossy(&l.text).into_owned())
            .collect()
    }

    #[test]
    fn java_trace_with_cause_is_one_record_after_its_log_line() {
        let lines = [
            "2026-12-03 10:00:00 INFO started",
            "2026-12-03 10:00:01 ERROR request failed",
            "java.lang.IllegalStateException: boom",
            "\tat com.example.Checkout.pay(Checkout.java:42)",
            "\tat com.example.Main.main(Main.java:7)",
            "Caused by: java.io.IOException: disk",
            "\t... 2 more",
            "2026-12-03 10:00:02 INFO next",
        ];
        let out = group("java", &lines);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[1], lines[1..7].join("\n"));
    }

    #[test]
    fn python_traceback_ends_with_its_exception_and_keeps_chains() {
        let lines = [
            "before",
            "Traceback (most recent call last):",
            "  File \"x.py\", line 3, in <module>",
            "    f()",
            "KeyError: 'a'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"x.py\", line 5, in <module>",
            "ValueError: b",
            "after",
        ];
        let out = group("python", &lines);
        assert_eq!(
            out,
            vec![
                "before".to_string(),
                lines[1..11].join("\n"),
                "after".into()
            ]
        );
    }

    #[test]
    fn go_panic_takes_every_goroutine() {
        let lines = [
            "serving",
            "panic: boom",
            "",
            "goroutine 1 [running]:",
            "main.handler(...)",
            "\t/src/main.go:12",
            "main.main()",
            "\t/src/main.go:20 +0x1d",
            "",
            "goroutine 6 [chan receive]:",
            "main.worker(0xc000012345)",
            "\t/src/main.go:30 +0x25",
            "created by main.main in goroutine 1",
            "\t/src/main.go:18 +0x3a",
            "exit",
        ];
        let out = group("go", &lines);
        assert_eq!(
            out,
            vec![
                "serving".to_string(),
                lines[1..14].join("\n"),
                "exit".into()
            ]
        );
    }

    #[test]
    fn ruby_and_dotnet_frames_continue() {
        let ruby = [
            "app.rb:2:in 'Object#pay': declined (RuntimeError)",
            "\tfrom app.rb:5:in '<main>'",
            "next",
        ];
        assert_eq!(
            group("ruby", &ruby),
            vec![ruby[..2].join("\n"), "next".into()]
        );
        let dotnet = [
            "Unhandled exception. System.InvalidOperationException: outer",
            " ---> System.Exception: inner",
            "   at Program.Inner() in /src/Program.cs:line 9",
            "   --- End of inner exception stack trace ---",
            "   at Program.Main() in /src/Program.cs:line 4",
            "done",
        ];
        assert_eq!(
            group("dotnet", &dotnet),
            vec![dotnet[..5].join("\n"), "done".into()]
        );
    }

    #[test]
    fn a_regex_marks_record_starts() {
        let lines = ["[1] a", "  b", "c", "[2] d"];
        assert_eq!(
            group(r"^\[\d+\]", &lines),
            vec!["[1] a\n  b\nc".to_string(), "[2] d".into()]
        );
    }

    #[test]
    fn auto_knows_every_language_and_leaves_plain_lines_alone() {
        let lines = [
            "plain one",
            "plain two",
            "panic: x",
            "",
            "goroutine 1 [running]:",
            "main.main()",
            "\t/m.go:1",
            "Traceback (most recent call last):",
            "  File \"a\", line 1",
            "E: x",
            "plain three",
        ];
        let out = group("auto", &lines);
        assert_eq!(out.len(), 5, "{out:#?}");
        assert_eq!(out[2], lines[2..7].join("\n"));
        assert_eq!(out[3], lines[7..10].join("\n"));
    }

    #[test]
    fn streams_are_grouped_apart_and_the_open_record_holds_the_checkpoint() {
        let mut g = Grouper::new(Detector::Java, GroupConfig::default());
        let mut out: Vec<Line> = Vec::new();
        let now = Instant::now();
        let mut s = g.sink(&mut out, now);
        s.line(0, 0, Stream::Stdout, 0, b"ERROR x");
        s.line(10, 1, Stream::Stderr, 0, b"err one");
        s.line(20, 2, Stream::Stdout, 0, b"\tat a.B.c(B.java:1)");
        s.line(40, 3, Stream::Stderr, 0, b"err two");
        // stderr's first line closed when its next line started; stdout's
        // record is still open at offset 0.
        assert_eq!(out.len(), 1);
        assert_eq!(g.open_offset(), Some(0));
        g.flush_all(&mut out);
        assert_eq!(out[1].text, "ERROR x\n\tat a.B.c(B.java:1)");
        assert_eq!(out[1].offset, 0);
        assert_eq!(g.open_offset(), None);
    }

    /// stdout's line began (a `P` at 0) before stderr's record opened at
    /// 10 and ends after it: the checkpoint may not move past 0 while the
    /// record is open.
    #[test]
    fn a_line_spanning_an_open_record_holds_the_checkpoint_back() {
        let mut g = Grouper::new(Detector::Java, GroupConfig::default());
        let mut out: Vec<Line> = Vec::new();
        let now = Instant::now();
        let mut s = g.sink(&mut out, now);
        s.line(10, 0, Stream::Stderr, 0, b"ERROR x");
        s.line(0, 0, Stream::Stdout, 0, b"started at 0, ended at 30");
        assert_eq!(g.open_offset(), Some(0));
    }

    #[test]
    fn a_gap_in_timestamps_starts_a_record_and_the_clock_flushes() {
        let mut g = Grouper::new(Detector::Java, GroupConfig::default());
        let mut out: Vec<Line> = Vec::new();
        let now = Instant::now();
        g.sink(&mut out, now)
            .line(0, 0, Stream::Stdout, 0, b"ERROR x");
        g.sink(&mut out, now)
            .line(8, 2 * SEC, Stream::Stdout, 0, b"\tat a.B.c(B.java:1)");
        assert_eq!(out.len(), 1, "a frame 2 s later is a record of its own");
        g.flush_stale(now, 2 * SEC + SEC / 2, &mut out);
        assert_eq!(out.len(), 1, "not yet a timeout past the last line");
        g.flush_stale(now, 3 * SEC, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(g.open_offset(), None);
    }

    #[test]
    fn records_at_the_cap_are_cut_and_marked_and_pieces_pass_through() {
        let cfg = GroupConfig {
            max_bytes: 30,
            ..Default::default()
        };
        let mut g = Grouper::new(Detector::Java, cfg);
        let mut out: Vec<Line> = Vec::new();
        let now = Instant::now();
        let mut s = g.sink(&mut out, now);
        s.line(0, 0, Stream::Stdout, 0, b"ERROR x");
        s.line(10, 0, Stream::Stdout, 0, b"\tat a.B.c(B.java:1)");
        s.line(30, 0, Stream::Stdout, 0, b"\tat a.B.d(B.java:2)");
        s.line(50, 0, Stream::Stdout, CUT, b"a piece");
        g.flush_all(&mut out);
        let got: Vec<(u64, u32)> = out.iter().map(|l| (l.offset, u32::from(l.cut))).collect();
        assert_eq!(got, vec![(0, 1), (30, 0), (50, 1)]);
        assert_eq!(g.stats.cut, 1);
    }

    #[test]
    fn bad_settings_are_errors_and_none_turns_grouping_off() {
        assert!(Detector::parse("none").unwrap().is_none());
        assert!(Detector::parse("(").is_err());
        assert_eq!(Detector::parse("java").unwrap().unwrap().name(), "java");
    }
}
