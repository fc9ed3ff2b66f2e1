//! The real backend of the gRPC API: the services the HTTP handlers use.
//!
//! A batch's readings, read from the message in place ([`super::batch`]), are validated as the NDJSON lines of
//! `POST /ingest` are (the same decoder, validation, limits, log and error reasons; a reading's index is its line
//! number less one); statistics queries go through the same answer
//! functions as `/api/v1/latest` and `/api/v1/series`; SQL through the same service as `/api/v1/sql`, its result
//! encoded as Arrow IPC; subscriptions through [`crate::node::subscribe`].

use arrow::ipc::writer::StreamWriter;
use futures_util::StreamExt;
use prost::Message as _;
use tonic::Status;

use super::proto::{
    LatestRequest, LatestResponse, Quantile, ReadingBatch, SensorValue, SeriesRequest, SeriesResponse, SqlResponse,
    SubscribeRequest, UpdateKind, Window, WindowUpdate,
};
use super::{Backend, BatchAck, MessageStream};
use crate::auth::Principal;
use crate::node::answers::{MAX_QUANTILES, SeriesQuery, WindowRow, latest_answer, series_answer};
use crate::node::error::{ErrorKind, ServiceError};
use crate::node::idempotent::KeyedRequest;
use crate::node::subscribe::{SubscribeParams, subscribe};
use crate::position::LogPosition;
use crate::server::AppState;

/// A service error as a gRPC status, at the edge.
impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e.kind {
            ErrorKind::InvalidArgument => Status::invalid_argument(e.message),
            ErrorKind::TooLarge => Status::resource_exhausted(e.message),
            ErrorKind::Timeout => Status::deadline_exceeded(e.message),
            ErrorKind::Conflict => Status::aborted(e.message),
            ErrorKind::KeyReused => Status::failed_precondition(e.message),
            ErrorKind::RateLimited => Status::resource_exhausted(e.message),
            ErrorKind::Unavailable => Status::unavailable(e.message),
            ErrorKind::StorageFull => Status::resource_exhausted(e.message),
            ErrorKind::Internal => Status::internal(e.message),
        }
    }
}

fn after_of(text: &str) -> Result<Option<LogPosition>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e: String| Status::invalid_argument(format!("after: {e}")))
}

/// `SeriesRequest.quantiles`, checked as `q=` is.
fn check_quantiles(quantiles: &[f64]) -> Result<Vec<f64>, Status> {
    if quantiles.len() > MAX_QUANTILES {
        return Err(Status::invalid_argument(format!("quantiles: at most {MAX_QUANTILES} at once")));
    }
    match quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        Some(q) => Err(Status::invalid_argument(format!("quantiles: {q} is not between 0 and 1"))),
        None => Ok(quantiles.to_vec()),
    }
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
        p50: row.p50,
        p90: row.p90,
        p95: row.p95,
        p99: row.p99,
        quantiles: row.quantiles.into_iter().map(|q| Quantile { q: q.q, value: q.value }).collect(),
        late: row.late,
        duplicates: row.duplicates,
        expected: row.expected,
        completeness: row.completeness,
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
    async fn write(&self, batch: ReadingBatch, key: Option<&Principal>) -> BatchAck {
        let service = self.ingest.for_request(key, "grpc");
        let keyed = match batch.batch_id.as_str() {
            "" => None,
            id => match KeyedRequest::parse(id, "weir.v1.ReadingBatch", "", key.map(|k| &*k.name)) {
                Ok(mut keyed) => {
                    batch.hash_into(&mut keyed.request);
                    Some(keyed)
                }
                Err(e) => {
                    let failure = Some(Status::invalid_argument(format!("batch_id: {e}")));
                    let position = service.position_text(service.durable_position());
                    return BatchAck { position, failure, ..BatchAck::default() };
                }
            },
        };
        let outcome = service.ingest_readings(batch.readings(), batch.encoded_len() as u64, batch.atomic, keyed).await;
        let position = service.position_text(outcome.position.unwrap_or_else(|| service.durable_position()));
        let failure = outcome.failure.map(Status::from);
        let rejected = outcome.errors.into_iter().map(|e| ((e.line - 1) as u32, e.error)).collect();
        let replayed = outcome.replayed;
        BatchAck { accepted: outcome.accepted, rejected, rejected_count: outcome.rejected, position, failure, replayed }
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
            quantiles: check_quantiles(&request.quantiles)?,
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
        ipc_messages(&self.sql.query(&sql).await?)
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
            let kind = match e.kind {
                crate::node::subscribe::UpdateKind::Snapshot => UpdateKind::Snapshot,
                crate::node::subscribe::UpdateKind::Ready => UpdateKind::Ready,
                crate::node::subscribe::UpdateKind::Update => UpdateKind::Update,
                crate::node::subscribe::UpdateKind::Correction => UpdateKind::Correction,
            };
            Ok(WindowUpdate {
                kind: kind as i32,
                device: e.device,
                sensor: e.sensor,
                window: width,
                stats,
                replaces: e.replaces,
            })
        })))
    }
}
