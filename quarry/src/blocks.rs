//! Found blocks: saved, recorded, submitted, credited; then followed to maturity or orphaning.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quarry_ledger::coinbase::CoinbaseTable;
use quarry_ledger::{BlockRecord, BlockStatus, Chain, CreditStatus, Rewards, Store};
use quarry_stratum::event::BlockPayouts;
use quarry_stratum::v1::FoundBlock;
use quarry_work::hash::to_display_hex;
use quarry_work::Hash32;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::events::EventBus;
use crate::node::{Nodes, SubmitOutcome};

/// How long a block no node answered for is resubmitted.
const RESUBMIT_FOR: Duration = Duration::from_secs(30 * 60);

/// What became of a submission.
enum Settled {
    /// A node took it.
    Accepted,
    /// Every node that answered refused it, or left it off its best chain.
    Rejected,
    /// No node answered.
    Unreachable,
}

/// The ledger's record of a found Bitcoin block.
fn record_of(block: &FoundBlock, instance: &str) -> BlockRecord {
    BlockRecord {
        hash: to_display_hex(&block.hash),
        height: i64::try_from(block.height).unwrap_or(i64::MAX),
        status: BlockStatus::Submitted,
        reward: i64::try_from(block.reward).unwrap_or(i64::MAX),
        worker: block.worker.clone(),
        address: block.address.clone(),
        found_ms: i64::try_from(block.time_ms).unwrap_or(i64::MAX),
        network_difficulty: block.network_difficulty,
        instance: instance.to_string(),
        reject_reason: None,
        chain: Chain::BITCOIN,
    }
}

/// What happens to blocks after a share meets the network target.
pub struct BlockKeeper {
    /// Nodes to submit to and to check against.
    pub nodes: Arc<Nodes>,
    /// The ledger.
    pub store: Store,
    /// Scheme and fee policy.
    pub rewards: Rewards,
    /// Confirmations for maturity.
    pub maturity: u64,
    /// This instance's name.
    pub instance: String,
    /// The event stream.
    pub events: Arc<EventBus>,
    /// Payouts in the coinbase: blocks found on a table are counted here while recorded.
    pub coinbase_epochs: Option<Arc<crate::coinbase_payouts::BlockEpochs>>,
}

impl BlockKeeper {
    /// Starts the submitter (blocks in the order found) and the maturity tracker.
    ///
    /// A block whose parent already got an accepted child is saved but not sent: on regtest,
    /// where every share is a block, sending them all would flood the node's RPC queue and
    /// starve template fetches.
    pub fn spawn(self) -> mpsc::Sender<FoundBlock> {
        let keeper = Arc::new(self);
        let (tx, mut rx) = mpsc::channel::<FoundBlock>(4096);
        let submitter = Arc::clone(&keeper);
        tokio::spawn(async move {
            let mut solved_parents: VecDeque<Hash32> = VecDeque::new();
            while let Some(block) = rx.recv().await {
                if block.block.is_empty() {
                    submitter.record_unassembled(&block).await;
                    continue;
                }
                let Some(parent) = block
                    .block
                    .get(4..36)
                    .and_then(|p| <Hash32>::try_from(p).ok())
                else {
                    continue;
                };
                let hex = submitter.nodes.save_block(&block).await;
                if solved_parents.contains(&parent) {
                    debug!(hash = %to_display_hex(&block.hash), "saved, not submitted: its parent already has an accepted child");
                    continue;
                }
                match submitter.handle(&block, hex).await {
                    Settled::Accepted => {
                        solved_parents.push_back(parent);
                        if solved_parents.len() > 64 {
                            solved_parents.pop_front();
                        }
                    }
                    Settled::Rejected => {}
                    // No node answered (down, or killed mid-call): keep trying from the saved
                    // hex, on its own task, so later blocks are not held up.
                    Settled::Unreachable => {
                        tokio::spawn(Arc::clone(&submitter).resubmit(block));
                    }
                }
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Err(e) = keeper.track().await {
                    warn!(error = %e, "block tracking failed; will retry");
                }
            }
        });
        tx
    }

    /// A block the pool cannot assemble (a coinbase-only declared job: the miner has its
    /// transactions): recorded as submitted, so the tracker credits it once the node has it
    /// from the miner, or orphans it when another block takes its height.
    async fn record_unassembled(&self, block: &FoundBlock) {
        let record = record_of(block, &self.instance);
        info!(hash = %record.hash, height = record.height, worker = %record.worker, "block found on a coinbase-only job: the miner's node publishes it, credited once our node has it");
        if let Err(e) = self.store.insert_block(&record).await {
            error!(error = %e, hash = %record.hash, "could not record block in the ledger");
        }
        self.events.publish(
            "BlockFound",
            json!({"hash": record.hash, "height": record.height, "worker": record.worker,
                   "reward": record.reward, "accepted": null}),
        );
    }

