//! `weir serve`: open the data directory, recover the log, and serve HTTP until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use weir_pipeline::cluster::ClusterConfig;
use weir_pipeline::decode::Decoder;
use weir_pipeline::ingest::DecodeLimits;
use weir_pipeline::reading::{DEFAULT_SENSORS, SensorSet};
use weir_pipeline::stats::{StartFrom, StatsEngine, StatsOptions};
use weir_pipeline::wal::{Wal, WalOptions};

use super::{parse_duration, parse_size};
use crate::auth::ApiKeys;
use crate::ingest::{IngestLimits, IngestService};
use crate::server::{AppState, app};
use crate::sql::SqlService;
use crate::stats::StatsService;
use weir_sinks::archive::{ArchiveLocation, Archiver, ArchiverOptions, ClusterShare, checkpoint_path, read_checkpoint};
use weir_sinks::seal::{days_due, finish_interrupted_seals, seal_committed_day};
use weir_sinks::snapshot::ArchiveSnapshot;
use weir_sinks::sql::{SqlArchive, SqlLimits};

/// Options of `weir serve`. Every flag can also be set by the environment variable named in its help.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A TOML file with settings (keys: these flags' long names). Flags and WEIR_* variables override it; see
    /// `weir config example`. Default: none.
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on for HTTP (`host:port`; port 0 picks a free port).
    #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Directory for Weir's durable state (the write-ahead log lives in its `wal/`).
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    pub data_dir: PathBuf,

    /// Accepted sensor names, comma-separated; replaces the default set.
    #[arg(long, env = "WEIR_SENSORS", value_delimiter = ',', default_values_t = DEFAULT_SENSORS.map(String::from))]
    pub sensors: Vec<String>,

    /// An API key (repeat the flag for several; the variable takes a comma-separated list). No key: auth is off.
    #[arg(long = "api-key", env = "WEIR_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// Longest accepted NDJSON line; a longer line is rejected and the rest of the body goes on.
    #[arg(long, env = "WEIR_MAX_LINE_BYTES", default_value = "64KiB", value_parser = parse_size)]
    pub max_line_bytes: u64,

    /// Largest accepted request body, after gzip decoding (413 beyond it).
    #[arg(long, env = "WEIR_MAX_BODY_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub max_body_bytes: u64,

    /// Longest time one ingest request may take to send its body (408 beyond it).
    #[arg(long, env = "WEIR_MAX_REQUEST_TIME", default_value = "5m", value_parser = parse_duration)]
    pub max_request_time: Duration,

    /// How long a request waits for room in the full WAL queue before it gets 503 with Retry-After.
    #[arg(long, env = "WEIR_INGEST_QUEUE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ingest_queue_timeout: Duration,

    /// At most this many rejected lines are described in a 400 response (all are counted).
    #[arg(long, env = "WEIR_MAX_REPORTED_ERRORS", default_value_t = 10_000)]
    pub max_reported_errors: usize,

    /// Readings per WAL record (the unit in which ingest hands readings on).
    #[arg(long, env = "WEIR_BATCH_ROWS", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_rows: u32,

    /// Size at which a WAL segment is closed and a new one started.
    #[arg(long, env = "WEIR_WAL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub wal_segment_bytes: u64,

    /// Batches that may wait for the WAL writer before requests are made to wait (backpressure).
    #[arg(long, env = "WEIR_WAL_QUEUE_DEPTH", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub wal_queue_depth: u32,

    /// Timely worker threads of the statistics dataflow (results are the same for any number).
    #[arg(long, env = "WEIR_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,

    /// Run as one process of a cluster: a file listing every process's timely address (`host:port`, one per line;
    /// these are the processes' connections to each other, not HTTP). Needs --process. Default: no cluster.
    #[arg(long, env = "WEIR_CLUSTER", requires = "process", conflicts_with = "cluster_hosts")]
    pub cluster: Option<PathBuf>,

    /// The same list given inline instead of a file: `host:port,host:port,...` in process order.
    #[arg(long, env = "WEIR_CLUSTER_HOSTS", value_delimiter = ',', requires = "process")]
    pub cluster_hosts: Vec<String>,

    /// This process's line in the --cluster file (or place in --cluster-hosts), counting from 0.
    #[arg(long, env = "WEIR_PROCESS")]
    pub process: Option<u32>,

    /// How long a cluster process waits at start for the other processes of the --cluster file.
    #[arg(long, env = "WEIR_CLUSTER_CONNECT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub cluster_connect_timeout: Duration,

    /// Deduplication is exact for duplicates within this much event time behind each series' newest reading.
    #[arg(long, env = "WEIR_DEDUP_HORIZON", default_value = "48h", value_parser = parse_duration)]
    pub dedup_horizon: Duration,

    /// Longest wait of a statistics request with `?after=` for the dataflow to catch up (503 beyond it).
    #[arg(long, env = "WEIR_READ_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub read_wait: Duration,

    /// Where the gRPC API listens (`off`: no gRPC); port 0 picks a free port.
    #[arg(long, env = "WEIR_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: String,

    /// A client must send a request's headers within this time, or its connection is closed (slow-loris guard).
    #[arg(long, env = "WEIR_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// On SIGTERM/SIGINT, how long requests already being served may take to finish before they are cut off
    /// (a cut-off request was never acknowledged, so nothing acknowledged is lost).
    #[arg(long, env = "WEIR_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Keep WAL segments after their readings are archived (default: delete them; the statistics then start
    /// from the archive).
    #[arg(long, env = "WEIR_KEEP_ARCHIVED_WAL")]
    pub keep_archived_wal: bool,

    #[command(flatten)]
    pub archive: ArchiveArgs,
}

