//! One span per HTTP request: a request id (the client's `x-request-id` when it sends a sane one, else a new one;
//! always returned in the response), the method, the matched route, the status, the readings accepted (ingest
//! records them on the span) and the duration. The same middleware counts requests and records their latency by
//! route and status for `/metrics`.
//!
//! Server errors (5xx) are logged at ERROR; client errors (4xx) and successes at INFO, so a misbehaving client never
//! looks like a broken server.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The route label of a request no route matched (so 404 probes cannot create unbounded label values).
const UNMATCHED: &str = "unmatched";

pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, |p| p.as_str()).to_owned();
    let id = client_request_id(&request).unwrap_or_else(new_request_id);
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        route = %route,
        status = tracing::field::Empty,
        readings = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    span.record("duration_ms", elapsed.as_secs_f64() * 1e3);
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::error!("request failed");
        } else {
            tracing::info!("request finished");
        }
    });
    let labels = [("route", route), ("status", status.as_u16().to_string())];
    metrics::counter!("weir_http_requests_total", &labels).increment(1);
    metrics::histogram!("weir_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// The client's request id if it is short and printable (it goes into logs and a response header).
fn client_request_id(request: &Request) -> Option<String> {
    let v = request.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let sane = !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| v.to_owned())
}

/// A process-unique id: a per-process prefix (from the start time) and a counter.
fn new_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (nanos.as_nanos() as u32) ^ std::process::id().rotate_left(16)
    });
    format!("{prefix:08x}-{:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_client_ids_are_kept_only_when_sane() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        let with = |v: &str| {
            let r = Request::builder().header(REQUEST_ID_HEADER, v).body(axum::body::Body::empty()).unwrap();
            client_request_id(&r)
        };
        assert_eq!(with("abc-123").as_deref(), Some("abc-123"));
        assert_eq!(with("has space"), None);
        assert_eq!(with(&"x".repeat(200)), None);
    }
}
