//! Rollups: a sealed day's windows, per width, kept in the archive beside its readings.
//!
//! Why: the live statistics hold windows only as far back as their horizon; for older days the windows come from
//! here, and SQL over statistics (`windows_1m` …) reads them instead of scanning readings. When a day is sealed, its
//! deduplicated readings are folded into every 1-minute, 15-minute, 1-hour and 1-day UTC window of every series
//! with the live windows' own aggregate ([`WindowAgg`]: one implementation, so the numbers agree), and written as
//! `rollups/width=W/date=YYYY-MM-DD/rollup.parquet`, one row per (sensor, device, window start) in the archive's
//! order. The same readings give the same bytes; a reseal (late readings) writes them again.
//!
//! A rollup keeps what a window needs to go on merging (`stored_sum`, `stored_compensation`: the running sum as the
//! live window keeps it) beside what users read (`sum`, `mean`, …), so a window loaded from a rollup and merged with
//! later readings equals one that never left memory.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use weir_operators::model::{DeviceId, SeriesKey};
use weir_operators::sketch::{Bucket, NAMED_QUANTILES, Sketch};
use weir_operators::{Reading, Width, WindowAgg};

use crate::archive::{ArchiveError, ArchiveLocation};
use crate::part::PartError;
use crate::seal::{MergedRow, Names};
use crate::verdicts::DayVerdicts;

/// One window of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    pub device: String,
    pub sensor: String,
    /// Window start, microseconds since the Unix epoch, UTC.
    pub start: i64,
    pub agg: WindowAgg,
}

/// The rollups' Arrow schema (every width alike; the width is the path's `width=` partition).
pub fn rollup_schema() -> SchemaRef {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let float = |name: &str| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new("device", dict.clone(), false),
        Field::new("sensor", dict, false),
        Field::new("window_start", time.clone(), false),
        Field::new("window_end", time.clone(), false),
        Field::new("count", DataType::Int64, false),
        float("sum"),
        float("mean"),
        float("min"),
        float("max"),
        float("first"),
        Field::new("first_timestamp", time.clone(), false),
        float("last"),
        Field::new("last_timestamp", time, false),
        float("stored_sum"),
        float("stored_compensation"),
        Field::new("p50", DataType::Float64, true),
        Field::new("p90", DataType::Float64, true),
        Field::new("p95", DataType::Float64, true),
        Field::new("p99", DataType::Float64, true),
        // The window's DDSketch as `Sketch::encode` writes it: any quantile, and what a window loaded from the
        // rollup needs to go on merging.
        Field::new("sketch", DataType::Binary, true),
        // Readings of the window judged late and duplicate, from the record of verdicts (`crate::verdicts`); null in
        // rollups written before it.
        Field::new("late", DataType::Int64, true),
        Field::new("duplicates", DataType::Int64, true),
    ]))
}

/// The columns through `stored_compensation`: what every rollup has.
const STORED_COLUMNS: usize = 15;

/// The index of the `sketch` column.
const SKETCH_COLUMN: usize = 19;

/// The index of the `late` column (`duplicates` follows it).
const LATE_COLUMN: usize = 20;

/// Where the rollup of `width` for `date` lives under the archive root.
pub fn rollup_path(root: &Path, width: Width, date: &str) -> Path {
    root.clone()
        .join("rollups")
        .join(format!("width={}", width.name()))
        .join(format!("date={date}"))
        .join("rollup.parquet")
}

/// A window borrowed, as the encoder reads it.
#[derive(Debug, Clone, Copy)]
pub struct RollupRef<'a> {
    pub device: &'a str,
    pub sensor: &'a str,
    pub start: i64,
    pub agg: &'a WindowAgg,
}

impl RollupRow {
    /// The window as the encoder reads it.
    pub fn borrowed(&self) -> RollupRef<'_> {
        RollupRef { device: &self.device, sensor: &self.sensor, start: self.start, agg: &self.agg }
    }
}

