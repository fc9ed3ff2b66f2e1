//! The archive against the deduplicated input: exactly once, whatever the order, splits, duplicates and crashes.

use std::collections::HashSet;

use proptest::prelude::*;
use weir_pipeline::reading::{DeviceInterner, ReadingBatch, Row, SensorSet};
use weir_pipeline::wal::record::encode_batch;
use weir_pipeline::wal::{Wal, WalOptions};

use super::*;
use crate::part::read_parquet;

/// (device, sensor index, micros, value)
type Input = (u8, u16, i64, f64);
const DEVICES: [&str; 3] = ["default", "truck-1", "weather-ü"];

struct Fixture {
    _dir: tempfile::TempDir,
    wal_dir: PathBuf,
    checkpoint: PathBuf,
    location: ArchiveLocation,
    durable: watch::Receiver<u64>,
    last: u64,
    runtime: tokio::runtime::Runtime,
}

fn fixture(records: &[Vec<Input>], url: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let sensors = SensorSet::default();
    let (wal, _) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    let appender = wal.appender();
    let mut last = 0;
    for record in records {
        let mut batch = ReadingBatch::new(&sensors);
        let mut interner = DeviceInterner::default();
        for &(d, sensor, micros, value) in record {
            let device = interner.intern(&mut batch.devices, DEVICES[d as usize]);
            batch.rows.push(Row { sensor, device, micros, value });
        }
        let mut payload = Vec::new();
        encode_batch(&batch, &mut payload);
        last = appender.append_blocking(payload).unwrap();
    }
    let durable = appender.watch_durable();
    wal.close();
    let archive_url = match url {
        Some(u) => u.to_owned(),
        None => url::Url::from_directory_path(dir.path().join("archive")).unwrap().to_string(),
    };
    Fixture {
        checkpoint: checkpoint_path(dir.path()),
        location: ArchiveLocation::open(&archive_url).unwrap(),
        wal_dir,
        durable,
        last,
        runtime: tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap(),
        _dir: dir,
    }
}

