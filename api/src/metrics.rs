//! `GET /metrics`: Prometheus text format, from the `metrics` facade (so libraries and handlers record with
//! `metrics::counter!` and friends, and only this module knows about the exporter). No authentication.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder's handle, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed already; then this handle renders nothing.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!("weir_readings_accepted_total", "Readings acknowledged (durable in the WAL)");
    metrics::describe_counter!("weir_readings_rejected_total", "Lines rejected by ingest (invalid or undecodable)");
    metrics::describe_counter!("weir_ingest_requests_total", "Ingest requests, by HTTP status");
}

pub async fn metrics() -> impl IntoResponse {
    let mut text = handle().render();
    text.push_str(&process_rss());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `weir_process_resident_memory_bytes`, read from /proc at scrape time.
fn process_rss() -> String {
    let pages: Option<u64> = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()));
    match pages {
        Some(p) => format!(
            "# HELP weir_process_resident_memory_bytes Resident memory of the process\n\
             # TYPE weir_process_resident_memory_bytes gauge\nweir_process_resident_memory_bytes {}\n",
            p * 4096
        ),
        None => String::new(),
    }
}
