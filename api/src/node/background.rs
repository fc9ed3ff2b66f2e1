//! The node's background tasks: sealing due days, deleting archived WAL segments, sampling the dataflow lag.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_sinks::archive::{ArchiveLocation, ArchiveProgress};
use weir_sinks::compact::compact_due_parts;
use weir_sinks::seal::{days_due, seal_committed_day};

use super::gauges::EngineGauges;
use super::ingest::IngestService;
use crate::node::stats::StatsService;

/// Seals every day that has been over for `grace`, every `interval`, compacts the parts of days not yet due, and
/// tells the statistics how far the rollups reach (their windows before it may leave memory).
pub(super) async fn seal_due_days(
    location: ArchiveLocation,
    progress: Arc<ArchiveProgress>,
    stats: Arc<StatsService>,
    in_cluster: bool,
    grace: Duration,
    interval: Duration,
    loaded: impl Fn() -> bool,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        if !loaded() {
            continue;
        }
        let now = chrono::Utc::now().timestamp_micros();
        let grace = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
        let due = match days_due(&location, now, grace).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the archive to find days to seal");
                continue;
            }
        };
        // In a cluster: only once every process has loaded the archive, and only what every process committed.
        let committed: Option<BTreeMap<u32, u64>> = match in_cluster {
            false => None,
            true if due.is_empty() => None,
            true => match stats.archive_states(false).await {
                Ok(states) if states.iter().all(|s| s.loaded) => {
                    Some(states.iter().map(|s| (s.process, s.committed)).collect())
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask the cluster where its archive stands; sealing waits");
                    continue;
                }
            },
        };
        for date in due {
            let started = std::time::Instant::now();
            let result = seal_committed_day(&location, &date, Some(&progress), None, committed.as_ref()).await;
            // Whether it succeeded or not, it may have written rollups: SQL lists them again.
            stats.rollups_changed();
            metrics::histogram!("weir_seal_duration_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(o) => {
                    metrics::counter!("weir_seal_runs_total", "result" => "ok").increment(1);
                    metrics::counter!("weir_seal_late_readings_total").increment(o.late_now);
                    tracing::info!(
                        %date, readings = o.record.readings, late = o.record.late_readings, parts = o.parts_merged,
                        took_ms = started.elapsed().as_millis() as u64, "sealed a day and wrote its dump"
                    )
                }
                Err(e) => {
                    metrics::counter!("weir_seal_runs_total", "result" => "error").increment(1);
                    tracing::warn!(%date, error = %e, "sealing failed; it is retried")
                }
            }
        }
        // Today's parts (and any day's not close to due) merged in tiers: a bounded number of files per day.
        let committed = progress.committed.load(std::sync::atomic::Ordering::Acquire);
        match compact_due_parts(&location, Some(&progress), committed, now, grace).await {
            Ok(done) => {
                for o in done {
                    metrics::counter!("weir_compactions_total", "tier" => o.tier.to_string()).increment(1);
                    metrics::counter!("weir_compaction_readings_total").increment(o.readings);
                    tracing::debug!(date = %o.date, tier = o.tier, parts = o.parts_merged, readings = o.readings, "compacted parts");
                }
            }
            Err(e) => {
                metrics::counter!("weir_compaction_errors_total").increment(1);
                tracing::warn!(error = %e, "compacting parts failed; it is retried")
            }
        }
        let not_due_from = weir_operators::Width::Day.start_of(now.saturating_sub(grace));
        // Listed again: the seals above replaced parts.
        let rolled = match location.list_parts().await {
            Ok(parts) => weir_sinks::rollup::rolled_through(&location, &parts, not_due_from).await,
            Err(e) => Err(e),
        };
        match rolled {
            Ok(through) => stats.engine().set_rolled_through(through),
            Err(e) => tracing::warn!(error = %e, "cannot list the rollups; the live windows keep their days meanwhile"),
        }
    }
}

/// Samples the durable position every 100 ms for `weir_dataflow_lag_seconds`.
pub(super) async fn sample_dataflow_lag(
    gauges: Arc<EngineGauges>,
    ingest: Arc<IngestService>,
    stats: Arc<StatsService>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        gauges.sample(ingest.durable_position(), stats.processed_position());
    }
}

