//! Stopping a cluster's statistics together.
//!
//! Every process of a cluster steps the same dataflows: a worker that leaves stops the frontier of every other
//! worker. A clean stop in a cluster therefore first waits until the statistics have processed what every process
//! acknowledged — queries answered by *every* worker — and only then stops the workers. If one process stopped its
//! workers as soon as its own wait was over, a slower process's wait (asked a moment later) would never be answered:
//! it stopped 10 s later with its last writes undecided, and its network threads failed on the closed connections.
//!
//! So stopping is a barrier. When [`StatsEngine::stop`](super::StatsEngine::stop) is called, the process's feeding
//! worker announces it ([`Query::Stopping`](super::Query::Stopping), broadcast to every worker like any query); each
//! worker records the announcements it receives here, and leaves its loop once every process has announced — or
//! after [`STOP_BARRIER_WAIT`], when a peer is gone or hung. Alone, a process passes the barrier once its own
//! announcement has gone round its workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a stopping worker waits for the other processes to announce their stop.
pub const STOP_BARRIER_WAIT: Duration = Duration::from_secs(5);

/// Which processes have announced that they stop, as this process's workers have received it.
#[derive(Debug)]
pub struct StopBarrier {
    announced: Vec<AtomicBool>,
}

impl StopBarrier {
    /// A barrier for a cluster of `processes` (one alone).
    pub fn new(processes: usize) -> Self {
        StopBarrier { announced: (0..processes.max(1)).map(|_| AtomicBool::new(false)).collect() }
    }

    /// Records that `process` stops (an index outside the cluster is ignored).
    pub fn announce(&self, process: u32) {
        if let Some(flag) = self.announced.get(process as usize) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Whether every process of the cluster has announced its stop.
    pub fn passed(&self) -> bool {
        self.announced.iter().all(|a| a.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_barrier_passes_once_every_process_has_announced() {
        let barrier = StopBarrier::new(3);
        barrier.announce(2);
        barrier.announce(0);
        barrier.announce(7);
        assert!(!barrier.passed());
        barrier.announce(1);
        assert!(barrier.passed());
    }

    #[test]
    fn alone_a_process_passes_with_its_own_announcement() {
        let barrier = StopBarrier::new(1);
        assert!(!barrier.passed());
        barrier.announce(0);
        assert!(barrier.passed());
    }
}
