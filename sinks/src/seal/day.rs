//! A day's merged rows on their way into its sealed file, its rollups and its dump, written as they stream by.
//!
//! Why: the seal keeps the first write of each key of a day's parts, and the sealed file, the rollups and the dump
//! are all derived from those rows. Held whole (owned rows, then 40-byte compact rows sorted in place), a seal's
//! memory grew with the day — ~60 bytes per reading, 99 MiB for 1.7 M — and a day that kept getting late data was
//! resealed every few seconds (the soak's RSS swings). Now [`merge`](super::merge) gives the rows in the archive's
//! order a part batch at a time, and every output is encoded from that stream: the sealed file a row group at a
//! time, each rollup a window at a time, the dump a line at a time. What the seal holds is the parts' and the
//! outputs' compressed bytes, one row group and one batch per part
//! (`cargo run --release -p weir-benches --example seal_memory`).
//!
//! The dump is in the archive's order too (sensor, device, timestamp) — deterministic, so the same parts give the
//! same bytes, and streamed (timestamp order needs the whole day sorted).

use std::io::Write;
use std::sync::Arc;

use object_store::ObjectStoreExt;
use weir_operators::Width;
use weir_pipeline::budget::cost;

use super::merge::{DayMerge, MergeInput, MergedRow, Names};
use crate::archive::{ArchiveError, ArchiveLocation, ArchiveProgress, MergingGuard, PartName};
use crate::part::{PartError, PartWriter, ROW_GROUP_ROWS, ReadingRef};
use crate::rollup::DayRollupWriter;
use crate::verdicts::DayVerdicts;

/// What a merge writes besides the merged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derived {
    /// Nothing (a compaction: the day is not sealed).
    None,
    /// The day's rollups and dump (a seal).
    RollupsAndDump,
}

/// A merged day: the merged file, what was derived from the same rows, and counts.
pub(crate) struct MergedDay {
    /// The merged file (sealed or compacted).
    pub parquet: Vec<u8>,
    /// Each width's rollup (empty unless asked).
    pub rollups: Vec<(Width, Vec<u8>)>,
    /// The dump, gzip NDJSON (`None` unless asked).
    pub dump: Option<Vec<u8>>,
    /// Rows kept (the first write of each key).
    pub readings: u64,
    /// Rows kept that came from parts written after the day's last seal.
    pub late: u64,
}

/// Reads `parts` (in the order that breaks ties between equal write times) and merges them, first write of each key
/// only, into the merged file and what `derived` asks (rollups count `verdicts` into their windows); `late` says which parts were written after the day's last
/// seal. The guard counts what the merge holds in the memory budget (`progress`: [`cost::MERGE_BASE`], a reader per
/// part, the parts' and the outputs' bytes) for as long as the caller holds it.
pub(crate) async fn merge_parts(
    location: &ArchiveLocation,
    parts: &[PartName],
    late: impl Fn(&PartName) -> bool,
    progress: Option<&Arc<ArchiveProgress>>,
    derived: Derived,
    verdicts: Arc<DayVerdicts>,
) -> Result<(MergedDay, MergingGuard), ArchiveError> {
    let mut fetched = Vec::with_capacity(parts.len());
    for part in parts {
        fetched.push(location.store.get(&part.path).await?.bytes().await?);
    }
    let bad = |(i, source): (usize, PartError)| match parts.get(i) {
        Some(part) => ArchiveError::BadPart { path: part.path.to_string(), source },
        None => ArchiveError::Part(source),
    };
    let input_bytes: u64 = fetched.iter().map(|b| b.len() as u64).sum();
    let held = cost::MERGE_BASE + cost::MERGE_PART * parts.len() as u64 + 2 * input_bytes;
    let merging = ArchiveProgress::merging(progress, held);
    let inputs =
        parts.iter().zip(fetched).map(|(part, bytes)| MergeInput { bytes, late: late(part), sealed: part.sealed });
    let mut merge = DayMerge::new(inputs).map_err(bad)?;
    let date = parts.first().map_or_else(String::new, |p| p.date.clone());
    let mut day = DayWriter::new(derived, date, verdicts)?;
    while let Some(row) = merge.next_row().map_err(bad)? {
        day.push(row, merge.names())?;
    }
    Ok((day.finish(merge.names())?, merging))
}

