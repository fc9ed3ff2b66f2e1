//! The live statistics as a service: questions to the dataflow, asked after a log position, answered with typed
//! values or a [`ServiceError`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use weir_operators::completeness::ExpectedIntervals;
use weir_operators::{DeviceId, Latest, SensorId, SeriesKey, Width, WindowAgg, WindowKey};
use weir_pipeline::decode::format_timestamp;
use weir_pipeline::reading::{DEFAULT_DEVICE, SensorSet};
use weir_pipeline::stats::{Answer, ArchiveState, Query, QueryError, StatsEngine};
use weir_pipeline::wal::ReadingLog;
use weir_sinks::sql::SqlArchive;

use super::error::ServiceError;
use crate::position::LogPosition;

/// Answers statistics questions, for any transport.
pub struct StatsService {
    engine: StatsEngine,
    /// This process's index in its cluster (0 alone) and the cluster's size.
    process: u32,
    processes: usize,
    sensors: SensorSet,
    /// Longest wait for `after=` before 503.
    read_wait: Duration,
    log: Arc<dyn ReadingLog>,
    /// The archive's rollups, for windows that have left the live statistics.
    rollups: OnceLock<SqlArchive>,
    /// Names of sensors that only other processes of the cluster have stored, as the statistics told them.
    cluster_sensors: RwLock<HashMap<SensorId, Arc<str>>>,
    /// Each sensor's expected interval, for windows' completeness (`--expected-interval`).
    intervals: ExpectedIntervals,
}

impl StatsService {
    pub fn new(engine: StatsEngine, sensors: SensorSet, read_wait: Duration, log: Arc<dyn ReadingLog>) -> Self {
        StatsService {
            engine,
            process: 0,
            processes: 1,
            sensors,
            read_wait,
            log,
            rollups: OnceLock::new(),
            cluster_sensors: RwLock::default(),
            intervals: ExpectedIntervals::default(),
        }
    }

    /// Judges windows' completeness by `intervals` (none without).
    pub fn with_expected_intervals(mut self, intervals: ExpectedIntervals) -> Self {
        self.intervals = intervals;
        self
    }

    /// Each sensor's expected interval.
    pub fn expected_intervals(&self) -> &ExpectedIntervals {
        &self.intervals
    }

    /// How many readings the window `key` of `sensor` should hold by now (see [`weir_operators::completeness`]).
    pub fn expected(&self, sensor: &str, key: &WindowKey) -> Option<f64> {
        self.intervals.expected(sensor, key.width, key.start, weir_pipeline::idempotency::now_micros())
    }

    /// Lets series answers reach before the live windows, into the archive's rollups; set once.
    pub fn attach_rollups(&self, archive: SqlArchive) {
        let _ = self.rollups.set(archive);
    }

    /// Says that this process wrote rollups (a seal): SQL's next query lists the days with rollups again.
    pub fn rollups_changed(&self) {
        if let Some(archive) = self.rollups.get() {
            archive.rollups_changed();
        }
    }

    /// The windows of one series (`device`'s `sensor`) and width whose start is in `[from, to)`: the live windows,
    /// and before the series' live days (beyond the live horizon) the sealed days' rollups, which hold the same
    /// numbers. Every answer about windows comes through here.
    pub async fn series_windows(
        &self,
        series: SeriesKey,
        (device, sensor): (&str, &str),
        width: Width,
        (from, to): (i64, i64),
        after: Option<LogPosition>,
    ) -> Result<Vec<(WindowKey, WindowAgg)>, ServiceError> {
        let (live, live_from) = match self.ask(Query::Series { series, width, from, to }, after).await? {
            Answer::Windows { windows, live_from } => (windows, live_from),
            other => return Err(unexpected("Series", &other)),
        };
        let Some(rollups) = self.rollups.get().filter(|_| from < live_from) else { return Ok(live) };
        let rows = rollups.rollup_windows(width, device, sensor, from, to.min(live_from)).await?;
        // A width whose live windows carry no sketch answers none from its rollups either, so that an answer does
        // not change when its windows leave memory (SQL's windows_* always have them).
        let sketched = self.engine.sketch_widths().contains(&width);
        let mut windows: Vec<(WindowKey, WindowAgg)> = rows
            .into_iter()
            .map(|r| {
                let agg = if sketched { r.agg } else { r.agg.with_sketch(None) };
                (WindowKey { series, width, start: r.start }, agg)
            })
            .collect();
        windows.extend(live);
        Ok(windows)
    }

    /// The same, for process `process` of a cluster of `processes`.
    pub fn in_cluster(mut self, process: u32, processes: usize) -> Self {
        self.process = process;
        self.processes = processes;
        self
    }

    pub fn sensors(&self) -> &SensorSet {
        &self.sensors
    }

    /// The id of sensor `name`, checked against the sensor set: a name that cannot be a sensor's is the client's
    /// error (a valid name that nothing was stored under simply has no statistics).
    pub fn sensor_id(&self, name: &str) -> Result<SensorId, ServiceError> {
        self.sensors.check(name).map_err(ServiceError::invalid)?;
        Ok(SensorId::of(name))
    }

