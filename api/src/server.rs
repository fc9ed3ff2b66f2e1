//! The HTTP application: routes, shared state, and serving until shutdown.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::post;
use tower_http::trace::TraceLayer;

use crate::auth::{ApiKeys, require_api_key};
use crate::ingest::{IngestService, ingest};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Arc<IngestService>,
    pub keys: ApiKeys,
}

/// The router, without a socket, so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    let authenticated = Router::new()
        .route("/ingest", post(ingest))
        .route_layer(middleware::from_fn_with_state(state.keys.clone(), require_api_key));
    authenticated
        .with_state(state)
        // Bodies are streamed and limited by the ingest service itself.
        .layer(DefaultBodyLimit::disable())
        .layer(TraceLayer::new_for_http())
}
