//! Per-connection request budgets: a token bucket, sans-IO (time in, a yes or no out). A client
//! that pipelines thousands of requests is closed once its burst is spent, instead of getting
//! thousands of answers: nothing it sends is amplified.

/// A request budget: `per_sec` requests a second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Sustained requests per second.
    pub per_sec: u32,
    /// Requests allowed back to back.
    pub burst: u32,
}

/// A token bucket for one [`Budget`], in thousandths of a request so that refills at any rate
/// are exact.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    milli_tokens: u64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms` (monotonic).
    pub fn new(budget: Budget, now_ms: u64) -> Bucket {
        Bucket {
            milli_tokens: u64::from(budget.burst) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes one request from the bucket; false when the budget is spent.
    pub fn take(&mut self, budget: Budget, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let refill = elapsed.saturating_mul(u64::from(budget.per_sec));
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(refill)
            .min(u64::from(budget.burst) * 1000);
        if self.milli_tokens < 1000 {
            return false;
        }
        self.milli_tokens -= 1000;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let budget = Budget {
            per_sec: 4,
            burst: 10,
        };
        let mut bucket = Bucket::new(budget, 1000);
        assert_eq!((0..20).filter(|_| bucket.take(budget, 1000)).count(), 10);
        // 4 a second: one every 250 ms.
        assert!(!bucket.take(budget, 1249));
        assert!(bucket.take(budget, 1250));
        assert!(!bucket.take(budget, 1250));
        // A long pause refills to the burst, never past it.
        let taken = (0..50).filter(|_| bucket.take(budget, 1_000_000)).count();
        assert_eq!(taken, 10);
        // Time going backwards refills nothing.
        assert!(!bucket.take(budget, 5));
    }
}