/// Where and how readings are archived and queried.
#[derive(Debug, Clone, Args)]
pub struct ArchiveArgs {
    /// Archive location: a directory, `file:///abs/dir`, `memory:///`, `s3://bucket/prefix` (default: the
    /// `archive/` directory inside --data-dir).
    #[arg(long, env = "WEIR_ARCHIVE_URL")]
    pub archive_url: Option<String>,

    /// Write a Parquet part once this many readings wait for the archive.
    #[arg(long, env = "WEIR_ARCHIVE_FLUSH_ROWS", default_value_t = 100_000)]
    pub archive_flush_rows: usize,

    /// Write a Parquet part once the oldest waiting reading is this old.
    #[arg(long, env = "WEIR_ARCHIVE_FLUSH_AGE", default_value = "10s", value_parser = parse_duration)]
    pub archive_flush_age: Duration,

    /// How long after the end of a UTC day its parts are sealed into one file and its dump is written.
    #[arg(long, env = "WEIR_SEAL_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub seal_grace: Duration,

    /// How often Weir looks for days to seal.
    #[arg(long, env = "WEIR_SEAL_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub seal_interval: Duration,

    /// Longest time one SQL query may run (408 beyond it).
    #[arg(long, env = "WEIR_SQL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub sql_timeout: Duration,

    /// Most rows a SQL result may have (400 beyond it: add a LIMIT).
    #[arg(long, env = "WEIR_SQL_MAX_ROWS", default_value_t = 100_000)]
    pub sql_max_rows: usize,

    /// Memory one SQL query may use for sorts, joins and aggregations (it spills or fails cleanly beyond it).
    #[arg(long, env = "WEIR_SQL_MEMORY", default_value = "512MiB", value_parser = parse_size)]
    pub sql_memory: u64,
}

impl ArchiveArgs {
    /// The archive URL, defaulting to `<data_dir>/archive`.
    pub fn url(&self, data_dir: &std::path::Path) -> String {
        self.archive_url.clone().unwrap_or_else(|| data_dir.join("archive").display().to_string())
    }

