//! Payouts in the coinbase (`coinbase-pplns`): every block the pool finds pays the miners of the
//! PPLNS window directly, so the operator never holds their money.
//!
//! A [`Window`] holds the newest shares in share-log order (ids); a [`WindowSnapshot`] is the
//! window as of one share id. [`plan`] turns a snapshot, a coinbase value and the balances carried
//! from earlier blocks into a [`CoinbaseTable`]: what each address earns from this block, and which
//! addresses get an output (earnings plus carried balance). Outputs below the smallest payout, past
//! the output cap or past the coinbase's weight budget are not dropped: the address keeps the
//! amount as a balance, carried into a later coinbase once it is large enough and matured.
//!
//! The table is the whole truth of a block: it is stored with the block, the block credits exactly
//! its earnings, and [`verify_table`] recomputes it from the window's shares, so anyone holding the
//! share file and the block can check the split.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::amount::Sat;
use crate::schemes::{share_reward, FeePolicy, SplitDestination};

/// Shares a window holds at most, whatever the difficulties (a million shares of a few dozen
/// bytes each).
pub const MAX_WINDOW_SHARES: usize = 1_000_000;

/// One share of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowShare {
    /// Its id in the share log: the window's order.
    pub id: i64,
    /// Who it pays.
    pub address: String,
    /// Credited difficulty.
    pub difficulty: f64,
}

/// The newest shares of one chain, oldest first, enough to fill the window.
#[derive(Debug, Default)]
pub struct Window {
    shares: VecDeque<WindowShare>,
    /// Sum of the held shares' difficulty.
    held: f64,
    /// Whether older shares were let go (a larger window would need them back from the log).
    trimmed: bool,
}

impl Window {
    /// An empty window.
    pub fn new() -> Window {
        Window::default()
    }

    /// The newest id held.
    pub fn last_id(&self) -> Option<i64> {
        self.shares.back().map(|s| s.id)
    }

    /// Shares held.
    pub fn len(&self) -> usize {
        self.shares.len()
    }

    /// Whether no share is held.
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// Adds the next share of the log; one not newer than the last is ignored (read twice).
    pub fn push(&mut self, share: WindowShare) {
        if self.last_id().is_some_and(|last| share.id <= last) {
            return;
        }
        if share.difficulty.is_finite() && share.difficulty > 0.0 {
            self.held += share.difficulty;
        }
        self.shares.push_back(share);
        if self.shares.len() > MAX_WINDOW_SHARES {
            self.pop_oldest();
        }
    }

