//! `POST /ingest`: the HTTP adapter over [`IngestService`](crate::node::ingest::IngestService). It checks the
//! headers, hands the body to the service as a [`ChunkSource`](crate::node::ingest::ChunkSource) (decompressed and
//! limited, [`body::BodySource`]), and shapes the answer the replaced system's clients expect; a
//! [`ServiceError`](crate::node::error::ServiceError) becomes a status here, at the edge.

pub mod body;
pub mod line_protocol;
pub mod otlp;
pub mod remote_write;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use weir_pipeline::ingest::LineReport;

use crate::node::error::{ErrorKind, ServiceError};
use crate::node::idempotent::KeyedRequest;
use crate::node::ingest::IngestOutcome;
use crate::server::AppState;
use crate::stats::status_of;
use body::{BodyError, BodySource, Coding};

/// The response header that carries the WAL position of an acknowledged request.
pub const POSITION_HEADER: &str = "weir-position";

/// The request header that carries an idempotency key (the IETF HTTPAPI draft's name).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The response header set on the answer of an earlier request given again to a retry under its key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// After an early 413/408, at most this much of the rest of the body is read away (and for at most
/// [`DRAIN_TIME`]), so that a client still sending reads the answer instead of a reset connection.
const DRAIN_BYTES: u64 = 16 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Content types `POST /ingest` accepts.
pub const ACCEPTED_CONTENT_TYPES: [&str; 2] = ["application/stream+json", "application/x-ndjson"];

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
    /// Whether rejected lines went undescribed (--max-reported-errors, --max-report-bytes); all are counted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
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
    uri: Uri,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    body: Body,
) -> Response {
    let for_key = service_for(&state, &principal, uri.path());
    let service = &*for_key;
    if let Err(response) = check_content_type(&headers) {
        return response;
    }
    let keyed = match keyed_request(&headers, &uri, &principal) {
        Ok(keyed) => keyed,
        Err(e) => return respond(IngestOutcome::failed(e), params, service.durable_position(), service.process()),
    };
    let mut source = match body_source(service, &headers, body).await {
        Ok(source) => source,
        Err(response) => return response,
    };
    let outcome = service.ingest(&mut source, params.atomic, keyed).await;
    drain_after_failure(&outcome, &mut source).await;
    tracing::Span::current().record("readings", outcome.accepted);
    let response = respond(outcome, params, service.durable_position(), service.process());
    metrics::counter!("weir_ingest_requests_total", "status" => response.status().as_u16().to_string()).increment(1);
    response
}

/// The request's idempotency key, if it sent one, for a request to `uri` (its path and query string are part of
/// what makes a retry the same request); `Err` refuses a key that is not one.
pub(crate) fn keyed_request(
    headers: &HeaderMap,
    uri: &Uri,
    principal: &Option<axum::Extension<crate::auth::Principal>>,
) -> Result<Option<KeyedRequest>, ServiceError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let text = value.to_str().map_err(|_| {
        ServiceError::invalid("the Idempotency-Key header holds bytes other than visible ASCII: send e.g. a UUID")
    })?;
    let owner = principal.as_ref().map(|p| &*p.name);
    KeyedRequest::parse(text, uri.path(), uri.query().unwrap_or(""), owner)
        .map(Some)
        .map_err(|e| ServiceError::invalid(e.to_string()))
}

/// The ingest service for one request to `route` under the request's key ([`IngestService::for_request`]).
pub(crate) fn service_for<'s>(
    state: &'s AppState,
    principal: &Option<axum::Extension<crate::auth::Principal>>,
    route: &str,
) -> std::borrow::Cow<'s, crate::node::ingest::IngestService> {
    state.ingest.for_request(principal.as_ref().map(|p| &p.0), route)
}

/// Marks the answer of an earlier request given again (`Idempotent-Replayed: true`).
fn mark_replayed(outcome: &IngestOutcome, response: &mut Response) {
    if outcome.replayed {
        response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
}

/// The request body as the ingest service reads it: decompressed as `Content-Encoding` says and limited to
/// `--max-body-bytes`; a body whose declared length is over the limit is refused at once (413).
pub(crate) async fn body_source(
    service: &crate::node::ingest::IngestService,
    headers: &HeaderMap,
    body: Body,
) -> Result<BodySource, Response> {
    let coding = content_coding(headers)?;
    let limit = service.limits().max_body_bytes;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        // Read a small excess away so the client gets the 413 rather than a broken pipe; a large one is cut off.
        if len - limit <= DRAIN_BYTES {
            BodySource::new(body, Coding::Identity, u64::MAX).drain(DRAIN_BYTES, DRAIN_TIME).await;
        }
        return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, BodyError::TooLarge { limit }.to_string()));
    }
    Ok(BodySource::new(body, coding, limit))
}

