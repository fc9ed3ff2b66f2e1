//! A day's rows on their way into its sealed file, held compactly.
//!
//! Why: the seal reads every part of a day and keeps the first write of each key, and the sealed file, the rollups
//! and the dump are all derived from those rows. Held as owned rows (two `String`s each) plus owned rollup rows and
//! the dump's text, a day of 1.7 M readings took about 1 GB at the seal's peak (the soak's RSS spikes). Here a row is
//! 40 bytes (room reserved exactly, sorted in place): device and sensor names are interned once per seal and numbered in name order, so that ordering rows
//! by number is ordering them by name; the sealed file, the rollups and the dump are then encoded from the rows a
//! chunk at a time. The peak is about 45 bytes per reading of the day (the rows, and the dump's 4-byte order),
//! plus the compressed inputs and outputs (`cargo run --release -p weir-benches --example seal_memory`).

use std::collections::HashMap;

use std::sync::Arc;

use object_store::ObjectStoreExt;

use crate::archive::{ArchiveError, ArchiveLocation, ArchiveProgress, MergingGuard, PartName};
use crate::part::{PartColumns, PartError, PartWriter, ROW_GROUP_ROWS, ReadingRef, part_batches, part_rows};

/// Reads `parts` (in the order that breaks ties between equal write times) and merges them into a day's rows,
/// first write of each key only; `late` says which parts were written after the day's last seal. The guard counts
/// the rows in the memory budget (`progress`) for as long as the caller holds it.
pub(crate) async fn merge_parts(
    location: &ArchiveLocation,
    parts: &[PartName],
    late: impl Fn(&PartName) -> bool,
    progress: Option<&Arc<ArchiveProgress>>,
) -> Result<(DayRows, MergingGuard), ArchiveError> {
    let mut fetched = Vec::with_capacity(parts.len());
    for part in parts {
        fetched.push(location.store.get(&part.path).await?.bytes().await?);
    }
    let rows_in_parts = fetched.iter().map(part_rows).sum::<Result<usize, _>>()?;
    let merging = ArchiveProgress::merging(progress, rows_in_parts);
    let mut builder = DayRowsBuilder::default();
    builder.reserve(rows_in_parts);
    for (part, bytes) in parts.iter().zip(fetched) {
        builder.add_part(bytes, late(part), part.sealed)?;
    }
    Ok((builder.finish(), merging))
}

/// One reading of the day: names by their rank among the day's names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DayRow {
    pub sensor: u32,
    pub device: u32,
    pub micros: i64,
    pub value: f64,
    pub written: u64,
    /// From a part written after the day's last seal.
    pub late: bool,
    /// From the day's sealed file.
    pub sealed: bool,
    /// Its place in the order the parts were added (part by part, row by row): the last tie-break, so that an
    /// unstable sort (no buffer) orders as a stable one would. It fits the row's padding.
    arrival: u32,
}

impl DayRow {
    /// The key, then the first write first: the sealed file's row, then by write time.
    fn order_key(&self) -> (u32, u32, i64, bool, u64, u32) {
        (self.sensor, self.device, self.micros, !self.sealed, self.written, self.arrival)
    }

    fn same_key(&self, other: &DayRow) -> bool {
        (self.sensor, self.device, self.micros) == (other.sensor, other.device, other.micros)
    }
}

/// Collects a day's parts, in the order that breaks ties between equal write times.
#[derive(Default)]
struct DayRowsBuilder {
    sensors: HashMap<Box<str>, u32>,
    devices: HashMap<Box<str>, u32>,
    rows: Vec<DayRow>,
}

impl DayRowsBuilder {
    /// Room for `rows` more rows (the parts' row counts, from their footers), so the rows take 40 bytes each and not
    /// up to twice that after doubling.
    fn reserve(&mut self, rows: usize) {
        self.rows.reserve_exact(rows);
    }

    /// Adds every row of one part, an Arrow batch at a time.
    fn add_part(&mut self, bytes: bytes::Bytes, late: bool, sealed: bool) -> Result<(), PartError> {
        for batch in part_batches(bytes)? {
            let batch = batch?;
            let start = self.rows.len();
            if start + batch.num_rows() > u32::MAX as usize {
                return Err(PartError::DayTooLarge(start + batch.num_rows()));
            }
            let part = PartColumns::of(&batch)?;
            let sensors = intern_all(&mut self.sensors, part.sensor_names);
            let devices = intern_all(&mut self.devices, part.device_names);
            self.rows.extend((0..batch.num_rows()).map(|i| DayRow {
                sensor: sensors[part.sensor_key(i) as usize],
                device: devices[part.device_key(i) as usize],
                micros: part.times.value(i),
                value: part.values.value(i),
                written: part.written(i),
                late,
                sealed,
                arrival: (start + i) as u32,
            }));
        }
        Ok(())
    }

