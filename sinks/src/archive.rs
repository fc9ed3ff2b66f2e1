//! The archiver: tails the WAL and writes every first-written reading, exactly once, as Parquet parts on an
//! object store.
//!
//! Exactly once, whatever the crash point:
//! - Parts are named by the WAL position range they cover (`readings/date=D/part-<first>-<last>.parquet`), and the
//!   same records always give the same bytes, so writing a part again is harmless.
//! - A flush uploads its parts to `staging/`, then, under the visibility lock that queries hold, moves them into
//!   `readings/` and commits its last position atomically (temp file, fsync, rename, fsync of the directory). A
//!   query therefore sees each reading once: in a committed part or in the unflushed buffer, never both. On start,
//!   `staging/` is emptied and parts that begin after the committed position (moved but never committed) are
//!   deleted; the flush is done again from the log.
//! - The archiver does not deduplicate: the statistics' dedup operator decides, once, which readings are first
//!   writes, and the archiver reads a record only once the statistics have decided it ([`DedupVerdicts`]), leaving
//!   out the duplicates they dropped. Alone as in a cluster, one verdict: the archive and the live statistics
//!   cannot disagree about which write came first.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::watch;
use weir_operators::Admission;
use weir_pipeline::reading::ReadingBatch;
use weir_pipeline::stats::DedupVerdicts;
use weir_pipeline::wal::{LogRecord, WalReader};

use crate::part::{ArchivedReading, PartError};
use day_rows::DayRows;

/// Why archiving failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("writing the dump of {date}: {source}")]
    Dump { date: String, source: std::io::Error },
    #[error(transparent)]
    Part(#[from] PartError),
    #[error(
        "the part {path}: {source}. Weir did not write it so, or it was damaged: move it out of the archive (keep \
         it to recover its readings by hand), then seal the day again"
    )]
    BadPart { path: String, source: PartError },
    #[error("archive checkpoint {path}: {source}")]
    Checkpoint { path: PathBuf, source: std::io::Error },
    #[error(
        "archive checkpoint {path} is not a checkpoint Weir wrote ({reason}); restore it from a backup, or delete \
         the data directory's write-ahead log and archive together to start afresh"
    )]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error(
        "the seal journal of {date} (seals/{date}.json) {reason}; restore it from a backup or remove it, then seal \
         the day again (`weir dump --date {date}` for a single Weir)"
    )]
    BadJournal { date: String, reason: String },
    #[error(
        "another process seals this archive (it holds {path}: a running Weir, or `weir dump`). One sealer per \
         archive: a running Weir seals its days itself once they are over (--seal-grace) and writes their dumps to \
         dumps/YYYY-MM-DD.json.gz; stop it before sealing by hand, and give each Weir its own archive"
    )]
    SealerBusy { path: PathBuf },
    #[error("the sealer lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot start the archiver thread: {0}")]
    Thread(std::io::Error),
    #[error("the archiver thread panicked")]
    Panicked,
    #[error("write-ahead log: {0}")]
    Wal(#[from] weir_pipeline::wal::WalError),
    #[error("injected fault: {0:?}")]
    Injected(FaultPoint),
}

/// Environment variables handed to cloud object stores as configuration.
const CLOUD_ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

/// Where the archive lives.
#[derive(Clone, Debug)]
pub struct ArchiveLocation {
    pub store: Arc<dyn ObjectStore>,
    /// The archive's root inside the store.
    pub root: Path,
    /// The URL it was opened from (with a trailing `/`).
    pub url: url::Url,
    /// Set when the archive is shared by the processes of a cluster: whose parts these are.
    pub share: Option<ClusterShare>,
}

/// One process's share of an archive that every process of a cluster writes to.
///
/// Every process writes its own parts (`part-p<I>-<first>-<last>.parquet`: its own log positions, so names cannot
/// collide) and stages them under its own `staging/process-<I>/`; the sealed file of a day (`sealed.parquet`) is
/// written by the day's owner only ([`ClusterShare::owns_day`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterShare {
    pub process: u32,
    pub processes: u32,
}

