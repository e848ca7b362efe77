//! The one share-acceptance path. Each protocol finds the job a submission names and validates
//! it with [`validate_share`](quarry_work::share::validate_share); what happens next is the same
//! for V1 and SV2 (and for the chains still to come), so it is written once, here: the duplicate
//! check, the block claim, the stale rule and the events the pool acts on.

use crate::clock::Now;
use std::collections::VecDeque;

use quarry_work::job::Job;
use quarry_work::share::{ShareReject, ValidShare};
use quarry_work::Difficulty;

use crate::event::{AcceptedShare, Event, FoundAux, FoundBlock};
use crate::pool::Pool;
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

/// Accepts `share` or says why not, in this order:
/// - a header seen before is a duplicate;
/// - every merged-mined chain whose target it meets gets its proof ([`Event::AuxFound`]),
///   stale or not;
/// - a block is claimed for its parent (a second block on the same parent could only orphan the
///   pool's own) and reported as [`Event::BlockFound`], even when the share is stale, since it
///   may still win a race for the tip;
/// - work on a parent that is neither the tip nor, within `stale_grace_ms`, the previous one is
///   stale;
/// - everything else is [`Event::ShareAccepted`].
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
    if !pool.first_seen(share.share.hash()) {
        return Err(ShareReject::Duplicate);
    }
    // Aux blocks first: they do not depend on Bitcoin's tip, so a share that is stale here may
    // still be a good aux block (its node takes it until its own tip moves).
    if let Some(merged) = &template.merged {
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
    }
    let is_block = share.share.is_block() && pool.claim_block(&template.prev_hash);
    if is_block {
        events.push_back(Event::BlockFound(FoundBlock::new(
            share.job,
            share.share,
            share.extranonce1,
            share.extranonce2,
            share.worker,
            now.unix_ms,
        )));
    }
    if tip.is_stale(&template.prev_hash, now.mono_ms, stale_grace_ms) {
        return Err(ShareReject::Stale);
    }
    events.push_back(Event::ShareAccepted(AcceptedShare {
        worker: share.worker.name.clone(),
        address: share.worker.address.clone(),
        aux_payouts: share.worker.aux_payouts.clone(),
        difficulty: share.credit,
        achieved: share.share.achieved_difficulty(),
        network_difficulty: template.network_target.difficulty(),
        template_id: template.id,
        height: template.height,
        is_block,
        block_reward: template.coinbase_value,
        time_ms: now.unix_ms,
    }));
    Ok(is_block)
}
