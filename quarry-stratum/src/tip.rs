//! The chain tip as a session sees it, for both protocols: which previous-block hash is current,
//! which was current before, and when that changed — so shares in flight on the old tip get a
//! grace period and everything older is stale.

use quarry_work::Hash32;

/// A session's view of the tip.
#[derive(Debug, Clone)]
pub struct Tip {
    current: Option<Hash32>,
    previous: Option<Hash32>,
    changed_ms: u64,
}

impl Tip {
    /// No tip yet.
    pub fn new(now_ms: u64) -> Self {
        Tip {
            current: None,
            previous: None,
            changed_ms: now_ms,
        }
    }

    /// Records a template's parent; true when it is a new tip.
    pub fn advance(&mut self, prev_hash: Hash32, now_ms: u64) -> bool {
        if self.current == Some(prev_hash) {
            return false;
        }
        self.previous = self.current.replace(prev_hash);
        self.changed_ms = now_ms;
        true
    }

    /// Whether work on `prev_hash` is stale: neither the current tip nor, within `grace_ms` of
    /// the change, the previous one.
    pub fn is_stale(&self, prev_hash: &Hash32, now_ms: u64, grace_ms: u64) -> bool {
        if self.current.is_none() || self.current.as_ref() == Some(prev_hash) {
            return false;
        }
        let in_grace = self.previous.as_ref() == Some(prev_hash)
            && now_ms.saturating_sub(self.changed_ms) <= grace_ms;
        !in_grace
    }

    /// Whether jobs on `prev_hash` are still worth remembering (current or previous tip).
    pub fn keeps(&self, prev_hash: &Hash32) -> bool {
        self.current.as_ref() == Some(prev_hash) || self.previous.as_ref() == Some(prev_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_covers_only_the_previous_tip_and_only_briefly() {
        let mut tip = Tip::new(0);
        assert!(
            !tip.is_stale(&[1; 32], 0, 2000),
            "nothing is stale before the first tip"
        );
        assert!(tip.advance([1; 32], 0));
        assert!(!tip.advance([1; 32], 10), "same parent: not a new tip");
        assert!(tip.advance([2; 32], 1000));
        assert!(!tip.is_stale(&[2; 32], 5000, 2000));
        assert!(!tip.is_stale(&[1; 32], 3000, 2000));
        assert!(tip.is_stale(&[1; 32], 3001, 2000));
        assert!(tip.is_stale(&[9; 32], 1000, 2000));
        assert!(tip.keeps(&[1; 32]) && tip.keeps(&[2; 32]) && !tip.keeps(&[9; 32]));
    }
}
