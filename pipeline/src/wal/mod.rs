//! The write-ahead log: every accepted reading is here, fsynced, before Weir acknowledges it.
//!
//! The log is a directory of segment files ([`segment`]). Each record holds one [`ReadingBatch`] and gets the next
//! *position* (1, 2, 3, ...), which is what Weir hands back to clients and what later stages use to say how far they
//! have read. The log takes batches ([`WalAppender::append`]) and yields batches ([`WalReader::next_batch`]); how a
//! batch is laid out in a record is private to this module (`record`).
//!
//! A record whose checksum holds but whose payload is not a batch (a bug, or a record written by a later version)
//! is decided here, once, for every reader: it is read as an empty batch at its position, logged with the position
//! and the reason, and counted in `weir_wal_unreadable_records_total`. Every consumer (statistics, archive, `weir
//! wal dump`) therefore skips the same readings and keeps its positions contiguous; none waits on the record. One writer thread owns the open segment ([`writer`]); request
//! handlers queue batches to it and wait; it writes whatever has queued up and covers it all with one fsync
//! (group commit), so concurrent requests share fsyncs.
//!
//! On open, the segments are checked in order. A torn tail of the last segment (a crash mid-write) is cut off and
//! logged; damage anywhere else is reported as an error rather than silently skipped.

mod doorbell;
pub(crate) mod record;
pub use record::{BatchView, KeyView};
pub mod segment;
mod writer;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub use doorbell::{Doorbell, Listening};
pub use writer::{AppendError, PendingAppend, Wal, WalAppender};

use crate::clock::{Time, WriteClock};
use crate::reading::ReadingBatch;

use segment::{ScanEnd, SegmentFile, SegmentOpenError, SegmentReader};

/// The future [`ReadingLog::append`] returns.
pub type AppendFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<PendingAppend, AppendError>> + Send + 'a>>;

/// Where ingest puts readings: the WAL in production ([`WalAppender`]), a double in tests of the layers above.
pub trait ReadingLog: Send + Sync + 'static {
    /// Queues `batch` as one record, waiting at most `wait` for room; the result resolves once it is durable.
    fn append(&self, batch: &ReadingBatch, wait: std::time::Duration) -> AppendFuture<'_>;
    /// The same, as one record written under an idempotency key: the key and the readings are durable together.
    fn append_keyed(&self, batch: &ReadingBatch, key: &KeyView<'_>, wait: std::time::Duration) -> AppendFuture<'_>;
    /// Position of the last durable record.
    fn durable_position(&self) -> u64;
    /// Why the log accepts no more writes, once it has failed for good (`None` while it works).
    fn failure(&self) -> Option<AppendError> {
        None
    }
}

/// How long a group commit waits for company by default ([`WalOptions::commit_delay`]): at 1 000 appends a
/// second from 8 writers it made groups of ~2.5 appends instead of 1 and saved ~10 % of the server's CPU
/// (`benches/RESULTS.md`, "Issue 19, 1"), for 2.5 ms more on each acknowledgement while writers are concurrent.
pub const DEFAULT_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(2_500);

/// Tuning of the log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it is at least this large.
    pub segment_bytes: u64,
    /// How many appends may wait for the writer before appenders are made to wait (backpressure).
    pub queue_depth: usize,
    /// The most bytes one group commit writes before it fsyncs.
    pub max_group_bytes: usize,
    /// How long a group waits for more appends before it is written, while waiting brings company (several
    /// writers at once; see the writer's module); a lone writer's appends never wait. Zero: never wait.
    pub commit_delay: std::time::Duration,
    /// Gives each group commit its write time; the statistics that follow this log share it ([`LogTail`]).
    pub clock: WriteClock,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            queue_depth: 64,
            max_group_bytes: 16 << 20,
            commit_delay: DEFAULT_COMMIT_DELAY,
            clock: WriteClock::default(),
        }
    }
}

/// What the statistics need to follow a log: where it is, how far it is durable, the clock its writer stamps
/// records with (so that they know when no earlier record can come any more), and the doorbell its writer rings
/// once more is durable (so that they sleep until then).
#[derive(Clone, Debug)]
pub struct LogTail {
    pub dir: PathBuf,
    pub durable: tokio::sync::watch::Receiver<u64>,
    pub clock: WriteClock,
    /// Rung by whoever moves `durable` on.
    pub doorbell: Doorbell,
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// Position of the last intact record, 0 for an empty log.
    pub last_position: u64,
    /// A torn tail that was cut off: file, offset, bytes removed, reason.
    pub truncated: Option<TruncatedTail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes_removed: u64,
    pub reason: String,
}

