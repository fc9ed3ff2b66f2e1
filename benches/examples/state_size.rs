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

    // Windows: (a) readings one minute apart on one series, so each opens a 1-minute window (and every 15th a
    // quarter-hour one, ...); (b) a 1 Hz sensor whose value wanders ±20 % (sixty readings a minute, sketches of
    // ~20 buckets). Each without sketches, with the default sketched widths and with every width sketched (issue
    // 24): what the engine holds once it has processed them all.
    use weir_operators::Width;
    let minute_apart = |i: usize| (i as i64 * 60_000_000, i as f64);
    let one_hertz = |i: usize| (i as i64 * 1_000_000, 50.0 + 10.0 * ((i as f64) / 300.0).sin() + (i % 7) as f64);
    for (shape, every, readings) in [
        ("one reading a minute", &minute_apart as &dyn Fn(usize) -> (i64, f64), 200_000),
        ("1 Hz", &one_hertz, 864_000),
    ] {
        for (sketched, widths) in [
            ("no sketches", vec![]),
            ("default sketched widths", weir_operators::live::DEFAULT_SKETCHED_WIDTHS.to_vec()),
            ("sketches on every width", Width::ALL.to_vec()),
        ] {
            windows_held(shape, sketched, readings, every, widths);
        }
    }
}

/// Feeds `readings` of one series (`at(i)`: timestamp and value) to a one-worker engine whose `sketch_widths`
/// carry sketches, and prints the bytes it holds per window.
fn windows_held(
    shape: &str,
    sketched: &str,
    readings: usize,
    at: &dyn Fn(usize) -> (i64, f64),
    sketch_widths: Vec<weir_operators::Width>,
) {
    let dir = tempfile::tempdir().unwrap();
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
                let (micros, value) = at(i);
                b.rows.push(Row { sensor, device, micros, value });
            }
            last = a.append_blocking(&b).unwrap();
        }
        wal.close();
        last
    };
    let span = at(readings - 1).0 - at(0).0;
    let windows: i64 = weir_operators::Width::ALL.iter().map(|w| span / w.micros() + 1).sum();
    let (_tx, durable) = tokio::sync::watch::channel(last);
    let baseline = live();
    let options = weir_pipeline::stats::StatsOptions {
        workers: 1,
        dedup_horizon: std::time::Duration::ZERO,
        sketch_widths,
        ..Default::default()
    };
    let tail = weir_pipeline::wal::LogTail {
        dir: dir.path().to_path_buf(),
        durable,
        clock: Default::default(),
        doorbell: Default::default(),
    };
    let engine =
        weir_pipeline::stats::StatsEngine::start(tail, weir_pipeline::reading::SensorSet::default(), options).unwrap();
    while engine.processed_position() < last {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Let the dataflow settle.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let held = live() - baseline;
    println!(
        "windows ({shape}, {sketched}): {windows} windows held in {held} bytes: {:.1} bytes per window",
        held as f64 / windows as f64
    );
    engine.stop();
}
