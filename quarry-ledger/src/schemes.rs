//! Reward schemes, as integer arithmetic.
//!
//! Money is integer: block rewards in satoshis, balances in millisatoshis (PPS credits for tiny
//! shares are fractions of a satoshi; keeping them in msat loses nothing that a payout could
//! pay). Share difficulties are real numbers; they become integer *weights* (difficulty · 2^48)
//! before any money is divided, and every division hands out its remainder by the largest
//! remainder method, so the parts always sum to the whole.

use std::collections::BTreeMap;

pub use crate::amount::{Msat, Sat};

/// Parts per million: fees and split percentages.
pub const PPM: u64 = 1_000_000;

/// Fixed-point scale of share weights: 2^48 per unit of difficulty, so that even regtest
/// difficulties (~5e-10) keep 17 bits of precision.
const WEIGHT_SCALE: f64 = 281_474_976_710_656.0;

/// `ppm` parts per million of `amount` (capped at the whole), rounded down: every fee.
pub fn ppm_of(amount: Sat, ppm: u64) -> Sat {
    // Below `amount`, so it fits in u64.
    Sat((u128::from(amount.0) * u128::from(ppm.min(PPM)) / u128::from(PPM)) as u64)
}

/// A share's weight: its difficulty in fixed point.
pub fn weight(difficulty: f64) -> u128 {
    if difficulty.is_finite() && difficulty > 0.0 {
        (difficulty * WEIGHT_SCALE).round() as u128
    } else {
        0
    }
}

/// Splits `total` in proportion to `weights`, exactly: the parts sum to `total` (when any
/// weight is non-zero). Leftover units go to the largest remainders; ties go to the earlier key
/// in order, so the result is deterministic.
pub fn distribute<K: Ord + Clone>(total: u64, weights: &BTreeMap<K, u128>) -> BTreeMap<K, u64> {
    let mut sum: u128 = weights.values().sum();
    if sum == 0 {
        return BTreeMap::new();
    }
    // Keep total · weight below 2^128: total < 2^64, so weights must stay below 2^64.
    let shift = (128 - sum.leading_zeros()).saturating_sub(63);
    let scaled: Vec<(K, u128)> = weights
        .iter()
        .map(|(k, w)| (k.clone(), w >> shift))
        .collect();
    sum = scaled.iter().map(|(_, w)| w).sum();
    if sum == 0 {
        return BTreeMap::new();
    }
    let total_wide = u128::from(total);
    let mut parts: Vec<(K, u64, u128)> = scaled
        .into_iter()
        .map(|(k, w)| {
            let product = total_wide * w;
            // Below `total` because w <= sum.
            let base = (product / sum) as u64;
            (k, base, product % sum)
        })
        .collect();
    let handed: u64 = parts.iter().map(|(_, base, _)| base).sum();
    let mut leftover = total - handed;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2).then(a.cmp(&b)));
    for index in order {
        if leftover == 0 {
            break;
        }
        parts[index].1 += 1;
        leftover -= 1;
    }
    parts
        .into_iter()
        .filter(|(_, amount, _)| *amount > 0)
        .map(|(k, amount, _)| (k, amount))
        .collect()
}

/// [`distribute`] for satoshi amounts.
fn distribute_sat<K: Ord + Clone>(total: Sat, weights: &BTreeMap<K, u128>) -> BTreeMap<K, Sat> {
    distribute(total.0, weights)
        .into_iter()
        .map(|(k, v)| (k, Sat(v)))
        .collect()
}

/// A destination of fee income.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitDestination {
    /// Label, e.g. `core-development`.
    pub label: String,
    /// Payout address.
    pub address: String,
    /// Share of the fee income, in parts per million.
    pub ppm: u64,
}

/// The pool fee and where fee income goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeePolicy {
    /// Fee on every reward, in parts per million (10_000 = 1 %).
    pub fee_ppm: u64,
    /// Destinations of fee income; their ppm sum to 1_000_000.
    pub split: Vec<SplitDestination>,
}

