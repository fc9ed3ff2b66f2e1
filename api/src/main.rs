//! The `weir` binary.

use clap::Parser;
use weir_api::commands::{Cli, Command, dump, init_logging, serve, sql, wal};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(e) = run(cli.command) {
        // The error chain, one cause per line, without a stack trace: these are messages for the user.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match command {
        Command::Serve(args) => runtime()?.block_on(serve::run(*args)),
        Command::Dump(args) => runtime()?.block_on(dump::run(args)),
        Command::Sql(args) => runtime()?.block_on(sql::run(args)),
        Command::Wal(command) => wal::run(command),
    }
}
