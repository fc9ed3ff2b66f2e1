//! One archive part: readings as a Parquet file with Weir's archive schema.
//!
//! Schema: `device` and `sensor` as dictionary-encoded Utf8, `value` Float64, `timestamp` Timestamp(µs, UTC), and
//! `written` UInt64: the write time of the reading's WAL record (see `weir_pipeline::clock`), so that whoever merges
//! parts of several processes (the seal) orders the writes of one key as the statistics did. Parts written before
//! write times existed lack the column; it reads as 0 there.
//! Rows are sorted by (sensor, device, timestamp) so readers can skip by statistics, files are zstd-compressed with
//! page statistics, and row groups hold up to 128 Ki rows. The same rows always give the same bytes.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use weir_pipeline::reading::{NameTable, ReadingBatch, Row};

/// The rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// A reading as the archive holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedReading {
    pub device: String,
    pub sensor: String,
    pub value: f64,
    /// Microseconds since the Unix epoch, UTC.
    pub micros: i64,
    /// The write time of its WAL record (0: unknown, an older part).
    pub written: u64,
}

/// The archive's Arrow schema.
pub fn archive_schema() -> SchemaRef {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new("device", dict.clone(), false),
        Field::new("sensor", dict, false),
        Field::new("value", DataType::Float64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("written", DataType::UInt64, true),
    ]))
}

/// Why a part could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("part column {0} has an unexpected type")]
    Column(&'static str),
    #[error("row {row} is out of the archive's order (sensor, device, timestamp), so it cannot be merged")]
    OutOfOrder { row: u64 },
}

/// Sorts readings, given in write order, into the archive's order: (sensor, device, timestamp), and among equal keys
/// (a duplicate older than the dedup horizon, admitted again) in write order — a stable sort, so that whoever reads
/// the part (the seal, the statistics at start) takes the first row of a key as its first write. (Ordering equal
/// keys by value bits, as before, made the seal keep whichever value sorted first.)
pub fn sort_for_archive(readings: &mut [ArchivedReading]) {
    readings.sort_by(|a, b| (&a.sensor, &a.device, a.micros).cmp(&(&b.sensor, &b.device, b.micros)));
}

/// A reading borrowed from wherever it is held (owned rows, a sealed day's compact rows): what the encoder reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadingRef<'a> {
    pub device: &'a str,
    pub sensor: &'a str,
    pub value: f64,
    pub micros: i64,
    pub written: u64,
}

impl ArchivedReading {
    /// The reading as the encoder reads it.
    pub fn borrowed(&self) -> ReadingRef<'_> {
        ReadingRef {
            device: &self.device,
            sensor: &self.sensor,
            value: self.value,
            micros: self.micros,
            written: self.written,
        }
    }
}

/// The readings as one Arrow batch, in the order given.
pub fn to_record_batch(readings: &[ArchivedReading]) -> Result<RecordBatch, PartError> {
    encode_batch(readings.iter().map(ArchivedReading::borrowed))
}

/// The archive's one encoder: borrowed readings as one Arrow batch in the archive schema, in the order given.
pub fn encode_batch<'a>(readings: impl Iterator<Item = ReadingRef<'a>> + Clone) -> Result<RecordBatch, PartError> {
    let device = dictionary(readings.clone().map(|r| r.device))?;
    let sensor = dictionary(readings.clone().map(|r| r.sensor))?;
    let value = Float64Array::from_iter_values(readings.clone().map(|r| r.value));
    let timestamp =
        TimestampMicrosecondArray::from_iter_values(readings.clone().map(|r| r.micros)).with_timezone("UTC");
    let written = UInt64Array::from_iter_values(readings.map(|r| r.written));
    let columns: Vec<ArrayRef> =
        vec![Arc::new(device), Arc::new(sensor), Arc::new(value), Arc::new(timestamp), Arc::new(written)];
    Ok(RecordBatch::try_new(archive_schema(), columns)?)
}

