//! The writer thread and its group commit.
//!
//! Appenders (request handlers) send payloads over a bounded channel; the bounded channel is the backpressure: when
//! the disk falls behind, appenders wait for room, and give up after their own deadline. The writer takes one
//! append, then everything else already queued (up to `max_group_bytes`), writes it with one `write` and one
//! `fdatasync`, and only then tells every appender its position.
//!
//! **Waiting for company.** Below the disk's limit the queue is mostly empty when an append arrives, so each
//! append was a group of its own: one `fdatasync`, one wake-up of the writer, of the statistics and of the
//! archiver per request (at 1 000 requests a second, ~12 % of the server's CPU went to the writer alone). While
//! waiting brings company, a group's first append waits [`WalOptions::commit_delay`] for the others before the
//! group is written: the writer keeps a running mean of the appends a group holds ([`Company`]); a group that met
//! others without waiting (several writers at once) starts the waiting, and it goes on while groups hold at least
//! [`Company::WORTH_WAITING`] appends on average. A lone writer's appends never meet another, so it never waits;
//! one that meets an occasional other (a monitoring probe) waits a few groups, finds nobody, and stops; concurrent
//! writers keep meeting, so they keep sharing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::segment::{self, SegmentFile};
use super::{Doorbell, LogTail, Recovery, WalError, WalOptions, io_err, recover, sync_dir};
use crate::clock::WriteClock;
use crate::reading::ReadingBatch;

/// Why an append was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("the write-ahead log queue stayed full for {0:?}; retry later")]
    Busy(Duration),
    #[error("the write-ahead log failed and accepts no more writes until restart: {0}")]
    Failed(Arc<str>),
    #[error(
        "the disk of the write-ahead log is full; no more writes are accepted until Weir is restarted with space \
         (every write acknowledged before is safe): {0}"
    )]
    DiskFull(Arc<str>),
    #[error("the write-ahead log is closed")]
    Closed,
}

enum Message {
    Append { payload: Vec<u8>, done: oneshot::Sender<Result<u64, AppendError>> },
    Close { done: oneshot::Sender<()> },
}

/// A handle to queue appends; cheap to clone.
#[derive(Clone)]
pub struct WalAppender {
    tx: mpsc::Sender<Message>,
    durable: watch::Receiver<u64>,
    /// Set once the log has failed for good (until restart).
    failure: Arc<std::sync::OnceLock<AppendError>>,
}

/// An append that was queued; await [`PendingAppend::durable`] for its position once it is on disk.
pub struct PendingAppend(oneshot::Receiver<Result<u64, AppendError>>);

impl PendingAppend {
    /// An append that has already ended with `result` (for test doubles of [`super::ReadingLog`]).
    pub fn resolved(result: Result<u64, AppendError>) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        PendingAppend(rx)
    }

    /// Waits until the record is written and fsynced; returns its position.
    pub async fn durable(self) -> Result<u64, AppendError> {
        self.0.await.unwrap_or(Err(AppendError::Closed))
    }

    /// Blocking form of [`PendingAppend::durable`], for threads outside an async runtime.
    pub fn durable_blocking(self) -> Result<u64, AppendError> {
        self.0.blocking_recv().unwrap_or(Err(AppendError::Closed))
    }
}

impl WalAppender {
    /// Queues `batch` as one record, waiting at most `wait` for room in the queue. The batch is encoded here, on
    /// the caller's thread, so that the writer thread only writes.
    pub async fn append(&self, batch: &ReadingBatch, wait: Duration) -> Result<PendingAppend, AppendError> {
        self.append_payload(encode(batch), wait).await
    }

    /// Queues `batch` and waits until it is durable, blocking the thread (not for async code).
    pub fn append_blocking(&self, batch: &ReadingBatch) -> Result<u64, AppendError> {
        self.append_payload_blocking(encode(batch))
    }

