//! `GET /metrics`: Prometheus text format, from the `metrics` facade (so libraries and handlers record with
//! `metrics::counter!` and friends, and only this module knows about the exporter). No authentication.
//!
//! Events (readings, requests, fsyncs, parts) are counted where they happen; states (positions, lag, WAL size,
//! RSS) are read at scrape time by [`crate::node::EngineGauges`].

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::server::AppState;

/// Histogram buckets of every `…_seconds` metric: 100 µs to 60 s.
const SECONDS_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

/// The process-wide recorder's handle, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed already; then this handle renders nothing.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// Every metric Weir exports, with its help text (the README lists the same).
pub const METRICS: &[(&str, &str)] = &[
    ("weir_readings_received_total", "Lines holding a reading received by ingest, valid or not"),
    ("weir_readings_accepted_total", "Readings acknowledged (durable in the WAL)"),
    ("weir_readings_rejected_total", "Lines rejected by ingest, by reason (undecodable, invalid, too_long)"),
    ("weir_readings_deduplicated_total", "Readings dropped by the archive as repeats of an earlier write"),
    ("weir_ingest_requests_total", "Ingest requests that reached the decoder, by HTTP status"),
    ("weir_ingest_body_bytes_total", "Ingest body bytes read, after gzip decoding"),
    ("weir_http_requests_total", "HTTP requests, by route and status"),
    ("weir_http_request_duration_seconds", "HTTP request latency, by route and status"),
    ("weir_wal_appends_total", "Records appended to the write-ahead log"),
    ("weir_wal_fsyncs_total", "Group commits (one fdatasync each)"),
    ("weir_wal_written_bytes_total", "Bytes written to the write-ahead log"),
    ("weir_wal_fsync_duration_seconds", "Time of one group commit: write plus fdatasync"),
    ("weir_wal_bytes", "Size of the write-ahead log's segments on disk"),
    ("weir_wal_durable_position", "Last durable (acknowledgeable) WAL position"),
    ("weir_dataflow_processed_position", "Last WAL position the live statistics have processed"),
    ("weir_dataflow_lag_positions", "WAL records durable but not yet in the live statistics"),
    ("weir_dataflow_lag_seconds", "How long the oldest record not yet in the statistics has been durable"),
    ("weir_archive_parts_total", "Parquet parts written to the archive"),
    ("weir_archive_bytes_total", "Bytes of Parquet parts written to the archive"),
    ("weir_archive_readings_total", "Readings written to the archive"),
    ("weir_archive_committed_position", "Last WAL position covered by the archive checkpoint"),
    ("weir_seal_runs_total", "Day seals, by result (ok, error)"),
    ("weir_seal_duration_seconds", "Time to seal one day and write its dump"),
    ("weir_readings_late_total", "Readings archived although their series already had a newer one (out of order)"),
    ("weir_seal_late_readings_total", "Readings that arrived for a day after it was sealed (merged by a reseal)"),
    ("weir_sql_queries_total", "SQL queries, by result (ok, error, timeout, busy)"),
    ("weir_sql_query_duration_seconds", "SQL query time, including waiting for the archive to catch up"),
    ("weir_process_resident_memory_bytes", "Resident memory of the process"),
    ("weir_live_windows", "Windows held in memory by the live statistics (the days within --live-horizon)"),
    ("weir_live_series", "Series with windows in memory"),
    ("weir_live_window_bytes", "Estimated memory of the live windows"),
    ("weir_memory_limit_bytes", "The memory budget of the state that grows with the data (--memory-limit)"),
    ("weir_memory_used_bytes", "What each part of the state uses of the memory budget, by part"),
    ("weir_rejected_recorded_total", "Rejected lines written to the record of rejected lines"),
    (
        "weir_rejected_not_recorded_total",
        "Rejected lines left out of the record of rejected lines, by why (per_request_limit, request_too_large, \
         write_failed)",
    ),
    ("weir_rejected_bytes", "Size of the record of rejected lines on disk (at most --rejected-max-bytes)"),
    (
        "weir_live_dropped_readings_total",
        "Readings older than the live horizon, not added to the live windows (they show after their day's reseal)",
    ),
];

/// Counters that always carry labels.
const LABELLED: [&str; 6] = [
    "weir_readings_rejected_total",
    "weir_rejected_not_recorded_total",
    "weir_ingest_requests_total",
    "weir_http_requests_total",
    "weir_seal_runs_total",
    "weir_sql_queries_total",
];

fn describe() {
    for (name, help) in METRICS {
        if name.ends_with("_seconds") {
            metrics::describe_histogram!(*name, *help);
        } else if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
            // Unlabelled counters exist from the start, at 0 (labelled ones appear with their first label set).
            if !LABELLED.contains(name) {
                metrics::counter!(*name).increment(0);
            }
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let durable = state.ingest.durable_position();
    let processed = state.stats.processed_position();
    let gauges = state.gauges.clone();
    gauges.sample(durable, processed);
    metrics::gauge!("weir_wal_durable_position").set(durable as f64);
    metrics::gauge!("weir_dataflow_processed_position").set(processed as f64);
    metrics::gauge!("weir_dataflow_lag_positions").set(durable.saturating_sub(processed) as f64);
    metrics::gauge!("weir_dataflow_lag_seconds").set(gauges.lag_seconds(processed, Instant::now()));
    if let Ok(Some(bytes)) = tokio::task::spawn_blocking(move || gauges.wal_bytes()).await {
        metrics::gauge!("weir_wal_bytes").set(bytes as f64);
    }
    let live = state.stats.engine().live_windows();
    metrics::gauge!("weir_live_windows").set(live.windows as f64);
    metrics::gauge!("weir_live_series").set(live.series as f64);
    metrics::gauge!("weir_live_window_bytes").set(live.window_bytes() as f64);
    metrics::gauge!("weir_live_sketch_bytes").set(live.sketch_bytes as f64);
    metrics::counter!("weir_live_dropped_readings_total").absolute(live.dropped_readings);
    if let Some(rss) = process_rss_bytes() {
        metrics::gauge!("weir_process_resident_memory_bytes").set(rss as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle().render())
}

/// Resident memory, from /proc (Linux).
fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
