//! One vardiff step as a session takes it per accepted share: record the share, then ask
//! whether to retarget. `cargo bench -p quarry-work --bench vardiff`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use quarry_work::vardiff::{Vardiff, VardiffConfig};
use quarry_work::Difficulty;

fn bench_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("vardiff");
    group.throughput(Throughput::Elements(1));
    let config = VardiffConfig {
        start: Difficulty::new(1024.0).expect("positive"),
        min: Difficulty::new(1.0).expect("positive"),
        ..VardiffConfig::default()
    };
    let network = Difficulty::new(1e14).expect("positive");
    let mut vardiff = Vardiff::new(config, config.start, 0);
    let mut now_ms = 0u64;
    // A miner on target (a share every 10 s at its difficulty): most steps do not retarget,
    // and every 90 s one does, as in production.
    group.bench_function("record_and_retarget", |b| {
        b.iter(|| {
            now_ms += 10_000;
            vardiff.record_share(vardiff.current(), black_box(now_ms));
            black_box(vardiff.retarget(now_ms, network))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
