//! The `weir` binary.

use clap::Parser;
use weir_api::commands::{Cli, Command, dump, init_logging, serve, sql, wal};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve::run(*args))
        }
        Command::Sql(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(sql::run(args))
        }
        Command::Dump(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(dump::run(args))
        }
        Command::Wal(command) => wal::run(command),
    }
}