/// A failure of the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "WAL segment {path} is damaged at byte {offset} ({reason}) and it is not the last segment, so this is not a \
         torn write from a crash; move the data directory aside and restore it from a backup, or remove this and \
         later segments to keep the readings before it"
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("WAL segment {path}: {source}")]
    Segment { path: PathBuf, source: SegmentOpenError },
    #[error("WAL segments are not contiguous: {path} starts at position {found}, expected {expected}")]
    Gap { path: PathBuf, found: u64, expected: u64 },
    #[error(
        "the WAL no longer holds position {wanted}: it starts at {first} (earlier segments were deleted once \
         archived); the archive checkpoint in the data directory says how far the archive goes"
    )]
    Trimmed { wanted: u64, first: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Checks every segment in `dir` (creating `dir` if needed), truncates a torn tail of the last one, and returns
/// the segments with what was found.
fn recover(dir: &Path) -> Result<(Vec<SegmentFile>, Recovery), WalError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    scan_log(dir, true)
}

/// Checks the log in `dir` without changing anything (for `weir wal dump` beside a running server): the damage that
/// `Wal::open` refuses is an error naming where it is; a torn tail of the last segment (a crash mid-write, which
/// `Wal::open` cuts off) is reported in the result.
pub fn check(dir: &Path) -> Result<Recovery, WalError> {
    scan_log(dir, false).map(|(_, recovery)| recovery)
}

/// Walks every segment in order; with `repair`, cuts a torn tail off the last segment (and rewrites a header that
/// never made it to disk), otherwise only reports it.
fn scan_log(dir: &Path, repair: bool) -> Result<(Vec<SegmentFile>, Recovery), WalError> {
    let segments = segment::list_segments(dir).map_err(io_err(dir))?;
    let mut last_position = 0;
    let mut truncated = None;
    let count = segments.len();
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == count;
        if seg.first_position != last_position + 1 && !(i == 0 && last_position == 0) {
            return Err(WalError::Gap {
                path: seg.path.clone(),
                found: seg.first_position,
                expected: last_position + 1,
            });
        }
        let reader = match SegmentReader::open(seg) {
            Ok(r) => r,
            Err(SegmentOpenError::ShortHeader(len)) if is_last => {
                // Created but its header never made it to disk: rewrite the header.
                if repair {
                    std::fs::write(&seg.path, segment::header()).map_err(io_err(&seg.path))?;
                    sync_file(&seg.path)?;
                }
                truncated = Some(TruncatedTail {
                    file: seg.path.clone(),
                    offset: 0,
                    bytes_removed: len,
                    reason: "segment header incomplete".into(),
                });
                last_position = seg.first_position - 1;
                continue;
            }
            Err(source) => return Err(WalError::Segment { path: seg.path.clone(), source }),
        };
        let scan = reader.scan();
        last_position = scan.last_position.unwrap_or(seg.first_position - 1);
        if let ScanEnd::Torn { offset, reason } = scan.end {
            if !is_last {
                return Err(WalError::Corrupt { path: seg.path.clone(), offset, reason });
            }
            let len = std::fs::metadata(&seg.path).map_err(io_err(&seg.path))?.len();
            if repair {
                let file = OpenOptions::new().write(true).open(&seg.path).map_err(io_err(&seg.path))?;
                file.set_len(offset).map_err(io_err(&seg.path))?;
                file.sync_all().map_err(io_err(&seg.path))?;
            }
            truncated = Some(TruncatedTail { file: seg.path.clone(), offset, bytes_removed: len - offset, reason });
        }
    }
    let recovery = Recovery { segments: segments.len(), last_position, truncated };
    Ok((segments, recovery))
}

fn sync_file(path: &Path) -> Result<(), WalError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

/// The first position the log in `dir` still holds (1 for a log that was never trimmed or is empty).
pub fn first_position(dir: &Path) -> Result<u64, WalError> {
    let segments = segment::list_segments(dir).map_err(io_err(dir))?;
    Ok(segments.first().map_or(1, |s| s.first_position))
}

/// The last position [`trim_through`]`(dir, position)` would delete (`None`: it would delete nothing) — what
/// must be kept elsewhere before, as the idempotency keys are (`crate::idempotency`).
pub fn trimmable_through(dir: &Path, position: u64) -> Result<Option<u64>, WalError> {
    let segments = segment::list_segments(dir).map_err(io_err(dir))?;
    Ok(segments
        .windows(2)
        .take_while(|pair| pair[1].first_position <= position.saturating_add(1))
        .last()
        .map(|pair| pair[1].first_position - 1))
}