    async fn append_payload(&self, payload: Vec<u8>, wait: Duration) -> Result<PendingAppend, AppendError> {
        let (done, rx) = oneshot::channel();
        match self.tx.send_timeout(Message::Append { payload, done }, wait).await {
            Ok(()) => Ok(PendingAppend(rx)),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(AppendError::Busy(wait)),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(AppendError::Closed),
        }
    }

    /// Appends raw bytes as a record (tests write records that are not batches with it).
    pub(crate) fn append_payload_blocking(&self, payload: Vec<u8>) -> Result<u64, AppendError> {
        let (done, rx) = oneshot::channel();
        self.tx.blocking_send(Message::Append { payload, done }).map_err(|_| AppendError::Closed)?;
        PendingAppend(rx).durable_blocking()
    }

    /// Why the log accepts no more writes, once it has failed (it stays failed until restart).
    pub fn failure(&self) -> Option<AppendError> {
        self.failure.get().cloned()
    }

    /// The position of the last durable record (0 when none).
    pub fn durable_position(&self) -> u64 {
        *self.durable.borrow()
    }

    /// A receiver that sees the durable position change.
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }
}

/// A batch as a record's payload.
fn encode(batch: &ReadingBatch) -> Vec<u8> {
    let mut payload = Vec::new();
    super::record::encode_batch(batch, &mut payload);
    payload
}

impl super::ReadingLog for WalAppender {
    fn append(&self, batch: &ReadingBatch, wait: Duration) -> super::AppendFuture<'_> {
        let payload = encode(batch);
        Box::pin(self.append_payload(payload, wait))
    }

    fn append_keyed(&self, batch: &ReadingBatch, key: &super::KeyView<'_>, wait: Duration) -> super::AppendFuture<'_> {
        let mut payload = Vec::new();
        super::record::encode_keyed_batch(batch, key, &mut payload);
        Box::pin(self.append_payload(payload, wait))
    }

    fn durable_position(&self) -> u64 {
        WalAppender::durable_position(self)
    }

    fn failure(&self) -> Option<AppendError> {
        WalAppender::failure(self)
    }
}

/// The open log: its writer thread and a handle to append.
pub struct Wal {
    appender: WalAppender,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    clock: WriteClock,
    /// Rung by the writer once a group commit's position is durable.
    doorbell: Doorbell,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, repairing a torn tail, and starts the writer thread.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
        let dir = dir.as_ref().to_path_buf();
        let (segments, recovery) = recover(&dir)?;
        let next_position = recovery.last_position + 1;
        let (file, size) = match segments.last() {
            // A full last segment (from a run with a smaller --wal-segment-bytes, or one that was full when the
            // process stopped) is left closed, so it can be trimmed once archived.
            Some(last)
                if last.first_position < next_position
                    && std::fs::metadata(&last.path).map_err(io_err(&last.path))?.len() >= options.segment_bytes =>
            {
                create_segment(&dir, next_position)?
            }
            Some(last) => {
                let file = OpenOptions::new().append(true).open(&last.path).map_err(io_err(&last.path))?;
                let size = file.metadata().map_err(io_err(&last.path))?.len();
                (file, size)
            }
            None => create_segment(&dir, next_position)?,
        };
        // Write times never go back, not even below the last run's if the wall clock did.
        if recovery.last_position > 0
            && let Ok(Some(last)) = super::WalReader::new(&dir, recovery.last_position).next_batch()
        {
            options.clock.observe(last.written);
        }
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let (durable_tx, durable) = watch::channel(recovery.last_position);
        let clock = options.clock.clone();
        let failure = Arc::new(std::sync::OnceLock::new());
        let doorbell = Doorbell::default();
        let writer = Writer {
            dir: dir.clone(),
            options,
            file,
            size,
            next_position,
            durable: durable_tx,
            doorbell: doorbell.clone(),
            failed: failure.clone(),
            company: Company::default(),
        };
        let thread = std::thread::Builder::new()
            .name("weir-wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&dir))?;
        let appender = WalAppender { tx, durable, failure };
        Ok((Wal { appender, thread: Some(thread), dir, clock, doorbell }, recovery))
    }

