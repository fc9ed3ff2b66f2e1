//! The archive as a starting point. Once the WAL before the archive's committed position has been deleted, the
//! statistics and the archiver's dedup filter can no longer be rebuilt by replaying the log from position 1; they
//! start from the archive instead — every first-written reading through the committed position, exactly what
//! replaying that prefix of the log would have admitted — and read the log after it.
//!
//! **Days before the live horizon are not read** ([`ArchiveSnapshot::open`]'s `live_from`): their windows would
//! leave memory as soon as they were loaded, and answers take them from the rollups. Of those days only each
//! series' last reading is fed, from the 1-day rollups (its `last` and `last_timestamp`), so that the latest values
//! and the device names are whole. Start-up then reads the days within the horizon and one rollup row per series
//! and older day, not every reading ever archived.

use std::collections::VecDeque;

use object_store::ObjectStoreExt;
use weir_operators::Admission;
use weir_pipeline::reading::ReadingBatch;
use weir_pipeline::stats::SnapshotBatch;

use crate::archive::{ArchiveError, ArchiveLocation, PartName};
use crate::part::read_parquet_batches;
use crate::rollup::read_day_rollup;

/// Reads every committed part, in order of the last WAL position each covers, as reading batches; then the record
/// of verdicts of the same days (see [`crate::verdicts`]), so that the live windows' late and duplicate counts start
/// where they were.
pub struct ArchiveSnapshot {
    location: ArchiveLocation,
    runtime: tokio::runtime::Handle,
    parts: VecDeque<PartName>,
    pending: VecDeque<SnapshotBatch>,
    /// The last position of the part `pending` came from.
    pending_last: u64,
    /// The verdict files to read after the parts, with their kind.
    judged: VecDeque<(Admission, PartName)>,
}

impl ArchiveSnapshot {
    /// The parts holding readings through `committed` (a part starting after it belongs to a flush that never
    /// committed); in a cluster, this process's share of them. Reads happen on `runtime`, from a thread that is not one of its workers.
    ///
    /// With `live_from` (a day's start, event time), the parts of the days before it are left out — every such day
    /// must have its rollups (see [`crate::rollup::rolled_through`]) — and each series' last reading of those days
    /// is fed first instead.
    pub async fn open(
        location: &ArchiveLocation,
        committed: u64,
        runtime: tokio::runtime::Handle,
        live_from: Option<i64>,
    ) -> Result<ArchiveSnapshot, ArchiveError> {
        // In a cluster each process loads its own committed parts and the sealed files of the days it owns, so
        // that together the processes load every archived reading once.
        let mine = |p: &PartName| match location.share {
            None => p.last <= committed,
            Some(share) if p.sealed => share.owns_day(&p.date),
            Some(_) => location.is_own(p) && p.last <= committed,
        };
        let mut parts: Vec<PartName> = location.list_parts().await?.into_iter().filter(mine).collect();
        parts.sort_by(|a, b| (a.last, a.first, &a.date).cmp(&(b.last, b.first, &b.date)));
        let first_live_day =
            live_from.and_then(chrono::DateTime::from_timestamp_micros).map(|t| t.format("%Y-%m-%d").to_string());
        let (mut pending, mut pending_last) = (VecDeque::new(), 0);
        // This process's own verdict files (each process keeps those of its own log), of the days loaded.
        let mut judged: Vec<(Admission, PartName)> = location
            .list_verdict_files()
            .await?
            .into_iter()
            .filter(|(_, p)| location.is_own(p) && p.last <= committed)
            .filter(|(_, p)| first_live_day.as_ref().is_none_or(|day| p.date >= *day))
            .map(|(kind, p)| (kind.admission(), p))
            .collect();
        judged.sort_by(|a, b| (a.1.last, a.1.first, &a.1.date, a.0).cmp(&(b.1.last, b.1.first, &b.1.date, b.0)));
        if let Some(first_live_day) = first_live_day {
            let (older, live): (Vec<PartName>, Vec<PartName>) =
                parts.into_iter().partition(|p| p.date < first_live_day);
            parts = live;
            // In a cluster each day's last readings are fed by the process that owns the day, once.
            let seeds_here = |date: &str| location.share.is_none_or(|share| share.owns_day(date));
            let mut days: Vec<&str> = older.iter().map(|p| p.date.as_str()).filter(|d| seeds_here(d)).collect();
            days.sort();
            days.dedup();
            let seeds = last_readings(location, &days).await?;
            if !seeds.is_empty() {
                pending.extend(seeds.into_iter().map(SnapshotBatch::Readings));
                pending_last = older.iter().map(|p| p.last).min().unwrap_or(0);
            }
        }
        Ok(ArchiveSnapshot {
            location: location.clone(),
            runtime,
            parts: parts.into(),
            pending,
            pending_last,
            judged: judged.into(),
        })
    }

    /// How many parts it will read.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    fn read_part(&self, part: &PartName) -> Result<Vec<ReadingBatch>, ArchiveError> {
        let store = self.location.store.clone();
        let bytes = self.runtime.block_on(async { store.get(&part.path).await?.bytes().await })?;
        Ok(read_parquet_batches(bytes)?)
    }
}

impl Iterator for ArchiveSnapshot {
    /// A batch with the last WAL position of the part it comes from (verdicts: of the last part, so that positions
    /// never decrease).
    type Item = Result<(u64, SnapshotBatch), ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok((self.pending_last, batch)));
            }
            if let Some(part) = self.parts.pop_front() {
                match self.read_part(&part) {
                    Ok(batches) => {
                        self.pending = batches.into_iter().map(SnapshotBatch::Readings).collect();
                        self.pending_last = part.last;
                    }
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            let (admission, file) = self.judged.pop_front()?;
            match self.read_part(&file) {
                Ok(batches) => {
                    self.pending = batches.into_iter().map(|b| SnapshotBatch::Judged(admission, b)).collect();
                    self.pending_last = self.pending_last.max(file.last);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Each series' last reading over `days`, from their 1-day rollups, as batches (none: no series; more than one
/// only when they name more sensors than one batch can).
async fn last_readings(location: &ArchiveLocation, days: &[&str]) -> Result<Vec<ReadingBatch>, ArchiveError> {
    use std::collections::HashMap;
    use weir_pipeline::reading::{DeviceInterner, Row};
    let mut last: HashMap<(String, String), (i64, f64)> = HashMap::new();
    for day in days {
        let rows =
            read_day_rollup(location, weir_operators::Width::Day, day).await?.ok_or_else(|| ArchiveError::Url {
                url: location.url.to_string(),
                reason: format!("the day {day} is left out of the start as rolled up, but it has no rollups"),
            })?;
        for row in rows {
            let candidate = (row.agg.last.micros, row.agg.last.value);
            let entry = last.entry((row.device, row.sensor)).or_insert(candidate);
            if candidate.0 > entry.0 {
                *entry = candidate;
            }
        }
    }
    let mut entries: Vec<_> = last.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    let (mut batch, mut interner) = (ReadingBatch::new(), DeviceInterner::default());
    for ((device, sensor), (micros, value)) in entries {
        let sensor = match interner.intern_sensor(&mut batch.sensors, &sensor) {
            Ok(index) => index,
            Err(_) => {
                out.push(std::mem::take(&mut batch));
                interner.reset();
                interner.intern_sensor(&mut batch.sensors, &sensor).expect("a fresh batch has room")
            }
        };
        let device = interner.intern(&mut batch.devices, &device);
        batch.rows.push(Row { sensor, device, micros, value });
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    Ok(out)
}
