//! Kaspa blocks a share solved: completed from their template, saved, recorded, submitted,
//! credited; then followed until the DAG colours them (blue and deep enough: confirmed; red:
//! orphaned, its credits reversed).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kaspa_wrpc_client::prelude::{RpcBlockColor, RpcHash, RpcRawBlock};
use quarry_ledger::{BlockRecord, BlockStatus, Chain, CreditStatus, Rewards, Store};
use quarry_stratum::FoundBlock;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::node::{KaspaNodes, Submitted};
use super::Templates;
use crate::events::{EventBus, Metrics};

/// How long a block no node answered for is resubmitted.
const RESUBMIT_FOR: Duration = Duration::from_secs(10 * 60);

/// The ledger's key for Kaspa.
pub fn chain() -> Chain {
    Chain::new(quarry_kaspa::KASPA).unwrap_or(Chain::BITCOIN)
}

/// What happens to a Kaspa block after a share solves it.
pub struct KaspaKeeper {
    /// Nodes to submit to and ask about colours.
    pub nodes: Arc<KaspaNodes>,
    /// Where the templates are.
    pub templates: Arc<Templates>,
    /// The ledger.
    pub store: Store,
    /// Scheme and fee policy for Kaspa.
    pub rewards: Rewards,
    /// Confirmations (DAA score past the block) before its credits are payable.
    pub maturity: u64,
    /// This instance's name.
    pub instance: String,
    /// Where each block is written before it is sent.
    pub dir: PathBuf,
    /// The event stream.
    pub events: Arc<EventBus>,
    /// Kaspa's counters.
    pub metrics: Arc<Metrics>,
}

impl KaspaKeeper {
    /// Starts the submitter and the colour tracker.
    pub fn spawn(self) -> mpsc::Sender<FoundBlock> {
        let keeper = Arc::new(self);
        let (tx, mut rx) = mpsc::channel::<FoundBlock>(4096);
        let submitter = Arc::clone(&keeper);
        tokio::spawn(async move {
            while let Some(found) = rx.recv().await {
                match submitter.complete(&found) {
                    Some(block) => Arc::clone(&submitter).handle(found, block).await,
                    None => {
                        error!(hash = %hex::encode(found.hash), "kaspa block's template is no longer kept: not submitted")
                    }
                }
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Err(e) = keeper.track().await {
                    warn!(error = %e, "kaspa block tracking failed; will retry");
                }
            }
        });
        tx
    }

    /// The block a found share completes: its template with the share's nonce.
    fn complete(&self, found: &FoundBlock) -> Option<RpcRawBlock> {
        let nonce = u64::from_le_bytes(found.block.get(..8)?.try_into().ok()?);
        let template = u64::from_le_bytes(found.block.get(8..16)?.try_into().ok()?);
        let mut block = RpcRawBlock::clone(&*self.templates.get(template)?);
        block.header.nonce = nonce;
        Some(block)
    }

    fn record_of(&self, found: &FoundBlock) -> BlockRecord {
        BlockRecord {
            hash: hex::encode(found.hash),
            height: i64::try_from(found.height).unwrap_or(i64::MAX),
            status: BlockStatus::Submitted,
            reward: i64::try_from(found.reward).unwrap_or(i64::MAX),
            worker: found.worker.clone(),
            address: found.address.clone(),
            found_ms: i64::try_from(found.time_ms).unwrap_or(i64::MAX),
            network_difficulty: found.network_difficulty,
            instance: self.instance.clone(),
            reject_reason: None,
            chain: chain(),
        }
    }

    /// Saves, records and submits one block; one no node answered is resubmitted on its own
    /// task so later blocks are not held up.
    async fn handle(self: Arc<Self>, found: FoundBlock, block: RpcRawBlock) {
        let record = self.record_of(&found);
        let path = self.dir.join(format!("{}.json", record.hash));
        if let Err(e) = save(&path, &block).await {
            warn!(path = %path.display(), error = %e, "could not save the kaspa block before submitting it");
        }
        if let Err(e) = self.store.insert_block(&record).await {
            error!(error = %e, hash = %record.hash, "could not record the kaspa block in the ledger");
        }
        if !self.submit(&record, &block).await {
            tokio::spawn(self.resubmit(record, path, block));
        }
    }