/// Names as a dictionary column: the array that collecting them makes (values in first-seen order, each once), but
/// a name is looked up only where it differs from the row before. Rows in the archive's order repeat their sensor
/// and device for long runs, and hashing every row's names was ~1.3 % of the server at 400 k readings/s.
fn dictionary<'a>(names: impl Iterator<Item = &'a str>) -> Result<DictionaryArray<Int32Type>, PartError> {
    let mut keys: Vec<i32> = Vec::with_capacity(names.size_hint().0);
    let mut values: Vec<&str> = Vec::new();
    let mut index: std::collections::HashMap<&str, i32> = std::collections::HashMap::new();
    let mut last: Option<(&str, i32)> = None;
    for name in names {
        let key = match last {
            Some((previous, key)) if previous == name => key,
            _ => {
                let next =
                    i32::try_from(values.len()).map_err(|_| arrow::error::ArrowError::DictionaryKeyOverflowError)?;
                let key = *index.entry(name).or_insert_with(|| {
                    values.push(name);
                    next
                });
                last = Some((name, key));
                key
            }
        };
        keys.push(key);
    }
    Ok(DictionaryArray::try_new(Int32Array::from(keys), Arc::new(StringArray::from(values)))?)
}

/// The writer properties of every Parquet file Weir writes (parts, sealed files, rollups): zstd, page statistics,
/// row groups of [`ROW_GROUP_ROWS`], no timestamps, so the same rows give the same bytes.
///
/// Names and values are dictionary-encoded (few distinct names; telemetry values repeat, and SQL reads a
/// dictionary's small keys faster than plain doubles: `min`/`max`/`avg` by sensor took 25 % longer over plain
/// values). `timestamp` and `written` are not: nearly every one is distinct, so the dictionary only grew to its size
/// limit, hashing every row on the way (parquet's interner was ~12 % of the archiver), before falling back to plain.
/// They are written as deltas (`DELTA_BINARY_PACKED`): a series' times in the archive's order, and write times in
/// any order, differ by little from row to row. Measured in `benches/RESULTS.md` ("Issue 19, 1").
pub fn parquet_properties() -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("weir".into());
    ["timestamp", "written"]
        .into_iter()
        .fold(builder, |b, time| {
            b.set_column_dictionary_enabled(time.into(), false)
                .set_column_encoding(time.into(), parquet::basic::Encoding::DELTA_BINARY_PACKED)
        })
        .build()
}

/// The fewest rows of one sensor that get row groups of their own (see [`PartWriter`]).
pub const SENSOR_ROW_GROUP_MIN_ROWS: usize = 8 * 1024;

/// A part or sealed file being written, a chunk of rows at a time (so no caller holds a whole day as Arrow arrays).
///
/// Row groups follow the sensors: the rows of a sensor with at least [`SENSOR_ROW_GROUP_MIN_ROWS`] rows in the file
/// fill row groups of their own (of up to [`ROW_GROUP_ROWS`] rows), and the sensors with fewer share row groups.
/// So a row group of such a sensor has that sensor as its minimum and maximum, and a query that keeps one sensor
/// (`WHERE sensor = 'speed'`) is answered from row groups that the statistics prove to hold only its rows: SQL drops
/// the filter there and does not even read the `sensor` column (`weir_sinks::sql::scan_in_pieces`). Before, a row
/// group cut every 128 Ki rows mixed the end of one sensor with the start of the next, and every row of every row
/// group read was compared.
///
/// A row group's rows are written in one call to Parquet's writer, so the bytes depend on the rows alone, never on
/// how the caller chunks them. Memory: one row group's rows as Arrow arrays, and the short run of a sensor that may
/// yet reach the minimum (fewer rows).
pub struct PartWriter {
    writer: ArrowWriter<Vec<u8>>,
    /// The rows of the row group being assembled, as slices of encoded batches.
    group: Vec<RecordBatch>,
    group_rows: usize,
    /// The sensor whose rows are being written, its rows so far, and whether it has row groups of its own.
    run: Option<SensorRun>,
    /// The current sensor's rows while it has fewer than the minimum (not yet in `group`: it may become long).
    short: Vec<RecordBatch>,
}

/// The sensor a writer is in the middle of.
struct SensorRun {
    sensor: String,
    rows: usize,
    long: bool,
}

