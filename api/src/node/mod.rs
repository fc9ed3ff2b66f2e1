//! The engine, owned by one value: a [`Node`].
//!
//! A node is one Weir process: its write-ahead log, its statistics dataflow (one process of a timely cluster; a
//! single Weir is a cluster of one), its archiver, sealer and WAL trimmer, and the services that transports call
//! ([`IngestService`], [`StatsService`], [`SqlService`], [`Readiness`]). It knows no transport: no file of this
//! module uses axum, hyper or tonic (ingest reads bodies through the [`ingest::ChunkSource`] trait that the HTTP
//! adapter implements) — `weir serve` parses flags into a [`NodeConfig`], calls
//! [`Node::start`], serves HTTP and gRPC over the node's services, and calls [`Node::shutdown`]. Tests start a node
//! in-process the same way.
//!
//! The rules that connect the parts live here, once:
//! - the statistics start from the archive (everything through the archive checkpoint, already deduplicated) and
//!   read the log after it; the log may therefore be trimmed through the checkpoint;
//! - the statistics' dedup operator decides, once, which readings are first writes; the archiver stores exactly
//!   those (no second filter), alone as in a cluster;
//! - sealing and trimming wait until the statistics and the archiver have loaded the archive;
//! - shutdown stops the background tasks, then the statistics, then flushes the archiver (what the statistics
//!   decided) and closes the log; what was acknowledged but not yet archived stays in the log for the next start.

pub mod answers;
mod background;
pub mod completeness;
pub mod error;
pub mod gauges;
pub mod idempotent;
pub mod ingest;
pub mod readiness;
pub mod rejected;
pub mod sql;
pub mod stats;
pub mod subscribe;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_pipeline::clock::WriteClock;
use weir_pipeline::cluster::ClusterConfig;
use weir_pipeline::decode::Decoder;
use weir_pipeline::reading::SensorSet;
use weir_pipeline::rejected::RejectedStore;
use weir_pipeline::stats::{StartFrom, StatsEngine, StatsOptions};
use weir_pipeline::wal::{Recovery, Wal, WalOptions};
use weir_sinks::archive::{ArchiveLocation, Archiver, ArchiverOptions, ClusterShare, checkpoint_path, read_checkpoint};
use weir_sinks::seal::{SealerLock, finish_interrupted_seals};
use weir_sinks::snapshot::ArchiveSnapshot;
use weir_sinks::sql::{SqlArchive, SqlLimits};

pub use gauges::EngineGauges;
pub use readiness::Readiness;

use ingest::{IngestLimits, IngestService};
use sql::SqlService;
use stats::StatsService;

/// Everything a node needs to start; `weir serve` builds it from its flags (`ServeArgs::node_config`).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Weir's durable state: `wal/`, the archive checkpoint, and (by default) `archive/`.
    pub data_dir: PathBuf,
    /// The accepted sensor names.
    pub sensors: SensorSet,
    /// How line protocol, remote write and OTLP name devices and sensors.
    pub protocols: crate::node::ingest::Protocols,
    pub wal: WalOptions,
    pub ingest: IngestLimits,
    /// Workers, dedup horizon and cluster of the statistics dataflow.
    pub stats: StatsOptions,
    /// Longest wait of a read that asks for a log position (`after=`) or for the archive to catch up.
    pub read_wait: Duration,
    /// Archive location (directory or URL).
    pub archive_url: String,
    /// Whether the archive URL was given explicitly (a cluster needs one that every process shares).
    pub archive_url_given: bool,
    pub archiver: ArchiverOptions,
    /// How long after the end of a UTC day it is sealed, and how often to look.
    pub seal_grace: Duration,
    pub seal_interval: Duration,
    pub sql: SqlLimits,
    /// Keep WAL segments after their readings are archived.
    pub keep_archived_wal: bool,
    /// How long idempotency keys are remembered, in how many bytes.
    pub idempotency: weir_pipeline::idempotency::store::Retention,
    /// The memory budget of the state that grows with the data (`--memory-limit`, bytes).
    pub memory_limit: u64,
    /// How much of the record of rejected lines (`<data-dir>/rejected/`) is kept.
    pub rejected: weir_pipeline::rejected::RejectedOptions,
    /// Each sensor's expected interval, for windows' completeness (`--expected-interval`).
    pub expected_intervals: weir_operators::completeness::ExpectedIntervals,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A part of the node failed to open or start; `context` says which and what to check.
    #[error("{context}: {source}")]
    Start { context: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// The configuration or the data directory's state is refused; the message says what to do.
    #[error("{0}")]
    Refused(String),
}

