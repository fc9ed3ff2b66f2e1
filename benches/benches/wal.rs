//! WAL append with group commit: readings/s made durable (write + fdatasync) by concurrent appenders, as request
//! handlers do. One fsync covers everything queued, so more appenders means fewer fsyncs per reading.
//!
//! `cargo bench -p weir-benches --bench wal`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_pipeline::wal::{Wal, WalOptions};

const READINGS_PER_RECORD: usize = 1000;
const RECORDS: usize = 400;

fn wal_append(c: &mut Criterion) {
    let batches = weir_benches::record_batches(RECORDS * READINGS_PER_RECORD, READINGS_PER_RECORD, 1000);
    let mut group = c.benchmark_group("wal");
    group.sample_size(10);
    group.throughput(Throughput::Elements((RECORDS * READINGS_PER_RECORD) as u64));
    for appenders in [1, 4, 16] {
        group.bench_function(format!("append-fsync/{appenders}-appenders/{READINGS_PER_RECORD}-per-record"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
                    let started = Instant::now();
                    std::thread::scope(|s| {
                        for chunk in batches.chunks(RECORDS.div_ceil(appenders)) {
                            let appender = wal.appender();
                            s.spawn(move || {
                                for p in chunk {
                                    appender.append_blocking(p).unwrap();
                                }
                            });
                        }
                    });
                    total += started.elapsed();
                    wal.close();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, wal_append);
criterion_main!(benches);
