//! `weir keys add|list|revoke`: manage the key file a server reads with `--api-keys-file` (it reloads the file when
//! it changes, so a revoked key is refused within a second, without a restart).

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::auth::Scope;
use crate::auth::file::KeyFile;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new key: prints its secret once (the file keeps only its SHA-256).
    Add(AddArgs),
    /// Print the keys: name, scopes, devices (never a secret).
    List(FileArg),
    /// Remove a key; a server reading the file refuses it from the next reload on (within a second).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct FileArg {
    /// The key file (`weir serve --api-keys-file`).
    #[arg(long, env = "WEIR_API_KEYS_FILE", default_value = "weir-keys.toml")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The key's name (1–64 letters, digits, '-', '_', '.'): it appears in logs and metrics.
    pub name: String,
    /// What the key may do, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    pub scopes: Vec<Scope>,
    /// For a write key: the devices it may write (comma-separated; `prefix*` patterns). Absent: any device.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// The most readings a second the key may write (429 with Retry-After beyond). Absent: the server's default.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub readings_per_second: Option<u64>,
    /// The most requests of the key at once (429 beyond). Absent: the server's default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrent_requests: Option<u32>,
    #[command(flatten)]
    pub file: FileArg,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    pub name: String,
    #[command(flatten)]
    pub file: FileArg,
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Add(args) => {
            let path = &args.file.file;
            let mut file = KeyFile::load(path)?;
            let scopes: BTreeSet<Scope> = args.scopes.into_iter().collect();
            let secret = file.add(&args.name, scopes, args.devices).map_err(anyhow::Error::msg)?;
            if let Some(key) = file.keys.last_mut() {
                key.readings_per_second = args.readings_per_second;
                key.concurrent_requests = args.concurrent_requests;
            }
            file.save(path)?;
            eprintln!("added key {:?} to {}; its secret (shown only now):", args.name, path.display());
            println!("{secret}");
        }
        KeysCommand::List(args) => {
            let file = KeyFile::load(&args.file)?;
            for key in &file.keys {
                let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
                let devices = key.devices.as_ref().map_or("any device".to_owned(), |d| d.join(","));
                let limit =
                    |v: Option<String>, unit: &str| v.map_or("server default".to_owned(), |v| format!("{v} {unit}"));
                let rate = limit(key.readings_per_second.map(|r| r.to_string()), "readings/s");
                let concurrent = limit(key.concurrent_requests.map(|c| c.to_string()), "at once");
                println!("{}\t{}\t{devices}\t{rate}\t{concurrent}", key.name, scopes.join(","));
            }
        }
        KeysCommand::Revoke(args) => {
            let path = &args.file.file;
            let mut file = KeyFile::load(path)?;
            anyhow::ensure!(file.revoke(&args.name), "no key named {:?} in {}", args.name, path.display());
            file.save(path).with_context(|| format!("revoking {:?}", args.name))?;
            eprintln!("revoked key {:?}", args.name);
        }
    }
    Ok(())
}