fn context<E: std::error::Error + Send + Sync + 'static>(context: impl Into<String>) -> impl FnOnce(E) -> NodeError {
    let context = context.into();
    move |e| NodeError::Start { context, source: Box::new(e) }
}

/// How long a shutdown waits for the statistics to decide what the log holds, so that the archiver can archive it.
const SHUTDOWN_CATCH_UP: Duration = Duration::from_secs(10);

/// A running Weir process: its log, statistics, archive and services.
pub struct Node {
    ingest: Arc<IngestService>,
    stats: Arc<StatsService>,
    sql: Arc<SqlService>,
    readiness: Arc<Readiness>,
    gauges: Arc<EngineGauges>,
    recovery: Recovery,
    wal: Wal,
    archiver: Archiver,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The record of rejected lines, fsynced at shutdown.
    rejected: Arc<RejectedStore>,
    /// Held until the node has stopped.
    sealer_lock: SealerLock,
}

/// How far the archive's rollups reach at start, and the day the live windows start from: the days before it have
/// rollups and end before the live horizon reaches back from the start of the archive's newest day, so no series
/// would keep their windows in memory (`None`: load every day, as without a live horizon).
async fn live_start(
    location: &ArchiveLocation,
    parts: &[weir_sinks::archive::PartName],
    config: &NodeConfig,
) -> Result<(i64, Option<i64>), weir_sinks::archive::ArchiveError> {
    use weir_operators::Width;
    let now = chrono::Utc::now().timestamp_micros();
    let grace = i64::try_from(config.seal_grace.as_micros()).unwrap_or(i64::MAX);
    let rolled_through =
        weir_sinks::rollup::rolled_through(location, parts, Width::Day.start_of(now.saturating_sub(grace))).await?;
    let Some(horizon) = config.stats.live_horizon.map(|h| i64::try_from(h.as_micros()).unwrap_or(i64::MAX)) else {
        return Ok((rolled_through, None));
    };
    let day_start = |date: &str| {
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros())
    };
    let Some(newest_day) = parts.iter().filter_map(|p| day_start(&p.date)).max() else {
        return Ok((rolled_through, None));
    };
    // From the newest day's start: the newest series' own cutoff is never earlier, so it loads what it keeps.
    let bound = newest_day.saturating_sub(horizon).min(rolled_through);
    Ok((rolled_through, Some(Width::Day.start_of(bound))))
}

/// Opens the record of rejected lines in `<data-dir>/rejected/`, logging what its recovery cut off or found damaged
/// (damage does not stop the start: the record is diagnostics, and readings must still be ingested).
async fn open_rejected(config: &NodeConfig) -> Result<Arc<RejectedStore>, NodeError> {
    let (dir, options) = (config.data_dir.join("rejected"), config.rejected.clone());
    let now = weir_pipeline::idempotency::now_micros();
    let opened = tokio::task::spawn_blocking(move || RejectedStore::open(&dir, options, now))
        .await
        .map_err(context("opening the record of rejected lines"))?
        .map_err(context("opening the record of rejected lines"))?;
    let (store, recovery) = opened;
    if let Some(t) = &recovery.truncated {
        tracing::warn!(
            file = %t.path.display(), offset = t.offset, reason = %t.reason,
            "cut off a torn tail of the record of rejected lines (a crash interrupted a write)"
        );
    }
    for d in &recovery.damaged {
        tracing::error!(
            file = %d.path.display(), offset = d.offset, reason = %d.reason,
            "a segment of the record of rejected lines is damaged: its records after the offset are not shown; \
             the segment is deleted with the retention or the size cap"
        );
    }
    tracing::info!(
        segments = recovery.segments, records = recovery.records, bytes = store.bytes(), dir = %store.dir().display(),
        "record of rejected lines opened"
    );
    Ok(Arc::new(store))
}

