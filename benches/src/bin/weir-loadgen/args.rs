//! The command line: every flag can also be set by an environment variable (`WEIR_LOADGEN_*`, or the `WEIR_URL`,
//! `WEIR_API_KEY` and `WEIR_BIN` that Weir's other tools read).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weir_pipeline::reading::DEFAULT_SENSORS;

use crate::generate::Plan;

/// Without `--count` or `--duration`, this many readings are sent.
const DEFAULT_COUNT: u64 = 1_000_000;

/// Memory the queue of ready bodies may take (about 110 bytes a reading), so that large batches stay bounded.
const QUEUE_BYTES: usize = 256 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "weir-loadgen",
    about = "Push realistic sensor readings at a Weir over HTTP and report throughput, ack latency, errors and freshness",
    long_about = None,
    after_help = "Readings are distinct unless --dup-fraction asks for duplicates. With --sensors above 6, the names \
                  after Weir's default six are sensor_007, sensor_008, ...: start weir with --sensors listing them all \
                  (the loadgen prints the list; --spawn passes it)."
)]
pub struct Args {
    /// Base URL of the Weir server (ignored with --spawn).
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// API key, sent as the basic-auth username (with --spawn, also given to the spawned weir).
    #[arg(long, env = "WEIR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Distinct devices (vehicle-00000, vehicle-00001, ...).
    #[arg(long, env = "WEIR_LOADGEN_DEVICES", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub devices: u64,

    /// Sensors per device: Weir's six default names, then sensor_007, ... (those need weir --sensors).
    #[arg(long, env = "WEIR_LOADGEN_SENSORS", default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub sensors: u16,

    /// Target rate in readings per second, across all connections (default: as fast as Weir acknowledges).
    #[arg(long, env = "WEIR_LOADGEN_RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Send for this long (`30s`, `5m`), generating bodies continuously.
    #[arg(long, env = "WEIR_LOADGEN_DURATION", value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,

    /// Send this many readings, then stop [default: 1000000 unless --duration].
    #[arg(long, env = "WEIR_LOADGEN_COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Readings per request.
    #[arg(long, env = "WEIR_LOADGEN_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,

    /// Concurrent connections, each with one request in flight at a time.
    #[arg(long, env = "WEIR_LOADGEN_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,

    /// Send InfluxDB line protocol to `/api/v2/write?precision=us` (`v,device=… sensor=value µs`, one reading a
    /// line) instead of NDJSON to `/ingest`; `--path` changes the endpoint (e.g. `/write?db=weir&precision=u` for
    /// InfluxDB 1.x).
    #[arg(long, env = "WEIR_LOADGEN_LINE_PROTOCOL")]
    pub line_protocol: bool,

    /// No freshness probe (it reads Weir's live statistics; other servers have none).
    #[arg(long, env = "WEIR_LOADGEN_NO_FRESHNESS")]
    pub no_freshness: bool,

    /// The path bodies are posted to (default: `/ingest`, or `/api/v2/write?precision=us` with --line-protocol).
    #[arg(long, env = "WEIR_LOADGEN_PATH")]
    pub path: Option<String>,

    /// Compress each body with gzip (Content-Encoding: gzip).
    #[arg(long, env = "WEIR_LOADGEN_GZIP")]
    pub gzip: bool,

    /// Fraction of the (non-duplicate) readings that are late: timestamped 1-47 h before the stream's event time.
    #[arg(long, env = "WEIR_LOADGEN_LATE_FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub late_fraction: f64,

    /// Fraction of the lines that repeat an earlier, already generated reading exactly.
    #[arg(long, env = "WEIR_LOADGEN_DUP_FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub dup_fraction: f64,

    /// Event time of the first readings (RFC 3339) [default: now]. Runs against the same Weir with overlapping
    /// event times send the same readings again.
    #[arg(long, env = "WEIR_LOADGEN_START")]
    pub start: Option<String>,

    /// Event time between two readings of one series (`100ms`, `5m`): with --rate, how fast event time runs.
    #[arg(long, env = "WEIR_LOADGEN_TICK", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub tick: Duration,

    /// Seed of the generator's random choices (late, duplicate), so that a run can be repeated exactly.
    #[arg(long, env = "WEIR_LOADGEN_SEED", default_value_t = 1)]
    pub seed: u64,

