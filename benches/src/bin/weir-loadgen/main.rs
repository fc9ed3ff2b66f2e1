//! `weir-loadgen`: pushes realistic sensor readings at a Weir over HTTP and reports what Weir sustained.
//!
//! Why it is built the way it is:
//!
//! - **The generator must never be the bottleneck**, or the tool measures itself. Bodies are built on their own
//!   threads ([`generate`]) into a bounded queue of ready `Bytes` (filled before the clock starts), and the summary
//!   reports how fast the generator could go (`generator_max_readings_per_second`) so a reader can check that it was
//!   well above the acknowledged rate.
//! - **Readings are distinct** unless `--dup-fraction` asks otherwise: identical readings would be deduplicated by
//!   Weir's statistics and archive and measure nothing. Duplicates and late readings are there to exercise exactly
//!   those paths, in known proportions.
//! - **Throughput alone hides the interesting failures**, so the summary also has the ack latency distribution,
//!   errors by status, and *freshness*: how long after an ack the reading is visible in the live statistics (a
//!   probe ingests one reading and reads it back with `?after=<Weir-Position>`, which blocks until the dataflow has
//!   processed it).
//! - **`--spawn`** runs a fresh Weir on a temporary data directory and samples its RSS and CPU, so one command gives
//!   a reproducible number with the server's cost next to it.

mod args;
mod freshness;
mod generate;
mod progress;
mod send;
mod spawn;
mod summary;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use args::Args;
use generate::Generators;
use send::{Load, LoadTotals};
use spawn::{ProcSampler, SpawnedWeir};
use summary::Summary;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.validate()?;
    let sensors = args.sensor_names();
    warn_about_sensors(&args, &sensors);

    let weir = if args.spawn { Some(SpawnedWeir::start(&args, &sensors)?) } else { None };
    let url = weir.as_ref().map_or_else(|| args.url.trim_end_matches('/').to_owned(), |w| w.url.clone());

    let plan = Arc::new(args.plan(sensors.clone())?);
    let mut generators = Generators::start(plan, args.generator_threads(), args.queue_capacity());
    generators.wait_until_filled().await;

    let sampler = weir.as_ref().map(|w| ProcSampler::start(w.pid()));
    let (totals, freshness, elapsed) = run_load(&args, &url, &sensors[0], generators.receiver()).await?;
    let weir_usage = sampler.map(ProcSampler::stop);
    let generator = generators.join();

    if let Some(w) = weir {
        w.stop().context("stopping the spawned weir")?;
    }
    let summary = Summary::new(&args, totals, freshness, elapsed, generator, weir_usage);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.human());
    }
    // The summary says why; the exit status lets scripts notice a run that measured nothing.
    anyhow::ensure!(summary.readings_acknowledged > 0, "Weir acknowledged no reading (errors: {:?})", summary.errors);
    Ok(())
}

/// Runs the connections and the freshness probe until the load is done; returns what they measured and the time
/// the load took.
async fn run_load(
    args: &Args,
    url: &str,
    probe_sensor: &str,
    bodies: generate::BodyReceiver,
) -> anyhow::Result<(LoadTotals, freshness::Freshness, std::time::Duration)> {
    let load = Load::new(args, url, bodies)?;
    let bar = progress::Progress::start(args, load.counters());
    let done = Arc::new(AtomicBool::new(false));
    let probe =
        (!args.no_freshness).then(|| freshness::spawn_probe(args, url, probe_sensor, done.clone())).transpose()?;
    let started = Instant::now();
    let totals = load.run().await?;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    bar.finish();
    let freshness = match probe {
        Some(probe) => probe.await.context("the freshness probe panicked")?,
        None => freshness::Freshness::default(),
    };
    Ok((totals, freshness, elapsed))
}

/// Sensors beyond the six default names are only accepted by a Weir started with `--sensors` naming them.
fn warn_about_sensors(args: &Args, sensors: &[String]) {
    if !args.spawn && sensors.len() > weir_pipeline::reading::DEFAULT_SENSORS.len() {
        eprintln!(
            "note: --sensors {} uses names beyond Weir's default six; start weir with --sensors {}",
            sensors.len(),
            sensors.join(",")
        );
    }
}