    /// Lets go of the oldest shares that no window of `keep` difficulty reaches.
    pub fn trim(&mut self, keep: f64) {
        while let Some(oldest) = self.shares.front() {
            let without = self.held - oldest.difficulty.max(0.0);
            if without < keep {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Whether a window of `difficulty` may reach shares this one let go: it must be read from
    /// the share log again.
    pub fn needs_reload(&self, difficulty: f64) -> bool {
        self.trimmed && self.held < difficulty
    }

    fn pop_oldest(&mut self) {
        if let Some(oldest) = self.shares.pop_front() {
            if oldest.difficulty.is_finite() && oldest.difficulty > 0.0 {
                self.held -= oldest.difficulty;
            }
            self.trimmed = true;
        }
        if self.shares.is_empty() {
            self.held = 0.0;
        }
    }

    /// The window of `difficulty` ending at the newest share.
    pub fn snapshot(&self, difficulty: f64) -> WindowSnapshot {
        WindowSnapshot::from_newest_first(self.shares.iter().rev(), difficulty)
    }
}

/// A PPLNS window as of one share: who it pays, in integer weights.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowSnapshot {
    /// The oldest share inside it (0 when empty).
    pub start_id: i64,
    /// The newest share inside it (0 when empty).
    pub end_id: i64,
    /// Shares inside it (the oldest may count in part).
    pub shares: u64,
    /// Its size in share difficulty (N × network difficulty).
    pub difficulty: f64,
    /// Weight per address.
    pub weights: BTreeMap<String, u128>,
}

impl WindowSnapshot {
    /// The window of `difficulty` over `newest_first`: the PPLNS rule of
    /// [`crate::schemes::pplns_weights`], with the ids it reached.
    pub fn from_newest_first<'a>(
        newest_first: impl IntoIterator<Item = &'a WindowShare>,
        difficulty: f64,
    ) -> WindowSnapshot {
        let mut remaining = crate::schemes::weight(difficulty);
        let mut snapshot = WindowSnapshot {
            difficulty,
            ..WindowSnapshot::default()
        };
        // The rule of `pplns_weights`, without a copy of each share's address.
        for share in newest_first {
            if remaining == 0 {
                break;
            }
            let weight = crate::schemes::weight(share.difficulty).min(remaining);
            remaining -= weight;
            if snapshot.end_id == 0 {
                snapshot.end_id = share.id;
            }
            snapshot.start_id = share.id;
            snapshot.shares += 1;
            match snapshot.weights.get_mut(share.address.as_str()) {
                Some(total) => *total += weight,
                None => {
                    snapshot.weights.insert(share.address.clone(), weight);
                }
            }
        }
        snapshot
    }

    /// How far the payout proportions moved from `other`: half the sum of the absolute
    /// differences of each address's fraction (0 = the same split, 1 = nobody in common).
    pub fn distance(&self, other: &WindowSnapshot) -> f64 {
        let (a, b) = (total(&self.weights), total(&other.weights));
        if a == 0 || b == 0 {
            return if a == b { 0.0 } else { 1.0 };
        }
        let addresses: BTreeSet<&String> =
            self.weights.keys().chain(other.weights.keys()).collect();
        let mut sum = 0.0;
        for address in addresses {
            let p = self
                .weights
                .get(address)
                .map_or(0.0, |w| *w as f64 / a as f64);
            let q = other
                .weights
                .get(address)
                .map_or(0.0, |w| *w as f64 / b as f64);
            sum += (p - q).abs();
        }
        sum / 2.0
    }
}

fn total(weights: &BTreeMap<String, u128>) -> u128 {
    weights.values().sum()
}

/// What limits a coinbase's payout outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoinbaseLimits {
    /// The smallest output: less stays a balance (`payout.threshold_btc`).
    pub min_output_sat: u64,
    /// Payout outputs at most, besides the pool's own.
    pub max_outputs: usize,
    /// Weight units the payout outputs may add to the coinbase (the node's reserved weight less
    /// the header, the transaction count and the coinbase without them).
    pub weight_budget: u64,
    /// Legacy signature operations (scaled by 4, as Bitcoin Core counts them) the payout outputs
    /// may add: Bitcoin Core's block assembler leaves 400 for the whole coinbase.
    pub sigops_budget: u64,
}

/// One address in a block's payout table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// Who.
    pub address: String,
    /// Earned by its shares in this block's window, after the pool fee.
    pub earned_sat: u64,
    /// Earned as a destination of the pool fee (the revenue split).
    pub fee_sat: u64,
    /// Balance from earlier blocks paid in this block's output.
    pub carried_sat: u64,
    /// The output paying it: earned + fee + carried; 0 when it has none (the earnings are
    /// carried as a balance).
    pub output_sat: u64,
}

/// A block's payout table: what its coinbase commits to and what it credits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoinbaseTable {
    /// Which table of its pool this is (increasing).
    pub id: u64,
    /// The oldest share of the window (0 when the window was empty).
    pub window_start_id: i64,
    /// The newest share of the window: the window is the shares up to here, newest first.
    pub window_end_id: i64,
    /// Shares in the window.
    pub window_shares: u64,
    /// Window size in share difficulty (`pplns_n` × network difficulty).
    pub window_difficulty: f64,
    /// The coinbase value shared, satoshis.
    pub coinbase_value: u64,
    /// The pool fee, parts per million.
    pub fee_ppm: u64,
    /// Where the fee goes (address, parts per million of the fee).
    pub split: Vec<(String, u64)>,
    /// The limits the outputs were chosen under.
    pub limits: CoinbaseLimits,
    /// Addresses with an output first, in coinbase order (after the pool's own output), then
    /// the ones whose earnings are carried, by address.
    pub entries: Vec<TableEntry>,
}

impl CoinbaseTable {
    /// The payout outputs in coinbase order: (address, satoshis).
    pub fn outputs(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries
            .iter()
            .filter(|e| e.output_sat > 0)
            .map(|e| (e.address.as_str(), e.output_sat))
    }

