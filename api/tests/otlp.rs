//! OTLP/HTTP metrics (`POST /v1/metrics`) against the real binary: gauges and sums stored with their device and
//! time, protobuf and JSON, gzip, histograms rejected in the partial success, limits, undecodable bodies.

mod support;

use std::io::Write;

use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use support::*;

const T: u64 = 1_700_000_000_123_456_789;

fn point(value: number_data_point::Value, time: u64) -> NumberDataPoint {
    NumberDataPoint { time_unix_nano: time, value: Some(value), ..Default::default() }
}

fn resource(instance: Option<&str>, metrics: Vec<Metric>) -> ResourceMetrics {
    let attributes = instance
        .map(|i| KeyValue {
            key: "service.instance.id".into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(i.into())) }),
            ..Default::default()
        })
        .into_iter()
        .collect();
    ResourceMetrics {
        resource: Some(Resource { attributes, ..Default::default() }),
        scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
        ..Default::default()
    }
}

fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric { name: name.into(), data: Some(metric::Data::Gauge(Gauge { data_points: points })), ..Default::default() }
}

async fn post(s: &Server, content_type: &str, body: Vec<u8>, gzip: bool) -> (u16, Vec<u8>) {
    let mut request = client().post(format!("{}/v1/metrics", s.url)).header("content-type", content_type);
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&body).unwrap();
        request = request.header("content-encoding", "gzip").body(gz.finish().unwrap());
    } else {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn stored(s: Server, dir: &std::path::Path) -> Vec<(String, String, f64, String)> {
    s.stop();
    wal_dump(dir).into_iter().map(|d| (d.device, d.sensor, d.value, d.timestamp)).collect()
}

#[tokio::test]
async fn gauges_and_sums_are_stored_and_histograms_are_rejected_in_the_partial_success() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--sensors=vehicle_speed,fuel"]);
    let sum = Metric {
        name: "fuel".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![point(number_data_point::Value::AsInt(40), T)],
            ..Default::default()
        })),
        ..Default::default()
    };
    let histogram = Metric {
        name: "latency".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint { time_unix_nano: T, count: 1, ..Default::default() }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![
            resource(
                Some("truck-1"),
                vec![gauge("vehicle.speed", vec![point(number_data_point::Value::AsDouble(55.5), T)]), sum],
            ),
            resource(None, vec![histogram]),
        ],
    };
    let (status, body) = post(&s, "application/x-protobuf", prost::Message::encode_to_vec(&request), true).await;
    assert_eq!(status, 200);
    let answer: ExportMetricsServiceResponse = prost::Message::decode(body.as_slice()).unwrap();
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(partial.error_message.contains("\"latency\" is a histogram"), "{}", partial.error_message);
    // The same data as OTLP JSON (times as strings, as the JSON encoding writes them).
    let json = format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"service.instance.id","value":{{"stringValue":"truck-2"}}}}]}},
        "scopeMetrics":[{{"metrics":[{{"name":"vehicle.speed","gauge":{{"dataPoints":[{{"timeUnixNano":"{T}","asDouble":61.0}}]}}}}]}}]}}]}}"#
    );
    let (status, body) = post(&s, "application/json", json.into_bytes(), false).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(answer.get("partialSuccess").is_none_or(|p| p.is_null()), "{answer}");
    let t = "2023-11-14T22:13:20.123456Z".to_string();
    assert_eq!(
        stored(s, dir.path()),
        vec![
            ("truck-1".into(), "vehicle_speed".into(), 55.5, t.clone()),
            ("truck-1".into(), "fuel".into(), 40.0, t.clone()),
            ("truck-2".into(), "vehicle_speed".into(), 61.0, t),
        ]
    );
}

#[tokio::test]
async fn undecodable_oversized_and_mistyped_bodies_get_a_status_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--sensors=speed", "--max-message-bytes=64KiB"]);
    let (status, body) = post(&s, "application/x-protobuf", vec![0xff; 64], false).await;
    assert_eq!(status, 400);
    let rpc: serde_json::Value = serde_json::to_value(String::from_utf8_lossy(&body)).unwrap();
    assert!(rpc.as_str().unwrap().contains("not an OTLP"), "{rpc}");
    let (status, _) = post(&s, "application/json", b"{\"resourceMetrics\": 5}".to_vec(), false).await;
    assert_eq!(status, 400);
    let (status, _) = post(&s, "text/plain", b"speed 1".to_vec(), false).await;
    assert_eq!(status, 415);
    // A gzip bomb: 16 MiB of zeros in a few KiB, beyond the limit once gunzipped.
    let (status, body) = post(&s, "application/x-protobuf", vec![0u8; 16 << 20], true).await;
    assert_eq!(status, 413);
    assert!(String::from_utf8_lossy(&body).contains("--max-message-bytes"));
    assert!(stored(s, dir.path()).is_empty());
}
