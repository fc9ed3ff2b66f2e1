//! Prometheus remote write 1.0 at `POST /api/v1/prom/write`: a Prometheus server (or an agent speaking its
//! protocol: Grafana Alloy, vmagent, the OpenTelemetry collector) sends what it scrapes to Weir.
//!
//! The body is a snappy-compressed (block format) protobuf `WriteRequest`. Each sample is one reading: sensor = the
//! metric name (`__name__`), device = the value of `--remote-write-device-label` (default `instance`; a series
//! without it is the default device's), value and timestamp (milliseconds) as sent. Other labels are not stored: a
//! Weir series is (device, sensor). Stale markers (the NaN Prometheus writes when a series disappears) are skipped;
//! native histograms are rejected with a reason. Readings go through `POST /ingest`'s path (validation, the WAL,
//! fsync before the answer, deduplication, statistics, archive).
//!
//! A remote write message is decoded whole (protobuf and snappy blocks cannot be streamed), so its size is bounded
//! twice before any decompression: the compressed body by `--max-message-bytes`, and the length the snappy header
//! declares by the same limit (a small body that claims a huge expansion — a snappy bomb — is refused at once).
//!
//! Answers, as the protocol expects: 204 when every sample is stored; 400 when some were rejected (the valid ones
//! are stored; Prometheus drops a batch answered 4xx instead of retrying it, and logs the message, which names the
//! first rejected samples); 413 beyond the limit; 503 with `Retry-After` when Weir cannot store now (Prometheus
//! retries 5xx). Send only the sensors Weir is configured for with Prometheus's `write_relabel_configs`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use weir_pipeline::decode::{ReadingFields, Timestamp};

use super::body::{BodySource, Coding};
use super::{finish, keyed_request, read_message};
use crate::node::ingest::IngestOutcome;
use crate::server::AppState;
use crate::stats::status_of;

/// The value Prometheus writes to mark a series stale: a NaN with this exact bit pattern.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// `prometheus.WriteRequest` (remote write 1.0); metadata (field 3) is skipped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`; exemplars (3) are skipped, native histograms (4) counted to be rejected.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A native histogram: only its timestamp is read, to say which one was rejected.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// Why a remote write body could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("the body is larger than {limit} bytes (--max-message-bytes)")]
    TooLarge { limit: u64 },
    #[error("the body says it decompresses to {declared} bytes, more than {limit} (--max-message-bytes)")]
    ExpandsTooMuch { declared: usize, limit: u64 },
    #[error("the body is not snappy block-compressed ({0}): send it as remote write 1.0 does")]
    Snappy(snap::Error),
    #[error("the body is not a remote write 1.0 WriteRequest ({0})")]
    Protobuf(prost::DecodeError),
}

