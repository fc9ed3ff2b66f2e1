//! The `weir` subcommands: one module each, with its clap-derived arguments and its `run`.

pub mod config;
pub mod dump;
pub mod keys;
pub mod push;
pub mod serve;
pub mod sql;
pub mod wal;

use clap::{Parser, Subcommand, ValueEnum};

/// Weir: a stream-processing engine for sensor telemetry.
#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Weir: a stream-processing engine for sensor telemetry",
    propagate_version = true
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, global = true, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP ingest, live statistics, the archive and SQL.
    Serve(Box<serve::ServeArgs>),
    /// Seal a UTC day of the archive now and write its dump `dumps/YYYY-MM-DD.json.gz`.
    Dump(dump::DumpArgs),
    /// Run a read-only SQL query over the archive (through a running server, or directly).
    Sql(sql::SqlArgs),
    /// Load NDJSON, .json.gz and line protocol files into a running Weir, exactly once and resumably.
    Push(push::PushArgs),
    /// Inspect the write-ahead log.
    #[command(subcommand)]
    Wal(wal::WalCommand),
    /// Manage the key file of `weir serve --api-keys-file`: named keys with scopes.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check or print a configuration file for `weir serve --config`.
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// The largest size any flag accepts: 1 PiB. Beyond it a value is a mistake (and sums of sizes could overflow).
pub const MAX_SIZE: u64 = 1 << 50;

/// The longest duration any flag accepts: 10 years. Beyond it a value is a mistake, and deadlines computed from it
/// (now + the duration) would overflow the clock.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// Parses sizes such as `65536`, `64KiB`, `1GiB`, `10MB`, up to [`MAX_SIZE`].
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e}; write a size like 65536, 64KiB or 1GiB"))?;
    if size > MAX_SIZE {
        return Err(format!("{text} is more than Weir accepts for any size (1 PiB)"));
    }
    Ok(size)
}

/// Parses durations such as `30s`, `5m`, `1h 30m`, `250ms`, up to [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e}; write a duration like 30s, 5m or 250ms"))?;
    if duration > MAX_DURATION {
        return Err(format!("{text} is longer than Weir accepts for any duration (10 years)"));
    }
    Ok(duration)
}

/// Sets up `tracing` output on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An HTTP client for the commands that talk to a server (`weir sql --url`, `weir push`): for `https://` URLs it
/// trusts the system's CA roots and, with `cacert` (`--cacert`), the CA certificates in that PEM file — a server
/// with a self-signed or private-CA certificate (`weir serve --tls-cert`).
pub fn http_client(cacert: Option<&std::path::Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    use anyhow::Context;
    let mut builder = reqwest::Client::builder();
    if let Some(path) = cacert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read --cacert {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--cacert {}: not PEM certificates", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "--cacert {} holds no PEM certificate", path.display());
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// What the user reads when a command fails: the error and its causes, each once, joined by `: `.
///
/// Why: many errors say their cause in their own message (`cannot read the key file F: permission denied`) and
/// also hand it on as their `source`, so printing the chain (`{:#}`) said each cause two or three times. A cause
/// whose text the message already holds is left out.
pub fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
    }

    /// Issue 17, 2: values that parse but overflow a deadline or a sum are refused where they are read.
    #[test]
    fn absurd_sizes_and_durations_are_refused() {
        assert!(parse_duration("18446744073709551615s").unwrap_err().contains("10 years"));
        assert!(parse_duration("3650d").is_ok());
        assert!(parse_size("18446744073709551615").unwrap_err().contains("1 PiB"));
        assert_eq!(parse_size("1PiB"), Ok(MAX_SIZE));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let dir = weir_pipeline::data_dir::DataDirError::Io { dir: "/proc/x".into(), source: io };
        let error = anyhow::Error::new(dir).context("the data directory");
        assert_eq!(
            error_message(&error),
            "the data directory: cannot read or write the data directory /proc/x: No such file or directory (os error 2)"
        );
        let plain = anyhow::anyhow!("the cause").context("what failed");
        assert_eq!(error_message(&plain), "what failed: the cause");
    }

    #[test]
    fn the_data_directory_refusal_is_said_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let config = serve::ServeArgs::defaults(dir.path()).node_config().expect("the defaults are valid");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let Err(error) = rt.block_on(crate::node::Node::start(config)) else { panic!("a foreign directory opened") };
        let text = error_message(&anyhow::Error::new(error));
        assert_eq!(text.matches("does not look like a Weir data directory").count(), 1, "{text}");
    }
}
