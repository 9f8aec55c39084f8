//! ClickHouse's RowBinary format, the subset the store uses: exact bytes
//! both ways (a log line need not be UTF-8), no escaping, little-endian
//! integers, strings and arrays prefixed with their LEB128 length.
//!
//! Pure: encoding into and decoding from byte slices.

/// Appends an unsigned LEB128 integer.
pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Appends a String.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Appends an Array(String).
pub fn strings<'a>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a [u8]>) {
    varint(out, items.len() as u64);
    for s in items {
        string(out, s);
    }
}

/// A RowBinary reply that ended early or holds an impossible length.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed RowBinary reply at byte {0}")]
pub struct Malformed(pub usize);

/// Reads RowBinary values in order.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a whole reply.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed(self.pos))?;
        let s = self.data.get(self.pos..end).ok_or(Malformed(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    /// A LEB128 integer.
    pub fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed(self.pos))
    }

    /// A String.
    pub fn string(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| Malformed(self.pos))?)
    }

    /// An Array(String).
    pub fn strings(&mut self) -> Result<Vec<&'a [u8]>, Malformed> {
        let n = self.varint()?;
        if n > (self.data.len() - self.pos) as u64 {
            return Err(Malformed(self.pos));
        }
        (0..n).map(|_| self.string()).collect()
    }

    /// An Int64.
    pub fn i64(&mut self) -> Result<i64, Malformed> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| Malformed(self.pos))?,
        ))
    }

    /// A UInt64.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| Malformed(self.pos))?,
        ))
    }

    /// A UInt32.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| Malformed(self.pos))?,
        ))
    }

    /// A UInt8.
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_truncation_is_an_error() {
        let mut b = Vec::new();
        string(&mut b, b"\xff\x00line\n");
        strings(&mut b, [&b"app"[..], b"team"].into_iter());
        b.extend_from_slice(&(-5i64).to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        varint(&mut b, 300);
        let mut r = Reader::new(&b);
        assert_eq!(r.string().unwrap(), b"\xff\x00line\n");
        assert_eq!(r.strings().unwrap(), vec![&b"app"[..], b"team"]);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.u64().unwrap(), u64::MAX);
        assert_eq!(r.varint().unwrap(), 300);
        assert!(r.done());
        let mut short = Reader::new(&b[..3]);
        assert!(short.string().is_err());
        let mut huge = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(huge.strings().is_err());
    }
}
