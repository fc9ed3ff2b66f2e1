//! The feeding end of the dataflow: the first worker of each process reads that process's log (after a snapshot,
//! if any) and feeds it in rounds.
//!
//! Each log record is fed at its *write time* (see [`crate::clock`]), stored in the record: the dataflow sees the
//! same times in the same order in every run, so deduplication decides the same in every run and every process.
//! When the log has nothing more, the input moves on to the clock's safe time — every process's feeder does so
//! even when idle, so the frontier moves with time and a round is complete once every process has passed it. Each
//! round also sends a *mark* — (process, last log position fed) — so that every worker learns which log positions
//! of which process a completed time covers.
//!
//! Snapshot rounds (the archive the statistics start from) take small times, below [`SNAPSHOT_TIMES`] and so below
//! every write time: in every process the archive is admitted before any log record.

use std::time::Duration;

use differential_dataflow::input::InputSession;
use hashbrown::{HashMap, HashSet};
use timely::dataflow::InputHandleVec;
use tokio::sync::watch;
use weir_operators::{DeviceId, NameId, Reading, SensorId, SeriesKey, Time, Verdict};

use super::{Snapshot, SnapshotBatch};
use crate::clock::WriteClock;
use crate::devices::DeviceNames;
use crate::reading::{NameTable, Row, SensorSet};
use crate::wal::WalReader;

/// A position mark: `(process, position)` — the process's log has been fed through `position`.
pub type Mark = (u32, u64);

/// Times below this are snapshot rounds; every write time is far above it (microseconds since 1970).
pub const SNAPSHOT_TIMES: Time = 1 << 40;

/// The dataflow inputs a feeder sends to: readings, device names, marks.
pub type FeedInputs = (
    InputHandleVec<Time, Reading>,
    InputSession<Time, (NameId, String), isize>,
    InputHandleVec<Time, Mark>,
    InputHandleVec<Time, Verdict>,
);

/// The inputs of one process's feeder and what it reads.
pub struct LogFeed {
    pub readings: InputHandleVec<Time, Reading>,
    pub names: InputSession<Time, (NameId, String), isize>,
    pub marks: InputHandleVec<Time, Mark>,
    /// Verdicts made before this start (from the snapshot).
    pub judged: InputHandleVec<Time, Verdict>,
    /// The snapshot's verdicts, held until the first log round: above every snapshot round of every process, so
    /// that the windows they count in exist by then (in a cluster another process may feed a window's readings).
    pub earlier: Vec<Verdict>,
    pub feeder: Feeder,
    pub reader: WalReader,
    /// How far the log is durable.
    pub durable: watch::Receiver<u64>,
    /// The log writer's clock: this process's index, and the safe time to move on to.
    pub clock: WriteClock,
    /// The time the inputs are at: readings are sent at it or later. Always in this process's slot of times.
    pub time: Time,
    /// The time of the last readings fed (what flow control waits for; the inputs may be far past it).
    pub fed_at: Time,
    /// Fed before the log, while it lasts.
    pub snapshot: Option<Snapshot>,
    /// The last log position the snapshot covers.
    pub snapshot_through: u64,
    /// The last log position fed (from the snapshot or the log).
    pub read_through: u64,
    /// The last position a mark was sent for, and the time it was sent at.
    pub marked: u64,
    pub marked_at: Time,
    /// The position of the last snapshot batch fed, and how many rows were fed at it.
    pub snapshot_at: (u64, u32),
    /// The arrangements' grid: a mark counts once the inputs pass its time moved onto it.
    pub grid: Time,
}

impl LogFeed {
    /// Inputs at this process's first snapshot time, nothing fed yet.
    pub fn new(
        inputs: FeedInputs,
        feeder: Feeder,
        reader: WalReader,
        durable: watch::Receiver<u64>,
        clock: WriteClock,
        start: (Option<Snapshot>, u64),
        grid: Time,
    ) -> Self {
        let (readings, names, marks, judged) = inputs;
        let (snapshot, snapshot_through) = start;
        let time = u64::from(clock.process());
        LogFeed {
            readings,
            names,
            marks,
            judged,
            earlier: Vec::new(),
            feeder,
            reader,
            durable,
            clock,
            time,
            fed_at: 0,
            read_through: if snapshot.is_some() { 0 } else { snapshot_through },
            snapshot,
            snapshot_through,
            marked: 0,
            marked_at: 0,
            snapshot_at: (u64::MAX, 0),
            grid,
        }
    }

