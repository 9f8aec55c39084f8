//! Parsing of container log records: CRI (`<ts> <stream> <P|F> <msg>`) and
//! docker json-file (`{"log":..,"stream":..,"time":..}`), and the merging of
//! partial records into whole lines.
//!
//! Pure logic: no files, no clocks (callers pass the time in).

use std::time::{Duration, Instant};

use bytes::Bytes;
use logfleet_proto::v1::Stream;

/// One record as the framer cut it out of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Byte offset in the file of the record's first byte.
    pub offset: u64,
    /// The record's bytes, without the newline.
    pub bytes: &'a [u8],
    /// True when this piece continues the previous record (the raw line was
    /// longer than the framer's limit).
    pub cont: bool,
    /// True when the raw line continues in the next piece.
    pub more: bool,
}

/// A parsed record header and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Timestamp in ns since the epoch.
    pub ts: i64,
    /// Stream.
    pub stream: Stream,
    /// False for a CRI `P` record or a docker record whose `log` lacks a
    /// trailing newline: the line continues in the next record.
    pub ends_line: bool,
    /// The message.
    pub msg: std::borrow::Cow<'a, [u8]>,
}

/// Parses an RFC 3339 timestamp with up to nanosecond precision into ns
/// since the epoch. Accepts `Z` or a numeric offset (CRI-O).
///
/// The form runtimes write (`YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`) is
/// parsed directly, which is several times cheaper than a general parser
/// on a path that runs once per line; anything else goes to chrono.
pub fn parse_ts(s: &[u8]) -> Option<i64> {
    fast_ts(s).or_else(|| {
        let s = std::str::from_utf8(s).ok()?;
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()?
            .timestamp_nanos_opt()
    })
}

fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as i64)
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn fast_ts(s: &[u8]) -> Option<i64> {
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(&s[0..4])?, digits(&s[5..7])?, digits(&s[8..10])?);
    let (h, mi, sec) = (
        digits(&s[11..13])?,
        digits(&s[14..16])?,
        digits(&s[17..19])?,
    );
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > mdays[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&frac[..n])? * 10i64.pow(9 - n as u32);
        rest = &frac[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2])?;
            let om = digits(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = (oh * 60 + om) * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Parses one CRI record: `<RFC3339Nano> <stdout|stderr> <P|F> <message>`.
pub fn parse_cri(rec: &[u8]) -> Option<Parsed<'_>> {
    let sp1 = memchr::memchr(b' ', rec)?;
    let ts = parse_ts(&rec[..sp1])?;
    let rest = &rec[sp1 + 1..];
    let (stream, rest) = if let Some(r) = rest.strip_prefix(b"stdout ") {
        (Stream::Stdout, r)
    } else if let Some(r) = rest.strip_prefix(b"stderr ") {
        (Stream::Stderr, r)
    } else {
        return None;
    };
    // The tag may carry more flags after a colon in future CRI versions
    // (`F:x`); only the first letter matters for line assembly.
    let tag_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let ends_line = match rest.first()? {
        b'F' => true,
        b'P' => false,
        _ => return None,
    };
    if tag_end != 1 && rest.get(1) != Some(&b':') {
        return None;
    }
    let msg = rest.get(tag_end + 1..).unwrap_or(&[]);
    Some(Parsed {
        ts,
        stream,
        ends_line,
        msg: std::borrow::Cow::Borrowed(msg),
    })
}

#[derive(serde::Deserialize)]
struct DockerRecord<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    stream: &'a str,
    time: &'a str,
}

/// Parses one docker json-file record.
pub fn parse_docker(rec: &[u8]) -> Option<Parsed<'_>> {
    let r: DockerRecord<'_> = serde_json::from_slice(rec).ok()?;
    let ts = parse_ts(r.time.as_bytes())?;
    let stream = match r.stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let (msg, ends_line) = match r.log {
        std::borrow::Cow::Borrowed(s) => match s.strip_suffix('\n') {
            Some(m) => (std::borrow::Cow::Borrowed(m.as_bytes()), true),
            None => (std::borrow::Cow::Borrowed(s.as_bytes()), false),
        },
        std::borrow::Cow::Owned(mut s) => {
            let ends = s.ends_with('\n');
            if ends {
                s.pop();
            }
            (std::borrow::Cow::Owned(s.into_bytes()), ends)
        }
    };
    Some(Parsed {
        ts,
        stream,
        ends_line,
        msg,
    })
}