impl PartWriter {
    /// An empty file in the archive schema.
    pub fn new() -> Result<PartWriter, PartError> {
        Ok(PartWriter {
            writer: ArrowWriter::try_new(Vec::new(), archive_schema(), Some(parquet_properties()))?,
            group: Vec::new(),
            group_rows: 0,
            run: None,
            short: Vec::new(),
        })
    }

    /// Appends `readings` (in archive order after those written before).
    pub fn write<'a>(&mut self, readings: impl Iterator<Item = ReadingRef<'a>> + Clone) -> Result<(), PartError> {
        let batch = encode_batch(readings)?;
        let part = PartColumns::of(&batch)?;
        let mut from = 0;
        while from < batch.num_rows() {
            let key = part.sensor_keys.value(from);
            let to = from + part.sensor_keys.values()[from..].iter().take_while(|&&k| k == key).count();
            let sensor = part.sensor_names.value(part.sensor_key(from) as usize);
            self.write_run(sensor, batch.slice(from, to - from))?;
            from = to;
        }
        Ok(())
    }

    /// Appends `rows`, all of `sensor`.
    fn write_run(&mut self, sensor: &str, rows: RecordBatch) -> Result<(), PartError> {
        if !matches!(&self.run, Some(run) if run.sensor == sensor) {
            self.end_run()?;
        }
        let run = self.run.get_or_insert_with(|| SensorRun { sensor: sensor.to_owned(), rows: 0, long: false });
        run.rows += rows.num_rows();
        if run.long {
            return self.add_to_group(rows);
        }
        let now_long = run.rows >= SENSOR_ROW_GROUP_MIN_ROWS;
        run.long = now_long;
        self.short.push(rows);
        if now_long {
            // Long enough for row groups of its own: the shorter sensors before it keep theirs.
            self.close_group()?;
            for rows in std::mem::take(&mut self.short) {
                self.add_to_group(rows)?;
            }
        }
        Ok(())
    }

    /// Ends the current sensor: a long one's last row group is closed; a short one joins the shared row group.
    fn end_run(&mut self) -> Result<(), PartError> {
        match self.run.take() {
            Some(SensorRun { long: true, .. }) => self.close_group(),
            Some(SensorRun { long: false, .. }) | None => {
                for rows in std::mem::take(&mut self.short) {
                    self.add_to_group(rows)?;
                }
                Ok(())
            }
        }
    }

    /// Adds `rows` to the row group being assembled, closing it whenever it is full.
    fn add_to_group(&mut self, mut rows: RecordBatch) -> Result<(), PartError> {
        while rows.num_rows() > 0 {
            let take = rows.num_rows().min(ROW_GROUP_ROWS - self.group_rows);
            self.group.push(rows.slice(0, take));
            self.group_rows += take;
            rows = rows.slice(take, rows.num_rows() - take);
            if self.group_rows == ROW_GROUP_ROWS {
                self.close_group()?;
            }
        }
        Ok(())
    }

    /// Writes the row group being assembled (if it has rows) as one row group.
    fn close_group(&mut self) -> Result<(), PartError> {
        if self.group_rows == 0 {
            return Ok(());
        }
        let group = match std::mem::take(&mut self.group).as_slice() {
            [one] => one.clone(),
            slices => arrow::compute::concat_batches(&archive_schema(), slices)?,
        };
        self.group_rows = 0;
        self.writer.write(&group)?;
        Ok(self.writer.flush()?)
    }

    /// The file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, PartError> {
        self.end_run()?;
        self.close_group()?;
        Ok(self.writer.into_inner()?)
    }
}

/// Writes `readings` (already in archive order) as Parquet bytes.
pub fn write_parquet(readings: &[ArchivedReading]) -> Result<Vec<u8>, PartError> {
    let mut writer = PartWriter::new()?;
    for chunk in readings.chunks(ROW_GROUP_ROWS) {
        writer.write(chunk.iter().map(ArchivedReading::borrowed))?;
    }
    writer.finish()
}

