//! Running the statistics dataflow: timely workers that tail the WAL, and the queries they answer.
//!
//! The first worker of each process tails that process's log and feeds it in rounds (see [`feed`]); the other
//! workers receive their share through the dataflow's exchanges (by device for dedup, by window/series key for the
//! arrangements). Workers share no memory, so the same code runs when timely spreads them over several processes
//! ([`crate::cluster`]): each process feeds its own log, and every reading reaches the worker that owns its device,
//! wherever it runs.
//!
//! A query enters at the asking process and goes to every worker of the cluster (see [`answers`]); each answers
//! from its own arrangements once it has processed the requested log position, and the parts are merged.
//!
//! A worker with nothing to do sleeps: the log's writer rings the feeding worker's doorbell
//! ([`crate::wal::Doorbell`]) once more is durable, a query rings it when asked, and timely wakes the others for
//! their messages. Only a feeder with marks still to pass (see [`feed::LogFeed::needs_round`]) or in a cluster
//! (the others' rounds complete as its time passes) wakes every [`StatsOptions::idle_park`].

mod answers;
mod changes;
mod feed;
mod positions;
mod query;
mod stopping;
mod verdicts;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use differential_dataflow::trace::TraceReader;
use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect, Probe};
use timely::progress::frontier::AntichainRef;
use tokio::sync::oneshot;
use weir_operators::WindowKey;
use weir_operators::stats::{StatsDataflow, on_grid, stats_dataflow};

pub use answers::ArchiveControl;
use changes::RecentChanges;
pub use query::{Answer, ArchiveState, Query, WindowFilter, WorkerTraces};

use crate::cluster::{ClusterConfig, ClusterError};
use crate::devices::DeviceNames;
use crate::reading::{ReadingBatch, SensorSet};
use crate::wal::{Doorbell, LogTail, WalReader};
use answers::{ArchiveAnswerer, QueryRequest, Waiting, query_dataflow};
use feed::{Feeder, LogFeed, Mark};
use positions::Positions;
use stopping::{STOP_BARRIER_WAIT, StopBarrier};
use verdicts::verdicts_to_their_process;
pub use verdicts::{DedupVerdicts, Verdicts};

/// Admitted readings reach the arrangements on a grid of this many microseconds of write time (see
/// `weir_operators::stats::stats_dataflow`): what a read waits at most beyond the data, for far less merging.
pub const ARRANGEMENT_GRID_MICROS: u64 = 20_000;

/// How the statistics run.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    /// Timely workers (threads) in this process.
    pub workers: usize,
    /// Deduplication is exact for duplicates within this much event time behind its series' newest reading.
    pub dedup_horizon: Duration,
    /// A series keeps its windows in memory for the days within this much event time behind its newest reading
    /// (and for every day whose rollups are not written yet, see [`StatsEngine::set_rolled_through`]); `None`: all.
    pub live_horizon: Option<Duration>,
    /// How often a worker wakes while time must pass for its work to go on: in a cluster, and while the feeder's
    /// marks wait for the clock.
    pub idle_park: Duration,
    /// How long a worker with nothing to do sleeps when nothing wakes it (the log's doorbell, a query, timely's
    /// messages and the stop do): only a bound, in case a wake-up is missed.
    pub quiet_park: Duration,
    /// At most this many readings are fed in before the dataflow is stepped.
    pub feed_limit: usize,
    /// The cluster this process is part of; `None`: a single process.
    pub cluster: Option<ClusterConfig>,
    /// The device names this process knows, filled as the log and the archive are fed (shared with ingest, which
    /// refuses a name whose id another holds).
    pub device_names: DeviceNames,
    /// The window widths whose live windows carry a quantile sketch (percentiles); the others answer none.
    pub sketch_widths: Vec<weir_operators::Width>,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            workers: 1,
            dedup_horizon: Duration::from_secs(48 * 3600),
            live_horizon: None,
            idle_park: Duration::from_millis(1),
            quiet_park: Duration::from_millis(100),
            feed_limit: 16_384,
            cluster: None,
            device_names: DeviceNames::default(),
            sketch_widths: weir_operators::live::DEFAULT_SKETCHED_WIDTHS.to_vec(),
        }
    }
}

impl StatsOptions {
    fn process(&self) -> u32 {
        self.cluster.as_ref().map_or(0, |c| c.process as u32)
    }