/// The rollups' one encoder: windows of one width as one Arrow batch, in the order given.
pub fn rollup_batch<'a>(
    rows: impl Iterator<Item = RollupRef<'a>> + Clone,
    width: Width,
) -> Result<RecordBatch, PartError> {
    let device: DictionaryArray<Int32Type> = rows.clone().map(|r| r.device).collect();
    let sensor: DictionaryArray<Int32Type> = rows.clone().map(|r| r.sensor).collect();
    let time = |f: &dyn Fn(&RollupRef) -> i64| {
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.clone().map(|r| f(&r))).with_timezone("UTC"))
            as ArrayRef
    };
    let float = |f: &dyn Fn(&WindowAgg) -> f64| {
        Arc::new(Float64Array::from_iter_values(rows.clone().map(|r| f(r.agg)))) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(device),
        Arc::new(sensor),
        time(&|r| r.start),
        time(&|r| r.start + width.micros()),
        Arc::new(Int64Array::from_iter_values(rows.clone().map(|r| r.agg.count))),
        float(&|a| a.sum()),
        float(&|a| a.mean()),
        float(&|a| a.min),
        float(&|a| a.max),
        float(&|a| a.first.value),
        time(&|r| r.agg.first.micros),
        float(&|a| a.last.value),
        time(&|r| r.agg.last.micros),
        float(&|a| a.stored_sum().0),
        float(&|a| a.stored_sum().1),
    ];
    let mut columns = columns;
    for (_, q) in NAMED_QUANTILES {
        columns.push(Arc::new(rows.clone().map(|r| r.agg.quantile(q)).collect::<Float64Array>()));
    }
    let mut buffer = Vec::new();
    let sketches: BinaryArray = rows
        .clone()
        .map(|r| {
            r.agg.sketch().map(|s| {
                buffer.clear();
                s.encode(&mut buffer);
                buffer.clone()
            })
        })
        .collect();
    columns.push(Arc::new(sketches));
    columns.push(Arc::new(Int64Array::from_iter_values(rows.clone().map(|r| r.agg.late))));
    columns.push(Arc::new(Int64Array::from_iter_values(rows.clone().map(|r| r.agg.duplicates))));
    Ok(RecordBatch::try_new(rollup_schema(), columns)?)
}

/// Windows encoded into one Arrow batch at a time when a day's rollups are written (16 Ki × ~128 bytes: 2 MiB).
const ENCODE_WINDOWS: usize = 16 * 1024;

/// The rollup of one width of a day being sealed, written as the merged rows stream by (archive order, first
/// writes only): a series' rows are sorted by timestamp, so each window's readings are contiguous and one window is
/// open at a time, folded with the live windows' aggregate (each reading numbered within its window, as the live
/// windows number them). Finished windows are encoded [`ENCODE_WINDOWS`] at a time (never the whole day's windows
/// at once; the writer still cuts row groups of [`ROW_GROUP_ROWS`](crate::part::ROW_GROUP_ROWS)).
pub(crate) struct DayRollupWriter {
    width: Width,
    writer: ArrowWriter<Vec<u8>>,
    /// The open window: (sensor, device, start) by name number, its aggregate, and how many readings it holds.
    open: Option<((u32, u32, i64), WindowAgg, u64)>,
    /// Finished windows not yet encoded.
    chunk: Vec<((u32, u32, i64), WindowAgg)>,
    /// The day's late and duplicate readings, counted into each window as it finishes.
    verdicts: Arc<DayVerdicts>,
}

impl DayRollupWriter {
    pub fn new(width: Width, verdicts: Arc<DayVerdicts>) -> Result<DayRollupWriter, PartError> {
        let writer = ArrowWriter::try_new(Vec::new(), rollup_schema(), Some(crate::part::parquet_properties()))?;
        Ok(DayRollupWriter { width, writer, open: None, chunk: Vec::with_capacity(ENCODE_WINDOWS), verdicts })
    }

    /// Folds the next reading (in archive order) into its window.
    pub fn push(&mut self, row: &MergedRow, names: &Names) -> Result<(), PartError> {
        let key = (row.sensor, row.device, self.width.start_of(row.micros));
        let series = SeriesKey { device: DeviceId(0), sensor: weir_operators::SensorId(0) };
        match &mut self.open {
            Some((open, agg, seq)) if *open == key => {
                agg.add(&Reading { series, micros: row.micros, value: row.value, seq: *seq });
                *seq += 1;
            }
            _ => {
                let reading = Reading { series, micros: row.micros, value: row.value, seq: 0 };
                if let Some((open, agg, _)) = self.open.replace((key, WindowAgg::of(&reading), 1)) {
                    self.finish_window(open, agg, names)?;
                }
            }
        }
        if let (Some((_, agg, _)), Some(bucket)) = (&mut self.open, Bucket::of(row.value)) {
            agg.add_to_sketch(bucket, 1);
        }
        Ok(())
    }