impl Fixture {
    /// Runs the archiver until it has committed everything (or failed), then stops it.
    fn archive(&self, options: ArchiverOptions) -> Result<(), ArchiveError> {
        let archiver = Archiver::start(
            self.wal_dir.clone(),
            self.durable.clone(),
            self.location.clone(),
            self.checkpoint.clone(),
            options,
            self.runtime.handle().clone(),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while archiver.progress.committed.load(Ordering::Acquire) < self.last && !archiver.is_finished() {
            assert!(Instant::now() < deadline, "archiver made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        archiver.stop()
    }

    fn contents(&self) -> Vec<(String, String, i64, u64)> {
        let parts = self.runtime.block_on(self.location.list_parts()).unwrap();
        let mut out = Vec::new();
        for part in parts {
            let bytes =
                self.runtime.block_on(async { self.location.store.get(&part.path).await?.bytes().await }).unwrap();
            let rows = read_parquet(bytes).unwrap();
            let mut sorted = rows.clone();
            sort_for_archive(&mut sorted);
            assert_eq!(rows, sorted, "rows sorted by (sensor, device, timestamp) in {}", part.path);
            for r in rows {
                assert_eq!(utc_date(r.micros), part.date, "partitioned by event date");
                out.push((r.device, r.sensor, r.micros, r.value.to_bits()));
            }
        }
        out.sort();
        out
    }
}

/// Small flushes (many parts) and a horizon longer than the test data spans, so deduplication is exact.
fn small_flushes() -> ArchiverOptions {
    ArchiverOptions {
        flush_rows: 7,
        flush_age: Duration::from_millis(1),
        dedup_horizon: Duration::from_secs(30 * 86_400),
        ..ArchiverOptions::default()
    }
}

/// First write wins in write order: what the archive must hold.
fn model(records: &[Vec<Input>]) -> Vec<(String, String, i64, u64)> {
    let sensors = SensorSet::default();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &(d, s, micros, value) in records.iter().flatten() {
        if seen.insert((d, s, micros)) {
            out.push((DEVICES[d as usize].to_owned(), sensors.name(s).unwrap().to_owned(), micros, value.to_bits()));
        }
    }
    out.sort();
    out
}

fn records_strategy() -> impl Strategy<Value = Vec<Vec<Input>>> {
    let day = 86_400_000_000i64;
    let base = 20_000 * day;
    let reading = (0u8..3, 0u16..3, -3 * day..day, -100i32..100)
        .prop_map(move |(d, s, t, v)| (d, s, base + (t / 1_000_000) * 1_000_000, f64::from(v) / 4.0));
    (proptest::collection::vec(reading, 1..80), proptest::collection::vec(1usize..15, 1..20)).prop_map(
        |(mut readings, splits)| {
            let dups: Vec<Input> = readings.iter().step_by(4).map(|r| (r.0, r.1, r.2, r.3 + 0.5)).collect();
            readings.extend(dups);
            readings.reverse();
            let mut records = Vec::new();
            let mut rest = &readings[..];
            for s in splits.into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at(s.min(rest.len()));
                records.push(head.to_vec());
                rest = tail;
            }
            records
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The archive holds exactly the first-written readings, each once.
    #[test]
    fn archive_equals_the_deduplicated_input(records in records_strategy()) {
        let f = fixture(&records, None);
        f.archive(small_flushes()).unwrap();
        prop_assert_eq!(f.contents(), model(&records));
    }

    /// A crash at any point of a flush, then a restart, still leaves every reading in the archive exactly once.
    #[test]
    fn a_crash_at_any_point_of_a_flush_loses_and_duplicates_nothing(
        records in records_strategy(),
        fault in prop_oneof![
            Just(FaultPoint::BeforeUpload),
            Just(FaultPoint::MidUpload),
            Just(FaultPoint::BeforeCommit),
            Just(FaultPoint::AfterMove),
        ],
    ) {
        let f = fixture(&records, None);
        let failed = f.archive(ArchiverOptions { fault: Some(fault), ..small_flushes() });
        prop_assert!(matches!(failed, Err(ArchiveError::Injected(p)) if p == fault), "{:?}", failed);
        // Restart with other flush sizes, so the redone flush covers another position range than the parts the
        // failed one left behind: those must be removed, not kept beside the new ones.
        f.archive(ArchiverOptions { flush_rows: 1000, ..small_flushes() }).unwrap();
        prop_assert_eq!(f.contents(), model(&records));
    }
}

#[test]
fn a_restart_continues_from_the_checkpoint_and_keeps_deduplicating() {
    let t = 1_795_000_000_000_000;
    let records = vec![vec![(0, 0, t, 1.0), (1, 0, t, 2.0)], vec![(0, 0, t, 9.0)], vec![(0, 0, t + 1, 3.0)]];
    let f = fixture(&records[..1], None);
    f.archive(small_flushes()).unwrap();
    let committed = Checkpoint { path: f.checkpoint.clone() }.read().unwrap();
    assert_eq!(committed, 1);
    // More records arrive after the restart, one a duplicate of an archived reading.
    let (wal, _) = Wal::open(&f.wal_dir, WalOptions::default()).unwrap();
    let mut last = 0;
    for record in &records[1..] {
        let mut batch = ReadingBatch::new(&SensorSet::default());
        let device = DeviceInterner::default().intern(&mut batch.devices, DEVICES[record[0].0 as usize]);
        batch.rows.push(Row { sensor: record[0].1, device, micros: record[0].2, value: record[0].3 });
        let mut payload = Vec::new();
        encode_batch(&batch, &mut payload);
        last = wal.appender().append_blocking(payload).unwrap();
    }
    let f = Fixture { durable: wal.appender().watch_durable(), last, ..f };
    f.archive(small_flushes()).unwrap();
    wal.close();
    assert_eq!(f.contents(), model(&records));
}

#[test]
fn memory_store_and_part_names() {
    let t = 1_795_000_000_000_000;
    let records = vec![vec![(0, 0, t, 1.0), (0, 0, t - 86_400_000_000, 2.0)]];
    let f = fixture(&records, Some("memory:///"));
    f.archive(small_flushes()).unwrap();
    let parts = f.runtime.block_on(f.location.list_parts()).unwrap();
    let names: Vec<String> = parts.iter().map(|p| p.path.to_string()).collect();
    assert_eq!(
        names,
        vec![
            "readings/date=2026-11-17/part-00000000000000000001-00000000000000000001.parquet",
            "readings/date=2026-11-18/part-00000000000000000001-00000000000000000001.parquet",
        ]
    );
}
