//! Kaspa share validation: one kHeavyHash (`pow`), a job's set-up per template (`job_new`: the
//! pre-PoW hash and the matrix, shared by every miner on it), and a `mining.submit` line end
//! to end inside the session (parse, nonce, kHeavyHash, the acceptance path with its duplicate
//! check, the answer and the ledger event). `cargo bench -p quarry-kaspa --bench kaspa`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kaspa_addresses::{Address, Prefix, Version};
use kaspa_consensus_core::config::genesis::DEVNET_GENESIS;
use kaspa_consensus_core::header::Header;
use quarry_kaspa::pool::KaspaPool;
use quarry_kaspa::session::{KaspaConfig, KaspaSession};
use quarry_kaspa::work::{KaspaJob, KaspaTemplate};
use quarry_stratum::Now;
use quarry_work::Difficulty;
use serde_json::json;

const START: Now = Now::synced(1_800_000_000_000);

fn template(id: u64) -> Arc<KaspaTemplate> {
    let mut header = Header::from(&DEVNET_GENESIS);
    header.timestamp = 1_800_000_000_000 + id;
    Arc::new(KaspaTemplate {
        id,
        header,
        reward: 1,
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("kaspa");
    group.throughput(Throughput::Elements(1));
    let job = KaspaJob::new(template(1));
    let mut nonce = 0u64;
    group.bench_function("pow", |b| {
        b.iter(|| {
            nonce = nonce.wrapping_add(1);
            job.pow(nonce)
        })
    });
    let mut id = 0;
    group.bench_function("job_new", |b| {
        b.iter(|| {
            id += 1;
            KaspaJob::new(template(id))
        })
    });

    // Every hash meets the share target (difficulty 2^-40 saturates it), so each timed submit
    // is accepted; nonces increase, so none is a duplicate.
    let mut config = KaspaConfig {
        network: Prefix::Devnet,
        ..KaspaConfig::default()
    };
    let easy = Difficulty::new(2f64.powi(-40)).expect("positive");
    config.vardiff.start = easy;
    config.vardiff.min = easy;
    config.vardiff.max = easy;
    // The clock stands still here, so the per-connection share budget would run dry after its
    // burst: lift it, to time the validation rather than the limiter.
    config.submit_budget = quarry_stratum::rate::Budget {
        per_sec: u32::MAX,
        burst: u32::MAX,
    };
    let pool = KaspaPool::new(64);
    let mut session = KaspaSession::new(Arc::new(config), START);
    session.handle_job(Arc::new(KaspaJob::new(template(1))), START);
    let address = Address::new(Prefix::Devnet, Version::PubKey, &[7u8; 32]).to_string();
    for line in [
        json!({"id": 1, "method": "mining.subscribe", "params": ["bench"]}),
        json!({"id": 2, "method": "mining.authorize", "params": [format!("{address}.b"), "x"]}),
    ] {
        session.handle_bytes(format!("{line}\n").as_bytes(), START, &pool);
    }
    while session.poll_transmit().is_some() {}
    while session.poll_event().is_some() {}
    let mut nonce = 0u64;
    group.bench_function("submit", |b| {
        b.iter(|| {
            nonce += 1;
            let line = format!(
                "{{\"id\":9,\"method\":\"mining.submit\",\"params\":[\"b\",\"1\",\"{nonce:012x}\"]}}\n"
            );
            session.handle_bytes(line.as_bytes(), START, &pool);
            // As the driver does: the events, then the share log's word, then the answer.
            while session.poll_event().is_some() {}
            session.share_recorded(true);
            let answer = session.poll_transmit();
            assert!(answer.as_deref().is_some_and(|a| a.contains("true")), "{answer:?}");
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
