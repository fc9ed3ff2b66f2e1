//! `POST /ingest`: NDJSON readings in, durable and acknowledged out.
//!
//! [`IngestService`] does the work independent of HTTP: it reads the body chunk by chunk, decodes it with
//! [`BodyDecoder`], queues each full batch to the WAL as soon as it is full (so memory stays flat), and answers only
//! once every batch it counts as accepted is fsynced. The axum handler [`ingest`] is a thin adapter: it checks the
//! headers, calls the service and shapes the response the replaced system's clients expect.

pub mod body;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::time::Instant;
use weir_pipeline::decode::{Decoder, ReadingFields};
use weir_pipeline::ingest::{BodyDecoder, DecodeLimits, LineReport, RejectionCounts};
use weir_pipeline::reading::{DeviceInterner, ReadingBatch};

use weir_pipeline::wal::{AppendError, PendingAppend, ReadingLog};

use crate::server::AppState;
use body::{BodyError, BodySource, Coding};

/// The response header that carries the WAL position of an acknowledged request.
pub const POSITION_HEADER: &str = "weir-position";

/// After an early 413/408, at most this much of the rest of the body is read away (and for at most
/// [`DRAIN_TIME`]), so that a client still sending reads the answer instead of a reset connection.
const DRAIN_BYTES: u64 = 16 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Content types `POST /ingest` accepts.
pub const ACCEPTED_CONTENT_TYPES: [&str; 2] = ["application/stream+json", "application/x-ndjson"];

/// Limits of one ingest request.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub decode: DecodeLimits,
    pub max_body_bytes: u64,
    pub max_request_time: Duration,
    /// How long a request waits for room in the WAL queue before it gets 503.
    pub queue_timeout: Duration,
}

/// Decodes bodies and makes their readings durable.
#[derive(Clone)]
pub struct IngestService {
    decoder: Decoder,
    limits: IngestLimits,
    log: Arc<dyn ReadingLog>,
    /// In a cluster, this process's index: positions are then written `PROCESS:POS`.
    process: Option<u32>,
}

/// How a request ended when it could not be read or stored to its end.
#[derive(Debug, thiserror::Error)]
pub enum IngestFailure {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("the request took longer than the limit of {0:?} (--max-request-time)")]
    Timeout(Duration),
    #[error(transparent)]
    Wal(#[from] AppendError),
}

/// What happened to one body.
pub struct IngestOutcome {
    /// Readings made durable.
    pub accepted: u64,
    /// WAL position of the last record written for this request, if any.
    pub position: Option<u64>,
    pub rejected: u64,
    /// `rejected` by reason.
    pub rejected_by_reason: RejectionCounts,
    /// Lines that held a reading, valid or not (blank lines are not counted).
    pub received: u64,
    pub errors: Vec<LineReport>,
    pub invalid: Vec<Box<RawValue>>,
    /// Set when reading or storing stopped early; `accepted` still counts what was made durable before.
    pub failure: Option<IngestFailure>,
}

impl IngestService {
    pub fn new(decoder: Decoder, limits: IngestLimits, log: Arc<dyn ReadingLog>) -> Self {
        IngestService { decoder, limits, log, process: None }
    }