impl MessageError {
    fn status(&self) -> StatusCode {
        match self {
            MessageError::TooLarge { .. } | MessageError::ExpandsTooMuch { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            MessageError::Snappy(_) | MessageError::Protobuf(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Decodes a snappy-compressed `WriteRequest`, refusing what would take more than `limit` bytes.
pub fn decode_message(compressed: &[u8], limit: u64) -> Result<WriteRequest, MessageError> {
    if compressed.len() as u64 > limit {
        return Err(MessageError::TooLarge { limit });
    }
    let declared = snap::raw::decompress_len(compressed).map_err(MessageError::Snappy)?;
    if declared as u64 > limit {
        return Err(MessageError::ExpandsTooMuch { declared, limit });
    }
    let bytes = snap::raw::Decoder::new().decompress_vec(compressed).map_err(MessageError::Snappy)?;
    prost::Message::decode(bytes.as_slice()).map_err(MessageError::Protobuf)
}

/// The readings of `request`, one per sample, in order, with stale markers left out; a native histogram is an
/// `Err` naming its series.
pub fn readings<'r>(
    request: &'r WriteRequest,
    device_label: &'r str,
) -> impl Iterator<Item = Result<ReadingFields<'r>, String>> + Send + 'r {
    request.timeseries.iter().flat_map(move |series| {
        let label = |name: &str| series.labels.iter().find(|l| l.name == name).map(|l| l.value.as_str());
        let sensor = label("__name__");
        let device = label(device_label).filter(|d| !d.is_empty());
        let samples = series.samples.iter().filter(|s| s.value.to_bits() != STALE_NAN_BITS).map(move |s| {
            Ok(ReadingFields {
                sensor,
                value: Some(s.value),
                timestamp: Some(Timestamp::Micros(s.timestamp.saturating_mul(1_000))),
                device,
            })
        });
        let histograms = series.histograms.iter().map(move |h| {
            Err(format!(
                "series {:?} at {} ms is a native histogram: Weir stores float samples",
                sensor.unwrap_or(""),
                h.timestamp
            ))
        });
        samples.chain(histograms)
    })
}

/// `POST /api/v1/prom/write`.
pub async fn write(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    body: Body,
) -> Response {
    let for_key = super::service_for(&state, &principal, uri.path());
    let service = &*for_key;
    let mut keyed = match keyed_request(&headers, &uri, &principal) {
        Ok(keyed) => keyed,
        Err(e) => {
            let refused = IngestOutcome::failed(e);
            return finish(service, &refused, respond(&refused, 0));
        }
    };
    let limit = service.message_limit();
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("snappy");
    if !encoding.eq_ignore_ascii_case("snappy") {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {encoding:?}: remote write bodies are snappy-compressed"),
        );
    }
    // The compressed body, read within the request time and the message limit.
    let mut source = BodySource::new(body, Coding::Identity, limit);
    let compressed = match read_message(service, &mut source).await {
        Ok(bytes) => bytes,
        Err((status, message)) => return plain(status, message),
    };
    if let Some(k) = keyed.as_mut() {
        k.request.update(&compressed);
    }
    let request = match decode_message(&compressed, limit) {
        Ok(request) => request,
        Err(e) => return plain(e.status(), e.to_string()),
    };
    drop(compressed);
    let samples: usize = request.timeseries.iter().map(|s| s.samples.len() + s.histograms.len()).sum();
    let outcome =
        service.ingest_readings(readings(&request, service.device_label()), source.bytes_read(), false, keyed).await;
    tracing::Span::current().record("readings", outcome.accepted);
    finish(service, &outcome, respond(&outcome, samples))
}

fn respond(outcome: &IngestOutcome, samples: usize) -> Response {
    if let Some(failure) = &outcome.failure {
        return plain(status_of(failure.kind), format!("{} ({} samples stored)", failure.message, outcome.accepted));
    }
    if outcome.rejected == 0 {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut message = format!("{} of {samples} samples rejected, {} stored; ", outcome.rejected, outcome.accepted);
    for (i, e) in outcome.errors.iter().take(5).enumerate() {
        if i > 0 {
            message.push_str("; ");
        }
        message.push_str(&format!("sample {}: {}", e.line, e.error));
    }
    if outcome.errors.len() > 5 {
        message.push_str("; …");
    }
    plain(StatusCode::BAD_REQUEST, message)
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, instance: Option<&str>, samples: &[(f64, i64)]) -> TimeSeries {
        let mut labels = vec![Label { name: "__name__".into(), value: name.into() }];
        if let Some(i) = instance {
            labels.push(Label { name: "instance".into(), value: i.into() });
        }
        labels.push(Label { name: "job".into(), value: "j".into() });
        TimeSeries {
            labels,
            samples: samples.iter().map(|&(value, timestamp)| Sample { value, timestamp }).collect(),
            histograms: Vec::new(),
        }
    }

    fn compress(request: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(&prost::Message::encode_to_vec(request)).unwrap()
    }

    #[test]
    fn samples_become_readings_and_stale_markers_are_skipped() {
        let mut with_histogram = series("speed", None, &[]);
        with_histogram.histograms.push(Histogram { timestamp: 5 });
        let request = WriteRequest {
            timeseries: vec![
                series("speed", Some("truck-1:9100"), &[(1.5, 1_700_000_000_000), (f64::from_bits(STALE_NAN_BITS), 2)]),
                series("fuel", None, &[(-3.0, 1)]),
                with_histogram,
            ],
        };
        let decoded = decode_message(&compress(&request), 1 << 20).unwrap();
        let out: Vec<_> = readings(&decoded, "instance").collect();
        assert_eq!(out.len(), 3);
        let first = out[0].as_ref().unwrap();
        assert_eq!(
            (first.sensor, first.device, first.value, first.timestamp),
            (Some("speed"), Some("truck-1:9100"), Some(1.5), Some(Timestamp::Micros(1_700_000_000_000_000)))
        );
        assert_eq!(out[1].as_ref().unwrap().device, None);
        assert!(out[2].as_ref().unwrap_err().contains("native histogram"));
    }

    #[test]
    fn a_body_is_refused_before_decompression_when_it_would_exceed_the_limit() {
        let request = WriteRequest { timeseries: (0..2000).map(|i| series("speed", None, &[(1.0, i)])).collect() };
        let body = compress(&request);
        assert!(matches!(decode_message(&body, body.len() as u64 - 1), Err(MessageError::TooLarge { .. })));
        // A snappy bomb: a few bytes that declare a 1 GiB expansion.
        let mut bomb = Vec::new();
        let mut n: u64 = 1 << 30;
        while n >= 0x80 {
            bomb.push((n as u8) | 0x80);
            n >>= 7;
        }
        bomb.push(n as u8);
        bomb.extend_from_slice(&[0u8; 8]);
        assert!(matches!(decode_message(&bomb, 1 << 20), Err(MessageError::ExpandsTooMuch { .. })));
        assert!(matches!(decode_message(b"\x05not snappy", 1 << 20), Err(MessageError::Snappy(_))));
        let not_protobuf = snap::raw::Encoder::new().compress_vec(&[0xff; 16]).unwrap();
        assert!(matches!(decode_message(&not_protobuf, 1 << 20), Err(MessageError::Protobuf(_))));
    }
}
