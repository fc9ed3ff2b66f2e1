//! Running the statistics dataflow: timely workers that tail the WAL, and the queries they answer.
//!
//! The first worker tails the log and feeds its records in rounds, each round at the logical time of its first
//! record's position; the other workers close their inputs and receive their share through the dataflow's exchanges
//! (by device for dedup, by window/series key for the arrangements). Workers share no memory, so the same code runs
//! when timely spreads them over several processes (each process would feed its own log).
//!
//! A query goes to every worker; each answers from its own arrangements once it has processed the requested log
//! position (`after`), and the parts are merged.

mod query;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use differential_dataflow::input::InputSession;
use differential_dataflow::trace::TraceReader;
use timely::dataflow::InputHandleVec;
use timely::progress::frontier::AntichainRef;
use tokio::sync::{oneshot, watch};
use weir_operators::stats::{StatsDataflow, stats_dataflow};
use weir_operators::{DeviceId, Reading, SeriesKey};

pub use query::{Answer, Query, WorkerTraces};

use crate::reading::{ReadingBatch, SensorSet};
use crate::wal::WalReader;
use crate::wal::record::decode_batch;

/// How the statistics run.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// Timely workers (threads).
    pub workers: usize,
    /// Deduplication is exact for duplicates within this much event time behind its series' newest reading.
    pub dedup_horizon: Duration,
    /// How long an idle worker sleeps before it looks at the log again.
    pub idle_park: Duration,
    /// At most this many readings are fed in before the dataflow is stepped.
    pub feed_limit: usize,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            workers: 1,
            dedup_horizon: Duration::from_secs(48 * 3600),
            idle_park: Duration::from_millis(1),
            feed_limit: 16_384,
        }
    }
}

/// A snapshot's readings: batches with the last log position each covers, in non-decreasing positions.
pub type Snapshot = Box<dyn Iterator<Item = (u64, ReadingBatch)> + Send>;

/// Readings the statistics start from instead of the log's first record: a snapshot of everything the log held
/// through `through`, already deduplicated (the archive, once the log before it has been deleted).
pub struct StartFrom {
    /// The last log position the snapshot covers; the log is read after it.
    pub through: u64,
    /// The snapshot's readings.
    pub snapshot: Snapshot,
}

impl StartFrom {
    /// No snapshot: the whole log, from position 1.
    pub fn log_start() -> StartFrom {
        StartFrom { through: 0, snapshot: Box::new(std::iter::empty()) }
    }
}

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("the statistics have not reached log position {after} within {waited:?} (processed so far: {processed})")]
    NotYet { after: u64, waited: Duration, processed: u64 },
    #[error("the statistics engine has stopped")]
    Stopped,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the statistics dataflow: {0}")]
pub struct StartError(String);

struct Request {
    query: Query,
    after: u64,
    reply: oneshot::Sender<Answer>,
}

/// The running statistics dataflow.
pub struct StatsEngine {
    senders: Vec<mpsc::Sender<Request>>,
    processed: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    /// In a mutex only to make the engine `Sync` (the guards are not); touched once, at stop.
    guards: Mutex<Option<timely::communication::initialize::WorkerGuards<()>>>,
}

impl StatsEngine {
    /// Starts `options.workers` workers that tail the log in `wal_dir` from its first record, never past the
    /// `durable` position.
    pub fn start(
        wal_dir: PathBuf,
        durable: watch::Receiver<u64>,
        sensors: SensorSet,
        options: StatsOptions,
    ) -> Result<StatsEngine, StartError> {
        StatsEngine::start_from(wal_dir, durable, sensors, options, StartFrom::log_start())
    }

