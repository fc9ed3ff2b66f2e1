//! The real backend of the gRPC API: the services the HTTP handlers use.
//!
//! A batch is written as the NDJSON lines `POST /ingest` would get (the same decoder, validation, limits, log and
//! error reasons; a reading's index is its line number less one); statistics queries go through the same answer
//! functions as `/api/v1/latest` and `/api/v1/series`; SQL through the same service as `/api/v1/sql`, its result
//! encoded as Arrow IPC; subscriptions through [`crate::subscribe`].

use std::io::Write as _;

use arrow::ipc::writer::StreamWriter;
use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use tonic::Status;

use super::proto::{
    LatestRequest, LatestResponse, ReadingBatch, SensorValue, SeriesRequest, SeriesResponse, SqlResponse,
    SubscribeRequest, Window, WindowUpdate,
};
use super::{Backend, BatchAck, MessageStream};
use crate::ingest::body::BodySource;
use crate::ingest::{IngestFailure, record_metrics};
use crate::position::LogPosition;
use crate::server::AppState;
use crate::stats::ApiError;
use crate::stats::v1::{SeriesQuery, WindowRow, latest_answer, series_answer};
use crate::subscribe::{SubscribeParams, subscribe};

/// The gRPC status for an HTTP status of the same meaning.
pub fn status_of(code: StatusCode, message: String) -> Status {
    match code {
        StatusCode::BAD_REQUEST => Status::invalid_argument(message),
        StatusCode::UNAUTHORIZED => Status::unauthenticated(message),
        StatusCode::PAYLOAD_TOO_LARGE => Status::resource_exhausted(message),
        StatusCode::REQUEST_TIMEOUT => Status::deadline_exceeded(message),
        StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(message),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        status_of(e.status, e.message)
    }
}

fn after_of(text: &str) -> Result<Option<LogPosition>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e: String| Status::invalid_argument(format!("after: {e}")))
}

/// The batch as NDJSON, one line per reading (fields left out when absent, so the decoder names what is missing;
/// a value that is not finite is written as the bare token a JSON decoder refuses, as over HTTP).
pub fn ndjson(batch: &ReadingBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.readings.len() * 80);
    for r in &batch.readings {
        out.extend_from_slice(b"{\"sensor\":");
        let _ = serde_json::to_writer(&mut out, &r.sensor);
        if let Some(v) = r.value {
            if v.is_finite() {
                let _ = write!(out, ",\"value\":{v:?}");
            } else {
                let _ = write!(out, ",\"value\":{v}");
            }
        }
        if !r.timestamp.is_empty() {
            out.extend_from_slice(b",\"timestamp\":");
            let _ = serde_json::to_writer(&mut out, &r.timestamp);
        }
        if let Some(d) = &r.device {
            out.extend_from_slice(b",\"device\":");
            let _ = serde_json::to_writer(&mut out, d);
        }
        out.extend_from_slice(b"}\n");
    }
    out
}

fn window(row: WindowRow) -> Window {
    Window {
        start: row.start,
        end: row.end,
        count: row.count,
        sum: row.sum,
        min: row.min,
        max: row.max,
        mean: row.mean,
        first: row.first,
        first_timestamp: row.first_timestamp,
        last: row.last,
        last_timestamp: row.last_timestamp,
    }
}

/// The result as messages: each a complete Arrow IPC stream of one record batch.
fn ipc_messages(result: &weir_sinks::sql::SqlResult) -> Result<Vec<SqlResponse>, Status> {
    let encode = |batch: Option<&arrow::array::RecordBatch>| -> Result<SqlResponse, arrow::error::ArrowError> {
        let mut buf = Vec::new();
        let mut writer = StreamWriter::try_new(&mut buf, &result.schema)?;
        if let Some(b) = batch {
            writer.write(b)?;
        }
        writer.finish()?;
        drop(writer);
        Ok(SqlResponse { arrow_ipc: buf, rows: batch.map_or(0, |b| b.num_rows() as u64) })
    };
    let internal = |e: arrow::error::ArrowError| Status::internal(e.to_string());
    if result.batches.is_empty() {
        return Ok(vec![encode(None).map_err(internal)?]);
    }
    result.batches.iter().map(|b| encode(Some(b)).map_err(internal)).collect()
}

impl Backend for AppState {
    async fn write(&self, batch: ReadingBatch) -> BatchAck {
        let service = &self.ingest;
        let body = Bytes::from(ndjson(&batch));
        let mut source = BodySource::from_bytes(body, service.limits().max_body_bytes);
        let outcome = service.ingest(&mut source, batch.atomic).await;
        record_metrics(&outcome, source.bytes_read());
        let position = service.position_text(outcome.position.unwrap_or_else(|| service.durable_position()));
        let failure = outcome.failure.as_ref().map(|f| match f {
            IngestFailure::Body(e) => Status::resource_exhausted(e.to_string()),
            IngestFailure::Timeout(_) => Status::deadline_exceeded(f.to_string()),
            IngestFailure::Wal(weir_pipeline::wal::AppendError::Busy(_)) => Status::unavailable(f.to_string()),
            IngestFailure::Wal(_) => Status::internal(f.to_string()),
        });
        let rejected = outcome.errors.into_iter().map(|e| ((e.line - 1) as u32, e.error)).collect();
        BatchAck { accepted: outcome.accepted, rejected, rejected_count: outcome.rejected, position, failure }
    }

    async fn latest(&self, request: LatestRequest) -> Result<LatestResponse, Status> {
        let device = Some(request.device);
        let (device, values) = latest_answer(&self.stats, &device, after_of(&request.after)?).await?;
        let latest = values
            .into_iter()
            .map(|v| SensorValue { sensor: v.sensor, value: v.value, timestamp: v.timestamp })
            .collect();
        Ok(LatestResponse { device, latest })
    }

    async fn series(&self, request: SeriesRequest) -> Result<SeriesResponse, Status> {
        let query = SeriesQuery {
            sensor: Some(request.sensor),
            device: Some(request.device),
            window: Some(request.window),
            from: Some(request.from),
            to: Some(request.to),
            after: after_of(&request.after)?,
        };
        let answer = series_answer(&self.stats, &query).await?;
        Ok(SeriesResponse {
            device: answer.device,
            sensor: answer.sensor,
            window: answer.width.name().to_owned(),
            windows: answer.rows.into_iter().map(window).collect(),
        })
    }

    async fn query(&self, sql: String) -> Result<Vec<SqlResponse>, Status> {
        if sql.len() > crate::sql::MAX_SQL_BYTES {
            return Err(Status::invalid_argument(format!(
                "the SQL text is longer than {} bytes",
                crate::sql::MAX_SQL_BYTES
            )));
        }
        match self.sql.query(&sql).await {
            Ok(result) => ipc_messages(&result),
            Err(response) => {
                let code = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                Err(status_of(code, message))
            }
        }
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<MessageStream<WindowUpdate>, Status> {
        let params = SubscribeParams {
            device: Some(request.device),
            sensor: Some(request.sensor),
            window: Some(request.window),
            from: Some(request.from),
        };
        let events = subscribe(self.stats.clone(), params, self.stopping.clone()).await?;
        Ok(Box::pin(events.map(|e| {
            let (width, stats) = match e.window {
                Some((width, row)) => (width.name().to_owned(), Some(window(row))),
                None => (String::new(), None),
            };
            Ok(WindowUpdate {
                kind: e.kind as i32,
                device: e.device,
                sensor: e.sensor,
                window: width,
                stats,
                replaces: e.replaces,
            })
        })))
    }
}