/// Deletes WAL segments once every reading in them is archived and processed by the statistics (which, like the
/// archiver, start from the archive, so they never need those segments again) — after their idempotency keys are
/// in the key file (`keys`: its path and what it keeps).
pub(super) async fn trim_archived_wal(
    wal_dir: PathBuf,
    keys: (PathBuf, weir_pipeline::idempotency::store::Retention),
    progress: Arc<ArchiveProgress>,
    stats: Arc<StatsService>,
    loaded: impl Fn() -> bool,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !loaded() {
            continue;
        }
        let through = progress.committed.load(std::sync::atomic::Ordering::Acquire).min(stats.processed_position());
        let (dir, keys) = (wal_dir.clone(), keys.clone());
        let trim = move || -> Result<Vec<PathBuf>, Box<dyn std::error::Error + Send + Sync>> {
            let Some(through) = weir_pipeline::wal::trimmable_through(&dir, through)? else { return Ok(Vec::new()) };
            let now = weir_pipeline::idempotency::now_micros();
            weir_pipeline::idempotency::store::advance(&keys.0, &dir, through, keys.1, now)?;
            Ok(weir_pipeline::wal::trim_through(&dir, through)?)
        };
        match tokio::task::spawn_blocking(trim).await {
            Ok(Ok(deleted)) if !deleted.is_empty() => {
                tracing::info!(segments = deleted.len(), through, "deleted archived WAL segments")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete archived WAL segments; retrying"),
            Err(e) => tracing::warn!(error = %e, "WAL trimming task failed"),
        }
    }
}

/// Keeps the memory budget's parts current (every 100 ms) and exports them: `weir_memory_limit_bytes`,
/// `weir_memory_used_bytes{part}`.
pub(super) async fn measure_memory(
    budget: Arc<weir_pipeline::budget::MemoryBudget>,
    stats: Arc<StatsService>,
    names: weir_pipeline::devices::DeviceNames,
    progress: Arc<ArchiveProgress>,
    keys: Arc<weir_pipeline::idempotency::Keys>,
) {
    use weir_pipeline::budget::{Part, cost};
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    metrics::gauge!("weir_memory_limit_bytes").set(budget.limit() as f64);
    loop {
        tick.tick().await;
        let live = stats.engine().live_windows();
        budget.set(Part::LiveWindows, live.window_bytes() + live.series * cost::SERIES);
        budget.set(Part::DedupKeys, live.dedup_keys * cost::DEDUP_KEY);
        budget.set(Part::Registry, names.len() as u64 * cost::DEVICE);
        let unflushed: u64 =
            progress.unflushed.lock().map(|u| u.iter().map(|r| r.batch.rows.len() as u64).sum()).unwrap_or(0);
        budget.set(Part::ArchiveBuffer, unflushed * cost::UNFLUSHED_READING);
        let merging = progress.merging.load(std::sync::atomic::Ordering::Acquire);
        budget.set(Part::Merge, merging);
        for part in Part::ALL {
            metrics::gauge!("weir_memory_used_bytes", "part" => part.name()).set(budget.used_by(part) as f64);
        }
        let usage = keys.usage();
        metrics::gauge!("weir_idempotency_keys").set(usage.keys as f64);
        metrics::gauge!("weir_idempotency_bytes").set(usage.bytes as f64);
        metrics::counter!("weir_idempotency_evicted_total").absolute(usage.evicted);
    }
}

/// Keeps the record of rejected lines: fsyncs what was written every second (what a power loss may lose), deletes
/// segments past the retention every minute, and exports `weir_rejected_bytes`.
pub(super) async fn keep_rejected(store: Arc<weir_pipeline::rejected::RejectedStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        let expire = ticks.is_multiple_of(60);
        ticks += 1;
        let s = store.clone();
        let work = move || -> Result<usize, weir_pipeline::rejected::RejectedError> {
            s.sync()?;
            if expire { s.expire(weir_pipeline::idempotency::now_micros()) } else { Ok(0) }
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => {
                tracing::info!(segments = deleted, "deleted segments of rejected lines past the retention")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot keep the record of rejected lines; retrying"),
            Err(e) => tracing::warn!(error = %e, "the task keeping the record of rejected lines failed"),
        }
        metrics::gauge!("weir_rejected_bytes").set(store.bytes() as f64);
    }
}
