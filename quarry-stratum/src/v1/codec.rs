//! Splitting a byte stream into bounded lines.

/// Longest line accepted, newline excluded. Real requests are under 1 KiB; the cap keeps a
/// peer from making us buffer without end.
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// The peer sent more than [`MAX_LINE_LEN`] bytes without a newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {MAX_LINE_LEN} bytes")]
pub struct LineTooLong;

/// Buffers bytes and yields complete lines. The buffer grows only as far as the longest line and
/// is released once drained, so an idle connection holds no buffer at all.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    start: usize,
}

impl LineReader {
    /// Appends received bytes.
    ///
    /// # Errors
    /// When the unfinished line would exceed [`MAX_LINE_LEN`].
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
        if pending > MAX_LINE_LEN {
            self.buf.clear();
            return Err(LineTooLong);
        }
        Ok(())
    }

    /// The next complete line without its `\n` (or `\r\n`).
    ///
    /// # Errors
    /// A complete line longer than [`MAX_LINE_LEN`].
    pub fn next_line(&mut self) -> Option<Result<&[u8], LineTooLong>> {
        if self.start == self.buf.len() {
            self.release();
            return None;
        }
        let rest = &self.buf[self.start..];
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let line_start = self.start;
        self.start += newline + 1;
        if newline > MAX_LINE_LEN {
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
        let mut reader = LineReader::default();
        reader.push(b"{\"a\":1}\r\n{\"b\"").expect("short");
        assert_eq!(reader.next_line(), Some(Ok(&b"{\"a\":1}"[..])));
        assert_eq!(reader.next_line(), None);
        reader.push(b":2}\n").expect("short");
        assert_eq!(reader.next_line(), Some(Ok(&b"{\"b\":2}"[..])));
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn a_drained_reader_gives_back_a_large_buffer() {
        let mut reader = LineReader::default();
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
        let mut reader = LineReader::default();
        assert_eq!(reader.push(&vec![b'x'; MAX_LINE_LEN + 1]), Err(LineTooLong));
        let mut reader = LineReader::default();
        let mut long = vec![b'x'; MAX_LINE_LEN + 1];
        long.push(b'\n');
        // A long line arriving whole in one read is caught by next_line.
        reader
            .push(&long)
            .expect("nothing pending after the newline");
        assert_eq!(reader.next_line(), Some(Err(LineTooLong)));
    }
}