    fn processes(&self) -> usize {
        self.cluster.as_ref().map_or(1, |c| c.processes())
    }
}

/// A snapshot's readings: batches with the last log position each covers, in non-decreasing positions.
pub type Snapshot = Box<dyn Iterator<Item = (u64, SnapshotBatch)> + Send>;

/// What a snapshot feeds.
#[derive(Debug, Clone)]
pub enum SnapshotBatch {
    /// First writes, fed like the log's readings.
    Readings(ReadingBatch),
    /// Readings deduplication judged ([`Admission::Late`] or [`Admission::Duplicate`](weir_operators::Admission))
    /// before this start: counted into the live windows' late and duplicate counts, nothing else. Fed after every
    /// batch of readings (a verdict counts in a window that exists).
    Judged(weir_operators::Admission, ReadingBatch),
}

/// Readings the statistics start from instead of the log's first record: a snapshot of everything the log held
/// through `through`, already deduplicated (the archive, once the log before it has been deleted).
pub struct StartFrom {
    /// The last log position the snapshot covers; the log is read after it.
    pub through: u64,
    /// The snapshot's readings.
    pub snapshot: Snapshot,
    /// Where the live windows start (a day's start, event time): the snapshot left out the days before it (they
    /// are in the archive's rollups), so every series is live from there. `None`: from the beginning.
    pub live_from: Option<i64>,
}

impl StartFrom {
    /// No snapshot: the whole log, from position 1.
    pub fn log_start() -> StartFrom {
        StartFrom { through: 0, snapshot: Box::new(std::iter::empty()), live_from: None }
    }
}

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `processed` is known for this process's own log only (`None` for another process's).
    #[error("the statistics have not reached log position {} within {waited:?}{}", position_text(*process, *after), processed.map(|p| format!(" (processed so far: {p})")).unwrap_or_default())]
    NotYet { process: Option<u32>, after: u64, waited: Duration, processed: Option<u64> },
    #[error("the statistics engine has stopped")]
    Stopped,
}

/// `POS`, or `PROCESS:POS` for another process's log.
fn position_text(process: Option<u32>, position: u64) -> String {
    match process {
        None => position.to_string(),
        Some(p) => format!("{p}:{position}"),
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the statistics dataflow: {0}")]
    Timely(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "the log's write clock is process {clock_process} of {clock_processes}, but the statistics run as process \
         {process} of {processes}: open the log with the cluster's clock (WalOptions::clock)"
    )]
    ClockMismatch { clock_process: u32, clock_processes: usize, process: u32, processes: usize },
}

/// A query handed to this process's feeding worker.
struct Request {
    query: Query,
    process: u32,
    after: u64,
    /// How long the asker waits.
    wait: Duration,
    reply: oneshot::Sender<Answer>,
}

/// The running statistics dataflow.
pub struct StatsEngine {
    /// To this process's feeding worker, which puts queries into the query dataflow.
    sender: Mutex<mpsc::Sender<Request>>,
    /// Per local worker, the last position of this process's log it knows processed.
    processed: Arc<Vec<AtomicU64>>,
    /// Per local worker, whether it has worked through every process's snapshot.
    loaded: Arc<Vec<AtomicBool>>,
    process: u32,
    stop: Arc<AtomicBool>,
    verdicts: Arc<Verdicts>,
    archive: Arc<OnceLock<Arc<dyn ArchiveControl>>>,
    /// What the live windows hold and how far the archive's rollups reach (shared with the workers).
    live: Arc<LiveState>,
    /// The names of the devices and sensors this process has stored or read (shared with ingest).
    names: DeviceNames,
    /// The widths whose live windows carry a quantile sketch.
    sketch_widths: Vec<weir_operators::Width>,
    /// Wakes the feeding worker: rung when a query is asked and at the stop.
    doorbell: Doorbell,
    /// In a mutex only to make the engine `Sync` (the guards are not); touched once, at stop.
    guards: Mutex<Option<timely::communication::initialize::WorkerGuards<()>>>,
}

impl StatsEngine {
    /// Starts `options.workers` workers that tail the log from its first record, never past its durable position.
    pub fn start(tail: LogTail, sensors: SensorSet, options: StatsOptions) -> Result<StatsEngine, StartError> {
        StatsEngine::start_from(tail, sensors, options, StartFrom::log_start())
    }

