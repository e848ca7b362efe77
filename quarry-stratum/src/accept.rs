//! The one share-acceptance path. Each protocol finds the job a submission names and validates
//! it with its chain's proof of work (Bitcoin's [`validate_share`](quarry_work::share::validate_share),
//! Kaspa's kHeavyHash in `quarry-kaspa`); what happens next is the same for V1, SV2 and every
//! chain, so it is written once, here ([`accept_candidate`]): the duplicate check, the block
//! claim, the stale rule and the events the pool acts on.

use crate::clock::Now;
use std::collections::VecDeque;

use quarry_work::job::Job;
use quarry_work::share::{ShareReject, ValidShare};
use quarry_work::{Difficulty, Hash32};

use crate::event::{AcceptedShare, Event, FoundAux, FoundBlock};
use crate::pool::{Pool, ShareBook};
use crate::tip::Tip;
use crate::worker::Worker;

/// A share that passed validation, with what the session knows about it.
pub(crate) struct Validated<'a> {
    /// The job it was mined on.
    pub job: &'a Job,
    /// Proof that it met its share target.
    pub share: &'a ValidShare,
    /// The connection's or channel's extranonce1.
    pub extranonce1: &'a [u8],
    /// The miner's extranonce2.
    pub extranonce2: &'a [u8],
    /// Who mined it.
    pub worker: &'a Worker,
    /// The difficulty it is credited at (the job's, or the channel's previous target while a
    /// retarget is in flight).
    pub credit: Difficulty,
}

/// A share of any chain that met its share target, as the acceptance path sees it: each
/// chain's session validates with its own proof of work and hands this over.
pub struct Candidate<'a> {
    /// The ledger's key for the chain (`bitcoin`, `kaspa`).
    pub chain: &'static str,
    /// The share's hash: the duplicate key.
    pub hash: &'a Hash32,
    /// The tip its job built on: the stale rule and the block claim go by it.
    pub parent: &'a Hash32,
    /// Whether it met the network target.
    pub is_block: bool,
    /// Whether one block per parent is all the pool submits (Bitcoin: a second could only
    /// orphan the first). A DAG (Kaspa) takes every block.
    pub one_block_per_parent: bool,
    /// Who mined it.
    pub worker: &'a Worker,
    /// The difficulty it is credited at.
    pub credit: Difficulty,
    /// What the hash achieved.
    pub achieved: f64,
    /// The job's network difficulty.
    pub network_difficulty: f64,
    /// The job's template id.
    pub template_id: u64,
    /// The height (Kaspa: DAA score) the job builds.
    pub height: u64,
    /// The job's block reward, in the chain's smallest unit.
    pub block_reward: u64,
}

/// The acceptance rules every chain shares, in this order: a hash seen before is a duplicate;
/// `fresh` then adds what a chain reports for any fresh share, stale or not (Bitcoin's
/// merged-mined blocks: an aux node takes them until its own tip moves); a block is claimed (once per parent where the chain wants that) and reported as
/// [`Event::BlockFound`] with what `block` builds, even when the share is stale, since it may
/// still win a race for the tip; work on a parent that is neither the tip nor, within
/// `stale_grace_ms`, the previous one is stale; everything else is [`Event::ShareAccepted`].
///
/// Returns whether the share is a block the pool submits.
#[allow(clippy::too_many_arguments)]
pub fn accept_candidate<B: ShareBook + ?Sized>(
    share: Candidate<'_>,
    fresh: impl FnOnce(&mut VecDeque<Event>),
    block: impl FnOnce() -> FoundBlock,
    tip: &Tip,
    stale_grace_ms: u64,
    now: Now,
    book: &B,
    events: &mut VecDeque<Event>,
) -> Result<bool, ShareReject> {
    if !book.first_seen(share.hash) {
        return Err(ShareReject::Duplicate);
    }
    fresh(events);
    let is_block =
        share.is_block && (!share.one_block_per_parent || book.claim_block(share.parent));
    if is_block {
        events.push_back(Event::BlockFound(block()));
    }
    if tip.is_stale(share.parent, now.mono_ms, stale_grace_ms) {
        return Err(ShareReject::Stale);
    }
    events.push_back(Event::ShareAccepted(AcceptedShare {
        chain: share.chain,
        worker: share.worker.name.clone(),
        address: share.worker.address.clone(),
        aux_payouts: share.worker.aux_payouts.clone(),
        difficulty: share.credit,
        achieved: share.achieved,
        network_difficulty: share.network_difficulty,
        template_id: share.template_id,
        height: share.height,
        is_block,
        block_reward: share.block_reward,
        time_ms: now.unix_ms,
        hash: *share.hash,
    }));
    Ok(is_block)
}

/// A Bitcoin share (V1 or SV2), through [`accept_candidate`]: every merged-mined chain whose
/// target it meets gets its proof ([`Event::AuxFound`]).
///
/// Returns whether the share is a block the pool submits.
pub(crate) fn accept(
    share: Validated<'_>,
    tip: &Tip,
    stale_grace_ms: u64,
    now: Now,
    pool: &dyn Pool,
    events: &mut VecDeque<Event>,
) -> Result<bool, ShareReject> {
    let template = &share.job.template;
    let aux = |events: &mut VecDeque<Event>| {
        let Some(merged) = &template.merged else {
            return;
        };
        for solution in merged.solutions(
            share.job,
            share.extranonce1,
            share.extranonce2,
            share.share.header(),
            share.share.hash(),
        ) {
            // The finder's address on the solved chain when it named one.
            let address = share
                .worker
                .aux_payouts
                .get(solution.chain())
                .unwrap_or(&share.worker.address)
                .to_string();
            events.push_back(Event::AuxFound(Box::new(FoundAux {
                solution,
                worker: share.worker.name.clone(),
                address,
                parent_height: template.height,
                time_ms: now.unix_ms,
            })));
        }
    };
    let candidate = Candidate {
        chain: BITCOIN,
        hash: share.share.hash(),
        parent: &template.prev_hash,
        is_block: share.share.is_block(),
        one_block_per_parent: true,
        worker: share.worker,
        credit: share.credit,
        achieved: share.share.achieved_difficulty(),
        network_difficulty: template.network_target.difficulty(),
        template_id: template.id,
        height: template.height,
        block_reward: template.coinbase_value,
    };
    let block = || {
        FoundBlock::new(
            share.job,
            share.share,
            share.extranonce1,
            share.extranonce2,
            share.worker,
            now.unix_ms,
        )
    };
    accept_candidate(
        candidate,
        aux,
        block,
        tip,
        stale_grace_ms,
        now,
        pool,
        events,
    )
}

/// The ledger's key for Bitcoin.
pub const BITCOIN: &str = "bitcoin";
