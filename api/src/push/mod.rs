//! `weir push`: load files into a running Weir, exactly once, resumably.
//!
//! A reader thread cuts each file into batches of whole lines ([`batches`]); `connections` senders post them, each
//! under an idempotency key made of the file's fingerprint, the batch size and the batch's offset ([`send`]), and
//! retry until the server answers; the collector records what was acknowledged in the state file ([`resume`]),
//! reports rejected lines as `file:line: reason` and draws the progress. Whatever is interrupted — the client, the
//! server, the connection — a batch is either acknowledged or sent again under the same key, and the server stores
//! it once. Memory: `connections` + 1 batches in flight and one line, whatever the files' sizes.

pub mod batches;
pub mod resume;
pub mod send;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Mutex, mpsc};

use batches::{Batch, Batches, Format, PushFile};
use resume::{FileState, PushState};
use send::{Sender, Sent};

/// How to push.
pub struct PushOptions {
    pub files: Vec<PathBuf>,
    /// `None`: each file's name says.
    pub format: Option<Format>,
    pub sender: Sender,
    pub batch_bytes: u64,
    pub connections: usize,
    pub state: PathBuf,
    /// Skip the batches the state file says were acknowledged.
    pub resume: bool,
    /// At most this many rejected lines are printed (all are counted).
    pub max_printed: usize,
    /// Draw the progress bar (on a terminal).
    pub progress: bool,
}

/// What a push came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushSummary {
    /// Lines stored (or stored before, under the same keys).
    pub accepted: u64,
    /// Lines the server refused, and lines too long to send.
    pub rejected: u64,
    /// Lines whose batches the server had already stored (a retry, a repeated or resumed push).
    pub duplicates: u64,
    /// Batches skipped because the state file says they were acknowledged.
    pub skipped_batches: u64,
    /// Batches that could not be stored (with why, printed).
    pub failed_batches: u64,
    pub bytes: u64,
}

/// What a sender hands the collector.
struct Done {
    batch: Batch,
    /// Where the next batch starts.
    end: u64,
    sent: Option<Sent>,
}

