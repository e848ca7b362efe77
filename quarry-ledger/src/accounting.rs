//! From a found block to credits: the configured scheme applied to the share log.

use std::collections::BTreeMap;

use crate::amount::Sat;
use crate::chain::Chain;
use crate::schemes::{
    pplns_weights, ppm_of, prop_weights, share_reward, FeePolicy, Payout, ShareCredit,
};
use crate::store::{BlockRecord, BlockStatus, Credit, Store, StoreError};

/// Shares read for one PPLNS window at most (the window is usually far smaller).
const MAX_WINDOW_SHARES: i64 = 1_000_000;

/// How block rewards are shared.
#[derive(Debug, Clone, PartialEq)]
pub enum Scheme {
    /// Pay per last N shares: the last `n` × network difficulty of share difficulty.
    Pplns {
        /// Window size in multiples of the network difficulty.
        n: f64,
    },
    /// Proportional: all shares since the previous block.
    Prop,
    /// Pay per share: shares are credited as they come; block rewards go to the pool.
    Pps,
    /// Solo: the coinbase pays the finder; nothing to credit.
    Solo,
    /// PPLNS paid in the coinbase: each block pays the window's miners directly, by the table
    /// its job committed (see [`crate::coinbase`]); what is too small for an output is carried
    /// as a balance into a later coinbase.
    CoinbasePplns {
        /// Window size in multiples of the network difficulty.
        n: f64,
    },
}

impl Scheme {
    /// Parses `pplns`, `prop`, `pps`, `solo` or `coinbase-pplns`.
    pub fn parse(name: &str, pplns_n: f64) -> Option<Scheme> {
        Some(match name {
            "pplns" => Scheme::Pplns { n: pplns_n },
            "prop" => Scheme::Prop,
            "pps" => Scheme::Pps,
            "solo" => Scheme::Solo,
            "coinbase-pplns" => Scheme::CoinbasePplns { n: pplns_n },
            _ => return None,
        })
    }

    /// The scheme's name.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Pplns { .. } => "pplns",
            Scheme::Prop => "prop",
            Scheme::Pps => "pps",
            Scheme::Solo => "solo",
            Scheme::CoinbasePplns { .. } => "coinbase-pplns",
        }
    }
}

/// The scheme and the fee policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewards {
    /// How rewards are shared.
    pub scheme: Scheme,
    /// Pool fee and revenue split.
    pub policy: FeePolicy,
    /// Merge-mined chains and the chain whose shares earn their blocks (Bitcoin's, for every
    /// AuxPoW chain and RSK). A chain not listed is paid from its own shares.
    pub parents: BTreeMap<Chain, Chain>,
    /// The merge-mining fee, taken from aux blocks before the pool's fee and split.
    pub merge_mining_fee: Option<MergeMiningFee>,
}

/// A share of every merge-mined block for the commons, taken before the pool's fee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeMiningFee {
    /// Parts per million of the aux block reward.
    pub fee_ppm: u64,
    /// Where it goes, per aux chain (an address on that chain). A chain without one pays no
    /// merge-mining fee.
    pub commons: BTreeMap<Chain, String>,
    /// Who runs this pool, recorded with each fee credit.
    pub contributor_id: String,
}

impl MergeMiningFee {
    /// (fee, rest) of an aux block's `reward` on `chain`, in exact integers (rounded down).
    pub fn split(&self, chain: &Chain, reward: Sat) -> Option<(String, Sat, Sat)> {
        let commons = self.commons.get(chain)?;
        let fee = ppm_of(reward, self.fee_ppm);
        Some((commons.clone(), fee, reward - fee))
    }
}

impl Rewards {
    /// Rewards without merged mining.
    pub fn new(scheme: Scheme, policy: FeePolicy) -> Rewards {
        Rewards {
            scheme,
            policy,
            parents: BTreeMap::new(),
            merge_mining_fee: None,
        }
    }

    /// The chain whose shares earn `chain`'s blocks.
    pub fn share_chain<'a>(&'a self, chain: &'a Chain) -> &'a Chain {
        self.parents.get(chain).unwrap_or(chain)
    }
}

