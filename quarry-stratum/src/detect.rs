//! One port for both protocols: a Stratum V1 miner opens with a JSON line, an SV2 miner with 64
//! bytes of ElligatorSwift key, which are uniformly random. Printable ASCII up to a newline (or
//! for 64 bytes) is V1; anything else is V2. Random bytes pass as V1 with odds of about
//! (97/256)^64 ≈ 10^-27.

use crate::v2::noise::ACT1_LEN;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// JSON lines.
    V1,
    /// Noise handshake, then SV2 frames.
    V2,
    /// Not decided yet: read more.
    NeedMore,
}

fn is_text(byte: u8) -> bool {
    matches!(byte, b' '..=b'~' | b'\t' | b'\r' | b'\n')
}

/// Decides from the first bytes a client sent.
pub fn detect(prefix: &[u8]) -> Detected {
    for (i, &byte) in prefix.iter().enumerate() {
        if !is_text(byte) {
            return Detected::V2;
        }
        if byte == b'\n' || i + 1 >= ACT1_LEN {
            return Detected::V1;
        }
    }
    Detected::NeedMore
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_protocols_apart() {
        let subscribe = br#"{"id":1,"method":"mining.subscribe","params":[]}"#;
        assert_eq!(detect(subscribe), Detected::NeedMore);
        assert_eq!(
            detect(&[subscribe.as_slice(), b"\n"].concat()),
            Detected::V1
        );
        assert_eq!(detect(&[b'{'; 64]), Detected::V1);
        assert_eq!(detect(b"{\"id\x01"), Detected::V2);
        assert_eq!(detect(&[0x80, b'{']), Detected::V2);
        assert_eq!(detect(b""), Detected::NeedMore);
    }
}