/// Pushes every file; returns what happened (errors are for what stops the push as a whole).
pub async fn push(options: PushOptions) -> anyhow::Result<PushSummary> {
    let mut state = if options.resume { PushState::load(&options.state)? } else { PushState::default() };
    let mut files = Vec::new();
    for path in &options.files {
        let file = PushFile::open(path, options.format).with_context(|| format!("cannot read {}", path.display()))?;
        let entry =
            state.files.entry(file.fingerprint.clone()).or_insert_with(|| FileState::new(path, options.batch_bytes));
        if !options.resume {
            *entry = FileState::new(path, options.batch_bytes);
        }
        files.push(file);
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let read = Arc::new(AtomicU64::new(0));
    let progress = progress_bar(options.progress, total);

    // Reader: batches in order, those acknowledged before skipped.
    let (batch_tx, batch_rx) = mpsc::channel::<(Batch, u64)>(options.connections.max(1));
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(options.connections.max(1) * 2);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (files, read, stop, done_tx) = (files.clone(), read.clone(), stop.clone(), done_tx.clone());
        let known: Vec<FileState> = files.iter().map(|f| state.files[&f.fingerprint].clone()).collect();
        std::thread::spawn(move || -> anyhow::Result<()> {
            for (index, file) in files.iter().enumerate() {
                let known = &known[index];
                let mut batches = Batches::open(index, file, known.batch_bytes, read.clone())
                    .with_context(|| format!("cannot read {}", file.path.display()))?;
                let mut current = batches.next();
                while let Some(batch) = current {
                    let batch = batch.with_context(|| format!("cannot read {}", file.path.display()))?;
                    current = batches.next();
                    let end = match &current {
                        Some(Ok(next)) => next.offset,
                        _ => u64::MAX,
                    };
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let message = if known.is_done(batch.offset) {
                        done_tx.blocking_send(Done { batch, end, sent: None }).map_err(|_| ())
                    } else {
                        batch_tx.blocking_send((batch, end)).map_err(|_| ())
                    };
                    if message.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    };

    // Senders.
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    let mut senders = Vec::new();
    for _ in 0..options.connections.max(1) {
        let (rx, tx, sender, files, stop) =
            (batch_rx.clone(), done_tx.clone(), options.sender.clone(), files.clone(), stop.clone());
        let batch_bytes: Vec<u64> = files.iter().map(|f| state.files[&f.fingerprint].batch_bytes).collect();
        senders.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((batch, end)) = next else { return };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let file = &files[batch.file];
                let sent = if batch.body.is_empty() {
                    Sent::Answered { rejected: Vec::new(), rejected_count: 0, replayed: false }
                } else {
                    sender.send(&batch, file.format, &file.key(batch_bytes[batch.file], batch.offset)).await
                };
                if tx.send(Done { batch, end, sent: Some(sent) }).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(done_tx);

    // Collector.
    let mut summary = PushSummary::default();
    let mut printed = 0;
    let mut saved = Instant::now();
    let mut fatal = None;
    let started = Instant::now();
    while let Some(done) = done_rx.recv().await {
        let file = &files[done.batch.file];
        let name = file.path.display();
        let lines = done.batch.lines - done.batch.blank;
        let mut print = |line: u64, reason: &str| {
            if printed < options.max_printed {
                progress.suspend(|| eprintln!("{name}:{line}: {reason}"));
            }
            printed += 1;
        };
        for &line in &done.batch.too_long {
            print(line, &format!("line longer than --batch-bytes ({} bytes): not sent", options.batch_bytes));
        }
        let too_long = done.batch.too_long.len() as u64;
        match done.sent {
            None => {
                summary.skipped_batches += 1;
                summary.accepted += lines - too_long;
                summary.rejected += too_long;
            }
            Some(Sent::Answered { rejected, rejected_count, replayed }) => {
                for (line, reason) in &rejected {
                    print(file_line(&done.batch, *line), reason);
                }
                let accepted = lines.saturating_sub(too_long + rejected_count);
                summary.accepted += accepted;
                summary.rejected += rejected_count + too_long;
                if replayed {
                    summary.duplicates += accepted;
                }
                let entry = state.files.get_mut(&file.fingerprint).expect("every file has a state");
                entry.acknowledge(done.batch.offset, done.end);
            }
            Some(Sent::Refused(why)) => {
                summary.failed_batches += 1;
                progress.suspend(|| {
                    eprintln!(
                        "{name}:{}-{}: batch not stored: {why}",
                        done.batch.first_line,
                        done.batch.first_line + done.batch.lines.saturating_sub(1)
                    )
                });
            }
            Some(Sent::Fatal(why)) => {
                stop.store(true, Ordering::Relaxed);
                fatal.get_or_insert(why);
                summary.failed_batches += 1;
            }
        }
        summary.bytes += done.batch.body.len() as u64;
        let elapsed = started.elapsed().as_secs_f64().max(1e-3);
        progress.set_position(read.load(Ordering::Relaxed));
        progress.set_message(format!(
            "{} lines, {:.0} lines/s, {} rejected",
            summary.accepted,
            summary.accepted as f64 / elapsed,
            summary.rejected
        ));
        if saved.elapsed() >= Duration::from_millis(500) {
            state.save(&options.state)?;
            saved = Instant::now();
        }
    }
    for sender in senders {
        let _ = sender.await;
    }
    let read_result = reader.join().map_err(|_| anyhow::anyhow!("the file reader panicked"))?;
    state.save(&options.state)?;
    progress.finish_and_clear();
    if let Some(why) = fatal {
        anyhow::bail!("the server refuses these batches, so the push stopped: {why}");
    }
    read_result?;
    Ok(summary)
}

/// The line number in its file of line `line` (from 1) of `batch`, counting the lines left out as too long.
fn file_line(batch: &Batch, line: u64) -> u64 {
    let mut number = batch.first_line + line - 1;
    for &skipped in &batch.too_long {
        if skipped <= number {
            number += 1;
        }
    }
    number
}

fn progress_bar(draw: bool, total: u64) -> ProgressBar {
    let target = if draw { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_lines_are_numbered_in_their_file_around_lines_left_out() {
        let batch =
            Batch { file: 0, offset: 0, first_line: 10, lines: 5, body: Vec::new(), too_long: vec![11], blank: 0 };
        // Lines sent: 10, 12, 13, 14 — the server numbers them 1..4.
        assert_eq!([1, 2, 3, 4].map(|l| file_line(&batch, l)), [10, 12, 13, 14]);
    }
}
