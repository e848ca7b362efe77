//! What a session needs from the pool around it.

use std::sync::Arc;

use quarry_work::job::Job;
use quarry_work::template::WorkTemplate;
use quarry_work::Hash32;

/// Who the coinbase pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolMode {
    /// Each miner's coinbase pays the address in its username.
    Solo,
    /// Every coinbase pays the pool; the username's address is credited in the ledger.
    Pool {
        /// The pool's payout script.
        payout_script: Vec<u8>,
    },
}

/// Pool-wide services a session consults. The runtime implements it over shared state; tests
/// implement it with plain collections. Methods take `&self`: the implementor decides how to
/// share (a lock, a sharded map) without the session knowing.
pub trait Pool {
    /// The job for `template` paying `payout_script`, built once and shared.
    fn job_for(&self, template: &Arc<WorkTemplate>, payout_script: &[u8]) -> Option<Arc<Job>>;

    /// Records a share's header hash; false when it was seen before (a duplicate). Keyed on the
    /// header hash, so no two encodings of the same work count twice.
    fn first_seen(&self, header_hash: &Hash32) -> bool;

    /// Records a block found on `prev_hash`; false when the pool already found one there. A
    /// second block on the same parent could only race (and orphan) the pool's own block, so
    /// it is credited as a share and not submitted.
    fn claim_block(&self, prev_hash: &Hash32) -> bool;

    /// A fresh extranonce1 (the coinbase layout's length), unique among live connections and
    /// channels.
    fn allocate_extranonce1(&self) -> Vec<u8>;

    /// Frees an extranonce1 when its connection or channel ends.
    fn release_extranonce1(&self, extranonce1: &[u8]);

    /// Lets a reconnecting miner take back `requested` as its extranonce1, releasing `current`.
    /// False when `requested` is unknown or in use by another connection.
    fn resume_extranonce1(&self, current: &[u8], requested: &[u8]) -> bool;
}