    /// Records, submits and credits one block.
    async fn handle(&self, block: &FoundBlock, hex: String) -> Settled {
        let record = record_of(block, &self.instance);
        match (&block.payouts, &self.coinbase_epochs) {
            (Some(payouts), Some(epochs)) => {
                // Recorded before any node has it, so no table built on its child can pay the
                // balances it paid. Until it is recorded, tables pay no balances at all: a
                // failed write is retried in the background while the block goes out now, and
                // one that never succeeds leaves balances unpaid rather than paid twice.
                epochs.found.fetch_add(1, Ordering::SeqCst);
                match record_with_table(&self.store, &record, payouts).await {
                    Recording::Done => {
                        epochs.recorded.fetch_add(1, Ordering::SeqCst);
                    }
                    Recording::Retry(table, txid) => {
                        let (store, epochs, record) =
                            (self.store.clone(), Arc::clone(epochs), record.clone());
                        tokio::spawn(async move {
                            let started = std::time::Instant::now();
                            while started.elapsed() < RESUBMIT_FOR {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                match store.insert_coinbase_block(&record, &table, &txid).await {
                                    Ok(()) => {
                                        info!(hash = %record.hash, "block and its coinbase payouts recorded after a retry");
                                        epochs.recorded.fetch_add(1, Ordering::SeqCst);
                                        return;
                                    }
                                    Err(e) => {
                                        warn!(error = %e, hash = %record.hash, "could not record the block and its coinbase payouts; retrying")
                                    }
                                }
                            }
                            error!(hash = %record.hash, "gave up recording the block and its coinbase payouts: coinbases pay no carried balances until restart");
                        });
                    }
                    Recording::Unrecordable => {}
                }
            }
            _ => {
                if let Err(e) = self.store.insert_block(&record).await {
                    // The block goes to the node regardless; the tracker can't see it, so say so
                    // loudly.
                    error!(error = %e, hash = %record.hash, "could not record block in the ledger");
                }
            }
        }
        self.submit(&record, block, hex).await
    }

    /// Submits to every node and settles the outcome: credited when a node took it, the
    /// nodes' reasons recorded when all refused it.
    async fn submit(&self, record: &BlockRecord, block: &FoundBlock, hex: String) -> Settled {
        let outcomes = Arc::clone(&self.nodes).submit_block(block, hex).await;
        let accepted = outcomes
            .iter()
            .any(|o| matches!(o, SubmitOutcome::Accepted | SubmitOutcome::Duplicate));
        let unreachable = !outcomes.is_empty()
            && outcomes
                .iter()
                .all(|o| matches!(o, SubmitOutcome::Failed(_)));
        if unreachable {
            return Settled::Unreachable;
        }
        if accepted {
            self.nodes
                .metrics
                .blocks_accepted
                .fetch_add(1, Ordering::Relaxed);
        }
        self.events.publish(
            "BlockFound",
            json!({"hash": record.hash, "height": record.height, "worker": record.worker,
                   "reward": record.reward, "accepted": accepted}),
        );
        if accepted {
            self.credit(record).await;
            return Settled::Accepted;
        }
        if let Some(reason) = rejection(&outcomes) {
            // Every node refused it: keep the node's words (Core's "bad-cb-amount", …) where the
            // operator looks, next to the block.
            error!(hash = %record.hash, height = record.height, %reason, "block rejected by every node");
            if let Err(e) = self.store.reject_block(&record.hash, &reason).await {
                warn!(error = %e, hash = %record.hash, "could not record the block's rejection");
            }
        }
        Settled::Rejected
    }

