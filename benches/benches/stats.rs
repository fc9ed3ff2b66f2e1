//! The statistics dataflow alone: readings/s from the WAL through dedup, windows and latest, per worker count.
//!
//! `cargo bench -p weir-benches --bench stats`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const READINGS: usize = 200_000;

fn stats(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let last = weir_benches::wal_with_readings(dir.path(), READINGS, 8192, 100);
    let mut group = c.benchmark_group("stats");
    group.sample_size(10);
    group.throughput(Throughput::Elements(READINGS as u64));
    for workers in [1, 2] {
        group.bench_function(format!("dataflow/{workers}-workers"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| weir_benches::replay_statistics(dir.path(), last, workers)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, stats);
criterion_main!(benches);
