//! Measures the bytes the statistics keep per window and per deduplication entry, with a counting allocator.
//!
//! `cargo run --release -p weir-benches --example state_size`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    use weir_operators::{DeviceId, FirstWriteFilter, Reading, SeriesKey};

    // Deduplication: one million keys inside the horizon, 100 devices, six sensors, arriving in time order.
    let before = live();
    let mut filter = FirstWriteFilter::new(i64::MAX / 4);
    let n = 1_000_000u64;
    for i in 0..n {
        let series = SeriesKey { device: DeviceId(i % 100), sensor: weir_operators::SensorId(i / 100 % 6) };
        let r = Reading { series, micros: (i / 600) as i64 * 100_000, value: 1.0, seq: i };
        assert!(filter.admit(&r));
    }
    let dedup_bytes = (live() - before) as f64 / filter.remembered() as f64;
    println!("dedup: {} keys remembered, {dedup_bytes:.1} bytes per key", filter.remembered());
    drop(filter);

    // Windows: readings one minute apart on one series, so each opens a 1-minute window (and every 15th a
    // quarter-hour one, ...). Measure what the engine holds once it has processed them all.
    let dir = tempfile::tempdir().unwrap();
    let readings = 200_000usize;
    let last = {
        use weir_pipeline::reading::{DeviceInterner, ReadingBatch, Row};
        use weir_pipeline::wal::{Wal, WalOptions};
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let a = wal.appender();
        let mut last = 0;
        for chunk in (0..readings).collect::<Vec<_>>().chunks(8192) {
            let mut b = ReadingBatch::new();
            let mut interner = DeviceInterner::default();
            let device = interner.intern(&mut b.devices, "default");
            let sensor = interner.intern_sensor(&mut b.sensors, "speed").unwrap();
            for &i in chunk {
                b.rows.push(Row { sensor, device, micros: i as i64 * 60_000_000, value: i as f64 });
            }
            last = a.append_blocking(&b).unwrap();
        }
        wal.close();
        last
    };
    let windows = readings + readings / 15 + readings / 60 + readings / 1440;
    let (_tx, durable) = tokio::sync::watch::channel(last);
    let baseline = live();
    let options = weir_pipeline::stats::StatsOptions {
        workers: 1,
        dedup_horizon: std::time::Duration::ZERO,
        ..Default::default()
    };
    let tail = weir_pipeline::wal::LogTail { dir: dir.path().to_path_buf(), durable, clock: Default::default() };
    let engine =
        weir_pipeline::stats::StatsEngine::start(tail, weir_pipeline::reading::SensorSet::default(), options).unwrap();
    while engine.processed_position() < last {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Let the arrangement finish its merges.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let held = live() - baseline;
    println!("windows: {windows} windows held in {held} bytes: {:.1} bytes per window", held as f64 / windows as f64);
    engine.stop();
}
