//! Variable difficulty: one miner's share difficulty, steered towards a share every
//! `target_interval` seconds.
//!
//! The estimator is a time-decayed sum of credited difficulty (as ckpool's decaying averages):
//! each share adds its difficulty, the sum decays with time constant `retarget_secs`, and dividing
//! by the effective window length gives difficulty-shares per second — the miner's hashrate in
//! difficulty units, independent of the difficulty it was mining at. A plain ring buffer of share
//! gaps forgets everything at each difficulty change; this does not.
//!
//! Pure: the caller passes `now_ms`.

use crate::target::Difficulty;

/// Vardiff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VardiffConfig {
    /// Difficulty of a new connection.
    pub start: Difficulty,
    /// Lowest difficulty.
    pub min: Difficulty,
    /// Highest difficulty.
    pub max: Difficulty,
    /// Wanted seconds between shares.
    pub target_interval_secs: f64,
    /// Seconds between retargets (also the estimator's time constant).
    pub retarget_secs: f64,
    /// Relative deviation tolerated before the difficulty moves (0.3 = 30 %).
    pub variance: f64,
}

impl VardiffConfig {
    /// The retarget period in whole milliseconds, at least one second: a deadline clock.
    pub fn retarget_period_ms(&self) -> u64 {
        (self.retarget_secs * 1000.0).ceil().max(1000.0) as u64
    }
}

impl Default for VardiffConfig {
    fn default() -> Self {
        VardiffConfig {
            start: Difficulty::ONE,
            min: Difficulty::ONE,
            max: Difficulty::new(65536.0).expect("65536 is positive"),
            target_interval_secs: 10.0,
            retarget_secs: 90.0,
            variance: 0.3,
        }
    }
}

/// A burst of this many times the expected share count retargets before `retarget_secs`.
const BURST_FACTOR: f64 = 4.0;

/// One connection's vardiff state.
#[derive(Debug, Clone)]
pub struct Vardiff {
    config: VardiffConfig,
    current: Difficulty,
    started_ms: u64,
    updated_ms: u64,
    decayed_sum: f64,
    last_retarget_ms: u64,
    shares_since_retarget: u32,
}

impl Vardiff {
    /// Starts at `start` (the config's start, or what the miner asked for).
    pub fn new(config: VardiffConfig, start: Difficulty, now_ms: u64) -> Self {
        Vardiff {
            config,
            current: start.clamp(config.min, config.max),
            started_ms: now_ms,
            updated_ms: now_ms,
            decayed_sum: 0.0,
            last_retarget_ms: now_ms,
            shares_since_retarget: 0,
        }
    }

    /// The difficulty in force.
    pub fn current(&self) -> Difficulty {
        self.current
    }

    /// The settings.
    pub fn config(&self) -> &VardiffConfig {
        &self.config
    }

    /// Sets the difficulty from outside (suggest_difficulty), within the configured bounds.
    pub fn set(&mut self, difficulty: Difficulty, now_ms: u64) -> Difficulty {
        self.current = difficulty.clamp(self.config.min, self.config.max);
        self.last_retarget_ms = now_ms;
        self.shares_since_retarget = 0;
        self.current
    }

    /// Records an accepted share credited at `difficulty`.
    pub fn record_share(&mut self, difficulty: Difficulty, now_ms: u64) {
        self.decay_to(now_ms);
        self.decayed_sum += difficulty.get();
        self.shares_since_retarget = self.shares_since_retarget.saturating_add(1);
    }

    /// Estimated difficulty-1 shares per second.
    pub fn rate(&self, now_ms: u64) -> f64 {
        let tau = self.config.retarget_secs.max(1.0);
        let dt = now_ms.saturating_sub(self.updated_ms) as f64 / 1000.0;
        let sum = self.decayed_sum * (-dt / tau).exp();
        let age = now_ms.saturating_sub(self.started_ms) as f64 / 1000.0;
        // Window actually observed: tau·(1 − e^(−age/tau)), i.e. `age` early on, `tau` later.
        let window = tau * (1.0 - (-age / tau).exp());
        if window <= 0.0 {
            0.0
        } else {
            sum / window
        }
    }

    /// When [`Vardiff::retarget`] next has a period to judge, even with no shares in it.
    pub fn next_retarget_ms(&self) -> u64 {
        self.last_retarget_ms
            .saturating_add(self.config.retarget_period_ms())
    }