/// Parses a record as CRI, or as docker json when it starts with `{`.
pub fn parse_record(rec: &[u8]) -> Option<Parsed<'_>> {
    if rec.first() == Some(&b'{') {
        parse_docker(rec).or_else(|| parse_cri(rec))
    } else {
        parse_cri(rec)
    }
}

/// A whole log line, ready to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Offset of the line's first record in the file.
    pub offset: u64,
    /// Timestamp, ns since the epoch.
    pub ts: i64,
    /// Stream.
    pub stream: Stream,
    /// Message, partial chunks merged.
    pub text: Bytes,
    /// A `P` run that never got its `F`.
    pub unterminated: bool,
    /// One piece of an over-long line (not the last).
    pub cut: bool,
    /// Neither CRI nor docker.
    pub unparsed: bool,
}

/// Flag bits of a line, as on the wire.
pub use logfleet_proto::lines::{CUT, UNPARSED, UNTERMINATED};

/// Receives the lines an [`Assembler`] completes. The tailer writes them
/// straight into the batch being built, so a line costs no allocation.
pub trait LineSink {
    /// One complete line: offset of its first record, timestamp, stream,
    /// flag bits and message.
    fn line(&mut self, offset: u64, ts: i64, stream: Stream, flags: u32, text: &[u8]);
}

/// Collecting lines into a vector (tests, tools).
impl LineSink for Vec<Line> {
    fn line(&mut self, offset: u64, ts: i64, stream: Stream, flags: u32, text: &[u8]) {
        self.push(Line {
            offset,
            ts,
            stream,
            text: Bytes::copy_from_slice(text),
            unterminated: flags & UNTERMINATED != 0,
            cut: flags & CUT != 0,
            unparsed: flags & UNPARSED != 0,
        });
    }
}

#[derive(Debug)]
struct Pending {
    offset: u64,
    /// Where a re-read must start to see this run whole and every line
    /// completed after it began whole too: a line of the other stream that
    /// began earlier and ended after this run began (both streams with a
    /// `P` open at once) lowers it to that line's start.
    floor: u64,
    ts: i64,
    text: Vec<u8>,
    last: Instant,
}

/// Merges partial records into lines, per stream, with a bound on line size.
///
/// `safe_offset` tells how far the file is fully accounted for: every line
/// that starts before it has been emitted. That is the offset a checkpoint
/// may move to.
#[derive(Debug)]
pub struct Assembler {
    max_line: usize,
    pending: [Option<Pending>; 3],
    /// Header of a raw line the framer is cutting into pieces.
    long: Option<(i64, Stream, bool, bool)>,
    safe: u64,
}

/// Counters of unusual input, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Oddities {
    /// Records that were neither CRI nor docker json.
    pub unparsed: u64,
    /// Pieces emitted because a line exceeded the maximum line size.
    pub cut: u64,
    /// Partial runs flushed without their final record.
    pub unterminated: u64,
}

fn slot(s: Stream) -> usize {
    match s {
        Stream::Unknown => 0,
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    }
}

impl Assembler {
    /// An assembler for a file read from `offset`, cutting lines longer
    /// than `max_line` bytes into pieces.
    pub fn new(offset: u64, max_line: usize) -> Self {
        Assembler {
            max_line: max_line.max(1),
            pending: [None, None, None],
            long: None,
            safe: offset,
        }
    }

    /// The offset below which every line has been emitted.
    pub fn safe_offset(&self) -> u64 {
        self.safe
    }

    fn recompute_safe(&mut self, consumed: u64) {
        self.safe = self
            .pending
            .iter()
            .flatten()
            .map(|p| p.floor)
            .min()
            .unwrap_or(consumed)
            .min(consumed);
    }

    /// A line starting at `offset` was just emitted while runs are open: a
    /// run that began after it must not let the checkpoint fall between
    /// that line's chunks.
    fn emitted(&mut self, offset: u64) {
        for p in self.pending.iter_mut().flatten() {
            p.floor = p.floor.min(offset);
        }
    }