    pub fn sql_limits(&self) -> SqlLimits {
        SqlLimits {
            timeout: self.sql_timeout,
            max_rows: self.sql_max_rows,
            memory_bytes: usize::try_from(self.sql_memory).unwrap_or(usize::MAX),
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    crate::metrics::handle();
    let sensors = SensorSet::new(&args.sensors).context("--sensors / WEIR_SENSORS")?;
    let keys = ApiKeys::new(args.api_keys.iter().cloned());
    if !keys.enabled() {
        tracing::warn!(
            "no API key configured (--api-key / WEIR_API_KEYS): authentication is OFF, anyone who can reach this port can write"
        );
    }
    weir_pipeline::data_dir::check_or_stamp(&args.data_dir)?;
    let wal_dir = args.data_dir.join("wal");
    let options = WalOptions {
        segment_bytes: args.wal_segment_bytes,
        queue_depth: args.wal_queue_depth as usize,
        ..WalOptions::default()
    };
    let (wal, recovery) = Wal::open(&wal_dir, options)
        .with_context(|| format!("cannot open the write-ahead log in {}", wal_dir.display()))?;
    if let Some(t) = &recovery.truncated {
        tracing::warn!(
            file = %t.file.display(), offset = t.offset, bytes_removed = t.bytes_removed, reason = %t.reason,
            "cut off a torn tail of the write-ahead log (a crash interrupted a write that was never acknowledged)"
        );
    }
    tracing::info!(segments = recovery.segments, last_position = recovery.last_position, dir = %wal_dir.display(), "write-ahead log recovered");

    let limits = IngestLimits {
        decode: DecodeLimits {
            max_line_bytes: usize::try_from(args.max_line_bytes).unwrap_or(usize::MAX),
            max_reported_errors: args.max_reported_errors,
            batch_rows: args.batch_rows as usize,
        },
        max_body_bytes: args.max_body_bytes,
        max_request_time: args.max_request_time,
        queue_timeout: args.ingest_queue_timeout,
    };
    let log = Arc::new(wal.appender());
    let cluster = cluster_config(&args)?;
    if let Some(c) = &cluster {
        stop_with_the_cluster();
        tracing::info!(process = c.process, processes = c.processes(), "running as one process of a cluster");
    }
    // In a cluster every process archives its own log into one archive that all of them share.
    let share = cluster.as_ref().map(|c| ClusterShare { process: c.process as u32, processes: c.processes() as u32 });
    if share.is_some() && args.archive.archive_url.is_none() {
        anyhow::bail!(
            "a cluster needs one archive that every process shares: pass the same --archive-url (WEIR_ARCHIVE_URL) \
             to every process, e.g. --archive-url file:///shared/weir-archive or s3://bucket/weir"
        );
    }
    let mut location =
        ArchiveLocation::open(&args.archive.url(&args.data_dir)).with_context(|| "--archive-url / WEIR_ARCHIVE_URL")?;
    if let Some(share) = share {
        location = location.shared_by(share);
    }
    let parts = location.list_parts().await.context("cannot list the archive")?;
    if let Some(foreign) = parts.iter().find(|p| share.is_some() != (p.process.is_some() || p.sealed)) {
        anyhow::bail!(
            "the archive {} holds {}, which a {} does not read: a single Weir's archive and a cluster's are not \
             interchangeable; give this Weir its own --archive-url",
            location.url,
            foreign.path,
            if share.is_some() { "cluster" } else { "single Weir" }
        );
    }
    finish_interrupted_seals(&location).await.context("finishing an interrupted seal")?;
    let checkpoint = checkpoint_path(&args.data_dir);
    let archived = read_checkpoint(&checkpoint)?;
    let wal_first = weir_pipeline::wal::first_position(&wal_dir)?;
    if wal_first > archived + 1 {
        anyhow::bail!(
            "the write-ahead log starts at position {wal_first}, but the archive checkpoint {} says the archive holds \
             only positions up to {archived}: positions {}..{} are in neither. Restore the checkpoint file (or the \
             data directory) from a backup",
            checkpoint.display(),
            archived + 1,
            wal_first - 1
        );
    }
    // The statistics start from the archive (what the log held through the checkpoint, deduplicated), then read
    // the log after it; so the log before the checkpoint may be deleted.
    let snapshot = ArchiveSnapshot::open(&location, archived, tokio::runtime::Handle::current())
        .await
        .context("cannot list the archive to load the statistics")?;
    tracing::info!(parts = snapshot.parts(), archived_through = archived, "statistics start from the archive");
    let snapshot = snapshot.filter_map(|item| {
        item.map_err(|e| tracing::error!(error = %e, "an archive part could not be read; the statistics leave it out"))
            .ok()
    });
    let options = StatsOptions {
        workers: args.workers as usize,
        dedup_horizon: args.dedup_horizon,
        cluster: cluster.clone(),
        ..StatsOptions::default()
    };
    // In a cluster this waits (bounded by --cluster-connect-timeout) for the other processes.
    let engine = tokio::task::block_in_place(|| {
        StatsEngine::start_from(
            wal_dir.clone(),
            log.watch_durable(),
            sensors.clone(),
            options,
            StartFrom { through: archived, snapshot: Box::new(snapshot) },
        )
    })?;
    tracing::info!(
        workers = args.workers,
        "statistics dataflow started; it loads the archive and replays the log after it first"
    );
    let (process, processes) = cluster.as_ref().map_or((0, 1), |c| (c.process as u32, c.processes()));
    let stats = Arc::new(
        StatsService::new(engine, sensors.clone(), args.read_wait, log.clone()).in_cluster(process, processes),
    );
    let verdicts = share.map(|_| stats.engine().verdicts() as Arc<dyn weir_pipeline::stats::DedupVerdicts>);
    let archiver = Archiver::start(
        wal_dir.clone(),
        log.watch_durable(),
        location.clone(),
        checkpoint,
        ArchiverOptions {
            flush_rows: args.archive.archive_flush_rows.max(1),
            flush_age: args.archive.archive_flush_age,
            dedup_horizon: args.dedup_horizon,
            verdicts,
            ..ArchiverOptions::default()
        },
        tokio::runtime::Handle::current(),
    )?;
    tracing::info!(archive = %location.url, "archiver started");
    stats.engine().attach_archive(archiver.progress.clone());
    // Sealing replaces parts, so it waits until the statistics and the archiver have read the archive at start.
    let loaded = {
        let (stats, progress) = (stats.clone(), archiver.progress.clone());
        move || progress.started.load(std::sync::atomic::Ordering::Acquire) && stats.processed_position() >= archived
    };
    let sealer = tokio::spawn(seal_due_days(
        location.clone(),
        archiver.progress.clone(),
        share.map(|_| stats.clone()),
        args.archive.seal_grace,
        args.archive.seal_interval,
        loaded.clone(),
    ));
    let trimmer = (!args.keep_archived_wal)
        .then(|| tokio::spawn(trim_archived_wal(wal_dir.clone(), archiver.progress.clone(), stats.clone(), loaded)));
    // Alone, a query reads this archiver's unflushed readings beside the parts; in a cluster, every process flushes
    // first and the query reads the shared archive only.
    let local_progress = share.is_none().then(|| archiver.progress.clone());
    let mut sql = SqlService::new(
        SqlArchive::new(location, local_progress, args.archive.sql_limits()),
        archiver.progress.clone(),
        log.clone(),
        args.read_wait,
    );
    if share.is_some() {
        sql = sql.in_cluster(stats.clone());
    }
    let sql = Arc::new(sql);
    let mut ingest = IngestService::new(Decoder::new(sensors), limits, log);
    if cluster.is_some() {
        ingest = ingest.in_cluster(process);
    }
    let ingest = Arc::new(ingest);

    let readiness =
        Arc::new(crate::health::Readiness { log_at_start: recovery.last_position, archive: archiver.progress.clone() });
    let gauges = Arc::new(crate::metrics::EngineGauges::new(Some(wal_dir.clone())));
    let sampler = tokio::spawn(sample_dataflow_lag(gauges.clone(), ingest.clone(), stats.clone()));
    // One signal stops both servers and ends the live feeds.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state = AppState { ingest, stats: stats.clone(), sql, keys, readiness, gauges, stopping: stopped.clone() };

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen / WEIR_LISTEN)", args.listen))?;
    let addr = listener.local_addr()?;
    let grpc_listener = match args.grpc_listen.as_str() {
        "off" => None,
        grpc => Some(tokio::net::TcpListener::bind(grpc).await.with_context(|| {
            format!("cannot listen on {grpc} (--grpc-listen / WEIR_GRPC_LISTEN; `off` turns gRPC off)")
        })?),
    };
    let signal = shutdown_signal()?;
    tokio::spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    let stopping = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "weir is serving");
    // Scripts and tests read these lines to learn the ports.
    println!("weir listening on http://{addr}");
    let grpc = match grpc_listener {
        None => None,
        Some(grpc_listener) => {
            let grpc_addr = grpc_listener.local_addr()?;
            println!("weir grpc listening on http://{grpc_addr}");
            tracing::info!(%grpc_addr, "gRPC is serving (weir.v1.Weir, health, reflection)");
            let service = crate::grpc::WeirGrpc::new(Arc::new(state.clone()), state.keys.clone());
            let max_message = usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX);
            let shutdown = stopping(stopped.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = crate::grpc::serve(grpc_listener, service, max_message, shutdown).await {
                    tracing::error!(error = %e, "the gRPC server stopped");
                }
            }))
        }
    };

    let limits =
        crate::listen::HttpLimits { header_timeout: args.header_timeout, shutdown_timeout: args.shutdown_timeout };
    crate::listen::serve(listener, app(state), limits, stopping(stopped)).await;
    if let Some(grpc) = grpc {
        // Subscriptions have ended with the stop signal; calls in flight get the same bound as HTTP requests.
        let _ = tokio::time::timeout(args.shutdown_timeout, grpc).await;
    }
    // Both hold the statistics; wait until they are gone so the engine can be stopped below.
    sealer.abort();
    let _ = sealer.await;
    sampler.abort();
    let _ = sampler.await;
    if let Some(t) = trimmer {
        t.abort();
        let _ = t.await;
    }
    tracing::info!("shutting down: stopping the statistics, flushing the archive, closing the write-ahead log");
    tokio::task::spawn_blocking(move || {
        if let Some(stats) = Arc::into_inner(stats) {
            stats.stop();
        }
        if let Err(e) = archiver.stop() {
            tracing::error!(error = %e, "the archiver stopped with an error; it resumes from its checkpoint at the next start");
        }
        wal.close();
    })
    .await
    .context("shutting down")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Seals every day that has been over for `grace`, every `interval`.
