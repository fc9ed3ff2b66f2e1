//! The feeding end of the dataflow: the first worker of each process reads that process's log (after a snapshot,
//! if any) and feeds it in rounds.
//!
//! A round's logical time comes from a [`RoundClock`]: the feeder's clock in microseconds, never going back. Every
//! feeder of a cluster advances its inputs with its clock even when idle, so the frontier moves with time and a
//! round is complete once every process's clock has passed it. Each round also sends a *mark* — (process, last log
//! position fed) — so that every worker learns which log positions of which process a completed time covers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use differential_dataflow::input::InputSession;
use timely::dataflow::InputHandleVec;
use weir_operators::{DeviceId, Reading, SeriesKey, Time};

use super::Snapshot;
use crate::devices::DeviceNames;
use crate::reading::{ReadingBatch, SensorSet};
use crate::wal::WalReader;

/// A position mark: `(process, position)` — the process's log has been fed through `position`.
pub type Mark = (u32, u64);

/// Logical times for rounds. Log rounds: the feeder's clock in microseconds since the Unix epoch, times the number
/// of processes, plus this process's index — so a time says which process fed it (`time % processes`), and times
/// of different processes never collide. Snapshot rounds (while `in_snapshot`): small times, below every log
/// round's, so that in every process the archive is admitted before any log record. Strictly increasing.
///
/// A hybrid logical clock: a round's time is also above every time [`RoundClock::observe`]d from the other
/// processes (their marks). A process whose clock is behind therefore catches up with the newest round it has
/// seen, instead of holding the whole cluster's frontier — and every read waiting for a position — back by its
/// skew.
#[derive(Debug)]
pub struct RoundClock {
    last: Time,
    processes: u64,
    /// Set while the feeder reads its snapshot.
    pub in_snapshot: bool,
    /// Added to the wall clock (tests only: a process whose clock is off).
    #[cfg(test)]
    pub skew_micros: i64,
}

/// Times below this are snapshot rounds.
pub const SNAPSHOT_TIMES: Time = 1 << 40;

impl RoundClock {
    pub fn new(process: u32, processes: usize) -> Self {
        RoundClock {
            last: u64::from(process),
            processes: processes.max(1) as u64,
            in_snapshot: false,
            #[cfg(test)]
            skew_micros: 0,
        }
    }

    /// Takes note of a time another process fed a round at: later rounds here come after it.
    pub fn observe(&mut self, time: Time) {
        if time < SNAPSHOT_TIMES || self.in_snapshot {
            return;
        }
        let n = self.processes;
        let process = self.last % n;
        // The last time of this process's slot before `time`; `next` goes on from there.
        let slot = (time / n) * n + process;
        let below = if slot >= time { slot.saturating_sub(n) } else { slot };
        self.last = self.last.max(below);
    }

    /// The time of the next round.
    pub fn next(&mut self) -> Time {
        let n = self.processes;
        if self.in_snapshot && self.last + n < SNAPSHOT_TIMES {
            self.last += n;
            return self.last;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / n - 1));
        #[cfg(test)]
        let now = now.saturating_add_signed(self.skew_micros);
        let process = self.last % n;
        let at = now.saturating_mul(n).saturating_add(process);
        self.last = at.max(self.last + n);
        self.last
    }

    /// Which process a time of a cluster of `processes` belongs to.
    pub fn process_of(time: Time, processes: usize) -> u32 {
        (time % processes.max(1) as u64) as u32
    }
}

/// The inputs of one process's feeder and what it reads.
pub struct LogFeed {
    pub process: u32,
    pub readings: InputHandleVec<Time, Reading>,
    pub names: InputSession<Time, (DeviceId, String), isize>,
    pub marks: InputHandleVec<Time, Mark>,
    pub feeder: Feeder,
    pub reader: WalReader,
    /// Fed before the log, while it lasts.
    pub snapshot: Option<Snapshot>,
    /// The last log position the snapshot covers.
    pub snapshot_through: u64,
    /// The last log position fed (from the snapshot or the log).
    pub read_through: u64,
    /// The last position a mark was sent for.
    pub marked: u64,
    /// The position of the last snapshot batch fed, and how many rows were fed at it.
    pub snapshot_at: (u64, u32),
    /// Whether a log round has been fed (its time is past every snapshot round's, in every process).
    pub past_snapshot: bool,
}

impl LogFeed {
    /// Feeds one round at `time`: snapshot batches while the snapshot lasts, else durable log records after
    /// `read_through`, up to about `limit` readings; then a mark, and the inputs advance past `time`. Returns the
    /// number of readings fed.
    ///
    /// A mark is only ever sent at a log round's time, never at a snapshot round's: in a cluster the readings of a
    /// process's log prefix may sit in *another* process's snapshot (the sealed days it owns), fed at later snapshot
    /// times, so "this process's log through P is processed" holds only once every snapshot round of every process
    /// is (all of them are below every log round's time).
    pub fn round(&mut self, time: Time, durable: u64, limit: usize) -> usize {
        self.move_to(time);
        let fed = if self.snapshot.is_some() { self.snapshot_round(limit) } else { self.log_round(durable, limit) };
        if time >= SNAPSHOT_TIMES {
            self.past_snapshot = true;
            if self.read_through != self.marked {
                self.marks.send((self.process, self.read_through));
                self.marked = self.read_through;
            }
        }
        self.advance(time + 1);
        fed
    }

