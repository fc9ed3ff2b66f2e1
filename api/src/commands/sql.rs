//! `weir sql "SELECT …"`: query a running server (`--url`) or an archive directly (`--archive`), print the result.

use anyhow::Context;
use clap::{Args, ValueEnum};
use weir_sinks::archive::ArchiveLocation;
use weir_sinks::sql::{SqlArchive, SqlLimits, SqlResult};

use crate::sql::{ARROW_STREAM, SqlFormat, encode};

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query, e.g. "SELECT sensor, count(*) FROM readings GROUP BY sensor".
    pub query: String,

    /// The running Weir to ask.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:8080", conflicts_with = "archive")]
    pub url: String,

    /// Query this archive directly, with no server (a directory, `file:///…`, `s3://…`).
    #[arg(long, env = "WEIR_ARCHIVE_URL")]
    pub archive: Option<String>,

    /// API key for --url (sent as the basic-auth username).
    #[arg(long, env = "WEIR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A PEM file of CA certificates to trust for an `https://` --url, besides the system's (a server's
    /// self-signed or private-CA certificate).
    #[arg(long, env = "WEIR_CACERT")]
    pub cacert: Option<std::path::PathBuf>,

    /// Output format.
    #[arg(long, env = "WEIR_SQL_FORMAT", value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,

    /// Print the query's time and row count to stderr.
    #[arg(long)]
    pub timing: bool,

    /// Run the query this many times (for benchmarking; with --timing each run's time is printed, and the result
    /// of the last run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,

    /// With --archive: workers that run the query's partitions (0: one per core).
    #[arg(long, env = "WEIR_SQL_PARALLELISM", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub sql_parallelism: u32,

    /// With --archive: memory for the files' Parquet footers and statistics, kept from one --repeat run to the next
    /// (0: none).
    #[arg(long, env = "WEIR_SQL_CACHE", default_value = "64MiB", value_parser = super::parse_size)]
    pub sql_cache: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let archive = match &args.archive {
        Some(url) => {
            let location = ArchiveLocation::open(url).with_context(|| format!("cannot open the archive {url}"))?;
            let limits = SqlLimits {
                parallelism: args.sql_parallelism as usize,
                cache_bytes: usize::try_from(args.sql_cache).unwrap_or(usize::MAX),
                ..SqlLimits::default()
            };
            Some(SqlArchive::new(location, None, limits)?)
        }
        None => None,
    };
    let mut result = None;
    for _ in 0..args.repeat {
        let started = std::time::Instant::now();
        let r = match &archive {
            Some(archive) => archive.query(&args.query).await?,
            None => remote(&args).await?,
        };
        if args.timing {
            eprintln!("{} rows in {:.2} ms", r.rows(), started.elapsed().as_secs_f64() * 1e3);
        }
        result = Some(r);
    }
    let result = result.expect("at least one run");
    let text = match args.format {
        OutputFormat::Table => arrow::util::pretty::pretty_format_batches(&result.batches)?.to_string() + "\n",
        OutputFormat::Csv => String::from_utf8(encode(&result, SqlFormat::Csv)?.0)?,
        OutputFormat::Json => String::from_utf8(encode(&result, SqlFormat::Json)?.0)? + "\n",
    };
    print!("{text}");
    Ok(())
}

async fn remote(args: &SqlArgs) -> anyhow::Result<SqlResult> {
    let url = format!("{}/api/v1/sql", args.url.trim_end_matches('/'));
    let mut request = super::http_client(args.cacert.as_deref())?
        .build()?
        .post(&url)
        .header("content-type", "text/plain")
        .header("accept", ARROW_STREAM)
        .body(args.query.clone());
    if let Some(key) = &args.api_key {
        request = request.basic_auth(key, None::<&str>);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach Weir at {url}; is `weir serve` running? (or use --archive)"))?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{status}: {message}");
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(SqlResult { schema, batches })
}