/// After a 413 or 408 mid-body, reads a little of the rest away so the client reads the answer.
pub(crate) async fn drain_after_failure(outcome: &IngestOutcome, source: &mut BodySource) {
    if outcome.failure.as_ref().is_some_and(|f| matches!(f.kind, ErrorKind::TooLarge | ErrorKind::Timeout)) {
        source.drain(DRAIN_BYTES, DRAIN_TIME).await;
    }
}

/// A message of a protocol decoded whole (remote write, OTLP): `source` read to its end within
/// `--max-request-time`; `Err` is the status and reason to answer (413 beyond `--max-message-bytes`, as the source
/// counts, after any gzip).
pub(crate) async fn read_message(
    service: &crate::node::ingest::IngestService,
    source: &mut BodySource,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let deadline = tokio::time::Instant::now() + service.limits().max_request_time;
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, source.next_chunk()).await {
            Err(_) => {
                return Err((StatusCode::REQUEST_TIMEOUT, "the body took longer than --max-request-time".into()));
            }
            Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
            Ok(Ok(None)) => return Ok(bytes),
            Ok(Err(BodyError::TooLarge { .. })) => {
                let limit = service.message_limit();
                let message = format!("the body is larger than {limit} bytes (--max-message-bytes)");
                return Err((StatusCode::PAYLOAD_TOO_LARGE, message));
            }
            Ok(Err(e)) => return Err((StatusCode::BAD_REQUEST, e.to_string())),
        }
    }
}

/// What every answer of the other protocols' endpoints carries, added to `response`: `Weir-Position`, and
/// `Retry-After` where a retry helps; the request is counted by status.
pub(crate) fn finish(
    service: &crate::node::ingest::IngestService,
    outcome: &IngestOutcome,
    mut response: Response,
) -> Response {
    let position = service.position_text(outcome.position.unwrap_or_else(|| service.durable_position()));
    if let Ok(v) = HeaderValue::from_str(&position) {
        response.headers_mut().insert(POSITION_HEADER, v);
    }
    if let Some(seconds) = outcome.failure.as_ref().and_then(ServiceError::retry_after_seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    mark_replayed(outcome, &mut response);
    metrics::counter!("weir_ingest_requests_total", "status" => response.status().as_u16().to_string()).increment(1);
    response
}

fn respond(outcome: IngestOutcome, params: IngestParams, durable: u64, process: Option<u32>) -> Response {
    let status = match &outcome.failure {
        None if outcome.rejected == 0 => StatusCode::OK,
        None => StatusCode::BAD_REQUEST,
        Some(failure) => status_of(failure.kind),
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
            truncated: outcome.truncated,
            error: outcome.failure.as_ref().map(|f| f.message.clone()),
        };
        let text = serde_json::to_string(&body).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        json_response(status, text)
    };
    let position = crate::position::LogPosition { process, position };
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        response.headers_mut().insert(POSITION_HEADER, v);
    }
    if let Some(seconds) = outcome.failure.as_ref().and_then(ServiceError::retry_after_seconds) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    mark_replayed(&outcome, &mut response);
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
    use crate::node::ingest::test_support::FullLog;
    use crate::node::ingest::{IngestLimits, IngestService};
    use crate::server::app;
    use std::sync::Arc;
    use weir_pipeline::decode::Decoder;
    use weir_pipeline::ingest::DecodeLimits;
    use weir_pipeline::reading::SensorSet;

    #[tokio::test]
    async fn a_full_log_answers_503_with_retry_after_and_acknowledges_nothing() {
        let limits = IngestLimits {
            decode: DecodeLimits::default(),
            max_body_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            max_request_time: Duration::from_secs(10),
            queue_timeout: Duration::from_millis(50),
            max_atomic_readings: 1_000_000,
        };
        let service = IngestService::new(Decoder::new(SensorSet::default()), limits, Arc::new(FullLog));
        let dir = tempfile::tempdir().unwrap();
        let (_durable_tx, durable) = tokio::sync::watch::channel(0);
        let tail = weir_pipeline::wal::LogTail {
            dir: dir.path().to_path_buf(),
            durable,
            clock: Default::default(),
            doorbell: Default::default(),
        };
        let engine = weir_pipeline::stats::StatsEngine::start(tail, SensorSet::default(), Default::default()).unwrap();
        let stats = crate::node::stats::StatsService::new(
            engine,
            SensorSet::default(),
            Duration::from_secs(1),
            Arc::new(FullLog),
        );
        let location = weir_sinks::archive::ArchiveLocation::open("memory:///").unwrap();
        let progress = Arc::new(weir_sinks::archive::ArchiveProgress::default());
        let archive = weir_sinks::sql::SqlArchive::new(location, Some(progress.clone()), Default::default()).unwrap();
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
