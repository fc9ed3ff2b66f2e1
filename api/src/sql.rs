//! `POST /api/v1/sql`: read-only SQL over the archive, as JSON rows, CSV or an Arrow IPC stream.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use weir_sinks::sql::SqlResult;

use crate::node::error::{ErrorKind, ServiceError};
use crate::node::sql::MAX_SQL_BYTES;
use crate::server::AppState;

/// The Arrow IPC stream media type.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The output formats, chosen by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFormat {
    Json,
    Csv,
    Arrow,
}

impl SqlFormat {
    fn from_accept(headers: &HeaderMap) -> SqlFormat {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if accept.contains(ARROW_STREAM) {
            SqlFormat::Arrow
        } else if accept.contains("text/csv") {
            SqlFormat::Csv
        } else {
            SqlFormat::Json
        }
    }
}

/// Encodes a result in `format`.
pub fn encode(result: &SqlResult, format: SqlFormat) -> Result<(Vec<u8>, &'static str), arrow::error::ArrowError> {
    let batches: Vec<&arrow::array::RecordBatch> = result.batches.iter().collect();
    match format {
        SqlFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write_batches(&batches)?;
            w.finish()?;
            let mut out = w.into_inner();
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            Ok((out, "application/json"))
        }
        SqlFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
            if batches.is_empty() {
                w.write(&arrow::array::RecordBatch::new_empty(result.schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
            Ok((w.into_inner(), "text/csv; charset=utf-8"))
        }
        SqlFormat::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &result.schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            Ok((w.into_inner()?, ARROW_STREAM))
        }
    }
}

/// `POST /api/v1/sql`: the SQL as the body (`text/plain`) or as `{"sql": "..."}` (`application/json`).
pub async fn sql(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    // The body within --max-request-time, like every body: a client that stalls mid-body holds nothing for long.
    let deadline = state.ingest.limits().max_request_time;
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_SQL_BYTES)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            let message = format!("the SQL text is over {MAX_SQL_BYTES} bytes");
            return ServiceError::new(ErrorKind::TooLarge, message).into_response();
        }
        Err(_) => {
            let message = format!("the request body did not arrive within {deadline:?} (--max-request-time)");
            return (StatusCode::REQUEST_TIMEOUT, message).into_response();
        }
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let text = if is_json {
        match serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["sql"].as_str().map(String::from))
        {
            Some(s) => s,
            None => {
                return ServiceError::invalid("send {\"sql\": \"SELECT ...\"} or the SQL as text/plain")
                    .into_response();
            }
        }
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(s) => s,
            Err(_) => return ServiceError::invalid("the SQL text is not UTF-8").into_response(),
        }
    };
    let result = match state.sql.query(&text).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match encode(&result, SqlFormat::from_accept(&headers)) {
        Ok((bytes, content_type)) => {
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], bytes).into_response();
            if let Ok(v) = HeaderValue::from_str(&result.rows().to_string()) {
                r.headers_mut().insert("weir-rows", v);
            }
            r
        }
        // The result is fine; the format asked for cannot hold it (CSV has no lists or structs): the client's to change.
        Err(e) => ServiceError::invalid(format!(
            "the result cannot be written as {}: {e}; ask for JSON (the default) or Arrow (Accept: {ARROW_STREAM}) instead",
            match SqlFormat::from_accept(&headers) {
                SqlFormat::Csv => "CSV",
                SqlFormat::Json => "JSON",
                SqlFormat::Arrow => "Arrow",
            }
        ))
        .into_response(),
    }
}