    /// Submits and settles; false when no node answered.
    async fn submit(&self, record: &BlockRecord, block: &RpcRawBlock) -> bool {
        let outcomes = self.nodes.submit(block).await;
        let accepted = outcomes.contains(&Submitted::Accepted);
        if !accepted && outcomes.iter().all(|o| matches!(o, Submitted::Failed(_))) {
            return false;
        }
        self.events.publish(
            "BlockFound",
            json!({"chain": quarry_kaspa::KASPA, "hash": record.hash, "height": record.height,
                   "worker": record.worker, "reward": record.reward, "accepted": accepted}),
        );
        if accepted {
            self.metrics.blocks_accepted.fetch_add(1, Ordering::Relaxed);
            info!(hash = %record.hash, daa_score = record.height, worker = %record.worker, "kaspa block accepted");
            self.credit(record).await;
            return true;
        }
        let reasons: Vec<String> = outcomes
            .iter()
            .filter_map(|o| match o {
                Submitted::Rejected(reason) => Some(reason.clone()),
                _ => None,
            })
            .collect();
        let reason = reasons.join("; ");
        error!(hash = %record.hash, %reason, "kaspa block rejected");
        if let Err(e) = self.store.reject_block(&record.hash, &reason).await {
            warn!(error = %e, hash = %record.hash, "could not record the kaspa block's rejection");
        }
        true
    }

    async fn resubmit(self: Arc<Self>, record: BlockRecord, path: PathBuf, block: RpcRawBlock) {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        while started.elapsed() < RESUBMIT_FOR {
            warn!(hash = %record.hash, secs = wait.as_secs(), "no kaspa node answered submitblock: resubmitting");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
            let block = match tokio::fs::read(&path).await {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| block.clone()),
                Err(_) => block.clone(),
            };
            if self.submit(&record, &block).await {
                return;
            }
        }
        error!(hash = %record.hash, path = %path.display(), "gave up resubmitting the kaspa block");
    }

    async fn credit(&self, record: &BlockRecord) {
        let credits = match self.rewards.credits_for(&self.store, record).await {
            Ok(credits) => credits,
            Err(e) => {
                warn!(error = %e, hash = %record.hash, "computing kaspa credits failed; the tracker retries");
                return;
            }
        };
        if let Err(e) = self
            .store
            .credit_block(&record.hash, &credits, record.found_ms)
            .await
        {
            warn!(error = %e, hash = %record.hash, "crediting the kaspa block failed; the tracker retries");
        }
    }

    /// One pass over Kaspa's unsettled blocks: credit what the node has, confirm the blue
    /// ones `maturity` deep, orphan the red ones.
    async fn track(&self) -> anyhow::Result<()> {
        let chain = chain();
        for status in [BlockStatus::Submitted, BlockStatus::Pending] {
            for block in self.store.blocks(Some(status), 1000).await? {
                if block.chain != chain {
                    continue;
                }
                let Ok(bytes) = <[u8; 32]>::try_from(hex::decode(&block.hash)?.as_slice()) else {
                    continue;
                };
                let info = match self.nodes.reward_info(RpcHash::from_bytes(bytes)).await {
                    Ok(info) => info,
                    // Unknown to the node yet (or no node): next pass.
                    Err(_) => continue,
                };
                // Settled at most once: each transition only moves a block still in `status`.
                let confirm = || {
                    self.store.transition_block(
                        &block.hash,
                        BlockStatus::Pending,
                        BlockStatus::Confirmed,
                        Some((CreditStatus::Immature, CreditStatus::Mature)),
                    )
                };
                let orphan = || {
                    self.store.transition_block(
                        &block.hash,
                        status,
                        BlockStatus::Orphaned,
                        Some((CreditStatus::Immature, CreditStatus::Reversed)),
                    )
                };
                match (status, info.block_color) {
                    (BlockStatus::Submitted, RpcBlockColor::Blue | RpcBlockColor::Unknown) => {
                        self.credit(&block).await
                    }
                    (BlockStatus::Pending, RpcBlockColor::Blue)
                        if info.confirmation_count.unwrap_or(0) >= self.maturity
                            && confirm().await? =>
                    {
                        info!(hash = %block.hash, reward = ?info.reward_amount, "kaspa block confirmed (blue); credits are payable");
                        self.events.publish(
                            "BlockConfirmed",
                            json!({"chain": quarry_kaspa::KASPA, "hash": block.hash,
                                   "height": block.height, "reward": info.reward_amount}),
                        );
                    }
                    (_, RpcBlockColor::Red) if orphan().await? => {
                        warn!(hash = %block.hash, "kaspa block is red (not rewarded); credits reversed");
                        self.events.publish(
                            "BlockOrphaned",
                            json!({"chain": quarry_kaspa::KASPA, "hash": block.hash, "height": block.height}),
                        );
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

async fn save(path: &std::path::Path, block: &RpcRawBlock) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::write(path, serde_json::to_vec(block)?).await?;
    Ok(())
}