/// Reads a part back with the parquet crate's own reader (no DataFusion), one owned row per reading, with its
/// write time.
pub fn read_parquet(bytes: bytes::Bytes) -> Result<Vec<ArchivedReading>, PartError> {
    let mut out = Vec::new();
    for batch in part_batches(bytes)? {
        let batch = batch?;
        let part = PartColumns::of(&batch)?;
        out.extend((0..batch.num_rows()).map(|i| {
            let r = part.reading(i);
            ArchivedReading {
                device: r.device.to_owned(),
                sensor: r.sensor.to_owned(),
                value: r.value,
                micros: r.micros,
                written: r.written,
            }
        }));
    }
    Ok(out)
}

/// Reads a part as compact reading batches, one per Arrow batch: the dictionaries become the batch's name tables,
/// so no name is copied per row. This is how the statistics and the archiver load the archive on start.
pub fn read_parquet_batches(bytes: bytes::Bytes) -> Result<Vec<ReadingBatch>, PartError> {
    let mut out = Vec::new();
    for batch in part_batches(bytes)? {
        let batch = batch?;
        let part = PartColumns::of(&batch)?;
        let table = |names: &StringArray| -> NameTable { names.iter().map(Option::unwrap_or_default).collect() };
        let sensors = table(part.sensor_names);
        if sensors.len() > usize::from(u16::MAX) {
            return Err(PartError::Column("sensor"));
        }
        let rows = (0..batch.num_rows())
            .map(|i| Row {
                sensor: part.sensor_key(i) as u16,
                device: part.device_key(i),
                micros: part.times.value(i),
                value: part.values.value(i),
            })
            .collect();
        out.push(ReadingBatch { sensors, devices: table(part.device_names), rows });
    }
    Ok(out)
}

/// The rows a part holds, from its footer.
pub fn part_rows(bytes: &bytes::Bytes) -> Result<usize, PartError> {
    let meta = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(bytes)?;
    Ok(usize::try_from(meta.file_metadata().num_rows()).unwrap_or(0))
}

/// The Arrow batches of a part, decoded one at a time (a part's rows are never all decoded at once).
pub fn part_batches(bytes: bytes::Bytes) -> Result<impl Iterator<Item = Result<RecordBatch, PartError>>, PartError> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.map(|batch| batch.map_err(PartError::from)))
}

/// The archive's one decoder: the columns of a batch in the archive schema, typed. Keys index the name arrays;
/// a part written before write times existed reads as written 0.
pub struct PartColumns<'a> {
    pub device_keys: &'a Int32Array,
    pub device_names: &'a StringArray,
    pub sensor_keys: &'a Int32Array,
    pub sensor_names: &'a StringArray,
    pub values: &'a Float64Array,
    pub times: &'a TimestampMicrosecondArray,
    pub written: Option<&'a UInt64Array>,
}

impl<'a> PartColumns<'a> {
    /// The columns of `batch`, or which one is not what the archive schema says.
    pub fn of(batch: &'a RecordBatch) -> Result<PartColumns<'a>, PartError> {
        use arrow::array::AsArray;
        let names = |i: usize, name: &'static str| -> Result<(&'a Int32Array, &'a StringArray), PartError> {
            let dict = batch.column(i).as_dictionary_opt::<Int32Type>().ok_or(PartError::Column(name))?;
            let values = dict.values().as_any().downcast_ref::<StringArray>().ok_or(PartError::Column(name))?;
            if dict.keys().null_count() > 0 || values.null_count() > 0 {
                return Err(PartError::Column(name));
            }
            Ok((dict.keys(), values))
        };
        let (device_keys, device_names) = names(0, "device")?;
        let (sensor_keys, sensor_names) = names(1, "sensor")?;
        let values =
            batch.column(2).as_primitive_opt::<arrow::datatypes::Float64Type>().ok_or(PartError::Column("value"))?;
        let times = batch
            .column(3)
            .as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
            .ok_or(PartError::Column("timestamp"))?;
        let written = match batch.schema().index_of("written") {
            Ok(i) => Some(
                batch
                    .column(i)
                    .as_primitive_opt::<arrow::datatypes::UInt64Type>()
                    .ok_or(PartError::Column("written"))?,
            ),
            Err(_) => None,
        };
        Ok(PartColumns { device_keys, device_names, sensor_keys, sensor_names, values, times, written })
    }

