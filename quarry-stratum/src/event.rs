//! What a session (either protocol) tells the pool: one event type, so that shares from V1 and
//! V2 reach the same ledger, metrics and block submitter.

use quarry_work::job::Job;
use quarry_work::share::{ShareReject, ValidShare};
use quarry_work::{Difficulty, Hash32};

use crate::worker::{AuxPayouts, Worker};

/// What a session tells the pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A worker authorized.
    Authorized {
        /// Full username.
        worker: String,
        /// Its payout address.
        address: String,
        /// Its payout addresses on merge-mined chains.
        aux_payouts: AuxPayouts,
        /// A Lightning offer named in its password (`ln=lno1…`).
        lightning_offer: Option<Box<str>>,
    },
    /// A share was accepted.
    ShareAccepted(AcceptedShare),
    /// A share was refused.
    ShareRejected {
        /// The worker, when known.
        worker: String,
        /// Why.
        reason: ShareReject,
    },
    /// A share met the network target: submit it now.
    BlockFound(FoundBlock),
    /// A share met a merged-mined chain's target: submit its proof now, to the node that
    /// issued that chain's work. Boxed: rare, and large next to the other events, which every
    /// session keeps room for.
    AuxFound(Box<FoundAux>),
    /// A declared job (Job Declaration) was built into a block: ask the node whether it is
    /// valid, and give the session its [`Verdict`](crate::v2::declaration::Verdict).
    CheckDeclaredBlock {
        /// The declaration's request id.
        request_id: u32,
        /// The block, with a zero extranonce and nonce.
        block: Vec<u8>,
    },
}

/// An aux chain's block, solved by a share.
#[derive(Debug, Clone)]
pub struct FoundAux {
    /// What to submit.
    pub solution: quarry_work::merged::AuxSolution,
    /// Who found it.
    pub worker: String,
    /// The finder's payout address.
    pub address: String,
    /// The Bitcoin height the share's job built.
    pub parent_height: u64,
    /// When, Unix milliseconds.
    pub time_ms: u64,
}

/// An accepted share, as the ledger records it.
#[derive(Debug, Clone)]
pub struct AcceptedShare {
    /// The ledger's key for the chain (`bitcoin`, `kaspa`).
    pub chain: &'static str,
    /// Full username (`address.worker`).
    pub worker: String,
    /// Payout address.
    pub address: String,
    /// Payout addresses on merge-mined chains: aux rewards this share earns go there.
    pub aux_payouts: AuxPayouts,
    /// Credit: the difficulty the job was sent with.
    pub difficulty: Difficulty,
    /// What the hash achieved.
    pub achieved: f64,
    /// Network difficulty of the job's template.
    pub network_difficulty: f64,
    /// Template id.
    pub template_id: u64,
    /// Height the job builds.
    pub height: u64,
    /// Whether this share is a block.
    pub is_block: bool,
    /// The job's coinbase value in satoshis (PPS's expected block reward).
    pub block_reward: u64,
    /// When it was accepted, Unix milliseconds.
    pub time_ms: u64,
    /// The share's hash (Bitcoin: the header hash), internal byte order.
    pub hash: Hash32,
}

/// A block to submit.
#[derive(Debug, Clone)]
pub struct FoundBlock {
    /// The ledger's key for the chain (`bitcoin`, `kaspa`).
    pub chain: &'static str,
    /// Height (Kaspa: DAA score).
    pub height: u64,
    /// Block hash, internal byte order.
    pub hash: Hash32,
    /// The block as its chain's submitter takes it (Bitcoin: the serialized block); empty when
    /// the pool does not have its transactions (a coinbase-only declared job).
    pub block: Vec<u8>,
    /// Who found it.
    pub worker: String,
    /// The finder's payout address.
    pub address: String,
    /// The coinbase value, satoshis.
    pub reward: u64,
    /// Network difficulty of the block.
    pub network_difficulty: f64,
    /// When it was found, Unix milliseconds.
    pub time_ms: u64,
    /// The payout table its coinbase committed to (payouts in the coinbase), if any.
    pub payouts: Option<BlockPayouts>,
}

/// What a block's coinbase paid by a payout table: the ledger credits exactly this.
#[derive(Debug, Clone)]
pub struct BlockPayouts {
    /// The table.
    pub table: std::sync::Arc<quarry_work::coinbase::CommittedPayouts>,
    /// The coinbase's txid, internal byte order.
    pub coinbase_txid: Hash32,
}

impl FoundBlock {
    /// The block a block-level share completes.
    pub fn new(
        job: &Job,
        share: &ValidShare,
        extranonce1: &[u8],
        extranonce2: &[u8],
        worker: &Worker,
        now_ms: u64,
    ) -> Self {
        let template = &job.template;
        FoundBlock {
            chain: crate::accept::BITCOIN,
            height: template.height,
            hash: *share.hash(),
            // Empty when the pool lacks the transactions (a coinbase-only declared job): the
            // miner's node publishes that block, and the pool credits it once its node has it.
            block: match template.has_transactions() {
                true => job.block(share.header(), extranonce1, extranonce2),
                false => Vec::new(),
            },
            worker: worker.name.clone(),
            address: worker.address.clone(),
            reward: template.coinbase_value,
            network_difficulty: template.network_target.difficulty(),
            time_ms: now_ms,
            payouts: template.payouts.as_ref().map(|table| BlockPayouts {
                table: std::sync::Arc::clone(table),
                coinbase_txid: job.coinbase.txid(extranonce1, extranonce2),
            }),
        }
    }
}