    /// Feeds one record. `consumed` is the file offset just after it;
    /// `now_ns` stamps unparsed records.
    pub fn feed(
        &mut self,
        rec: RawRecord<'_>,
        consumed: u64,
        now: Instant,
        now_ns: i64,
        odd: &mut Oddities,
        out: &mut impl LineSink,
    ) {
        let parsed = if rec.cont {
            // A continuation piece has no header: it inherits the first
            // piece's, and its bytes are message bytes.
            self.long.map(|(ts, stream, ends_line, unparsed)| {
                (
                    Parsed {
                        ts,
                        stream,
                        ends_line,
                        msg: std::borrow::Cow::Borrowed(rec.bytes),
                    },
                    unparsed,
                )
            })
        } else {
            parse_record(rec.bytes).map(|p| (p, false))
        };
        let (p, unparsed) = match parsed {
            Some(x) => x,
            None => {
                odd.unparsed += 1;
                (
                    Parsed {
                        ts: now_ns,
                        stream: Stream::Unknown,
                        ends_line: true,
                        msg: std::borrow::Cow::Borrowed(rec.bytes),
                    },
                    true,
                )
            }
        };
        if rec.more {
            self.long = Some((p.ts, p.stream, p.ends_line, unparsed));
        } else if rec.cont {
            self.long = None;
        }
        let ends_line = p.ends_line && !rec.more;
        let s = slot(p.stream);
        let base = if unparsed { UNPARSED } else { 0 };
        // Appending would exceed the limit: emit what is pending as a piece.
        if let Some(pend) = &self.pending[s] {
            if pend.text.len() + p.msg.len() > self.max_line && !pend.text.is_empty() {
                let pend = self.pending[s].take().expect("checked above");
                odd.cut += 1;
                out.line(pend.offset, pend.ts, p.stream, base | CUT, &pend.text);
                self.emitted(pend.offset);
            }
        }
        match (&mut self.pending[s], ends_line) {
            (None, true) => {
                out.line(rec.offset, p.ts, p.stream, base, &p.msg);
                self.emitted(rec.offset);
            }
            (Some(pend), true) => {
                pend.text.extend_from_slice(&p.msg);
                let pend = self.pending[s].take().expect("matched Some");
                out.line(pend.offset, pend.ts, p.stream, base, &pend.text);
                self.emitted(pend.offset);
            }
            (Some(pend), false) => {
                pend.text.extend_from_slice(&p.msg);
                pend.last = now;
            }
            (None, false) => {
                self.pending[s] = Some(Pending {
                    offset: rec.offset,
                    floor: rec.offset,
                    ts: p.ts,
                    text: p.msg.into_owned(),
                    last: now,
                })
            }
        }
        self.recompute_safe(consumed);
    }

    /// Emits partial runs idle for at least `timeout` as unterminated lines.
    /// `consumed` is the framer's [`Framer::record_offset`]: the end of the
    /// last record fed, not of the last byte read.
    pub fn flush_stale(
        &mut self,
        now: Instant,
        timeout: Duration,
        consumed: u64,
        odd: &mut Oddities,
        out: &mut impl LineSink,
    ) {
        self.flush(
            |p| now.saturating_duration_since(p.last) >= timeout,
            odd,
            out,
        );
        self.recompute_safe(consumed);
    }

    /// Emits every partial run (the file is finished).
    pub fn flush_all(&mut self, consumed: u64, odd: &mut Oddities, out: &mut impl LineSink) {
        self.flush(|_| true, odd, out);
        self.long = None;
        self.recompute_safe(consumed);
    }

    /// Emits the partial runs `which` selects, oldest first.
    fn flush(
        &mut self,
        which: impl Fn(&Pending) -> bool,
        odd: &mut Oddities,
        out: &mut impl LineSink,
    ) {
        let mut runs: Vec<(usize, Pending)> = Vec::new();
        for (i, slot) in self.pending.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(&which) {
                runs.extend(slot.take().map(|p| (i, p)));
            }
        }
        runs.sort_by_key(|(_, p)| p.offset);
        for (i, p) in runs {
            odd.unterminated += 1;
            let (stream, flags) = match i {
                1 => (Stream::Stdout, UNTERMINATED),
                2 => (Stream::Stderr, UNTERMINATED),
                _ => (Stream::Unknown, UNTERMINATED | UNPARSED),
            };
            out.line(p.offset, p.ts, stream, flags, &p.text);
            self.emitted(p.offset);
        }
    }

    /// Bytes held in partial runs (for memory accounting).
    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().flatten().map(|p| p.text.len()).sum()
    }
}