    /// Submits `block` again, from the hex saved before its first submission, until a node
    /// answers (backing off to every 10 s, for up to half an hour: by then the chain has long
    /// moved on).
    async fn resubmit(self: Arc<Self>, block: FoundBlock) {
        let record = record_of(&block, &self.instance);
        let path = self.nodes.saved_block_path(&block);
        let started = std::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        while started.elapsed() < RESUBMIT_FOR {
            warn!(hash = %record.hash, height = record.height, secs = wait.as_secs(), "no node answered submitblock: resubmitting from the saved block");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
            let hex = match tokio::fs::read_to_string(&path).await {
                Ok(hex) => hex,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "saved block unreadable: resubmitting from memory");
                    hex::encode(&block.block)
                }
            };
            match self.submit(&record, &block, hex).await {
                Settled::Unreachable => continue,
                settled => {
                    info!(hash = %record.hash, accepted = matches!(settled, Settled::Accepted), "resubmitted block answered");
                    return;
                }
            }
        }
        error!(hash = %record.hash, "gave up resubmitting: no node answered for 30 min (the block is in data_dir/blocks)");
    }

    async fn credit(&self, record: &BlockRecord) {
        match self.rewards.credits_for(&self.store, record).await {
            Ok(credits) => match self
                .store
                .credit_block(&record.hash, &credits, record.found_ms)
                .await
            {
                Ok(true) => {
                    info!(hash = %record.hash, credits = credits.len(), scheme = self.rewards.scheme.name(), "block credited (immature)")
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, hash = %record.hash, "crediting failed; the tracker retries")
                }
            },
            Err(e) => {
                warn!(error = %e, hash = %record.hash, "computing credits failed; the tracker retries")
            }
        }
    }

    /// One pass: credit blocks the node has but we did not credit yet, mature or orphan
    /// pending ones.
    async fn track(&self) -> anyhow::Result<()> {
        let tip: i64 = self.nodes.call_any("getblockcount", json!([])).await?;
        for status in [BlockStatus::Submitted, BlockStatus::Pending] {
            for block in self.store.blocks(Some(status), 1000).await? {
                // Merge-mined blocks are followed on their own chain (aux.rs): a height here
                // is Bitcoin's, and says nothing about them.
                if block.chain != Chain::BITCOIN || block.height > tip {
                    continue;
                }
                let at_height: String = self
                    .nodes
                    .call_any("getblockhash", json!([block.height]))
                    .await?;
                let on_chain = at_height == block.hash;
                match (status, on_chain) {
                    (BlockStatus::Submitted, true) => self.credit(&block).await,
                    (BlockStatus::Pending, true) => {
                        let confirmations = tip - block.height + 1;
                        if confirmations >= i64::try_from(self.maturity).unwrap_or(i64::MAX)
                            && self
                                .store
                                .transition_block(
                                    &block.hash,
                                    BlockStatus::Pending,
                                    BlockStatus::Confirmed,
                                    Some((CreditStatus::Immature, CreditStatus::Mature)),
                                )
                                .await?
                        {
                            info!(hash = %block.hash, height = block.height, confirmations, "block confirmed; credits are payable");
                            self.events.publish(
                                "BlockConfirmed",
                                json!({"hash": block.hash, "height": block.height, "reward": block.reward}),
                            );
                        }
                    }
                    // Another block holds the height: ours left the best chain.
                    (_, false)
                        if self
                            .store
                            .transition_block(
                                &block.hash,
                                status,
                                BlockStatus::Orphaned,
                                Some((CreditStatus::Immature, CreditStatus::Reversed)),
                            )
                            .await? =>
                    {
                        warn!(hash = %block.hash, height = block.height, replaced_by = %at_height, "block orphaned; credits reversed");
                        self.events.publish(
                            "BlockOrphaned",
                            json!({"hash": block.hash, "height": block.height, "replaced_by": at_height}),
                        );
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// How recording a block with its payout table went.
enum Recording {
    /// Block, table and payout are in the ledger.
    Done,
    /// The write failed: the table and the coinbase txid, to try again.
    Retry(CoinbaseTable, String),
    /// The table does not decode (never expected): the block is recorded without it and the
    /// balances it paid cannot be reserved.
    Unrecordable,
}

/// One attempt at recording a block with the payout table its coinbase committed to: the
/// table reserves the balances the coinbase pays.
async fn record_with_table(
    store: &Store,
    record: &BlockRecord,
    payouts: &BlockPayouts,
) -> Recording {
    let table: CoinbaseTable = match serde_json::from_str(&payouts.table.record) {
        Ok(table) => table,
        Err(e) => {
            error!(error = %e, hash = %record.hash, "a payout table does not decode: recording the block without it; coinbases pay no carried balances until restart");
            if let Err(e) = store.insert_block(record).await {
                error!(error = %e, hash = %record.hash, "could not record block in the ledger");
            }
            return Recording::Unrecordable;
        }
    };
    let txid = to_display_hex(&payouts.coinbase_txid);
    match store.insert_coinbase_block(record, &table, &txid).await {
        Ok(()) => {
            info!(hash = %record.hash, table = table.id, outputs = table.outputs().count(), remainder_sat = table.remainder_sat(), "block recorded with its coinbase payouts");
            Recording::Done
        }
        Err(e) => {
            warn!(error = %e, hash = %record.hash, "could not record the block and its coinbase payouts; submitting it now, retrying the record in the background");
            Recording::Retry(table, txid)
        }
    }
}

/// The nodes' reasons when every node refused a block (`None` when one took it or could not
/// be asked); distinct reasons joined with "; ".
fn rejection(outcomes: &[SubmitOutcome]) -> Option<String> {
    let mut reasons: Vec<&str> = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        match outcome {
            SubmitOutcome::Rejected(reason) => {
                if !reasons.contains(&reason.as_str()) {
                    reasons.push(reason);
                }
            }
            _ => return None,
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_rejected_only_when_every_node_refused_it() {
        let refused = |r: &str| SubmitOutcome::Rejected(r.to_string());
        assert_eq!(
            rejection(&[refused("bad-cb-amount"), refused("bad-cb-amount")]).as_deref(),
            Some("bad-cb-amount")
        );
        assert_eq!(
            rejection(&[refused("bad-cb-amount"), refused("high-hash")]).as_deref(),
            Some("bad-cb-amount; high-hash")
        );
        assert_eq!(rejection(&[refused("x"), SubmitOutcome::Accepted]), None);
        assert_eq!(
            rejection(&[refused("x"), SubmitOutcome::Failed("timeout".into())]),
            None
        );
        assert_eq!(rejection(&[]), None);
    }
}
