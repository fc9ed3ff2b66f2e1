//! The optional TOML file of `weir serve --config weir.toml`, and `weir config check|example`.
//!
//! The file's keys are the long flag names of `weir serve` (`listen`, `data-dir`, `archive-url`, …; `_` may stand
//! for `-`). Precedence is flag > environment variable > file > default: a key from the file is used only when
//! neither the flag nor its `WEIR_…` variable set that option. Every value goes through the flag's own parser, so
//! the file accepts exactly what the command line accepts (`"64KiB"`, `"30s"`, lists as TOML arrays).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Args, CommandFactory, Subcommand};

use super::Cli;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file: every key known, every value valid. Exits 1 with the problems otherwise.
    Check(CheckArgs),
    /// Print a configuration file with every key of `weir serve`, its help and its default (commented out).
    Example,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The file to check.
    pub file: PathBuf,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check(args) => {
            let settings = ConfigFile::load(&args.file)?;
            println!("{}: valid ({} settings)", args.file.display(), settings.values.len());
            Ok(())
        }
        ConfigCommand::Example => {
            print!("{}", example());
            Ok(())
        }
    }
}

/// A loaded and validated configuration file: each known key with its values as command-line text.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    values: BTreeMap<String, Vec<String>>,
}

/// The options of `weir serve` a file may set (all but `--config` itself and help/version).
fn serve_options() -> Vec<Arg> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("weir has a serve command");
    serve
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "config" && l != "help" && l != "version"))
        .cloned()
        .collect()
}

fn takes_no_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

impl ConfigFile {
    /// Reads `path`, refusing unknown keys (all named) and values the flag would refuse (key and reason named).
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
        let options = serve_options();
        let by_name: BTreeMap<&str, &Arg> = options.iter().filter_map(|a| Some((a.get_long()?, a))).collect();
        let unknown: Vec<&str> =
            table.keys().map(String::as_str).filter(|k| !by_name.contains_key(k.replace('_', "-").as_str())).collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = by_name.keys().copied().collect();
            bail!(
                "{}: unknown key{} {}; the keys are the long flags of `weir serve`: {}",
                path.display(),
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                known.join(", ")
            );
        }
        let mut values = BTreeMap::new();
        let mut problems = Vec::new();
        for (key, value) in &table {
            let name = key.replace('_', "-");
            let arg = by_name[name.as_str()];
            match command_line_values(arg, value) {
                Ok(texts) => {
                    if let Err(e) = check_with_flag_parser(arg, &texts) {
                        problems.push(format!("{key} = {value}: {}", first_line(&e.to_string())));
                    }
                    values.insert(name, texts);
                }
                Err(reason) => problems.push(format!("{key} = {value}: {reason}")),
            }
        }
        if !problems.is_empty() {
            bail!(
                "{}: invalid value{}:\n  {}",
                path.display(),
                if problems.len() > 1 { "s" } else { "" },
                problems.join("\n  ")
            );
        }
        Ok(ConfigFile { path: path.to_path_buf(), values })
    }

    /// `argv` with the file's settings added for every option neither a flag nor an environment variable set.
    pub fn merge_into(&self, argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
        let matches = Cli::command().try_get_matches_from(&argv).context("parsing the command line")?;
        let Some(("serve", serve)) = matches.subcommand() else { return Ok(argv) };
        let options = serve_options();
        let mut merged = argv;
        for (name, texts) in &self.values {
            let arg = options.iter().find(|a| a.get_long() == Some(name.as_str())).expect("validated on load");
            let source = serve.value_source(arg.get_id().as_str());
            if matches!(source, Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                tracing::debug!(key = %name, file = %self.path.display(), "set by a flag or the environment; the file's value is ignored");
                continue;
            }
            for t in texts {
                merged.push(if takes_no_value(arg) {
                    format!("--{name}").into()
                } else {
                    format!("--{name}={t}").into()
                });
            }
        }
        Ok(merged)
    }
}

/// Runs `texts` through the flag's own parser (alone: a bare copy without its environment variable or relations
/// to other flags, given each value as a positional argument). Switches were checked as booleans already.
fn check_with_flag_parser(arg: &Arg, texts: &[String]) -> Result<(), clap::Error> {
    if takes_no_value(arg) {
        return Ok(());
    }
    for text in texts {
        let bare = Arg::new(arg.get_id().clone()).value_parser(arg.get_value_parser().clone());
        clap::Command::new("weir-config").no_binary_name(true).arg(bare).try_get_matches_from([text])?;
    }
    Ok(())
}

