//! Targets and difficulties.
//!
//! A [`Target`] is a 256-bit number; a hash meets it when the hash, read as a little-endian number,
//! is not above it. A [`Difficulty`] is the pool-facing scale: `target = DIFF1 / difficulty` with
//! `DIFF1 = 0xffff · 2^208` (the "bdiff" every Stratum miner uses). Difficulties are real numbers:
//! a CPU miner on regtest needs shares of difficulty 0.001 and below.

use std::fmt;

use crate::hash::Hash32;

/// `DIFF1` as a float: 0xffff · 2^208.
const DIFF1_F64: f64 = 65535.0 * 411376139330301510538742295639337626245683966408394965837152256.0;

/// A 256-bit proof-of-work target, stored little-endian like the hashes it is compared with.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target([u8; 32]);

impl Target {
    /// The easiest possible target: every hash meets it.
    pub const MAX: Target = Target([0xff; 32]);

    /// The target of difficulty 1.
    pub const DIFF1: Target = {
        let mut bytes = [0u8; 32];
        bytes[26] = 0xff;
        bytes[27] = 0xff;
        Target(bytes)
    };

    /// From 32 little-endian bytes.
    pub fn from_le_bytes(bytes: [u8; 32]) -> Self {
        Target(bytes)
    }

    /// The 32 little-endian bytes.
    pub fn to_le_bytes(self) -> [u8; 32] {
        self.0
    }

    /// From the big-endian hex that `getblocktemplate` prints in `target`.
    pub fn from_be_hex(text: &str) -> Option<Self> {
        let mut bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
        bytes.reverse();
        Some(Target(bytes))
    }

    /// From a block header's compact `bits`.
    pub fn from_compact(bits: u32) -> Self {
        let target = bitcoin::Target::from_compact(bitcoin::CompactTarget::from_consensus(bits));
        Target(target.to_le_bytes())
    }

    /// From compact `bits` as Bitcoin Core's `CheckProofOfWork` accepts them: `None` when they
    /// encode a negative, zero or overflowing (over 256 bits) target, which no hash meets.
    /// Use this for bits that come from outside, such as an aux chain's `createauxblock`.
    pub fn from_compact_checked(bits: u32) -> Option<Self> {
        let exponent = (bits >> 24) as usize;
        let mantissa = bits & 0x007f_ffff;
        // The sign bit (0x00800000) makes the value negative unless the mantissa is zero.
        if mantissa == 0 || bits & 0x0080_0000 != 0 {
            return None;
        }
        let mut bytes = [0u8; 32];
        if exponent <= 3 {
            let value = mantissa >> (8 * (3 - exponent));
            if value == 0 {
                return None;
            }
            bytes[..4].copy_from_slice(&value.to_le_bytes());
        } else {
            // The mantissa's three bytes land at exponent-3 and up; a non-zero one at 32 or
            // above is Core's `fOverflow`.
            for (i, byte) in mantissa.to_le_bytes()[..3].iter().enumerate() {
                let at = exponent - 3 + i;
                match bytes.get_mut(at) {
                    Some(slot) => *slot = *byte,
                    None if *byte != 0 => return None,
                    None => {}
                }
            }
        }
        Some(Target(bytes))
    }

    /// The target for a share difficulty: `DIFF1 / difficulty`, saturating at [`Target::MAX`].
    pub fn from_difficulty(difficulty: Difficulty) -> Self {
        let quotient = 65535.0 / difficulty.0;
        if !quotient.is_finite() {
            return Target::MAX;
        }
        // quotient = mantissa · 2^exponent exactly; the target is quotient · 2^208.
        let bits = quotient.to_bits();
        let raw_exponent = ((bits >> 52) & 0x7ff) as i32;
        let fraction = bits & ((1u64 << 52) - 1);
        let (mantissa, exponent) = if raw_exponent == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1u64 << 52), raw_exponent - 1075)
        };
        let shift = exponent + 208;
        let width = 64 - mantissa.leading_zeros() as i32;
        if shift + width > 256 {
            return Target::MAX;
        }
        let mut limbs = [0u64; 4];
        if shift >= 0 {
            let limb = (shift / 64) as usize;
            let offset = (shift % 64) as u32;
            limbs[limb] = mantissa << offset;
            if offset != 0 && limb + 1 < 4 {
                limbs[limb + 1] = mantissa >> (64 - offset);
            }
        } else {
            let right = (-shift) as u32;
            limbs[0] = if right >= 64 { 0 } else { mantissa >> right };
        }
        let mut bytes = [0u8; 32];
        for (i, limb) in limbs.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        Target(bytes)
    }

    /// Whether `hash` (internal byte order) meets this target.
    #[inline]
    pub fn is_met_by(&self, hash: &Hash32) -> bool {
        for i in (0..32).rev() {
            if hash[i] != self.0[i] {
                return hash[i] < self.0[i];
            }
        }
        true
    }

    /// The difficulty of this target (an estimate: floats, not for consensus).
    pub fn difficulty(&self) -> f64 {
        DIFF1_F64 / le_bytes_to_f64(&self.0).max(1.0)
    }

    /// The smaller (harder) of two targets.
    pub fn min(self, other: Target) -> Target {
        if self.is_met_by(&other.0) {
            other
        } else {
            self
        }
    }

    /// The larger (easier) of two targets.
    pub fn max(self, other: Target) -> Target {
        if self.is_met_by(&other.0) {
            self
        } else {
            other
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut be = self.0;
        be.reverse();
        write!(f, "Target({})", hex::encode(be))
    }
}

