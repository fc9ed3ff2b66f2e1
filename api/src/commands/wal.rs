//! `weir wal dump` and `weir wal keys`: print what the write-ahead log holds — one reading per line, or one
//! idempotency key per line — without changing it.

use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use weir_pipeline::decode::format_timestamp;
use weir_pipeline::wal::WalReader;

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Print every reading in the log as NDJSON: position, device, sensor, value, timestamp.
    Dump(DumpArgs),
    /// Print every record written under an idempotency key as NDJSON: position, key, readings, received.
    Keys(DumpArgs),
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Weir's data directory (the log is in its `wal/`).
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    pub data_dir: PathBuf,

    /// First log position to print (default: the first the log still holds; archived segments are deleted).
    #[arg(long, env = "WEIR_WAL_FROM")]
    pub from: Option<u64>,
}

#[derive(Serialize)]
struct KeyLine<'a> {
    position: u64,
    key: &'a str,
    readings: usize,
    received: String,
}

#[derive(Serialize)]
struct DumpLine<'a> {
    position: u64,
    device: &'a str,
    sensor: &'a str,
    value: f64,
    timestamp: String,
}

pub fn run(command: WalCommand) -> anyhow::Result<()> {
    match command {
        WalCommand::Dump(args) => dump(args, Print::Readings),
        WalCommand::Keys(args) => dump(args, Print::Keys),
    }
}

/// What a dump prints of each record.
#[derive(Clone, Copy)]
enum Print {
    Readings,
    Keys,
}

fn dump(args: DumpArgs, print: Print) -> anyhow::Result<()> {
    let dir = args.data_dir.join("wal");
    anyhow::ensure!(dir.is_dir(), "no write-ahead log at {}: is --data-dir right?", dir.display());
    let from = match args.from {
        Some(from) => from,
        None => weir_pipeline::wal::first_position(&dir)?,
    };
    let mut reader = WalReader::new(&dir, from);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some((position, view)) = reader.next_view_through(u64::MAX)? {
        match print {
            Print::Readings => {
                for row in view.rows() {
                    let line = DumpLine {
                        position,
                        device: view.devices[row.device as usize],
                        sensor: view.sensors[row.sensor as usize],
                        value: row.value,
                        timestamp: format_timestamp(row.micros),
                    };
                    serde_json::to_writer(&mut out, &line)?;
                    out.write_all(b"\n")?;
                }
            }
            Print::Keys => {
                if let Some(key) = view.key {
                    let received = format_timestamp(key.received_micros);
                    let line = KeyLine { position, key: key.key, readings: view.len(), received };
                    serde_json::to_writer(&mut out, &line)?;
                    out.write_all(b"\n")?;
                }
            }
        }
    }
    out.flush()?;
    drop(out);
    // What could not be read, said plainly: the reader stops at damage; the check names it (and `weir serve`
    // refuses the same log).
    let recovery = weir_pipeline::wal::check(&dir).with_context(|| {
        format!("the write-ahead log in {} is damaged; the readings above are those before the damage", dir.display())
    })?;
    if let Some(torn) = recovery.truncated {
        anyhow::bail!(
            "{} is not readable from byte {} on ({}; {} bytes): the readings above are those through log position {}. \
             A crash mid-write leaves such a tail, and the next `weir serve` cuts it off; anything else is damage — \
             keep a copy of the file",
            torn.file.display(),
            torn.offset,
            torn.reason,
            torn.bytes_removed,
            recovery.last_position
        );
    }
    Ok(())
}