    /// The same, for process `process` of a cluster.
    pub fn in_cluster(mut self, process: u32) -> Self {
        self.process = Some(process);
        self
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// A log position of this process as clients see it (`POS`, or `PROCESS:POS` in a cluster).
    pub fn position_text(&self, position: u64) -> String {
        crate::position::LogPosition { process: self.process, position }.to_string()
    }

    /// The durable WAL position.
    pub fn durable_position(&self) -> u64 {
        self.log.durable_position()
    }

    /// Reads `source` to its end and stores its valid readings. With `atomic`, nothing is stored unless every line
    /// is valid (the valid readings are then held in memory until the end and written as one record).
    pub async fn ingest(&self, source: &mut BodySource, atomic: bool) -> IngestOutcome {
        self.run(Input::Body(source), atomic).await
    }

    /// Stores the valid readings of `readings`, given as typed fields (gRPC), validated with the same rules and
    /// error texts as NDJSON lines; a reading's number in the report is its 1-based place in `readings`.
    pub async fn ingest_readings(&self, readings: &[ReadingFields<'_>], atomic: bool) -> IngestOutcome {
        self.run(Input::Readings(readings), atomic).await
    }

    async fn run(&self, mut input: Input<'_, '_>, atomic: bool) -> IngestOutcome {
        let deadline = Instant::now() + self.limits.max_request_time;
        let mut decoder = BodyDecoder::new(self.decoder.clone(), self.limits.decode.clone());
        let mut held = ReadingBatch::new(self.decoder.sensors());
        let mut held_devices = DeviceInterner::default();
        let mut pending: Vec<(PendingAppend, u64)> = Vec::new();
        let mut failure = None;
        let mut given = 0u64;
        loop {
            match &mut input {
                Input::Body(source) => {
                    let chunk = match tokio::time::timeout_at(deadline, source.next_chunk()).await {
                        Err(_) => Err(IngestFailure::Timeout(self.limits.max_request_time)),
                        Ok(Err(e)) => Err(e.into()),
                        Ok(Ok(chunk)) => Ok(chunk),
                    };
                    match chunk {
                        Ok(Some(chunk)) => decoder.feed(&chunk),
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                Input::Readings(readings) => {
                    // A batch's worth at a time, so full batches go to the log as they fill.
                    let take = readings.len().min(self.limits.decode.batch_rows.max(1));
                    if take == 0 {
                        break;
                    }
                    for fields in &readings[..take] {
                        given += 1;
                        decoder.push_reading(given, *fields);
                    }
                    *readings = &readings[take..];
                }
            }
            while let Some(batch) = decoder.take_full_batch() {
                if atomic {
                    held.append_batch(&batch, &mut held_devices);
                } else if let Err(e) = self.queue(&batch, deadline, &mut pending).await {
                    failure = Some(e);
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none() {
            decoder.finish();
            if let Some(batch) = decoder.take_batch() {
                if atomic {
                    held.append_batch(&batch, &mut held_devices);
                } else if let Err(e) = self.queue(&batch, deadline, &mut pending).await {
                    failure = Some(e);
                }
            }
        }
        let rejected = decoder.rejections().rejected;
        if atomic
            && failure.is_none()
            && rejected == 0
            && !held.is_empty()
            && let Err(e) = self.queue(&held, deadline, &mut pending).await
        {
            failure = Some(e);
        }
        // Everything queued is written whether we wait or not; wait so the answer counts exactly what is durable.
        let mut accepted = 0;
        let mut position = None;
        for (append, rows) in pending {
            match append.durable().await {
                Ok(p) => {
                    accepted += rows;
                    position = Some(p);
                }
                Err(e) => {
                    failure.get_or_insert(e.into());
                }
            }
        }
        let decoded = decoder.decoded();
        let rejections = decoder.into_rejections();
        IngestOutcome {
            accepted,
            position,
            rejected: rejections.rejected,
            rejected_by_reason: rejections.by_reason,
            received: decoded + rejections.rejected,
            errors: rejections.errors,
            invalid: rejections.invalid,
            failure,
        }
    }

    async fn queue(
        &self,
        batch: &ReadingBatch,
        deadline: Instant,
        pending: &mut Vec<(PendingAppend, u64)>,
    ) -> Result<(), IngestFailure> {
        let wait = self.limits.queue_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let append = self.log.append(batch, wait).await?;
        pending.push((append, batch.len() as u64));
        Ok(())
    }
}

/// What one ingest request reads its readings from.
enum Input<'s, 'r> {
    /// An NDJSON body, chunk by chunk.
    Body(&'s mut BodySource),
    /// Readings given as typed fields; what is left of them.
    Readings(&'s [ReadingFields<'r>]),
}

/// Query parameters of `POST /ingest`.
#[derive(Debug, Default, Deserialize)]
pub struct IngestParams {
    /// Store nothing unless every line is valid.
    #[serde(default)]
    pub atomic: bool,
    /// Answer 200 with `{"accepted":K,"position":P}` instead of `{}`.
    #[serde(default)]
    pub verbose: bool,
}

#[derive(Serialize)]
struct RejectedBody<'a> {
    invalid: &'a [Box<RawValue>],
    errors: &'a [LineReport],
    accepted: u64,
    rejected: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct VerboseBody {
    accepted: u64,
    position: u64,
    /// In a cluster: the process whose log `position` is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<u32>,
}

/// `POST /ingest`.
pub async fn ingest(
    State(state): State<AppState>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let service = &state.ingest;
    if let Err(response) = check_content_type(&headers) {
        return response;
    }
    let coding = match content_coding(&headers) {
        Ok(c) => c,
        Err(response) => return response,
    };
    let limit = service.limits().max_body_bytes;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        // Read a small excess away so the client gets the 413 rather than a broken pipe; a large one is cut off.
        if len - limit <= DRAIN_BYTES {
            BodySource::new(body, Coding::Identity, u64::MAX).drain(DRAIN_BYTES, DRAIN_TIME).await;
        }
        return plain(StatusCode::PAYLOAD_TOO_LARGE, BodyError::TooLarge { limit }.to_string());
    }
    let mut source = BodySource::new(body, coding, limit);
    let outcome = service.ingest(&mut source, params.atomic).await;
    if matches!(
        outcome.failure,
        Some(IngestFailure::Body(BodyError::TooLarge { .. })) | Some(IngestFailure::Timeout(_))
    ) {
        source.drain(DRAIN_BYTES, DRAIN_TIME).await;
    }
    record_metrics(&outcome, source.bytes_read());
    tracing::Span::current().record("readings", outcome.accepted);
    let response = respond(outcome, params, service.durable_position(), service.process);
    metrics::counter!("weir_ingest_requests_total", "status" => response.status().as_u16().to_string()).increment(1);
    response
}

pub(crate) fn record_metrics(outcome: &IngestOutcome, body_bytes: u64) {
    metrics::counter!("weir_ingest_body_bytes_total").increment(body_bytes);
    metrics::counter!("weir_readings_received_total").increment(outcome.received);
    metrics::counter!("weir_readings_accepted_total").increment(outcome.accepted);
    for (reason, count) in outcome.rejected_by_reason.iter() {
        // Every reason is registered (with 0) so dashboards see the series before the first rejection.
        metrics::counter!("weir_readings_rejected_total", "reason" => reason.as_str()).increment(count);
    }
}

fn respond(outcome: IngestOutcome, params: IngestParams, durable: u64, process: Option<u32>) -> Response {
    let status = match &outcome.failure {
        None if outcome.rejected == 0 => StatusCode::OK,
        None => StatusCode::BAD_REQUEST,
        Some(IngestFailure::Body(BodyError::TooLarge { .. })) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(IngestFailure::Body(_)) => StatusCode::BAD_REQUEST,
        Some(IngestFailure::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
        Some(IngestFailure::Wal(AppendError::Busy(_))) => StatusCode::SERVICE_UNAVAILABLE,
        Some(IngestFailure::Wal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let position = outcome.position.unwrap_or(durable);
    let mut response = if status == StatusCode::OK {
        if params.verbose {
            axum::Json(VerboseBody { accepted: outcome.accepted, position, process }).into_response()
        } else {
            json_response(StatusCode::OK, "{}".to_owned())
        }
    } else {
        let body = RejectedBody {
            invalid: &outcome.invalid,
            errors: &outcome.errors,
            accepted: outcome.accepted,
            rejected: outcome.rejected,
            error: outcome.failure.as_ref().map(|f| f.to_string()),
        };
        let text = serde_json::to_string(&body).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        json_response(status, text)
    };
    let position = crate::position::LogPosition { process, position };
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        response.headers_mut().insert(POSITION_HEADER, v);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Response> {
    let given = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = given.split(';').next().unwrap_or("").trim();
    if ACCEPTED_CONTENT_TYPES.iter().any(|t| t.eq_ignore_ascii_case(media_type)) {
        return Ok(());
    }
    let shown = if given.is_empty() { "none".to_owned() } else { format!("{given:?}") };
    Err(plain(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "unsupported Content-Type {shown}: send newline-delimited JSON as {}",
            ACCEPTED_CONTENT_TYPES.join(" or ")
        ),
    ))
}

fn content_coding(headers: &HeaderMap) -> Result<Coding, Response> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(Coding::Identity) };
    match value.to_str().map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Ok("gzip") | Ok("x-gzip") => Ok(Coding::Gzip),
        Ok("identity") | Ok("") => Ok(Coding::Identity),
        _ => Err(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {value:?}: send the body uncompressed or as gzip"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ApiKeys;
    use crate::server::app;
    use weir_pipeline::reading::SensorSet;
    use weir_pipeline::wal::AppendFuture;

    /// A log whose queue is always full, as when the disk falls behind.
    struct FullLog;

    impl ReadingLog for FullLog {
        fn append(&self, _batch: &ReadingBatch, wait: Duration) -> AppendFuture<'_> {
            Box::pin(async move {
                tokio::time::sleep(wait).await;
                Err(AppendError::Busy(wait))
            })
        }
        fn durable_position(&self) -> u64 {
            41
        }
    }

    #[tokio::test]
    async fn a_full_log_answers_503_with_retry_after_and_acknowledges_nothing() {
        let limits = IngestLimits {
            decode: DecodeLimits::default(),
            max_body_bytes: 1 << 20,
            max_request_time: Duration::from_secs(10),
            queue_timeout: Duration::from_millis(50),
        };
        let service = IngestService::new(Decoder::new(SensorSet::default()), limits, Arc::new(FullLog));
        let dir = tempfile::tempdir().unwrap();
        let (_durable_tx, durable) = tokio::sync::watch::channel(0);
        let engine = weir_pipeline::stats::StatsEngine::start(
            dir.path().to_path_buf(),
            durable,
            SensorSet::default(),
            Default::default(),
        )
        .unwrap();
        let stats = crate::node::stats::StatsService::new(
            engine,
            SensorSet::default(),
            Duration::from_secs(1),
            Arc::new(FullLog),
        );
        let location = weir_sinks::archive::ArchiveLocation::open("memory:///").unwrap();
        let progress = Arc::new(weir_sinks::archive::ArchiveProgress::default());
        let archive = weir_sinks::sql::SqlArchive::new(location, Some(progress.clone()), Default::default());
        let readiness = Arc::new(crate::node::Readiness { log_at_start: 0, archive: progress.clone() });
        let sql = crate::node::sql::SqlService::new(archive, progress, Arc::new(FullLog), Duration::from_secs(1));
        let state = AppState {
            ingest: Arc::new(service),
            stats: Arc::new(stats),
            sql: Arc::new(sql),
            keys: ApiKeys::default(),
            readiness,
            gauges: Arc::new(crate::node::EngineGauges::new(None)),
            stopping: tokio::sync::watch::channel(false).1,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });

        let started = std::time::Instant::now();
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/ingest"))
            .header("content-type", "application/stream+json")
            .body(r#"{"sensor":"speed","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#)
            .send()
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50), "the request waited for room first");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["accepted"], 0);
        assert!(v["error"].as_str().unwrap().contains("retry later"), "{v}");
    }
}
