//! Sealing a day: compact its parts into one sorted, deduplicated Parquet file, write the day's window rollups
//! (`rollups/width=W/date=YYYY-MM-DD/`, see [`crate::rollup`]) and the replaced system's dump,
//! `dumps/YYYY-MM-DD.json.gz`.
//!
//! The same parts always seal to the same bytes (Parquet and dump), so sealing is idempotent. Readings that arrive
//! late for a sealed day land in new parts (their WAL positions are higher than the sealed file's), and the next
//! seal merges them in and writes both files again; the journal `seals/YYYY-MM-DD.json` counts them.
//!
//! Deduplication across parts is exact, whatever the age, and applies the statistics' order of writes: among the
//! rows of one (device, sensor, timestamp), the sealed file's row stays (a seal's verdict is never reopened);
//! otherwise the row with the smallest write time (`written`, see `weir_pipeline::clock`) wins, and among equal
//! write times (one process's group commit, or older parts without write times) the earlier part's, then the
//! earlier row's. Alone that is the log's order; in a cluster it is the order every process's statistics used —
//! not "the lower process first". Crash safety: the merged file is staged, then — under the visibility
//! lock queries hold — the journal records what it replaces, the file moves into place and the replaced parts are
//! deleted; [`finish_interrupted_seals`] completes a seal that a crash interrupted.

mod day;
mod lock;
mod merge;

pub(crate) use day::{Derived, merge_parts};
pub use lock::SealerLock;
pub(crate) use merge::{MergedRow, Names};

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveError, ArchiveLocation, ArchiveProgress, PartName};
use crate::verdicts::DayVerdicts;

/// The record of a day's seals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealRecord {
    pub date: String,
    /// Readings in the sealed file.
    pub readings: u64,
    /// Readings that arrived after the day was first sealed, over all reseals.
    pub late_readings: u64,
    /// The WAL position range the sealed file covers.
    pub first: u64,
    pub last: u64,
    /// Parts being replaced by an unfinished seal (empty once done).
    #[serde(default)]
    pub replacing: Vec<String>,
    /// In a cluster's archive: per process, the last log position of its parts in the sealed file (its parts that
    /// start after it are late).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub through: BTreeMap<u32, u64>,
}

/// What one seal did.
#[derive(Debug, Clone, PartialEq)]
pub struct SealOutcome {
    pub record: SealRecord,
    pub parts_merged: usize,
    pub sealed: Path,
    pub dump: Path,
    /// Whether anything changed (false: the day was already sealed with these parts).
    pub changed: bool,
    /// Late readings merged by this seal (the record's `late_readings` counts all of the day's).
    pub late_now: u64,
}

fn journal_path(location: &ArchiveLocation, date: &str) -> Path {
    seals_prefix(location).join(format!("{date}.json"))
}

/// The dump's path for `date` under `root`.
pub fn dump_path(root: &Path, date: &str) -> Path {
    root.clone().join("dumps").join(format!("{date}.json.gz"))
}

