//! The SV2 data types (spec §3.1): little-endian integers, length-prefixed byte strings and
//! sequences. Every read is bounds-checked; a peer's length prefix never allocates more than
//! the bytes actually present.

use thiserror::Error;

/// Why a payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The payload ended inside a field.
    #[error("payload truncated reading {0}")]
    Truncated(&'static str),
    /// A length prefix exceeds the type's maximum.
    #[error("{field} is {len} bytes, at most {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The type's limit.
        max: usize,
    },
    /// A STR0_255 that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A BOOL byte other than 0 or 1.
    #[error("{0} is not a boolean")]
    NotBool(&'static str),
    /// An OPTION with more than one element.
    #[error("{0} is not an option")]
    NotOption(&'static str),
}

/// Reads fields off a payload in order.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `payload` from the start.
    pub fn new(payload: &'a [u8]) -> Self {
        Reader { buf: payload }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    /// U8.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// U16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// U24.
    pub fn u24(&mut self, field: &'static str) -> Result<u32, WireError> {
        let [a, b, c] = self.array(field)?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    /// U32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// U64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// F32.
    pub fn f32(&mut self, field: &'static str) -> Result<f32, WireError> {
        Ok(f32::from_le_bytes(self.array(field)?))
    }

    /// U256 (and the other fixed 32-byte fields), as on the wire.
    pub fn u256(&mut self, field: &'static str) -> Result<[u8; 32], WireError> {
        self.array(field)
    }

    /// BOOL: one byte, 0 or 1.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::NotBool(field)),
        }
    }

    fn prefixed(
        &mut self,
        len: usize,
        max: usize,
        field: &'static str,
    ) -> Result<&'a [u8], WireError> {
        if len > max {
            return Err(WireError::TooLong { field, len, max });
        }
        self.bytes(len, field)
    }

    /// STR0_255: U8 length, UTF-8.
    pub fn str0_255(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u8(field)?);
        let bytes = self.bytes(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8(field))
    }

    /// B0_32: U8 length, at most 32 bytes.
    pub fn b0_32(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let len = usize::from(self.u8(field)?);
        Ok(self.prefixed(len, 32, field)?.to_vec())
    }

    /// B0_255: U8 length.
    pub fn b0_255(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let len = usize::from(self.u8(field)?);
        Ok(self.bytes(len, field)?.to_vec())
    }

    /// B0_64K: U16 length.
    pub fn b0_64k(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let len = usize::from(self.u16(field)?);
        Ok(self.bytes(len, field)?.to_vec())
    }

    /// B0_16M: U24 length.
    pub fn b0_16m(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let len = self.u24(field)? as usize;
        Ok(self.bytes(len, field)?.to_vec())
    }

    /// SEQ0_255[U256].
    pub fn seq0_255_u256(&mut self, field: &'static str) -> Result<Vec<[u8; 32]>, WireError> {
        let count = usize::from(self.u8(field)?);
        self.fixed_seq(count, field)
    }

    /// SEQ0_64K[U32].
    pub fn seq0_64k_u32(&mut self, field: &'static str) -> Result<Vec<u32>, WireError> {
        let count = usize::from(self.u16(field)?);
        if count.saturating_mul(4) > self.buf.len() {
            return Err(WireError::Truncated(field));
        }
        (0..count).map(|_| self.u32(field)).collect()
    }

    /// SEQ0_64K[U256].
    pub fn seq0_64k_u256(&mut self, field: &'static str) -> Result<Vec<[u8; 32]>, WireError> {
        let count = usize::from(self.u16(field)?);
        self.fixed_seq(count, field)
    }

    /// SEQ0_64K[U16].
    pub fn seq0_64k_u16(&mut self, field: &'static str) -> Result<Vec<u16>, WireError> {
        let count = usize::from(self.u16(field)?);
        if count.saturating_mul(2) > self.buf.len() {
            return Err(WireError::Truncated(field));
        }
        (0..count).map(|_| self.u16(field)).collect()
    }

    /// SEQ0_64K[B0_16M].
    pub fn seq0_64k_b0_16m(&mut self, field: &'static str) -> Result<Vec<Vec<u8>>, WireError> {
        let count = usize::from(self.u16(field)?);
        // Each element takes at least its 3-byte length.
        if count.saturating_mul(3) > self.buf.len() {
            return Err(WireError::Truncated(field));
        }
        (0..count).map(|_| self.b0_16m(field)).collect()
    }

    fn fixed_seq(&mut self, count: usize, field: &'static str) -> Result<Vec<[u8; 32]>, WireError> {
        if count.saturating_mul(32) > self.buf.len() {
            return Err(WireError::Truncated(field));
        }
        (0..count).map(|_| self.u256(field)).collect()
    }

    /// OPTION[U32]: a sequence of zero or one element with a U8 count.
    pub fn option_u32(&mut self, field: &'static str) -> Result<Option<u32>, WireError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.u32(field)?)),
            _ => Err(WireError::NotOption(field)),
        }
    }
}

/// Appends fields to a payload.
#[derive(Debug, Default)]
pub struct Writer {
    /// The payload so far.
    pub buf: Vec<u8>,
}

