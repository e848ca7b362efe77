//! Splitting a byte stream into bounded lines.

/// Longest line a pool accepts from a miner, newline excluded. Real requests are under 1 KiB;
/// the cap keeps a peer from making us buffer without end.
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// Longest line a miner accepts from a pool: a `mining.notify` carries the coinbase, which pays
/// hundreds of miners at pools that pay in the coinbase (a 1,000-output coinbase is ~70 KB of
/// hex).
pub const MAX_POOL_LINE_LEN: usize = 256 * 1024;

/// The peer sent a longer line than the reader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line too long")]
pub struct LineTooLong;

/// Buffers bytes and yields complete lines of at most `LIMIT` bytes. The buffer grows only as far
/// as the longest line and is released once drained, so an idle connection holds no buffer at
/// all.
#[derive(Debug, Default)]
pub struct LineReader<const LIMIT: usize = MAX_LINE_LEN> {
    buf: Vec<u8>,
    start: usize,
}

impl<const LIMIT: usize> LineReader<LIMIT> {
    /// Appends received bytes.
    ///
    /// # Errors
    /// When the unfinished line would exceed `LIMIT`.
    pub fn push(&mut self, data: &[u8]) -> Result<(), LineTooLong> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
        let pending = match self.buf.iter().rposition(|&b| b == b'\n') {
            Some(newline) => self.buf.len() - newline - 1,
            None => self.buf.len(),
        };
        if pending > LIMIT {
            self.buf.clear();
            return Err(LineTooLong);
        }
        Ok(())
    }

    /// The next complete line without its `\n` (or `\r\n`).
    ///
    /// # Errors
    /// A complete line longer than `LIMIT`.
    pub fn next_line(&mut self) -> Option<Result<&[u8], LineTooLong>> {
        if self.start == self.buf.len() {
            self.release();
            return None;
        }
        let rest = &self.buf[self.start..];
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let line_start = self.start;
        self.start += newline + 1;
        if newline > LIMIT {
            return Some(Err(LineTooLong));
        }
        let mut line = &self.buf[line_start..line_start + newline];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        Some(Ok(line))
    }

    /// Drops a drained buffer: an idle connection holds none.
    fn release(&mut self) {
        self.start = 0;
        self.buf = Vec::new();
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_pushes() {
        let mut reader: LineReader = LineReader::default();
        reader.push(b"{\"a\":1}\r\n{\"b\"").expect("short");
        assert_eq!(reader.next_line(), Some(Ok(&b"{\"a\":1}"[..])));
        assert_eq!(reader.next_line(), None);
        reader.push(b":2}\n").expect("short");
        assert_eq!(reader.next_line(), Some(Ok(&b"{\"b\":2}"[..])));
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn a_drained_reader_gives_back_a_large_buffer() {
        let mut reader: LineReader = LineReader::default();
        let mut line = vec![b'x'; 4000];
        line.push(b'\n');
        reader.push(&line).expect("short");
        assert!(matches!(reader.next_line(), Some(Ok(l)) if l.len() == 4000));
        assert_eq!(reader.next_line(), None);
        assert_eq!(reader.buf.capacity(), 0, "idle connections hold no buffer");
        reader.push(b"{}\n").expect("short");
        assert_eq!(reader.next_line(), Some(Ok(&b"{}"[..])));
    }

    #[test]
    fn caps_unterminated_and_terminated_lines() {
        let mut reader: LineReader = LineReader::default();
        assert_eq!(reader.push(&vec![b'x'; MAX_LINE_LEN + 1]), Err(LineTooLong));
        let mut reader: LineReader = LineReader::default();
        let mut long = vec![b'x'; MAX_LINE_LEN + 1];
        long.push(b'\n');
        // A long line arriving whole in one read is caught by next_line.
        reader
            .push(&long)
            .expect("nothing pending after the newline");
        assert_eq!(reader.next_line(), Some(Err(LineTooLong)));
    }

    #[test]
    fn a_miner_takes_a_pools_long_notify() {
        // A 1,000-output coinbase in a notify: ~70 KB, refused from a miner, taken from a pool.
        let mut notify = vec![b'x'; 70_000];
        notify.push(b'\n');
        let mut from_miner: LineReader = LineReader::default();
        assert_eq!(from_miner.push(&notify), Ok(()));
        assert_eq!(from_miner.next_line(), Some(Err(LineTooLong)));
        let mut from_pool = LineReader::<MAX_POOL_LINE_LEN>::default();
        from_pool.push(&notify).expect("within the pool's limit");
        assert!(matches!(from_pool.next_line(), Some(Ok(l)) if l.len() == 70_000));
        let mut huge = LineReader::<MAX_POOL_LINE_LEN>::default();
        assert_eq!(
            huge.push(&vec![b'x'; MAX_POOL_LINE_LEN + 1]),
            Err(LineTooLong)
        );
    }
}
