//! Deduplication verdicts for the archive: which readings of this process's log the statistics dropped.
//!
//! In a cluster a device's readings may arrive at several processes, so no process's archiver can tell a duplicate
//! from its own log alone. The statistics' dedup operator, which sees every reading of a device wherever it was
//! written, can: it sends each reading it drops back to the first worker of the process that fed it (the round
//! clock's time says which), where it is recorded here. The archiver of that process reads a record once the
//! statistics have processed its position and leaves the recorded duplicates out — so every reading acknowledged
//! anywhere in the cluster is archived exactly once, by the process that acknowledged its first write.
//!
//! Duplicates are rare, so this is a small map; an entry lives from the verdict until the archiver reads it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Exchange, Inspect};
use timely::dataflow::{Stream, StreamVec};
use weir_operators::{Rejected, Time};

use super::feed::{RoundClock, SNAPSHOT_TIMES};

/// What the archiver asks of the statistics about its own log.
pub trait DedupVerdicts: Send + Sync {
    /// Every reading of this process's log through this position has been decided.
    fn decided_through(&self) -> u64;
    /// The indexes (in the record) of the readings at `position` that were duplicates; forgets them.
    fn take_rejected(&self, position: u64) -> Vec<u32>;
}

impl std::fmt::Debug for dyn DedupVerdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DedupVerdicts {{ decided_through: {} }}", self.decided_through())
    }
}

/// The verdicts recorded at this process.
#[derive(Debug)]
pub struct Verdicts {
    rejected: Mutex<HashMap<u64, Vec<u32>>>,
    /// Per local worker, the last position of this process's log it knows processed.
    processed: Arc<Vec<AtomicU64>>,
}

impl Verdicts {
    pub(super) fn new(processed: Arc<Vec<AtomicU64>>) -> Self {
        Verdicts { rejected: Mutex::new(HashMap::new()), processed }
    }

    fn record(&self, position: u64, index: u32) {
        if let Ok(mut r) = self.rejected.lock() {
            r.entry(position).or_default().push(index);
        }
    }

    /// Positions with verdicts not yet taken.
    pub fn pending(&self) -> usize {
        self.rejected.lock().map_or(0, |r| r.len())
    }
}

impl DedupVerdicts for Verdicts {
    fn decided_through(&self) -> u64 {
        self.processed.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    fn take_rejected(&self, position: u64) -> Vec<u32> {
        let mut indexes = self.rejected.lock().ok().and_then(|mut r| r.remove(&position)).unwrap_or_default();
        indexes.sort_unstable();
        indexes
    }
}

/// `rejected_to_their_process`: the dedup operator's dropped readings in (at any worker), recorded at the first
/// worker of the process that fed each (timely numbers a process's workers `process * workers ..`). Readings of
/// snapshot rounds are not the log's and are left out. Out: an empty stream whose frontier says the verdicts up to
/// it are recorded (for the probe).
pub fn rejected_to_their_process<'scope>(
    rejected: Stream<'scope, Time, Vec<Rejected>>,
    processes: usize,
    workers: usize,
    verdicts: Arc<Verdicts>,
) -> StreamVec<'scope, Time, Rejected> {
    rejected
        .exchange(move |r: &Rejected| u64::from(RoundClock::process_of(r.time, processes)) * workers as u64)
        .inspect(move |r: &Rejected| {
            if r.time >= SNAPSHOT_TIMES {
                verdicts.record(r.seq >> 32, (r.seq & 0xffff_ffff) as u32);
            }
        })
        .filter(|_| false)
}
