//! `GET /healthz` (the process answers) and `GET /readyz` (the statistics have loaded the archive and replayed what
//! the log held at start, and the archiver runs; 503 with the reason before). No authentication: orchestrators and load
//! balancers call them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::server::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.readiness.not_ready(state.stats.load_progress()) {
        None => (StatusCode::OK, Json(json!({"ready": true}))),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": reason}))),
    }
}