    /// Like [`StatsEngine::start`], but first feeds `start.snapshot` and then reads the log after `start.through`.
    pub fn start_from(
        wal_dir: PathBuf,
        durable: watch::Receiver<u64>,
        sensors: SensorSet,
        options: StatsOptions,
        start: StartFrom,
    ) -> Result<StatsEngine, StartError> {
        let workers = options.workers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel()).unzip();
        let receivers = Arc::new(Mutex::new(receivers.into_iter().map(Some).collect::<Vec<_>>()));
        let processed = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let stop = Arc::new(AtomicBool::new(false));
        let context = WorkerContext {
            wal_dir,
            durable,
            sensors,
            options,
            processed: processed.clone(),
            stop: stop.clone(),
            start_through: start.through,
            snapshot: Mutex::new(Some(start.snapshot)),
        };
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let requests = receivers.lock().expect("not poisoned")[worker.index()].take().expect("one per worker");
            run_worker(worker, &context, requests);
        })
        .map_err(StartError)?;
        Ok(StatsEngine { senders, processed, stop, guards: Mutex::new(Some(guards)) })
    }

    /// The last log position every worker has processed.
    pub fn processed_position(&self) -> u64 {
        self.processed.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    /// Answers `query` once the statistics include log position `after` (0: at once), waiting at most `wait`.
    pub async fn query(&self, query: Query, after: u64, wait: Duration) -> Result<Answer, QueryError> {
        let mut replies = Vec::with_capacity(self.senders.len());
        for sender in &self.senders {
            let (reply, rx) = oneshot::channel();
            sender.send(Request { query: query.clone(), after, reply }).map_err(|_| QueryError::Stopped)?;
            replies.push(rx);
        }
        let gather = async {
            let mut parts = Vec::with_capacity(replies.len());
            for rx in replies {
                parts.push(rx.await.map_err(|_| QueryError::Stopped)?);
            }
            Answer::merge(parts).ok_or(QueryError::Stopped)
        };
        match tokio::time::timeout(wait, gather).await {
            Ok(answer) => answer,
            Err(_) => Err(QueryError::NotYet { after, waited: wait, processed: self.processed_position() }),
        }
    }

    /// Stops the workers and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let guards = self.guards.lock().map(|mut g| g.take()).unwrap_or(None);
        if let Some(guards) = guards {
            for result in guards.join() {
                if let Err(e) = result {
                    tracing::error!(error = %e, "statistics worker failed");
                }
            }
        }
    }
}

impl Drop for StatsEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

struct WorkerContext {
    wal_dir: PathBuf,
    durable: watch::Receiver<u64>,
    sensors: SensorSet,
    options: StatsOptions,
    processed: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    start_through: u64,
    /// Taken by the feeding worker.
    snapshot: Mutex<Option<Snapshot>>,
}

fn run_worker(worker: &mut timely::worker::Worker, ctx: &WorkerContext, requests: mpsc::Receiver<Request>) {
    let index = worker.index();
    let horizon = i64::try_from(ctx.options.dedup_horizon.as_micros()).unwrap_or(i64::MAX);
    let StatsDataflow { readings, names, windows, latest, device_names, probe } =
        worker.dataflow(|scope| stats_dataflow(scope, horizon));
    let mut traces = WorkerTraces { windows, latest, names: device_names };
    // The first worker of the process reads this process's log and feeds it; the others close their inputs (their
    // work arrives through the exchanges). One feeder keeps the log's order without any coordination.
    let mut feed = if index == 0 {
        Some(LogFeed {
            readings,
            names,
            feeder: Feeder::new(&ctx.sensors),
            reader: WalReader::new(&ctx.wal_dir, ctx.start_through + 1),
            // A snapshot through position 0 holds nothing.
            snapshot: ctx.snapshot.lock().expect("not poisoned").take().filter(|_| ctx.start_through > 0),
            snapshot_through: ctx.start_through,
            snapshot_time: 1,
        })
    } else {
        drop(readings);
        names.close();
        None
    };
    let mut read_through = 0u64;
    let mut pending: Vec<Request> = Vec::new();
    loop {
        if let Some(feed) = feed.as_mut() {
            read_through = feed.round(*ctx.durable.borrow(), read_through, ctx.options.feed_limit);
        }
        // Flow control: work the fed readings through before reading more, so nothing queues up in the dataflow
        // (memory stays at one round of `feed_limit` readings) however far behind the log the statistics are.
        if feed.is_some() && probe.less_than(&(read_through + 1)) {
            worker.step_while(|| probe.less_than(&(read_through + 1)) && !ctx.stop.load(Ordering::Relaxed));
        } else {
            worker.step_or_park(Some(ctx.options.idle_park));
        }

        // Let the arrangements compact up to what is complete: one entry per window, not per reading.
        let frontier = probe.with_frontier(|f| f.first().copied());
        if let Some(f) = frontier {
            let bound = [f];
            traces.windows.set_logical_compaction(AntichainRef::new(&bound));
            traces.windows.set_physical_compaction(AntichainRef::new(&bound));
            traces.latest.set_logical_compaction(AntichainRef::new(&bound));
            traces.latest.set_physical_compaction(AntichainRef::new(&bound));
            traces.names.set_logical_compaction(AntichainRef::new(&bound));
            traces.names.set_physical_compaction(AntichainRef::new(&bound));
        }
        let processed = frontier.map_or(u64::MAX, |f| f.saturating_sub(1));
        ctx.processed[index].store(processed, Ordering::Release);

        pending.extend(requests.try_iter());
        pending.retain_mut(|request| {
            if request.after > processed {
                return !request.reply.is_closed();
            }
            let answer = traces.answer(&request.query);
            let reply = std::mem::replace(&mut request.reply, oneshot::channel().0);
            let _ = reply.send(answer);
            false
        });
        if ctx.stop.load(Ordering::Acquire) {
            break;
        }
    }
}