async fn seal_due_days(
    location: ArchiveLocation,
    progress: Arc<weir_sinks::archive::ArchiveProgress>,
    cluster: Option<Arc<StatsService>>,
    grace: Duration,
    interval: Duration,
    loaded: impl Fn() -> bool,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        if !loaded() {
            continue;
        }
        let now = chrono::Utc::now().timestamp_micros();
        let grace = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
        let due = match days_due(&location, now, grace).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the archive to find days to seal");
                continue;
            }
        };
        // In a cluster: only once every process has loaded the archive, and only what every process committed.
        let committed: Option<BTreeMap<u32, u64>> = match &cluster {
            None => None,
            Some(_) if due.is_empty() => None,
            Some(stats) => match stats.archive_states(false).await {
                Ok(states) if states.iter().all(|s| s.loaded) => {
                    Some(states.iter().map(|s| (s.process, s.committed)).collect())
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask the cluster where its archive stands; sealing waits");
                    continue;
                }
            },
        };
        for date in due {
            let started = std::time::Instant::now();
            let result = seal_committed_day(&location, &date, Some(&progress), None, committed.as_ref()).await;
            metrics::histogram!("weir_seal_duration_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(o) => {
                    metrics::counter!("weir_seal_runs_total", "result" => "ok").increment(1);
                    metrics::counter!("weir_seal_late_readings_total").increment(o.late_now);
                    tracing::info!(
                        %date, readings = o.record.readings, late = o.record.late_readings, parts = o.parts_merged,
                        took_ms = started.elapsed().as_millis() as u64, "sealed a day and wrote its dump"
                    )
                }
                Err(e) => {
                    metrics::counter!("weir_seal_runs_total", "result" => "error").increment(1);
                    tracing::warn!(%date, error = %e, "sealing failed; it is retried")
                }
            }
        }
    }
}

