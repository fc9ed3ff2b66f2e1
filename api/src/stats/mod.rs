//! Reading the live statistics over HTTP: the replaced system's routes ([`compat`]), the general API ([`v1`]) and
//! the live feed ([`sse`]).
//!
//! Every handler is a thin adapter over [`StatsService`](crate::node::stats::StatsService): it parses the request,
//! asks the dataflow (waiting for `?after=<Weir-Position>` when given) and shapes the answer; a [`ServiceError`]
//! becomes a status and a JSON body here, at the edge.

pub mod compat;
pub mod sse;
pub mod v1;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::node::error::{ErrorKind, ServiceError};
use crate::position::LogPosition;

/// The HTTP status of a service error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"error": message}` with the status of its kind, and `Retry-After` when the client should retry.
impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let mut response = (status_of(self.kind), Json(serde_json::json!({ "error": self.message }))).into_response();
        if let Some(seconds) = self.retry_after_seconds() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `?after=<Weir-Position>`: answer only once the statistics include that log position.
#[derive(Debug, Default, Deserialize)]
pub struct After {
    pub after: Option<LogPosition>,
}
