//! Compacting a day's parts as it goes, so that a day is a bounded number of files before its seal.
//!
//! Why: the archiver writes one part per flush (every few seconds), so by evening "today" is thousands of small
//! files and a query over it opens every one (measured before this: a day in 2 000 parts answered a query in
//! 575–765 ms, the same day in one file in 10–21 ms). Compaction merges parts in tiers, like a counter in base
//! [`FANOUT`] (8): 8 flushes' parts (tier 0) become one tier-1 part, 8 tier-1 parts one tier-2 part, 8 tier-2 parts
//! one tier-3 part (512 flushes: 85 minutes at one flush per 10 s). Tier-3 parts wait for the seal. A day of
//! 10-second flushes is then at most 7 + 7 + 7 + 17 = 38 files per process, and a reading is rewritten at most three
//! times before its seal.
//!
//! What is compacted: this process's own parts (their names carry their tier, `-t<N>`) of a day that was never
//! sealed and is not close to being due (its end plus half the grace still lies ahead, so the sealer of a day never
//! races a compaction of it, even on a process whose clock is off by less than half the grace), and only parts the
//! archiver has committed (a part beyond its checkpoint may be written again after a crash). The merge is the
//! seal's own ([`crate::seal`]'s `merge_parts`: first write wins, in write order), and a part of tier `t` covers exactly
//! the log positions of the parts it replaced, so a later seal keeps exactly what it would have kept without it.
//!
//! Crash safety, as the seal's: the merged part is staged; then, under the visibility lock queries hold, the journal
//! `compactions/date=D/<process>.json` records what it replaces (with a generation, so that an optimistic query in a
//! cluster can tell a compaction happened while it ran), the part moves into place, the replaced parts are deleted,
//! and the journal's list is emptied. [`finish_interrupted_compactions`] completes a compaction that a crash
//! interrupted — or drops it, when a seal has since consumed the parts it would replace.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveError, ArchiveLocation, ArchiveProgress, PartName};
use crate::seal::{Derived, merge_parts};

/// Parts of one tier merged at a time.
pub const FANOUT: usize = 8;

/// The highest tier compaction writes; parts of this tier wait for the seal.
pub const TOP_TIER: u8 = 3;

/// The journal of one process's compactions of one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionRecord {
    pub date: String,
    /// Counts this process's compactions of the day.
    pub generation: u64,
    /// The merged part.
    pub part: String,
    /// The parts it replaces, while the compaction is under way (empty once done).
    pub replacing: Vec<String>,
}

/// What one compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactOutcome {
    pub date: String,
    /// The merged part's tier.
    pub tier: u8,
    pub parts_merged: usize,
    pub readings: u64,
    pub part: Path,
}

/// A point after which tests stop a compaction, as a crash there would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Staged,
    Journaled,
    Moved,
    FirstDeleted,
}

fn journal_path(location: &ArchiveLocation, date: &str) -> Path {
    let owner = location.share.map_or_else(|| "single".to_owned(), |s| format!("process-{}", s.process));
    compactions_prefix(location).join(format!("date={date}")).join(format!("{owner}.json"))
}

fn staged_path(location: &ArchiveLocation, date: &str) -> Path {
    location.staging_root().join(format!("compact-{date}.parquet"))
}