    fn finish_window(&mut self, key: (u32, u32, i64), mut agg: WindowAgg, names: &Names) -> Result<(), PartError> {
        let (sensor, device, start) = key;
        let span = (start, start + self.width.micros());
        (agg.late, agg.duplicates) = self.verdicts.counts(names.get(sensor), names.get(device), span);
        self.chunk.push((key, agg));
        if self.chunk.len() == ENCODE_WINDOWS { self.encode(names) } else { Ok(()) }
    }

    fn encode(&mut self, names: &Names) -> Result<(), PartError> {
        let refs = self.chunk.iter().map(|((sensor, device, start), agg)| RollupRef {
            device: names.get(*device),
            sensor: names.get(*sensor),
            start: *start,
            agg,
        });
        self.writer.write(&rollup_batch(refs, self.width)?)?;
        self.chunk.clear();
        Ok(())
    }

    /// The rollup's Parquet bytes.
    pub fn finish(mut self, names: &Names) -> Result<Vec<u8>, PartError> {
        if let Some((open, agg, _)) = self.open.take() {
            self.finish_window(open, agg, names)?;
        }
        if !self.chunk.is_empty() {
            self.encode(names)?;
        }
        Ok(self.writer.into_inner()?)
    }
}

/// Reads a rollup file back into rows (the windows as the live statistics would hold them).
pub fn read_rollup_parquet(bytes: bytes::Bytes) -> Result<Vec<RollupRow>, PartError> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        out.extend(rows_of_batch(&batch?)?);
    }
    Ok(out)
}

/// The rows of a batch in the rollup schema (its columns in [`rollup_schema`]'s order; more after them are ignored).
pub fn rows_of_batch(batch: &RecordBatch) -> Result<Vec<RollupRow>, PartError> {
    let text = |i: usize, name: &'static str| -> Result<Vec<String>, PartError> {
        let dict = batch.column(i).as_dictionary_opt::<Int32Type>().ok_or(PartError::Column(name))?;
        let values = dict.values().as_any().downcast_ref::<StringArray>().ok_or(PartError::Column(name))?;
        let name_of = |k: Option<i32>| k.and_then(|k| usize::try_from(k).ok()).filter(|&k| k < values.len());
        Ok(dict.keys().iter().map(|k| name_of(k).map_or_else(String::new, |k| values.value(k).to_owned())).collect())
    };
    let float = |i: usize, name: &'static str| -> Result<&Float64Array, PartError> {
        batch.column(i).as_primitive_opt::<Float64Type>().ok_or(PartError::Column(name))
    };
    let time = |i: usize, name: &'static str| -> Result<&TimestampMicrosecondArray, PartError> {
        batch.column(i).as_primitive_opt().ok_or(PartError::Column(name))
    };
    // Rollups written before percentiles (issue 24) end at `stored_compensation`: their windows carry no sketch.
    if batch.num_columns() < STORED_COLUMNS {
        return Err(PartError::Column("rollup columns"));
    }
    let (devices, sensors) = (text(0, "device")?, text(1, "sensor")?);
    let start = time(2, "window_start")?;
    let count = batch.column(4).as_primitive_opt::<Int64Type>().ok_or(PartError::Column("count"))?;
    let (min, max, first, last) = (float(7, "min")?, float(8, "max")?, float(9, "first")?, float(11, "last")?);
    let (first_at, last_at) = (time(10, "first_timestamp")?, time(12, "last_timestamp")?);
    let (stored_sum, stored_compensation) = (float(13, "stored_sum")?, float(14, "stored_compensation")?);
    let counts = |i: usize, name: &'static str| -> Result<Option<&Int64Array>, PartError> {
        match batch.num_columns() > i {
            true => Ok(Some(batch.column(i).as_primitive_opt::<Int64Type>().ok_or(PartError::Column(name))?)),
            false => Ok(None),
        }
    };
    let (late, duplicates) = (counts(LATE_COLUMN, "late")?, counts(LATE_COLUMN + 1, "duplicates")?);
    let count_at = |c: Option<&Int64Array>, i: usize| c.filter(|c| c.is_valid(i)).map_or(0, |c| c.value(i));
    let sketches = match batch.num_columns() > SKETCH_COLUMN {
        true => Some(batch.column(SKETCH_COLUMN).as_binary_opt::<i32>().ok_or(PartError::Column("sketch"))?),
        false => None,
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for (i, (device, sensor)) in devices.into_iter().zip(sensors).enumerate() {
        let agg = WindowAgg::from_stored(
            count.value(i),
            (stored_sum.value(i), stored_compensation.value(i)),
            min.value(i),
            max.value(i),
            (first_at.value(i), first.value(i)),
            (last_at.value(i), last.value(i)),
        );
        let sketch = match sketches {
            Some(sketches) if !sketches.is_null(i) => {
                Some(Sketch::decode(sketches.value(i)).map_err(|_| PartError::Column("sketch"))?)
            }
            _ => None,
        };
        let mut agg = agg.with_sketch(sketch);
        (agg.late, agg.duplicates) = (count_at(late, i), count_at(duplicates, i));
        out.push(RollupRow { device, sensor, start: start.value(i), agg });
    }
    Ok(out)
}

