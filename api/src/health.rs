//! `GET /healthz` (the process answers and its log takes writes) and `GET /readyz` (the statistics have loaded the archive and replayed what
//! the log held at start, and the archiver runs; 503 with the reason before). No authentication: orchestrators and load
//! balancers call them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::server::AppState;

/// 200 while the engine can make progress; 503 once its write-ahead log has failed for good (a full disk, an I/O
/// error): it accepts no more writes until restarted, so an orchestrator should restart it.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.ingest.log_failure() {
        None => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Some(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failing", "reason": e.to_string()}))),
    }
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if let Some(e) = state.ingest.log_failure() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": e.to_string()})));
    }
    match state.readiness.not_ready(state.stats.load_progress()) {
        None => (StatusCode::OK, Json(json!({"ready": true}))),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": reason}))),
    }
}