/// The difficulty a hash achieved: `DIFF1 / hash`. Used for statistics and "best share".
pub fn hash_difficulty(hash: &Hash32) -> f64 {
    DIFF1_F64 / le_bytes_to_f64(hash).max(1.0)
}

fn le_bytes_to_f64(bytes: &[u8; 32]) -> f64 {
    bytes
        .iter()
        .rev()
        .fold(0.0f64, |acc, &byte| acc * 256.0 + f64::from(byte))
}

/// A share difficulty: finite and strictly positive.
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
pub struct Difficulty(f64);

impl Difficulty {
    /// Difficulty 1.
    pub const ONE: Difficulty = Difficulty(1.0);

    /// A difficulty, if `value` is finite and above zero.
    pub fn new(value: f64) -> Option<Self> {
        (value.is_finite() && value > 0.0).then_some(Difficulty(value))
    }

    /// The number.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Clamps into `[min, max]`.
    pub fn clamp(self, min: Difficulty, max: Difficulty) -> Difficulty {
        Difficulty(self.0.max(min.0).min(max.0))
    }

    /// The smaller of two difficulties.
    pub fn min(self, other: Difficulty) -> Difficulty {
        Difficulty(self.0.min(other.0))
    }

    /// The larger of two difficulties.
    pub fn max(self, other: Difficulty) -> Difficulty {
        Difficulty(self.0.max(other.0))
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_one_is_diff1() {
        let target = Target::from_difficulty(Difficulty::ONE);
        assert_eq!(target, Target::DIFF1);
        assert!((target.difficulty() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn powers_of_two_are_exact() {
        let target = Target::from_difficulty(Difficulty::new(256.0).expect("positive"));
        let mut expected = [0u8; 32];
        expected[25] = 0xff;
        expected[26] = 0xff;
        assert_eq!(target.to_le_bytes(), expected);
    }

    #[test]
    fn tiny_difficulty_saturates() {
        let target = Target::from_difficulty(Difficulty::new(1e-12).expect("positive"));
        assert_eq!(target, Target::MAX);
        let regtest = Target::from_compact(0x207fffff);
        let d = regtest.difficulty();
        assert!((d - 4.656542373906925e-10).abs() < 1e-18, "{d}");
        let round_trip = Target::from_difficulty(Difficulty::new(d).expect("positive"));
        assert!(round_trip.difficulty() / d - 1.0 < 1e-9);
    }

    #[test]
    fn sub_one_difficulty_is_easier() {
        let easy = Target::from_difficulty(Difficulty::new(0.001).expect("positive"));
        assert!(easy.is_met_by(&Target::DIFF1.to_le_bytes()));
        assert!(!Target::DIFF1.is_met_by(&easy.to_le_bytes()));
        assert!((easy.difficulty() - 0.001).abs() < 1e-12);
    }

    #[test]
    fn compact_matches_bitcoin() {
        let target = Target::from_compact(0x1d00ffff);
        assert_eq!(target, Target::DIFF1);
    }

    #[test]
    fn checked_compact_refuses_what_core_refuses() {
        for bits in [
            0x1d00ffff, 0x207fffff, 0x184927b0, 0x03123456, 0x01120000, 0x2100ffff,
        ] {
            assert_eq!(
                Target::from_compact_checked(bits),
                Some(Target::from_compact(bits)),
                "{bits:08x}"
            );
        }
        // Zero mantissa, negative, shifted out to zero, and overflowing.
        for bits in [
            0x1d000000, 0x1d800001, 0x04923456, 0x01003456, 0x2201ffff, 0x23000001, 0xff7fffff,
        ] {
            assert_eq!(Target::from_compact_checked(bits), None, "{bits:08x}");
        }
        // The largest exponents that still fit: one byte at 34, two at 33.
        assert!(Target::from_compact_checked(0x220000ff).is_some());
        assert!(Target::from_compact_checked(0x2100ffff).is_some());
    }

    #[test]
    fn comparison_is_numeric() {
        let target = Target::DIFF1;
        let mut hash = [0u8; 32];
        hash[27] = 0xff;
        hash[26] = 0xff;
        assert!(target.is_met_by(&hash));
        hash[0] = 1;
        assert!(!target.is_met_by(&hash));
        assert!(Target::MAX.is_met_by(&[0xff; 32]));
    }

    #[test]
    fn invalid_difficulties_are_refused() {
        assert!(Difficulty::new(0.0).is_none());
        assert!(Difficulty::new(-1.0).is_none());
        assert!(Difficulty::new(f64::NAN).is_none());
        assert!(Difficulty::new(f64::INFINITY).is_none());
    }
}
