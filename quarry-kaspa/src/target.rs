//! Kaspa's stratum difficulty: share target = 2^224 / difficulty, so difficulty 1 is 2^32
//! expected hashes (the bridges' `maxTarget`). Difficulties are real numbers: a devnet block is
//! about 10^-4 of difficulty 1, and a CPU miner needs shares far below 1.

use kaspa_math::Uint256;
use quarry_work::Difficulty;

/// 2^224 as a float: the target of difficulty 1.
const DIFF1: f64 = 26959946667150639794667015087019630673637144422540572481103610249216.0;

/// The share target for `difficulty`: `floor(2^224 / difficulty)`, saturating at the largest
/// target.
pub fn target_for(difficulty: Difficulty) -> Uint256 {
    from_f64(DIFF1 / difficulty.get())
}

/// The difficulty a target stands for: `2^224 / target`.
pub fn difficulty_of(target: &Uint256) -> f64 {
    match target.is_zero() {
        true => f64::INFINITY,
        false => DIFF1 / target.as_f64(),
    }
}

/// A float as a 256-bit integer (truncated), saturating.
fn from_f64(value: f64) -> Uint256 {
    if value.is_nan() || value < 1.0 {
        return Uint256::ZERO;
    }
    if value >= 2f64.powi(256) {
        return Uint256::MAX;
    }
    let bits = value.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let mantissa = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
    if exponent >= 0 {
        Uint256::from_u64(mantissa).wrapping_shl(exponent as u32)
    } else {
        Uint256::from_u64(mantissa >> exponent.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_for(d: f64) -> Uint256 {
        super::target_for(Difficulty::new(d).expect("a difficulty"))
    }

    #[test]
    fn difficulty_one_is_two_to_the_224() {
        assert_eq!(target_for(1.0), Uint256::from_u64(1).wrapping_shl(224));
        assert_eq!(target_for(4096.0), Uint256::from_u64(1).wrapping_shl(212));
        assert_eq!(target_for(0.5), Uint256::from_u64(1).wrapping_shl(225));
        assert_eq!(
            difficulty_of(&Uint256::from_u64(1).wrapping_shl(212)),
            4096.0
        );
    }

    /// The note's figures: the testnet genesis target (bits 0x1e7fffff) is difficulty
    /// 256/8388607, the devnet genesis (0x1e21bc1c) about 1.16e-4.
    #[test]
    fn genesis_targets_as_difficulties() {
        let testnet = difficulty_of(&Uint256::from_compact_target_bits(0x1e7f_ffff));
        assert!((testnet - 256.0 / 8_388_607.0).abs() < 1e-15, "{testnet}");
        let devnet = difficulty_of(&Uint256::from_compact_target_bits(0x1e21_bc1c));
        assert!((devnet - 256.0 / 2_210_844.0).abs() < 1e-12, "{devnet}");
    }

    #[test]
    fn fractional_and_extreme_difficulties() {
        let d = 1.5e-4;
        let back = difficulty_of(&target_for(d));
        assert!((back - d).abs() / d < 1e-12, "{back}");
        assert_eq!(target_for(1e-80), Uint256::MAX);
        assert_eq!(target_for(1e80), Uint256::ZERO);
    }
}
