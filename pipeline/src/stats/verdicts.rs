//! Deduplication verdicts for the archive: which readings of this process's log the statistics dropped.
//!
//! The statistics' dedup operator is the only deduplication Weir has: the archive stores exactly what it admitted,
//! alone as in a cluster (a single Weir is a cluster of one). In a cluster a device's readings may arrive at
//! several processes, so no process could tell a duplicate from its own log alone; the dedup operator, which sees
//! every reading of a device wherever it was written, can. It sends each reading it drops (and each it admits
//! late, for the `weir_readings_late_total` count) back to the first worker of the process that fed it (the round
//! clock's time says which), where it is recorded here. The archiver of that process reads a record once the
//! statistics have processed its position and leaves the recorded duplicates out — so every reading acknowledged
//! anywhere is archived exactly once, by the process that acknowledged its first write.
//!
//! The archiver also keeps each verdict, with its reading, in the archive's record of verdicts (`verdicts/`), so
//! that late and duplicate counts outlive the log (rollups and the `windows_*` tables count them from there).
//!
//! Duplicates and late readings are rare, so this is a small map; an entry lives from the verdict until the
//! archiver reads it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Exchange, Inspect};
use timely::dataflow::{Stream, StreamVec};
use weir_operators::{Admission, Time, Verdict};

use super::feed::SNAPSHOT_TIMES;

/// What the archiver asks of the statistics about its own log.
pub trait DedupVerdicts: Send + Sync {
    /// Every reading of this process's log through this position has been decided.
    fn decided_through(&self) -> u64;
    /// The verdicts on the readings at `position` that were not simply admitted in order: each reading's index in
    /// the record and whether it was a duplicate (dropped) or admitted late, by index; forgets them.
    fn take_verdicts(&self, position: u64) -> Vec<(u32, Admission)>;
}

impl std::fmt::Debug for dyn DedupVerdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DedupVerdicts {{ decided_through: {} }}", self.decided_through())
    }
}

/// The verdicts recorded at this process.
#[derive(Debug)]
pub struct Verdicts {
    rejected: Mutex<HashMap<u64, Vec<(u32, Admission)>>>,
    /// Per local worker, the last position of this process's log it knows processed.
    processed: Arc<Vec<AtomicU64>>,
}

impl Verdicts {
    pub(super) fn new(processed: Arc<Vec<AtomicU64>>) -> Self {
        Verdicts { rejected: Mutex::new(HashMap::new()), processed }
    }

    fn record(&self, position: u64, index: u32, admission: Admission) {
        if let Ok(mut r) = self.rejected.lock() {
            r.entry(position).or_default().push((index, admission));
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

    fn take_verdicts(&self, position: u64) -> Vec<(u32, Admission)> {
        let mut verdicts = self.rejected.lock().ok().and_then(|mut r| r.remove(&position)).unwrap_or_default();
        verdicts.sort_unstable();
        verdicts
    }
}

/// `verdicts_to_their_process`: the dedup operator's verdicts in (at any worker), recorded at the first worker of
/// the process that fed each (timely numbers a process's workers `process * workers ..`): duplicates for the
/// archiver, both kinds counted in the metrics. Readings of snapshot rounds are not the log's and are left out.
/// Out: an empty stream whose frontier says the verdicts up to it are recorded (for the probe).
pub fn verdicts_to_their_process<'scope>(
    judged: Stream<'scope, Time, Vec<Verdict>>,
    processes: usize,
    workers: usize,
    verdicts: Arc<Verdicts>,
) -> StreamVec<'scope, Time, Verdict> {
    judged
        .exchange(move |v: &Verdict| (v.time % processes.max(1) as u64) * workers as u64)
        .inspect(move |v: &Verdict| {
            if v.time < SNAPSHOT_TIMES {
                return;
            }
            match v.admission {
                Admission::Duplicate => metrics::counter!("weir_readings_deduplicated_total").increment(1),
                Admission::Late => metrics::counter!("weir_readings_late_total").increment(1),
                Admission::InOrder => return,
            }
            verdicts.record(v.seq >> 32, (v.seq & 0xffff_ffff) as u32, v.admission);
        })
        .filter(|_| false)
}