    /// Row `i`'s index into [`Self::device_names`].
    pub fn device_key(&self, i: usize) -> u32 {
        self.device_keys.value(i) as u32
    }

    /// Row `i`'s index into [`Self::sensor_names`].
    pub fn sensor_key(&self, i: usize) -> u32 {
        self.sensor_keys.value(i) as u32
    }

    /// Row `i`'s write time (0: unknown).
    pub fn written(&self, i: usize) -> u64 {
        self.written.map_or(0, |w| if w.is_null(i) { 0 } else { w.value(i) })
    }

    /// Row `i`, borrowed.
    pub fn reading(&self, i: usize) -> ReadingRef<'a> {
        ReadingRef {
            device: self.device_names.value(self.device_key(i) as usize),
            sensor: self.sensor_names.value(self.sensor_key(i) as usize),
            value: self.values.value(i),
            micros: self.times.value(i),
            written: self.written(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Names with runs and returns: the dictionary column is the array that collecting them makes.
        #[test]
        fn the_dictionary_of_runs_is_the_collected_one(names in proptest::collection::vec((0u8..6, 1usize..5), 0..60)) {
            let names: Vec<String> = names.iter().flat_map(|(n, run)| std::iter::repeat_n(format!("n{n}"), *run)).collect();
            let collected: DictionaryArray<Int32Type> = names.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(dictionary(names.iter().map(String::as_str)).unwrap(), collected);
        }
    }

    /// Runs of sensors with these many rows: around the minimum for own row groups and around a full row group.
    const RUN_ROWS: [usize; 8] = [
        1,
        700,
        SENSOR_ROW_GROUP_MIN_ROWS - 1,
        SENSOR_ROW_GROUP_MIN_ROWS,
        SENSOR_ROW_GROUP_MIN_ROWS + 1,
        20_000,
        ROW_GROUP_ROWS,
        ROW_GROUP_ROWS + 3,
    ];

    /// Readings of sensors `s0`, `s1`, … in archive order, with `RUN_ROWS[runs[i]]` rows of sensor i.
    fn runs_of(runs: &[usize]) -> Vec<ArchivedReading> {
        let mut v = Vec::new();
        for (s, &run) in runs.iter().enumerate() {
            v.extend((0..RUN_ROWS[run]).map(|i| ArchivedReading {
                device: format!("d{:03}", i % 37),
                sensor: format!("s{s:02}"),
                value: i as f64,
                micros: 1_795_000_000_000_000 + i as i64,
                written: i as u64,
            }));
        }
        sort_for_archive(&mut v);
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        /// Whatever the sensors' sizes and however the caller chunks the rows: the same bytes, the same rows back,
        /// row groups of at most `ROW_GROUP_ROWS`, and each row group either of one sensor with at least the minimum
        /// rows in the file (full but for its last) or only of sensors with fewer.
        #[test]
        fn row_groups_follow_the_sensors(
            runs in proptest::collection::vec(0..RUN_ROWS.len(), 1..6),
            chunk in proptest::sample::select(vec![1000, 8191, 50_000, ROW_GROUP_ROWS]),
        ) {
            let readings = runs_of(&runs);
            let mut writer = PartWriter::new().unwrap();
            for rows in readings.chunks(chunk) {
                writer.write(rows.iter().map(ArchivedReading::borrowed)).unwrap();
            }
            let bytes = writer.finish().unwrap();
            proptest::prop_assert!(bytes == write_parquet(&readings).unwrap(), "the bytes depend on the chunks");
            proptest::prop_assert!(read_parquet(bytes.clone().into()).unwrap() == readings);

            let meta = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&bytes::Bytes::from(bytes)).unwrap();
            let mut row = 0;
            for group in meta.row_groups() {
                let rows = usize::try_from(group.num_rows()).unwrap();
                proptest::prop_assert!(rows > 0 && rows <= ROW_GROUP_ROWS);
                let sensors: std::collections::BTreeSet<&str> =
                    readings[row..row + rows].iter().map(|r| r.sensor.as_str()).collect();
                let total = |s: &str| readings.iter().filter(|r| r.sensor == s).count();
                let long: Vec<&&str> = sensors.iter().filter(|s| total(s) >= SENSOR_ROW_GROUP_MIN_ROWS).collect();
                match long.as_slice() {
                    [] => {}
                    [only] => {
                        proptest::prop_assert_eq!(sensors.len(), 1, "a long sensor shares row group {:?}", sensors);
                        let last = readings.get(row + rows).is_none_or(|next| next.sensor != ***only);
                        proptest::prop_assert!(last || rows == ROW_GROUP_ROWS, "a long sensor's row group is short");
                    }
                    more => proptest::prop_assert!(false, "long sensors {:?} share a row group", more),
                }
                // Its statistics say so: one sensor is its minimum and its maximum.
                if sensors.len() == 1 {
                    let statistics = group.column(1).statistics().unwrap();
                    proptest::prop_assert_eq!(statistics.min_bytes_opt(), statistics.max_bytes_opt());
                }
                row += rows;
            }
            proptest::prop_assert_eq!(row, readings.len());
        }
    }