    /// Whether a round is needed although nothing is left to read: the snapshot is done but no log round has
    /// followed it yet (so the frontier would stay below [`SNAPSHOT_TIMES`] and the snapshot would never count as
    /// loaded), or the position reached is not marked yet.
    pub fn needs_round(&self) -> bool {
        self.snapshot.is_none() && (!self.past_snapshot || self.read_through != self.marked)
    }

    /// Moves the inputs to `time` without feeding anything: lets time pass for the rest of the cluster.
    pub fn advance(&mut self, time: Time) {
        self.move_to(time);
        self.readings.flush();
        self.names.flush();
        self.marks.flush();
    }

    fn move_to(&mut self, time: Time) {
        self.readings.advance_to(time);
        self.names.advance_to(time);
        self.marks.advance_to(time);
    }

    fn log_round(&mut self, durable: u64, limit: usize) -> usize {
        let mut fed = 0usize;
        while fed < limit {
            match self.reader.next_batch_through(durable) {
                Ok(Some((position, batch))) => {
                    self.read_through = position;
                    let (readings, names) = (&mut self.readings, &mut self.names);
                    fed += self
                        .feeder
                        .feed_batch(position, 0, &batch, &mut |r| readings.send(r), &mut |n| names.insert(n));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "statistics cannot read the write-ahead log");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        fed
    }

    /// Feeds snapshot batches up to about `limit` readings. The mark moves to the snapshot's `through` only once
    /// the snapshot is exhausted: until then no log position counts as processed.
    fn snapshot_round(&mut self, limit: usize) -> usize {
        let mut fed = 0usize;
        let snapshot = self.snapshot.as_mut().expect("checked by the caller");
        while fed < limit {
            let Some((last, batch)) = snapshot.next() else {
                self.snapshot = None;
                self.read_through = self.snapshot_through;
                break;
            };
            let position = last.min(self.snapshot_through);
            // Write order among the batches that share a position (a part's, and every part capped at `through`):
            // row numbers go on across them, so no two rows share a `seq` and a later row never sorts first.
            if position != self.snapshot_at.0 {
                self.snapshot_at = (position, 0);
            }
            let first_row = self.snapshot_at.1;
            self.snapshot_at.1 = first_row.saturating_add(u32::try_from(batch.len()).unwrap_or(u32::MAX));
            let (readings, names) = (&mut self.readings, &mut self.names);
            fed += self
                .feeder
                .feed_batch(position, first_row, &batch, &mut |r| readings.send(r), &mut |n| names.insert(n));
        }
        fed
    }
}

/// Turns WAL records into dataflow readings: sensor names to configured indexes, device names to ids.
pub struct Feeder {
    sensors: HashMap<Box<str>, u16>,
    names: DeviceNames,
    named: HashSet<DeviceId>,
    unknown_sensors_logged: HashSet<Box<str>>,
}

impl Feeder {
    pub fn new(sensors: &SensorSet, names: DeviceNames) -> Self {
        let sensors = sensors.names().iter().enumerate().map(|(i, n)| (n.clone(), i as u16)).collect();
        Feeder { sensors, names, named: HashSet::new(), unknown_sensors_logged: HashSet::new() }
    }

    /// Sends the readings of one batch, written at `position` from its row `first_row` on (0 for a log record; a
    /// snapshot's batches that share a position go on numbering); returns how many. A reading's `seq` is its write
    /// order: (position, row).
    pub fn feed_batch(
        &mut self,
        position: u64,
        first_row: u32,
        batch: &ReadingBatch,
        send: &mut impl FnMut(Reading),
        name: &mut impl FnMut((DeviceId, String)),
    ) -> usize {
        let sensor_index: Vec<Option<u16>> = batch
            .sensors
            .iter()
            .map(|s| {
                let index = self.sensors.get(s).copied();
                if index.is_none() && self.unknown_sensors_logged.insert(s.clone()) {
                    tracing::warn!(sensor = %s, "the log holds readings of a sensor that is no longer configured; they are left out of the statistics");
                }
                index
            })
            .collect();
        let devices: Vec<DeviceId> = batch
            .devices
            .iter()
            .map(|d| {
                self.names.claim(d).unwrap_or_else(|taken| {
                    // Only possible for names stored at different processes of a cluster: ingest refuses the rest.
                    tracing::error!(device = %d, holder = %taken.holder, "two stored device names share one id; their statistics merge");
                    metrics::counter!("weir_device_id_collisions_total").increment(1);
                    DeviceId::of(d)
                })
            })
            .collect();
        for (id, device) in devices.iter().zip(&batch.devices) {
            if self.named.insert(*id) {
                name((*id, device.to_string()));
            }
        }
        let mut sent = 0;
        for (i, row) in batch.rows.iter().enumerate() {
            let Some(sensor) = sensor_index[row.sensor as usize] else { continue };
            let series = SeriesKey { device: devices[row.device as usize], sensor };
            let row_number = first_row.saturating_add(i as u32);
            send(Reading { series, micros: row.micros, value: row.value, seq: Reading::seq_of(position, row_number) });
            sent += 1;
        }
        sent
    }
}
