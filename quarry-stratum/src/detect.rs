//! One port for both protocols: a Stratum V1 miner opens with a JSON-RPC request line, an SV2
//! miner with 64 bytes of ElligatorSwift key, which are uniformly random.
//!
//! V1 is decided only on evidence random bytes almost never show: after optional whitespace,
//! printable ASCII either for [`V1_PROBE`] bytes or up to a newline at least [`MIN_JSON_LINE`]
//! bytes in when the line opens with `{`, or [`MIN_TEXT_LINE`] bytes in otherwise (a broken
//! client's text still gets V1 errors back). Random bytes pass with odds of about
//! (97/256)^11 / 256² + (97/256)^16 / 256 ≈ 10^-9 per connection. (Deciding V1 on any early
//! newline, as a first version did, misread about one SV2 handshake in 160.)

use crate::v2::noise::ACT1_LEN;

/// Bytes of a V1 opening checked before deciding: a request's first 32 bytes are ASCII
/// (`{"id":1,"method":"mining.subscribe"…`).
pub const V1_PROBE: usize = 32;
/// The shortest `{`-led line accepted as V1 (`{"id":1,"method":"x"}` is 21 bytes).
pub const MIN_JSON_LINE: usize = 12;
/// The shortest other text line accepted as V1.
pub const MIN_TEXT_LINE: usize = 16;

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
    matches!(byte, b' '..=b'~' | b'\t' | b'\r')
}

/// Decides from the first bytes a client sent.
pub fn detect(prefix: &[u8]) -> Detected {
    let Some(start) = prefix.iter().position(|b| !b.is_ascii_whitespace()) else {
        return match prefix.len() >= ACT1_LEN {
            true => Detected::V2,
            false => Detected::NeedMore,
        };
    };
    let line = &prefix[start..];
    let min_line = match line[0] {
        b'{' => MIN_JSON_LINE,
        _ => MIN_TEXT_LINE,
    };
    for (i, &byte) in line.iter().enumerate().take(V1_PROBE) {
        if byte == b'\n' {
            return match i >= min_line {
                true => Detected::V1,
                false => Detected::V2,
            };
        }
        if !is_text(byte) {
            return Detected::V2;
        }
    }
    match line.len() >= V1_PROBE {
        true => Detected::V1,
        false => Detected::NeedMore,
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn tells_the_protocols_apart() {
        let subscribe = br#"{"id":1,"method":"mining.subscribe","params":[]}"#;
        assert_eq!(detect(&subscribe[..20]), Detected::NeedMore);
        assert_eq!(detect(subscribe), Detected::V1);
        assert_eq!(detect(b"{\"id\":1,\"method\":\"x\"}\n"), Detected::V1);
        assert_eq!(
            detect(b"\r\n  {\"id\":1,\"method\":\"x\"}\n"),
            Detected::V1,
            "leading blank lines"
        );
        assert_eq!(detect(&[b'{'; 64]), Detected::V1);
        assert_eq!(
            detect(b"this is not json\n"),
            Detected::V1,
            "a broken V1 client gets V1 errors"
        );
        assert_eq!(detect(b"GET / HTTP/1.1\r\nHost: pool\r\n"), Detected::V2);
        assert_eq!(detect(b"{\"id\x01"), Detected::V2);
        assert_eq!(detect(&[0x80, b'{']), Detected::V2);
        assert_eq!(detect(b""), Detected::NeedMore);
        assert_eq!(detect(b"\n"), Detected::NeedMore);
    }

    #[test]
    fn random_handshakes_are_not_mistaken_for_json() {
        // What the first version got wrong: a key starting with a newline, or with a short
        // printable run and then a newline.
        assert_eq!(detect(&[b'\n'; 1]), Detected::NeedMore);
        assert_eq!(detect(b"\n\x93\x01"), Detected::V2);
        assert_eq!(detect(b"{a\n\x93"), Detected::V2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200_000 {
            let mut act1 = [0u8; ACT1_LEN];
            rng.fill(&mut act1[..]);
            assert_eq!(detect(&act1), Detected::V2, "{act1:?}");
        }
    }
}
