//! Engine values read when metrics are scraped: the dataflow's lag behind the log, the log's size on disk.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// Values read at scrape time. The dataflow lag in seconds comes from samples of the durable position (taken by
/// [`EngineGauges::sample`], every 100 ms in `weir serve`): the lag is the age of the oldest sample the statistics
/// have not reached yet, so it is exact to the sampling interval.
pub struct EngineGauges {
    wal_dir: Option<PathBuf>,
    durable_since: Mutex<VecDeque<(u64, Instant)>>,
}

impl EngineGauges {
    pub fn new(wal_dir: Option<PathBuf>) -> Self {
        EngineGauges { wal_dir, durable_since: Mutex::new(VecDeque::new()) }
    }

    /// Notes that `durable` is durable now (if it is new) and forgets samples the statistics have processed.
    pub fn sample(&self, durable: u64, processed: u64) {
        self.sample_at(durable, processed, Instant::now());
    }

    fn sample_at(&self, durable: u64, processed: u64, now: Instant) {
        let Ok(mut samples) = self.durable_since.lock() else { return };
        while samples.front().is_some_and(|&(p, _)| p <= processed) {
            samples.pop_front();
        }
        if durable > processed && samples.back().is_none_or(|&(p, _)| p < durable) {
            samples.push_back((durable, now));
        }
    }

    /// Seconds since the oldest durable position the statistics have not processed was first seen.
    pub fn lag_seconds(&self, processed: u64, now: Instant) -> f64 {
        let Ok(samples) = self.durable_since.lock() else { return 0.0 };
        samples.iter().find(|&&(p, _)| p > processed).map_or(0.0, |&(_, t)| now.duration_since(t).as_secs_f64())
    }

    pub fn wal_bytes(&self) -> Option<u64> {
        let entries = std::fs::read_dir(self.wal_dir.as_ref()?).ok()?;
        Some(entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lag_is_the_age_of_the_oldest_unprocessed_durable_position() {
        let g = EngineGauges::new(None);
        let t0 = Instant::now();
        g.sample_at(5, 0, t0);
        g.sample_at(9, 0, t0 + Duration::from_secs(2));
        assert_eq!(g.lag_seconds(0, t0 + Duration::from_secs(3)), 3.0);
        assert_eq!(g.lag_seconds(5, t0 + Duration::from_secs(3)), 1.0, "5 processed: 9 is the oldest left");
        g.sample_at(9, 9, t0 + Duration::from_secs(4));
        assert_eq!(g.lag_seconds(9, t0 + Duration::from_secs(4)), 0.0);
    }
}
