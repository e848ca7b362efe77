//! From a found block to credits: the configured scheme applied to the share log.

use crate::amount::Sat;
use crate::schemes::{pplns_weights, prop_weights, share_reward, FeePolicy, Payout, ShareCredit};
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
}

impl Scheme {
    /// Parses `pplns`, `prop`, `pps` or `solo`.
    pub fn parse(name: &str, pplns_n: f64) -> Option<Scheme> {
        Some(match name {
            "pplns" => Scheme::Pplns { n: pplns_n },
            "prop" => Scheme::Prop,
            "pps" => Scheme::Pps,
            "solo" => Scheme::Solo,
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
        let reward = Sat::from_db(block.reward);
        let payout = match &self.scheme {
            Scheme::Solo | Scheme::Pps => return Ok(Vec::new()),
            Scheme::Pplns { n } => {
                let shares = store
                    .shares_newest_first(&block.chain, block.found_ms, MAX_WINDOW_SHARES)
                    .await?;
                let credits: Vec<ShareCredit> = shares
                    .into_iter()
                    .map(|s| ShareCredit {
                        address: s.address,
                        difficulty: s.difficulty,
                    })
                    .collect();
                share_reward(
                    reward,
                    &pplns_weights(&credits, n * block.network_difficulty),
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
                    .shares_between(&block.chain, previous, block.found_ms)
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
        Ok(credits_from(&payout, self.scheme.name()))
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
                Scheme::Pplns { n } => {
                    let window = crate::schemes::weight(n * block.network_difficulty);
                    let mut filled = 0u128;
                    let mut start = block.found_ms;
                    for share in store
                        .shares_newest_first(&block.chain, block.found_ms, MAX_WINDOW_SHARES)
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