impl ClusterShare {
    /// Whether this process seals `date` (`YYYY-MM-DD`): days go round the processes, by day number.
    pub fn owns_day(&self, date: &str) -> bool {
        day_owner(date, self.processes) == Some(self.process)
    }
}

/// The process of a `processes`-process cluster that seals `date`.
pub fn day_owner(date: &str, processes: u32) -> Option<u32> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let number = day.signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days();
    Some(number.rem_euclid(i64::from(processes.max(1))) as u32)
}

impl ArchiveLocation {
    /// Opens `url`: `file:///abs/dir`, `memory:///`, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    /// A plain path is taken as a local directory.
    pub fn open(url: &str) -> Result<Self, ArchiveError> {
        let err = |reason: String| ArchiveError::Url { url: url.to_owned(), reason };
        let mut parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(_) => {
                let path = normalized(std::path::Path::new(url)).map_err(|e| err(e.to_string()))?;
                url::Url::from_directory_path(&path).map_err(|_| err("not an absolute directory".into()))?
            }
        };
        if !parsed.path().ends_with('/') {
            parsed.set_path(&format!("{}/", parsed.path()));
        }
        if parsed.scheme() == "file" {
            let dir = parsed.to_file_path().map_err(|_| err("not a local path".into()))?;
            std::fs::create_dir_all(dir.join("readings"))
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Cloud stores take their credentials, region and endpoint from the usual environment variables
        // (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).
        let from_env = std::env::vars().filter(|(k, _)| CLOUD_ENV_PREFIXES.iter().any(|p| k.starts_with(p)));
        let (store, root) = object_store::parse_url_opts(&parsed, from_env).map_err(|e| err(e.to_string()))?;
        Ok(ArchiveLocation { store: Arc::from(store), root, url: parsed, share: None })
    }

    /// This location as process `share.process` of a cluster sharing it.
    pub fn shared_by(mut self, share: ClusterShare) -> Self {
        self.share = Some(share);
        self
    }

    fn part_file(&self, first: u64, last: u64, tier: u8) -> String {
        let tier = if tier == 0 { String::new() } else { format!("-t{tier}") };
        match self.share {
            None => format!("part-{first:020}-{last:020}{tier}.parquet"),
            Some(share) => format!("part-p{}-{first:020}-{last:020}{tier}.parquet", share.process),
        }
    }

    /// The object path of a part (a flush's: tier 0).
    pub fn part_path(&self, date: &str, first: u64, last: u64) -> Path {
        self.tiered_part_path(date, first, last, 0)
    }

    /// The object path of a part of `tier`: 0 for a flush's, `t` for one compacted from parts of tier `t - 1`
    /// (see [`crate::compact`]).
    pub fn tiered_part_path(&self, date: &str, first: u64, last: u64, tier: u8) -> Path {
        self.root.clone().join("readings").join(format!("date={date}")).join(self.part_file(first, last, tier))
    }

    /// Where a day's sealed file lives: alone, a part named by the positions it covers; in a cluster,
    /// `sealed.parquet` (it covers several processes' logs).
    pub fn sealed_path(&self, date: &str, first: u64, last: u64) -> Path {
        match self.share {
            None => self.part_path(date, first, last),
            Some(_) => self.root.clone().join("readings").join(format!("date={date}")).join("sealed.parquet"),
        }
    }

    /// This process's staging area (outside `readings/`, so no query sees it; in a cluster, one per process).
    pub fn staging_root(&self) -> Path {
        match self.share {
            None => self.root.clone().join("staging"),
            Some(share) => self.root.clone().join("staging").join(format!("process-{}", share.process)),
        }
    }

    /// Where a part waits between upload and commit.
    pub fn staging_path(&self, date: &str, first: u64, last: u64) -> Path {
        self.staging_root().join(format!("date={date}")).join(self.part_file(first, last, 0))
    }

