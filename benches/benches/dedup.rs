//! The first-write-wins filter alone (the dataflow's dedup operator and the archiver use it): readings/s through
//! `FirstWriteFilter::admit` for 1 000 devices × 6 sensors with 10% duplicates, in arrival order.
//!
//! `cargo bench -p weir-benches --bench dedup`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use weir_operators::{DeviceId, FirstWriteFilter, Reading, SeriesKey};

const READINGS: usize = 1_000_000;

fn readings() -> Vec<Reading> {
    let devices: Vec<DeviceId> = (0..1000).map(|d| DeviceId::of(&format!("vehicle-{d:05}"))).collect();
    let start = 1_795_000_000_000_000i64;
    let reading = |n: usize| {
        let series = SeriesKey { device: devices[n % 1000], sensor: weir_operators::SensorId(((n / 1000) % 6) as u64) };
        let micros = start + (n / 6000) as i64 * 100_000;
        Reading { series, micros, value: n as f64, seq: Reading::seq_of(1 + n as u64 / 1000, (n % 1000) as u32) }
    };
    let mut out = Vec::with_capacity(READINGS * 11 / 10);
    for n in 0..READINGS {
        out.push(reading(n));
        // Every tenth reading is sent again 500 readings later.
        if n >= 500 && (n - 500).is_multiple_of(10) {
            out.push(reading(n - 500));
        }
    }
    out
}

fn dedup(c: &mut Criterion) {
    let input = readings();
    let mut group = c.benchmark_group("dedup");
    group.sample_size(10);
    group.throughput(Throughput::Elements(input.len() as u64));
    group.bench_function("first-write-filter/48h-horizon", |b| {
        b.iter_batched(
            || FirstWriteFilter::new(48 * 3_600_000_000),
            |mut filter| input.iter().filter(|r| filter.admit(r)).count(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);
