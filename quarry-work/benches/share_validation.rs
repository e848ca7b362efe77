//! Share validation cost: rebuild coinbase → merkle root → header → SHA256d, check targets.
//! `cargo bench -p quarry-work --bench share_validation`

use std::sync::Arc;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use quarry_work::coinbase::CoinbaseLayout;
use quarry_work::job::Job;
use quarry_work::share::{validate_share, validate_shares, ShareRules, Submission};
use quarry_work::template::{GetBlockTemplate, WorkTemplate};
use quarry_work::{Difficulty, Target};
use serde_json::json;

/// A template like a node's, with `count` distinct one-in one-out transactions.
fn template(count: usize) -> Arc<WorkTemplate> {
    let transactions: Vec<_> = (0..count)
        .map(|i| {
            let mut prev = [0u8; 32];
            prev[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let tx = Transaction {
                version: Version::TWO,
                lock_time: LockTime::ZERO,
                input: vec![TxIn {
                    previous_output: OutPoint::new(Txid::from_byte_array(prev), 0),
                    script_sig: ScriptBuf::from_bytes(vec![0x51; 107]),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                }],
                output: vec![TxOut {
                    value: Amount::from_sat(10_000),
                    script_pubkey: ScriptBuf::from_bytes(vec![0x51; 25]),
                }],
            };
            json!({"data": bitcoin::consensus::encode::serialize_hex(&tx), "fee": 500})
        })
        .collect();
    let gbt: GetBlockTemplate = serde_json::from_value(json!({
        "version": 0x2000_0000u32,
        "previousblockhash": "00".repeat(32),
        "transactions": transactions,
        "coinbasevalue": 312_500_000u64 + 500 * count as u64,
        "bits": "1d00ffff",
        "curtime": 1_800_000_000u64,
        "mintime": 1_799_999_000u64,
        "height": 900_000,
        "rules": ["csv", "!segwit", "taproot"],
    }))
    .expect("template JSON");
    Arc::new(WorkTemplate::from_gbt(&gbt, 1).expect("consistent template"))
}

fn job(count: usize) -> Job {
    let layout = CoinbaseLayout {
        extranonce1_len: 4,
        extranonce2_len: 8,
        tag: b"/quarry/".to_vec(),
    };
    let payout = hex::decode("0014e28f8b07c4e3dc790ee157f12aec37640b6dc23a").expect("hex");
    Job::new(template(count), &payout, &layout).expect("job")
}

fn bench_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_share");
    group.throughput(Throughput::Elements(1));
    for count in [0usize, 3000] {
        let job = job(count);
        let rules = ShareRules {
            target: Target::from_difficulty(Difficulty::new(1e-9).expect("positive")),
            version_mask: 0x1fff_e000,
            extranonce2_len: 8,
            now_unix: 1_800_000_000,
        };
        let name = if count == 0 { "empty" } else { "3000_tx" };
        let mut nonce = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                nonce = nonce.wrapping_add(1);
                let submission = Submission {
                    extranonce1: &[0, 0, 0, 1],
                    extranonce2: &nonce.to_le_bytes().repeat(2),
                    version: 0x2000_0000,
                    ntime: 1_800_000_000,
                    nonce,
                };
                black_box(validate_share(black_box(&job), &submission, &rules)).is_ok()
            })
        });
    }
    group.finish();
}

/// The same shares validated 1, 2 and 4 at a time, their SHA-256 chains interleaved; the
/// throughput is per share, so criterion's time per element is the µs/share to compare.
fn bench_lanes(c: &mut Criterion) {
    let rules = ShareRules {
        target: Target::from_difficulty(Difficulty::new(1e-9).expect("positive")),
        version_mask: 0x1fff_e000,
        extranonce2_len: 8,
        now_unix: 1_800_000_000,
    };
    for count in [0usize, 3000] {
        let job = job(count);
        let name = if count == 0 { "empty" } else { "3000_tx" };
        let mut group = c.benchmark_group(format!("validate_lanes_{name}"));
        let mut nonce = 0u32;
        let mut next = move || {
            nonce = nonce.wrapping_add(1);
            nonce
        };
        fn submission(nonce: u32, extranonce2: &[u8; 8]) -> Submission<'_> {
            Submission {
                extranonce1: &[0, 0, 0, 1],
                extranonce2,
                version: 0x2000_0000,
                ntime: 1_800_000_000,
                nonce,
            }
        }
        group.throughput(Throughput::Elements(1));
        group.bench_function("1_lane", |b| {
            b.iter(|| {
                let n = next();
                let en2 = [n.to_le_bytes(), n.to_le_bytes()]
                    .concat()
                    .try_into()
                    .expect("8");
                black_box(validate_share(
                    black_box(&job),
                    &submission(n, &en2),
                    &rules,
                ))
                .is_ok()
            })
        });
        group.throughput(Throughput::Elements(2));
        group.bench_function("2_lanes", |b| {
            b.iter(|| {
                let ns = [next(), next()];
                let en2: [[u8; 8]; 2] = ns.map(|n| {
                    [n.to_le_bytes(), n.to_le_bytes()]
                        .concat()
                        .try_into()
                        .expect("8")
                });
                let subs = [submission(ns[0], &en2[0]), submission(ns[1], &en2[1])];
                let job = black_box(&job);
                black_box(validate_shares([
                    (job, &subs[0], &rules),
                    (job, &subs[1], &rules),
                ]))
                .iter()
                .all(Result::is_ok)
            })
        });
        group.throughput(Throughput::Elements(4));
        group.bench_function("4_lanes", |b| {
            b.iter(|| {
                let ns = [next(), next(), next(), next()];
                let en2: [[u8; 8]; 4] = ns.map(|n| {
                    [n.to_le_bytes(), n.to_le_bytes()]
                        .concat()
                        .try_into()
                        .expect("8")
                });
                let subs: [Submission<'_>; 4] = std::array::from_fn(|i| submission(ns[i], &en2[i]));
                let job = black_box(&job);
                black_box(validate_shares(std::array::from_fn::<_, 4, _>(|i| {
                    (job, &subs[i], &rules)
                })))
                .iter()
                .all(Result::is_ok)
            })
        });
        group.finish();
    }
}

fn bench_template(c: &mut Criterion) {
    let mut group = c.benchmark_group("template");
    group.sample_size(20);
    let gbt_template = template(3000);
    group.bench_function("prepare_3000_tx", |b| {
        b.iter(|| black_box(template(3000)).tx_count)
    });
    group.bench_function("branch_3000_tx", |b| {
        b.iter(|| black_box(&gbt_template).merkle_branch.len())
    });
    group.finish();
}

criterion_group!(benches, bench_validation, bench_lanes, bench_template);
criterion_main!(benches);
