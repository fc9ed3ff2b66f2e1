//! The memory budget (`--memory-limit`): what the state that grows with the data may take, and what Weir refuses
//! near it, so that memory is bounded by configuration and never by luck.
//!
//! Request bodies, the log's queue, SQL's working memory and connections are bounded by their own limits already.
//! What grows with the data is counted here, each part in bytes, kept current by its owner:
//! [`Part::LiveWindows`] (the windows of the live horizon), [`Part::DedupKeys`] (each series' timestamps within the
//! dedup horizon), [`Part::Registry`] (device names and their series), [`Part::ArchiveBuffer`] (readings read but
//! not yet flushed to Parquet), [`Part::Merge`] (what a seal or compaction holds while it runs), and
//! [`Part::Sql`] (what `--sql-memory × --sql-concurrency` may take, reserved).
//!
//! Near the limit Weir refuses what would grow the state, in this order: at [`NEW_SERIES_SHARE`] of it a reading that
//! would start a new series is rejected on its line (the rest of its request is stored); at the limit whole ingest
//! requests are refused (503 with `Retry-After`) until the state shrinks — as days leave the live horizon and the
//! archiver flushes. Nothing acknowledged is ever dropped to make room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A part of the state the budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    LiveWindows,
    DedupKeys,
    Registry,
    ArchiveBuffer,
    Merge,
    Sql,
}

impl Part {
    pub const ALL: [Part; 6] =
        [Part::LiveWindows, Part::DedupKeys, Part::Registry, Part::ArchiveBuffer, Part::Merge, Part::Sql];

    /// The name used in metrics (`weir_memory_used_bytes{part=…}`).
    pub const fn name(self) -> &'static str {
        match self {
            Part::LiveWindows => "live_windows",
            Part::DedupKeys => "dedup_keys",
            Part::Registry => "registry",
            Part::ArchiveBuffer => "archive_buffer",
            Part::Merge => "merge",
            Part::Sql => "sql",
        }
    }

    const fn index(self) -> usize {
        match self {
            Part::LiveWindows => 0,
            Part::DedupKeys => 1,
            Part::Registry => 2,
            Part::ArchiveBuffer => 3,
            Part::Merge => 4,
            Part::Sql => 5,
        }
    }
}

/// From this share of the limit on, new series are refused.
pub const NEW_SERIES_SHARE: f64 = 0.9;

/// Measured or estimated bytes per unit of each part (see the README's state model).
pub mod cost {
    /// A remembered deduplication key: ~10 bytes measured (`benches/examples/state_size.rs`), with the per-series
    /// ring's slack.
    pub const DEDUP_KEY: u64 = 12;
    /// A device name in the registry: both maps' entries, the name's allocation and its sensor mask.
    pub const DEVICE: u64 = 160;
    /// A reading read by the archiver and not yet flushed (a compact batch row, 24 bytes, and its share of names).
    pub const UNFLUSHED_READING: u64 = 32;
    /// A merge (seal or compaction) streams its parts, so it holds, besides the parts' and outputs' compressed
    /// bytes (counted as twice the parts' bytes): this much for its encoders and row buffers, whatever the day's
    /// size…
    pub const MERGE_BASE: u64 = 48 << 20;
    /// …and this much per part it reads (a reader's dictionaries and pages). Measured with
    /// `cargo run --release -p weir-benches --example seal_memory`: 79 MiB for 60 parts of 1.7 M readings in all,
    /// 62 MiB for the sealed file and one late part.
    pub const MERGE_PART: u64 = 1 << 20;
    /// A series, besides its windows: its entry in the live windows' map (with its latest value), deduplication's
    /// ring, and the device name's arrangement. Calibrated so that the budget's total matches the process's growth
    /// under a fresh series per reading (`api/tests/limits.rs`: ~1.4 KB a series of one reading, measured).
    pub const SERIES: u64 = 800;
}

/// The budget: a limit and what each part uses; shared by the parts' owners and those who refuse work.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: [AtomicU64; 6],
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget { limit, used: std::array::from_fn(|_| AtomicU64::new(0)) })
    }

    /// Records what `part` uses now.
    pub fn set(&self, part: Part, bytes: u64) {
        self.used[part.index()].store(bytes, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What `part` uses.
    pub fn used_by(&self, part: Part) -> u64 {
        self.used[part.index()].load(Ordering::Relaxed)
    }

    /// What all parts use together.
    pub fn used(&self) -> u64 {
        Part::ALL.iter().map(|p| self.used_by(*p)).fold(0, u64::saturating_add)
    }

    /// Whether a new series may start (below [`NEW_SERIES_SHARE`] of the limit).
    pub fn admits_new_series(&self) -> bool {
        (self.used() as f64) < self.limit as f64 * NEW_SERIES_SHARE
    }

    /// Whether ingest requests are taken (below the limit).
    pub fn admits_requests(&self) -> bool {
        self.used() < self.limit
    }
}

/// A default limit: half of the memory this process may use (the cgroup's limit when there is one, else the
/// machine's), or 4 GiB when neither can be read.
pub fn default_limit() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|m| m.trim().parse::<u64>().ok());
    match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c) / 2,
        (Some(m), None) => m / 2,
        (None, Some(c)) => c / 2,
        (None, None) => 4 << 30,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_series_stop_first_then_requests() {
        let budget = MemoryBudget::new(1_000);
        budget.set(Part::Sql, 500);
        budget.set(Part::LiveWindows, 300);
        assert!(budget.admits_new_series() && budget.admits_requests());
        budget.set(Part::DedupKeys, 150);
        assert_eq!(budget.used(), 950);
        assert!(!budget.admits_new_series() && budget.admits_requests());
        budget.set(Part::ArchiveBuffer, 50);
        assert!(!budget.admits_requests());
        budget.set(Part::LiveWindows, 0);
        assert!(budget.admits_new_series() && budget.admits_requests(), "the state shrank");
        assert!(default_limit() > 0);
    }
}