    /// Feeds one round: snapshot batches while the snapshot lasts (at the next snapshot time), else the durable log
    /// records after `read_through`, up to about `limit` readings, each at its write time; then a mark, and — once
    /// the log is read to its end — the inputs move on to the clock's safe time. Returns the number of readings fed.
    ///
    /// A mark is only ever sent at a log time, never at a snapshot round's: in a cluster the readings of a
    /// process's log prefix may sit in *another* process's snapshot (the sealed days it owns), fed at later snapshot
    /// times, so "this process's log through P is processed" holds only once every snapshot round of every process
    /// is (all of them are below every log time).
    pub fn round(&mut self, limit: usize) -> usize {
        if self.snapshot.is_some() {
            self.time += self.clock.processes() as u64;
            debug_assert!(self.time < SNAPSHOT_TIMES, "more snapshot rounds than snapshot times");
            self.move_to(self.time);
            let fed = self.snapshot_round(limit);
            self.fed_at = self.time;
            // Past the round, so that it completes; the next round's time is above this.
            self.move_to(self.time + 1);
            self.flush();
            return fed;
        }
        if self.time < SNAPSHOT_TIMES {
            // The first log round: above every snapshot round of every process.
            let n = self.clock.processes() as u64;
            self.time = SNAPSHOT_TIMES.next_multiple_of(n) + u64::from(self.clock.process());
            self.move_to(self.time);
            for mut verdict in std::mem::take(&mut self.earlier) {
                verdict.time = self.time;
                self.judged.send(verdict);
            }
        }
        // The safe time before the durable position: every record written below it is durable by then, so once
        // the log is read through that position nothing can come below it any more.
        let safe = self.clock.safe_time();
        let durable = *self.durable.borrow();
        let (fed, exhausted) = self.log_round(durable, limit);
        if self.read_through != self.marked {
            self.move_to(self.time);
            self.marks.send((self.clock.process(), self.read_through));
            self.marked = self.read_through;
            self.marked_at = self.time;
        }
        if exhausted {
            self.time = self.time.max(safe);
        }
        self.move_to(self.time);
        self.flush();
        fed
    }

    /// Whether a round is needed although nothing is left to read: the snapshot is done but no log round has
    /// followed it yet (so the frontier would stay below [`SNAPSHOT_TIMES`] and the snapshot would never count as
    /// loaded), the position reached is not marked yet, or the inputs have not passed the last mark's time on the
    /// arrangements' grid yet (the mark counts once they have: rounds go on, each moving to the safe time, until
    /// the clock has passed it — at most one grid cell).
    pub fn needs_round(&self) -> bool {
        self.snapshot.is_none()
            && (self.time < SNAPSHOT_TIMES
                || self.read_through != self.marked
                || weir_operators::stats::on_grid(self.marked_at, self.grid) >= self.time)
    }

    /// Lets time pass for the rest of the cluster without reading: the inputs move to the safe time if the log is
    /// fed through what is durable (otherwise the next round reads it first).
    pub fn pass_time(&mut self) {
        if self.snapshot.is_some() || self.time < SNAPSHOT_TIMES {
            return;
        }
        let safe = self.clock.safe_time();
        if self.read_through >= *self.durable.borrow() {
            self.time = self.time.max(safe);
            self.move_to(self.time);
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.readings.flush();
        self.names.flush();
        self.marks.flush();
        self.judged.flush();
    }

    fn move_to(&mut self, time: Time) {
        self.readings.advance_to(time);
        self.names.advance_to(time);
        self.marks.advance_to(time);
        self.judged.advance_to(time);
    }

    /// Feeds durable records after `read_through` up to about `limit` readings, each at its write time (a record
    /// without one — from an older log — at the current time). Returns how many readings, and whether the log is
    /// read through `durable`.
    fn log_round(&mut self, durable: u64, limit: usize) -> (usize, bool) {
        let mut fed = 0usize;
        while fed < limit {
            match self.reader.next_view_through(durable) {
                Ok(Some((position, batch))) => {
                    self.read_through = position;
                    if self.clock.is_own(batch.written) && batch.written > self.time {
                        // `move_to`, field by field: the record borrows the reader.
                        self.time = batch.written;
                        self.readings.advance_to(self.time);
                        self.names.advance_to(self.time);
                        self.marks.advance_to(self.time);
                        self.judged.advance_to(self.time);
                    }
                    self.fed_at = self.time;
                    let (readings, names) = (&mut self.readings, &mut self.names);
                    fed += self.feeder.feed_batch(
                        position,
                        0,
                        (&batch.sensors, &batch.devices),
                        batch.rows(),
                        &mut |r| readings.send(r),
                        &mut |n| names.insert(n),
                    );
                }
                Ok(None) => return (fed, self.read_through >= durable),
                Err(e) => {
                    tracing::error!(error = %e, "statistics cannot read the write-ahead log");
                    std::thread::sleep(Duration::from_millis(100));
                    return (fed, false);
                }
            }
        }
        (fed, self.read_through >= durable)
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
            let (readings, names, earlier) = (&mut self.readings, &mut self.names, &mut self.earlier);
            match batch {
                SnapshotBatch::Readings(batch) => {
                    self.snapshot_at.1 = first_row.saturating_add(u32::try_from(batch.len()).unwrap_or(u32::MAX));
                    fed += self.feeder.feed_batch(
                        position,
                        first_row,
                        (&name_list(&batch.sensors), &name_list(&batch.devices)),
                        batch.rows.iter().copied(),
                        &mut |r| readings.send(r),
                        &mut |n| names.insert(n),
                    );
                }
                SnapshotBatch::Judged(admission, batch) => {
                    let time = self.time;
                    self.feeder.feed_batch(
                        position,
                        0,
                        (&name_list(&batch.sensors), &name_list(&batch.devices)),
                        batch.rows.iter().copied(),
                        &mut |r: Reading| {
                            earlier.push(Verdict { time, seq: r.seq, series: r.series, micros: r.micros, admission })
                        },
                        &mut |n| names.insert(n),
                    );
                }
            }
        }
        fed
    }
}