/// A TOML value as the flag's text values (several for an array; none for `false` of a switch).
fn command_line_values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    use toml::Value;
    if takes_no_value(arg) {
        return match value {
            Value::Boolean(true) => Ok(vec!["true".into()]),
            Value::Boolean(false) => Ok(Vec::new()),
            _ => Err("expected true or false".into()),
        };
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("expected a string, a number or a list of them".to_string()),
    };
    match value {
        Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items.iter().map(scalar).collect(),
        Value::Array(_) => Err("this option takes one value, not a list".into()),
        v => scalar(v).map(|s| vec![s]),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim_start_matches("error: ")
}

/// A commented configuration file listing every option with its help, variable and default.
pub fn example() -> String {
    let mut out = String::from(
        "# weir.toml: settings for `weir serve --config weir.toml`.\n\
         # Precedence: command-line flag > WEIR_* environment variable > this file > built-in default.\n\n",
    );
    for arg in serve_options() {
        let name = arg.get_long().expect("filtered");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        for line in textwrap(&help, 100) {
            out.push_str(&format!("# {line}\n"));
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (environment: {})\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let value = if takes_no_value(&arg) {
            "false".to_owned()
        } else if matches!(arg.get_action(), ArgAction::Append) {
            format!("[{}]", defaults.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(", "))
        } else if let Some(d) = defaults.first() {
            if d.parse::<i64>().is_ok() { d.clone() } else { format!("{d:?}") }
        } else {
            "\"\"  # no default".to_owned()
        };
        out.push_str(&format!("# {name} = {value}\n\n"));
    }
    out
}

fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn serve_args(argv: &[&str], file_text: &str) -> anyhow::Result<super::super::serve::ServeArgs> {
        let (_dir, path) = file(file_text);
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let merged = ConfigFile::load(&path)?.merge_into(argv)?;
        let cli = <Cli as clap::Parser>::try_parse_from(merged)?;
        match cli.command {
            super::super::Command::Serve(args) => Ok(*args),
            _ => unreachable!(),
        }
    }

    #[test]
    fn file_values_apply_where_no_flag_is_given() {
        let args = serve_args(
            &["weir", "serve", "--listen", "127.0.0.1:9999"],
            "listen = \"0.0.0.0:1\"\ndata_dir = \"/var/lib/weir\"\nmax-line-bytes = \"1KiB\"\nworkers = 2\n\
             sensors = [\"speed\", \"fuel\"]\nkeep-archived-wal = true\napi-key = [\"a\", \"b\"]\n",
        )
        .unwrap();
        assert_eq!(args.listen, "127.0.0.1:9999", "the flag wins over the file");
        assert_eq!(args.data_dir, PathBuf::from("/var/lib/weir"));
        assert_eq!(args.max_line_bytes, 1024);
        assert_eq!(args.workers, 2);
        assert_eq!(args.sensors, vec!["speed", "fuel"]);
        assert!(args.keep_archived_wal);
        assert_eq!(args.api_keys, vec!["a", "b"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = serve_args(&["weir", "serve"], "listen = \"x:1\"\nlisten_port = 1\ncolour = \"red\"\n").unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("unknown keys listen_port, colour") || text.contains("unknown keys colour, listen_port"),
            "{text}"
        );
        let e = serve_args(&["weir", "serve"], "max-line-bytes = \"lots\"\nworkers = 0\n").unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("max-line-bytes = \"lots\"") && text.contains("workers = 0"), "{text}");
        let e = serve_args(&["weir", "serve"], "listen = [\"a:1\", \"b:2\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("takes one value"), "{e:#}");
        let e = serve_args(&["weir", "serve"], "listen = \n").unwrap_err();
        assert!(format!("{e:#}").contains("not valid TOML"), "{e:#}");
    }

    #[test]
    fn the_example_is_a_valid_file_once_uncommented() {
        let text: String = example()
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.contains("no default"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
        let (_dir, path) = file(&text);
        ConfigFile::load(&path).unwrap();
    }
}