async fn read_journal(location: &ArchiveLocation, date: &str) -> Result<Option<CompactionRecord>, ArchiveError> {
    match location.store.get(&journal_path(location, date)).await {
        Ok(r) => Ok(serde_json::from_slice(&r.bytes().await?).ok()),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn write_journal(location: &ArchiveLocation, record: &CompactionRecord) -> Result<(), ArchiveError> {
    let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    location.store.put(&journal_path(location, &record.date), PutPayload::from(bytes)).await?;
    Ok(())
}

/// Every process's compaction journals (for optimistic queries: they compare them before and after).
pub async fn compaction_records(location: &ArchiveLocation) -> Result<Vec<CompactionRecord>, ArchiveError> {
    use futures_util::TryStreamExt;
    let metas: Vec<_> = location.store.list(Some(&compactions_prefix(location))).try_collect().await?;
    compaction_records_listed(location, metas).await
}

/// Where the compaction journal lives.
pub fn compactions_prefix(location: &ArchiveLocation) -> object_store::path::Path {
    location.root.clone().join("compactions")
}

/// The compaction journal read from its listing `metas` (of [`compactions_prefix`]), in the order of its objects.
pub async fn compaction_records_listed(
    location: &ArchiveLocation,
    mut metas: Vec<object_store::ObjectMeta>,
) -> Result<Vec<CompactionRecord>, ArchiveError> {
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let mut out = Vec::new();
    for m in metas {
        match location.store.get(&m.location).await {
            Ok(r) => out.extend(serde_json::from_slice::<CompactionRecord>(&r.bytes().await?).ok()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Compacts what is due: for each day that may be compacted (see the module doc), while one tier holds
/// [`FANOUT`] committed parts of this process, merges the oldest of them into one part of the next tier.
/// `committed` is the archiver's checkpoint; `now_micros` and `grace_micros` are the seal's.
pub async fn compact_due_parts(
    location: &ArchiveLocation,
    progress: Option<&Arc<ArchiveProgress>>,
    committed: u64,
    now_micros: i64,
    grace_micros: i64,
) -> Result<Vec<CompactOutcome>, ArchiveError> {
    let mut parts: Vec<PartName> = location
        .list_parts()
        .await?
        .into_iter()
        .filter(|p| !p.sealed && location.is_own(p) && p.last <= committed)
        .collect();
    let mut dates: Vec<String> = parts.iter().map(|p| p.date.clone()).collect();
    dates.sort();
    dates.dedup();
    let mut done = Vec::new();
    for date in dates {
        let Ok(day) = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d") else { continue };
        let Some(start) = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros()) else { continue };
        let close_to_due = start.saturating_add(86_400_000_000).saturating_add(grace_micros / 2) <= now_micros;
        if close_to_due || crate::seal::is_sealed(location, &date).await? {
            continue;
        }
        for tier in 0..TOP_TIER {
            loop {
                let mut of_tier: Vec<PartName> =
                    parts.iter().filter(|p| p.date == date && p.tier == tier).cloned().collect();
                if of_tier.len() < FANOUT {
                    break;
                }
                of_tier.sort_by_key(|p| (p.first, p.last));
                of_tier.truncate(FANOUT);
                let outcome = compact(location, &date, &of_tier, progress, None).await?;
                parts.retain(|p| !of_tier.contains(p));
                parts.extend(PartName::parse(&outcome.part));
                done.push(outcome);
            }
        }
    }
    Ok(done)
}

/// Merges `parts` (this process's, of `date`, one tier, in log order) into one part of the next tier.
async fn compact(
    location: &ArchiveLocation,
    date: &str,
    parts: &[PartName],
    progress: Option<&Arc<ArchiveProgress>>,
    stop: Option<Stop>,
) -> Result<CompactOutcome, ArchiveError> {
    let injected = |at: Stop| ArchiveError::Url { url: location.url.to_string(), reason: format!("stopped {at:?}") };
    let tier = parts.iter().map(|p| p.tier).max().unwrap_or(0) + 1;
    let first = parts.iter().map(|p| p.first).min().unwrap_or(0);
    let last = parts.iter().map(|p| p.last).max().unwrap_or(0);
    let (day, _merging) = merge_parts(location, parts, |_| false, progress, Derived::None, Default::default()).await?;
    let target = location.tiered_part_path(date, first, last, tier);
    let staged = staged_path(location, date);
    location.store.put(&staged, PutPayload::from(day.parquet)).await?;
    if stop == Some(Stop::Staged) {
        return Err(injected(Stop::Staged));
    }
    let generation = read_journal(location, date).await?.map_or(0, |r| r.generation) + 1;
    let record = CompactionRecord {
        date: date.to_owned(),
        generation,
        part: target.to_string(),
        replacing: parts.iter().map(|p| p.path.to_string()).collect(),
    };
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
        if stop == Some(Stop::Journaled) {
            return Err(injected(Stop::Journaled));
        }
        location.store.rename(&staged, &target).await?;
        if stop == Some(Stop::Moved) {
            return Err(injected(Stop::Moved));
        }
        for (i, part) in parts.iter().enumerate() {
            location.store.delete(&part.path).await?;
            if i == 0 && stop == Some(Stop::FirstDeleted) {
                return Err(injected(Stop::FirstDeleted));
            }
        }
        write_journal(location, &CompactionRecord { replacing: Vec::new(), ..record }).await?;
    }
    Ok(CompactOutcome { date: date.to_owned(), tier, parts_merged: parts.len(), readings: day.readings, part: target })
}

/// Completes this process's compactions that a crash interrupted: moves the merged part into place if it is still
/// staged and every part it replaces is still there (a seal since may have merged them: then the staged part is
/// dropped), deletes what the journal says it replaces, and empties the journal's list. Runs at start, before the
/// archiver clears the staging area.
pub async fn finish_interrupted_compactions(location: &ArchiveLocation) -> Result<(), ArchiveError> {
    for record in compaction_records(location).await? {
        // Done, or another process's journal.
        if record.replacing.is_empty() || read_journal(location, &record.date).await?.as_ref() != Some(&record) {
            continue;
        }
        let parse = |p: &str| {
            Path::parse(p).map_err(|e| ArchiveError::Url {
                url: location.url.to_string(),
                reason: format!("the compaction journal of {} names {p:?}, not an object path ({e})", record.date),
            })
        };
        let (target, staged) = (parse(&record.part)?, staged_path(location, &record.date));
        let replacing: Vec<Path> = record.replacing.iter().map(|p| parse(p)).collect::<Result<_, _>>()?;
        if location.store.head(&staged).await.is_ok() {
            let mut all_there = true;
            for part in &replacing {
                all_there &= location.store.head(part).await.is_ok();
            }
            if !all_there {
                location.store.delete(&staged).await?;
                write_journal(location, &CompactionRecord { replacing: Vec::new(), ..record }).await?;
                continue;
            }
            location.store.rename(&staged, &target).await?;
        } else if location.store.head(&target).await.is_err() {
            write_journal(location, &CompactionRecord { replacing: Vec::new(), ..record }).await?;
            continue;
        }
        for part in &replacing {
            match location.store.delete(part).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        write_journal(location, &CompactionRecord { replacing: Vec::new(), ..record }).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