/// Cuts a byte stream into newline-terminated records, never holding more
/// than `max_record` bytes of one record: longer ones are cut into pieces.
///
/// Records are cut straight out of the caller's read buffer; only the
/// unfinished record at its end is copied and kept.
#[derive(Debug)]
pub struct Framer {
    /// The unfinished record (at most `max_record` bytes).
    buf: Vec<u8>,
    /// File offset of `buf[0]` (of the next byte, when `buf` is empty).
    base: u64,
    max_record: usize,
    /// The next record continues a cut one.
    cont: bool,
}

impl Framer {
    /// A framer for a file read from `offset`.
    pub fn new(offset: u64, max_record: usize) -> Self {
        Framer {
            buf: Vec::new(),
            base: offset,
            max_record: max_record.max(1),
            cont: false,
        }
    }

    /// File offset just after the bytes handed to the framer so far.
    pub fn read_offset(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// File offset of the first byte not yet handed out in a record: the
    /// start of the unfinished record. Everything before it reached the
    /// assembler; a checkpoint can never lie past it.
    pub fn record_offset(&self) -> u64 {
        self.base
    }

    /// Emits every complete record in `data` (and pieces of over-long ones)
    /// starting at file offset `base`; returns how many bytes it consumed.
    fn cut(
        cont: &mut bool,
        max: usize,
        data: &[u8],
        base: u64,
        f: &mut impl FnMut(RawRecord<'_>, u64),
    ) -> usize {
        let mut start = 0;
        loop {
            let window = &data[start..data.len().min(start + max + 1)];
            match memchr::memchr(b'\n', window) {
                Some(i) => {
                    let offset = base + start as u64;
                    let rec = RawRecord {
                        offset,
                        bytes: &window[..i],
                        cont: *cont,
                        more: false,
                    };
                    f(rec, offset + i as u64 + 1);
                    *cont = false;
                    start += i + 1;
                }
                None if data.len() - start > max => {
                    let offset = base + start as u64;
                    let rec = RawRecord {
                        offset,
                        bytes: &data[start..start + max],
                        cont: *cont,
                        more: true,
                    };
                    f(rec, offset + max as u64);
                    *cont = true;
                    start += max;
                }
                None => return start,
            }
        }
    }

    /// Takes bytes read from the file: calls `f` with every record they
    /// complete, and the file offset just after it; keeps the unfinished
    /// rest.
    pub fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(RawRecord<'_>, u64)) {
        // First complete the record left over from the last read.
        while !self.buf.is_empty() && !data.is_empty() {
            let room = (self.max_record + 1).saturating_sub(self.buf.len()).max(1);
            let take = memchr::memchr(b'\n', &data[..data.len().min(room)])
                .map_or(data.len().min(room), |i| i + 1);
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            let n = Self::cut(
                &mut self.cont,
                self.max_record,
                &self.buf,
                self.base,
                &mut f,
            );
            self.buf.drain(..n);
            self.base += n as u64;
        }
        if self.buf.is_empty() && !data.is_empty() {
            let n = Self::cut(&mut self.cont, self.max_record, data, self.base, &mut f);
            self.base += n as u64;
            self.buf.extend_from_slice(&data[n..]);
        }
    }

    /// Emits the unfinished tail as a final record (the file is finished
    /// and will not get its newline).
    pub fn finish(&mut self, mut f: impl FnMut(RawRecord<'_>, u64)) {
        if !self.buf.is_empty() {
            let end = self.base + self.buf.len() as u64;
            f(
                RawRecord {
                    offset: self.base,
                    bytes: &self.buf,
                    cont: self.cont,
                    more: false,
                },
                end,
            );
            self.base = end;
            self.buf.clear();
            self.cont = false;
        }
    }

    /// Bytes buffered (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Gives back buffer memory the unfinished record no longer needs.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > 4096 && self.buf.capacity() > 2 * self.buf.len() {
            self.buf.shrink_to(self.buf.len().max(1024));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2026-11-27T10:00:00.123456789Z";
    const TS_NS: i64 = 1_795_773_600_123_456_789;

    fn run(data: &[u8], chunk: usize, max: usize) -> (Vec<Line>, Oddities, u64) {
        let mut fr = Framer::new(0, max);
        let mut asm = Assembler::new(0, max);
        let mut odd = Oddities::default();
        let mut out = Vec::new();
        let now = Instant::now();
        for c in data.chunks(chunk.max(1)) {
            fr.feed(c, |r, end| asm.feed(r, end, now, 7, &mut odd, &mut out));
        }
        (out, odd, asm.safe_offset())
    }

    /// Both streams print without a newline: stdout's `P` at 0, then
    /// stderr's `P`, then stdout's `F` completes its line. The checkpoint
    /// may not move to stderr's run: a re-read from there would find
    /// stdout's `F` without its `P` and ship its tail as a line of its own.
    #[test]
    fn the_safe_offset_never_splits_a_line_around_the_other_streams_run() {
        let recs = [
            format!("{TS} stdout P ab"),
            format!("{TS} stderr P cd"),
            format!("{TS} stdout F ef"),
        ];
        let data = recs.iter().map(|r| format!("{r}\n")).collect::<String>();
        let (lines, _, safe) = run(data.as_bytes(), 1 << 10, 1 << 10);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text, "abef");
        assert_eq!(safe, 0, "stdout's line spans stderr's open run");
    }

    #[test]
    fn parses_cri_timestamp_to_the_nanosecond() {
        let rec = format!("{TS} stdout F hello world");
        let p = parse_cri(rec.as_bytes()).unwrap();
        assert_eq!(p.ts, TS_NS);
        assert_eq!(p.stream, Stream::Stdout);
        assert!(p.ends_line);
        assert_eq!(&*p.msg, b"hello world");
        // CRI-O writes numeric offsets.
        let p = parse_cri(b"2026-11-27T11:00:00.123456789+01:00 stderr P x").unwrap();
        assert_eq!(p.ts, TS_NS);
        assert!(!p.ends_line);
        assert_eq!(p.stream, Stream::Stderr);
    }

    proptest::proptest! {
        /// The direct parser agrees with chrono on every timestamp it takes.
        #[test]
        fn fast_timestamps_agree_with_chrono(
            secs in -2_000_000_000i64..8_000_000_000,
            nanos in 0u32..1_000_000_000,
            digits in 0usize..10,
            offset_min in -1439i32..1440,
        ) {
            let tz = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let dt = chrono::DateTime::from_timestamp(secs, nanos).unwrap().with_timezone(&tz);
            let fmt = match digits {
                0 => chrono::SecondsFormat::Secs,
                1..=3 => chrono::SecondsFormat::Millis,
                4..=6 => chrono::SecondsFormat::Micros,
                _ => chrono::SecondsFormat::Nanos,
            };
            let text = dt.to_rfc3339_opts(fmt, offset_min == 0);
            let want = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_nanos_opt();
            proptest::prop_assert_eq!(fast_ts(text.as_bytes()), want, "{}", text);
        }
    }

    #[test]
    fn fast_parser_refuses_what_it_does_not_know() {
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T10:00:00.Z",
            "2026-11-27T10:00:00.1234567891Z",
            "2026-11-27T10:00:00",
            "2026-11-27 10:00:00Z",
        ] {
            assert_eq!(fast_ts(bad.as_bytes()), None, "{bad}");
        }
        // Leap day, and what chrono alone accepts still parses.
        assert!(parse_ts(b"2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_ts(b"2026-11-27 10:00:00.123456789Z"), Some(TS_NS));
    }

    #[test]
    fn rejects_malformed_cri() {
        for bad in [
            "",
            "hello",
            "2026-11-27T10:00:00Z stdin F x",
            "not-a-time stdout F x",
            "2026-11-27T10:00:00Z stdout X x",
            "2026-11-27T10:00:00Z stdout FF x",
        ] {
            assert!(parse_cri(bad.as_bytes()).is_none(), "{bad:?}");
        }
        // An empty message is valid.
        assert_eq!(
            &*parse_cri(format!("{TS} stdout F").as_bytes()).unwrap().msg,
            b""
        );
    }

    #[test]
    fn parses_docker_json_with_and_without_newline() {
        let full = format!(r#"{{"log":"hi \"there\"\n","stream":"stderr","time":"{TS}"}}"#);
        let p = parse_record(full.as_bytes()).unwrap();
        assert_eq!(&*p.msg, b"hi \"there\"");
        assert!(p.ends_line);
        assert_eq!(p.ts, TS_NS);
        let part = format!(r#"{{"log":"abc","stream":"stdout","time":"{TS}"}}"#);
        assert!(!parse_record(part.as_bytes()).unwrap().ends_line);
    }

    #[test]
    fn merges_partials_per_stream_at_every_read_boundary() {
        let data = format!(
            "{TS} stdout P aaa\n{TS} stderr F err1\n{TS} stdout P bbb\n{TS} stdout F ccc\n{TS} stdout F next\n"
        );
        for chunk in 1..data.len() {
            let (lines, odd, safe) = run(data.as_bytes(), chunk, 1 << 20);
            let texts: Vec<_> = lines.iter().map(|l| l.text.clone()).collect();
            assert_eq!(
                texts,
                vec![&b"err1"[..], b"aaabbbccc", b"next"],
                "chunk {chunk}"
            );
            assert_eq!(lines[1].offset, 0, "merged line starts at its first chunk");
            assert_eq!(odd, Oddities::default());
            assert_eq!(safe, data.len() as u64);
        }
    }

    #[test]
    fn safe_offset_stays_at_open_partial() {
        let data = format!("{TS} stdout F one\n{TS} stdout P two\n");
        let first = format!("{TS} stdout F one\n").len() as u64;
        let (lines, _, safe) = run(data.as_bytes(), 7, 1 << 20);
        assert_eq!(lines.len(), 1);
        assert_eq!(safe, first);
    }

    #[test]
    fn keeps_malformed_and_invalid_utf8_lines_whole() {
        let mut data = b"garbage line\n\xff\xfe\x00binary\n".to_vec();
        data.extend_from_slice(format!("{TS} stdout F ok ").as_bytes());
        data.extend_from_slice(b"\xc3\x28\n");
        let (lines, odd, _) = run(&data, 3, 1 << 20);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].unparsed && lines[1].unparsed && !lines[2].unparsed);
        assert_eq!(&lines[1].text[..], b"\xff\xfe\x00binary");
        assert_eq!(lines[0].ts, 7, "unparsed lines get the read time");
        assert_eq!(odd.unparsed, 2);
    }

    #[test]
    fn cuts_endless_lines_with_bounded_buffer() {
        let max = 1000;
        let mut data = format!("{TS} stdout F ").into_bytes();
        data.extend(std::iter::repeat_n(b'x', 10_500));
        data.extend_from_slice(format!("\n{TS} stdout F after\n").as_bytes());
        let mut fr = Framer::new(0, max);
        let mut asm = Assembler::new(0, max);
        let mut odd = Oddities::default();
        let mut out = Vec::new();
        for c in data.chunks(333) {
            fr.feed(c, |r, e| {
                asm.feed(r, e, Instant::now(), 0, &mut odd, &mut out)
            });
            assert!(fr.buffered() <= max);
            assert!(asm.pending_bytes() <= max);
        }
        let total: usize = out[..out.len() - 1].iter().map(|l| l.text.len()).sum();
        assert_eq!(total, 10_500);
        assert!(out[..out.len() - 2].iter().all(|l| l.cut));
        assert!(!out[out.len() - 2].cut, "last piece is not marked cut");
        assert!(out
            .iter()
            .all(|l| l.ts == TS_NS && l.stream == Stream::Stdout));
        let offsets: Vec<_> = out.iter().map(|l| l.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        assert_eq!(&out.last().unwrap().text[..], b"after");
        assert!(odd.cut > 0);
    }

    #[test]
    fn flushes_stale_and_finished_partials() {
        let data = format!("{TS} stdout P never closed\n");
        let mut fr = Framer::new(0, 1 << 20);
        let mut asm = Assembler::new(0, 1 << 20);
        let mut odd = Oddities::default();
        let mut out = Vec::new();
        let t0 = Instant::now();
        fr.feed(data.as_bytes(), |r, e| {
            asm.feed(r, e, t0, 0, &mut odd, &mut out)
        });
        assert!(out.is_empty());
        asm.flush_stale(
            t0,
            Duration::from_secs(5),
            fr.read_offset(),
            &mut odd,
            &mut out,
        );
        assert!(out.is_empty(), "not stale yet");
        asm.flush_stale(
            t0 + Duration::from_secs(5),
            Duration::from_secs(5),
            fr.read_offset(),
            &mut odd,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].unterminated);
        assert_eq!(&out[0].text[..], b"never closed");
        assert_eq!(asm.safe_offset(), data.len() as u64);
    }

    #[test]
    fn framer_keeps_only_the_unfinished_record() {
        let mut fr = Framer::new(0, 1 << 20);
        let mut big = b"x".repeat(100_000);
        big.extend_from_slice(b"\nab");
        fr.feed(&big[..50_000], |_, _| {});
        assert_eq!(fr.buffered(), 50_000);
        let mut n = 0;
        fr.feed(&big[50_000..], |r, end| {
            assert_eq!((r.offset, r.bytes.len(), end), (0, 100_000, 100_001));
            n += 1;
        });
        assert_eq!(n, 1);
        fr.shrink();
        assert_eq!(fr.buf, b"ab");
        assert!(fr.buf.capacity() <= 1024, "{}", fr.buf.capacity());
        assert_eq!(fr.read_offset(), big.len() as u64);
    }

    proptest::proptest! {
        /// Whatever the read sizes and the record limit, the pieces put
        /// back together are the input, and every offset is right.
        #[test]
        fn pieces_reassemble_the_input(
            data in proptest::collection::vec(proptest::sample::select(vec![b'a', b'b', b'\n']), 0..400),
            chunk in 1usize..50,
            max in 1usize..40,
        ) {
            let mut fr = Framer::new(1000, max);
            let mut rebuilt = Vec::new();
            let mut next = 1000u64;
            let mut check = |r: RawRecord<'_>, end: u64| {
                assert_eq!(r.offset, next);
                assert!(r.bytes.len() <= max);
                rebuilt.extend_from_slice(r.bytes);
                if !r.more {
                    rebuilt.push(b'\n');
                }
                next = end;
            };
            for c in data.chunks(chunk) {
                fr.feed(c, &mut check);
                assert!(fr.buffered() <= max);
            }
            let tail = fr.buffered();
            proptest::prop_assert_eq!(&rebuilt[..], &data[..data.len() - tail]);
            proptest::prop_assert_eq!(fr.read_offset(), 1000 + data.len() as u64);
        }
    }

    #[test]
    fn framer_finish_emits_tail_without_newline() {
        let mut fr = Framer::new(10, 100);
        let mut got = Vec::new();
        fr.feed(b"abc\ndef", |r, e| {
            got.push((r.offset, r.bytes.to_vec(), e))
        });
        fr.finish(|r, e| got.push((r.offset, r.bytes.to_vec(), e)));
        assert_eq!(
            got,
            vec![(10, b"abc".to_vec(), 14), (14, b"def".to_vec(), 17)]
        );
    }

    proptest::proptest! {
        /// Whatever the read sizes, the framer yields the same records.
        #[test]
        fn framing_is_independent_of_read_sizes(
            lines in proptest::collection::vec("[a-z ]{0,40}", 0..30),
            chunk in 1usize..64,
        ) {
            let data: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let (out, _, safe) = run(data.as_bytes(), chunk, 1 << 20);
            let texts: Vec<String> = out.iter().map(|l| String::from_utf8(l.text.to_vec()).unwrap()).collect();
            proptest::prop_assert_eq!(texts, lines);
            proptest::prop_assert_eq!(safe, data.len() as u64);
        }
    }
}
