//! The record of rejected lines: every line (or reading) that ingest rejected, with when, who, where and why, kept
//! on disk for a bounded time and size so that an operator can find out later what a client sent wrong.
//!
//! **Why a file of its own and not the WAL**: rejected lines are diagnostics, not data. They must never compete
//! with readings for the log's fsyncs, never be replayed into the statistics or the archive, and must be dropped
//! freely (by age and by size) without touching what the archive checkpoint relies on.
//!
//! **What is kept** ([`Rejection`]): the time the request was received (µs, UTC), the API key's *name* (never its
//! secret), the source (the HTTP route such as `/ingest` or `/api/v2/write`, `grpc`, or `mqtt:<topic>`), the line
//! number (1-based; for gRPC, OTLP and remote write the reading's place in the request), the kind of rejection (the
//! `reason` label of `weir_readings_rejected_total`), the reason text the client got, and the first bytes of the line
//! (`--rejected-text-bytes`; for protocols without lines, the reading's fields as NDJSON).
//!
//! **Format**: a directory of segment files `<sequence, 20 digits>.rej`. A segment starts with a 16-byte header
//! (`WEIRREJ\0` magic, format version `u32`, 4 zero bytes) followed by records `len u32 | crc32 u32 | payload[len]`
//! (little-endian; the CRC covers the payload; the payload layout is private to [`record`]). A segment is appended
//! to until the next request's records would take it past the segment size, then a new one is started; only the
//! newest segment is ever written.
//!
//! **Durability**: the records of one request are encoded in memory and written with one `write()` before the
//! request is answered, so they survive `kill -9` of the process (they are in the page cache). They reach the disk
//! at the next periodic fsync ([`RejectedStore::sync`], every second in `weir serve`) or when the segment is
//! sealed: a power loss may lose the last second of rejected lines, never a reading (readings are in the WAL, fsynced
//! before the answer).
//!
//! **Recovery**: on open every segment is scanned. A torn tail of the newest segment (a crash or a power loss
//! mid-write) is cut off and reported ([`Recovery::truncated`]); damage anywhere else is reported with its file,
//! offset and reason ([`Recovery::damaged`]) and the valid records before it stay readable. Weir starts either way:
//! a damaged record of rejected lines must not stop readings from being ingested.
//!
//! **Bounds** ([`RejectedOptions`]): whole segments older than the retention are deleted, the oldest segments beyond
//! the size cap are deleted (the total never exceeds it), one request records at most
//! [`RejectedOptions::max_per_request`] lines (the rest are counted by the caller, never silently dropped), and one
//! request's records never exceed one segment.

pub mod record;
mod segment;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use record::{KeptLine, Rejection};
pub use segment::Corruption;
pub use store::{Appended, Filter, RejectedStore, SegmentSnapshot};

use crate::decode::LineErrorKind;

/// How much of the record of rejected lines is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedOptions {
    /// Segments whose newest record is older than this are deleted, and older records are never shown
    /// (`--rejected-retention`).
    pub retention: Duration,
    /// The most bytes all segments together take; the oldest segments are deleted beyond it
    /// (`--rejected-max-bytes`, at least [`MIN_MAX_BYTES`]).
    pub max_bytes: u64,
    /// The most rejected lines one request records; the rest are counted in `weir_rejected_not_recorded_total`
    /// (`--rejected-max-per-request`).
    pub max_per_request: usize,
    /// The most bytes of a rejected line kept (`--rejected-text-bytes`, at most [`MAX_TEXT_BYTES`]).
    pub text_bytes: usize,
}

impl Default for RejectedOptions {
    fn default() -> Self {
        RejectedOptions {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 256 << 20,
            max_per_request: 1_000,
            text_bytes: 256,
        }
    }
}

/// The smallest size cap: eight segments of 16 KiB (one segment holds the largest record).
pub const MIN_MAX_BYTES: u64 = 128 << 10;
/// The most bytes of a line a record keeps.
pub const MAX_TEXT_BYTES: usize = 4096;
/// The largest segment.
const MAX_SEGMENT_BYTES: u64 = 16 << 20;

impl RejectedOptions {
    /// The size at which a segment is sealed: an eighth of the cap (so deleting the oldest segment frees at most an
    /// eighth of what is kept), at most 16 MiB.
    pub fn segment_bytes(&self) -> u64 {
        let max = self.max_bytes.max(MIN_MAX_BYTES);
        (max / 8).clamp(MIN_MAX_BYTES / 8, MAX_SEGMENT_BYTES)
    }
}

/// Who sent a request and where to: what every record of its rejected lines carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The API key's name (never its secret); `None` without keys.
    pub key: Option<Arc<str>>,
    /// The route (`/ingest`, `/api/v2/write`, …), `grpc`, or `mqtt:<topic>`.
    pub source: Arc<str>,
}

/// What opening the record found and repaired.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Segments found.
    pub segments: usize,
    /// Records readable.
    pub records: u64,
    /// A torn tail of the newest segment that was cut off.
    pub truncated: Option<Damage>,
    /// Damage in other segments (their records before it stay readable).
    pub damaged: Vec<Damage>,
}

/// Where a segment stops being readable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}, offset {offset}: {reason}")]
pub struct Damage {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: Corruption,
}

/// Why the record of rejected lines could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum RejectedError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RejectedError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RejectedError {
        let path = path.into();
        move |source| RejectedError::Io { action, path, source }
    }
}

/// The kinds of rejection, by their stable names (the `reason` label of `weir_readings_rejected_total`).
pub fn kind_by_name(name: &str) -> Option<LineErrorKind> {
    [LineErrorKind::Undecodable, LineErrorKind::Invalid, LineErrorKind::TooLong]
        .into_iter()
        .find(|k| k.as_str() == name)
}

/// The first `max` bytes of `bytes`, without a UTF-8 character cut in two at the end (when the bytes are UTF-8 up
/// to there; other bytes are kept as they are).
pub fn head(bytes: &[u8], max: usize) -> &[u8] {
    let cut = &bytes[..bytes.len().min(max)];
    match std::str::from_utf8(cut) {
        Ok(_) => cut,
        // An incomplete character at the very end: leave it out.
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        Err(_) => cut,
    }
}

#[cfg(test)]
mod tests;