async fn read_journal(location: &ArchiveLocation, date: &str) -> Result<Option<SealRecord>, ArchiveError> {
    match location.store.get(&journal_path(location, date)).await {
        Ok(r) => {
            let bytes = r.bytes().await?;
            Ok(serde_json::from_slice(&bytes).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `date` was ever sealed (it has a seal journal).
pub async fn is_sealed(location: &ArchiveLocation, date: &str) -> Result<bool, ArchiveError> {
    Ok(read_journal(location, date).await?.is_some())
}

async fn write_journal(location: &ArchiveLocation, record: &SealRecord) -> Result<(), ArchiveError> {
    let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    location.store.put(&journal_path(location, &record.date), PutPayload::from(bytes)).await?;
    Ok(())
}

/// Every seal record, for the `seals` SQL table.
pub async fn seal_records(location: &ArchiveLocation) -> Result<Vec<SealRecord>, ArchiveError> {
    use futures_util::TryStreamExt;
    let metas: Vec<_> = location.store.list(Some(&seals_prefix(location))).try_collect().await?;
    seal_records_listed(location, metas).await
}

/// Where the seal journal lives: one object per sealed day.
pub fn seals_prefix(location: &ArchiveLocation) -> object_store::path::Path {
    location.root.clone().join("seals")
}

/// The seal journal read from its listing `metas` (of [`seals_prefix`]), by date.
pub async fn seal_records_listed(
    location: &ArchiveLocation,
    metas: Vec<object_store::ObjectMeta>,
) -> Result<Vec<SealRecord>, ArchiveError> {
    let mut out = Vec::new();
    for m in metas {
        let bytes = location.store.get(&m.location).await?.bytes().await?;
        if let Ok(r) = serde_json::from_slice::<SealRecord>(&bytes) {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.date.cmp(&b.date));
    Ok(out)
}

/// Seals `date`: merges its parts into one, writes the dump (to `dump_root`, default the archive root), and returns
/// what it did. `progress` (the running archiver's) provides the lock that keeps queries consistent.
pub async fn seal_day(
    location: &ArchiveLocation,
    date: &str,
    progress: Option<&Arc<ArchiveProgress>>,
    dump_to: Option<&ArchiveLocation>,
) -> Result<SealOutcome, ArchiveError> {
    seal_committed_day(location, date, progress, dump_to, None).await
}

/// Like [`seal_day`], for a cluster's archive: only the parts every process has committed are merged — process
/// `q`'s parts through `committed[q]` (a part beyond it may belong to a flush that never commits) — with the day's
/// sealed file.
pub async fn seal_committed_day(
    location: &ArchiveLocation,
    date: &str,
    progress: Option<&Arc<ArchiveProgress>>,
    dump_to: Option<&ArchiveLocation>,
    committed: Option<&BTreeMap<u32, u64>>,
) -> Result<SealOutcome, ArchiveError> {
    let previous = read_journal(location, date).await?;
    let is_committed = |p: &PartName| match (committed, p.process) {
        (Some(committed), Some(q)) => committed.get(&q).is_some_and(|&c| p.last <= c),
        _ => true,
    };
    let mut parts: Vec<PartName> =
        location.list_parts().await?.into_iter().filter(|p| p.date == date && is_committed(p)).collect();
    // The order of parts breaks ties between equal write times: the sealed file first, then each process's parts in
    // its log's order.
    parts.sort_by_key(|p| (!p.sealed, p.process, p.first, p.last));
    let dump_root = dump_to.unwrap_or(location);
    let dump = dump_path(&dump_root.root, date);
    if parts.is_empty() {
        return Err(ArchiveError::Url {
            url: location.url.to_string(),
            reason: format!("no readings archived for {date}"),
        });
    }
    // First row of each key in write order wins. Rows from parts written after the last seal are late.
    let is_late = |part: &PartName| match (&previous, part.process) {
        (None, _) => false,
        (Some(_), None) if part.sealed => false,
        (Some(previous), None) => part.first > previous.last,
        (Some(previous), Some(q)) => part.first > previous.through.get(&q).copied().unwrap_or(0),
    };
    // The day's rows, merged (see [`merge`]) in the archive's order (sensor, device, timestamp), then sealed rows
    // first, then write time (ties in part and row order): the first row of each key is its first write.
    let verdicts = Arc::new(DayVerdicts::read(location, date, is_committed).await?);
    let (day, _merging) = merge_parts(location, &parts, is_late, progress, Derived::RollupsAndDump, verdicts).await?;
    let late_now = day.late;
    let ranged = parts.iter().filter(|p| !p.sealed);
    let first = ranged.clone().map(|p| p.first).min().or(previous.as_ref().map(|p| p.first)).unwrap_or(0);
    let last = ranged.clone().map(|p| p.last).max().unwrap_or(first).max(previous.as_ref().map_or(0, |p| p.last));
    let mut through = previous.as_ref().map(|p| p.through.clone()).unwrap_or_default();
    for part in ranged {
        if let Some(q) = part.process {
            let t = through.entry(q).or_insert(0);
            *t = (*t).max(part.last);
        }
    }
    let sealed = location.sealed_path(date, first, last);
    let late_readings = previous.as_ref().map_or(0, |p| p.late_readings) + late_now;
    let replacing: Vec<Path> = parts.iter().map(|p| p.path.clone()).filter(|p| *p != sealed).collect();
    let record = SealRecord {
        date: date.to_owned(),
        readings: day.readings,
        late_readings,
        first,
        last,
        replacing: replacing.iter().map(|p| p.to_string()).collect(),
        through,
    };
    let dump_bytes = day.dump.unwrap_or_default();
    // Derived from exactly the rows the sealed file holds: staged now, published with the swap.
    crate::rollup::write_day_rollups(location, date, day.rollups).await?;

    let changed = !(replacing.is_empty()
        && previous.as_ref().is_some_and(|p| location.share.is_some() || (p.first == first && p.last == last)));
    // Stage, then swap under the lock queries hold.
    let staged = location.staging_root().join(format!("seal-{date}.parquet"));
    location.store.put(&staged, PutPayload::from(day.parquet)).await?;
    dump_root.store.put(&dump, PutPayload::from(dump_bytes)).await?;
    {
        // Queries still reading the parts first (`replacing`), then the flush's lock.
        let _replacing = match progress {
            Some(p) => Some(p.replacing.write().await),
            None => None,
        };
        let _visible = match progress {
            Some(p) => Some(p.visibility.write().await),
            None => None,
        };
        write_journal(location, &record).await?;
        location.store.rename(&staged, &sealed).await?;
        crate::rollup::publish_day_rollups(location, date).await?;
        for old in &replacing {
            location.store.delete(old).await?;
        }
    }
    let done = SealRecord { replacing: Vec::new(), ..record };
    write_journal(location, &done).await?;
    Ok(SealOutcome { record: done, parts_merged: parts.len(), sealed, dump, changed, late_now })
}

/// Completes seals that a crash interrupted: moves the merged file into place if it is still staged, then deletes
/// the parts their journal says they replace. In a cluster, each process finishes the seals of the days it owns.
pub async fn finish_interrupted_seals(location: &ArchiveLocation) -> Result<(), ArchiveError> {
    for record in seal_records(location).await? {
        if record.replacing.is_empty() || location.share.is_some_and(|s| !s.owns_day(&record.date)) {
            continue;
        }
        let sealed = location.sealed_path(&record.date, record.first, record.last);
        // The merged file is staged before the journal names what it replaces, and leaves staging only by the move.
        let staged = location.staging_root().join(format!("seal-{}.parquet", record.date));
        if location.store.head(&staged).await.is_ok() {
            location.store.rename(&staged, &sealed).await?;
        } else if location.store.head(&sealed).await.is_err() {
            // The merged file never made it: keep the parts, forget the unfinished seal.
            write_journal(location, &SealRecord { replacing: Vec::new(), ..record }).await?;
            continue;
        }
        crate::rollup::publish_day_rollups(location, &record.date).await?;
        for old in &record.replacing {
            // The journal holds each path as written (already encoded): parse it back, never encode it again, or
            // an archive path with `~ # % [ ] …` names another object and the NotFound below hides the duplicate.
            let old = Path::parse(old).map_err(|e| ArchiveError::BadJournal {
                date: record.date.clone(),
                reason: format!("it names a part {old:?} that is not an object path ({e})"),
            })?;
            match location.store.delete(&old).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        write_journal(location, &SealRecord { replacing: Vec::new(), ..record }).await?;
    }
    Ok(())
}

/// Days that are due for a seal: over for `grace` already, with parts not yet merged into a sealed file (in a
/// cluster, of the days this process owns).
pub async fn days_due(
    location: &ArchiveLocation,
    now_micros: i64,
    grace_micros: i64,
) -> Result<Vec<String>, ArchiveError> {
    let parts = location.list_parts().await?;
    let mut dates: Vec<String> = parts.iter().map(|p| p.date.clone()).collect();
    dates.sort();
    dates.dedup();
    let mut due = Vec::new();
    for date in dates {
        if location.share.is_some_and(|s| !s.owns_day(&date)) {
            continue;
        }
        let Ok(day) = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d") else { continue };
        let end = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros() + 86_400_000_000);
        if end.is_none_or(|end| end + grace_micros > now_micros) {
            continue;
        }
        let count = parts.iter().filter(|p| p.date == date).count();
        let journal = read_journal(location, &date).await?;
        let sealed_alone = count == 1 && journal.is_some();
        if !sealed_alone {
            due.push(date);
        }
    }
    Ok(due)
}

#[cfg(test)]
mod tests;
