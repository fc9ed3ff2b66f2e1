//! Reading live windows: what a window costs to read when its sketch is its own (a copy) and when it is merged from
//! the finer windows it is made of (`LiveWindows`: a 1-hour window from 4 quarter-hours, a 1-day one from 96).
//!
//! `cargo bench -p weir-benches --bench live_windows`

use criterion::{Criterion, criterion_group, criterion_main};
use weir_operators::sketch::Bucket;
use weir_operators::{DeviceId, LiveWindows, Reading, SensorId, SeriesKey, Width, WindowAgg, WindowKey};

/// One series with a day of readings at 1 Hz, values like a vehicle's speed (0–130 with noise).
fn a_day_at_one_hertz() -> (LiveWindows, SeriesKey) {
    let series = SeriesKey { device: DeviceId(1), sensor: SensorId(1) };
    let mut live = LiveWindows::new(None);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for second in 0..86_400i64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let value = 65.0 + 60.0 * ((second as f64) / 3_000.0).sin() + (x % 1_000) as f64 / 100.0;
        let reading = Reading { series, micros: second * 1_000_000, value, seq: second as u64 };
        live.add_reading(series, reading.micros, &WindowAgg::of(&reading), Bucket::of(value));
    }
    (live, series)
}

fn read_windows(c: &mut Criterion) {
    let (live, series) = a_day_at_one_hertz();
    let mut group = c.benchmark_group("live_windows/read");
    for width in [Width::Minute, Width::QuarterHour, Width::Hour, Width::Day] {
        let key = WindowKey { series, width, start: 0 };
        group.bench_function(width.name(), |b| b.iter(|| live.get(std::hint::black_box(&key))));
    }
    group.finish();
}

criterion_group!(benches, read_windows);
criterion_main!(benches);