    fn sample() -> Vec<ArchivedReading> {
        let mut v: Vec<ArchivedReading> = (0..1000)
            .map(|i| ArchivedReading {
                device: format!("dev-{}", i % 7),
                sensor: ["speed", "fuel"][i % 2].into(),
                value: i as f64 * 0.5,
                micros: 1_795_000_000_000_000 + (i as i64 * 7919 % 1000) * 1000,
                written: 3_590_000_000_000_000 + i as u64 / 10,
            })
            .collect();
        sort_for_archive(&mut v);
        v
    }

    #[test]
    fn a_part_reads_back_with_the_plain_parquet_reader() {
        let readings = sample();
        let bytes = write_parquet(&readings).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(read_parquet(bytes.clone().into()).unwrap(), readings);
        // The same rows as compact batches.
        let batches = read_parquet_batches(bytes.into()).unwrap();
        let rows: Vec<(String, String, i64, u64)> = batches
            .iter()
            .flat_map(|b| {
                b.rows.iter().map(|row| {
                    let (device, sensor) = (&b.devices[row.device as usize], &b.sensors[row.sensor as usize]);
                    (device.to_string(), sensor.to_string(), row.micros, row.value.to_bits())
                })
            })
            .collect();
        let expected: Vec<(String, String, i64, u64)> =
            readings.iter().map(|r| (r.device.clone(), r.sensor.clone(), r.micros, r.value.to_bits())).collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn parts_are_deterministic_and_carry_the_schema_and_statistics() {
        let readings = sample();
        let a = write_parquet(&readings).unwrap();
        assert_eq!(a, write_parquet(&readings).unwrap(), "same rows, same bytes");
        let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(a)).unwrap();
        use parquet::file::reader::FileReader;
        let meta = reader.metadata();
        let rg = meta.row_group(0);
        assert_eq!(rg.num_rows(), 1000);
        let col = rg.column(2);
        assert_eq!(col.compression(), Compression::ZSTD(ZstdLevel::default()));
        assert!(col.statistics().is_some(), "statistics on");
        let arrow_schema = parquet::arrow::parquet_to_arrow_schema(meta.file_metadata().schema_descr(), None).unwrap();
        assert_eq!(arrow_schema.field(3).data_type(), archive_schema().field(3).data_type());
        // Names and values in dictionaries; times as deltas, never through a dictionary.
        use parquet::basic::Encoding;
        for (column, name) in archive_schema().fields().iter().enumerate() {
            let encodings = rg.column(column).encodings().collect::<Vec<_>>();
            match name.name().as_str() {
                "device" | "sensor" | "value" => {
                    assert!(encodings.contains(&Encoding::RLE_DICTIONARY), "{name}: {encodings:?}")
                }
                "timestamp" | "written" => assert!(
                    encodings.contains(&Encoding::DELTA_BINARY_PACKED)
                        && !encodings.contains(&Encoding::RLE_DICTIONARY)
                        && !encodings.contains(&Encoding::PLAIN_DICTIONARY),
                    "{name}: {encodings:?}"
                ),
                other => panic!("a column this test does not know: {other}"),
            }
        }
    }
}