    /// Like [`StatsEngine::start`], but first feeds `start.snapshot` and then reads the log after `start.through`.
    /// In a cluster this waits (bounded) for the other processes to connect.
    pub fn start_from(
        tail: LogTail,
        sensors: SensorSet,
        options: StatsOptions,
        start: StartFrom,
    ) -> Result<StatsEngine, StartError> {
        if (tail.clock.process(), tail.clock.processes()) != (options.process(), options.processes()) {
            return Err(StartError::ClockMismatch {
                clock_process: tail.clock.process(),
                clock_processes: tail.clock.processes(),
                process: options.process(),
                processes: options.processes(),
            });
        }
        let workers = options.workers.max(1);
        let (sender, requests) = mpsc::channel();
        let processed = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let loaded = Arc::new((0..workers).map(|_| AtomicBool::new(false)).collect::<Vec<_>>());
        let stop = Arc::new(AtomicBool::new(false));
        let process = options.process();
        let verdicts = Arc::new(Verdicts::new(processed.clone()));
        let archive = Arc::new(OnceLock::new());
        let cluster = options.cluster.clone();
        let live = Arc::new(LiveState::new(workers));
        let names = options.device_names.clone();
        let sketch_widths = options.sketch_widths.clone();
        let processes = options.processes();
        let doorbell = tail.doorbell.clone();
        let context = WorkerContext {
            live: live.clone(),
            tail,
            sensors,
            options,
            processed: processed.clone(),
            loaded: loaded.clone(),
            stop: stop.clone(),
            stopping: Arc::new(StopBarrier::new(processes)),
            start_through: start.through,
            live_from: start.live_from,
            snapshot: Mutex::new(Some(start.snapshot)),
            requests: Mutex::new(Some(requests)),
            verdicts: verdicts.clone(),
            archive: archive.clone(),
        };
        let run = move |worker: &mut timely::worker::Worker| run_worker(worker, &context);
        let guards = match cluster {
            None => timely::execute(timely::Config::process(workers), run).map_err(StartError::Timely)?,
            Some(cluster) => cluster.execute(workers, run)?,
        };
        Ok(StatsEngine {
            sender: Mutex::new(sender),
            processed,
            loaded,
            process,
            stop,
            verdicts,
            archive,
            live,
            names,
            sketch_widths,
            doorbell,
            guards: Mutex::new(Some(guards)),
        })
    }

    /// Days ending at or before `micros` (event time) have their rollups in the archive: their windows may leave
    /// memory once they are beyond the live horizon. Only moves forward.
    pub fn set_rolled_through(&self, micros: i64) {
        self.live.rolled_through.fetch_max(micros, Ordering::AcqRel);
    }

    /// The widths whose live windows carry a quantile sketch (`--sketch-widths`).
    pub fn sketch_widths(&self) -> &[weir_operators::Width] {
        &self.sketch_widths
    }

    /// What the live windows hold in this process, over its workers.
    pub fn live_windows(&self) -> LiveWindowsSize {
        self.live.size()
    }

    /// The names of the devices and sensors this process has stored or read from its log and archive.
    pub fn names(&self) -> &DeviceNames {
        &self.names
    }

    /// This process's index in its cluster (0 alone).
    pub fn process(&self) -> u32 {
        self.process
    }

    /// Which readings of this process's log deduplication dropped (what its archive must leave out).
    pub fn verdicts(&self) -> Arc<Verdicts> {
        self.verdicts.clone()
    }

    /// Lets the cluster ask this process's archive where it stands ([`Query::Archive`]); set once.
    pub fn attach_archive(&self, control: Arc<dyn ArchiveControl>) {
        let _ = self.archive.set(control);
    }

    /// Where every process's archive stands, from each process's first worker; with `flush`, each is asked to
    /// flush what its log holds now.
    pub async fn archive_states(&self, flush: bool, wait: Duration) -> Result<Vec<ArchiveState>, QueryError> {
        match self.query(Query::Archive { flush }, 0, wait).await? {
            Answer::Archive(states) => Ok(states),
            _ => Ok(Vec::new()),
        }
    }

    /// Whether every local worker has worked through every process's snapshot (the archive the statistics start
    /// from): until then the statistics lack archived readings, whatever [`Self::processed_position`] says (a
    /// process whose own log archived nothing is at position 0 from the start).
    pub fn snapshot_loaded(&self) -> bool {
        self.loaded.iter().all(|l| l.load(Ordering::Acquire))
    }

