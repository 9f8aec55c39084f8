//! Building and reading the columns of a [`LineBatch`] one line at a time.

use bytes::Bytes;

use crate::v1::{LineBatch, Stream};
use crate::CodecError;

/// Flag bit: a partial run that never got its final chunk.
pub const UNTERMINATED: u32 = 1;
/// Flag bit: a piece of an over-long line (not the last piece).
pub const CUT: u32 = 2;
/// Flag bit: a record that was neither CRI nor docker json.
pub const UNPARSED: u32 = 4;

/// One line of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line {
    /// Index into the request's ranges.
    pub range: u32,
    /// Timestamp, ns since the epoch.
    pub ts: i64,
    /// Offset of the line's first record in its file.
    pub offset: u64,
    /// Stream (a [`Stream`] value).
    pub stream: i32,
    /// Flag bits ([`UNTERMINATED`], [`CUT`], [`UNPARSED`]).
    pub flags: u32,
    /// The message.
    pub text: Bytes,
}

impl Line {
    /// The stream, unknown values as [`Stream::Unknown`].
    pub fn stream(&self) -> Stream {
        Stream::try_from(self.stream).unwrap_or(Stream::Unknown)
    }
}

/// Appends lines to a [`LineBatch`]'s columns.
#[derive(Debug, Default)]
pub struct LinesBuilder {
    batch: LineBatch,
    text: Vec<u8>,
    last_ts: i64,
    last_offset: u64,
}

impl LinesBuilder {
    /// Appends one line.
    pub fn push(&mut self, range: u32, ts: i64, offset: u64, stream: i32, flags: u32, text: &[u8]) {
        let b = &mut self.batch;
        b.range.push(range);
        b.ts_delta.push(ts.wrapping_sub(self.last_ts));
        b.offset_delta
            .push(offset.wrapping_sub(self.last_offset) as i64);
        b.stream.push(stream);
        b.flags.push(flags);
        b.len.push(text.len() as u32);
        self.text.extend_from_slice(text);
        self.last_ts = ts;
        self.last_offset = offset;
    }

    /// Appends a decoded line.
    pub fn push_line(&mut self, l: &Line) {
        self.push(l.range, l.ts, l.offset, l.stream, l.flags, &l.text);
    }

    /// Lines so far.
    pub fn len(&self) -> usize {
        self.batch.range.len()
    }

    /// Whether no line was added.
    pub fn is_empty(&self) -> bool {
        self.batch.range.is_empty()
    }

    /// Bytes of text so far.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The finished batch; the builder is empty again.
    pub fn finish(&mut self) -> LineBatch {
        let mut b = std::mem::take(&mut self.batch);
        b.text = Bytes::from(std::mem::take(&mut self.text));
        self.last_ts = 0;
        self.last_offset = 0;
        b
    }
}

impl LineBatch {
    /// Number of lines.
    pub fn line_count(&self) -> usize {
        self.range.len()
    }

    /// Checks that the columns agree with each other and that every line
    /// names one of `ranges` ranges: after this, [`LineBatch::lines`]
    /// cannot fail.
    pub fn check(&self, ranges: usize) -> Result<(), CodecError> {
        let n = self.range.len();
        for (name, len) in [
            ("ts_delta", self.ts_delta.len()),
            ("offset_delta", self.offset_delta.len()),
            ("stream", self.stream.len()),
            ("flags", self.flags.len()),
            ("len", self.len.len()),
        ] {
            if len != n {
                return Err(CodecError::Columns(format!(
                    "{name} has {len} values for {n} lines"
                )));
            }
        }
        let total: u64 = self.len.iter().map(|&l| l as u64).sum();
        if total != self.text.len() as u64 {
            return Err(CodecError::Columns(format!(
                "line lengths add up to {total} bytes, but text has {}",
                self.text.len()
            )));
        }
        if let Some((i, &r)) = self
            .range
            .iter()
            .enumerate()
            .find(|(_, &r)| r as usize >= ranges)
        {
            return Err(CodecError::BadRange {
                line: i,
                range: r,
                ranges,
            });
        }
        Ok(())
    }

    /// The lines, in order. Text is sliced from the batch, not copied.
    /// On a batch that failed [`LineBatch::check`] it stops early.
    pub fn lines(&self) -> impl Iterator<Item = Line> + '_ {
        let mut ts = 0i64;
        let mut offset = 0u64;
        let mut pos = 0usize;
        (0..self.line_count()).map_while(move |i| {
            ts = ts.wrapping_add(*self.ts_delta.get(i)?);
            offset = offset.wrapping_add(*self.offset_delta.get(i)? as u64);
            let len = *self.len.get(i)? as usize;
            let text = self
                .text
                .get(pos..pos + len)
                .map(|_| self.text.slice(pos..pos + len))?;
            pos += len;
            Some(Line {
                range: self.range[i],
                ts,
                offset,
                stream: *self.stream.get(i)?,
                flags: *self.flags.get(i)?,
                text,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_lines_with_any_offsets_and_times() {
        let lines = vec![
            Line {
                range: 0,
                ts: i64::MAX,
                offset: u64::MAX,
                stream: 1,
                flags: CUT,
                text: Bytes::from_static(b"a"),
            },
            Line {
                range: 1,
                ts: i64::MIN,
                offset: 0,
                stream: 2,
                flags: 0,
                text: Bytes::from_static(b""),
            },
            Line {
                range: 0,
                ts: 5,
                offset: 7,
                stream: 0,
                flags: UNPARSED | UNTERMINATED,
                text: Bytes::from_static(b"\xff\x00"),
            },
        ];
        let mut b = LinesBuilder::default();
        for l in &lines {
            b.push_line(l);
        }
        assert_eq!(b.len(), 3);
        let batch = b.finish();
        assert!(b.is_empty());
        batch.check(2).unwrap();
        assert_eq!(batch.lines().collect::<Vec<_>>(), lines);
        assert!(matches!(
            batch.check(1),
            Err(CodecError::BadRange { line: 1, .. })
        ));
    }

    #[test]
    fn inconsistent_columns_are_refused() {
        let mut b = LinesBuilder::default();
        b.push(0, 1, 2, 1, 0, b"hello");
        let good = b.finish();
        let mut bad = good.clone();
        bad.len[0] = 6;
        assert!(bad.check(1).is_err());
        assert_eq!(
            bad.lines().count(),
            0,
            "iteration stops instead of panicking"
        );
        let mut bad = good.clone();
        bad.flags.clear();
        assert!(bad.check(1).is_err());
        assert_eq!(bad.lines().count(), 0);
    }
}