/// Why a fee policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Fee above 100 %.
    #[error("fee must be at most 100 % (got {0} ppm)")]
    FeeTooHigh(u64),
    /// Split does not sum to 100 %.
    #[error("revenue split must sum to 100 % (got {0} ppm)")]
    SplitSum(u64),
}

impl FeePolicy {
    /// The brief's default split of fee income: 60 % core development, 25 % grants, 10 %
    /// audits, 5 % operations, each to `addresses` in that order.
    pub fn default_split(addresses: [&str; 4]) -> Vec<SplitDestination> {
        let labels = [
            ("core-development", 600_000),
            ("grants", 250_000),
            ("audits", 100_000),
            ("operations", 50_000),
        ];
        labels
            .iter()
            .zip(addresses)
            .map(|((label, ppm), address)| SplitDestination {
                label: (*label).to_string(),
                address: address.to_string(),
                ppm: *ppm,
            })
            .collect()
    }

    /// Checks the fee and the split.
    ///
    /// # Errors
    /// A fee over 100 % or a split that does not sum to 100 % (when there is a fee).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.fee_ppm > PPM {
            return Err(PolicyError::FeeTooHigh(self.fee_ppm));
        }
        let sum: u64 = self.split.iter().map(|d| d.ppm).sum();
        if self.fee_ppm > 0 && sum != PPM {
            return Err(PolicyError::SplitSum(sum));
        }
        Ok(())
    }

    /// Splits a reward into (miners' part, fee destinations' parts), exactly.
    pub fn take_fee(&self, reward: Sat) -> (Sat, BTreeMap<String, Sat>) {
        let fee = ppm_of(reward, self.fee_ppm);
        let weights: BTreeMap<String, u128> = self
            .split
            .iter()
            .map(|d| (d.address.clone(), u128::from(d.ppm)))
            .collect();
        let fees = distribute_sat(fee, &weights);
        // Without destinations the fee stays with the miners rather than vanishing.
        let taken: Sat = fees.values().sum();
        (reward - taken, fees)
    }
}

/// One share as the schemes see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareCredit {
    /// Payout address.
    pub address: String,
    /// Credited difficulty.
    pub difficulty: f64,
}

/// PPLNS: the last N × network difficulty of share difficulty before (and including) the block's
/// share, newest first. The oldest share is counted in part so that the window is exact. A
/// window that is not full (a young pool) pays its whole reward to the shares it has.
pub fn pplns_weights<'a>(
    newest_first: impl IntoIterator<Item = &'a ShareCredit>,
    window_difficulty: f64,
) -> BTreeMap<String, u128> {
    let mut remaining = weight(window_difficulty);
    let mut weights: BTreeMap<String, u128> = BTreeMap::new();
    for share in newest_first {
        if remaining == 0 {
            break;
        }
        let w = weight(share.difficulty).min(remaining);
        remaining -= w;
        *weights.entry(share.address.clone()).or_default() += w;
    }
    weights
}

/// PROP: every share of the round, in proportion to difficulty.
pub fn prop_weights<'a>(
    round: impl IntoIterator<Item = &'a ShareCredit>,
) -> BTreeMap<String, u128> {
    let mut weights: BTreeMap<String, u128> = BTreeMap::new();
    for share in round {
        *weights.entry(share.address.clone()).or_default() += weight(share.difficulty);
    }
    weights
}

/// A block reward shared out: miners' credits and fee destinations' credits, in satoshis.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payout {
    /// Per miner address.
    pub miners: BTreeMap<String, Sat>,
    /// Per fee destination address.
    pub fees: BTreeMap<String, Sat>,
}

impl Payout {
    /// Everything handed out.
    pub fn total(&self) -> Sat {
        self.miners.values().sum::<Sat>() + self.fees.values().sum::<Sat>()
    }
}

