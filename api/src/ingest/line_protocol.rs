//! InfluxDB line protocol over HTTP: `POST /write` (v1), `POST /api/v2/write` (v2) and `POST /api/v3/write_lp`
//! (v3), so that an InfluxDB client or agent (Telegraf, Vector, the `influx` CLI, client libraries) can point at Weir.
//!
//! The three endpoints differ only in their query parameters; each reads the body through the same path as
//! `POST /ingest` (gzip, `--max-body-bytes`, `--max-request-time`, the WAL with group commit, deduplication,
//! statistics, archive) with the line protocol decoder ([`weir_pipeline::line_protocol`]) in place of NDJSON's,
//! and answers only once the accepted readings are fsynced:
//!
//! - `204 No Content`: every line stored.
//! - `400`: some lines rejected, the valid ones stored (InfluxDB 3's partial write; v3's `accept_partial=false`
//!   stores nothing unless every line is valid). The body is InfluxDB 3's error shape with line numbers, plus v2's
//!   `code`/`message` so that v2 clients print a useful message:
//!   `{"code":"invalid","message":"…","error":"partial write of line protocol occurred","data":[{"original_line":…,
//!   "line_number":2,"error_message":…}],"accepted":N,"rejected":M}`.
//! - `413`, `408`, `503`, `507`: as `/ingest`, in the same JSON shape, with `Retry-After` where a retry helps.
//!
//! `db`, `rp`, `org` and `bucket` are accepted and ignored: a Weir holds one database. v3's `no_sync` is ignored:
//! Weir acknowledges only what is fsynced.

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use weir_pipeline::line_protocol::{LineProtocolDecoder, Precision};

use super::{body_source, drain_after_failure, finish, keyed_request, service_for};
use crate::auth::Principal;
use crate::node::ingest::IngestOutcome;
use crate::server::AppState;
use crate::stats::status_of;

/// Query parameters of `POST /write` (InfluxDB 1.x). `u`/`p` carry credentials (see [`crate::auth`]).
#[derive(Debug, Default, Deserialize)]
pub struct V1Params {
    /// `n`/`ns`, `u`/`us`, `ms`, `s`, `m`, `h`; nanoseconds when absent.
    pub precision: Option<String>,
}

/// Query parameters of `POST /api/v2/write` (InfluxDB 2.x).
#[derive(Debug, Default, Deserialize)]
pub struct V2Params {
    /// `ns`, `us`, `ms`, `s`; nanoseconds when absent.
    pub precision: Option<String>,
}

/// Query parameters of `POST /api/v3/write_lp` (InfluxDB 3).
#[derive(Debug, Default, Deserialize)]
pub struct V3Params {
    /// `auto` (the default), `nanosecond`, `microsecond`, `millisecond`, `second` (or their short forms).
    pub precision: Option<String>,
    /// `false`: store nothing unless every line is valid.
    pub accept_partial: Option<bool>,
}

/// `POST /write`.
pub async fn write_v1(
    State(state): State<AppState>,
    Query(params): Query<V1Params>,
    headers: HeaderMap,
    uri: Uri,
    principal: Option<Extension<Principal>>,
    body: Body,
) -> Response {
    let caller = Caller { headers: &headers, uri: &uri, principal: &principal };
    write(&state, caller, body, params.precision.as_deref(), Precision::Nanosecond, false).await
}

/// `POST /api/v2/write`.
pub async fn write_v2(
    State(state): State<AppState>,
    Query(params): Query<V2Params>,
    headers: HeaderMap,
    uri: Uri,
    principal: Option<Extension<Principal>>,
    body: Body,
) -> Response {
    let caller = Caller { headers: &headers, uri: &uri, principal: &principal };
    write(&state, caller, body, params.precision.as_deref(), Precision::Nanosecond, false).await
}

/// `POST /api/v3/write_lp`.
pub async fn write_v3(
    State(state): State<AppState>,
    Query(params): Query<V3Params>,
    headers: HeaderMap,
    uri: Uri,
    principal: Option<Extension<Principal>>,
    body: Body,
) -> Response {
    let atomic = params.accept_partial == Some(false);
    let caller = Caller { headers: &headers, uri: &uri, principal: &principal };
    write(&state, caller, body, params.precision.as_deref(), Precision::Auto, atomic).await
}

