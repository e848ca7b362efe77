//! What a session needs from the pool around it ([`Pool`]), and the one implementation of it
//! ([`SharedPool`]) that the server, the tests, the benches and the fuzz targets all use.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use quarry_work::job::{Job, JobFactory};
use quarry_work::template::WorkTemplate;
use quarry_work::Hash32;
use tracing::warn;

use crate::v2::declaration::Declarations;

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

/// The pool-wide memory the acceptance path consults, whatever the chain: which shares were
/// seen, which parents already have the pool's block.
pub trait ShareBook: Send + Sync {
    /// Records a share's hash; false when it was seen before (a duplicate).
    fn first_seen(&self, hash: &Hash32) -> bool;

    /// Records a block found on `parent`; false when the pool already found one there.
    fn claim_block(&self, parent: &Hash32) -> bool;
}

/// Pool-wide services a session consults. The runtime implements it over shared state; tests
/// implement it with plain collections. Methods take `&self`: the implementor decides how to
/// share (a lock, a sharded map) without the session knowing.
pub trait Pool: ShareBook {
    /// The job for `template` paying `payout_script`, built once and shared.
    fn job_for(&self, template: &Arc<WorkTemplate>, payout_script: &[u8]) -> Option<Arc<Job>>;

    /// A fresh extranonce1 (the coinbase layout's length), unique among live connections and
    /// channels; `None` once every id is in use, so the caller refuses the miner cleanly.
    fn allocate_extranonce1(&self) -> Option<Vec<u8>>;

    /// Frees an extranonce1 when its connection or channel ends.
    fn release_extranonce1(&self, extranonce1: &[u8]);

    /// Lets a reconnecting miner take back `requested` as its extranonce1. False when
    /// `requested` was never handed out here or is in use by another connection.
    fn resume_extranonce1(&self, requested: &[u8]) -> bool;

    /// Job Declaration's shared state, when the pool takes declared jobs.
    fn declarations(&self) -> Option<&Declarations> {
        None
    }
}

/// Parents remembered by [`Pool::claim_block`]: far more than the blocks found while one
/// template refresh is under way.
const MAX_SOLVED_PARENTS: usize = 64;

/// Share hashes remembered per generation (16 bytes each in the set: ~320 MB at most for two).
const MAX_SEEN_PER_GENERATION: usize = 10_000_000;

/// Pool-wide state shared by sessions: jobs, seen shares, found blocks, extranonce1 allocation.
///
/// Std mutexes: each is held for a map lookup, never across an await.
pub struct SharedPool {
    factory: Mutex<JobFactory>,
    seen: Mutex<SeenShares>,
    /// Parents of the blocks found lately, newest last.
    solved: Mutex<VecDeque<Hash32>>,
    extranonces: Mutex<Extranonces>,
    /// Job Declaration, when the pool takes declared jobs.
    declarations: Option<Declarations>,
}

/// Header hashes of shares on the current and previous tip (a duplicate has the same
/// prevhash as its original, so older generations can go).
#[derive(Default)]
struct SeenShares {
    tip: Option<Hash32>,
    hashes: SeenHashes,
}

/// Share hashes in two generations, the duplicate rule's memory for any chain: a hash is a
/// duplicate while it is in the current or the previous generation. The owner decides when a
/// generation ends (Bitcoin: a new tip; Kaspa: every so many templates); a full generation ends
/// by itself, so memory stays bounded (`limit` hashes of 16 bytes each, twice).
#[derive(Debug)]
pub struct SeenHashes {
    limit: usize,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Default for SeenHashes {
    fn default() -> Self {
        SeenHashes::new(MAX_SEEN_PER_GENERATION)
    }
}

impl SeenHashes {
    /// Empty, with at most `limit` hashes per generation.
    pub fn new(limit: usize) -> SeenHashes {
        SeenHashes {
            limit: limit.max(1),
            current: HashSet::new(),
            previous: HashSet::new(),
        }
    }

