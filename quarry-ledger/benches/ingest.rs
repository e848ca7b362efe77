//! Share-log ingest: shares per second into SQLite and PostgreSQL, batched as the group-commit
//! writer batches them.
//!
//! `cargo bench -p quarry-ledger --bench ingest`. PostgreSQL runs when QUARRY_BENCH_POSTGRES_URL
//! is set (e.g. from `scripts/postgres.sh start /tmp/pg`).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quarry_ledger::{ShareLog, ShareRecord, Store};

/// Share timestamps rise as they do in a pool.
static CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_800_000_000_000);

fn share(i: u64) -> ShareRecord {
    ShareRecord {
        created_ms: CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        address: format!("bc1qexampleaddress{:04}", i % 1000),
        worker: format!("bc1qexampleaddress{:04}.rig{}", i % 1000, i % 4),
        difficulty: 65536.0,
        network_difficulty: 1.2e14,
        block_reward: 312_500_000,
        height: 900_000,
        template_id: (i / 10_000) as i64,
        is_block: false,
        instance: "bench".into(),
        chain: quarry_ledger::Chain::BITCOIN,
        aux_payouts: Default::default(),
        hash: None,
    }
}

fn bench_backend(c: &mut Criterion, name: &str, url: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store = runtime.block_on(Store::open(url)).expect("open store");
    let mut group = c.benchmark_group(format!("ingest/{name}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for batch in [1000u64, 8192] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("insert_batch_{batch}"), |b| {
            b.iter_custom(|iterations| {
                // Fresh shares for every batch, built outside the timed part: the same shares
                // again would carry the same timestamps, and their index entries would land in
                // the middle of the time index instead of at its end (a page write per row,
                // which a pool, whose clock moves on, never sees).
                let batches: Vec<Vec<ShareRecord>> = (0..iterations)
                    .map(|_| (0..batch).map(share).collect())
                    .collect();
                let started = Instant::now();
                for shares in &batches {
                    runtime
                        .block_on(store.insert_shares(shares))
                        .expect("insert");
                }
                started.elapsed()
            })
        });
    }
    // Through the writer: 64 concurrent submitters, each waiting for durability, as
    // connections do; measures acknowledged shares per second with group commit.
    let spool = std::env::temp_dir().join(format!("quarry-bench-spool-{}", std::process::id()));
    let log = runtime.block_on(async { ShareLog::spawn(store.clone(), spool) });
    group.throughput(Throughput::Elements(64 * 256));
    group.bench_function("share_log_64x256_acknowledged", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..64u64)
                        .map(|t| {
                            let log = log.clone();
                            tokio::spawn(async move {
                                for i in 0..256 {
                                    log.record(share(t * 1000 + i)).await.expect("recorded");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                });
            }
            started.elapsed()
        })
    });
    group.finish();
}

fn ingest(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("quarry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    bench_backend(
        c,
        "sqlite",
        &format!("sqlite://{}", dir.join("bench.db").display()),
    );
    if let Ok(url) = std::env::var("QUARRY_BENCH_POSTGRES_URL") {
        bench_backend(c, "postgres", &url);
    } else {
        eprintln!("QUARRY_BENCH_POSTGRES_URL not set: PostgreSQL ingest not measured");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, ingest);
criterion_main!(benches);
