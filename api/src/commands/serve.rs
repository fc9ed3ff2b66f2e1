//! `weir serve`: parse the flags into a [`NodeConfig`], start the [`Node`], serve HTTP and gRPC over its services
//! until SIGINT/SIGTERM, then shut the node down.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use weir_operators::completeness::ExpectedIntervals;
use weir_pipeline::cluster::ClusterConfig;
use weir_pipeline::ingest::DecodeLimits;
use weir_pipeline::line_protocol::{LineProtocolMapping, SensorNaming};
use weir_pipeline::reading::{DEFAULT_SENSORS, SensorSet};
use weir_pipeline::stats::StatsOptions;
use weir_pipeline::wal::WalOptions;
use weir_sinks::archive::ArchiverOptions;
use weir_sinks::sql::SqlLimits;

use super::{parse_duration, parse_size};

/// The widths `--sketch-widths` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SketchWidths(pub Vec<weir_operators::Width>);

fn parse_sketch_widths(text: &str) -> Result<SketchWidths, String> {
    if text.trim() == "none" {
        return Ok(SketchWidths(Vec::new()));
    }
    let widths = text
        .split(',')
        .map(|w| {
            weir_operators::Width::parse(w.trim())
                .ok_or_else(|| format!("unknown window width {w:?}: use 1m, 15m, 1h and 1d, comma-separated, or none"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SketchWidths(widths))
}

/// `--expected-interval speed=1s,fuel=10s,*=1m`: each sensor's expected interval between readings.
fn parse_expected_intervals(text: &str) -> Result<ExpectedIntervals, String> {
    let pairs = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (sensor, interval) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not sensor=interval: write e.g. speed=1s,fuel=10s,*=1m"))?;
            let interval = parse_duration(interval.trim()).map_err(|e| format!("{pair:?}: {e}"))?;
            Ok((sensor.trim().to_owned(), i64::try_from(interval.as_micros()).unwrap_or(i64::MAX)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    ExpectedIntervals::new(pairs).map_err(|e| e.to_string())
}

/// An API key: not blank (a blank key used to be dropped, and a list of only blank keys turned authentication off).
fn parse_api_key(text: &str) -> Result<String, String> {
    let key = text.trim();
    if key.is_empty() {
        return Err(
            "an API key is blank: give a non-empty key, or no --api-key at all to turn authentication off".into()
        );
    }
    Ok(key.to_owned())
}
use crate::auth::ApiKeys;
use crate::node::ingest::{IngestLimits, Protocols};
use crate::node::{Node, NodeConfig};
use crate::server::{AppState, app};

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

    /// Accepted sensor names, comma-separated; replaces the default set. `any` accepts every name of 1 to 128 ASCII
    /// letters, digits, `_`, `.`, `-` and `:` (at most 65 535 names; --max-series bounds the series they start).
    #[arg(long, env = "WEIR_SENSORS", value_delimiter = ',', default_values_t = DEFAULT_SENSORS.map(String::from))]
    pub sensors: Vec<String>,

    /// How line protocol (`/write`, `/api/v2/write`, `/api/v3/write_lp`) names a field's sensor: `field` (the field
    /// key) or `measurement_field` (`cpu usage=1` is sensor `cpu_usage`).
    #[arg(long, env = "WEIR_LINE_PROTOCOL_SENSOR", default_value = "field", value_parser = parse_sensor_naming)]
    pub line_protocol_sensor: SensorNaming,

    /// The line protocol tags that name the device, comma-separated, first present wins; a line with none of them
    /// is the default device's.
    #[arg(long, env = "WEIR_LINE_PROTOCOL_DEVICE_TAGS", value_delimiter = ',', default_values_t = ["device".to_string(), "host".to_string()])]
    pub line_protocol_device_tags: Vec<String>,

    /// An API key (repeat the flag for several; the variable takes a comma-separated list). No key: auth is off.
    #[arg(long = "api-key", env = "WEIR_API_KEYS", value_delimiter = ',', hide_env_values = true, value_parser = parse_api_key)]
    pub api_keys: Vec<String>,

    /// A TOML file of named API keys with scopes (write, read, sql, admin), kept as SHA-256 hashes; managed by
    /// `weir keys add|list|revoke`, reloaded when it changes and on SIGHUP. `--api-key` keys keep every scope.
    #[arg(long, env = "WEIR_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// The most readings a second one API key may write, for keys whose key file entry sets none (429 with
    /// Retry-After beyond it). Default: unlimited.
    #[arg(long, env = "WEIR_KEY_READINGS_PER_SECOND", value_parser = clap::value_parser!(u64).range(1..))]
    pub key_readings_per_second: Option<u64>,

    /// The most requests of one API key at once, for keys whose key file entry sets none (429 beyond it).
    /// Default: unlimited.
    #[arg(long, env = "WEIR_KEY_CONCURRENT_REQUESTS", value_parser = clap::value_parser!(u32).range(1..))]
    pub key_concurrent_requests: Option<u32>,

    /// PEM certificate chain (the server's own first): serve HTTP, gRPC (with Flight SQL) and the PostgreSQL port
    /// over TLS only. Needs --tls-key. Read again on SIGHUP (open connections keep theirs).
    #[arg(long, env = "WEIR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WEIR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: every port then requires a client certificate they signed (mTLS), besides the API key.
    #[arg(long, env = "WEIR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Longest accepted NDJSON line; a longer line is rejected and the rest of the body goes on.
    #[arg(long, env = "WEIR_MAX_LINE_BYTES", default_value = "64KiB", value_parser = parse_size)]
    pub max_line_bytes: u64,

    /// Largest accepted request body, after gzip decoding (413 beyond it).
    #[arg(long, env = "WEIR_MAX_BODY_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub max_body_bytes: u64,

    /// Largest message of a protocol that is decoded whole (Prometheus remote write), both as sent and once
    /// decompressed (413 beyond it; a body that declares a larger expansion is refused before decompressing).
    #[arg(long, env = "WEIR_MAX_MESSAGE_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_message_bytes: u64,

    /// The Prometheus remote write label that names a sample's device (a series without it is the default
    /// device's).
    #[arg(long, env = "WEIR_REMOTE_WRITE_DEVICE_LABEL", default_value = "instance")]
    pub remote_write_device_label: String,

    /// Subscribe to this MQTT broker (`mqtt://[user[:password]@]host[:port]`): QoS 1, a persistent session, each
    /// message acknowledged only once its readings are durable. Needs --mqtt-topic.
    #[arg(long, env = "WEIR_MQTT_URL")]
    pub mqtt_url: Option<String>,

    /// A topic filter to subscribe to (`+` and `#` wildcards); repeat the flag (the variable: comma-separated).
    #[arg(long = "mqtt-topic", env = "WEIR_MQTT_TOPICS", value_delimiter = ',')]
    pub mqtt_topics: Vec<String>,

    /// The MQTT client id: the broker keeps this session's undelivered messages while Weir is down.
    #[arg(long, env = "WEIR_MQTT_CLIENT_ID", default_value = "weir")]
    pub mqtt_client_id: String,

    /// How MQTT payloads are written: `ndjson` or `line-protocol`.
    #[arg(long, env = "WEIR_MQTT_FORMAT", default_value = "ndjson", value_parser = ["ndjson", "line-protocol"])]
    pub mqtt_format: String,

    /// Line protocol payloads' timestamp precision (ns, us, ms, s, auto, …).
    #[arg(long, env = "WEIR_MQTT_PRECISION", default_value = "ns")]
    pub mqtt_precision: String,

    /// The topic level (0-based) that names the device of readings that name none (`fleet/+/telemetry`: 1).
    #[arg(long, env = "WEIR_MQTT_DEVICE_LEVEL")]
    pub mqtt_device_level: Option<usize>,

    /// The OTLP resource attribute that names a data point's device (a resource without it is the default
    /// device's).
    #[arg(long, env = "WEIR_OTLP_DEVICE_ATTRIBUTE", default_value = "service.instance.id")]
    pub otlp_device_attribute: String,

    /// Longest time one ingest request may take to send its body (408 beyond it).
    #[arg(long, env = "WEIR_MAX_REQUEST_TIME", default_value = "5m", value_parser = parse_duration)]
    pub max_request_time: Duration,

    /// How long a request waits for room in the full WAL queue before it gets 503 with Retry-After.
    #[arg(long, env = "WEIR_INGEST_QUEUE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ingest_queue_timeout: Duration,

    /// At most this many rejected lines are described in a 400 response (all are counted).
    #[arg(long, env = "WEIR_MAX_REPORTED_ERRORS", default_value_t = 10_000)]
    pub max_reported_errors: usize,

    /// The most readings an `?atomic=true` request may hold until its end (413 beyond; each costs 24–48 bytes).
    #[arg(long, env = "WEIR_MAX_ATOMIC_READINGS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub max_atomic_readings: u64,

    /// How long an `Idempotency-Key` (gRPC `batch_id`) is remembered after its request: a retry within it gets the
    /// first answer instead of a second write.
    #[arg(long, env = "WEIR_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_window: Duration,

    /// The most memory the remembered keys may take (at most ~300 bytes per key without rejected lines; beyond it the
    /// oldest are forgotten early, counted in weir_idempotency_evicted_total).
    #[arg(long, env = "WEIR_IDEMPOTENCY_MEMORY", default_value = "64MiB", value_parser = parse_size)]
    pub idempotency_memory: u64,

    /// How long rejected lines stay in the record of rejected lines (`GET /api/v1/rejected`, the SQL table
    /// `rejected`, in `<data-dir>/rejected/`): older lines are not shown and their segments are deleted.
    #[arg(long, env = "WEIR_REJECTED_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub rejected_retention: Duration,

    /// The most disk the record of rejected lines takes (at least 128KiB): beyond it the oldest lines are deleted.
    #[arg(long, env = "WEIR_REJECTED_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub rejected_max_bytes: u64,

    /// The most rejected lines one request records (0: none); the rest are counted in
    /// weir_rejected_not_recorded_total, and every line in weir_readings_rejected_total.
    #[arg(long, env = "WEIR_REJECTED_MAX_PER_REQUEST", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rejected_max_per_request: u32,

    /// How many bytes of each rejected line the record keeps (at most 4096).
    #[arg(long, env = "WEIR_REJECTED_TEXT_BYTES", default_value_t = 256, value_parser = clap::value_parser!(u16).range(0..=4096))]
    pub rejected_text_bytes: u16,

    /// At most this many bytes of reasons and echoed lines in a rejection report (beyond: lines only counted, and
    /// the report says `"truncated": true`).
    #[arg(long, env = "WEIR_MAX_REPORT_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_report_bytes: u64,

    /// Readings per WAL record (the unit in which ingest hands readings on).
    #[arg(long, env = "WEIR_BATCH_ROWS", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_rows: u32,

    /// Size at which a WAL segment is closed and a new one started.
    #[arg(long, env = "WEIR_WAL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub wal_segment_bytes: u64,

    /// Batches that may wait for the WAL writer before requests are made to wait (backpressure).
    #[arg(long, env = "WEIR_WAL_QUEUE_DEPTH", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub wal_queue_depth: u32,

    /// How long a group commit waits for more requests' batches while waiting brings company (concurrent
    /// requests; a lone client never waits): fewer fsyncs and wake-ups for up to this much more acknowledgement
    /// latency; 0 turns it off.
    #[arg(long, env = "WEIR_WAL_COMMIT_DELAY", default_value = "2500us", value_parser = parse_commit_delay)]
    pub wal_commit_delay: Duration,

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

    /// A series keeps its windows in memory for the days within this much event time behind its newest reading
    /// (and for every day not yet sealed); older windows are answered from the sealed days' rollups. At least
    /// --dedup-horizon.
    #[arg(long, env = "WEIR_LIVE_HORIZON", default_value = "48h", value_parser = parse_duration)]
    pub live_horizon: Duration,

    /// The window widths whose live windows carry a quantile sketch (p50 … p99 and `q=`): a comma-separated list
    /// of 1m, 15m, 1h, 1d, or `none`. Not 1m by default: most windows are 1-minute ones, and a sketch costs about
    /// 100–170 bytes a window (README "Data quality"); rollups and SQL always carry them.
    #[arg(long, env = "WEIR_SKETCH_WIDTHS", default_value = "15m,1h,1d", value_parser = parse_sketch_widths)]
    pub sketch_widths: SketchWidths,

    /// Each sensor's expected interval between readings, for windows' `expected` and `completeness` and the
    /// dashboard's completeness map: `speed=1s,fuel=10s`, with `*=1m` for every sensor not named. A sensor without
    /// one has no completeness. Default: none.
    #[arg(long, env = "WEIR_EXPECTED_INTERVAL", default_value = "", value_parser = parse_expected_intervals)]
    pub expected_interval: ExpectedIntervals,

    /// Most series (device, sensor) stored: a reading that would start another is rejected with its line number
    /// and "series limit reached"; readings of stored series are always accepted.
    #[arg(long, env = "WEIR_MAX_SERIES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_series: u64,

    /// Memory the state that grows with the data may take (live windows, deduplication keys, device registry,
    /// unflushed archive readings, and SQL's --sql-memory × --sql-concurrency): from 90 % of it new series are
    /// refused on their line, at 100 % ingest answers 503 [default: half of the machine's or the cgroup's memory].
    #[arg(long, env = "WEIR_MEMORY_LIMIT", value_parser = parse_size)]
    pub memory_limit: Option<u64>,

    /// Longest wait of a statistics request with `?after=` for the dataflow to catch up, and of a SQL query for the
    /// archive to take in what was acknowledged before it (503 with `Retry-After` beyond it).
    #[arg(long, env = "WEIR_READ_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub read_wait: Duration,

    /// Where the gRPC API listens (`off`: no gRPC); port 0 picks a free port.
    #[arg(long, env = "WEIR_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: String,

    /// The largest gRPC message (a `Write`, or one message of an `Ingest` stream). A message is decoded whole and
    /// costs about 7× its size in memory at its peak (measured), so large loads go as a stream of messages.
    #[arg(long, env = "WEIR_GRPC_MAX_MESSAGE_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub grpc_max_message_bytes: u64,

    /// gRPC connections open at once; more are closed as they arrive.
    #[arg(long, env = "WEIR_GRPC_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_connections: u32,

    /// A gRPC connection that sends nothing (not even the answer to a keepalive ping) for this long is closed.
    #[arg(long, env = "WEIR_GRPC_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub grpc_idle_timeout: Duration,

    /// Where the PostgreSQL wire protocol listens (`off`: none): psql, Grafana, psycopg, JDBC tools query Weir's SQL
    /// there, read-only, with the same limits as `POST /api/v1/sql`; the password is an API key.
    #[arg(long, env = "WEIR_PG_LISTEN", default_value = "127.0.0.1:5433")]
    pub pg_listen: String,

    /// PostgreSQL connections open at once; more are closed as they arrive.
    #[arg(long, env = "WEIR_PG_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub pg_max_connections: u32,

    /// HTTP connections open at once; more are closed as they arrive.
    #[arg(long, env = "WEIR_HTTP_MAX_CONNECTIONS", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

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

    /// How much lower the archiver's CPU priority is than ingest's and the statistics' (a nice increment; 0: the
    /// same): where cores are short, writing Parquet parts takes what acknowledging and the live statistics leave,
    /// and catches up from the log.
    #[arg(long, env = "WEIR_ARCHIVE_NICE", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub archive_nice: u8,

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

    /// The longest SQL query text (400 beyond it).
    #[arg(long, env = "WEIR_SQL_MAX_QUERY_BYTES", default_value = "64KiB", value_parser = parse_size)]
    pub sql_max_query_bytes: u64,

    /// SQL queries that run at once, each on a thread of its own (never on the threads serving requests).
    #[arg(long, env = "WEIR_SQL_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub sql_concurrency: u32,

    /// Workers that run the queries' partitions, shared by all queries (0: one per core): how many cores one query
    /// may use at once, and each query's `target_partitions`.
    #[arg(long, env = "WEIR_SQL_PARALLELISM", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub sql_parallelism: u32,

    /// SQL queries that may wait for a thread; beyond them a query gets 503 at once.
    #[arg(long, env = "WEIR_SQL_QUEUE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub sql_queue: u32,

    /// How much lower the SQL threads' CPU priority is than ingest's and the statistics' (a nice increment; 0: the
    /// same): where cores are short, queries take what the rest leaves.
    #[arg(long, env = "WEIR_SQL_NICE", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub sql_nice: u8,

    /// Memory for the archive files' Parquet footers and statistics, kept between queries so that a query does not
    /// read them again (0: none). Part of the memory budget, like --sql-memory.
    #[arg(long, env = "WEIR_SQL_CACHE", default_value = "64MiB", value_parser = parse_size)]
    pub sql_cache: u64,
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
            max_query_bytes: usize::try_from(self.sql_max_query_bytes).unwrap_or(usize::MAX),
            concurrency: self.sql_concurrency as usize,
            parallelism: self.sql_parallelism as usize,
            queue: self.sql_queue as usize,
            nice: self.sql_nice,
            cache_bytes: usize::try_from(self.sql_cache).unwrap_or(usize::MAX),
        }
    }
}

impl ServeArgs {
    /// The TLS certificate of every port, read now (`None` without --tls-cert).
    pub fn tls(&self) -> anyhow::Result<Option<crate::tls::Tls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let files =
            crate::tls::TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca.clone() };
        Ok(Some(crate::tls::Tls::load(files)?))
    }

    /// The MQTT subscription, if `--mqtt-url` is given.
    pub fn mqtt_config(&self) -> anyhow::Result<Option<crate::mqtt::MqttConfig>> {
        let Some(url) = &self.mqtt_url else { return Ok(None) };
        let format = match self.mqtt_format.as_str() {
            "line-protocol" => crate::node::ingest::MessageFormat::LineProtocol(
                self.mqtt_precision.parse().map_err(|e: String| anyhow::anyhow!("--mqtt-precision: {e}"))?,
            ),
            _ => crate::node::ingest::MessageFormat::Ndjson,
        };
        Ok(Some(crate::mqtt::MqttConfig {
            url: url.clone(),
            topics: self.mqtt_topics.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect(),
            client_id: self.mqtt_client_id.clone(),
            format,
            device_level: self.mqtt_device_level,
            max_message_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
        }))
    }

    /// The node's configuration from these flags (`--config`, flags and `WEIR_*` variables already merged).
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let sensors = match self.sensors.as_slice() {
            [any] if any.trim() == "any" => SensorSet::any(),
            names => SensorSet::new(names).context("--sensors / WEIR_SENSORS")?,
        };
        let memory_limit = self.memory_limit.unwrap_or_else(weir_pipeline::budget::default_limit);
        let sql_share = self.archive.sql_limits().memory_share();
        anyhow::ensure!(
            memory_limit > sql_share.saturating_add(16 << 20),
            "--memory-limit ({} MiB) must leave room beyond SQL's share (--sql-memory × --sql-concurrency + \
             --sql-cache = {} MiB) and 16 MiB for the data's state: raise it, or lower --sql-memory or --sql-cache",
            memory_limit >> 20,
            sql_share >> 20
        );
        anyhow::ensure!(
            self.live_horizon >= self.dedup_horizon,
            "--live-horizon ({:?}) must cover --dedup-horizon ({:?}): the live windows must hold every day whose \
             duplicates deduplication still catches",
            self.live_horizon,
            self.dedup_horizon
        );
        anyhow::ensure!(
            self.rejected_max_bytes >= weir_pipeline::rejected::MIN_MAX_BYTES,
            "--rejected-max-bytes ({} bytes) must be at least {} KiB (eight segments that each hold the largest \
             record)",
            self.rejected_max_bytes,
            weir_pipeline::rejected::MIN_MAX_BYTES >> 10
        );
        let cluster = cluster_config(self)?;
        Ok(NodeConfig {
            data_dir: self.data_dir.clone(),
            sensors,
            protocols: Protocols {
                line_protocol: LineProtocolMapping {
                    sensor: self.line_protocol_sensor,
                    device_tags: self.line_protocol_device_tags.iter().map(|t| t.trim().to_owned()).collect(),
                },
                remote_write_device_label: self.remote_write_device_label.clone(),
                otlp_device_attribute: self.otlp_device_attribute.clone(),
            },
            wal: WalOptions {
                segment_bytes: self.wal_segment_bytes,
                queue_depth: self.wal_queue_depth as usize,
                commit_delay: self.wal_commit_delay,
                ..WalOptions::default()
            },
            ingest: IngestLimits {
                decode: DecodeLimits {
                    max_line_bytes: usize::try_from(self.max_line_bytes).unwrap_or(usize::MAX),
                    max_reported_errors: self.max_reported_errors,
                    max_report_bytes: usize::try_from(self.max_report_bytes).unwrap_or(usize::MAX),
                    batch_rows: self.batch_rows as usize,
                },
                max_body_bytes: self.max_body_bytes,
                max_message_bytes: self.max_message_bytes,
                max_request_time: self.max_request_time,
                queue_timeout: self.ingest_queue_timeout,
                max_atomic_readings: self.max_atomic_readings as usize,
            },
            stats: StatsOptions {
                workers: self.workers as usize,
                dedup_horizon: self.dedup_horizon,
                live_horizon: Some(self.live_horizon),
                sketch_widths: self.sketch_widths.0.clone(),
                device_names: {
                    let names = weir_pipeline::devices::DeviceNames::default();
                    names.set_max_series(usize::try_from(self.max_series).unwrap_or(usize::MAX));
                    names
                },
                cluster,
                ..StatsOptions::default()
            },
            read_wait: self.read_wait,
            archive_url: self.archive.url(&self.data_dir),
            archive_url_given: self.archive.archive_url.is_some(),
            archiver: ArchiverOptions {
                flush_rows: self.archive.archive_flush_rows.max(1),
                flush_age: self.archive.archive_flush_age,
                nice: self.archive.archive_nice,
                ..ArchiverOptions::default()
            },
            seal_grace: self.archive.seal_grace,
            seal_interval: self.archive.seal_interval,
            sql: self.archive.sql_limits(),
            keep_archived_wal: self.keep_archived_wal,
            idempotency: weir_pipeline::idempotency::store::Retention {
                window: self.idempotency_window,
                max_bytes: self.idempotency_memory.min(usize::MAX as u64) as usize,
            },
            memory_limit,
            rejected: weir_pipeline::rejected::RejectedOptions {
                retention: self.rejected_retention,
                max_bytes: self.rejected_max_bytes,
                max_per_request: self.rejected_max_per_request as usize,
                text_bytes: usize::from(self.rejected_text_bytes),
            },
            expected_intervals: self.expected_interval.clone(),
        })
    }

    /// `weir serve`'s defaults (what a bare `weir serve` runs with) on `data_dir`, ignoring the environment's
    /// `WEIR_*` variables only where the caller overrides them; for tests that start a node in-process.
    pub fn defaults(data_dir: &std::path::Path) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Bare {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let mut args = <Bare as clap::Parser>::parse_from(["weir-serve"]).serve;
        args.data_dir = data_dir.to_path_buf();
        args
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    crate::metrics::handle();
    raise_open_file_limit();
    let mut keys = ApiKeys::new(args.api_keys.iter().cloned()).with_default_limits(crate::auth::KeyLimits {
        readings_per_second: args.key_readings_per_second,
        concurrent_requests: args.key_concurrent_requests,
    });
    if let Some(path) = &args.api_keys_file {
        keys = keys.with_file(path).context("--api-keys-file / WEIR_API_KEYS_FILE")?;
    }
    if !keys.enabled() {
        tracing::warn!(
            "no API key configured (--api-key / WEIR_API_KEYS): authentication is OFF, anyone who can reach this port can write"
        );
    }
    // The settings first (no side effects), then the ports: a port in use is found at once, not after the log is
    // recovered and the archive loaded. (Connections wait in the backlog until the node serves.)
    let config = args.node_config()?;
    let tls = args.tls()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mqtt = args.mqtt_config()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen / WEIR_LISTEN)", args.listen))?;
    let addr = listener.local_addr()?;
    let pg_listener = crate::pg::bind(&args.pg_listen).await?;
    let grpc_listener = match args.grpc_listen.as_str() {
        "off" => None,
        grpc => Some(tokio::net::TcpListener::bind(grpc).await.with_context(|| {
            format!("cannot listen on {grpc} (--grpc-listen / WEIR_GRPC_LISTEN; `off` turns gRPC off)")
        })?),
    };
    if let Some(c) = &config.stats.cluster {
        stop_with_the_cluster();
        tracing::info!(process = c.process, processes = c.processes(), "running as one process of a cluster");
    }
    let node = Node::start(config).await?;

    // One signal stops both servers and ends the live feeds.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state = AppState {
        ingest: node.ingest().clone(),
        stats: node.stats().clone(),
        sql: node.sql().clone(),
        keys,
        readiness: node.readiness().clone(),
        gauges: node.gauges().clone(),
        stopping: stopped.clone(),
    };

    let mqtt = match mqtt {
        None => None,
        Some(mqtt) => {
            tracing::info!(url = %mqtt.url, topics = ?mqtt.topics, "subscribing to MQTT");
            Some(crate::mqtt::start(mqtt, node.ingest().clone(), stopped.clone()).context("--mqtt-url")?)
        }
    };
    let signal = shutdown_signal()?;
    tokio::spawn(async move {
        signal.await;
        STOPPING.store(true, std::sync::atomic::Ordering::Release);
        let _ = stop.send(true);
    });
    let stopping = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "weir is serving");
    // Scripts and tests read these lines to learn the ports.
    println!("weir listening on {scheme}://{addr}");
    tokio::spawn(reload_on_change(state.keys.clone(), tls.clone()));
    let grpc = match grpc_listener {
        None => None,
        Some(grpc_listener) => {
            let grpc_addr = grpc_listener.local_addr()?;
            println!("weir grpc listening on {scheme}://{grpc_addr}");
            tracing::info!(%grpc_addr, "gRPC is serving (weir.v1.Weir, health, reflection)");
            let service = crate::grpc::WeirGrpc::new(Arc::new(state.clone()), state.keys.clone());
            // Arrow Flight SQL on the same port.
            let flight = crate::flight::WeirFlightSql::new(state.sql.clone(), state.keys.clone());
            let max_message = usize::try_from(args.grpc_max_message_bytes).unwrap_or(usize::MAX);
            let (grpc_max_connections, grpc_idle_timeout) =
                (args.grpc_max_connections as usize, args.grpc_idle_timeout);
            let shutdown = stopping(stopped.clone());
            let tls = tls.clone();
            Some(tokio::spawn(async move {
                let limits = crate::grpc::connections::ConnectionLimits {
                    max: grpc_max_connections,
                    idle: grpc_idle_timeout.max(Duration::from_millis(300)),
                };
                if let Err(e) =
                    crate::grpc::serve(grpc_listener, service, max_message, limits, Some(flight), tls, shutdown).await
                {
                    tracing::error!(error = %e, "the gRPC server stopped");
                }
            }))
        }
    };

    let pg = pg_listener.map(|(listener, pg_addr)| {
        println!("weir postgres listening on {pg_addr}");
        tracing::info!(%pg_addr, "the PostgreSQL protocol is serving");
        let config = crate::pg::PgConfig { max_connections: args.pg_max_connections as usize };
        tokio::spawn(crate::pg::serve(listener, state.sql.clone(), state.keys.clone(), config, tls.clone()))
    });

    let limits = crate::listen::HttpLimits {
        header_timeout: args.header_timeout,
        max_connections: args.http_max_connections as usize,
        shutdown_timeout: args.shutdown_timeout,
    };
    crate::listen::serve(listener, app(state), limits, tls, stopping(stopped)).await;
    tracing::debug!("HTTP connections drained");
    if let Some(mqtt) = mqtt {
        let _ = tokio::time::timeout(args.shutdown_timeout, mqtt).await;
    }
    if let Some(pg) = pg {
        // PostgreSQL sessions end with the process; their queries stop with it (all are read-only).
        pg.abort();
    }
    if let Some(grpc) = grpc {
        // Subscriptions have ended with the stop signal; calls in flight get the same bound as HTTP requests.
        if tokio::time::timeout(args.shutdown_timeout, grpc).await.is_err() {
            tracing::warn!(timeout = ?args.shutdown_timeout, "gRPC calls still in flight after --shutdown-timeout");
        }
        tracing::debug!("gRPC stopped");
    }
    node.shutdown().await;
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit, as servers do: every connection is a file, and
/// the common soft default (1 024) is reached by a thousand idle clients long before memory or CPU is.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed, which lives on this stack frame.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max && {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 && before < limit.rlim_cur
        }
    };
    if raised {
        tracing::info!(open_files = limit.rlim_cur, "raised the limit on open files to its maximum");
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

/// Set once a stop signal has been received: see [`stop_with_the_cluster`].
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A timely cluster stops as a whole: when a peer process dies, timely's network threads panic (and a worker that
/// panics leaves the cluster's progress stuck). On a panic in a `timely:` thread Weir then exits
/// (status 70) instead of serving statistics that can no longer make progress; restart every process, and each
/// recovers from its own log.
///
/// Once this process is stopping (SIGTERM/SIGINT received) a failed `timely:` thread no longer exits: the peers are
/// stopping too, and one that has already left closed its connections. The stop goes on, so the archive is
/// flushed and the log closed.
fn stop_with_the_cluster() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let timely = std::thread::current().name().is_some_and(|n| n.starts_with("timely:"));
        if timely && STOPPING.load(std::sync::atomic::Ordering::Acquire) {
            tracing::warn!(panic = %info, "a cluster connection failed while stopping (a peer has left); stopping on");
            return;
        }
        default(info);
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

/// Reloads the key file when it changes (checked every second) and on SIGHUP, and the TLS certificate on SIGHUP;
/// a file that cannot be read leaves what is in force, with an error in the log.
async fn reload_on_change(keys: ApiKeys, tls: Option<crate::tls::Tls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler; the key file is still reloaded on change");
            None
        }
    };
    let stamp =
        |path: Option<&std::path::Path>| path.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let mut seen = stamp(keys.file());
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let signalled = tokio::select! {
            _ = tick.tick() => {
                let now = stamp(keys.file());
                if now == seen {
                    continue;
                }
                seen = now;
                false
            }
            _ = hup => true,
        };
        if let Some(path) = keys.file() {
            match keys.reload() {
                Ok(()) => tracing::info!(file = %path.display(), "API keys reloaded"),
                Err(e) => tracing::error!(error = %e, "the key file was not reloaded; the keys in force stay"),
            }
        }
        if signalled && let Some(tls) = &tls {
            match tls.reload() {
                Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "the TLS certificate was not reloaded; the one in force stays"),
            }
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

fn parse_sensor_naming(s: &str) -> Result<SensorNaming, String> {
    s.parse()
}

/// The longest `--wal-commit-delay`: a group waits at most this long, so a request's acknowledgement does too.
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(100);

fn parse_commit_delay(text: &str) -> Result<Duration, String> {
    let delay = parse_duration(text)?;
    if delay > MAX_COMMIT_DELAY {
        return Err(format!(
            "{text} is longer than the longest commit delay, {MAX_COMMIT_DELAY:?}: every concurrent request's \
             acknowledgement would wait that long; write e.g. 2500us or 5ms"
        ));
    }
    Ok(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_delay_is_bounded_and_may_be_off() {
        assert_eq!(parse_commit_delay("2500us"), Ok(Duration::from_micros(2_500)));
        assert_eq!(parse_commit_delay("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_commit_delay("100ms"), Ok(MAX_COMMIT_DELAY));
        let refused = parse_commit_delay("101ms").unwrap_err();
        assert!(refused.contains("longest commit delay"), "{refused}");
        assert!(parse_commit_delay("soon").is_err());
    }
}
