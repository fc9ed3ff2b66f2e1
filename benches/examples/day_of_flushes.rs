//! SQL over a day of 10-second flushes, before and after compaction (issue 19, 4): 8 640 parts of 24 readings
//! (200 devices, 6 sensors; 207 360 readings) in a local archive; the three `sql-vs-duckdb` queries, best of 5,
//! over the parts as flushed, then after compaction has merged them in tiers.
//!
//! `cargo run --release -p weir-benches --example day_of_flushes [-- PARTS]`

use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutPayload};
use weir_sinks::archive::ArchiveLocation;
use weir_sinks::part::{ArchivedReading, sort_for_archive, write_parquet};
use weir_sinks::sql::{SqlArchive, SqlLimits};

const DAY: &str = "2026-11-19";
const T: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z
const SENSORS: [&str; 6] =
    ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];
const QUERIES: [(&str, &str); 3] = [
    (
        "15-minute means of one sensor",
        "SELECT date_bin(INTERVAL '15 minutes', timestamp) AS w, avg(value) FROM readings \
         WHERE sensor = 'speed' AND date = '2026-11-19' GROUP BY w ORDER BY w",
    ),
    (
        "per-sensor summary",
        "SELECT sensor, count(*), min(value), max(value), avg(value) FROM readings \
         WHERE date = '2026-11-19' GROUP BY sensor ORDER BY sensor",
    ),
    (
        "latest per device",
        "SELECT device, max(timestamp) FROM readings WHERE date = '2026-11-19' GROUP BY device ORDER BY device",
    ),
];

fn main() {
    let parts: usize = std::env::args().nth(1).map_or(8640, |a| a.parse().expect("a number of parts"));
    let dir = tempfile::tempdir().unwrap();
    let location = ArchiveLocation::open(&format!("file://{}", dir.path().display())).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let per_part = 24;
    let mut position = 0u64;
    for p in 0..parts {
        let mut rows: Vec<ArchivedReading> = (0..per_part)
            .map(|i| {
                let n = p * per_part + i;
                ArchivedReading {
                    device: format!("vehicle-{:05}", n % 200),
                    sensor: SENSORS[n / 200 % 6].into(),
                    value: (n as f64 * 0.37).sin() * 100.0,
                    micros: T + (p as i64) * 10_000_000 + i as i64,
                    written: n as u64 + 1,
                }
            })
            .collect();
        sort_for_archive(&mut rows);
        let path = location.part_path(DAY, position + 1, position + per_part as u64);
        position += per_part as u64;
        rt.block_on(location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
    }
    let measure = |what: &str| {
        let files = rt.block_on(location.list_parts()).unwrap().len();
        let sql = SqlArchive::new(location.clone(), None, SqlLimits::default()).expect("SQL threads start");
        println!("{what}: {files} files");
        for (name, query) in QUERIES {
            let best = (0..5)
                .map(|_| {
                    let started = Instant::now();
                    rt.block_on(sql.query(query)).unwrap();
                    started.elapsed()
                })
                .min()
                .unwrap_or(Duration::ZERO);
            println!("  {name}: best of 5 {:.1} ms", best.as_secs_f64() * 1e3);
        }
    };
    measure(&format!("as flushed ({parts} parts of {per_part} readings)"));
    let started = Instant::now();
    // Compaction as the sealer runs it, at noon of the day (far from due): until nothing more is due.
    let noon = T + 43_200_000_000;
    let mut merged = 0;
    loop {
        let done = rt
            .block_on(weir_sinks::compact::compact_due_parts(&location, None, position, noon, 3_600_000_000))
            .unwrap();
        if done.is_empty() {
            break;
        }
        merged += done.len();
    }
    println!("compaction: {merged} merges in {:.2} s", started.elapsed().as_secs_f64());
    measure("after compaction");
}