    /// What the pool's own output keeps: the value less the payout outputs (earnings carried
    /// as balances, less the balances paid).
    pub fn remainder_sat(&self) -> u64 {
        self.coinbase_value.saturating_sub(
            self.outputs()
                .fold(0u64, |sum, (_, sat)| sum.saturating_add(sat)),
        )
    }

    /// Whether the window was empty: the block then pays everything to the pool's output, and
    /// is credited by plain PPLNS from the share log (see `Rewards::credits_for`).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The fee policy the table was built with.
    pub fn policy(&self) -> FeePolicy {
        FeePolicy {
            fee_ppm: self.fee_ppm,
            split: self
                .split
                .iter()
                .map(|(address, ppm)| SplitDestination {
                    label: String::new(),
                    address: address.clone(),
                    ppm: *ppm,
                })
                .collect(),
        }
    }
}

/// What one output to an address costs the coinbase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputCost {
    /// Weight units (4 × its serialized size).
    pub weight: u64,
    /// Legacy sigops × 4.
    pub sigops: u64,
}

/// The table for a block of `coinbase_value` on `window`, paying `carried` balances where they
/// fit. `cost` says what an output to an address costs, or `None` for an address the coinbase
/// cannot pay (its earnings are then carried).
///
/// Outputs go to the largest amounts first (earnings plus carried balance, ties by address),
/// while the cap and the weight and sigop budgets hold. Each pays what its address earns here,
/// plus as much of its balance as the carried earnings of the others leave room for (the
/// outputs never exceed the coinbase value), and is at least the smallest payout.
pub fn plan(
    id: u64,
    coinbase_value: Sat,
    window: &WindowSnapshot,
    carried: &BTreeMap<String, Sat>,
    policy: &FeePolicy,
    limits: &CoinbaseLimits,
    mut cost: impl FnMut(&str) -> Option<OutputCost>,
) -> CoinbaseTable {
    let mut table = CoinbaseTable {
        id,
        window_start_id: window.start_id,
        window_end_id: window.end_id,
        window_shares: window.shares,
        window_difficulty: window.difficulty,
        coinbase_value: coinbase_value.0,
        fee_ppm: policy.fee_ppm,
        split: policy
            .split
            .iter()
            .map(|d| (d.address.clone(), d.ppm))
            .collect(),
        limits: limits.clone(),
        entries: Vec::new(),
    };
    if window.weights.values().all(|w| *w == 0) {
        return table;
    }
    let payout = share_reward(coinbase_value, &window.weights, policy);
    let mut owed: BTreeMap<&str, TableEntry> = BTreeMap::new();
    let entry = |address: &str| TableEntry {
        address: address.to_string(),
        earned_sat: 0,
        fee_sat: 0,
        carried_sat: 0,
        output_sat: 0,
    };
    for (address, sat) in &payout.miners {
        owed.entry(address.as_str())
            .or_insert_with(|| entry(address))
            .earned_sat = sat.0;
    }
    for (address, sat) in &payout.fees {
        owed.entry(address.as_str())
            .or_insert_with(|| entry(address))
            .fee_sat = sat.0;
    }
    for (address, sat) in carried.iter().filter(|(_, sat)| **sat > Sat::ZERO) {
        owed.entry(address.as_str())
            .or_insert_with(|| entry(address))
            .carried_sat = sat.0;
    }
    let due = |e: &TableEntry| {
        e.earned_sat
            .saturating_add(e.fee_sat)
            .saturating_add(e.carried_sat)
    };
    let mut candidates: Vec<&TableEntry> = owed
        .values()
        .filter(|e| due(e) >= limits.min_output_sat.max(1))
        .collect();
    candidates.sort_by(|a, b| due(b).cmp(&due(a)).then(a.address.cmp(&b.address)));
    let (mut weight, mut sigops) = (0u64, 0u64);
    let mut chosen: Vec<String> = Vec::new();
    for candidate in candidates {
        if chosen.len() >= limits.max_outputs {
            break;
        }
        let Some(c) = cost(&candidate.address) else {
            continue;
        };
        if weight.saturating_add(c.weight) > limits.weight_budget
            || sigops.saturating_add(c.sigops) > limits.sigops_budget
        {
            // A cheaper script further down may still fit.
            continue;
        }
        weight += c.weight;
        sigops += c.sigops;
        chosen.push(candidate.address.clone());
    }
    // Each chosen address gets what it earns here; balances are paid from what the others'
    // earnings leave (the value is shared out exactly, so that is all there is), largest first.
    // One whose output still falls below the smallest payout is carried instead, which frees
    // room for the rest: repeat until every output stands.
    let paid_out = loop {
        let earned_chosen: u64 = chosen
            .iter()
            .filter_map(|a| owed.get(a.as_str()))
            .map(|e| e.earned_sat.saturating_add(e.fee_sat))
            .sum();
        let mut room = coinbase_value.0.saturating_sub(earned_chosen);
        let mut outputs: Vec<(String, u64)> = Vec::with_capacity(chosen.len());
        for address in &chosen {
            let Some(e) = owed.get(address.as_str()) else {
                continue;
            };
            let carried = e.carried_sat.min(room);
            room -= carried;
            outputs.push((address.clone(), carried));
        }
        let short = outputs.iter().position(|(address, carried)| {
            owed.get(address.as_str()).is_some_and(|e| {
                e.earned_sat
                    .saturating_add(e.fee_sat)
                    .saturating_add(*carried)
                    < limits.min_output_sat.max(1)
            })
        });
        match short {
            Some(index) => {
                chosen.remove(index);
            }
            None => break outputs,
        }
    };
    for (address, carried) in paid_out {
        if let Some(mut e) = owed.remove(address.as_str()) {
            e.carried_sat = carried;
            e.output_sat = e.earned_sat + e.fee_sat + carried;
            table.entries.push(e);
        }
    }
    // The rest keep their carried balance where it is: only what they earn here is listed.
    table.entries.extend(
        owed.into_values()
            .filter(|e| e.earned_sat > 0 || e.fee_sat > 0)
            .map(|e| TableEntry {
                carried_sat: 0,
                ..e
            }),
    );
    table
}