    /// Where a flush's readings judged `kind` (see [`VerdictKind`]) of `date` live: `verdicts/kind=K/date=D/`, named
    /// like the flush's parts.
    pub fn verdict_path(&self, kind: VerdictKind, date: &str, first: u64, last: u64) -> Path {
        self.root
            .clone()
            .join("verdicts")
            .join(format!("kind={}", kind.name()))
            .join(format!("date={date}"))
            .join(self.part_file(first, last, 0))
    }

    /// Where a verdict file waits between upload and commit.
    pub fn verdict_staging_path(&self, kind: VerdictKind, date: &str, first: u64, last: u64) -> Path {
        self.staging_root()
            .join(format!("verdicts-{}", kind.name()))
            .join(format!("date={date}"))
            .join(self.part_file(first, last, 0))
    }

    /// Every file of the record of verdicts, with its kind and the position range its name gives.
    pub async fn list_verdict_files(&self) -> Result<Vec<(VerdictKind, PartName)>, ArchiveError> {
        use futures_util::TryStreamExt;
        let prefix = self.root.clone().join("verdicts");
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let kind =
                    m.location.parts().find_map(|p| p.as_ref().strip_prefix("kind=").and_then(VerdictKind::parse))?;
                Some((kind, PartName::parse(&m.location)?))
            })
            .collect())
    }

    /// Whether `part` is one of this process's own flushes (alone: every part).
    pub fn is_own(&self, part: &PartName) -> bool {
        match self.share {
            None => true,
            Some(share) => part.process == Some(share.process),
        }
    }

    /// Every part under `readings/`, with the position range its name gives.
    pub async fn list_parts(&self) -> Result<Vec<PartName>, ArchiveError> {
        use futures_util::TryStreamExt;
        let prefix = self.root.clone().join("readings");
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(metas.into_iter().filter_map(|m| PartName::parse(&m.location)).collect())
    }
}

/// What the statistics made of a reading kept in the record of verdicts (`verdicts/kind=…/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VerdictKind {
    /// Admitted although its series already had a newer reading (it is in `readings/` too).
    Late,
    /// Dropped: its (device, sensor, timestamp) was already written (only here).
    Duplicate,
}

impl VerdictKind {
    pub const ALL: [VerdictKind; 2] = [VerdictKind::Late, VerdictKind::Duplicate];

    /// The name in paths and in SQL's `verdicts.kind`.
    pub const fn name(self) -> &'static str {
        match self {
            VerdictKind::Late => "late",
            VerdictKind::Duplicate => "duplicate",
        }
    }

    pub fn parse(name: &str) -> Option<VerdictKind> {
        VerdictKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The statistics' verdict of this kind.
    pub const fn admission(self) -> Admission {
        match self {
            VerdictKind::Late => Admission::Late,
            VerdictKind::Duplicate => Admission::Duplicate,
        }
    }

    /// The kind of a statistics' verdict; none for a reading admitted in order.
    pub const fn of(admission: Admission) -> Option<VerdictKind> {
        match admission {
            Admission::InOrder => None,
            Admission::Late => Some(VerdictKind::Late),
            Admission::Duplicate => Some(VerdictKind::Duplicate),
        }
    }
}

/// Bytes counted in [`ArchiveProgress::merging`] while a merge holds them.
pub struct MergingGuard {
    progress: Option<Arc<ArchiveProgress>>,
    bytes: u64,
}

impl Drop for MergingGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.progress {
            p.merging.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// A part's location and the WAL positions it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartName {
    pub path: Path,
    pub date: String,
    /// The process whose log it covers, in a cluster's archive (`part-p<I>-…`); `None` alone.
    pub process: Option<u32>,
    /// A cluster's sealed file of the day (`sealed.parquet`: several logs, no position range).
    pub sealed: bool,
    pub first: u64,
    pub last: u64,
    /// How many compactions its readings went through (`-t<N>` in the name; 0: a flush's part, or a sealed file).
    pub tier: u8,
}

