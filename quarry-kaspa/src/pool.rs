//! Kaspa's pool-wide state: the shares seen (the duplicate rule) and the extranonces handed out.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use quarry_stratum::pool::SeenHashes;
use quarry_stratum::ShareBook;
use quarry_work::Hash32;

/// Share hashes remembered per generation before a new one starts: a bound on memory when
/// templates are few (16 bytes each in the set).
const MAX_SEEN_PER_GENERATION: usize = 4_000_000;

/// Shared by every Kaspa connection.
pub struct KaspaPool {
    seen: Mutex<Seen>,
    extranonces: Mutex<Extranonces>,
    /// Templates per duplicate generation: at least the jobs a connection keeps, so a share on
    /// any job still answerable is checked against every earlier share on it.
    generation_templates: u64,
    /// Solo mode: the addresses authorized miners pay to, with how many connections each.
    payees: Mutex<BTreeMap<String, usize>>,
    /// Bumped whenever an address is added: the template follower fetches its template then.
    payees_version: AtomicU64,
}

/// Distinct addresses solo mode fetches templates for (one `GetBlockTemplate` each per new
/// block): a bound on what a flood of addresses can ask of kaspad.
pub const MAX_SOLO_ADDRESSES: usize = 256;

struct Seen {
    /// The first template id of the current generation.
    since: u64,
    hashes: SeenHashes,
}

struct Extranonces {
    next: u32,
    in_use: HashSet<u32>,
}

impl KaspaPool {
    /// A pool whose connections keep `jobs_kept` jobs each.
    pub fn new(jobs_kept: usize) -> KaspaPool {
        KaspaPool {
            seen: Mutex::new(Seen {
                since: 0,
                hashes: SeenHashes::new(MAX_SEEN_PER_GENERATION),
            }),
            extranonces: Mutex::new(Extranonces {
                next: 1,
                in_use: HashSet::new(),
            }),
            generation_templates: jobs_kept.max(1) as u64,
            payees: Mutex::new(BTreeMap::new()),
            payees_version: AtomicU64::new(0),
        }
    }

    /// Solo mode: a connection mines for `address`. False when [`MAX_SOLO_ADDRESSES`] other
    /// addresses are mined for already.
    pub fn add_payee(&self, address: &str) -> bool {
        let mut payees = lock(&self.payees);
        if let Some(count) = payees.get_mut(address) {
            *count += 1;
            return true;
        }
        if payees.len() >= MAX_SOLO_ADDRESSES {
            return false;
        }
        payees.insert(address.to_string(), 1);
        self.payees_version.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Solo mode: a connection mining for `address` ended.
    pub fn remove_payee(&self, address: &str) {
        let mut payees = lock(&self.payees);
        if let Some(count) = payees.get_mut(address) {
            *count -= 1;
            if *count == 0 {
                payees.remove(address);
            }
        }
    }

    /// Solo mode: every address some connection mines for.
    pub fn payees(&self) -> Vec<String> {
        lock(&self.payees).keys().cloned().collect()
    }

    /// Changes whenever an address is added.
    pub fn payees_version(&self) -> u64 {
        self.payees_version.load(Ordering::Relaxed)
    }

    /// A new template: the duplicate memory moves on a generation every `jobs_kept` of them.
    pub fn on_template(&self, template_id: u64) {
        let mut seen = lock(&self.seen);
        if template_id >= seen.since.saturating_add(self.generation_templates) {
            seen.since = template_id;
            seen.hashes.next_generation();
        }
    }

    /// A free extranonce of `bytes` bytes (1 to 3), unique among live connections; `None`
    /// when every one is taken. Zero bytes: an empty extranonce, always available.
    pub fn allocate_extranonce(&self, bytes: usize) -> Option<Vec<u8>> {
        if bytes == 0 {
            return Some(Vec::new());
        }
        let bytes = bytes.min(3);
        let space = 1u32 << (8 * bytes);
        let mut state = lock(&self.extranonces);
        // Ids of every size share one numbering: a value is unique across sizes too.
        if state.in_use.len() as u32 >= space - 1 {
            return None;
        }
        loop {
            let candidate = state.next % space;
            state.next = state.next.wrapping_add(1);
            if candidate != 0 && state.in_use.insert(candidate) {
                return Some(candidate.to_be_bytes()[4 - bytes..].to_vec());
            }
        }
    }

    /// Gives an extranonce back when its connection ends.
    pub fn release_extranonce(&self, extranonce: &[u8]) {
        if extranonce.is_empty() {
            return;
        }
        let id = extranonce
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        lock(&self.extranonces).in_use.remove(&id);
    }
}

impl ShareBook for KaspaPool {
    fn first_seen(&self, hash: &Hash32) -> bool {
        lock(&self.seen).hashes.first_seen(hash)
    }

    /// The DAG takes every block: nothing to claim.
    fn claim_block(&self, _parent: &Hash32) -> bool {
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_remembered_across_a_generation() {
        let pool = KaspaPool::new(4);
        let hash = [7u8; 32];
        assert!(pool.first_seen(&hash));
        assert!(!pool.first_seen(&hash));
        pool.on_template(4);
        assert!(
            !pool.first_seen(&hash),
            "the previous generation still counts"
        );
        pool.on_template(8);
        assert!(pool.first_seen(&hash), "two generations on, forgotten");
    }

    #[test]
    fn solo_payees_are_counted_and_bounded() {
        let pool = KaspaPool::new(4);
        assert!(pool.add_payee("a"));
        let version = pool.payees_version();
        assert!(pool.add_payee("a"), "a second rig on the same address");
        assert_eq!(pool.payees_version(), version, "nothing new to fetch");
        pool.remove_payee("a");
        assert_eq!(pool.payees(), ["a"]);
        pool.remove_payee("a");
        assert!(pool.payees().is_empty());
        for i in 0..MAX_SOLO_ADDRESSES {
            assert!(pool.add_payee(&i.to_string()));
        }
        assert!(!pool.add_payee("one too many"));
        assert!(pool.add_payee("0"), "an address already mined for");
    }

    #[test]
    fn extranonces_are_unique_and_bounded() {
        let pool = KaspaPool::new(4);
        let a = pool.allocate_extranonce(1).expect("one");
        let b = pool.allocate_extranonce(1).expect("two");
        assert_ne!(a, b);
        assert_eq!(a.len(), 1);
        let mut all = vec![a, b];
        while let Some(next) = pool.allocate_extranonce(1) {
            all.push(next);
        }
        assert_eq!(all.len(), 255, "every non-zero byte once");
        pool.release_extranonce(&all[0]);
        assert_eq!(pool.allocate_extranonce(1), Some(all[0].clone()));
        assert_eq!(pool.allocate_extranonce(0), Some(Vec::new()));
    }
}
