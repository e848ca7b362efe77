//! A Stratum V1 share end to end inside the pool: parse the `mining.submit` line, validate the
//! share (coinbase, merkle branch, header, targets, duplicate check) and produce the answer
//! line and the accounting event. `cargo bench -p quarry-stratum --bench session`
//!
//! Nonces are found outside the timed part, so every timed share is valid and accepted.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use quarry_stratum::testkit::{template, test_pool, ADDRESS, HARD_BITS, START};
use quarry_stratum::v1::{Event, Notify, Session, SessionConfig};
use quarry_work::template::WorkTemplate;
use quarry_work::vardiff::VardiffConfig;
use quarry_work::{Difficulty, Target};
use serde_json::{json, Value};

/// A mainnet-difficulty template whose coinbase has a merkle branch of `levels` entries (a
/// 3,000-transaction block has 12). The branch's values do not change the cost.
fn branched_template(levels: usize) -> Arc<WorkTemplate> {
    let mut template = (*template(1, 0x11, HARD_BITS)).clone();
    template.merkle_branch = (0..levels).map(|i| [i as u8; 32]).collect();
    Arc::new(template)
}

fn bench_submit(c: &mut Criterion) {
    let mut group = c.benchmark_group("v1_submit");
    group.throughput(Throughput::Elements(1));
    for (name, levels) in [("empty", 0usize), ("3000_tx", 12)] {
        // The server's own pool state: the duplicate check takes its real lock.
        let pool = test_pool();
        // Fixed difficulty: vardiff must not move the target under the benchmark.
        let difficulty = Difficulty::new(1e-6).expect("positive");
        let config = SessionConfig {
            network: bitcoin::Network::Regtest,
            vardiff: VardiffConfig {
                start: difficulty,
                min: difficulty,
                max: difficulty,
                ..VardiffConfig::default()
            },
            ..SessionConfig::default()
        };
        let mut session = Session::new(Arc::new(config), START);
        session.handle_template(branched_template(levels), START, &pool);
        let hello = format!(
            "{}\n{}\n",
            json!({"id": 1, "method": "mining.subscribe", "params": []}),
            json!({"id": 2, "method": "mining.authorize", "params": [ADDRESS, "x"]})
        );
        session.handle_bytes(hello.as_bytes(), START, &pool);
        let mut notify = None;
        while let Some(line) = session.poll_transmit() {
            let value: Value = serde_json::from_str(&line).expect("JSON");
            if value["method"] == "mining.notify" {
                notify = Notify::from_params(&value["params"]).ok();
            }
        }
        while session.poll_event().is_some() {}
        let notify = notify.expect("a job after authorize");
        let target = Target::from_difficulty(difficulty);
        let extranonce1 = session.extranonce1().expect("subscribed").to_vec();
        let mut counter = 0u64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // A valid share with a fresh extranonce2, found outside the timing.
                    counter += 1;
                    let extranonce2 = counter.to_le_bytes();
                    let nonce = (0u32..)
                        .find(|n| {
                            let hash = notify.hash(
                                &extranonce1,
                                &extranonce2,
                                notify.version,
                                notify.ntime,
                                *n,
                            );
                            target.is_met_by(&hash)
                        })
                        .expect("a nonce");
                    format!(
                        "{}\n",
                        json!({"id": 7, "method": "mining.submit", "params": [
                            ADDRESS, notify.job_id, hex::encode(extranonce2),
                            format!("{:08x}", notify.ntime), format!("{nonce:08x}")]})
                    )
                },
                |line| {
                    session.handle_bytes(line.as_bytes(), START, &pool);
                    // The share log's word, as the driver gives it once the share is durable.
                    session.share_recorded(true);
                    let answer = session.poll_transmit().expect("an answer");
                    let accepted = matches!(session.poll_event(), Some(Event::ShareAccepted(_)));
                    assert!(accepted && answer.contains("true"), "{answer}");
                    answer
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_submit);
criterion_main!(benches);
