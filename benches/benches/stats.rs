//! The statistics dataflow alone: readings/s from the WAL through dedup, windows and latest, per worker count.
//!
//! `cargo bench -p weir-benches --bench stats`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const READINGS: usize = 200_000;

fn stats(c: &mut Criterion) {
    let mut group = c.benchmark_group("stats");
    group.sample_size(10);
    group.throughput(Throughput::Elements(READINGS as u64));
    // Records of 8 192 readings (large requests) and of 100 (small requests: many more logical times).
    for per_record in [8192, 100] {
        let dir = tempfile::tempdir().unwrap();
        let last = weir_benches::wal_with_readings(dir.path(), READINGS, per_record, 100);
        for workers in [1, 2] {
            let name = if per_record == 8192 {
                format!("dataflow/{workers}-workers")
            } else {
                format!("dataflow/{workers}-workers/{per_record}-per-record")
            };
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    (0..iters).map(|_| weir_benches::replay_statistics(dir.path(), last, workers)).sum()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, stats);
criterion_main!(benches);
