//! The hashrate history's cost: what each accepted share pays on the share path
//! ([`HistoryBook::accepted`], under the server's lock), and one write of a batch of 10,000
//! workers to SQLite (every 5 s in `quarry serve`).
//!
//! `cargo bench -p quarry-ledger --bench history`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use quarry_ledger::{HistoryBook, HistoryShare, Store};

const WORKERS: usize = 10_000;

fn names() -> Vec<(String, String)> {
    (0..WORKERS)
        .map(|i| {
            let address = format!("bc1qexampleaddress{:05}", i / 2);
            (format!("{address}.rig{}", i % 2), address)
        })
        .collect()
}

fn fill(book: &mut HistoryBook, names: &[(String, String)], shares: usize, start_ms: i64) {
    for i in 0..shares {
        let (worker, address) = &names[i % names.len()];
        book.accepted(&HistoryShare {
            chain: "bitcoin",
            address,
            worker,
            difficulty: 65536.0,
            achieved: 70_000.0 + i as f64,
            time_ms: start_ms + i as i64,
        });
    }
}

fn share_path(c: &mut Criterion) {
    let names = names();
    let mut group = c.benchmark_group("history");
    group.throughput(Throughput::Elements(1));
    // A known worker in the current minute: the steady state.
    let mut book = HistoryBook::new();
    fill(&mut book, &names, WORKERS, 1_800_000_000_000);
    let mut i = 0usize;
    group.bench_function("accepted/known-worker", |b| {
        b.iter(|| {
            let (worker, address) = &names[i % WORKERS];
            i += 1;
            book.accepted(&HistoryShare {
                chain: "bitcoin",
                address,
                worker,
                difficulty: 65536.0,
                achieved: 1.0,
                time_ms: 1_800_000_000_000,
            });
        })
    });
    group.throughput(Throughput::Elements(WORKERS as u64));
    group.bench_function("take/10k-workers", |b| {
        b.iter_batched(
            || {
                let mut book = HistoryBook::new();
                fill(&mut book, &names, WORKERS, 1_800_000_000_000);
                book
            },
            |mut book| book.take(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn write(c: &mut Criterion) {
    let names = names();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = std::env::temp_dir().join(format!("quarry-history-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = runtime
        .block_on(Store::open(&format!(
            "sqlite://{}",
            dir.join("h.db").display()
        )))
        .expect("open");
    let mut group = c.benchmark_group("history");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(WORKERS as u64));
    let mut minute = 0i64;
    group.bench_function("write/sqlite-10k-workers", |b| {
        b.iter_batched(
            || {
                let mut book = HistoryBook::new();
                minute += 1;
                fill(
                    &mut book,
                    &names,
                    WORKERS,
                    1_800_000_000_000 + minute * 60_000,
                );
                book.take()
            },
            |batch| {
                runtime
                    .block_on(store.write_history(&batch))
                    .expect("write")
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, share_path, write);
criterion_main!(benches);
