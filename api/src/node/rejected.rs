//! Reading the record of rejected lines for a transport: `GET /api/v1/rejected` (the `rejected` SQL table reads the
//! same record through the SQL service).

use std::sync::Arc;

use serde::Serialize;
use weir_pipeline::rejected::{Filter, RejectedStore, Rejection, kind_by_name};

use super::answers::time_bound;
use super::error::ServiceError;

/// Rows returned when a query names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rows one query returns.
pub const MAX_LIMIT: usize = 10_000;

/// Which rejected lines to return, as a client wrote it: every field optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RejectedQuery {
    /// Received at or after (RFC 3339).
    pub from: Option<String>,
    /// Received before (RFC 3339).
    pub to: Option<String>,
    /// At most this many (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
    pub limit: Option<usize>,
    /// Exactly this source: a route such as `/ingest`, `grpc`, `mqtt:<topic>`.
    pub source: Option<String>,
    /// The kind of rejection: `undecodable`, `invalid` or `too_long`.
    pub reason: Option<String>,
    /// Exactly this API key name.
    pub key: Option<String>,
}

/// One rejected line as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRow {
    /// When its request was received (RFC 3339, UTC, µs).
    pub received_at: String,
    /// The API key's name (`null` without keys).
    pub key_name: Option<String>,
    pub source: String,
    /// The line's 1-based number in its request (for readings sent as fields: their place in the request).
    pub line: u64,
    /// `undecodable`, `invalid` or `too_long` (the `reason` label of `weir_readings_rejected_total`).
    pub reason: &'static str,
    /// The reason the client got.
    pub error: String,
    /// The first bytes of the line (bytes that are not UTF-8 shown as U+FFFD).
    pub text: String,
}

impl From<Rejection> for RejectedRow {
    fn from(r: Rejection) -> Self {
        RejectedRow {
            received_at: weir_pipeline::decode::format_timestamp(r.received_micros),
            text: r.text_lossy().into_owned(),
            key_name: r.key,
            source: r.source,
            line: r.line,
            reason: r.kind.as_str(),
            error: r.error,
        }
    }
}

/// The rejected lines `query` asks for, newest first (nothing where no record is kept).
pub async fn rejected_lines(
    store: Option<&Arc<RejectedStore>>,
    query: &RejectedQuery,
) -> Result<Vec<RejectedRow>, ServiceError> {
    let from = time_bound("from", &query.from, i64::MIN)?;
    let to = time_bound("to", &query.to, i64::MAX)?;
    if from > to {
        return Err(ServiceError::invalid("from is after to"));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ServiceError::invalid(format!(
            "limit {limit} is more than {MAX_LIMIT}: narrow from/to and ask again"
        )));
    }
    let kind = match query.reason.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(name) => Some(kind_by_name(name).ok_or_else(|| {
            ServiceError::invalid(format!("unknown reason {name:?}: use undecodable, invalid or too_long"))
        })?),
    };
    let filter = Filter {
        from_micros: Some(from),
        to_micros: Some(to),
        source: query.source.clone().filter(|s| !s.is_empty()),
        kind,
        key: query.key.clone().filter(|k| !k.is_empty()),
    };
    let Some(store) = store.cloned() else { return Ok(Vec::new()) };
    let now = weir_pipeline::idempotency::now_micros();
    let read = tokio::task::spawn_blocking(move || store.read(&filter, limit, now)).await.map_err(|e| {
        ServiceError::new(super::error::ErrorKind::Internal, format!("reading the rejected lines failed: {e}"))
    })?;
    let (records, damaged) =
        read.map_err(|e| ServiceError::unavailable(format!("cannot read the rejected lines: {e}")))?;
    for damage in damaged {
        tracing::warn!(%damage, "a segment of rejected lines is damaged; its records after the damage are not shown");
    }
    Ok(records.into_iter().map(RejectedRow::from).collect())
}