impl Node {
    /// Opens the data directory, recovers the log and checks it against the archive checkpoint, starts the
    /// statistics (from the archive, then the log after it; in a cluster this waits, bounded, for the other
    /// processes), the archiver, the sealer, the WAL trimmer and the lag sampler. Call from a multi-threaded tokio
    /// runtime.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        weir_pipeline::data_dir::check_or_stamp(&config.data_dir).map_err(context("the data directory"))?;
        let wal_dir = config.data_dir.join("wal");
        // The log stamps every group commit with this process's write clock; the statistics follow it with the same.
        let (process, processes) = config.stats.cluster.as_ref().map_or((0, 1), |c| (c.process as u32, c.processes()));
        let wal_options = WalOptions { clock: WriteClock::new(process, processes), ..config.wal.clone() };
        let (wal, recovery) = Wal::open(&wal_dir, wal_options)
            .map_err(context(format!("cannot open the write-ahead log in {}", wal_dir.display())))?;
        if let Some(t) = &recovery.truncated {
            tracing::warn!(
                file = %t.file.display(), offset = t.offset, bytes_removed = t.bytes_removed, reason = %t.reason,
                "cut off a torn tail of the write-ahead log (a crash interrupted a write that was never acknowledged)"
            );
        }
        tracing::info!(segments = recovery.segments, last_position = recovery.last_position, dir = %wal_dir.display(), "write-ahead log recovered");
        let log = Arc::new(wal.appender());
        let rejected = open_rejected(&config).await?;
        // The keys of requests answered within the window: the key file, then the keys of the log after it.
        let keys = {
            let (file, dir) = (weir_pipeline::idempotency::store::path(&config.data_dir), wal_dir.clone());
            let (through, retention) = (recovery.last_position, config.idempotency);
            let now = weir_pipeline::idempotency::now_micros();
            let table = tokio::task::spawn_blocking(move || {
                weir_pipeline::idempotency::store::rebuild(&file, &dir, through, retention, now)
            })
            .await
            .map_err(context("reading the idempotency keys"))?
            .map_err(context("reading the idempotency keys"))?;
            tracing::info!(keys = table.len(), bytes = table.bytes(), "idempotency keys read");
            weir_pipeline::idempotency::Keys::new(table)
        };

        let cluster = config.stats.cluster.clone();
        let (process, processes) =
            cluster.as_ref().map_or((0, 1), |c: &ClusterConfig| (c.process as u32, c.processes()));
        // In a cluster every process archives its own log into one archive that all of them share.
        let share = cluster.as_ref().map(|_| ClusterShare { process, processes: processes as u32 });
        if share.is_some() && !config.archive_url_given {
            return Err(NodeError::Refused(
                "a cluster needs one archive that every process shares: pass the same --archive-url \
                 (WEIR_ARCHIVE_URL) to every process, e.g. --archive-url file:///shared/weir-archive or \
                 s3://bucket/weir"
                    .into(),
            ));
        }
        let mut location =
            ArchiveLocation::open(&config.archive_url).map_err(context("--archive-url / WEIR_ARCHIVE_URL"))?;
        if let Some(share) = share {
            location = location.shared_by(share);
        }
        let parts = location.list_parts().await.map_err(context("cannot list the archive"))?;
        if let Some(foreign) = parts.iter().find(|p| share.is_some() != (p.process.is_some() || p.sealed)) {
            return Err(NodeError::Refused(format!(
                "the archive {} holds {}, which a {} does not read: a single Weir's archive and a cluster's are not \
                 interchangeable; give this Weir its own --archive-url",
                location.url,
                foreign.path,
                if share.is_some() { "cluster" } else { "single Weir" }
            )));
        }
        // Alone, this Weir is its archive's only sealer for as long as it runs (in a cluster each day has one
        // owner, and the processes share the lock).
        let sealer_lock = match share {
            None => SealerLock::acquire(&location).map_err(context("the archive"))?,
            // Shared by the cluster's processes: `weir dump` (exclusive) is refused while any of them runs.
            Some(_) => SealerLock::share(&location).map_err(context("the archive"))?,
        };
        finish_interrupted_seals(&location).await.map_err(context("finishing an interrupted seal"))?;
        weir_sinks::compact::finish_interrupted_compactions(&location)
            .await
            .map_err(context("finishing an interrupted compaction"))?;
        let checkpoint = checkpoint_path(&config.data_dir);
        let archived = read_checkpoint(&checkpoint).map_err(context("the archive checkpoint"))?;
        let wal_first = weir_pipeline::wal::first_position(&wal_dir).map_err(context("the write-ahead log"))?;
        if wal_first > archived + 1 {
            return Err(NodeError::Refused(format!(
                "the write-ahead log starts at position {wal_first}, but the archive checkpoint {} says the archive \
                 holds only positions up to {archived}: positions {}..{} are in neither. Restore the checkpoint file \
                 (or the data directory) from a backup",
                checkpoint.display(),
                archived + 1,
                wal_first - 1
            )));
        }

