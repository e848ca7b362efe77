//! The two clocks a session reads. The driver samples both once per event and passes them in;
//! sessions never read a clock themselves.

/// One reading of both clocks.
///
/// Deadlines and rates (timeouts, vardiff, the stale grace) run on `mono_ms`, so a wall-clock
/// step (NTP, a VM resumed) cannot close every session at once or stretch a timeout. Only what
/// the wire or the ledger wants as calendar time reads `unix_ms`: ntime bounds, certificate
/// validity and share and block timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on a monotonic clock with an arbitrary origin.
    pub mono_ms: u64,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
}

impl Now {
    /// Both clocks at the same reading: for tests and replays, where the two never drift.
    pub const fn synced(ms: u64) -> Self {
        Now {
            mono_ms: ms,
            unix_ms: ms,
        }
    }

    /// Unix time in whole seconds, as ntime and certificates count it.
    pub const fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// The same instant, `ms` later on both clocks.
    pub const fn plus_ms(self, ms: u64) -> Self {
        Now {
            mono_ms: self.mono_ms.saturating_add(ms),
            unix_ms: self.unix_ms.saturating_add(ms),
        }
    }
}
