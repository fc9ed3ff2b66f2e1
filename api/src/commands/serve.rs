//! `weir serve`: open the data directory, recover the log, and serve HTTP until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use weir_pipeline::decode::Decoder;
use weir_pipeline::ingest::DecodeLimits;
use weir_pipeline::reading::{DEFAULT_SENSORS, SensorSet};
use weir_pipeline::stats::{StatsEngine, StatsOptions};
use weir_pipeline::wal::{Wal, WalOptions};

use super::{parse_duration, parse_size};
use crate::auth::ApiKeys;
use crate::ingest::{IngestLimits, IngestService};
use crate::server::{AppState, app};
use crate::stats::StatsService;

/// Options of `weir serve`. Every flag can also be set by the environment variable named in its help.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
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

    /// Deduplication is exact for duplicates within this much event time behind each device's newest reading.
    #[arg(long, env = "WEIR_DEDUP_HORIZON", default_value = "48h", value_parser = parse_duration)]
    pub dedup_horizon: Duration,

    /// Longest wait of a statistics request with `?after=` for the dataflow to catch up (503 beyond it).
    #[arg(long, env = "WEIR_READ_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub read_wait: Duration,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let sensors = SensorSet::new(&args.sensors).context("--sensors / WEIR_SENSORS")?;
    let keys = ApiKeys::new(args.api_keys.iter().cloned());
    if !keys.enabled() {
        tracing::warn!(
            "no API key configured (--api-key / WEIR_API_KEYS): authentication is OFF, anyone who can reach this port can write"
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
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
    let engine = StatsEngine::start(
        wal_dir.clone(),
        log.watch_durable(),
        sensors.clone(),
        StatsOptions { workers: args.workers as usize, dedup_horizon: args.dedup_horizon, ..StatsOptions::default() },
    )?;
    tracing::info!(workers = args.workers, "statistics dataflow started; it replays the write-ahead log first");
    let stats = Arc::new(StatsService::new(engine, sensors.clone(), args.read_wait, log.clone()));
    let ingest = Arc::new(IngestService::new(Decoder::new(sensors), limits, log));
    let state = AppState { ingest, stats: stats.clone(), keys };

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen / WEIR_LISTEN)", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "weir is serving");
    // Scripts and tests read this line to learn the port.
    println!("weir listening on http://{addr}");

    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await.context("HTTP server failed")?;
    tracing::info!("shutting down: stopping the statistics dataflow and closing the write-ahead log");
    tokio::task::spawn_blocking(move || {
        if let Some(stats) = Arc::into_inner(stats) {
            stats.stop();
        }
        wal.close();
    })
    .await
    .context("shutting down")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
