//! OpenTelemetry metrics over OTLP/HTTP at `POST /v1/metrics`: an OpenTelemetry SDK's OTLP exporter or a
//! collector sends metrics to Weir, as protobuf (`application/x-protobuf`) or JSON (`application/json`), plain or
//! gzip.
//!
//! Mapping: every data point of a gauge or a sum is one reading. Sensor = the metric name with every character
//! other than ASCII letters, digits and `_` written as `_` (`vehicle.speed` is sensor `vehicle_speed`; sensor names
//! are letters, digits and `_`), and it must be a configured sensor. Device = the string value of the resource
//! attribute `--otlp-device-attribute` (default `service.instance.id`), else the default device. Value: the double or
//! the integer as a float; time: `time_unix_nano` truncated to microseconds (a point without one is rejected).
//! Histograms, exponential histograms and summaries are rejected, counted in the answer's partial success with a
//! message that says so. The types are the `opentelemetry-proto` crate's.
//!
//! Answers, as OTLP/HTTP specifies: 200 with an `ExportMetricsServiceResponse` in the request's encoding; when some
//! points were rejected its `partial_success` counts them and names the first ones. Errors are a `google.rpc.Status`
//! (protobuf, or JSON for JSON requests): 400 for a body that cannot be decoded, 413 beyond `--max-message-bytes`
//! (the body as sent and once gunzipped), 503 with `Retry-After` when Weir cannot store now (exporters retry).
//! Everything goes through `POST /ingest`'s path: validation, the WAL (the answer comes after fsync), deduplication,
//! statistics, archive.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use weir_pipeline::decode::{ReadingFields, Timestamp};

use super::body::{BodySource, Coding};
use super::{finish, keyed_request, read_message};
use crate::node::ingest::IngestOutcome;
use crate::server::AppState;
use crate::stats::status_of;

/// How the request (and so the answer) is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// `google.rpc.Status`, the body of OTLP/HTTP error answers.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The sensor name of a metric: characters other than ASCII letters, digits and `_` become `_`.
pub fn sensor_name(metric: &str) -> Cow<'_, str> {
    if metric.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Cow::Borrowed(metric)
    } else {
        Cow::Owned(metric.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect())
    }
}

