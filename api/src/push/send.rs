//! One batch to the server under its key, retried until it is answered: what the answer says of its lines.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;

use super::batches::{Batch, Format};

/// Where and how batches are sent.
#[derive(Clone)]
pub struct Sender {
    pub client: reqwest::Client,
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub api_key: Option<String>,
    /// Line protocol's timestamp precision (`ns`, `us`, `ms`, `s`).
    pub precision: String,
    /// How long a batch is retried before it counts as failed.
    pub retry_for: Duration,
}

/// What became of one batch.
#[derive(Debug, PartialEq)]
pub enum Sent {
    /// The server answered it (now, or earlier under the same key: `replayed`).
    Answered {
        /// Rejected lines: (line number in the batch from 1, reason), as far as the answer describes them.
        rejected: Vec<(u64, String)>,
        /// Rejected lines, all of them.
        rejected_count: u64,
        replayed: bool,
    },
    /// Not stored, and retrying will not help (the reason says why).
    Refused(String),
    /// Nothing can be stored with these settings (a wrong key, an unknown endpoint): the push stops.
    Fatal(String),
}

/// NDJSON's and line protocol's 400 answers, as far as `weir push` reads them.
#[derive(Deserialize, Default)]
struct Report {
    #[serde(default)]
    rejected: u64,
    #[serde(default)]
    errors: Vec<NdjsonError>,
    #[serde(default)]
    data: Vec<LineProtocolError>,
}

#[derive(Deserialize)]
struct NdjsonError {
    line: u64,
    error: String,
}

#[derive(Deserialize)]
struct LineProtocolError {
    line_number: u64,
    error_message: String,
}

impl Sender {
    /// Sends `batch` of a file in `format` under `key`, retrying connection failures, timeouts and answers that say
    /// to retry (408, 409, 429, 5xx) with backoff (and the server's Retry-After) for up to `retry_for`.
    pub async fn send(&self, batch: &Batch, format: Format, key: &str) -> Sent {
        let url = match format {
            Format::Ndjson => format!("{}/ingest", self.url),
            Format::LineProtocol => format!("{}/api/v2/write?precision={}", self.url, self.precision),
        };
        let content_type = match format {
            Format::Ndjson => "application/x-ndjson",
            Format::LineProtocol => "text/plain; charset=utf-8",
        };
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let mut request = self
                .client
                .post(&url)
                .header("content-type", content_type)
                .header("idempotency-key", key)
                .body(batch.body.clone());
            if let Some(api_key) = &self.api_key {
                request = request.bearer_auth(api_key);
            }
            let (why, after) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
                    let after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = match response.bytes().await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            attempt += 1;
                            if started.elapsed() >= self.retry_for {
                                return Sent::Refused(format!("the answer could not be read: {e}"));
                            }
                            tokio::time::sleep(backoff(attempt, None)).await;
                            continue;
                        }
                    };
                    match status {
                        StatusCode::OK | StatusCode::NO_CONTENT => {
                            return Sent::Answered { rejected: Vec::new(), rejected_count: 0, replayed };
                        }
                        StatusCode::BAD_REQUEST => match serde_json::from_slice::<Report>(&text) {
                            Ok(report) if report.rejected > 0 => {
                                let rejected = report
                                    .errors
                                    .into_iter()
                                    .map(|e| (e.line, e.error))
                                    .chain(report.data.into_iter().map(|e| (e.line_number, e.error_message)))
                                    .collect();
                                return Sent::Answered { rejected, rejected_count: report.rejected, replayed };
                            }
                            _ => return Sent::Refused(answer_text(status, &text)),
                        },
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                            return Sent::Fatal(answer_text(status, &text));
                        }
                        StatusCode::REQUEST_TIMEOUT
                        | StatusCode::CONFLICT
                        | StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::INTERNAL_SERVER_ERROR
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                        | StatusCode::INSUFFICIENT_STORAGE => (answer_text(status, &text), after),
                        _ => return Sent::Refused(answer_text(status, &text)),
                    }
                }
                Err(e) => (format!("{e}"), None),
            };
            attempt += 1;
            if started.elapsed() >= self.retry_for {
                return Sent::Refused(format!("still failing after {:?} (--retry-for): {why}", self.retry_for));
            }
            tokio::time::sleep(backoff(attempt, after)).await;
        }
    }
}

/// The wait before attempt `attempt` (from 1): 100 ms doubling to 10 s, with up to 50 % jitter, or the server's
/// Retry-After when it said one.
fn backoff(attempt: u32, after: Option<Duration>) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(7)).min(Duration::from_secs(10));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let jitter = base.mul_f64(f64::from(nanos % 500) / 1000.0);
    after.unwrap_or(base + jitter)
}

fn answer_text(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let cut = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
    format!("{status}: {}", &text[..cut])
}
