//! Which log positions of which process the statistics have processed, as one worker knows it.
//!
//! Every feeder sends a mark `(process, position)` with each round; marks are broadcast to every worker. A mark
//! counts once the worker's frontier has passed its time: then everything fed up to it, in every process, has gone
//! through the dataflow.

use weir_operators::Time;
use weir_operators::stats::on_grid;

use super::feed::Mark;

#[derive(Debug, Default)]
pub struct Positions {
    /// Marks whose time the frontier has not passed yet.
    pending: Vec<(Time, Mark)>,
    /// Per process, the last position known processed.
    processed: Vec<u64>,
    /// The greatest time a mark has come with (the newest round any process has fed, as far as this worker knows).
    pub newest_time: Time,
    /// The arrangements' grid: a mark counts once the frontier passes its time moved onto it.
    grid: Time,
}

impl Positions {
    pub fn new(processes: usize, grid: Time) -> Self {
        Positions { pending: Vec::new(), processed: vec![0; processes], newest_time: 0, grid }
    }

    pub fn receive(&mut self, time: Time, mark: Mark) {
        self.newest_time = self.newest_time.max(time);
        // The readings fed up to the mark reach the arrangements at its grid time at the latest.
        self.pending.push((on_grid(time, self.grid), mark));
    }

    /// Counts every mark before `frontier` (`None`: the dataflow is complete, every mark counts).
    pub fn advance(&mut self, frontier: Option<Time>) {
        let processed = &mut self.processed;
        self.pending.retain(|&(time, (process, position))| {
            if frontier.is_some_and(|f| time >= f) {
                return true;
            }
            if let Some(p) = processed.get_mut(process as usize) {
                *p = (*p).max(position);
            }
            false
        });
    }

    /// The last position of `process` known processed (0 for an unknown process).
    pub fn processed(&self, process: u32) -> u64 {
        self.processed.get(process as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_counts_once_the_frontier_passes_its_time() {
        let mut p = Positions::new(2, 1);
        p.receive(10, (0, 5));
        p.receive(12, (1, 7));
        p.receive(15, (0, 9));
        p.advance(Some(11));
        assert_eq!((p.processed(0), p.processed(1)), (5, 0));
        p.advance(Some(15));
        assert_eq!((p.processed(0), p.processed(1)), (5, 7));
        p.advance(None);
        assert_eq!((p.processed(0), p.processed(1), p.processed(9)), (9, 7, 0));
    }

    #[test]
    fn a_mark_counts_once_the_frontier_passes_its_grid_time() {
        let mut p = Positions::new(1, 10);
        p.receive(11, (0, 5));
        p.advance(Some(12));
        assert_eq!(p.processed(0), 0, "readings fed at 11 reach the arrangements at 20");
        p.advance(Some(21));
        assert_eq!(p.processed(0), 5);
    }
}