/// What a write request says besides its body: headers, URI (path and query: part of an idempotent request's
/// identity) and the API key's principal.
#[derive(Clone, Copy)]
struct Caller<'a> {
    headers: &'a HeaderMap,
    uri: &'a Uri,
    principal: &'a Option<Extension<Principal>>,
}

async fn write(
    state: &AppState,
    Caller { headers, uri, principal }: Caller<'_>,
    body: Body,
    precision: Option<&str>,
    default_precision: Precision,
    atomic: bool,
) -> Response {
    let for_key = service_for(state, principal, uri.path());
    let service = &*for_key;
    let precision = match precision.map(str::parse).unwrap_or(Ok(default_precision)) {
        Ok(p) => p,
        Err(reason) => return error_response(StatusCode::BAD_REQUEST, "invalid", &reason),
    };
    let keyed = match keyed_request(headers, uri, principal) {
        Ok(keyed) => keyed,
        Err(e) => {
            let refused = IngestOutcome::failed(e);
            return finish(service, &refused, respond(&refused));
        }
    };
    let mut source = match body_source(service, headers, body).await {
        Ok(source) => source,
        Err(response) => return response,
    };
    let now_micros = chrono::Utc::now().timestamp_micros();
    let mut lines = LineProtocolDecoder::new(service.line_protocol().clone(), precision, now_micros);
    let outcome = service.ingest_line_protocol(&mut source, &mut lines, atomic, keyed).await;
    drain_after_failure(&outcome, &mut source).await;
    tracing::Span::current().record("readings", outcome.accepted);
    finish(service, &outcome, respond(&outcome))
}

/// One rejected line as InfluxDB 3 reports it.
#[derive(Serialize)]
struct LineError<'a> {
    original_line: &'a str,
    line_number: u64,
    error_message: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    /// InfluxDB 2's error code (`invalid`, `too large`, `unavailable`, …).
    code: &'a str,
    /// InfluxDB 2's message: the whole story in one line.
    message: String,
    /// InfluxDB 3's error.
    error: &'a str,
    /// InfluxDB 3's rejected lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    data: Vec<LineError<'a>>,
    accepted: u64,
    rejected: u64,
    /// Whether rejected lines went unreported (--max-reported-errors, --max-report-bytes); all are counted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

fn respond(outcome: &IngestOutcome) -> Response {
    let status = match &outcome.failure {
        None if outcome.rejected == 0 => return StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::BAD_REQUEST,
        Some(failure) => status_of(failure.kind),
    };
    let text_of = |line: u64| outcome.echoes.iter().find(|r| r.line == line).map_or("", |r| r.text.as_str());
    let data: Vec<LineError<'_>> = outcome
        .errors
        .iter()
        .map(|e| LineError { original_line: text_of(e.line), line_number: e.line, error_message: &e.error })
        .collect();
    let (code, error) = match &outcome.failure {
        Some(failure) => (code_of(status), failure.message.as_str()),
        None if outcome.accepted > 0 => ("invalid", "partial write of line protocol occurred"),
        None => ("invalid", "parsing failed for write_lp endpoint"),
    };
    let first = data.first().map(|d| format!("; line {}: {}", d.line_number, d.error_message)).unwrap_or_default();
    let message = format!("{error}: {} readings stored, {} rejected{first}", outcome.accepted, outcome.rejected);
    let body = ErrorBody {
        code,
        message,
        error,
        data,
        accepted: outcome.accepted,
        rejected: outcome.rejected,
        truncated: outcome.truncated,
    };
    let text = serde_json::to_string(&body).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message, "error": message });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// InfluxDB 2's error code for a status.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request too large",
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE => "unavailable",
        StatusCode::REQUEST_TIMEOUT => "request timeout",
        StatusCode::BAD_REQUEST => "invalid",
        _ => "internal error",
    }
}