/// Where this process sits in its cluster (`--cluster FILE` or `--cluster-hosts`, with `--process`), if anywhere.
fn cluster_config(args: &ServeArgs) -> anyhow::Result<Option<ClusterConfig>> {
    Ok(match (&args.cluster, args.cluster_hosts.is_empty(), args.process) {
        (Some(path), _, Some(process)) => Some(
            ClusterConfig::from_hosts_file(path, process as usize, args.cluster_connect_timeout)
                .context("--cluster / WEIR_CLUSTER")?,
        ),
        (None, false, Some(process)) => Some(
            ClusterConfig::from_hosts(
                args.cluster_hosts.join("\n").as_str(),
                process as usize,
                args.cluster_connect_timeout,
            )
            .context("--cluster-hosts / WEIR_CLUSTER_HOSTS")?,
        ),
        (None, true, Some(_)) => anyhow::bail!("--process needs --cluster FILE or --cluster-hosts HOST:PORT,..."),
        _ => None,
    })
}

/// A timely cluster stops as a whole: when a peer process dies, timely's network threads panic (and a worker that
/// panics leaves the cluster's progress stuck). On a panic in a `timely:` thread Weir then exits
/// (status 70) instead of serving statistics that can no longer make progress; restart every process, and each
/// recovers from its own log.
fn stop_with_the_cluster() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let timely = std::thread::current().name().is_some_and(|n| n.starts_with("timely:"));
        if !timely {
            return;
        }
        tracing::error!(
            panic = %info,
            "a thread failed in cluster mode (a peer process is probably gone); the cluster stops as a whole: \
             exiting so that every process can be restarted"
        );
        std::process::exit(70);
    }));
}

