//! The `weir` binary.

use clap::Parser;
use weir_api::commands::{Cli, Command, config, dump, init_logging, keys, push, serve, sql, wal};

fn main() {
    let cli = Cli::parse();
    let cli = match with_config_file(cli) {
        Ok(cli) => cli,
        Err(e) => fail(e),
    };
    init_logging(cli.log_format);
    if let Err(e) = run(cli.command) {
        fail(e)
    }
}

/// The error chain, one cause per line, without a stack trace: these are messages for the user.
fn fail(e: anyhow::Error) -> ! {
    eprintln!("error: {}", weir_api::commands::error_message(&e));
    std::process::exit(1);
}

/// With `weir serve --config FILE`, the command line again with the file's settings for whatever no flag or
/// environment variable set.
fn with_config_file(cli: Cli) -> anyhow::Result<Cli> {
    let Command::Serve(args) = &cli.command else { return Ok(cli) };
    let Some(path) = &args.config else { return Ok(cli) };
    let argv = config::ConfigFile::load(path)?.merge_into(std::env::args_os().collect())?;
    Ok(Cli::try_parse_from(argv)?)
}

fn run(command: Command) -> anyhow::Result<()> {
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match command {
        Command::Serve(args) => runtime()?.block_on(serve::run(*args)),
        Command::Dump(args) => runtime()?.block_on(dump::run(args)),
        Command::Sql(args) => runtime()?.block_on(sql::run(args)),
        Command::Push(args) => {
            let status = runtime()?.block_on(push::run(args))?;
            if status != 0 {
                std::process::exit(status);
            }
            Ok(())
        }
        Command::Wal(command) => wal::run(command),
        Command::Keys(command) => keys::run(command),
        Command::Config(command) => config::run(command),
    }
}