impl PartName {
    pub fn parse(path: &Path) -> Option<PartName> {
        let mut parts: Vec<String> = path.parts().map(|p| p.as_ref().to_owned()).collect();
        let file = parts.pop()?;
        let date = parts.pop()?.strip_prefix("date=")?.to_owned();
        if file == "sealed.parquet" {
            return Some(PartName {
                path: path.clone(),
                date,
                process: None,
                sealed: true,
                first: 0,
                last: 0,
                tier: 0,
            });
        }
        let range = file.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let (range, tier) = match range.rsplit_once("-t") {
            Some((range, tier)) => (range, tier.parse().ok()?),
            None => (range, 0),
        };
        let (process, range) = match range.strip_prefix('p') {
            Some(rest) => {
                let (process, range) = rest.split_once('-')?;
                (Some(process.parse().ok()?), range)
            }
            None => (None, range),
        };
        let (first, last) = range.split_once('-')?;
        Some(PartName {
            path: path.clone(),
            date,
            process,
            sealed: false,
            first: first.parse().ok()?,
            last: last.parse().ok()?,
            tier,
        })
    }
}

/// A point where tests make the archiver fail, as a crash there would (only test builds can inject one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// After reading a flush's records, before uploading anything.
    BeforeUpload,
    /// After uploading the first part of a flush.
    MidUpload,
    /// After uploading every part, before committing progress.
    BeforeCommit,
    /// After moving the parts into `readings/`, before writing the checkpoint.
    AfterMove,
}

/// How the archiver runs.
#[derive(Debug, Clone)]
pub struct ArchiverOptions {
    /// Flush once this many readings are buffered.
    pub flush_rows: usize,
    /// Flush readings that have waited this long.
    pub flush_age: Duration,
    /// How long to sleep when the log has nothing new.
    pub idle: Duration,
    /// How much lower the archiver thread's CPU priority is than ingest's and the statistics' (a nice increment;
    /// 0: the same). Its work is behind the acknowledgement and bounded by `flush_rows`; where cores are short it
    /// takes what the rest leaves and catches up from the log.
    pub nice: u8,
    /// Test hook: fail at this point of the first flush.
    #[cfg(test)]
    pub fault: Option<FaultPoint>,
}

impl Default for ArchiverOptions {
    fn default() -> Self {
        ArchiverOptions {
            flush_rows: 100_000,
            flush_age: Duration::from_secs(10),
            idle: Duration::from_millis(5),
            nice: 0,
            #[cfg(test)]
            fault: None,
        }
    }
}

/// What the archiver shares with queries: how far it has read and committed, and what it holds unflushed.
#[derive(Debug, Default)]
pub struct ArchiveProgress {
    /// Last WAL position whose readings are in Parquet.
    pub committed: AtomicU64,
    /// Last WAL position read (committed, or buffered below).
    pub read_through: AtomicU64,
    /// First-written readings read but not yet flushed, one compact batch (24 bytes a reading) per record.
    pub unflushed: Mutex<Vec<Arc<LogRecord>>>,
    /// Why the last flush failed, while flushes fail (they are retried with backoff).
    pub failing: Mutex<Option<String>>,
    /// Held (shared) by queries while they plan (their snapshot of `unflushed` and their listing of the parts: a
    /// flush only adds parts, so what a planned query reads cannot change after that); held (exclusive) by a flush
    /// while it makes parts visible and drops their readings from `unflushed`, and by seals and compactions.
    pub visibility: tokio::sync::RwLock<()>,
    /// Held (shared) by queries from their planning to their end; held (exclusive) by a seal or compaction while it
    /// swaps parts (deletes the ones a running query may still read), taken before `visibility`. A query whose
    /// reader is slow (a PostgreSQL or Flight SQL client streaming a long result) thus holds back seals and
    /// compactions, at most until its `--sql-timeout`, but never a flush nor the queries behind one.
    pub replacing: tokio::sync::RwLock<()>,
    /// A flush of everything read is wanted as soon as the log has been read through this position (SQL in a
    /// cluster asks for it, so that a query sees every process's readings acknowledged before it).
    pub flush_requested: AtomicU64,
    /// Bytes a seal or compaction is estimated to hold while it merges a day (0 when none runs): for the memory
    /// budget.
    pub merging: AtomicU64,
    /// Set once the archiver has cleaned up after an interrupted flush and reads the log; until then nothing may
    /// replace the parts it works on (the sealer waits for this).
    pub started: AtomicBool,
}