/// Samples the durable position every 100 ms for `weir_dataflow_lag_seconds`.
async fn sample_dataflow_lag(
    gauges: Arc<crate::metrics::EngineGauges>,
    ingest: Arc<IngestService>,
    stats: Arc<StatsService>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        gauges.sample(ingest.durable_position(), stats.processed_position());
    }
}

/// Deletes WAL segments once every reading in them is archived and processed by the statistics (which, like the
/// archiver, start from the archive, so they never need those segments again).
async fn trim_archived_wal(
    wal_dir: PathBuf,
    progress: Arc<weir_sinks::archive::ArchiveProgress>,
    stats: Arc<StatsService>,
    loaded: impl Fn() -> bool,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !loaded() {
            continue;
        }
        let through = progress.committed.load(std::sync::atomic::Ordering::Acquire).min(stats.processed_position());
        let dir = wal_dir.clone();
        match tokio::task::spawn_blocking(move || weir_pipeline::wal::trim_through(&dir, through)).await {
            Ok(Ok(deleted)) if !deleted.is_empty() => {
                tracing::info!(segments = deleted.len(), through, "deleted archived WAL segments")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete archived WAL segments; retrying"),
            Err(e) => tracing::warn!(error = %e, "WAL trimming task failed"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when it is first polled,
/// so a signal that arrives right after start-up is not lost (and does not kill the process uncleanly).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