/// The outputs of a merge, fed one row at a time.
struct DayWriter {
    /// The day (for errors).
    date: String,
    parquet: PartWriter,
    /// Rows not yet written to `parquet` (a row group's worth, so the bytes are those of one chunking).
    chunk: Vec<MergedRow>,
    rollups: Vec<DayRollupWriter>,
    dump: Option<DumpWriter>,
    readings: u64,
    late: u64,
}

impl DayWriter {
    fn new(derived: Derived, date: String, verdicts: Arc<DayVerdicts>) -> Result<DayWriter, PartError> {
        let (rollups, dump) = match derived {
            Derived::None => (Vec::new(), None),
            Derived::RollupsAndDump => {
                let rollups = Width::ALL.into_iter().map(|w| DayRollupWriter::new(w, verdicts.clone()));
                (rollups.collect::<Result<_, _>>()?, Some(DumpWriter::new()))
            }
        };
        Ok(DayWriter {
            date,
            parquet: PartWriter::new()?,
            chunk: Vec::with_capacity(ROW_GROUP_ROWS),
            rollups,
            dump,
            readings: 0,
            late: 0,
        })
    }

    fn push(&mut self, row: MergedRow, names: &Names) -> Result<(), ArchiveError> {
        self.readings += 1;
        self.late += u64::from(row.late);
        for rollup in &mut self.rollups {
            rollup.push(&row, names)?;
        }
        if let Some(dump) = &mut self.dump {
            dump.push(&row, names).map_err(|source| ArchiveError::Dump { date: self.date.clone(), source })?;
        }
        self.chunk.push(row);
        if self.chunk.len() == ROW_GROUP_ROWS {
            self.write_chunk(names)?;
        }
        Ok(())
    }

    fn write_chunk(&mut self, names: &Names) -> Result<(), PartError> {
        self.parquet.write(self.chunk.iter().map(|r| reading(r, names)))?;
        self.chunk.clear();
        Ok(())
    }

    fn finish(mut self, names: &Names) -> Result<MergedDay, ArchiveError> {
        if !self.chunk.is_empty() {
            self.write_chunk(names)?;
        }
        let rollups = Width::ALL.into_iter().zip(self.rollups).map(|(w, r)| Ok((w, r.finish(names)?)));
        let dump_error = |source| ArchiveError::Dump { date: self.date.clone(), source };
        Ok(MergedDay {
            parquet: self.parquet.finish()?,
            rollups: rollups.collect::<Result<_, PartError>>()?,
            dump: self.dump.map(DumpWriter::finish).transpose().map_err(dump_error)?,
            readings: self.readings,
            late: self.late,
        })
    }
}

fn reading<'a>(row: &MergedRow, names: &'a Names) -> ReadingRef<'a> {
    ReadingRef {
        device: names.get(row.device),
        sensor: names.get(row.sensor),
        value: row.value,
        micros: row.micros,
        written: row.written,
    }
}

/// The dump: gzip NDJSON in the ingest shape, in the archive's order, encoded line by line into the compressor.
struct DumpWriter {
    out: std::io::BufWriter<flate2::write::GzEncoder<Vec<u8>>>,
}

/// One dump line, in the replaced system's field order.
#[derive(serde::Serialize)]
struct DumpLine<'a> {
    sensor: &'a str,
    value: f64,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
}

impl DumpWriter {
    fn new() -> DumpWriter {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        DumpWriter { out: std::io::BufWriter::with_capacity(64 * 1024, gz) }
    }

    fn push(&mut self, row: &MergedRow, names: &Names) -> std::io::Result<()> {
        let r = reading(row, names);
        let device = (r.device != weir_pipeline::reading::DEFAULT_DEVICE).then_some(r.device);
        let timestamp = weir_pipeline::decode::format_timestamp(r.micros);
        serde_json::to_writer(&mut self.out, &DumpLine { sensor: r.sensor, value: r.value, timestamp, device })?;
        self.out.write_all(b"\n")
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        self.out.into_inner().map_err(|e| e.into_error())?.finish()
    }
}