/// Credits of a block found on `table`: each address's earnings (`coinbase-pplns`) and fee
/// income (`fee`), in satoshis.
pub fn table_credits(table: &CoinbaseTable) -> Vec<(String, Sat, &'static str)> {
    let mut credits = Vec::new();
    for e in &table.entries {
        if e.earned_sat > 0 {
            credits.push((e.address.clone(), Sat(e.earned_sat), "coinbase-pplns"));
        }
        if e.fee_sat > 0 {
            credits.push((e.address.clone(), Sat(e.fee_sat), "fee"));
        }
    }
    credits
}

/// A share as published for verification (`/api/pplns/shares`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedShare {
    /// Share-log id.
    pub id: i64,
    /// Unix ms accepted.
    pub created_ms: i64,
    /// Who it pays.
    pub address: String,
    /// Full username.
    pub worker: String,
    /// Credited difficulty.
    pub difficulty: f64,
    /// The share's header hash, display order (hex); `None` for shares logged before hashes
    /// were.
    pub hash: Option<String>,
}

impl PublishedShare {
    /// The share as the window counts it.
    pub fn window_share(&self) -> WindowShare {
        WindowShare {
            id: self.id,
            address: self.address.clone(),
            difficulty: self.difficulty,
        }
    }
}

/// How a block's table compares with what its shares and its coinbase say: every difference, in
/// words (none when they agree). Every input may come from a hostile pool or file: nothing here
/// panics or overflows.
pub fn verify_table(
    table: &CoinbaseTable,
    shares_newest_first: &[PublishedShare],
    coinbase_outputs: &BTreeMap<String, u64>,
    pool_address: Option<&str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    // The window, recomputed from the shares.
    let window: Vec<WindowShare> = shares_newest_first
        .iter()
        .filter(|s| s.id <= table.window_end_id)
        .map(PublishedShare::window_share)
        .collect();
    let snapshot = WindowSnapshot::from_newest_first(&window, table.window_difficulty);
    if snapshot.end_id != table.window_end_id
        || snapshot.start_id != table.window_start_id
        || snapshot.shares != table.window_shares
    {
        problems.push(format!(
            "window: the shares give ids {}..={} ({} shares), the table says {}..={} ({} shares)",
            snapshot.start_id,
            snapshot.end_id,
            snapshot.shares,
            table.window_start_id,
            table.window_end_id,
            table.window_shares
        ));
    }
    let mut seen = BTreeSet::new();
    for share in shares_newest_first
        .iter()
        .filter(|s| (table.window_start_id..=table.window_end_id).contains(&s.id))
    {
        if let Some(hash) = &share.hash {
            if !seen.insert(hash.as_str()) {
                problems.push(format!("share {}: hash {hash} appears twice", share.id));
            }
            if !hash_meets(hash, share.difficulty) {
                problems.push(format!(
                    "share {}: hash {hash} does not meet its difficulty {}",
                    share.id, share.difficulty
                ));
            }
        }
    }
    // Earnings, recomputed.
    let expected = match snapshot.weights.is_empty() {
        true => Default::default(),
        false => share_reward(
            Sat(table.coinbase_value),
            &snapshot.weights,
            &table.policy(),
        ),
    };
    let listed: BTreeMap<&str, &TableEntry> = table
        .entries
        .iter()
        .map(|e| (e.address.as_str(), e))
        .collect();
    let addresses: BTreeSet<&str> = listed
        .keys()
        .copied()
        .chain(expected.miners.keys().map(String::as_str))
        .chain(expected.fees.keys().map(String::as_str))
        .collect();
    for address in addresses {
        let earned = expected.miners.get(address).map_or(0, |s| s.0);
        let fee = expected.fees.get(address).map_or(0, |s| s.0);
        let (table_earned, table_fee, carried, output) =
            listed.get(address).map_or((0, 0, 0, 0), |e| {
                (e.earned_sat, e.fee_sat, e.carried_sat, e.output_sat)
            });
        if earned != table_earned || fee != table_fee {
            problems.push(format!(
                "{address}: the shares earn {earned} sat (+{fee} fee), the table says {table_earned} sat (+{table_fee} fee)"
            ));
        }
        if output > 0
            && output
                != table_earned
                    .saturating_add(table_fee)
                    .saturating_add(carried)
        {
            problems.push(format!(
                "{address}: output {output} sat is not earned {table_earned} + fee {table_fee} + carried {carried}"
            ));
        }
        if output == 0 && carried > 0 {
            problems.push(format!("{address}: a carried balance without an output"));
        }
    }
    // The rules the outputs were chosen by.
    let outputs: Vec<(&str, u64)> = table.outputs().collect();
    if outputs.len() > table.limits.max_outputs {
        problems.push(format!(
            "{} payout outputs, over the cap of {}",
            outputs.len(),
            table.limits.max_outputs
        ));
    }
    if let Some((address, sat)) = outputs
        .iter()
        .find(|(_, sat)| *sat < table.limits.min_output_sat)
    {
        problems.push(format!(
            "{address}: output {sat} sat is below the smallest payout {}",
            table.limits.min_output_sat
        ));
    }
    // The block's own coinbase.
    let mut paid: BTreeMap<&str, u64> = BTreeMap::new();
    for (address, sat) in &outputs {
        let entry = paid.entry(address).or_default();
        *entry = entry.saturating_add(*sat);
    }
    let total = coinbase_outputs
        .values()
        .fold(0u64, |sum, sat| sum.saturating_add(*sat));
    if total != table.coinbase_value {
        problems.push(format!(
            "the coinbase pays {total} sat in all, the table shares {} sat",
            table.coinbase_value
        ));
    }
    let mut remainder = coinbase_outputs.clone();
    if let Some(pool) = pool_address {
        let kept = remainder.remove(pool).unwrap_or(0);
        let expected_kept = table
            .remainder_sat()
            .saturating_add(paid.get(pool).copied().unwrap_or(0));
        if kept != expected_kept {
            problems.push(format!(
                "the pool's output {pool} holds {kept} sat, the table leaves it {expected_kept} sat"
            ));
        }
        paid.remove(pool);
    }
    for (address, sat) in &paid {
        let got = remainder.remove(*address).unwrap_or(0);
        if got != *sat {
            problems.push(format!(
                "{address}: the coinbase pays {got} sat, the table {sat} sat"
            ));
        }
    }
    if pool_address.is_some() {
        for (address, sat) in remainder.iter().filter(|(_, sat)| **sat > 0) {
            problems.push(format!(
                "{address}: the coinbase pays {sat} sat the table does not list"
            ));
        }
    }
    problems
}