    /// The name of sensor `id`: known here once this process has stored or read a reading of it; otherwise asked of
    /// the statistics, which hold the names every process of the cluster stored.
    pub async fn sensor_name(&self, id: SensorId) -> Option<Arc<str>> {
        if let Some(name) = self.engine.names().sensor_name(id) {
            return Some(name);
        }
        let cached = |id| self.cluster_sensors.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        if let Some(name) = cached(id) {
            return Some(name);
        }
        if let Ok(Answer::Sensors(all)) = self.ask(Query::Sensors, None).await {
            let mut known = self.cluster_sensors.write().unwrap_or_else(|e| e.into_inner());
            known.extend(all.into_iter().map(|(id, name)| (id, Arc::from(name))));
        }
        cached(id)
    }

    /// Asks `query`, after log position `after` (checked against what is durable when it is this process's).
    pub async fn ask(&self, query: Query, after: Option<LogPosition>) -> Result<Answer, ServiceError> {
        let after = after.unwrap_or(LogPosition { process: None, position: 0 });
        match after.process {
            Some(p) if p != self.process => {
                if p as usize >= self.processes {
                    return Err(ServiceError::invalid(format!(
                        "after={after}: there is no process {p} in this cluster of {} processes",
                        self.processes
                    )));
                }
                // Process p knows what it acknowledged: a position beyond it was never given to a client.
                if after.position > 0 {
                    let states = self.engine.archive_states(false, self.read_wait).await?;
                    if let Some(state) = states.iter().find(|s| s.process == p)
                        && after.position > state.durable
                    {
                        return Err(ServiceError::invalid(format!(
                            "after={after} is beyond the last log position process {p} acknowledged ({p}:{}); pass \
                             the Weir-Position of an ingest response",
                            state.durable
                        )));
                    }
                }
                Ok(self.engine.query_at(query, p, after.position, self.read_wait).await?)
            }
            _ => {
                let durable = self.log.durable_position();
                if after.position > durable {
                    return Err(ServiceError::invalid(format!(
                        "after={after} is beyond the last acknowledged log position {durable}; pass the Weir-Position of an ingest response"
                    )));
                }
                Ok(self.engine.query(query, after.position, self.read_wait).await?)
            }
        }
    }

    /// The latest value of each sensor of `device`, by sensor index.
    pub async fn latest_of(
        &self,
        device: &str,
        after: Option<LogPosition>,
    ) -> Result<Vec<(SeriesKey, Latest)>, ServiceError> {
        self.latest(Some(DeviceId::of(device)), after).await
    }

    /// The latest value of every series of `device`, or of every series.
    pub async fn latest(
        &self,
        device: Option<DeviceId>,
        after: Option<LogPosition>,
    ) -> Result<Vec<(SeriesKey, Latest)>, ServiceError> {
        match self.ask(Query::Latest { device }, after).await? {
            Answer::Latest(l) => Ok(l),
            other => Err(unexpected("Latest", &other)),
        }
    }

    /// Every device's name, by id.
    pub async fn device_names(&self, after: Option<LogPosition>) -> Result<HashMap<DeviceId, String>, ServiceError> {
        match self.ask(Query::Devices, after).await? {
            Answer::Devices(d) => Ok(d.into_iter().collect()),
            other => Err(unexpected("Devices", &other)),
        }
    }

    /// The latest value of `sensor` of the default device, 0 when there is none (the replaced system's rule).
    pub fn value_or_zero(&self, latest: &[(SeriesKey, Latest)], sensor: &str) -> f64 {
        let id = SensorId::of(sensor);
        latest.iter().find(|(k, _)| k.sensor == id).map_or(0.0, |(_, l)| l.value)
    }

    /// Where every process's archive stands (see [`StatsEngine::archive_states`]).
    pub async fn archive_states(&self, flush: bool) -> Result<Vec<ArchiveState>, QueryError> {
        self.engine.archive_states(flush, self.read_wait).await
    }

    /// The engine, to attach this process's archive to.
    pub fn engine(&self) -> &StatsEngine {
        &self.engine
    }

    /// The last log position the statistics have processed.
    pub fn processed_position(&self) -> u64 {
        self.engine.processed_position()
    }

    /// How far the statistics have loaded what they start from.
    pub fn load_progress(&self) -> LoadProgress {
        LoadProgress { snapshot_loaded: self.engine.snapshot_loaded(), processed: self.engine.processed_position() }
    }

    pub fn stop(self) {
        self.engine.stop();
    }
}

/// How far the statistics have loaded what they start from (see [`Readiness`](super::Readiness)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    /// Every process's snapshot (the archive) has gone through the dataflow.
    pub snapshot_loaded: bool,
    /// The last position of this process's log processed.
    pub processed: u64,
}

/// The statistics answered a query with another query's answer: a defect, reported rather than read as empty.
fn unexpected(query: &str, answer: &Answer) -> ServiceError {
    let kind = match answer {
        Answer::Windows { .. } => "Windows",
        Answer::Latest(_) => "Latest",
        Answer::Devices(_) => "Devices",
        Answer::Sensors(_) => "Sensors",
        Answer::Changes { .. } => "Changes",
        Answer::Archive(_) => "Archive",
        Answer::Stopping => "Stopping",
    };
    ServiceError::internal(format!("the statistics answered {query} with {kind}"))
}

/// The device named by a query parameter, the default device when absent.
pub fn device_or_default(device: &Option<String>) -> &str {
    device.as_deref().filter(|d| !d.is_empty()).unwrap_or(DEFAULT_DEVICE)
}

/// RFC 3339 in UTC with milliseconds when the value has them, as devices send it.
pub fn timestamp_text(micros: i64) -> String {
    format_timestamp(micros)
}
