//! `GET /api/v1/rejected?from=&to=&limit=&source=&reason=&key=`: the rejected lines kept in the record of rejected
//! lines, newest first (the `read` scope).

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use crate::node::error::ServiceError;
use crate::node::rejected::{RejectedQuery, rejected_lines};
use crate::server::AppState;

/// `GET /api/v1/rejected`: `{"rejected": [{received_at, key_name, source, line, reason, error, text}, …]}`.
pub async fn rejected(
    State(state): State<AppState>,
    Query(query): Query<RejectedQuery>,
) -> Result<Response, ServiceError> {
    let rows = rejected_lines(state.ingest.rejected(), &query).await?;
    Ok(Json(serde_json::json!({ "rejected": rows })).into_response())
}