/// A snapshot batch's names as the feeder reads a log record's (one allocation a batch, none a name).
fn name_list(table: &NameTable) -> Vec<&str> {
    table.iter().collect()
}

/// Turns WAL records into dataflow readings: sensor and device names to ids.
pub struct Feeder {
    sensors: SensorSet,
    /// The sensor names met so far with their ids (`None`: not in the configured set, left out).
    sensor_ids: HashMap<Box<str>, Option<SensorId>>,
    names: DeviceNames,
    /// The names already sent to the dataflow: looked up for every device name of every record, so with
    /// hashbrown's fast hasher (std's SipHash made it ~1.3 % of the server at 400 k readings/s).
    named: HashSet<NameId>,
    /// Records up to this log position (and every snapshot batch) were stored before this process started: their
    /// series are counted against `--max-series` as they are fed. Later records were claimed by this process's
    /// ingest before they were written, so counting them again would only cost a lookup a reading.
    note_through: u64,
}

impl Feeder {
    /// A feeder into `names`, counting the series of records through log position `note_through` (the log's
    /// durable end when the process started).
    pub fn new(sensors: &SensorSet, names: DeviceNames, note_through: u64) -> Self {
        Feeder { sensors: sensors.clone(), sensor_ids: HashMap::new(), names, named: HashSet::new(), note_through }
    }

    /// Sends the readings of one batch, written at `position` from its row `first_row` on (0 for a log record; a
    /// snapshot's batches that share a position go on numbering); returns how many. A reading's `seq` is its write
    /// order: (position, row). The batch is its name tables and its rows (a log record's read in place: see
    /// [`crate::wal::BatchView`]).
    pub fn feed_batch<S: AsRef<str>>(
        &mut self,
        position: u64,
        first_row: u32,
        (sensor_names, device_names): (&[S], &[S]),
        rows: impl Iterator<Item = Row>,
        send: &mut impl FnMut(Reading),
        name: &mut impl FnMut((NameId, String)),
    ) -> usize {
        let sensor_ids: Vec<Option<SensorId>> = sensor_names
            .iter()
            .map(|s| {
                let s = s.as_ref();
                if let Some(id) = self.sensor_ids.get(s) {
                    return *id;
                }
                let id = match self.sensors.check(s) {
                    Ok(()) => Some(SensorId::of(s)),
                    Err(_) => {
                        tracing::warn!(sensor = %s, "the log holds readings of a sensor that is no longer configured; they are left out of the statistics");
                        None
                    }
                };
                self.sensor_ids.insert(s.into(), id);
                id
            })
            .collect();
        for (id, sensor) in sensor_ids.iter().zip(sensor_names) {
            if let Some(id) = id
                && self.named.insert(NameId::Sensor(*id))
            {
                name((NameId::Sensor(*id), sensor.as_ref().to_owned()));
            }
        }
        let devices: Vec<DeviceId> = self
            .names
            .claim_all(device_names)
            .into_iter()
            .zip(device_names)
            .map(|(claimed, d)| {
                let d = d.as_ref();
                claimed.unwrap_or_else(|taken| {
                    // Only possible for names stored at different processes of a cluster: ingest refuses the rest.
                    tracing::error!(device = %d, holder = %taken.holder, "two stored device names share one id; their statistics merge");
                    metrics::counter!("weir_device_id_collisions_total").increment(1);
                    DeviceId::of(d)
                })
            })
            .collect();
        for (id, device) in devices.iter().zip(device_names) {
            if self.named.insert(NameId::Device(*id)) {
                name((NameId::Device(*id), device.as_ref().to_owned()));
            }
        }
        let mut sent = 0;
        // The series stored count against --max-series (each noted once per batch).
        let note = position <= self.note_through;
        let mut noted = crate::reading::SeriesBits::default();
        for (i, row) in rows.enumerate() {
            let Some(sensor) = sensor_ids[usize::from(row.sensor)] else { continue };
            let sensor_name = || sensor_names[usize::from(row.sensor)].as_ref();
            if note
                && noted.insert(row.device, row.sensor, sensor_ids.len())
                && let Err(refused) = self.names.note_series(device_names[row.device as usize].as_ref(), sensor_name())
            {
                // Only possible for names stored at different processes of a cluster: ingest refuses the rest.
                tracing::error!(sensor = %sensor_name(), %refused, "two stored sensor names share one id; their statistics merge");
                metrics::counter!("weir_sensor_id_collisions_total").increment(1);
            }
            let series = SeriesKey { device: devices[row.device as usize], sensor };
            let row_number = first_row.saturating_add(i as u32);
            send(Reading { series, micros: row.micros, value: row.value, seq: Reading::seq_of(position, row_number) });
            sent += 1;
        }
        sent
    }
}