impl Rewards {
    /// The credits a block earns, from the shares of its chain in the log.
    ///
    /// # Errors
    /// Database errors.
    pub async fn credits_for(
        &self,
        store: &Store,
        block: &BlockRecord,
    ) -> Result<Vec<Credit>, StoreError> {
        let shares_of = self.share_chain(&block.chain);
        let merged = shares_of != &block.chain;
        let mut reward = Sat::from_db(block.reward);
        let mut credits = Vec::new();
        if merged {
            // The merge-mining fee comes off the top, before the pool's fee and split.
            if let Some((commons, fee, rest)) = self
                .merge_mining_fee
                .as_ref()
                .and_then(|f| f.split(&block.chain, reward))
            {
                if fee > Sat::ZERO {
                    credits.push(Credit {
                        address: commons,
                        amount_msat: fee.to_msat(),
                        kind: "merge_mining_fee".into(),
                    });
                }
                reward = rest;
            }
        }
        if let (Scheme::CoinbasePplns { .. }, false) = (&self.scheme, merged) {
            // Exactly what the coinbase committed to. A block with no table (found before the
            // window had a share) paid everything to the pool's output: it is credited by plain
            // PPLNS below, as balances for later coinbases.
            if let Some((table, _)) = store.coinbase_table(&block.hash).await? {
                if !table.is_empty() {
                    return Ok(crate::coinbase::table_credits(&table)
                        .into_iter()
                        .map(|(address, sat, kind)| Credit {
                            address,
                            amount_msat: sat.to_msat(),
                            kind: kind.to_string(),
                        })
                        .collect());
                }
            }
        }
        let payout = match &self.scheme {
            // A Bitcoin block pays its finder (solo) or the pool (PPS) in its coinbase; an aux
            // block's coinbase pays the pool's aux address, so it is credited: all of it to the
            // finder in solo mode, to the pool's revenue split under PPS.
            Scheme::Solo | Scheme::Pps if !merged => return Ok(credits),
            Scheme::Solo => share_reward(
                reward,
                &BTreeMap::from([(block.address.clone(), 1u128)]),
                &self.policy,
            ),
            Scheme::Pps => share_reward(reward, &BTreeMap::new(), &self.policy),
            // Aux chains' blocks, and Bitcoin blocks without a table: plain PPLNS.
            Scheme::Pplns { n } | Scheme::CoinbasePplns { n } => {
                let shares = store
                    .shares_newest_first(shares_of, block.found_ms, MAX_WINDOW_SHARES)
                    .await?;
                let window: Vec<ShareCredit> = shares
                    .iter()
                    .map(|s| ShareCredit {
                        address: s.payee(&block.chain).to_string(),
                        difficulty: s.difficulty,
                    })
                    .collect();
                share_reward(
                    reward,
                    &pplns_weights(&window, n * block.network_difficulty),
                    &self.policy,
                )
            }
            Scheme::Prop => {
                let previous = store
                    .blocks(None, 1000)
                    .await?
                    .into_iter()
                    .filter(|b| {
                        b.chain == block.chain
                            && b.found_ms < block.found_ms
                            && !matches!(b.status, BlockStatus::Orphaned | BlockStatus::Rejected)
                    })
                    .map(|b| b.found_ms)
                    .max()
                    .unwrap_or(i64::MIN);
                let round: Vec<ShareCredit> = store
                    .shares_between(shares_of, &block.chain, previous, block.found_ms)
                    .await?
                    .into_iter()
                    .map(|(address, difficulty)| ShareCredit {
                        address,
                        difficulty,
                    })
                    .collect();
                share_reward(reward, &prop_weights(&round), &self.policy)
            }
        };
        credits.extend(credits_from(&payout, self.scheme.name()));
        Ok(credits)
    }
}

impl Rewards {
    /// Where retention may cut: shares before the returned time may be pruned. It is
    /// `now − retention`, moved back to the start of the window of every block not credited
    /// yet (its PPLNS window or PROP round still needs those shares).
    ///
    /// # Errors
    /// Database errors.
    pub async fn retention_cutoff(
        &self,
        store: &Store,
        now_ms: i64,
        retention_ms: i64,
    ) -> Result<i64, StoreError> {
        let mut cutoff = now_ms.saturating_sub(retention_ms);
        for block in store.blocks(Some(BlockStatus::Submitted), 10_000).await? {
            let start = match &self.scheme {
                Scheme::Pplns { n } | Scheme::CoinbasePplns { n } => {
                    let window = crate::schemes::weight(n * block.network_difficulty);
                    let mut filled = 0u128;
                    let mut start = block.found_ms;
                    for share in store
                        .shares_newest_first(
                            self.share_chain(&block.chain),
                            block.found_ms,
                            MAX_WINDOW_SHARES,
                        )
                        .await?
                    {
                        start = share.created_ms;
                        filled += crate::schemes::weight(share.difficulty);
                        if filled >= window {
                            break;
                        }
                    }
                    start
                }
                // The round reaches back to the previous block: keep everything after it.
                Scheme::Prop => i64::MIN,
                Scheme::Pps | Scheme::Solo => block.found_ms,
            };
            cutoff = cutoff.min(start);
        }
        Ok(cutoff)
    }
}

fn credits_from(payout: &Payout, kind: &str) -> Vec<Credit> {
    let miners = payout.miners.iter().map(|(address, sat)| Credit {
        address: address.clone(),
        amount_msat: sat.to_msat(),
        kind: kind.to_string(),
    });
    let fees = payout.fees.iter().map(|(address, sat)| Credit {
        address: address.clone(),
        amount_msat: sat.to_msat(),
        kind: "fee".to_string(),
    });
    miners.chain(fees).collect()
}