        // The statistics start from the archive (what the log held through the checkpoint, deduplicated), then
        // read the log after it; so the log before the checkpoint may be deleted.
        let (rolled_through, live_from) =
            live_start(&location, &parts, &config).await.map_err(context("cannot list the archive's rollups"))?;
        let snapshot = ArchiveSnapshot::open(&location, archived, tokio::runtime::Handle::current(), live_from)
            .await
            .map_err(context("cannot list the archive to load the statistics"))?;
        tracing::info!(
            parts = snapshot.parts(),
            archived_through = archived,
            live_from = live_from.map(weir_pipeline::decode::format_timestamp),
            "statistics start from the archive (the days before live_from from their rollups)"
        );
        let snapshot = snapshot.filter_map(|item| {
            item.map_err(
                |e| tracing::error!(error = %e, "an archive part could not be read; the statistics leave it out"),
            )
            .ok()
        });
        let engine = {
            let (tail, sensors, options) = (wal.tail(), config.sensors.clone(), config.stats.clone());
            let start = StartFrom { through: archived, snapshot: Box::new(snapshot), live_from };
            tokio::task::spawn_blocking(move || StatsEngine::start_from(tail, sensors, options, start))
                .await
                .map_err(context("starting the statistics"))?
                .map_err(context("starting the statistics"))?
        };
        tracing::info!(
            workers = config.stats.workers,
            "statistics dataflow started; it loads the archive and replays the log after it first"
        );
        let stats = Arc::new(
            StatsService::new(engine, config.sensors.clone(), config.read_wait, log.clone())
                .in_cluster(process, processes)
                .with_expected_intervals(config.expected_intervals.clone()),
        );
        stats.engine().set_rolled_through(rolled_through);
        // The statistics decide which readings are first writes; the archive stores exactly those (alone as in a
        // cluster: one verdict, no second filter).
        let archiver = Archiver::start(
            wal_dir.clone(),
            log.watch_durable(),
            stats.engine().verdicts(),
            location.clone(),
            checkpoint,
            config.archiver.clone(),
            tokio::runtime::Handle::current(),
        )
        .map_err(context("starting the archiver"))?;
        tracing::info!(archive = %location.url, "archiver started");
        stats.engine().attach_archive(archiver.progress.clone());