    /// The day's rows in the archive's order, the first write of each key only.
    fn finish(self) -> DayRows {
        let (sensors, sensor_rank) = ranked(self.sensors);
        let (devices, device_rank) = ranked(self.devices);
        let mut rows = self.rows;
        for row in &mut rows {
            row.sensor = sensor_rank[row.sensor as usize];
            row.device = device_rank[row.device as usize];
        }
        // Rows of equal keys and write times stay in part order, then row order; keeping the first of each run is
        // first-write-wins. The order key is unique, so an unstable sort (in place) gives the one order.
        rows.sort_unstable_by_key(DayRow::order_key);
        rows.dedup_by(|later, kept| later.same_key(kept));
        rows.shrink_to_fit();
        DayRows { sensors, devices, rows }
    }
}

/// The interned number of each name of a batch's dictionary (a dictionary is per row group, so this runs once per
/// name and batch, not per row).
fn intern_all(interned: &mut HashMap<Box<str>, u32>, names: &arrow::array::StringArray) -> Vec<u32> {
    names
        .iter()
        .map(|name| {
            let name = name.unwrap_or_default();
            match interned.get(name) {
                Some(&id) => id,
                None => {
                    let id = interned.len() as u32;
                    interned.insert(Box::from(name), id);
                    id
                }
            }
        })
        .collect()
}

/// The names sorted, and for each interned number its rank among them.
fn ranked(interned: HashMap<Box<str>, u32>) -> (Vec<Box<str>>, Vec<u32>) {
    let mut names: Vec<(Box<str>, u32)> = interned.into_iter().collect();
    names.sort_unstable();
    let mut rank = vec![0; names.len()];
    for (i, (_, id)) in names.iter().enumerate() {
        rank[*id as usize] = i as u32;
    }
    (names.into_iter().map(|(name, _)| name).collect(), rank)
}

/// A sealed day's readings: deduplicated, in the archive's order (sensor, device, timestamp).
pub(crate) struct DayRows {
    sensors: Vec<Box<str>>,
    devices: Vec<Box<str>>,
    rows: Vec<DayRow>,
}

impl DayRows {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Rows that came from parts written after the day's last seal.
    pub fn late(&self) -> u64 {
        self.rows.iter().filter(|r| r.late).count() as u64
    }

    fn reading(&self, row: &DayRow) -> ReadingRef<'_> {
        ReadingRef {
            device: &self.devices[row.device as usize],
            sensor: &self.sensors[row.sensor as usize],
            value: row.value,
            micros: row.micros,
            written: row.written,
        }
    }

    /// Each series' rows, in order: (sensor, device, its readings sorted by timestamp).
    pub fn series(&self) -> impl Iterator<Item = (&str, &str, &[DayRow])> {
        self.rows
            .chunk_by(|a, b| a.sensor == b.sensor && a.device == b.device)
            .map(|run| (&*self.sensors[run[0].sensor as usize], &*self.devices[run[0].device as usize], run))
    }

    /// The sealed file's bytes.
    pub fn parquet(&self) -> Result<Vec<u8>, PartError> {
        let mut writer = PartWriter::new()?;
        for chunk in self.rows.chunks(ROW_GROUP_ROWS) {
            writer.write(chunk.iter().map(|r| self.reading(r)))?;
        }
        writer.finish()
    }

    /// The dump: gzip NDJSON in the ingest shape, sorted by timestamp (then sensor and device, so it is
    /// deterministic), encoded line by line into the compressor.
    pub fn dump_gzip(&self) -> Result<Vec<u8>, std::io::Error> {
        use std::io::Write;
        let mut order: Vec<u32> = (0..self.rows.len() as u32).collect();
        // Ranks order as names do, and keys are unique after deduplication.
        order.sort_unstable_by_key(|&i| {
            let r = &self.rows[i as usize];
            (r.micros, r.sensor, r.device)
        });
        /// One dump line, in the replaced system's field order.
        #[derive(serde::Serialize)]
        struct Line<'a> {
            sensor: &'a str,
            value: f64,
            timestamp: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            device: Option<&'a str>,
        }
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, gz);
        for i in order {
            let r = self.reading(&self.rows[i as usize]);
            let device = (r.device != weir_pipeline::reading::DEFAULT_DEVICE).then_some(r.device);
            let timestamp = weir_pipeline::decode::format_timestamp(r.micros);
            serde_json::to_writer(&mut out, &Line { sensor: r.sensor, value: r.value, timestamp, device })?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.finish()
    }
}
