//! The record of verdicts: the readings the statistics judged late (admitted after a newer reading of their series)
//! or duplicate (dropped), kept in the archive beside the readings, so that each window's `late` and `duplicates`
//! counts outlive the write-ahead log.
//!
//! Why a record of its own: the archive holds first writes only (a duplicate is not in it, by design), and a late
//! reading is late because of the order it arrived in, which the archive's sorted parts do not keep. The archiver
//! already receives every verdict (it leaves the duplicates out), so it writes the judged readings with the same
//! encoder as the parts, in the same flush and under the same commit: `verdicts/kind=late|duplicate/date=D/part-…`,
//! named like the flush's parts (a flush that never commits leaves none behind; a retried one writes the same bytes).
//! Verdicts are rare — a reading is judged only when its series already had its timestamp or a newer one — so these
//! files are few and small.
//!
//! Who reads it: the seal counts each window's verdicts into the rollups ([`DayVerdicts`]), and SQL's `verdicts`
//! table and the `windows_*` views read the files of days not sealed yet.

use std::collections::HashMap;

use object_store::ObjectStoreExt;

use crate::archive::{ArchiveError, ArchiveLocation, PartName, VerdictKind};
use crate::part::read_parquet;

/// A day's verdicts, by series (sensor, device): each judged reading's timestamp and kind, in time order.
#[derive(Debug, Default, Clone)]
pub struct DayVerdicts {
    by_series: HashMap<(String, String), Vec<(i64, VerdictKind)>>,
}

impl DayVerdicts {
    /// Reads `date`'s verdict files that `include` admits (a cluster's seal takes only committed ones).
    pub async fn read(
        location: &ArchiveLocation,
        date: &str,
        include: impl Fn(&PartName) -> bool,
    ) -> Result<DayVerdicts, ArchiveError> {
        let mut files: Vec<(VerdictKind, PartName)> =
            location.list_verdict_files().await?.into_iter().filter(|(_, p)| p.date == date && include(p)).collect();
        files.sort_by_key(|(kind, p)| (*kind, p.process, p.first));
        let mut by_series: HashMap<(String, String), Vec<(i64, VerdictKind)>> = HashMap::new();
        for (kind, file) in files {
            let bytes = location.store.get(&file.path).await?.bytes().await?;
            let readings =
                read_parquet(bytes).map_err(|source| ArchiveError::BadPart { path: file.path.to_string(), source })?;
            for r in readings {
                by_series.entry((r.sensor, r.device)).or_default().push((r.micros, kind));
            }
        }
        for judged in by_series.values_mut() {
            judged.sort_unstable();
        }
        Ok(DayVerdicts { by_series })
    }

    /// How many readings of `sensor` and `device` in `[start, end)` were judged late, and how many duplicate.
    pub fn counts(&self, sensor: &str, device: &str, (start, end): (i64, i64)) -> (i64, i64) {
        if self.by_series.is_empty() {
            return (0, 0);
        }
        let Some(judged) = self.by_series.get(&(sensor.to_owned(), device.to_owned())) else { return (0, 0) };
        let from = judged.partition_point(|(t, _)| *t < start);
        let to = judged.partition_point(|(t, _)| *t < end);
        judged[from..to].iter().fold((0, 0), |(late, duplicates), (_, kind)| match kind {
            VerdictKind::Late => (late + 1, duplicates),
            VerdictKind::Duplicate => (late, duplicates + 1),
        })
    }
}