/// The readings of `request`, one per gauge or sum data point, in order; a point of another kind, or without a
/// time or a value, is an `Err` saying why. `sensors` holds [`sensor_name`] of every metric, in order.
pub fn readings<'r>(
    request: &'r ExportMetricsServiceRequest,
    sensors: &'r [Cow<'r, str>],
    device_attribute: &'r str,
) -> impl Iterator<Item = Result<ReadingFields<'r>, String>> + Send + 'r {
    let metrics = request.resource_metrics.iter().flat_map(move |resource| {
        let device = resource.resource.as_ref().and_then(|r| {
            r.attributes.iter().find(|kv| kv.key == device_attribute).and_then(|kv| match &kv.value {
                Some(v) => match &v.value {
                    Some(any_value::Value::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
                    _ => None,
                },
                None => None,
            })
        });
        resource.scope_metrics.iter().flat_map(move |scope| scope.metrics.iter().map(move |m| (device, m)))
    });
    metrics.zip(sensors.iter()).flat_map(|((device, metric), sensor)| {
        let sensor = Some(sensor.as_ref());
        let (points, other): (&[_], Option<(&str, usize)>) = match &metric.data {
            Some(metric::Data::Gauge(g)) => (&g.data_points, None),
            Some(metric::Data::Sum(s)) => (&s.data_points, None),
            Some(metric::Data::Histogram(h)) => (&[], Some(("a histogram", h.data_points.len()))),
            Some(metric::Data::ExponentialHistogram(h)) => {
                (&[], Some(("an exponential histogram", h.data_points.len())))
            }
            Some(metric::Data::Summary(s)) => (&[], Some(("a summary", s.data_points.len()))),
            None => (&[], None),
        };
        let numbers = points.iter().map(move |p| {
            let value = match p.value {
                Some(number_data_point::Value::AsDouble(v)) => v,
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                None => return Err(format!("a data point of {:?} has no value", metric.name)),
            };
            if p.time_unix_nano == 0 {
                return Err(format!("a data point of {:?} has no time_unix_nano", metric.name));
            }
            let micros = i64::try_from(p.time_unix_nano / 1_000).unwrap_or(i64::MAX);
            Ok(ReadingFields { sensor, value: Some(value), timestamp: Some(Timestamp::Micros(micros)), device })
        });
        let rejected = other.into_iter().flat_map(move |(kind, n)| {
            (0..n).map(move |_| {
                Err(format!(
                    "metric {:?} is {kind}: Weir stores gauges and sums (one value a point); export it as a gauge",
                    metric.name
                ))
            })
        });
        numbers.chain(rejected)
    })
}

/// `POST /v1/metrics`.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    body: Body,
) -> Response {
    let for_key = super::service_for(&state, &principal, uri.path());
    let service = &*for_key;
    let limit = service.message_limit();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            let message = format!(
                "unsupported Content-Type {other:?}: send OTLP metrics as application/x-protobuf or application/json"
            );
            return status_response(Encoding::Protobuf, StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
        }
    };
    let coding = match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => Coding::Identity,
        Some("gzip") => Coding::Gzip,
        Some(other) => {
            let message = format!("unsupported Content-Encoding {other:?}: send the body plain or as gzip");
            return status_response(encoding, StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
        }
    };
    let mut keyed = match keyed_request(&headers, &uri, &principal) {
        Ok(keyed) => keyed,
        Err(e) => {
            let refused = IngestOutcome::failed(e);
            return finish(service, &refused, respond(&refused, encoding));
        }
    };
    // The whole message (OTLP is decoded whole), bounded once gunzipped as BodySource counts.
    let mut source = BodySource::new(body, coding, limit);
    let bytes = match read_message(service, &mut source).await {
        Ok(bytes) => bytes,
        Err((status, message)) => return status_response(encoding, status, message),
    };
    if let Some(k) = keyed.as_mut() {
        k.request.update(&bytes);
    }
    let decoded = match encoding {
        Encoding::Protobuf => prost::Message::decode(bytes.as_slice()).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice::<ExportMetricsServiceRequest>(&bytes).map_err(|e| e.to_string()),
    };
    let request = match decoded {
        Ok(request) => request,
        Err(e) => {
            let message = format!("the body is not an OTLP ExportMetricsServiceRequest ({e})");
            return status_response(encoding, StatusCode::BAD_REQUEST, message);
        }
    };
    drop(bytes);
    let sensors: Vec<Cow<'_, str>> = request
        .resource_metrics
        .iter()
        .flat_map(|r| r.scope_metrics.iter().flat_map(|s| s.metrics.iter().map(|m| sensor_name(&m.name))))
        .collect();
    let outcome = service
        .ingest_readings(
            readings(&request, &sensors, service.otlp_device_attribute()),
            source.bytes_read(),
            false,
            keyed,
        )
        .await;
    tracing::Span::current().record("readings", outcome.accepted);
    finish(service, &outcome, respond(&outcome, encoding))
}

fn respond(outcome: &IngestOutcome, encoding: Encoding) -> Response {
    if let Some(failure) = &outcome.failure {
        let message = format!("{} ({} data points stored)", failure.message, outcome.accepted);
        return status_response(encoding, status_of(failure.kind), message);
    }
    let partial_success = (outcome.rejected > 0).then(|| {
        let mut message = format!("{} data points rejected, {} stored", outcome.rejected, outcome.accepted);
        for e in outcome.errors.iter().take(5) {
            message.push_str(&format!("; data point {}: {}", e.line, e.error));
        }
        ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(outcome.rejected).unwrap_or(i64::MAX),
            error_message: message,
        }
    });
    let answer = ExportMetricsServiceResponse { partial_success };
    match encoding {
        Encoding::Protobuf => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], prost::Message::encode_to_vec(&answer))
                .into_response()
        }
        Encoding::Json => {
            let text = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".to_owned());
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
    }
}

/// An error answer: a `google.rpc.Status` in the request's encoding.
fn status_response(encoding: Encoding, status: StatusCode, message: String) -> Response {
    // gRPC codes: 3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, 13 INTERNAL.
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::INSUFFICIENT_STORAGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::REQUEST_TIMEOUT => 4,
        _ => 13,
    };
    let body = RpcStatus { code, message };
    match encoding {
        Encoding::Protobuf => {
            (status, [(header::CONTENT_TYPE, "application/x-protobuf")], prost::Message::encode_to_vec(&body))
                .into_response()
        }
        Encoding::Json => {
            let text = serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned());
            (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_become_sensor_names() {
        assert_eq!(sensor_name("speed"), "speed");
        assert!(matches!(sensor_name("speed"), Cow::Borrowed(_)));
        assert_eq!(sensor_name("vehicle.speed"), "vehicle_speed");
        assert_eq!(sensor_name("système-temp"), "syst_me_temp");
    }
}