/// Stages `date`'s rollups (`rollups`: each width's Parquet bytes, written by [`DayRollupWriter`] from the rows the
/// sealed file will hold).
///
/// They are staged ([`staged_rollup_path`]); [`publish_day_rollups`] moves them into place, under the lock queries
/// hold (a query that listed a rollup file and read it while a reseal replaced it read a torn file).
pub(crate) async fn write_day_rollups(
    location: &ArchiveLocation,
    date: &str,
    rollups: Vec<(Width, Vec<u8>)>,
) -> Result<(), ArchiveError> {
    for (width, bytes) in rollups {
        location.store.put(&staged_rollup_path(location, width, date), PutPayload::from(bytes)).await?;
    }
    Ok(())
}

/// Where the rollup of `width` for `date` waits to be published (outside `rollups/`, so no query sees it).
pub fn staged_rollup_path(location: &ArchiveLocation, width: Width, date: &str) -> Path {
    location.staging_root().join(format!("rollup-{date}-{}.parquet", width.name()))
}

/// Moves `date`'s staged rollups into place (those staged; the 1-day one last, which says the day is rolled up).
pub async fn publish_day_rollups(location: &ArchiveLocation, date: &str) -> Result<(), ArchiveError> {
    for width in Width::ALL {
        let staged = staged_rollup_path(location, width, date);
        match location.store.rename(&staged, &rollup_path(&location.root, width, date)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads `date`'s rollup of `width`; `None` when the day has none (not sealed yet, or sealed before rollups).
pub async fn read_day_rollup(
    location: &ArchiveLocation,
    width: Width,
    date: &str,
) -> Result<Option<Vec<RollupRow>>, ArchiveError> {
    match location.store.get(&rollup_path(&location.root, width, date)).await {
        Ok(r) => Ok(Some(read_rollup_parquet(r.bytes().await?)?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How far the rollups reach: days that end at or before the returned time (event time, a day boundary) either have
/// their rollups written or hold no readings. It is the start of the earliest day that has readings in the archive
/// but no rollups yet, or `not_due_from` (the start of the first day not yet due for sealing), whichever is earlier.
/// (The 1-day rollup is written last of a day's, so its presence stands for all four.)
/// `parts` is the archive's listing (`ArchiveLocation::list_parts`).
pub async fn rolled_through(
    location: &ArchiveLocation,
    parts: &[crate::archive::PartName],
    not_due_from: i64,
) -> Result<i64, ArchiveError> {
    use futures_util::TryStreamExt;
    let prefix = location.root.clone().join("rollups").join("width=1d");
    let listed: Vec<_> = location.store.list(Some(&prefix)).try_collect().await?;
    let date_of = |path: &Path| path.parts().find_map(|p| p.as_ref().strip_prefix("date=").map(str::to_owned));
    let rolled: std::collections::HashSet<String> = listed.iter().filter_map(|m| date_of(&m.location)).collect();
    let mut through = not_due_from;
    for part in parts {
        if rolled.contains(&part.date) {
            continue;
        }
        let Ok(day) = chrono::NaiveDate::parse_from_str(&part.date, "%Y-%m-%d") else { continue };
        if let Some(start) = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros()) {
            through = through.min(start);
        }
    }
    Ok(through)
}
