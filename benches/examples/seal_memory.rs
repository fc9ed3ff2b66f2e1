//! Measures the memory a seal needs at its peak, with a counting allocator: a day of the soak's shape (6 000 series,
//! one reading every 5 minutes: 1 728 000 readings) in 60 parts, sealed, then resealed with one late part.
//!
//! `cargo run --release -p weir-benches --example seal_memory [-- SERIES_PER_SENSOR READINGS_PER_SERIES]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use object_store::{ObjectStoreExt, PutPayload};
use weir_sinks::archive::ArchiveLocation;
use weir_sinks::part::{ArchivedReading, sort_for_archive, write_parquet};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const DAY: &str = "2026-11-19";
const T: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let devices = args.first().copied().unwrap_or(1000);
    let per_series = args.get(1).copied().unwrap_or(288);
    let sensors = ["speed", "fuel", "rpm", "temperature", "location_latitude", "location_longitude"];
    let dir = tempfile::tempdir().unwrap();
    let location = ArchiveLocation::open(&format!("file://{}", dir.path().display())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Readings in time order, cut into 60 parts as the archiver's flushes would.
    let step = 86_400_000_000 / per_series as i64;
    let total = devices * sensors.len() * per_series;
    let parts = 60;
    let mut position = 1u64;
    let mut put = |rows: &mut Vec<ArchivedReading>| {
        sort_for_archive(rows);
        let (first, last) = (position, position + rows.len() as u64 - 1);
        position = last + 1;
        let path = location.part_path(DAY, first, last);
        rt.block_on(location.store.put(&path, PutPayload::from(write_parquet(rows).unwrap()))).unwrap();
        rows.clear();
    };
    let mut rows = Vec::new();
    for i in 0..total {
        let (tick, series) = (i / (devices * sensors.len()), i % (devices * sensors.len()));
        rows.push(ArchivedReading {
            device: format!("vehicle-{:05}", series / sensors.len()),
            sensor: sensors[series % sensors.len()].into(),
            value: (i % 1000) as f64 * 0.25,
            micros: T + tick as i64 * step,
            written: i as u64,
        });
        if rows.len() == total / parts {
            put(&mut rows);
        }
    }
    if !rows.is_empty() {
        put(&mut rows);
    }
    drop(rows);

    let seal = |what: &str| {
        let (base, started) = (LIVE.load(Ordering::Relaxed), Instant::now());
        PEAK.store(base, Ordering::Relaxed);
        let outcome = rt.block_on(weir_sinks::seal::seal_day(&location, DAY, None, None)).unwrap();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        println!(
            "{what}: {} parts, {} readings in {:.2} s; peak {:.1} MiB above the start, {:.1} bytes per reading",
            outcome.parts_merged,
            outcome.record.readings,
            started.elapsed().as_secs_f64(),
            peak as f64 / (1 << 20) as f64,
            peak as f64 / outcome.record.readings as f64
        );
        // What a seal must hold however it streams: the compressed files it writes (and, before, reads).
        let size = |sub: &str| walk(&dir.path().join(sub)) as f64 / (1 << 20) as f64;
        println!(
            "  written: sealed file {:.1} MiB, rollups {:.1} MiB, dump {:.1} MiB",
            size("readings"),
            size("rollups"),
            size("dumps")
        );
    };
    seal("first seal");
    let late = (0..1000)
        .map(|i| ArchivedReading {
            device: format!("vehicle-{:05}", i % devices),
            sensor: "speed".into(),
            value: 1.5,
            micros: T + 1 + i as i64,
            written: u64::MAX / 2,
        })
        .collect::<Vec<_>>();
    put(&mut late.clone());
    seal("reseal with a late part");
}

/// The bytes of the files under `dir`.
fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => walk(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