    /// The last position of this process's log that every local worker has processed.
    pub fn processed_position(&self) -> u64 {
        self.processed.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    /// Answers `query` once the statistics include this process's log position `after` (0: at once), waiting at
    /// most `wait`.
    pub async fn query(&self, query: Query, after: u64, wait: Duration) -> Result<Answer, QueryError> {
        self.query_at(query, self.process, after, wait).await
    }

    /// Answers `query` once the statistics include log position `after` of `process`, waiting at most `wait`.
    pub async fn query_at(&self, query: Query, process: u32, after: u64, wait: Duration) -> Result<Answer, QueryError> {
        let (reply, answer) = oneshot::channel();
        let request = Request { query, process, after, wait, reply };
        self.sender.lock().map_err(|_| QueryError::Stopped)?.send(request).map_err(|_| QueryError::Stopped)?;
        self.doorbell.ring();
        match tokio::time::timeout(wait, answer).await {
            Ok(answer) => answer.map_err(|_| QueryError::Stopped),
            Err(_) if process == self.process => Err(QueryError::NotYet {
                process: None,
                after,
                waited: wait,
                processed: Some(self.processed_position()),
            }),
            Err(_) => Err(QueryError::NotYet { process: Some(process), after, waited: wait, processed: None }),
        }
    }

    /// Stops the workers and waits for them. In a cluster the workers leave together, once every process has
    /// called `stop` (see [`stopping`]; at most [`STOP_BARRIER_WAIT`]), and the wait here is bounded (10 s more: a
    /// peer that is gone can keep timely's network threads waiting; the process is stopping anyway).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let guards = self.guards.lock().map(|mut g| g.take()).unwrap_or(None);
        let Some(guards) = guards else { return };
        wake_workers(&guards);
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            for result in guards.join() {
                if let Err(e) = result {
                    tracing::error!(error = %e, "statistics worker failed");
                }
            }
            let _ = done.send(());
        });
        let bound = STOP_BARRIER_WAIT + Duration::from_secs(10);
        if finished.recv_timeout(bound).is_err() {
            tracing::warn!(waited = ?bound, "the statistics workers did not stop within their bound; leaving them");
        }
    }
}

impl Drop for StatsEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Dropping the guards joins the threads; never block a drop on that.
        if let Some(guards) = self.guards.lock().ok().and_then(|mut g| g.take()) {
            wake_workers(&guards);
            std::thread::spawn(move || drop(guards));
        }
    }
}

/// Wakes every worker thread (asleep until rung, see the module doc), so that each sees the stop at once.
fn wake_workers(guards: &timely::communication::initialize::WorkerGuards<()>) {
    for worker in guards.guards() {
        worker.thread().unpark();
    }
}

/// What the live windows of this process's workers hold, and how far the rollups reach.
#[derive(Debug)]
struct LiveState {
    rolled_through: AtomicI64,
    /// Per local worker: windows held, series held, readings dropped as no longer live, deduplication keys, sketch
    /// bytes.
    sizes: Vec<[AtomicU64; 5]>,
}

/// What the live windows of one process hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveWindowsSize {
    pub windows: u64,
    pub series: u64,
    /// Readings not added to the live windows because their day had left them (older than the horizon, late).
    pub dropped_readings: u64,
    /// Keys deduplication remembers (each series' timestamps within the dedup horizon).
    pub dedup_keys: u64,
    /// Heap memory of the windows' quantile sketches.
    pub sketch_bytes: u64,
}

impl LiveWindowsSize {
    /// The memory the live windows hold: [`weir_operators::live::BYTES_PER_WINDOW`] a window and their sketches.
    pub fn window_bytes(&self) -> u64 {
        self.windows * weir_operators::live::BYTES_PER_WINDOW as u64 + self.sketch_bytes
    }
}

impl LiveState {
    fn new(workers: usize) -> Self {
        let sizes = (0..workers).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect();
        LiveState { rolled_through: AtomicI64::new(i64::MIN), sizes }
    }