/// Shares a block `reward` by `weights` after the fee: PPLNS and PROP both end here.
pub fn share_reward(reward: Sat, weights: &BTreeMap<String, u128>, policy: &FeePolicy) -> Payout {
    if weights.values().all(|w| *w == 0) {
        // No shares to pay (cannot happen for a block the pool found): all to fee income.
        let fees = distribute_sat(
            reward,
            &policy
                .split
                .iter()
                .map(|d| (d.address.clone(), u128::from(d.ppm)))
                .collect(),
        );
        return Payout {
            miners: BTreeMap::new(),
            fees,
        };
    }
    let (net, fees) = policy.take_fee(reward);
    Payout {
        miners: distribute_sat(net, weights),
        fees,
    }
}

/// PPS: a share is worth its chance of being a block times the expected reward, less the fee,
/// in millisatoshis (rounded down).
pub fn pps_credit_msat(
    share_difficulty: f64,
    network_difficulty: f64,
    expected_reward: Sat,
    fee_ppm: u64,
) -> Msat {
    let share = weight(share_difficulty);
    let network = weight(network_difficulty);
    if share == 0 || network == 0 {
        return Msat::ZERO;
    }
    // msat = reward · 1000 · (1 − fee) · share / network, in u128 with the weights scaled down
    // first if needed so the product cannot overflow.
    let keep = u128::from(PPM - fee_ppm.min(PPM));
    let numerator_scale = u128::from(expected_reward.0) * 1000 * keep; // < 2^51 · 2^10 · 2^20
    let shift = (128 - share.leading_zeros()).saturating_sub(46);
    let (share, network) = (share >> shift, (network >> shift).max(1));
    let value = numerator_scale * share / (network * u128::from(PPM));
    Msat(value.min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(address: &str, difficulty: f64) -> ShareCredit {
        ShareCredit {
            address: address.into(),
            difficulty,
        }
    }

    fn no_fee() -> FeePolicy {
        FeePolicy {
            fee_ppm: 0,
            split: Vec::new(),
        }
    }

    #[test]
    fn distribute_is_exact_and_deterministic() {
        let weights: BTreeMap<&str, u128> = [("a", 1), ("b", 1), ("c", 1)].into_iter().collect();
        let parts = distribute(100, &weights);
        assert_eq!(parts.values().sum::<u64>(), 100);
        // 33.33 each: the one leftover satoshi goes to the first key on a tie.
        assert_eq!(parts[&"a"], 34);
        assert_eq!(parts[&"b"], 33);
        assert_eq!(parts[&"c"], 33);
        // Huge weights do not overflow.
        let big: BTreeMap<u8, u128> = [(1, u128::MAX / 4), (2, u128::MAX / 4)]
            .into_iter()
            .collect();
        let parts = distribute(u64::MAX, &big);
        assert_eq!(
            parts.values().fold(0u128, |a, &b| a + u128::from(b)),
            u128::from(u64::MAX)
        );
    }

    #[test]
    fn pplns_window_edges() {
        // Network difficulty 10, N = 2: window 20. Newest first.
        let shares = vec![
            share("a", 8.0),
            share("b", 8.0),
            share("a", 8.0),
            share("c", 8.0),
        ];
        let weights = pplns_weights(&shares, 20.0);
        // a: 8 + 4 (the third share only partly), b: 8, c: outside the window.
        assert_eq!(weights[&"a".to_string()], weight(12.0));
        assert_eq!(weights[&"b".to_string()], weight(8.0));
        assert!(!weights.contains_key("c"));
        let payout = share_reward(Sat(20_000), &weights, &no_fee());
        assert_eq!(payout.miners[&"a".to_string()], Sat(12_000));
        assert_eq!(payout.miners[&"b".to_string()], Sat(8_000));

        // Exactly on the edge: the share that fills the window is whole, the next is out.
        let weights = pplns_weights(&shares, 16.0);
        assert_eq!(weights.len(), 2);
        assert_eq!(weights.values().sum::<u128>(), weight(16.0));

        // A window that is not full pays the whole reward to the shares it has.
        let weights = pplns_weights(&shares[..1], 1000.0);
        let payout = share_reward(Sat(5_000_000_000), &weights, &no_fee());
        assert_eq!(payout.miners[&"a".to_string()], Sat(5_000_000_000));
    }

    #[test]
    fn fee_and_split_round_to_the_satoshi_and_lose_none() {
        let policy = FeePolicy {
            fee_ppm: 10_000, // 1 %
            split: FeePolicy::default_split(["dev", "grants", "audits", "ops"]),
        };
        policy.validate().expect("valid");
        // 1 % of 312_500_007 is 3_125_000 (rounded down): 60/25/10/5 of it.
        let (net, fees) = policy.take_fee(Sat(312_500_007));
        assert_eq!(net, Sat(309_375_007));
        assert_eq!(fees["dev"], Sat(1_875_000));
        assert_eq!(fees["grants"], Sat(781_250));
        assert_eq!(fees["audits"], Sat(312_500));
        assert_eq!(fees["ops"], Sat(156_250));
        // An awkward amount: 7 sat of fee over 60/25/10/5 → 4.2/1.75/0.7/0.35 → 4/2/1/0.
        let policy = FeePolicy {
            fee_ppm: PPM,
            ..policy
        };
        let (net, fees) = policy.take_fee(Sat(7));
        assert_eq!(net, Sat(0));
        assert_eq!(fees.values().sum::<Sat>(), Sat(7));
        assert_eq!(fees["dev"], Sat(4));
        assert_eq!(fees["grants"], Sat(2));
        assert_eq!(fees["audits"], Sat(1));
        assert!(!fees.contains_key("ops"));

        // Three miners, awkward reward: every satoshi accounted for.
        let weights = prop_weights(&[share("x", 1.0), share("y", 1.0), share("z", 1.0)]);
        let policy = FeePolicy {
            fee_ppm: 15_000,
            ..policy
        };
        let payout = share_reward(Sat(1_000_000_001), &weights, &policy);
        assert_eq!(payout.total(), Sat(1_000_000_001));
        assert_eq!(payout.fees.values().sum::<Sat>(), Sat(15_000_000));
        assert_eq!(payout.miners[&"x".to_string()], Sat(328_333_334));
        assert_eq!(payout.miners[&"y".to_string()], Sat(328_333_334));
        assert_eq!(payout.miners[&"z".to_string()], Sat(328_333_333));
    }

    #[test]
    fn pps_with_fee() {
        // Difficulty 1 share, network difficulty 1000, reward 3.125 BTC, 2 % fee:
        // 312_500_000 sat / 1000 · 0.98 = 306_250 sat = 306_250_000 msat.
        assert_eq!(
            pps_credit_msat(1.0, 1000.0, Sat(312_500_000), 20_000),
            Msat(306_250_000)
        );
        // Regtest-sized difficulties keep sub-satoshi precision in msat.
        let tiny = pps_credit_msat(1e-3, 1e9, Sat(5_000_000_000), 0);
        assert_eq!(tiny, Msat(5)); // 5e9 sat · 1e-12 = 0.005 sat = 5 msat
        assert_eq!(pps_credit_msat(0.0, 1.0, Sat(100), 0), Msat::ZERO);
    }

    #[test]
    fn prop_round_is_proportional() {
        let round = [share("a", 3.0), share("b", 1.0), share("a", 1.0)];
        let payout = share_reward(Sat(1000), &prop_weights(&round), &no_fee());
        assert_eq!(payout.miners[&"a".to_string()], Sat(800));
        assert_eq!(payout.miners[&"b".to_string()], Sat(200));
    }

    #[test]
    fn invalid_policies_are_refused() {
        let mut policy = FeePolicy {
            fee_ppm: 1_000_001,
            split: FeePolicy::default_split(["a", "b", "c", "d"]),
        };
        assert_eq!(policy.validate(), Err(PolicyError::FeeTooHigh(1_000_001)));
        policy.fee_ppm = 10_000;
        policy.split[0].ppm = 500_000;
        assert_eq!(policy.validate(), Err(PolicyError::SplitSum(900_000)));
    }
}
