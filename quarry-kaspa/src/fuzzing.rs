//! Fuzz target bodies, here so the normal test suite replays the committed corpus on stable
//! (`quarry-kaspa/tests/fuzz_corpus.rs`); `fuzz/fuzz_targets/` only calls them.

/// Arbitrary bytes from a miner into a Kaspa session that has a job: never a panic, every line
/// out is JSON. `cargo fuzz run kaspa_session`
pub mod kaspa_session {
    use std::sync::Arc;

    use kaspa_addresses::Prefix;
    use kaspa_consensus_core::config::genesis::DEVNET_GENESIS;
    use kaspa_consensus_core::header::Header;
    use quarry_stratum::Now;
    use quarry_work::Difficulty;

    use crate::pool::KaspaPool;
    use crate::session::{KaspaConfig, KaspaSession};
    use crate::work::{KaspaJob, KaspaTemplate};

    const START: Now = Now::synced(1_800_000_000_000);

    /// One input.
    pub fn run(data: &[u8]) {
        let mut config = KaspaConfig {
            network: Prefix::Devnet,
            ..KaspaConfig::default()
        };
        // Easy shares, so that a found nonce reaches the acceptance path now and then.
        config.vardiff.start = Difficulty::new(2f64.powi(-30)).unwrap_or(Difficulty::ONE);
        config.vardiff.min = config.vardiff.start;
        let pool = KaspaPool::new(4);
        let mut session = KaspaSession::new(Arc::new(config), START);
        // Built once: a job's matrix costs far more than a session's input.
        static JOBS: std::sync::OnceLock<Vec<Arc<KaspaJob>>> = std::sync::OnceLock::new();
        let jobs = JOBS.get_or_init(|| {
            (1..=4)
                .map(|id| {
                    let mut header = Header::from(&DEVNET_GENESIS);
                    header.timestamp = 1_800_000_000_000 + id;
                    Arc::new(KaspaJob::new(Arc::new(KaspaTemplate {
                        id,
                        header,
                        reward: 1,
                    })))
                })
                .collect()
        });
        let job = |i: usize| Arc::clone(&jobs[i % jobs.len()]);
        session.handle_job(job(0), START);
        for (i, chunk) in data.chunks(89).enumerate() {
            let now = START.plus_ms(i as u64 * 1000);
            session.handle_bytes(chunk, now, &pool);
            if chunk.first().is_some_and(|b| b % 5 == 0) {
                session.handle_job(job(i + 1), now);
            }
            while session.awaiting_record() > 0 {
                session.share_recorded(chunk.last().is_none_or(|b| b % 7 != 0));
            }
            while let Some(text) = session.poll_transmit() {
                for line in text.lines() {
                    assert!(
                        serde_json::from_str::<serde_json::Value>(line).is_ok(),
                        "{line}"
                    );
                }
            }
            while session.poll_event().is_some() {}
            session.handle_timeout(now);
        }
        session.release(&pool);
    }
}