    /// Records `hash`; false when it was seen before.
    pub fn first_seen(&mut self, hash: &Hash32) -> bool {
        // The low 8 bytes of a share hash are uniformly random; 64 bits are plenty.
        let mut key = [0u8; 8];
        key.copy_from_slice(&hash[..8]);
        let key = u64::from_le_bytes(key);
        if self.previous.contains(&key) {
            return false;
        }
        if self.current.len() >= self.limit {
            // Bounded memory on a long block interval: shares older than two generations can
            // no longer be told apart, a few minutes of shares at the busiest pools.
            self.next_generation();
        }
        self.current.insert(key)
    }

    /// Ends the current generation: the previous one is forgotten.
    pub fn next_generation(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

struct Extranonces {
    /// Fixed leading bytes: frontends sharing one database use different prefixes so their
    /// miners never search the same space.
    prefix: Vec<u8>,
    /// Bytes allocated per connection after the prefix.
    size: usize,
    /// How many ids `size` bytes hold.
    space: u64,
    /// The next id to try; ids start at 1 and wrap to 0 once.
    next: u64,
    /// Whether `next` has wrapped, so that every id has been handed out.
    wrapped: bool,
    in_use: HashSet<u64>,
}

impl Extranonces {
    /// Whether `id` was handed out before: only those may be resumed.
    fn issued(&self, id: u64) -> bool {
        id < self.space && (self.wrapped || (1..self.next).contains(&id))
    }
}

impl SharedPool {
    /// A pool building jobs with `factory`; every extranonce1 starts with `prefix` (shorter
    /// than the layout's extranonce1).
    pub fn new(factory: JobFactory, prefix: Vec<u8>) -> Self {
        let size = factory
            .layout()
            .extranonce1_len
            .saturating_sub(prefix.len())
            .clamp(1, 8);
        SharedPool {
            factory: Mutex::new(factory),
            seen: Mutex::new(SeenShares::default()),
            solved: Mutex::new(VecDeque::new()),
            extranonces: Mutex::new(Extranonces {
                prefix,
                size,
                space: extranonce_space(size),
                next: 1,
                wrapped: false,
                in_use: HashSet::new(),
            }),
            declarations: None,
        }
    }

    /// Takes declared jobs (Job Declaration) with these settings.
    pub fn with_declarations(mut self, config: crate::v2::declaration::JdConfig) -> Self {
        self.declarations = Some(Declarations::new(config));
        self
    }

    /// How many extranonce1 values can be live at once: the most connections (and SV2
    /// channels) this pool can serve.
    pub fn extranonce_capacity(&self) -> u64 {
        lock(&self.extranonces).space
    }

    /// Starts a new duplicate generation when the tip changes.
    pub fn on_template(&self, template: &WorkTemplate) {
        let mut seen = lock(&self.seen);
        if seen.tip != Some(template.prev_hash) {
            seen.tip = Some(template.prev_hash);
            seen.hashes.next_generation();
        }
        drop(seen);
        if let Some(declarations) = &self.declarations {
            declarations.on_template(template);
        }
    }
}

/// Ids that fit in `size` bytes.
pub fn extranonce_space(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        1u64 << (8 * size)
    }
}

/// Keyed on the header hash, so no two encodings of the same work count twice.
impl ShareBook for SharedPool {
    fn first_seen(&self, header_hash: &Hash32) -> bool {
        lock(&self.seen).hashes.first_seen(header_hash)
    }

    fn claim_block(&self, prev_hash: &Hash32) -> bool {
        let mut solved = lock(&self.solved);
        if solved.contains(prev_hash) {
            return false;
        }
        if solved.len() >= MAX_SOLVED_PARENTS {
            solved.pop_front();
        }
        solved.push_back(*prev_hash);
        true
    }
}

impl Pool for SharedPool {
    fn job_for(&self, template: &Arc<WorkTemplate>, payout_script: &[u8]) -> Option<Arc<Job>> {
        match lock(&self.factory).job_for(template, payout_script) {
            Ok(job) => Some(job),
            Err(e) => {
                warn!(error = %e, "cannot build job");
                None
            }
        }
    }

    fn allocate_extranonce1(&self) -> Option<Vec<u8>> {
        let mut state = lock(&self.extranonces);
        // A full space fails at once instead of searching forever under the lock; otherwise a
        // free id is at most `in_use` steps away.
        if state.in_use.len() as u64 >= state.space {
            return None;
        }
        loop {
            let candidate = state.next;
            state.next += 1;
            if state.next >= state.space {
                state.next = 0;
                state.wrapped = true;
            }
            if state.in_use.insert(candidate) {
                let mut extranonce1 = state.prefix.clone();
                extranonce1.extend(encode_extranonce(candidate, state.size));
                return Some(extranonce1);
            }
        }
    }