/// Whether a share hash (display hex) meets `difficulty` (Bitcoin's difficulty-1 target).
fn hash_meets(hash_hex: &str, difficulty: f64) -> bool {
    let Ok(bytes) = hex_decode(hash_hex) else {
        return false;
    };
    if bytes.len() != 32 || !(difficulty.is_finite() && difficulty > 0.0) {
        return false;
    }
    // hash × difficulty ≤ 0xffff × 2^208 (difficulty 1's target), in floating point with a
    // margin for rounding: a tampered difficulty is off by far more than 1e-9.
    let value = bytes
        .iter()
        .fold(0.0f64, |acc, b| acc * 256.0 + f64::from(*b));
    let diff1 = 65535.0 * 2f64.powi(208);
    value * difficulty <= diff1 * (1.0 + 1e-9)
}

fn hex_decode(text: &str) -> Result<Vec<u8>, ()> {
    if text.len() % 2 != 0 {
        return Err(());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or(())?, 16).map_err(|_| ()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(id: i64, address: &str, difficulty: f64) -> WindowShare {
        WindowShare {
            id,
            address: address.into(),
            difficulty,
        }
    }

    fn limits(min: u64, max: usize) -> CoinbaseLimits {
        CoinbaseLimits {
            min_output_sat: min,
            max_outputs: max,
            weight_budget: u64::MAX,
            sigops_budget: u64::MAX,
        }
    }

    fn no_fee() -> FeePolicy {
        FeePolicy {
            fee_ppm: 0,
            split: Vec::new(),
        }
    }

    const P2WPKH: OutputCost = OutputCost {
        weight: 124,
        sigops: 0,
    };

    #[test]
    fn the_window_keeps_what_its_size_needs_and_snapshots_by_id() {
        let mut window = Window::new();
        for id in 1..=10 {
            window.push(share(id, if id % 2 == 0 { "a" } else { "b" }, 1.0));
        }
        window.push(share(5, "c", 100.0));
        assert_eq!(window.len(), 10, "an id read twice is ignored");
        window.trim(4.0);
        assert_eq!(window.len(), 4);
        assert!(!window.needs_reload(4.0));
        assert!(window.needs_reload(5.0), "a larger window needs the log");
        let snapshot = window.snapshot(3.0);
        assert_eq!(
            (snapshot.start_id, snapshot.end_id, snapshot.shares),
            (8, 10, 3)
        );
        assert_eq!(snapshot.weights["a"], crate::schemes::weight(2.0));
        assert_eq!(snapshot.weights["b"], crate::schemes::weight(1.0));
        // The same rule as the ledger's PPLNS, the oldest share counted in part.
        let shares: Vec<WindowShare> = (1..=9)
            .map(|i| share(i, ["a", "b", "c"][i as usize % 3], i as f64 / 3.0))
            .collect();
        let credits: Vec<crate::schemes::ShareCredit> = shares
            .iter()
            .rev()
            .map(|s| crate::schemes::ShareCredit {
                address: s.address.clone(),
                difficulty: s.difficulty,
            })
            .collect();
        let snapshot = WindowSnapshot::from_newest_first(shares.iter().rev(), 7.5);
        assert_eq!(
            snapshot.weights,
            crate::schemes::pplns_weights(&credits, 7.5)
        );
        assert_eq!((snapshot.start_id, snapshot.end_id), (7, 9));
    }

    #[test]
    fn distance_is_the_share_of_the_split_that_moved() {
        let a = WindowSnapshot::from_newest_first(&[share(2, "a", 1.0), share(1, "b", 1.0)], 2.0);
        let b = WindowSnapshot::from_newest_first(&[share(3, "a", 1.0), share(2, "a", 1.0)], 2.0);
        assert_eq!(a.distance(&a), 0.0);
        assert!((a.distance(&b) - 0.5).abs() < 1e-12);
        assert_eq!(a.distance(&WindowSnapshot::default()), 1.0);
    }

    #[test]
    fn outputs_match_the_window_to_the_satoshi() {
        let shares = [share(3, "a", 3.0), share(2, "b", 1.0), share(1, "c", 1.0)];
        let window = WindowSnapshot::from_newest_first(&shares, 5.0);
        let policy = FeePolicy {
            fee_ppm: 10_000,
            split: FeePolicy::default_split(["d", "e", "f", "g"]),
        };
        let table = plan(
            1,
            Sat(1_000_000_001),
            &window,
            &BTreeMap::new(),
            &policy,
            &limits(1, 100),
            |_| Some(P2WPKH),
        );
        let outputs: BTreeMap<&str, u64> = table.outputs().collect();
        // 1 % fee: 10,000,000 split 60/25/10/5; 990,000,001 in 3:1:1.
        assert_eq!(outputs["a"], 594_000_001);
        assert_eq!(outputs["b"], 198_000_000);
        assert_eq!(outputs["c"], 198_000_000);
        assert_eq!(outputs["d"], 6_000_000);
        assert_eq!(outputs["g"], 500_000);
        assert_eq!(table.remainder_sat(), 0);
        assert_eq!(outputs.values().sum::<u64>(), 1_000_000_001);
        let first: Vec<&str> = table.outputs().map(|(a, _)| a).take(3).collect();
        assert_eq!(first, ["a", "b", "c"], "largest first, ties by address");
    }

    #[test]
    fn small_and_capped_amounts_are_carried_and_paid_later() {
        let shares: Vec<WindowShare> = (1..=10)
            .map(|i| share(i, &format!("m{i:02}"), i as f64))
            .collect();
        let window = WindowSnapshot::from_newest_first(shares.iter().rev(), 55.0);
        // 5,500 sat: m01 earns 100, …, m10 1,000. Smallest output 250, at most 5 outputs.
        let table = plan(
            7,
            Sat(5_500),
            &window,
            &BTreeMap::new(),
            &no_fee(),
            &limits(250, 5),
            |_| Some(P2WPKH),
        );
        let outputs: Vec<(&str, u64)> = table.outputs().collect();
        assert_eq!(
            outputs,
            [
                ("m10", 1000),
                ("m09", 900),
                ("m08", 800),
                ("m07", 700),
                ("m06", 600)
            ]
        );
        let carried: u64 = table
            .entries
            .iter()
            .filter(|e| e.output_sat == 0)
            .map(|e| e.earned_sat)
            .sum();
        assert_eq!(carried, 1500, "m01..m05 are credited, not paid");
        assert_eq!(table.remainder_sat(), 1500, "the pool's output holds it");
        let credited: u64 = table_credits(&table).iter().map(|c| c.1 .0).sum();
        assert_eq!(credited, 5_500, "the block credits its whole value");

        // A later block with m05's 500 sat carried: m05 now gets 500 + its earnings.
        let carried = BTreeMap::from([("m05".to_string(), Sat(500))]);
        let table = plan(
            8,
            Sat(5_500),
            &window,
            &carried,
            &no_fee(),
            &limits(250, 5),
            |_| Some(P2WPKH),
        );
        let m05 = table
            .entries
            .iter()
            .find(|e| e.address == "m05")
            .expect("listed");
        assert_eq!(
            (m05.earned_sat, m05.carried_sat, m05.output_sat),
            (500, 500, 1000)
        );
        assert_eq!(table.outputs().count(), 5);
        // Paying a balance comes out of what the pool's output holds.
        assert_eq!(table.remainder_sat(), 5_500 - 1000 - 1000 - 900 - 800 - 700);
    }

    #[test]
    fn budgets_and_the_value_bound_the_outputs() {
        let shares: Vec<WindowShare> = (1..=4).map(|i| share(i, &format!("m{i}"), 1.0)).collect();
        let window = WindowSnapshot::from_newest_first(shares.iter().rev(), 4.0);
        let mut limits = limits(1, 10);
        limits.weight_budget = 124 * 2 + 100;
        let table = plan(
            1,
            Sat(4_000),
            &window,
            &BTreeMap::new(),
            &no_fee(),
            &limits,
            |a| (a != "m2").then_some(P2WPKH),
        );
        let paid: Vec<&str> = table.outputs().map(|(a, _)| a).collect();
        assert_eq!(paid, ["m1", "m3"], "m2 cannot be paid; weight for two");

        // A balance larger than the block is paid in part, from what the others leave: here
        // nobody else is carried, so nothing.
        let carried = BTreeMap::from([("m1".to_string(), Sat(10_000))]);
        let limits = super::tests::limits(1, 10);
        let table = plan(2, Sat(4_000), &window, &carried, &no_fee(), &limits, |_| {
            Some(P2WPKH)
        });
        assert_eq!(table.outputs().map(|(_, s)| s).sum::<u64>(), 4_000);
        let m1 = table
            .entries
            .iter()
            .find(|e| e.address == "m1")
            .expect("m1");
        assert_eq!((m1.carried_sat, m1.output_sat), (0, 1_000));
        // With two outputs allowed, the two carried earnings (2,000) pay part of m1's balance.
        let limits = super::tests::limits(1, 2);
        let table = plan(3, Sat(4_000), &window, &carried, &no_fee(), &limits, |_| {
            Some(P2WPKH)
        });
        let m1 = table
            .entries
            .iter()
            .find(|e| e.address == "m1")
            .expect("m1");
        assert_eq!((m1.carried_sat, m1.output_sat), (2_000, 3_000));
        assert_eq!(table.outputs().map(|(_, s)| s).sum::<u64>(), 4_000);
        assert_eq!(table.remainder_sat(), 0);
    }

    #[test]
    fn an_empty_window_pays_the_pool_alone() {
        let table = plan(
            1,
            Sat(5_000),
            &WindowSnapshot::default(),
            &BTreeMap::from([("a".to_string(), Sat(4_000))]),
            &no_fee(),
            &limits(1, 10),
            |_| Some(P2WPKH),
        );
        assert!(table.is_empty());
        assert_eq!(table.remainder_sat(), 5_000);
    }

    fn published(id: i64, address: &str, difficulty: f64, hash: &str) -> PublishedShare {
        PublishedShare {
            id,
            created_ms: id,
            address: address.into(),
            worker: address.into(),
            difficulty,
            hash: Some(hash.into()),
        }
    }

    #[test]
    fn verify_recomputes_the_table_and_finds_tampering() {
        // Hashes that meet difficulty 1 (leading zero bytes).
        let h = |n: u8| format!("00000000{:02x}{}", n, "11".repeat(27));
        let shares = vec![
            published(3, "a", 1.0, &h(3)),
            published(2, "b", 1.0, &h(2)),
            published(1, "a", 1.0, &h(1)),
        ];
        let window: Vec<WindowShare> = shares.iter().map(PublishedShare::window_share).collect();
        let snapshot = WindowSnapshot::from_newest_first(&window, 3.0);
        let table = plan(
            1,
            Sat(3_000),
            &snapshot,
            &BTreeMap::new(),
            &no_fee(),
            &limits(1, 10),
            |_| Some(P2WPKH),
        );
        let coinbase: BTreeMap<String, u64> = [
            ("pool".to_string(), 0),
            ("a".into(), 2_000),
            ("b".into(), 1_000),
        ]
        .into();
        assert_eq!(
            verify_table(&table, &shares, &coinbase, Some("pool")),
            Vec::<String>::new()
        );

        let mut tampered = shares.clone();
        tampered[1].address = "a".into();
        let problems = verify_table(&table, &tampered, &coinbase, Some("pool"));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("b: the shares earn 0")),
            "{problems:?}"
        );

        let mut tampered = shares.clone();
        tampered[0].difficulty = 1e12;
        let problems = verify_table(&table, &tampered, &coinbase, Some("pool"));
        assert!(
            problems.iter().any(|p| p.contains("does not meet")),
            "{problems:?}"
        );

        let short: BTreeMap<String, u64> = [
            ("pool".to_string(), 1),
            ("a".into(), 1_999),
            ("b".into(), 1_000),
        ]
        .into();
        let problems = verify_table(&table, &shares, &short, Some("pool"));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("a: the coinbase pays 1999")),
            "{problems:?}"
        );
    }
}