/// Lengths over a type's limit are a bug in our own code, not in a peer's; they are cut to the
/// limit so that what goes on the wire is always well-formed.
fn clamp(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

impl Writer {
    /// U8.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// U16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// U24 (the top byte of `v` is dropped).
    pub fn u24(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes()[..3]);
        self
    }
    /// U32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// U64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// F32.
    pub fn f32(&mut self, v: f32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// U256 and other fixed 32-byte fields.
    pub fn u256(&mut self, v: &[u8; 32]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// BOOL.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.buf.push(u8::from(v));
        self
    }
    /// Raw bytes, no prefix.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// STR0_255.
    pub fn str0_255(&mut self, v: &str) -> &mut Self {
        let mut end = v.len().min(255);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.b0_255(&v.as_bytes()[..end])
    }
    /// B0_32.
    pub fn b0_32(&mut self, v: &[u8]) -> &mut Self {
        let v = clamp(v, 32);
        self.buf.push(v.len() as u8);
        self.bytes(v)
    }
    /// B0_255.
    pub fn b0_255(&mut self, v: &[u8]) -> &mut Self {
        let v = clamp(v, 255);
        self.buf.push(v.len() as u8);
        self.bytes(v)
    }
    /// B0_64K.
    pub fn b0_64k(&mut self, v: &[u8]) -> &mut Self {
        let v = clamp(v, 0xffff);
        self.u16(v.len() as u16);
        self.bytes(v)
    }
    /// B0_16M.
    pub fn b0_16m(&mut self, v: &[u8]) -> &mut Self {
        let v = clamp(v, 0xff_ffff);
        self.u24(v.len() as u32);
        self.bytes(v)
    }
    /// SEQ0_255[U256].
    pub fn seq0_255_u256(&mut self, v: &[[u8; 32]]) -> &mut Self {
        let v = &v[..v.len().min(255)];
        self.u8(v.len() as u8);
        for item in v {
            self.u256(item);
        }
        self
    }
    /// SEQ0_64K[U32].
    pub fn seq0_64k_u32(&mut self, v: &[u32]) -> &mut Self {
        let v = &v[..v.len().min(0xffff)];
        self.u16(v.len() as u16);
        for item in v {
            self.u32(*item);
        }
        self
    }
    /// SEQ0_64K[U256].
    pub fn seq0_64k_u256(&mut self, v: &[[u8; 32]]) -> &mut Self {
        let v = &v[..v.len().min(0xffff)];
        self.u16(v.len() as u16);
        for item in v {
            self.u256(item);
        }
        self
    }
    /// SEQ0_64K[U16].
    pub fn seq0_64k_u16(&mut self, v: &[u16]) -> &mut Self {
        let v = &v[..v.len().min(0xffff)];
        self.u16(v.len() as u16);
        for item in v {
            self.u16(*item);
        }
        self
    }
    /// SEQ0_64K[B0_16M].
    pub fn seq0_64k_b0_16m(&mut self, v: &[Vec<u8>]) -> &mut Self {
        let v = &v[..v.len().min(0xffff)];
        self.u16(v.len() as u16);
        for item in v {
            self.b0_16m(item);
        }
        self
    }
    /// OPTION[U32].
    pub fn option_u32(&mut self, v: Option<u32>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(x) => self.u8(1).u32(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_type() {
        let mut w = Writer::default();
        w.u8(1)
            .u16(0x0203)
            .u24(0x04_0506)
            .u32(7)
            .u64(8)
            .f32(1.5)
            .u256(&[9; 32])
            .bool(true)
            .str0_255("héllo")
            .b0_32(&[1, 2])
            .b0_64k(&[3; 300])
            .b0_16m(&[4; 5])
            .seq0_255_u256(&[[5; 32], [6; 32]])
            .seq0_64k_u32(&[10, 11])
            .seq0_64k_b0_16m(&[vec![1], vec![]])
            .option_u32(None)
            .option_u32(Some(12));
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("a"), Ok(0x0203));
        assert_eq!(r.u24("a"), Ok(0x04_0506));
        assert_eq!(r.u32("a"), Ok(7));
        assert_eq!(r.u64("a"), Ok(8));
        assert_eq!(r.f32("a"), Ok(1.5));
        assert_eq!(r.u256("a"), Ok([9; 32]));
        assert_eq!(r.bool("a"), Ok(true));
        assert_eq!(r.str0_255("a").as_deref(), Ok("héllo"));
        assert_eq!(r.b0_32("a"), Ok(vec![1, 2]));
        assert_eq!(r.b0_64k("a"), Ok(vec![3; 300]));
        assert_eq!(r.b0_16m("a"), Ok(vec![4; 5]));
        assert_eq!(r.seq0_255_u256("a"), Ok(vec![[5; 32], [6; 32]]));
        assert_eq!(r.seq0_64k_u32("a"), Ok(vec![10, 11]));
        assert_eq!(r.seq0_64k_b0_16m("a"), Ok(vec![vec![1], vec![]]));
        assert_eq!(r.option_u32("a"), Ok(None));
        assert_eq!(r.option_u32("a"), Ok(Some(12)));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn lying_lengths_are_errors_not_allocations() {
        assert_eq!(
            Reader::new(&[0xff, 0xff]).seq0_64k_u32("x"),
            Err(WireError::Truncated("x"))
        );
        assert_eq!(
            Reader::new(&[33]).b0_32("x"),
            Err(WireError::TooLong {
                field: "x",
                len: 33,
                max: 32
            })
        );
        assert_eq!(Reader::new(&[2]).bool("x"), Err(WireError::NotBool("x")));
        assert_eq!(
            Reader::new(&[2, 0xff]).str0_255("x"),
            Err(WireError::Truncated("x"))
        );
    }
}
