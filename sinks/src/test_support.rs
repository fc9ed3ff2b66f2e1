//! Test fixtures shared by the archive and SQL tests: a WAL with given readings, an archive, an archiver run.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use tokio::sync::watch;
use weir_operators::Admission;
use weir_pipeline::reading::{DeviceInterner, ReadingBatch, Row};
use weir_pipeline::stats::DedupVerdicts;
use weir_pipeline::wal::{Wal, WalOptions};

use crate::archive::{ArchiveError, ArchiveLocation, Archiver, ArchiverOptions, checkpoint_path, utc_date};
use crate::part::{read_parquet, sort_for_archive};

/// (device, sensor, micros, value): indexes into [`DEVICES`] and [`SENSORS`].
pub type Input = (u8, u16, i64, f64);
pub const DEVICES: [&str; 3] = ["default", "truck-1", "weather-ü"];
/// Sensor names of an open set (`--sensors any`): two differ only in case.
pub const SENSORS: [&str; 4] = ["speed", "fuel", "Speed", "cpu.usage_idle"];

/// The batch of one record of `Input`s.
pub fn batch_of(record: &[Input]) -> ReadingBatch {
    let mut batch = ReadingBatch::new();
    let mut interner = DeviceInterner::default();
    for &(d, sensor, micros, value) in record {
        let device = interner.intern(&mut batch.devices, DEVICES[d as usize]);
        let sensor = interner.intern_sensor(&mut batch.sensors, SENSORS[usize::from(sensor)]).unwrap();
        batch.rows.push(Row { sensor, device, micros, value });
    }
    batch
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub wal_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub location: ArchiveLocation,
    pub durable: watch::Receiver<u64>,
    pub last: u64,
    pub runtime: tokio::runtime::Runtime,
    /// What the statistics would decide about these records.
    pub verdicts: Arc<ModelVerdicts>,
}

/// Verdicts as the statistics give them (first write wins in log order), from a model: each record's readings whose
/// key an earlier reading wrote, decided up to a position the test may move (everything by default).
#[derive(Debug)]
pub struct ModelVerdicts {
    pub decided: AtomicU64,
    pub rejected: Mutex<HashMap<u64, Vec<(u32, Admission)>>>,
}

impl ModelVerdicts {
    /// The verdicts on `records`, written at positions 1, 2, ...: duplicates (a key written before) and late
    /// readings (a first write whose series had a newer one).
    pub fn of(records: &[Vec<Input>]) -> Arc<ModelVerdicts> {
        let mut seen = HashSet::new();
        let mut newest: HashMap<(u8, u16), i64> = HashMap::new();
        let mut rejected = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            for (index, r) in record.iter().enumerate() {
                let admission = if !seen.insert((r.0, r.1, r.2)) {
                    Admission::Duplicate
                } else if newest.get(&(r.0, r.1)).is_some_and(|n| *n > r.2) {
                    Admission::Late
                } else {
                    Admission::InOrder
                };
                let n = newest.entry((r.0, r.1)).or_insert(r.2);
                *n = (*n).max(r.2);
                if admission != Admission::InOrder {
                    rejected.entry(i as u64 + 1).or_insert_with(Vec::new).push((index as u32, admission));
                }
            }
        }
        Arc::new(ModelVerdicts { decided: AtomicU64::new(u64::MAX), rejected: Mutex::new(rejected) })
    }
}

impl DedupVerdicts for ModelVerdicts {
    fn decided_through(&self) -> u64 {
        self.decided.load(Ordering::Acquire)
    }

    /// Not forgotten once taken: a restarted archiver reads the records after its checkpoint again, as the
    /// restarted statistics decide them again.
    fn take_verdicts(&self, position: u64) -> Vec<(u32, Admission)> {
        self.rejected.lock().unwrap().get(&position).cloned().unwrap_or_default()
    }
}

pub fn fixture(records: &[Vec<Input>], url: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let (wal, _) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
    let appender = wal.appender();
    let mut last = 0;
    for record in records {
        last = appender.append_blocking(&batch_of(record)).unwrap();
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
        verdicts: ModelVerdicts::of(records),
        _dir: dir,
    }
}

impl Fixture {
    /// Runs the archiver until it has committed everything (or failed), then stops it.
    pub fn archive(&self, options: ArchiverOptions) -> Result<(), ArchiveError> {
        let archiver = Archiver::start(
            self.wal_dir.clone(),
            self.durable.clone(),
            self.verdicts.clone(),
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

    pub fn contents(&self) -> Vec<(String, String, i64, u64)> {
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

impl Fixture {
    /// The record of verdicts: (kind, device, sensor, timestamp, value bits), sorted.
    pub fn verdict_contents(&self) -> Vec<(&'static str, String, String, i64, u64)> {
        let files = self.runtime.block_on(self.location.list_verdict_files()).unwrap();
        let mut out = Vec::new();
        for (kind, file) in files {
            let bytes =
                self.runtime.block_on(async { self.location.store.get(&file.path).await?.bytes().await }).unwrap();
            for r in read_parquet(bytes).unwrap() {
                assert_eq!(utc_date(r.micros), file.date, "partitioned by event date");
                out.push((kind.name(), r.device, r.sensor, r.micros, r.value.to_bits()));
            }
        }
        out.sort();
        out
    }
}

/// Small flushes (many parts).
pub fn small_flushes() -> ArchiverOptions {
    ArchiverOptions { flush_rows: 7, flush_age: Duration::from_millis(1), ..ArchiverOptions::default() }
}

/// `PROPTEST_CASES` if set (to run many more cases: `PROPTEST_CASES=2000 cargo test …`), else `default`.
pub fn cases_or(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default)
}
