//! The archive: writing a Parquet part, sealing a day (merge + exact dedup + sorted file + gzip dump), and SQL over
//! one sealed day with DataFusion. All in memory (`memory:///`), so storage speed does not enter.
//!
//! `cargo bench -p weir-benches --bench archive`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use object_store::{ObjectStoreExt, PutPayload};
use weir_sinks::archive::ArchiveLocation;
use weir_sinks::part::{ArchivedReading, sort_for_archive, write_parquet};
use weir_sinks::seal::seal_day;
use weir_sinks::sql::{SqlArchive, SqlLimits};

const DAY: &str = "2026-11-19";
const DAY_START: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z
/// Readings in the day: 200 devices × 6 sensors, one reading every 10 s for about 7 hours.
const READINGS: usize = 3_000_000;
/// The day arrives in this many parts (flushes).
const PARTS: usize = 30;

const SENSORS: [&str; 6] =
    ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];

fn day_readings() -> Vec<ArchivedReading> {
    (0..READINGS)
        .map(|n| ArchivedReading {
            device: format!("vehicle-{:05}", n % 200),
            sensor: SENSORS[(n / 200) % 6].to_owned(),
            value: (n as f64 * 0.37).sin() * 100.0,
            micros: DAY_START + (n / 1200) as i64 * 10_000_000,
            written: 3_600_000_000_000_000 + n as u64 / 1000,
        })
        .collect()
}

/// An in-memory archive holding the day in `PARTS` parts, as the archiver writes them.
fn archive_with_parts(rt: &tokio::runtime::Runtime, readings: &[ArchivedReading]) -> ArchiveLocation {
    let location = ArchiveLocation::open("memory:///").unwrap();
    for (i, chunk) in readings.chunks(READINGS.div_ceil(PARTS)).enumerate() {
        let mut rows = chunk.to_vec();
        sort_for_archive(&mut rows);
        let path = location.part_path(DAY, i as u64 + 1, i as u64 + 1);
        rt.block_on(location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
    }
    location
}

fn archive(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let readings = day_readings();
    let mut group = c.benchmark_group("archive");
    group.sample_size(10);

    let mut part: Vec<ArchivedReading> = readings[..100_000].to_vec();
    sort_for_archive(&mut part);
    group.throughput(Throughput::Elements(part.len() as u64));
    group.bench_function("part-write/100k", |b| b.iter(|| write_parquet(&part).unwrap()));

    group.throughput(Throughput::Elements(READINGS as u64));
    group.bench_function(format!("seal-day/{}M-readings-{PARTS}-parts", READINGS / 1_000_000), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let location = archive_with_parts(&rt, &readings);
                let started = Instant::now();
                rt.block_on(seal_day(&location, DAY, None, None)).unwrap();
                total += started.elapsed();
            }
            total
        })
    });

    let location = archive_with_parts(&rt, &readings);
    rt.block_on(seal_day(&location, DAY, None, None)).unwrap();
    let sql = SqlArchive::new(location, None, SqlLimits::default()).expect("SQL threads start");
    let queries = [
        (
            "15min-means-one-sensor",
            "SELECT date_bin(INTERVAL '15 minutes', timestamp) AS w, avg(value) FROM readings \
             WHERE sensor = 'speed' AND date = '2026-11-19' GROUP BY w ORDER BY w",
        ),
        (
            "per-sensor-summary",
            "SELECT sensor, count(*), min(value), max(value), avg(value) FROM readings \
             WHERE date = '2026-11-19' GROUP BY sensor ORDER BY sensor",
        ),
        (
            "latest-per-device",
            "SELECT device, max(timestamp) FROM readings WHERE date = '2026-11-19' GROUP BY device ORDER BY device",
        ),
    ];
    for (name, query) in queries {
        group.bench_function(format!("sql/{name}"), |b| b.iter(|| rt.block_on(sql.query(query)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, archive);
criterion_main!(benches);