impl ArchiveProgress {
    /// Counts `bytes` as held by a merge until the returned guard is dropped.
    pub fn merging(progress: Option<&Arc<ArchiveProgress>>, bytes: u64) -> MergingGuard {
        let progress = progress.cloned();
        if let Some(p) = &progress {
            p.merging.fetch_add(bytes, Ordering::AcqRel);
        }
        MergingGuard { progress, bytes }
    }

    /// Records that flushes fail (`Some(reason)`) or work again (`None`); returns whether that changed.
    pub fn set_failing(&self, reason: Option<String>) -> bool {
        let Ok(mut failing) = self.failing.lock() else { return false };
        let changed = failing.is_some() != reason.is_some();
        metrics::gauge!("weir_archive_failing").set(if reason.is_some() { 1.0 } else { 0.0 });
        *failing = reason;
        changed
    }

    /// Why the last flush failed, while flushes fail.
    pub fn failing(&self) -> Option<String> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }

    /// The unflushed readings, as of now.
    pub fn unflushed_snapshot(&self) -> Vec<Arc<LogRecord>> {
        self.unflushed.lock().map(|u| u.clone()).unwrap_or_default()
    }
}

impl weir_pipeline::stats::ArchiveControl for ArchiveProgress {
    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    fn request_flush(&self, through: u64) {
        self.flush_requested.fetch_max(through, Ordering::AcqRel);
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// The checkpoint file's contents: `{"archived_through": N}`. Every field is required and no other is allowed: a
/// file that does not say exactly this is an error naming it, never read as position 0 (which would archive the
/// whole log again, or worse, let the log before the real position be taken as missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    /// The last WAL position whose readings are in committed parts.
    archived_through: u64,
}

/// The committed position, stored next to the WAL.
struct Checkpoint {
    path: PathBuf,
}

impl Checkpoint {
    /// The committed position; 0 when no checkpoint was ever written.
    fn read(&self) -> Result<u64, ArchiveError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str::<CheckpointFile>(&text)
                .map(|c| c.archived_through)
                .map_err(|e| ArchiveError::BadCheckpoint { path: self.path.clone(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(ArchiveError::Checkpoint { path: self.path.clone(), source }),
        }
    }

    /// Replaces the checkpoint atomically: a crash leaves the old or the new one, never a mix.
    fn write(&self, position: u64) -> Result<(), ArchiveError> {
        let mut text = serde_json::to_vec(&CheckpointFile { archived_through: position })
            .map_err(|e| ArchiveError::BadCheckpoint { path: self.path.clone(), reason: e.to_string() })?;
        text.push(b'\n');
        weir_pipeline::data_dir::write_atomically(&self.path, &text)
            .map_err(|source| ArchiveError::Checkpoint { path: self.path.clone(), source })
    }
}

/// The running archiver thread.
pub struct Archiver {
    pub progress: Arc<ArchiveProgress>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), ArchiveError>>>,
}

impl Archiver {
    /// Starts archiving the WAL in `wal_dir` (never past `durable`, nor past what `verdicts` has decided) to
    /// `location`, leaving out the duplicates `verdicts` names; progress is kept in `checkpoint_path`. Store calls
    /// run on `runtime`.
    pub fn start(
        wal_dir: PathBuf,
        durable: watch::Receiver<u64>,
        verdicts: Arc<dyn DedupVerdicts>,
        location: ArchiveLocation,
        checkpoint_path: PathBuf,
        options: ArchiverOptions,
        runtime: tokio::runtime::Handle,
    ) -> Result<Archiver, ArchiveError> {
        let progress = Arc::new(ArchiveProgress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = ArchiverLoop {
            wal_dir,
            durable,
            location,
            checkpoint: Checkpoint { path: checkpoint_path },
            options,
            runtime,
            progress: progress.clone(),
            stop: stop.clone(),
            verdicts,
            judged: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("weir-archiver".into())
            .spawn(move || {
                crate::priority::lower_priority(worker.options.nice, "the archiver");
                let result = worker.run();
                if let Err(e) = &result {
                    tracing::error!(error = %e, "the archiver stopped");
                }
                result
            })
            .map_err(ArchiveError::Thread)?;
        Ok(Archiver { progress, stop, thread: Some(thread) })
    }

    /// Flushes what is buffered, commits and stops; returns the archiver's result.
    pub fn stop(mut self) -> Result<(), ArchiveError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ArchiveError::Panicked),
            None => Ok(()),
        }
    }