    /// What the statistics need to follow this log.
    pub fn tail(&self) -> LogTail {
        LogTail {
            dir: self.dir.clone(),
            durable: self.appender.watch_durable(),
            clock: self.clock.clone(),
            doorbell: self.doorbell.clone(),
        }
    }

    /// The clock that stamps this log's records.
    pub fn clock(&self) -> &WriteClock {
        &self.clock
    }

    /// A handle for appending.
    pub fn appender(&self) -> WalAppender {
        self.appender.clone()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes what is queued, fsyncs, and stops the writer, waiting for it. Later appends fail with
    /// [`AppendError::Closed`]. Blocks the thread: from async code, call it in `spawn_blocking`.
    pub fn close(mut self) {
        let (done, rx) = oneshot::channel();
        if self.appender.tx.blocking_send(Message::Close { done }).is_ok() {
            let _ = rx.blocking_recv();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    /// Asks the writer to stop without waiting. Nothing acknowledged depends on it: every acknowledged record was
    /// fsynced before its acknowledgement.
    fn drop(&mut self) {
        if self.thread.take().is_some() {
            let (done, _) = oneshot::channel();
            let _ = self.appender.tx.try_send(Message::Close { done });
        }
    }
}

fn create_segment(dir: &Path, first_position: u64) -> Result<(File, u64), WalError> {
    let seg = SegmentFile { first_position, path: dir.join(segment::segment_name(first_position)) };
    let mut file = OpenOptions::new().create_new(true).append(true).open(&seg.path).map_err(io_err(&seg.path))?;
    file.write_all(&segment::header()).map_err(io_err(&seg.path))?;
    file.sync_all().map_err(io_err(&seg.path))?;
    sync_dir(dir)?;
    Ok((file, segment::HEADER_BYTES))
}

struct Writer {
    dir: PathBuf,
    options: WalOptions,
    file: File,
    size: u64,
    next_position: u64,
    durable: watch::Sender<u64>,
    /// Wakes the statistics' feeding worker once a group is durable (it sleeps until then).
    doorbell: Doorbell,
    /// Shared with every appender: set at the first failed write or fsync.
    failed: Arc<std::sync::OnceLock<AppendError>>,
    /// How many appends a group has lately held: whether waiting for company pays.
    company: Company,
}

type Waiter = oneshot::Sender<Result<u64, AppendError>>;

/// The running mean of the appends a group holds, and so whether a group's first append waits for others.
#[derive(Debug, Clone, Copy)]
struct Company {
    mean: f64,
}

impl Default for Company {
    fn default() -> Self {
        Company { mean: 1.0 }
    }
}

impl Company {
    /// A group waits while groups hold at least this many appends on average.
    const WORTH_WAITING: f64 = 1.5;
    /// Weight of the newest group in the mean: after a shared group of 2, seven lone groups end the waiting.
    const WEIGHT: f64 = 0.1;

    fn worth_waiting(&self) -> bool {
        self.mean >= Self::WORTH_WAITING
    }

    /// A group of `appends` was written, after waiting for company or not.
    fn observe(&mut self, appends: usize, waited: bool) {
        let appends = appends as f64;
        self.mean = if !waited && appends > 1.0 {
            // Writers at once without waiting: waiting will pay (a trial as long as a group of two would make it,
            // whatever this group's size).
            self.mean.max(2.0)
        } else {
            (1.0 - Self::WEIGHT) * self.mean + Self::WEIGHT * appends
        };
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut buf = Vec::new();
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut close: Option<oneshot::Sender<()>> = None;
        while close.is_none() {
            let Some(first) = rx.blocking_recv() else { break };
            let waited = matches!(first, Message::Append { .. })
                && !self.options.commit_delay.is_zero()
                && self.company.worth_waiting();
            if waited {
                std::thread::sleep(self.options.commit_delay);
            }
            let mut message = Some(first);
            buf.clear();
            // One write time for the whole group: its records are ordered among themselves by position.
            let written = self.options.clock.begin_group();
            while let Some(m) = message.take() {
                match m {
                    Message::Append { mut payload, done } => {
                        let position = self.next_position + waiters.len() as u64;
                        super::record::stamp_written(&mut payload, written);
                        segment::frame_record(position, &payload, &mut buf);
                        waiters.push(done);
                    }
                    Message::Close { done } => {
                        close = Some(done);
                        break;
                    }
                }
                if buf.len() < self.options.max_group_bytes {
                    message = rx.try_recv().ok();
                }
            }
            self.company.observe(waiters.len(), waited);
            if !waiters.is_empty() {
                self.commit(&buf, &mut waiters);
            }
            self.options.clock.end_group();
        }
        rx.close();
        if let Some(done) = close {
            let _ = done.send(());
        }
    }

    /// Writes one group and fsyncs it, then answers its waiters.
    fn commit(&mut self, buf: &[u8], waiters: &mut Vec<Waiter>) {
        if let Some(failure) = self.failed.get() {
            for w in waiters.drain(..) {
                let _ = w.send(Err(failure.clone()));
            }
            return;
        }
        let started = std::time::Instant::now();
        let result = self.file.write_all(buf).and_then(|()| self.file.sync_data());
        metrics::histogram!("weir_wal_fsync_duration_seconds").record(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            let reason: Arc<str> = format!("write or fsync of {} failed: {e}", self.dir.display()).into();
            tracing::error!(%reason, "write-ahead log failed; no further readings will be acknowledged");
            metrics::gauge!("weir_wal_failed").set(1.0);
            let failure = if e.kind() == std::io::ErrorKind::StorageFull {
                AppendError::DiskFull(reason)
            } else {
                AppendError::Failed(reason)
            };
            let failure = self.failed.get_or_init(|| failure).clone();
            for w in waiters.drain(..) {
                let _ = w.send(Err(failure.clone()));
            }
            return;
        }
        self.size += buf.len() as u64;
        let first = self.next_position;
        self.next_position += waiters.len() as u64;
        // Publish the durable position before anyone hears of it, so a client that holds a position always finds
        // the log at least that far.
        self.durable.send_replace(self.next_position - 1);
        self.doorbell.ring();
        metrics::counter!("weir_wal_appends_total").increment(waiters.len() as u64);
        metrics::counter!("weir_wal_fsyncs_total").increment(1);
        metrics::counter!("weir_wal_written_bytes_total").increment(buf.len() as u64);
        for (position, w) in (first..).zip(waiters.drain(..)) {
            let _ = w.send(Ok(position));
        }
        if self.size >= self.options.segment_bytes {
            match create_segment(&self.dir, self.next_position) {
                Ok((file, size)) => {
                    self.file = file;
                    self.size = size;
                }
                Err(e) => {
                    // Keep appending to the current segment; a later roll may succeed.
                    tracing::warn!(error = %e, "could not start a new WAL segment");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Company;

    #[test]
    fn company_starts_with_writers_at_once_and_ends_with_lone_groups() {
        let mut company = Company::default();
        assert!(!company.worth_waiting(), "no waiting before writers have met");
        company.observe(1, false);
        assert!(!company.worth_waiting());
        company.observe(8, false);
        assert!(company.worth_waiting(), "appends met without waiting");
        let trial = (1..=20).find(|_| {
            company.observe(1, true);
            !company.worth_waiting()
        });
        assert_eq!(trial, Some(7), "whatever the group that started it, a trial of seven lone groups");
        company.observe(2, false);
        // Groups of two while waiting keep it going.
        (0..100).for_each(|_| company.observe(2, true));
        assert!(company.worth_waiting());
        // Lone groups end it: after a shared group of two, within seven.
        let lone = (1..=20).find(|_| {
            company.observe(1, true);
            !company.worth_waiting()
        });
        assert_eq!(lone, Some(7));
    }
}