    fn size(&self) -> LiveWindowsSize {
        let sum = |i: usize| self.sizes.iter().map(|s| s[i].load(Ordering::Relaxed)).sum();
        LiveWindowsSize {
            windows: sum(0),
            series: sum(1),
            dropped_readings: sum(2),
            dedup_keys: sum(3),
            sketch_bytes: sum(4),
        }
    }

    /// Brings a worker's live windows up to the rolled-through mark and records their size.
    fn sync(&self, local: usize, windows: &mut weir_operators::LiveWindows, dedup_keys: usize) {
        windows.set_rolled_through(self.rolled_through.load(Ordering::Acquire));
        if let Some(size) = self.sizes.get(local) {
            size[0].store(windows.len() as u64, Ordering::Relaxed);
            size[1].store(windows.series() as u64, Ordering::Relaxed);
            size[2].store(windows.dropped_readings(), Ordering::Relaxed);
            size[3].store(dedup_keys as u64, Ordering::Relaxed);
            size[4].store(windows.sketch_bytes() as u64, Ordering::Relaxed);
        }
    }
}

struct WorkerContext {
    live: Arc<LiveState>,
    tail: LogTail,
    sensors: SensorSet,
    options: StatsOptions,
    processed: Arc<Vec<AtomicU64>>,
    /// Per local worker: its frontier has passed every snapshot round.
    loaded: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    /// Which processes have announced their stop (the workers leave together, see [`stopping`]).
    stopping: Arc<StopBarrier>,
    start_through: u64,
    /// Where the live windows start (see [`StartFrom::live_from`]).
    live_from: Option<i64>,
    /// Taken by the feeding worker.
    snapshot: Mutex<Option<Snapshot>>,
    /// Taken by the feeding worker.
    requests: Mutex<Option<mpsc::Receiver<Request>>>,
    /// Where the readings of this process's log that deduplication dropped are recorded.
    verdicts: Arc<Verdicts>,
    /// This process's archive, once its archiver runs.
    archive: Arc<OnceLock<Arc<dyn ArchiveControl>>>,
}

