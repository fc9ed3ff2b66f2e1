//! `weir dump --date YYYY-MM-DD [--to URL]`: seal a day now and write its dump (default: yesterday, UTC).

use anyhow::Context;
use clap::Args;
use weir_sinks::archive::ArchiveLocation;
use weir_sinks::seal::{SealerLock, seal_day};

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The UTC day, YYYY-MM-DD (default: yesterday).
    #[arg(long, env = "WEIR_DUMP_DATE")]
    pub date: Option<String>,

    /// Where to write `dumps/YYYY-MM-DD.json.gz` (a directory or URL; default: the archive itself).
    #[arg(long, env = "WEIR_DUMP_TO")]
    pub to: Option<String>,

    /// The archive (a directory or URL; default: `archive/` inside --data-dir).
    #[arg(long, env = "WEIR_ARCHIVE_URL")]
    pub archive: Option<String>,

    /// Weir's data directory, for the default archive location.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    pub data_dir: std::path::PathBuf,
}

pub async fn run(args: DumpArgs) -> anyhow::Result<()> {
    let date = match args.date {
        Some(d) => {
            chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                .with_context(|| format!("bad --date {d:?}: write the UTC day as YYYY-MM-DD"))?;
            d
        }
        None => (chrono::Utc::now().date_naive() - chrono::Days::new(1)).format("%Y-%m-%d").to_string(),
    };
    let url = args.archive.unwrap_or_else(|| args.data_dir.join("archive").display().to_string());
    let location = ArchiveLocation::open(&url).with_context(|| format!("cannot open the archive {url}"))?;
    let target = match &args.to {
        Some(to) => Some(ArchiveLocation::open(to).with_context(|| format!("cannot open --to {to}"))?),
        None => None,
    };
    // A cluster's days are sealed by their owner process, which knows what every process has committed; sealing
    // here could merge a part whose flush never committed.
    let parts = location.list_parts().await.with_context(|| format!("cannot list the archive {url}"))?;
    if parts.iter().any(|p| p.date == date && (p.process.is_some() || p.sealed)) {
        anyhow::bail!(
            "{url} is a cluster's archive: its days are sealed, and their dumps written, by the day's owner process \
             while the cluster runs ({date}'s dump, once sealed: dumps/{date}.json.gz); `weir dump` seals only the \
             archive of a single Weir"
        );
    }
    // One sealer per archive: refused while a Weir runs on it (it seals its days itself).
    let _sealer = SealerLock::acquire(&location)?;
    let outcome = seal_day(&location, &date, None, target.as_ref()).await?;
    let base = target.as_ref().unwrap_or(&location).url.clone();
    println!(
        "sealed {date}: {} readings ({} late) from {} parts; dump at {}dumps/{date}.json.gz",
        outcome.record.readings, outcome.record.late_readings, outcome.parts_merged, base
    );
    Ok(())
}
