//! SV2 frames (spec §3.2): a 6-byte header — extension_type U16 (bit 15: the payload starts with a
//! channel id), msg_type U8, msg_length U24 — and the payload.

use super::wire::Reader;

/// Plaintext header size.
pub const HEADER_LEN: usize = 6;

/// Bit 15 of `extension_type`: the message is addressed to a channel. SRI and the wire use
/// 0x8000 (the spec's text calls it both "least significant" and "MSB").
pub const CHANNEL_BIT: u16 = 0x8000;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Extension type, with the channel bit.
    pub extension_type: u16,
    /// Message type.
    pub msg_type: u8,
    /// Payload length (U24).
    pub length: u32,
}

impl Header {
    /// Parses the six header bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        Header {
            extension_type: u16::from_le_bytes([bytes[0], bytes[1]]),
            msg_type: bytes[2],
            length: u32::from_le_bytes([bytes[3], bytes[4], bytes[5], 0]),
        }
    }

    /// The six header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let ext = self.extension_type.to_le_bytes();
        let len = self.length.to_le_bytes();
        [ext[0], ext[1], self.msg_type, len[0], len[1], len[2]]
    }

    /// Whether the payload begins with a channel id.
    pub fn is_channel_msg(&self) -> bool {
        self.extension_type & CHANNEL_BIT != 0
    }

    /// The extension, without the channel bit (0 for the core protocols).
    pub fn extension(&self) -> u16 {
        self.extension_type & !CHANNEL_BIT
    }
}

/// A decoded (plaintext) frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its header.
    pub header: Header,
    /// Exactly `header.length` bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The channel id of a channel message.
    pub fn channel_id(&self) -> Option<u32> {
        if !self.header.is_channel_msg() {
            return None;
        }
        Reader::new(&self.payload).u32("channel_id").ok()
    }

    /// Header and payload as one plaintext buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Reassembles plaintext frames from a byte stream (unencrypted SV2, used by tests and tools).
#[derive(Debug)]
pub struct PlainFrameReader {
    buf: Vec<u8>,
    max_payload: usize,
}

/// A frame over the reader's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the {max}-byte limit")]
pub struct FrameTooLarge {
    /// Declared payload length.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

impl PlainFrameReader {
    /// A reader refusing payloads over `max_payload`.
    pub fn new(max_payload: usize) -> Self {
        PlainFrameReader {
            buf: Vec::new(),
            max_payload,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameTooLarge> {
        let Some(head) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(head);
        let header = Header::parse(&bytes);
        let len = header.length as usize;
        if len > self.max_payload {
            return Err(FrameTooLarge {
                len,
                max: self.max_payload,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_spec() {
        let header = Header {
            extension_type: CHANNEL_BIT,
            msg_type: 0x1f,
            length: 0x01_0203,
        };
        assert_eq!(header.encode(), [0x00, 0x80, 0x1f, 0x03, 0x02, 0x01]);
        assert_eq!(Header::parse(&header.encode()), header);
        assert!(header.is_channel_msg());
        assert_eq!(header.extension(), 0);
    }

    #[test]
    fn plain_reader_reassembles_and_bounds() {
        let frame = Frame {
            header: Header {
                extension_type: CHANNEL_BIT,
                msg_type: 1,
                length: 4,
            },
            payload: 7u32.to_le_bytes().to_vec(),
        };
        let bytes = frame.to_bytes();
        let mut reader = PlainFrameReader::new(16);
        reader.push(&bytes[..5]);
        assert_eq!(reader.next_frame(), Ok(None));
        reader.push(&bytes[5..]);
        let got = reader.next_frame().expect("in bounds").expect("complete");
        assert_eq!(got.channel_id(), Some(7));
        let mut big = PlainFrameReader::new(3);
        big.push(&bytes);
        assert_eq!(big.next_frame(), Err(FrameTooLarge { len: 4, max: 3 }));
    }
}