fn run_worker(worker: &mut timely::worker::Worker, ctx: &WorkerContext) {
    let workers = ctx.options.workers.max(1);
    let local = worker.index() % workers;
    let horizon = i64::try_from(ctx.options.dedup_horizon.as_micros()).unwrap_or(i64::MAX);
    // The arrangements see admitted readings on a grid of ARRANGEMENT_GRID_MICROS (in this cluster's time units).
    let grid = ARRANGEMENT_GRID_MICROS * ctx.options.processes() as u64;
    let positions = Rc::new(RefCell::new(Positions::new(ctx.options.processes(), grid)));
    let marks_in = positions.clone();
    let processes = ctx.options.processes();
    let verdicts = ctx.verdicts.clone();
    let recent = Rc::new(RefCell::new(RecentChanges::default()));
    let recent_in = recent.clone();
    let (dataflow, marks) = worker.dataflow(|scope| {
        let recent = recent_in.clone();
        let record_changes = move |updates: &mut dyn Iterator<Item = (u64, WindowKey)>| {
            recent.borrow_mut().record(updates);
        };
        let live_horizon = ctx.options.live_horizon.map(|h| i64::try_from(h.as_micros()).unwrap_or(i64::MAX));
        let mut live = weir_operators::LiveWindows::new(live_horizon).with_sketched_widths(&ctx.options.sketch_widths);
        if let Some(from) = ctx.live_from {
            live.set_start_from(from);
        }
        let StatsDataflow {
            readings,
            names,
            judged: earlier,
            windows,
            names_trace,
            verdicts: judged,
            dedup_keys,
            probe,
        } = stats_dataflow(scope, horizon, grid, (live, feed::SNAPSHOT_TIMES), record_changes);
        verdicts_to_their_process(judged, processes, workers, verdicts).probe_with(&probe);
        // Marks go to every worker; each counts one once its frontier passes the mark's time.
        let mut marks: InputHandleVec<u64, Mark> = InputHandleVec::new();
        marks
            .to_stream(scope)
            .broadcast()
            .inspect_core(move |event| {
                if let Ok((stamp, marks)) = event {
                    let time = stamp.iter().copied().min().unwrap_or(0);
                    let mut positions = marks_in.borrow_mut();
                    for mark in marks {
                        positions.receive(time, *mark);
                    }
                }
            })
            .probe_with(&probe);
        ((readings, names, earlier, windows, names_trace, dedup_keys, probe), marks)
    });
    let (readings, names, earlier, windows, names_trace, dedup_keys, probe) = dataflow;
    let traces = Rc::new(RefCell::new(WorkerTraces { windows, names: names_trace }));
    let waiting = Rc::new(RefCell::new(Waiting::default()));
    let (queries, _query_probe) = worker.dataflow(|scope| {
        let archive = ArchiveAnswerer {
            process: ctx.options.process(),
            first_worker: local == 0,
            durable: ctx.tail.durable.clone(),
            control: ctx.archive.clone(),
            start_through: ctx.start_through,
        };
        let stopping = ctx.stopping.clone();
        query_dataflow(scope, traces.clone(), positions.clone(), waiting.clone(), archive, recent.clone(), stopping)
    });

    // The first worker of each process reads this process's log and feeds it, and takes this process's queries;
    // the others close their inputs (their work arrives through the exchanges).
    let mut requests = None;
    let mut listening = None;
    let mut feed = if local == 0 {
        listening = Some(ctx.tail.doorbell.listen());
        requests = ctx.requests.lock().expect("not poisoned").take();
        // Fed even when this process's log has archived nothing (`start_through` 0): in a cluster its snapshot
        // also holds the sealed days it owns, written from the other processes' logs.
        let snapshot = ctx.snapshot.lock().expect("not poisoned").take();
        Some(LogFeed::new(
            (readings, names, marks, earlier),
            Feeder::new(&ctx.sensors, ctx.options.device_names.clone(), *ctx.tail.durable.borrow()),
            WalReader::new(&ctx.tail.dir, ctx.start_through + 1),
            ctx.tail.durable.clone(),
            ctx.tail.clock.clone(),
            (snapshot, ctx.start_through),
            grid,
        ))
    } else {
        drop(readings);
        drop(earlier);
        names.close();
        marks.close();
        None
    };
    let mut queries = if feed.is_some() {
        Some(queries)
    } else {
        queries.close();
        None
    };
    let clock = &ctx.tail.clock;
    let mut next_query = 0u64;
    let mut fed_until = 0;
    // In a cluster an idle feeder still lets time pass (every `idle_park`), so that the other processes' rounds
    // complete; alone, it feeds a round only when there is something to read.
    let in_cluster = ctx.options.processes() > 1;
    let mut last_tick = std::time::Instant::now();
    // When the stop was first seen: the workers leave once every process has announced its stop, or after
    // STOP_BARRIER_WAIT.
    let mut stop_seen: Option<Instant> = None;
    loop {
        if let Some(feed) = feed.as_mut() {
            let durable = *ctx.tail.durable.borrow();
            let has_data = feed.snapshot.is_some() || durable > feed.read_through || feed.needs_round();
            if has_data || (in_cluster && last_tick.elapsed() >= ctx.options.idle_park) {
                // Later writes here come after every round another process has fed (a hybrid logical clock), and
                // after its grid time: the marks of that round count once every process has passed it.
                clock.observe(on_grid(positions.borrow().newest_time, grid));
                if feed.round(ctx.options.feed_limit) > 0 {
                    // Through the readings fed, not the time the inputs moved on to: in a cluster that is the
                    // others' to reach, and they may learn of it only from this process's next mark. While the
                    // inputs are still at the last readings' time (the round stopped inside a group commit, or the
                    // writer had not finished it), through what is before it.
                    fed_until = feed.fed_at + u64::from(feed.time > feed.fed_at);
                }
                last_tick = std::time::Instant::now();
            }
            if let (Some(queries), Some(requests)) = (queries.as_mut(), requests.as_ref()) {
                let requester = worker.index();
                submit_queries(requests, queries, &mut waiting.borrow_mut(), clock, &mut next_query, requester);
            }
        }
        // Flow control: work the fed readings through before reading more, so nothing queues up in the dataflow
        // (memory stays at one round of `feed_limit` readings) however far behind the log the statistics are.
        if let Some(feed) = feed.as_mut().filter(|_| probe.less_than(&fed_until)) {
            // Meanwhile time goes on for the other processes: their rounds complete once ours has passed them.
            let mut ticked = std::time::Instant::now();
            worker.step_while(|| {
                if in_cluster && ticked.elapsed() >= ctx.options.idle_park {
                    clock.observe(on_grid(positions.borrow().newest_time, grid));
                    feed.pass_time();
                    ticked = std::time::Instant::now();
                }
                probe.less_than(&fed_until) && !ctx.stop.load(Ordering::Relaxed)
            });
        } else {
            // Asleep until rung (more durable, a query) unless there is more to read, or time must pass for the
            // work to go on.
            let park = match feed.as_ref() {
                Some(f) if f.snapshot.is_some() || *ctx.tail.durable.borrow() > f.read_through => Duration::ZERO,
                Some(f) if f.needs_round() => ctx.options.idle_park,
                _ if in_cluster => ctx.options.idle_park,
                _ => ctx.options.quiet_park,
            };
            worker.step_or_park(Some(park));
        }

        // Let the names' arrangement compact up to what is complete: one entry per name, not per mention.
        let frontier = probe.with_frontier(|f| f.first().copied());
        if let Some(f) = frontier {
            let bound = [f];
            let mut traces = traces.borrow_mut();
            traces.names.set_logical_compaction(AntichainRef::new(&bound));
            traces.names.set_physical_compaction(AntichainRef::new(&bound));
        }
        ctx.live.sync(local, &mut traces.borrow().windows.borrow_mut(), dedup_keys.get());
        recent.borrow_mut().frontier = frontier;
        let mut positions = positions.borrow_mut();
        positions.advance(frontier);
        ctx.processed[local].store(positions.processed(ctx.options.process()), Ordering::Release);
        if frontier.is_none_or(|f| f > on_grid(feed::SNAPSHOT_TIMES - 1, grid)) {
            ctx.loaded[local].store(true, Ordering::Release);
        }
        drop(positions);
        if ctx.stop.load(Ordering::Acquire) {
            let seen = *stop_seen.get_or_insert_with(|| {
                if let Some(queries) = queries.as_mut() {
                    announce_stop(queries, clock, &mut next_query, worker.index(), ctx.options.process());
                }
                Instant::now()
            });
            if ctx.stopping.passed() || seen.elapsed() >= STOP_BARRIER_WAIT {
                if !ctx.stopping.passed() {
                    tracing::warn!(
                        waited = ?STOP_BARRIER_WAIT,
                        "not every process of the cluster announced its stop; the statistics stop anyway"
                    );
                }
                break;
            }
        }
    }
    // Stopping does not wait for the dataflows to drain: in a cluster the other processes' inputs may stay open
    // (or be gone). What matters is durable in the log and the archive; the statistics are rebuilt at start.
    drop(listening);
    for dataflow in worker.installed_dataflows() {
        worker.drop_dataflow(dataflow);
    }
}