    fn release_extranonce1(&self, extranonce1: &[u8]) {
        let mut state = lock(&self.extranonces);
        if let Some(own) = extranonce1.strip_prefix(state.prefix.as_slice()) {
            let id = decode_extranonce(own);
            state.in_use.remove(&id);
        }
    }

    fn resume_extranonce1(&self, requested: &[u8]) -> bool {
        let mut state = lock(&self.extranonces);
        let Some(requested) = requested.strip_prefix(state.prefix.as_slice()) else {
            return false;
        };
        if requested.len() != state.size {
            return false;
        }
        let requested = decode_extranonce(requested);
        // Only ids this process handed out before, and not in use now.
        if !state.issued(requested) {
            return false;
        }
        state.in_use.insert(requested)
    }

    fn declarations(&self) -> Option<&Declarations> {
        self.declarations.as_ref()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (single inserts).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn encode_extranonce(value: u64, size: usize) -> Vec<u8> {
    value.to_be_bytes()[8 - size..].to_vec()
}

fn decode_extranonce(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_work::coinbase::CoinbaseLayout;

    fn pool_with(extranonce1_len: usize, prefix: Vec<u8>) -> SharedPool {
        SharedPool::new(
            JobFactory::new(CoinbaseLayout {
                extranonce1_len,
                extranonce2_len: 8,
                tag: b"/q/".to_vec(),
            }),
            prefix,
        )
    }

    #[test]
    fn prefixed_extranonces_keep_their_prefix() {
        let pool = pool_with(4, vec![0xee]);
        let a = pool.allocate_extranonce1().expect("room");
        assert_eq!(a, vec![0xee, 0, 0, 1]);
        pool.release_extranonce1(&a);
        assert!(pool.resume_extranonce1(&a));
        assert!(
            !pool.resume_extranonce1(&[0xdd, 0, 0, 1]),
            "another frontend's prefix"
        );
    }

    #[test]
    fn extranonces_are_unique_and_resumable() {
        let pool = pool_with(4, Vec::new());
        let a = pool.allocate_extranonce1().expect("room");
        let b = pool.allocate_extranonce1().expect("room");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4);
        assert!(!pool.resume_extranonce1(&a), "a is in use");
        pool.release_extranonce1(&a);
        assert!(pool.resume_extranonce1(&a), "a was issued and is free");
        assert!(!pool.resume_extranonce1(&[0, 0, 0x10, 0]), "never issued");
        assert!(!pool.resume_extranonce1(&[0, 0, 0, 0]), "0 comes last");
        assert!(!pool.resume_extranonce1(&[0, 0, 0]), "wrong length");
    }

    #[test]
    fn a_full_extranonce_space_refuses_instead_of_spinning() {
        // One byte of id: 256 live connections at most.
        let pool = pool_with(1, Vec::new());
        assert_eq!(pool.extranonce_capacity(), 256);
        let all: Vec<Vec<u8>> = (0..256)
            .map(|_| pool.allocate_extranonce1().expect("room"))
            .collect();
        let distinct: HashSet<&Vec<u8>> = all.iter().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(pool.allocate_extranonce1(), None, "the space is full");
        pool.release_extranonce1(&all[17]);
        assert_eq!(pool.allocate_extranonce1(), Some(all[17].clone()));
        assert_eq!(pool.allocate_extranonce1(), None);
    }

    #[test]
    fn duplicates_survive_one_tip_change() {
        let pool = pool_with(4, Vec::new());
        let hash = [7u8; 32];
        assert!(pool.first_seen(&hash));
        assert!(!pool.first_seen(&hash));
    }

    #[test]
    fn one_block_per_parent() {
        let pool = pool_with(4, Vec::new());
        assert!(pool.claim_block(&[1; 32]));
        assert!(!pool.claim_block(&[1; 32]));
        assert!(pool.claim_block(&[2; 32]));
    }
}