    /// Whether the thread has ended (after an error or an injected fault).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

struct ArchiverLoop {
    wal_dir: PathBuf,
    durable: watch::Receiver<u64>,
    location: ArchiveLocation,
    checkpoint: Checkpoint,
    options: ArchiverOptions,
    runtime: tokio::runtime::Handle,
    progress: Arc<ArchiveProgress>,
    stop: Arc<AtomicBool>,
    verdicts: Arc<dyn DedupVerdicts>,
    /// The readings of the buffered records that were judged late or duplicate (with their record's write time),
    /// for the record of verdicts; written with the next flush.
    judged: Vec<(VerdictKind, ReadingBatch, u64)>,
}

impl ArchiverLoop {
    fn run(&mut self) -> Result<(), ArchiveError> {
        let committed = self.checkpoint.read()?;
        self.remove_uncommitted_parts(committed)?;
        self.progress.started.store(true, Ordering::Release);
        let mut reader = WalReader::new(&self.wal_dir, committed + 1);
        self.progress.committed.store(committed, Ordering::Release);
        self.progress.read_through.store(committed, Ordering::Release);

        let mut first = committed + 1;
        let mut last = committed;
        let mut rows = 0usize;
        let mut oldest: Option<Instant> = None;
        let mut backoff = Duration::ZERO;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let durable = *self.durable.borrow();
            // Only what the statistics have decided (stopped statistics decide nothing more: what is left is
            // archived after the next start).
            let readable = durable.min(self.verdicts.decided_through());
            let mut read_any = false;
            while rows < self.options.flush_rows {
                let Some(record) = reader.next_batch_through(readable)? else { break };
                let position = record.position;
                let admitted = self.first_writes(record);
                rows += admitted.batch.len();
                last = position;
                read_any = true;
                oldest.get_or_insert_with(Instant::now);
                if let Ok(mut u) = self.progress.unflushed.lock() {
                    u.push(Arc::new(admitted));
                }
                self.progress.read_through.store(position, Ordering::Release);
            }
            let due = rows >= self.options.flush_rows
                || oldest.is_some_and(|t| t.elapsed() >= self.options.flush_age)
                || self.progress.flush_requested.load(Ordering::Acquire) >= first
                || (stopping && last >= first);
            if due && last >= first {
                match self.flush(first, last) {
                    Ok(()) => {
                        if self.progress.set_failing(None) {
                            tracing::info!(first, last, "the archiver flushes again");
                        }
                        backoff = Duration::ZERO;
                    }
                    Err(e @ ArchiveError::Injected(_)) => return Err(e),
                    Err(e) => {
                        // A full disk, an unreachable store: the readings stay buffered (and in the log); try again,
                        // less and less often. Readiness says so meanwhile.
                        backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_FLUSH_BACKOFF);
                        tracing::error!(error = %e, retry_in = ?backoff, "an archive flush failed; retrying");
                        metrics::counter!("weir_archive_flush_failures_total").increment(1);
                        self.progress.set_failing(Some(e.to_string()));
                        std::thread::sleep(backoff);
                        if stopping {
                            return Err(e);
                        }
                        continue;
                    }
                }
                first = last + 1;
                rows = 0;
                oldest = None;
            }
            // Stopping: go on until the whole durable log is read and flushed.
            if stopping && !read_any {
                return Ok(());
            }
            if !read_any {
                std::thread::sleep(self.options.idle);
            }
        }
    }

    /// The readings of one record that are the first writes of their key (the statistics' verdict), in archive
    /// form.
    /// The late and duplicate readings go to the record of verdicts.
    fn first_writes(&mut self, mut record: LogRecord) -> LogRecord {
        let verdicts = self.verdicts.take_verdicts(record.position);
        if verdicts.is_empty() {
            return record;
        }
        let kind_of = |index: usize| {
            let at = verdicts.binary_search_by_key(&(index as u32), |(i, _)| *i).ok()?;
            VerdictKind::of(verdicts[at].1)
        };
        for kind in VerdictKind::ALL {
            let rows = record.batch.rows.iter().enumerate().filter(|(i, _)| kind_of(*i) == Some(kind));
            let judged = ReadingBatch {
                sensors: record.batch.sensors.clone(),
                devices: record.batch.devices.clone(),
                rows: rows.map(|(_, r)| *r).collect(),
            };
            if !judged.rows.is_empty() {
                self.judged.push((kind, judged, record.written));
            }
        }
        let mut index = 0usize;
        record.batch.rows.retain(|_| {
            index += 1;
            kind_of(index - 1) != Some(VerdictKind::Duplicate)
        });
        record
    }

    /// Writes the buffered readings of records `first..=last` as one part per UTC date, then commits `last`.
    fn flush(&mut self, first: u64, last: u64) -> Result<(), ArchiveError> {
        let buffered: Vec<Arc<LogRecord>> = self.progress.unflushed_snapshot();
        let mut rows = DayRows::default();
        for record in &buffered {
            rows.add(&record.batch, record.written);
        }
        #[cfg(test)]
        let fault = self.options.fault.take();
        #[cfg(not(test))]
        let fault: Option<FaultPoint> = None;
        if fault == Some(FaultPoint::BeforeUpload) {
            return Err(ArchiveError::Injected(FaultPoint::BeforeUpload));
        }
        let mut staged = Vec::new();
        let (mut part_bytes, mut part_readings) = (0u64, 0u64);
        rows.encode_each(|i, day, bytes, readings| {
            // The date text made once per day (formatting it per reading showed in profiles).
            let date = utc_date(day * DAY_MICROS);
            part_bytes += bytes.len() as u64;
            part_readings += readings;
            let staging = self.location.staging_path(&date, first, last);
            self.runtime.block_on(self.location.store.put(&staging, PutPayload::from(bytes)))?;
            staged.push((staging, self.location.part_path(&date, first, last)));
            if i == 0 && fault == Some(FaultPoint::MidUpload) {
                return Err(ArchiveError::Injected(FaultPoint::MidUpload));
            }
            Ok(())
        })?;
        for kind in VerdictKind::ALL {
            let mut judged = DayRows::default();
            for (_, batch, written) in self.judged.iter().filter(|(k, _, _)| *k == kind) {
                judged.add(batch, *written);
            }
            judged.encode_each(|_, day, bytes, _| {
                let date = utc_date(day * DAY_MICROS);
                let staging = self.location.verdict_staging_path(kind, &date, first, last);
                self.runtime.block_on(self.location.store.put(&staging, PutPayload::from(bytes)))?;
                staged.push((staging, self.location.verdict_path(kind, &date, first, last)));
                Ok::<(), ArchiveError>(())
            })?;
        }
        if fault == Some(FaultPoint::BeforeCommit) {
            return Err(ArchiveError::Injected(FaultPoint::BeforeCommit));
        }
        // Make the parts visible and drop their readings from the buffer as one step for queries.
        let _visible = self.progress.visibility.blocking_write();
        for (staging, part) in &staged {
            self.runtime.block_on(self.location.store.rename(staging, part))?;
        }
        if fault == Some(FaultPoint::AfterMove) {
            return Err(ArchiveError::Injected(FaultPoint::AfterMove));
        }
        self.checkpoint.write(last)?;
        self.progress.committed.store(last, Ordering::Release);
        metrics::counter!("weir_archive_parts_total").increment(staged.len() as u64);
        metrics::counter!("weir_archive_bytes_total").increment(part_bytes);
        metrics::counter!("weir_archive_readings_total").increment(part_readings);
        metrics::gauge!("weir_archive_committed_position").set(last as f64);
        if let Ok(mut u) = self.progress.unflushed.lock() {
            u.drain(..buffered.len());
        }
        self.judged.clear();
        tracing::debug!(first, last, "archived");
        Ok(())
    }

    /// Deletes what flushes left behind without committing: everything in `staging/`, and parts that start after
    /// the committed position.
    fn remove_uncommitted_parts(&self, committed: u64) -> Result<(), ArchiveError> {
        use futures_util::TryStreamExt;
        let staging = self.location.staging_root();
        let staged: Vec<_> = self.runtime.block_on(self.location.store.list(Some(&staging)).try_collect::<Vec<_>>())?;
        for meta in staged {
            self.runtime.block_on(self.location.store.delete(&meta.location))?;
        }
        let parts = self.runtime.block_on(self.location.list_parts())?;
        let verdict_files = self.runtime.block_on(self.location.list_verdict_files())?;
        let files = parts.into_iter().chain(verdict_files.into_iter().map(|(_, p)| p));
        for part in files.filter(|p| !p.sealed && self.location.is_own(p) && p.first > committed) {
            tracing::info!(part = %part.path, "removing a part of a flush that never committed");
            self.runtime.block_on(self.location.store.delete(&part.path))?;
        }
        Ok(())
    }
}