/// Tells every worker of the cluster that this process stops ([`Query::Stopping`]); nobody waits for the answer.
fn announce_stop(
    queries: &mut InputHandleVec<u64, QueryRequest>,
    clock: &crate::clock::WriteClock,
    next_query: &mut u64,
    requester: usize,
    process: u32,
) {
    queries.advance_to(clock.next());
    *next_query += 1;
    let wait_micros = u64::try_from(STOP_BARRIER_WAIT.as_micros()).unwrap_or(u64::MAX);
    let query = Query::Stopping { process };
    queries.send(QueryRequest { id: *next_query, requester, process, after: 0, wait_micros, query });
    queries.advance_to(clock.next());
    queries.flush();
}

/// Puts the queries asked of this process into the query dataflow (at one new time), remembering where each
/// answer goes.
fn submit_queries(
    requests: &mpsc::Receiver<Request>,
    queries: &mut InputHandleVec<u64, QueryRequest>,
    waiting: &mut Waiting,
    clock: &crate::clock::WriteClock,
    next_query: &mut u64,
    requester: usize,
) {
    let mut asked = false;
    for r in requests.try_iter() {
        if !asked {
            queries.advance_to(clock.next());
            asked = true;
        }
        *next_query += 1;
        waiting.insert(*next_query, r.reply, Instant::now() + r.wait);
        queries.send(QueryRequest {
            id: *next_query,
            requester,
            process: r.process,
            after: r.after,
            wait_micros: u64::try_from(r.wait.as_micros()).unwrap_or(u64::MAX),
            query: r.query,
        });
    }
    if asked {
        waiting.expire(Instant::now());
        queries.advance_to(clock.next());
        queries.flush();
    }
}

#[cfg(test)]
mod tests;
