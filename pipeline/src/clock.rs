//! Write order, one for the whole cluster: every WAL record gets a *write time* when it is written, stored in the
//! record, and the first write of a (device, sensor, timestamp) is the reading with the smallest (write time, log
//! position, row). The statistics' deduplication, the archive's seal and every restart apply that one order, so a
//! verdict, once made, never changes.
//!
//! A write time is a hybrid logical clock reading in the dataflow's time domain: microseconds since the Unix epoch
//! times the number of processes, plus the process's index — so a time says which process wrote it (verdicts go
//! back to that process's archiver) and no two processes' times collide. It never goes back: not below the last
//! record of the log (read at open, even if the wall clock stepped back since), not below any time this process
//! has seen from another one ([`WriteClock::observe`], fed from the marks every feeder broadcasts). A process whose
//! wall clock is behind therefore writes after every write it has heard of; writes of one key at two processes
//! within the time a mark takes to travel (about a millisecond) are ordered by their clocks — either may win, but
//! the order is then stored, and nothing decides it again.
//!
//! The statistics feed each record at its write time. To let time pass when nothing is written they need a time
//! below which nothing more will be written: [`WriteClock::safe_time`]. The log's writer takes a group commit's
//! time with [`WriteClock::begin_group`] and releases it with [`WriteClock::end_group`] once the group is durable;
//! meanwhile the safe time stays at the group's time.

use std::sync::{Arc, Mutex, MutexGuard};

/// A logical time of the statistics dataflow (and a write time).
pub type Time = u64;

/// A process's write clock; clones share it (the log's writer and the statistics' feeder hold one each).
#[derive(Clone, Debug)]
pub struct WriteClock {
    state: Arc<Mutex<ClockState>>,
    process: u32,
    processes: u64,
}

#[derive(Debug)]
struct ClockState {
    /// The last time handed out (or observed, moved into this process's slot).
    last: Time,
    /// The time of the group the writer is writing, until it is durable.
    in_flight: Option<Time>,
    /// Added to the wall clock (tests only: a process whose clock is off).
    skew_micros: i64,
}

impl Default for WriteClock {
    /// The clock of a Weir alone (a cluster of one).
    fn default() -> Self {
        WriteClock::new(0, 1)
    }
}

impl WriteClock {
    /// The clock of process `process` of a cluster of `processes`.
    pub fn new(process: u32, processes: usize) -> Self {
        let processes = processes.max(1) as u64;
        let state = ClockState { last: u64::from(process) % processes, in_flight: None, skew_micros: 0 };
        WriteClock { state: Arc::new(Mutex::new(state)), process, processes }
    }

    /// This process's index.
    pub fn process(&self) -> u32 {
        self.process
    }

    /// How many processes the cluster has.
    pub fn processes(&self) -> usize {
        self.processes as usize
    }

    /// Whether `time` is one this process's clock could have handed out (in its slot).
    pub fn is_own(&self, time: Time) -> bool {
        time % self.processes == u64::from(self.process)
    }

    fn state(&self) -> MutexGuard<'_, ClockState> {
        // The state is two numbers, consistent after every statement: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes note of a time another process wrote or fed at (or this process's log's last record, at open): every
    /// later time here is above it.
    pub fn observe(&self, time: Time) {
        let n = self.processes;
        let own = u64::from(self.process);
        // This process's last slot at or below `time`; `next` goes on above it.
        let slot = (time / n) * n + own;
        let below = if slot > time { slot.saturating_sub(n) } else { slot };
        let mut state = self.state();
        state.last = state.last.max(below);
    }

    /// A new time, above every time handed out or observed so far.
    pub fn next(&self) -> Time {
        self.state().next(self.processes)
    }

    /// The writer: the time of the group it is about to write. Until [`Self::end_group`], [`Self::safe_time`]
    /// answers this time.
    pub fn begin_group(&self) -> Time {
        let mut state = self.state();
        let time = state.next(self.processes);
        state.in_flight = Some(time);
        time
    }

    /// The writer: the group begun last is durable (or failed); call it after the durable position is published.
    pub fn end_group(&self) {
        self.state().in_flight = None;
    }

    /// A time `T` such that every record with a write time below `T` is durable now (so the statistics may move
    /// their input to `T` once they have fed the log through the durable position read *after* this call).
    pub fn safe_time(&self) -> Time {
        let mut state = self.state();
        match state.in_flight {
            Some(time) => time,
            None => state.next(self.processes),
        }
    }

    /// Shifts this clock's wall-clock reading (tests: a process whose clock is off).
    #[doc(hidden)]
    pub fn set_skew_micros(&self, micros: i64) {
        self.state().skew_micros = micros;
    }
}

impl ClockState {
    fn next(&mut self, n: u64) -> Time {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / n - 1))
            .saturating_add_signed(self.skew_micros);
        let process = self.last % n;
        let at = now.saturating_mul(n).saturating_add(process);
        self.last = at.max(self.last + n);
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_stay_in_the_process_slot_and_only_go_up() {
        let clock = WriteClock::new(2, 3);
        let mut last = 0;
        for _ in 0..1000 {
            let t = clock.next();
            assert!(t > last && clock.is_own(t));
            last = t;
        }
    }

    #[test]
    fn an_observed_time_from_the_future_is_overtaken() {
        let clock = WriteClock::new(0, 2);
        let far = clock.next() + 10_000_000_001; // another process's slot, ~5 s ahead
        clock.observe(far);
        let t = clock.next();
        assert!(t > far && clock.is_own(t));
    }

    #[test]
    fn a_clock_behind_still_writes_after_what_it_has_seen() {
        let ahead = WriteClock::new(1, 2);
        let behind = WriteClock::new(0, 2);
        behind.set_skew_micros(-6_000_000);
        let seen = ahead.next();
        behind.observe(seen);
        assert!(behind.next() > seen);
    }

    #[test]
    fn the_safe_time_waits_for_the_group_in_flight() {
        let clock = WriteClock::default();
        let group = clock.begin_group();
        assert_eq!(clock.safe_time(), group, "records at the group's time may still come");
        assert_eq!(clock.safe_time(), group);
        clock.end_group();
        let safe = clock.safe_time();
        assert!(safe > group);
        assert!(clock.begin_group() > safe, "a group after a safe time is written above it");
    }
}