/// `path` made absolute with its `.` and `..` resolved by their names alone (the object store refuses `..` in a
/// path, and `./a/../b` is `b`), without touching the file system.
pub fn normalized(path: &std::path::Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in std::path::absolute(path)?.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The readings of a batch written at `written` with their names resolved.
pub fn archived_readings(batch: &ReadingBatch, written: u64) -> impl Iterator<Item = ArchivedReading> + '_ {
    batch.rows.iter().map(move |row| ArchivedReading {
        device: batch.devices[row.device as usize].to_string(),
        sensor: batch.sensors[row.sensor as usize].to_string(),
        value: row.value,
        micros: row.micros,
        written,
    })
}

/// The longest wait between two attempts of a failing flush.
const MAX_FLUSH_BACKOFF: Duration = Duration::from_secs(30);

/// Microseconds in a UTC day.
const DAY_MICROS: i64 = 86_400_000_000;

/// `YYYY-MM-DD` of the UTC day holding `micros`.
pub fn utc_date(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.date_naive().format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "out-of-range".into())
}

/// The last WAL position the archive holds, as its checkpoint at `path` records it (0 when there is none yet).
pub fn read_checkpoint(path: &FsPath) -> Result<u64, ArchiveError> {
    Checkpoint { path: path.to_path_buf() }.read()
}

/// The checkpoint file's conventional place in a data directory.
pub fn checkpoint_path(data_dir: &FsPath) -> PathBuf {
    data_dir.join("archive-checkpoint.json")
}

mod day_rows;
#[cfg(test)]
mod tests;
