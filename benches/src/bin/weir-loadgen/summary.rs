//! The summary at the end: as JSON with `--json` (for scripts and comparisons), as text otherwise.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::args::Args;
use crate::freshness::Freshness;
use crate::generate::GeneratorReport;
use crate::send::LoadTotals;
use crate::spawn::WeirUsage;

const MIB: f64 = (1 << 20) as f64;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub readings_sent: u64,
    pub readings_acknowledged: u64,
    /// Acknowledged readings that were not duplicates: what Weir's statistics and archive should count.
    pub distinct_readings_acknowledged: u64,
    pub duplicate_readings_acknowledged: u64,
    pub late_readings_acknowledged: u64,
    pub requests_acknowledged: u64,
    pub requests_failed: u64,
    pub seconds: f64,
    pub readings_per_second: f64,
    /// Acknowledged NDJSON, before compression.
    pub mib_per_second: f64,
    /// Acknowledged bytes as sent (differs with --gzip).
    pub wire_mib_per_second: f64,
    pub latency_ms: Latency,
    /// Failed requests by HTTP status, or `connect`, `timeout`, `request`.
    pub errors: BTreeMap<String, u64>,
    pub freshness_ms: FreshnessSummary,
    pub generator_max_readings_per_second: f64,
    pub generator_threads: usize,
    /// With --spawn: the spawned Weir's resource use during the load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weir: Option<WeirUsage>,
    pub config: Config,
}

/// Ack latency of acknowledged requests, in milliseconds (`null` without any).
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// From ack to visible in the live statistics, in milliseconds.
#[derive(Debug, Serialize)]
pub struct FreshnessSummary {
    pub samples: usize,
    pub errors: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// The run's settings, so that a JSON summary says what it measured.
#[derive(Debug, Serialize)]
pub struct Config {
    pub devices: u64,
    pub sensors: u16,
    pub batch: u32,
    pub connections: u32,
    pub gzip: bool,
    pub rate: Option<f64>,
    pub count: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub late_fraction: f64,
    pub dup_fraction: f64,
    pub spawn: bool,
}

impl Summary {
    pub fn new(
        args: &Args,
        mut load: LoadTotals,
        mut freshness: Freshness,
        elapsed: Duration,
        generator: GeneratorReport,
        weir: Option<Option<WeirUsage>>,
    ) -> Self {
        load.latencies.sort_unstable();
        freshness.samples.sort_unstable();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |sorted: &[Duration], p: f64| percentile(sorted, p).map(|d| d.as_secs_f64() * 1e3);
        Summary {
            readings_sent: load.readings_sent,
            readings_acknowledged: load.readings_acknowledged,
            distinct_readings_acknowledged: load.readings_acknowledged - load.duplicates_acknowledged,
            duplicate_readings_acknowledged: load.duplicates_acknowledged,
            late_readings_acknowledged: load.late_acknowledged,
            requests_acknowledged: load.requests_ok,
            requests_failed: load.errors.values().sum(),
            seconds: secs,
            readings_per_second: load.readings_acknowledged as f64 / secs,
            mib_per_second: load.raw_bytes_acknowledged as f64 / MIB / secs,
            wire_mib_per_second: load.wire_bytes_acknowledged as f64 / MIB / secs,
            latency_ms: Latency {
                p50: ms(&load.latencies, 0.5),
                p90: ms(&load.latencies, 0.9),
                p99: ms(&load.latencies, 0.99),
                max: ms(&load.latencies, 1.0),
            },
            errors: load.errors,
            freshness_ms: FreshnessSummary {
                samples: freshness.samples.len(),
                errors: freshness.errors,
                p50: ms(&freshness.samples, 0.5),
                p99: ms(&freshness.samples, 0.99),
                max: ms(&freshness.samples, 1.0),
            },
            generator_max_readings_per_second: generator.max_readings_per_second(),
            generator_threads: generator.threads,
            weir: weir.flatten(),
            config: Config {
                devices: args.devices,
                sensors: args.sensors,
                batch: args.batch,
                connections: args.connections,
                gzip: args.gzip,
                rate: args.rate,
                count: args.count(),
                duration_seconds: args.duration.map(|d| d.as_secs_f64()),
                late_fraction: args.late_fraction,
                dup_fraction: args.dup_fraction,
                spawn: args.spawn,
            },
        }
    }

    /// The summary as text for a person.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "weir-loadgen: {} devices x {} sensors, batch {}, {} connections, gzip {}, rate {}, late {}, duplicates {}",
            c.devices,
            c.sensors,
            c.batch,
            c.connections,
            if c.gzip { "on" } else { "off" },
            c.rate.map_or_else(|| "unlimited".into(), |r| format!("{r}/s")),
            c.late_fraction,
            c.dup_fraction,
        );
        let _ = writeln!(
            out,
            "  acknowledged  {} of {} readings ({} distinct, {} late, {} duplicates) in {:.2} s",
            self.readings_acknowledged,
            self.readings_sent,
            self.distinct_readings_acknowledged,
            self.late_readings_acknowledged,
            self.duplicate_readings_acknowledged,
            self.seconds
        );
        let _ = writeln!(
            out,
            "  throughput    {:.0} readings/s, {:.1} MiB/s NDJSON ({:.1} MiB/s on the wire)",
            self.readings_per_second, self.mib_per_second, self.wire_mib_per_second
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "  ack latency   p50 {}  p90 {}  p99 {}  max {}  ({} requests)",
            show_ms(l.p50),
            show_ms(l.p90),
            show_ms(l.p99),
            show_ms(l.max),
            self.requests_acknowledged
        );
        let f = &self.freshness_ms;
        let _ = writeln!(
            out,
            "  freshness     p50 {}  p99 {}  max {}  ({} samples, {} failed)",
            show_ms(f.p50),
            show_ms(f.p99),
            show_ms(f.max),
            f.samples,
            f.errors
        );
        let _ = writeln!(out, "  errors        {}", show_errors(&self.errors));
        let _ = writeln!(
            out,
            "  generator     max {:.0} readings/s on {} thread(s)",
            self.generator_max_readings_per_second, self.generator_threads
        );
        if let Some(w) = &self.weir {
            let _ = writeln!(
                out,
                "  weir          RSS start {:.1} MiB, max {:.1} MiB, end {:.1} MiB; CPU {:.2} cores on average ({} samples)",
                w.rss_start_mib, w.rss_max_mib, w.rss_end_mib, w.cpu_cores_mean, w.samples
            );
        }
        out
    }
}

/// The nearest-rank percentile `p` (0 < p <= 1) of `sorted`: the smallest value with at least `p` of all values
/// at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn show_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{ms:.1} ms"))
}

fn show_errors(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::percentile;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&hundred, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&hundred, 0.9), Some(Duration::from_millis(90)));
        assert_eq!(percentile(&hundred, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&hundred, 1.0), Some(Duration::from_millis(100)));
        let few = ms(&[10, 20, 30]);
        assert_eq!(percentile(&few, 0.5), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&few, 0.99), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&few, 0.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ms(&[7]), 0.5), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
