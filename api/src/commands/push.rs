//! `weir push FILE…`: load NDJSON, `.json.gz` and line protocol files into a running Weir, exactly once, with a
//! progress bar, a summary and `--resume` (see [`crate::push`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{parse_duration, parse_size};
use crate::push::batches::Format;
use crate::push::send::Sender;
use crate::push::{PushOptions, push};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Files to load: NDJSON (`.json`, `.ndjson`, anything else), gzip-compressed NDJSON (`.json.gz`), line
    /// protocol (`.lp`, `.line`, `.influx`, optionally `.gz`).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// The running Weir to load into.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// API key (sent as a bearer token).
    #[arg(long, env = "WEIR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A PEM file of CA certificates to trust for an `https://` --url, besides the system's (a server's
    /// self-signed or private-CA certificate).
    #[arg(long, env = "WEIR_CACERT")]
    pub cacert: Option<std::path::PathBuf>,

    /// The files' format, whatever their names say.
    #[arg(long, env = "WEIR_PUSH_FORMAT", value_enum)]
    pub format: Option<Format>,

    /// Line protocol's timestamp precision: ns, us, ms or s.
    #[arg(long, env = "WEIR_PUSH_PRECISION", default_value = "ns", value_parser = ["ns", "us", "ms", "s"])]
    pub precision: String,

    /// The most bytes of whole lines in one request (a longer line is reported and not sent).
    #[arg(long, env = "WEIR_PUSH_BATCH_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub batch_bytes: u64,

    /// Requests in flight at once.
    #[arg(long, env = "WEIR_PUSH_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: u32,

    /// Where the acknowledged batches are recorded, for --resume.
    #[arg(long, env = "WEIR_PUSH_STATE", default_value = "weir-push.state")]
    pub state: PathBuf,

    /// Continue an interrupted push: skip the batches the state file says were acknowledged (the others are sent
    /// again under their keys, and the server stores none twice).
    #[arg(long, env = "WEIR_PUSH_RESUME")]
    pub resume: bool,

    /// How long one request may take.
    #[arg(long, env = "WEIR_PUSH_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long a batch is retried (connection errors, timeouts, 408, 409, 429, 5xx) before it counts as failed.
    #[arg(long, env = "WEIR_PUSH_RETRY_FOR", default_value = "10m", value_parser = parse_duration)]
    pub retry_for: Duration,

    /// At most this many rejected lines are printed as `file:line: reason` (all are counted).
    #[arg(long, env = "WEIR_PUSH_MAX_PRINTED", default_value_t = 100)]
    pub max_printed: usize,

    /// Exit 0 even when lines were rejected (they are still printed and counted).
    #[arg(long, env = "WEIR_PUSH_ALLOW_REJECTED")]
    pub allow_rejected: bool,

    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Exit status when lines were rejected (without --allow-rejected).
pub const EXIT_REJECTED: i32 = 2;
/// Exit status when batches could not be stored.
pub const EXIT_FAILED: i32 = 3;

/// Runs the push and prints its summary; the exit status it should end with.
pub async fn run(args: PushArgs) -> anyhow::Result<i32> {
    let client = super::http_client(args.cacert.as_deref())?
        .timeout(args.timeout)
        .pool_max_idle_per_host(args.connections as usize)
        .build()?;
    let sender = Sender {
        client,
        url: args.url.trim_end_matches('/').to_owned(),
        api_key: args.api_key,
        precision: args.precision,
        retry_for: args.retry_for,
    };
    let options = PushOptions {
        files: args.files,
        format: args.format,
        sender,
        batch_bytes: args.batch_bytes.max(1),
        connections: args.connections as usize,
        state: args.state,
        resume: args.resume,
        max_printed: args.max_printed,
        progress: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let started = std::time::Instant::now();
    let s = push(options).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "accepted {} lines, rejected {}, duplicates {} (already stored), batches skipped {} (--resume), failed {}; \
         {} bytes in {seconds:.1} s ({:.0} lines/s)",
        s.accepted,
        s.rejected,
        s.duplicates,
        s.skipped_batches,
        s.failed_batches,
        s.bytes,
        s.accepted as f64 / seconds.max(1e-3)
    );
    Ok(if s.failed_batches > 0 {
        EXIT_FAILED
    } else if s.rejected > 0 && !args.allow_rejected {
        EXIT_REJECTED
    } else {
        0
    })
}