    /// Decides whether the difficulty should change now; `network` caps it.
    pub fn retarget(&mut self, now_ms: u64, network: Difficulty) -> Option<Difficulty> {
        let cap = self.config.max.min(network);
        let expected_shares = self.config.retarget_secs / self.config.target_interval_secs;
        let burst =
            f64::from(self.shares_since_retarget) >= BURST_FACTOR * expected_shares.max(1.0);
        // The same clock as `next_retarget_ms`, so a deadline it gave always finds a period.
        if now_ms < self.next_retarget_ms() && !burst {
            return self.cap_only(cap, now_ms);
        }
        let wanted = if self.shares_since_retarget == 0 {
            // Nothing found in a whole retarget period: back off, but not straight to the floor.
            self.current.get() / 2.0
        } else {
            self.rate(now_ms) * self.config.target_interval_secs
        };
        self.last_retarget_ms = now_ms;
        self.shares_since_retarget = 0;
        let ratio = wanted / self.current.get();
        if (ratio - 1.0).abs() <= self.config.variance {
            return self.cap_only(cap, now_ms);
        }
        let next = Difficulty::new(wanted)
            .unwrap_or(self.config.min)
            .clamp(self.config.min, self.config.max)
            .min(cap);
        if next == self.current {
            return None;
        }
        self.current = next;
        Some(next)
    }

    /// Lowers the difficulty to `cap` when the network got easier than the current difficulty.
    fn cap_only(&mut self, cap: Difficulty, now_ms: u64) -> Option<Difficulty> {
        if self.current > cap {
            self.current = cap;
            self.last_retarget_ms = now_ms;
            return Some(cap);
        }
        None
    }

    fn decay_to(&mut self, now_ms: u64) {
        let tau = self.config.retarget_secs.max(1.0);
        let dt = now_ms.saturating_sub(self.updated_ms) as f64 / 1000.0;
        self.decayed_sum *= (-dt / tau).exp();
        self.updated_ms = self.updated_ms.max(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(x: f64) -> Difficulty {
        Difficulty::new(x).expect("positive")
    }

    const NETWORK: f64 = 1e12;

    /// Simulates a miner of `hashrate` difficulty-1 shares per second, mining at whatever the
    /// vardiff says, for `seconds`; returns the final difficulty.
    fn run(hashrate: f64, start: f64, seconds: u64) -> f64 {
        let config = VardiffConfig {
            start: d(start),
            min: d(0.001),
            max: d(1e9),
            ..VardiffConfig::default()
        };
        let mut vardiff = Vardiff::new(config, d(start), 0);
        let mut credit = 0.0;
        for ms in (0..seconds * 1000).step_by(100) {
            credit += hashrate * 0.1;
            // Deterministic: a share each time the accumulated work reaches the difficulty.
            while credit >= vardiff.current().get() {
                credit -= vardiff.current().get();
                vardiff.record_share(vardiff.current(), ms);
            }
            vardiff.retarget(ms, d(NETWORK));
        }
        vardiff.current().get()
    }

    #[test]
    fn converges_up_and_down() {
        // 100 diff-1 shares/s at one share per 10 s wants difficulty 1000.
        let up = run(100.0, 1.0, 1800);
        assert!((700.0..1300.0).contains(&up), "{up}");
        let down = run(0.5, 1000.0, 3600);
        assert!((3.5..6.5).contains(&down), "{down}");
    }

    #[test]
    fn respects_bounds_and_network() {
        let config = VardiffConfig {
            start: d(10.0),
            min: d(1.0),
            max: d(100.0),
            ..VardiffConfig::default()
        };
        let mut vardiff = Vardiff::new(config, d(10.0), 0);
        for ms in 0..1000 {
            vardiff.record_share(d(10.0), ms * 10);
        }
        let next = vardiff.retarget(10_000, d(50.0)).expect("burst retarget");
        assert_eq!(next, d(50.0));
        // The network becoming easier lowers the difficulty at once.
        assert_eq!(vardiff.retarget(10_001, d(0.5)), Some(d(0.5)));
    }

    #[test]
    fn idle_miner_backs_off_by_halves() {
        let mut vardiff = Vardiff::new(VardiffConfig::default(), d(64.0), 0);
        assert_eq!(vardiff.retarget(91_000, d(NETWORK)), Some(d(32.0)));
        assert_eq!(vardiff.retarget(100_000, d(NETWORK)), None);
    }

    #[test]
    fn steady_miner_inside_variance_is_left_alone() {
        let config = VardiffConfig::default();
        let mut vardiff = Vardiff::new(config, d(100.0), 0);
        // One share of difficulty 100 every 10 s: exactly on target.
        let mut changes = 0;
        for s in 1..=1000u64 {
            if s % 10 == 0 {
                vardiff.record_share(d(100.0), s * 1000);
            }
            changes += usize::from(vardiff.retarget(s * 1000, d(NETWORK)).is_some());
        }
        assert_eq!(changes, 0);
    }
}