/// The feeding end of the dataflow: the log reader and the inputs it writes to.
struct LogFeed {
    readings: InputHandleVec<u64, Reading>,
    names: InputSession<u64, (DeviceId, String), isize>,
    feeder: Feeder,
    reader: WalReader,
    /// Fed before the log, while it lasts.
    snapshot: Option<Snapshot>,
    snapshot_through: u64,
    /// The inputs' time while the snapshot is fed.
    snapshot_time: u64,
}

impl LogFeed {
    /// Feeds durable records after `read_through`, up to about `limit` readings, and advances the inputs past them;
    /// returns the new `read_through`. All records of one round share the logical time of the first: the dedup
    /// operator orders readings by `seq` (their write order), so a round is one update per window, not one per
    /// record.
    fn round(&mut self, durable: u64, mut read_through: u64, limit: usize) -> u64 {
        if self.snapshot.is_some() {
            return self.snapshot_round(limit);
        }
        let mut fed = 0usize;
        let mut started = false;
        while fed < limit {
            match self.reader.next_record_through(durable) {
                Ok(Some((position, payload))) => {
                    if !started {
                        self.readings.advance_to(position);
                        self.names.advance_to(position);
                        started = true;
                    }
                    read_through = position;
                    let (readings, names) = (&mut self.readings, &mut self.names);
                    fed += self.feeder.feed(position, payload, &mut |r| readings.send(r), &mut |n| names.insert(n));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "statistics cannot read the write-ahead log");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        self.readings.advance_to(read_through + 1);
        self.names.advance_to(read_through + 1);
        self.readings.flush();
        self.names.flush();
        read_through
    }
}

impl LogFeed {
    /// Feeds snapshot batches up to about `limit` readings, each at the time of the last position it covers
    /// (never going back, never past the snapshot's `through`), then advances the inputs so that the flow control
    /// has something to wait for; returns the position the dataflow must pass before the next round. Once the
    /// snapshot is exhausted the inputs move past `through` and the log takes over.
    fn snapshot_round(&mut self, limit: usize) -> u64 {
        let through = self.snapshot_through;
        let mut time = self.snapshot_time;
        let mut fed = 0usize;
        let snapshot = self.snapshot.as_mut().expect("checked by the caller");
        while fed < limit {
            let Some((last, batch)) = snapshot.next() else {
                self.snapshot = None;
                break;
            };
            time = last.clamp(time, through);
            self.readings.advance_to(time);
            self.names.advance_to(time);
            let (readings, names) = (&mut self.readings, &mut self.names);
            fed += self.feeder.feed_batch(time, &batch, &mut |r| readings.send(r), &mut |n| names.insert(n));
        }
        // Batches covering `through` itself may still follow, so the inputs stop there until the snapshot ends.
        let next = if self.snapshot.is_none() { through + 1 } else { (time + 1).min(through) };
        self.snapshot_time = next;
        self.readings.advance_to(next);
        self.names.advance_to(next);
        self.readings.flush();
        self.names.flush();
        next - 1
    }
}

/// Turns WAL records into dataflow readings: sensor names to configured indexes, device names to ids.
struct Feeder {
    sensors: HashMap<Box<str>, u16>,
    named: HashSet<DeviceId>,
    unknown_sensors_logged: HashSet<Box<str>>,
}

impl Feeder {
    fn new(sensors: &SensorSet) -> Self {
        let sensors = sensors.names().iter().enumerate().map(|(i, n)| (n.clone(), i as u16)).collect();
        Feeder { sensors, named: HashSet::new(), unknown_sensors_logged: HashSet::new() }
    }

    /// Sends the readings of one record; returns how many.
    fn feed(
        &mut self,
        position: u64,
        payload: &[u8],
        send: &mut impl FnMut(Reading),
        name: &mut impl FnMut((DeviceId, String)),
    ) -> usize {
        match decode_batch(payload) {
            Ok(batch) => self.feed_batch(position, &batch, send, name),
            Err(e) => {
                tracing::error!(position, error = %e, "skipping an unreadable WAL record in the statistics");
                0
            }
        }
    }

    /// Sends the readings of one batch, written at `position`; returns how many.
    fn feed_batch(
        &mut self,
        position: u64,
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
        let devices: Vec<DeviceId> = batch.devices.iter().map(|d| DeviceId::of(d)).collect();
        for (id, device) in devices.iter().zip(&batch.devices) {
            if self.named.insert(*id) {
                name((*id, device.to_string()));
            }
        }
        let mut sent = 0;
        for (i, row) in batch.rows.iter().enumerate() {
            let Some(sensor) = sensor_index[row.sensor as usize] else { continue };
            let series = SeriesKey { device: devices[row.device as usize], sensor };
            send(Reading { series, micros: row.micros, value: row.value, seq: Reading::seq_of(position, i as u32) });
            sent += 1;
        }
        sent
    }
}

#[cfg(test)]
mod tests;