    /// Threads building request bodies [default: a quarter of the cores, at least 1].
    #[arg(long, env = "WEIR_LOADGEN_GENERATOR_THREADS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub generator_threads: Option<u32>,

    /// A request not answered within this time counts as a "timeout" error.
    #[arg(long, env = "WEIR_LOADGEN_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Print the summary as JSON on stdout (otherwise as text).
    #[arg(long, env = "WEIR_LOADGEN_JSON")]
    pub json: bool,

    /// Start a fresh Weir on a temporary data directory, load it, sample its RSS and CPU, then stop it (SIGTERM).
    #[arg(long, env = "WEIR_LOADGEN_SPAWN")]
    pub spawn: bool,

    /// The weir binary for --spawn [default: `weir` next to this executable].
    #[arg(long, env = "WEIR_BIN")]
    pub weir_bin: Option<PathBuf>,

    /// An extra argument for the spawned `weir serve` (repeat for several, e.g. --weir-arg=--workers=2).
    #[arg(long = "weir-arg", env = "WEIR_LOADGEN_WEIR_ARG", allow_hyphen_values = true)]
    pub weir_args: Vec<String>,
}

impl Args {
    /// Checks what clap cannot express alone.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.late_fraction + self.dup_fraction > 1.0 {
            anyhow::bail!("--late-fraction plus --dup-fraction is above 1");
        }
        if self.dup_fraction >= 1.0 {
            anyhow::bail!("--dup-fraction must be below 1: duplicates repeat earlier readings");
        }
        Ok(())
    }

    /// Readings to send, or `None` to send until `--duration` is over.
    pub fn count(&self) -> Option<u64> {
        match (self.count, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_COUNT),
        }
    }

    /// The sensor names readings cycle through: Weir's defaults first, then `sensor_007`, ...
    pub fn sensor_names(&self) -> Vec<String> {
        sensor_names(usize::from(self.sensors))
    }

    /// What the generator threads build.
    pub fn plan(&self, sensors: Vec<String>) -> anyhow::Result<Plan> {
        let start_micros = match &self.start {
            Some(text) => weir_pipeline::decode::parse_timestamp(text).map_err(|e| anyhow::anyhow!("--start: {e}"))?,
            None => now_micros(),
        };
        Ok(Plan {
            devices: self.devices,
            sensors,
            batch: self.batch as usize,
            count: self.count(),
            start_micros,
            tick_micros: i64::try_from(self.tick.as_micros()).unwrap_or(i64::MAX).max(1),
            late_fraction: self.late_fraction,
            dup_fraction: self.dup_fraction,
            seed: self.seed,
            gzip: self.gzip,
            line_protocol: self.line_protocol,
        })
    }

    /// Where bodies are posted.
    pub fn ingest_path(&self) -> &str {
        match (&self.path, self.line_protocol) {
            (Some(path), _) => path,
            (None, true) => "/api/v2/write?precision=us",
            (None, false) => "/ingest",
        }
    }

    pub fn generator_threads(&self) -> usize {
        self.generator_threads
            .map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 4).max(1), |n| n as usize)
    }

    /// Ready bodies the generators may keep queued: a few per connection, within [`QUEUE_BYTES`].
    pub fn queue_capacity(&self) -> usize {
        let per_body = self.batch as usize * 110;
        let wanted = (self.connections as usize * 4).max(64);
        wanted.min(QUEUE_BYTES / per_body.max(1)).max(self.connections as usize * 2).max(2)
    }
}

pub fn sensor_names(n: usize) -> Vec<String> {
    (0..n).map(|i| DEFAULT_SENSORS.get(i).map_or_else(|| format!("sensor_{:03}", i + 1), |s| s.to_string())).collect()
}

fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    // Whole 100 ms, as the readings of one tick are spaced.
    (since_epoch.as_micros() as i64) / 100_000 * 100_000
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let f: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&f) { Ok(f) } else { Err("must be between 0 and 1".into()) }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let r: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if r.is_finite() && r > 0.0 { Ok(r) } else { Err("must be a positive number of readings per second".into()) }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Args::command().debug_assert();
    }

    #[test]
    fn sensor_names_start_with_the_defaults() {
        let names = super::sensor_names(8);
        assert_eq!(names[0], "speed");
        assert_eq!(names[5], "location_longitude");
        assert_eq!(names[6], "sensor_007");
        assert_eq!(names[7], "sensor_008");
        weir_pipeline::reading::SensorSet::new(&names).expect("valid sensor names");
    }
}
