//! What payouts in the coinbase cost the pool: a payout table for a template (the window's split,
//! carried balances, the output choice under the cap and the weight budget), paid on every new
//! template and whenever the split moves; a window snapshot (the PPLNS weights from the held
//! shares); and the verifier on one block.
//!
//! `cargo bench -p quarry-ledger --bench coinbase`.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};
use quarry_ledger::coinbase::{
    plan, verify_table, CoinbaseLimits, OutputCost, PublishedShare, Window, WindowShare,
};
use quarry_ledger::schemes::FeePolicy;
use quarry_ledger::Sat;

/// `miners` addresses, `shares` shares round-robin, each of difficulty 1.
fn window(miners: usize, shares: usize) -> Window {
    let mut window = Window::new();
    for id in 0..shares {
        window.push(WindowShare {
            id: id as i64 + 1,
            address: format!("bc1qminer{:06}", id % miners),
            difficulty: 1.0,
        });
    }
    window
}

fn tables(c: &mut Criterion) {
    let policy = FeePolicy {
        fee_ppm: 10_000,
        split: FeePolicy::default_split(["dev", "grants", "audits", "ops"]),
    };
    let limits = CoinbaseLimits {
        min_output_sat: 100_000,
        max_outputs: 100,
        weight_budget: 40_000,
        sigops_budget: 400,
    };
    let cost = |_: &str| {
        Some(OutputCost {
            weight: 124,
            sigops: 0,
        })
    };
    let mut group = c.benchmark_group("coinbase");
    for (miners, shares) in [(500usize, 10_000usize), (5_000, 100_000)] {
        let window = window(miners, shares);
        let difficulty = shares as f64;
        group.bench_function(format!("snapshot {miners} miners {shares} shares"), |b| {
            b.iter(|| window.snapshot(difficulty))
        });
        let snapshot = window.snapshot(difficulty);
        // A tenth of the miners are owed a balance.
        let carried: BTreeMap<String, Sat> = (0..miners / 10)
            .map(|i| (format!("bc1qminer{:06}", i * 10), Sat(50_000)))
            .collect();
        group.bench_function(format!("table {miners} miners"), |b| {
            b.iter(|| {
                plan(
                    1,
                    Sat(312_500_000),
                    &snapshot,
                    &carried,
                    &policy,
                    &limits,
                    cost,
                )
            })
        });
        let table = plan(
            1,
            Sat(312_500_000),
            &snapshot,
            &carried,
            &policy,
            &limits,
            cost,
        );
        let published: Vec<PublishedShare> = (0..shares)
            .rev()
            .map(|id| PublishedShare {
                id: id as i64 + 1,
                created_ms: id as i64,
                address: format!("bc1qminer{:06}", id % miners),
                worker: String::new(),
                difficulty: 1.0,
                hash: Some(format!("00000000{:056x}", id)),
            })
            .collect();
        let mut coinbase: BTreeMap<String, u64> =
            table.outputs().map(|(a, s)| (a.to_string(), s)).collect();
        coinbase.insert("pool".into(), table.remainder_sat());
        assert!(verify_table(&table, &published, &coinbase, Some("pool")).is_empty());
        group.bench_function(format!("verify {miners} miners {shares} shares"), |b| {
            b.iter(|| verify_table(&table, &published, &coinbase, Some("pool")))
        });
    }
    group.finish();
}

criterion_group!(benches, tables);
criterion_main!(benches);