        // Sealing replaces parts and trimming deletes the log, so both wait until the statistics and the archiver
        // have read what they start from.
        let loaded = {
            let (stats, progress) = (stats.clone(), archiver.progress.clone());
            move || {
                let statistics = stats.load_progress();
                progress.started.load(std::sync::atomic::Ordering::Acquire)
                    && statistics.snapshot_loaded
                    && statistics.processed >= archived
            }
        };
        let mut tasks = vec![tokio::spawn(background::seal_due_days(
            location.clone(),
            archiver.progress.clone(),
            stats.clone(),
            share.is_some(),
            config.seal_grace,
            config.seal_interval,
            loaded.clone(),
        ))];
        if !config.keep_archived_wal {
            tasks.push(tokio::spawn(background::trim_archived_wal(
                wal_dir.clone(),
                (weir_pipeline::idempotency::store::path(&config.data_dir), config.idempotency),
                archiver.progress.clone(),
                stats.clone(),
                loaded,
            )));
        }
        // Alone, a query reads this archiver's unflushed readings beside the parts; in a cluster, every process
        // flushes first and the query reads the shared archive only.
        let local_progress = share.is_none().then(|| archiver.progress.clone());
        let mut sql = SqlService::new(
            SqlArchive::new(location, local_progress, config.sql.clone())
                .map_err(context("SQL"))?
                .with_rejected(rejected.clone())
                .with_expected_intervals(config.expected_intervals.clone()),
            archiver.progress.clone(),
            log.clone(),
            config.read_wait,
        );
        stats.attach_rollups(sql.archive().clone());
        if share.is_some() {
            sql = sql.in_cluster(stats.clone());
        }
        // Ingest refuses a device name whose id another name holds; the statistics fill the same registry from the
        // log and the archive.
        let budget = weir_pipeline::budget::MemoryBudget::new(config.memory_limit);
        budget.set(weir_pipeline::budget::Part::Sql, config.sql.memory_share());
        config.stats.device_names.set_budget(budget.clone());
        let decoder = Decoder::new(config.sensors.clone()).with_device_names(config.stats.device_names.clone());
        let mut ingest = IngestService::new(decoder, config.ingest.clone(), log)
            .with_budget(budget.clone())
            .with_keys(keys.clone())
            .with_protocols(config.protocols.clone())
            .with_rejected(rejected.clone());
        if cluster.is_some() {
            ingest = ingest.in_cluster(process);
        }
        let ingest = Arc::new(ingest);
        let readiness =
            Arc::new(Readiness { log_at_start: recovery.last_position, archive: archiver.progress.clone() });
        let gauges = Arc::new(EngineGauges::new(Some(wal_dir)));
        tasks.push(tokio::spawn(background::sample_dataflow_lag(gauges.clone(), ingest.clone(), stats.clone())));
        tasks.push(tokio::spawn(background::measure_memory(
            budget.clone(),
            stats.clone(),
            config.stats.device_names.clone(),
            archiver.progress.clone(),
            keys,
        )));
        tasks.push(tokio::spawn(background::keep_rejected(rejected.clone())));
        Ok(Node {
            ingest,
            stats,
            sql: Arc::new(sql),
            readiness,
            gauges,
            recovery,
            wal,
            archiver,
            tasks,
            rejected,
            sealer_lock,
        })
    }

    /// Ingest: validation, limits, the log and its acknowledgement.
    pub fn ingest(&self) -> &Arc<IngestService> {
        &self.ingest
    }

    /// The live statistics.
    pub fn stats(&self) -> &Arc<StatsService> {
        &self.stats
    }

    /// SQL over the archive.
    pub fn sql(&self) -> &Arc<SqlService> {
        &self.sql
    }

    /// Whether the node has loaded what it starts from.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// Values read when metrics are scraped.
    pub fn gauges(&self) -> &Arc<EngineGauges> {
        &self.gauges
    }

    /// What opening the log found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Stops the node in order: background tasks; the statistics, once they have decided everything acknowledged
    /// (at most 10 s) and, in a cluster, once every process has (a barrier, see `StatsEngine::stop`); the archiver,
    /// which flushes what they decided; the log. Transports must have stopped and dropped their handles to the
    /// services first (a handle still held only delays the statistics' stop to when it is dropped).
    pub async fn shutdown(self) {
        let Node { ingest, stats, sql, readiness, gauges, wal, archiver, tasks, rejected, sealer_lock, .. } = self;
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = tokio::task::spawn_blocking(move || rejected.sync()).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e, "cannot fsync the record of rejected lines");
        }
        // A clean stop leaves the archive complete: the statistics first decide what was acknowledged (bounded: in
        // a cluster a peer that is gone holds them back; what is left is archived after the next start). In a
        // cluster every process waits until it has processed what *every* process had acknowledged: the dataflow
        // runs on until then, so a peer's last writes are decided here too. Each process's wait is answered by every
        // worker of the cluster, so no process's workers leave before every process has finished its wait: the
        // statistics' stop is a barrier. (Without it, a process that stopped first left a slower one's wait
        // unanswered: it stopped 10 s later with its last writes undecided, and failed on the closed connections.)
        let deadline = tokio::time::Instant::now() + SHUTDOWN_CATCH_UP;
        let targets = match stats.archive_states(false).await {
            Ok(states) if !states.is_empty() => states.iter().map(|s| (s.process, s.durable)).collect(),
            _ => vec![(stats.engine().process(), ingest.durable_position())],
        };
        for (process, durable) in targets {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let query = weir_pipeline::stats::Query::Devices;
            if stats.engine().query_at(query, process, durable, left).await.is_err() {
                tracing::warn!(process, durable, "the statistics did not catch up with the cluster before stopping");
                break;
            }
        }
        drop((ingest, sql, readiness, gauges));
        tracing::info!("shutting down: stopping the statistics, flushing the archive, closing the write-ahead log");
        let stopped = tokio::task::spawn_blocking(move || {
            match Arc::into_inner(stats) {
                Some(stats) => stats.stop(),
                None => tracing::warn!("the statistics are still in use; they stop when released"),
            }
            if let Err(e) = archiver.stop() {
                tracing::error!(error = %e, "the archiver stopped with an error; it resumes from its checkpoint at the next start");
            }
            wal.close();
        })
        .await;
        if let Err(e) = stopped {
            tracing::error!(error = %e, "shutting down failed");
        }
        drop(sealer_lock);
        tracing::info!("stopped cleanly");
    }
}

#[cfg(test)]
mod tests {
    /// The rule of this module, checked: no file of the engine names a transport crate.
    #[test]
    fn the_engine_knows_no_transport() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/node");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for transport in ["axum", "hyper", "tonic", "http"] {
                assert!(!text.contains(&format!("{transport}::")), "{} uses {transport}", path.display());
            }
            files += 1;
        }
        assert!(files >= 10, "read the engine's files ({files})");
    }
}