/// Deletes the segments whose records all have positions ≤ `position` (archived, and processed by the
/// statistics), never the last segment, which the writer may be appending to. Returns the deleted files.
pub fn trim_through(dir: &Path, position: u64) -> Result<Vec<PathBuf>, WalError> {
    let segments = segment::list_segments(dir).map_err(io_err(dir))?;
    let mut deleted = Vec::new();
    for pair in segments.windows(2) {
        // A segment ends just before the next one starts.
        if pair[1].first_position > position.saturating_add(1) {
            break;
        }
        std::fs::remove_file(&pair[0].path).map_err(io_err(&pair[0].path))?;
        deleted.push(pair[0].path.clone());
    }
    if !deleted.is_empty() {
        sync_dir(dir)?;
    }
    Ok(deleted)
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Its position in the log.
    pub position: u64,
    /// Its write time ([`crate::clock`]); 0 for a record written before write times existed.
    pub written: Time,
    /// Its readings.
    pub batch: ReadingBatch,
}

/// Reads records in position order, from a given position on, without modifying anything. It stops at the end of
/// what is intact, so it can read a log another process is writing.
pub struct WalReader {
    /// Shared, so that naming it in an error costs no copy of the path per record.
    dir: std::sync::Arc<Path>,
    next_position: u64,
    current: Option<SegmentReader>,
    /// First position of the segment `current` reads.
    current_first: u64,
    payload: Vec<u8>,
}

impl WalReader {
    /// A reader that returns records with position ≥ `from` (1 = everything).
    pub fn new(dir: impl Into<PathBuf>, from: u64) -> Self {
        WalReader {
            dir: dir.into().into(),
            next_position: from.max(1),
            current: None,
            current_first: 0,
            payload: Vec::new(),
        }
    }

    /// The next record, `Ok(None)` when no further intact record exists yet.
    pub fn next_batch(&mut self) -> Result<Option<LogRecord>, WalError> {
        self.next_batch_through(u64::MAX)
    }

    /// The next record if its position is at most `limit` (e.g. the durable position), else `Ok(None)`. A record
    /// that is not a batch is read as an empty one (see the module documentation).
    pub fn next_batch_through(&mut self, limit: u64) -> Result<Option<LogRecord>, WalError> {
        let Some((position, view)) = self.next_view_through(limit)? else { return Ok(None) };
        Ok(Some(LogRecord { position, written: view.written, batch: view.to_batch() }))
    }

    /// The same, the record read in place ([`record::BatchView`]: valid until the next read).
    pub fn next_view_through(&mut self, limit: u64) -> Result<Option<(u64, record::BatchView<'_>)>, WalError> {
        let dir = self.dir.clone();
        let Some((position, payload)) = self.next_record_through(limit)? else { return Ok(None) };
        let view = record::decode_view(payload).unwrap_or_else(|e| {
            metrics::counter!("weir_wal_unreadable_records_total").increment(1);
            tracing::error!(
                position, error = %e, dir = %dir.display(),
                "a write-ahead log record is intact but not a batch of readings; it is read as empty (its readings \
                 are left out of the statistics and the archive). Was the log written by a later version of Weir?"
            );
            record::BatchView::empty()
        });
        Ok(Some((position, view)))
    }

    /// The next record's payload if its position is at most `limit`, else `Ok(None)`.
    fn next_record_through(&mut self, limit: u64) -> Result<Option<(u64, &[u8])>, WalError> {
        if self.next_position > limit {
            return Ok(None);
        }
        loop {
            if self.current.is_none() && !self.open_segment()? {
                return Ok(None);
            }
            let r = self.current.as_mut().expect("opened above");
            match r.next_record(&mut self.payload) {
                Ok(Some(p)) => {
                    self.next_position = p + 1;
                    return Ok(Some((p, &self.payload)));
                }
                Ok(None) | Err(_) => {
                    // The end of what this segment holds now: go on in the next segment if it exists, otherwise
                    // stay here (the reader rewound to the record start) and try again later.
                    // (A segment that starts where this one ended; not this one itself, which may be a fresh
                    // segment whose first record is not written yet.)
                    let segments = segment::list_segments(&self.dir).map_err(io_err(&self.dir))?;
                    if self.current_first != self.next_position
                        && segments.iter().any(|s| s.first_position == self.next_position)
                    {
                        self.current = None;
                        continue;
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The position the next returned record will have.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Opens the segment holding `next_position` and skips to it; `false` when there is none yet.
    fn open_segment(&mut self) -> Result<bool, WalError> {
        let segments = segment::list_segments(&self.dir).map_err(io_err(&self.dir))?;
        if let Some(first) = segments.first().filter(|s| s.first_position > self.next_position) {
            return Err(WalError::Trimmed { wanted: self.next_position, first: first.first_position });
        }
        let Some(seg) = segments.iter().rev().find(|s| s.first_position <= self.next_position) else {
            return Ok(false);
        };
        let mut reader =
            SegmentReader::open(seg).map_err(|source| WalError::Segment { path: seg.path.clone(), source })?;
        let mut position = seg.first_position;
        while position < self.next_position {
            match reader.next_record(&mut self.payload) {
                Ok(Some(p)) => position = p + 1,
                _ => return Ok(false),
            }
        }
        self.current = Some(reader);
        self.current_first = seg.first_position;
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
