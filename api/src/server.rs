//! The HTTP application: routes, shared state, and serving until shutdown.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

use crate::auth::{ApiKeys, require_api_key};
use crate::health::{healthz, readyz};
use crate::ingest::ingest;
use crate::node::ingest::IngestService;
use crate::node::sql::SqlService;
use crate::node::stats::StatsService;
use crate::node::{EngineGauges, Readiness};
use crate::stats::{compat, v1};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Arc<IngestService>,
    pub stats: Arc<StatsService>,
    pub sql: Arc<SqlService>,
    pub keys: ApiKeys,
    pub readiness: Arc<Readiness>,
    pub gauges: Arc<EngineGauges>,
    /// Becomes `true` when the server is stopping: live feeds end then, so that shutdown need not wait for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The router, without a socket, so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    let authenticated = Router::new()
        .route("/ingest", post(ingest))
        .route("/api/statistics/latest", get(compat::statistics_latest))
        .route("/api/location/latest", get(compat::location_latest))
        .route("/api/status", get(compat::status))
        .route("/api/statistics/sensor/{sensor}/date/{date}", get(compat::sensor_day))
        .route("/api/v1/series", get(v1::series))
        .route("/api/v1/latest", get(v1::latest))
        .route("/api/v1/devices", get(v1::devices))
        .route("/api/v1/gaps", get(v1::gaps))
        .route("/api/v1/completeness", get(v1::completeness))
        .route("/api/v1/rejected", get(crate::rejected::rejected))
        .route("/api/v1/sql", post(crate::sql::sql))
        .route("/api/v1/subscribe", get(crate::stats::sse::sse))
        .route("/write", post(crate::ingest::line_protocol::write_v1))
        .route("/api/v2/write", post(crate::ingest::line_protocol::write_v2))
        .route("/api/v3/write_lp", post(crate::ingest::line_protocol::write_v3))
        .route("/api/v1/prom/write", post(crate::ingest::remote_write::write))
        .route("/v1/metrics", post(crate::ingest::otlp::metrics))
        .route_layer(middleware::from_fn_with_state(state.keys.clone(), require_api_key));
    authenticated
        .route("/", get(crate::dashboard::index))
        .route("/dashboard/app.js", get(crate::dashboard::script))
        .route("/dashboard/style.css", get(crate::dashboard::style))
        .route("/healthz", get(healthz))
        .route("/ping", get(ping).head(ping))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::metrics))
        .with_state(state)
        // Bodies are streamed and limited by the ingest service itself.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(crate::requests::observe))
}

/// `GET /ping`: what InfluxDB clients (the 1.x `influx` CLI, client libraries) ask first; 204 with a version.
async fn ping() -> impl axum::response::IntoResponse {
    (
        axum::http::StatusCode::NO_CONTENT,
        [("x-influxdb-version", "1.8-compatible (weir)"), ("x-influxdb-build", "weir")],
    )
}

/// Headers every answer carries: the dashboard loads only its own script and style and may not be framed; no
/// answer is sniffed as another type.
async fn security_headers(request: axum::extract::Request, next: middleware::Next) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
