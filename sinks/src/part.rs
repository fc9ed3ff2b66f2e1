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
    ArrayRef, DictionaryArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use weir_pipeline::reading::{ReadingBatch, Row};

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
}

/// Sorts readings, given in write order, into the archive's order: (sensor, device, timestamp), and among equal keys
/// (a duplicate older than the dedup horizon, admitted again) in write order — a stable sort, so that whoever reads
/// the part (the seal, the statistics at start) takes the first row of a key as its first write. (Ordering equal
/// keys by value bits, as before, made the seal keep whichever value sorted first.)
pub fn sort_for_archive(readings: &mut [ArchivedReading]) {
    readings.sort_by(|a, b| (&a.sensor, &a.device, a.micros).cmp(&(&b.sensor, &b.device, b.micros)));
}

/// The readings as one Arrow batch, in the order given.
pub fn to_record_batch(readings: &[ArchivedReading]) -> Result<RecordBatch, PartError> {
    let device: DictionaryArray<Int32Type> = readings.iter().map(|r| r.device.as_str()).collect();
    let sensor: DictionaryArray<Int32Type> = readings.iter().map(|r| r.sensor.as_str()).collect();
    let value = Float64Array::from_iter_values(readings.iter().map(|r| r.value));
    let timestamp = TimestampMicrosecondArray::from_iter_values(readings.iter().map(|r| r.micros)).with_timezone("UTC");
    let written = UInt64Array::from_iter_values(readings.iter().map(|r| r.written));
    let columns: Vec<ArrayRef> =
        vec![Arc::new(device), Arc::new(sensor), Arc::new(value), Arc::new(timestamp), Arc::new(written)];
    Ok(RecordBatch::try_new(archive_schema(), columns)?)
}

/// Writes `readings` (already in archive order) as Parquet bytes.
pub fn write_parquet(readings: &[ArchivedReading]) -> Result<Vec<u8>, PartError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("weir".into())
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, archive_schema(), Some(props))?;
    for chunk in readings.chunks(ROW_GROUP_ROWS) {
        writer.write(&to_record_batch(chunk)?)?;
    }
    writer.close()?;
    Ok(out)
}

/// Reads a part back with the parquet crate's own reader (no DataFusion), one owned row per reading, with its
/// write time.
pub fn read_parquet(bytes: bytes::Bytes) -> Result<Vec<ArchivedReading>, PartError> {
    let mut out = Vec::new();
    for (batch, written) in read_parts(bytes)? {
        let rows = crate::archive::archived_readings(&batch, 0);
        out.extend(rows.zip(written).map(|(r, written)| ArchivedReading { written, ..r }));
    }
    Ok(out)
}

/// Reads a part as compact reading batches, one per Arrow batch: the dictionaries become the batch's name tables,
/// so no name is copied per row. This is how the statistics and the archiver load the archive on start.
pub fn read_parquet_batches(bytes: bytes::Bytes) -> Result<Vec<ReadingBatch>, PartError> {
    Ok(read_parts(bytes)?.into_iter().map(|(batch, _)| batch).collect())
}

/// Each Arrow batch of a part as a reading batch and the write times of its rows (0s for an older part).
fn read_parts(bytes: bytes::Bytes) -> Result<Vec<(ReadingBatch, Vec<u64>)>, PartError> {
    use arrow::array::{Array, AsArray};
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let names = |i: usize, name: &'static str| -> Result<(Vec<Box<str>>, Vec<u32>), PartError> {
            let dict = batch.column(i).as_dictionary_opt::<Int32Type>().ok_or(PartError::Column(name))?;
            let values = dict.values().as_any().downcast_ref::<StringArray>().ok_or(PartError::Column(name))?;
            let table = values.iter().map(|v| Box::from(v.unwrap_or_default())).collect();
            let keys = dict.keys().iter().map(|k| k.unwrap_or_default() as u32).collect();
            Ok((table, keys))
        };
        let (devices, device_keys) = names(0, "device")?;
        let (sensors, sensor_keys) = names(1, "sensor")?;
        if sensors.len() > usize::from(u16::MAX) {
            return Err(PartError::Column("sensor"));
        }
        let values =
            batch.column(2).as_primitive_opt::<arrow::datatypes::Float64Type>().ok_or(PartError::Column("value"))?;
        let times = batch
            .column(3)
            .as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
            .ok_or(PartError::Column("timestamp"))?;
        let rows = (0..batch.num_rows())
            .map(|i| Row {
                sensor: sensor_keys[i] as u16,
                device: device_keys[i],
                micros: times.value(i),
                value: values.value(i),
            })
            .collect();
        let written = match batch.schema().index_of("written") {
            Ok(i) => {
                let column = batch
                    .column(i)
                    .as_primitive_opt::<arrow::datatypes::UInt64Type>()
                    .ok_or(PartError::Column("written"))?;
                (0..batch.num_rows()).map(|row| if column.is_null(row) { 0 } else { column.value(row) }).collect()
            }
            Err(_) => vec![0; batch.num_rows()],
        };
        out.push((ReadingBatch { sensors: Arc::from(sensors), devices, rows }, written));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let rows: Vec<ArchivedReading> = batches.iter().flat_map(|b| crate::archive::archived_readings(b, 0)).collect();
        let without_write_times: Vec<ArchivedReading> =
            readings.iter().map(|r| ArchivedReading { written: 0, ..r.clone() }).collect();
        assert_eq!(rows, without_write_times);
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
    }
}
