//! The gRPC API against the real binary on loopback, with a tonic client: streamed ingest of many batches,
//! per-reading errors, auth, every query, a subscription that sees an update and a correction, the same feed as
//! Server-Sent Events over plain HTTP, and reflection listing the service.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tonic::Request;
use tonic::metadata::MetadataValue;
use weir_api::grpc::proto::weir_client::WeirClient;
use weir_api::grpc::proto::{
    LatestRequest, Reading, ReadingBatch, SeriesRequest, SqlRequest, SubscribeRequest, UpdateKind, WindowUpdate,
};

/// Start of a minute well in the past (readings of a device replaying its buffer).
const T0: u64 = 1_795_046_400; // 2026-11-19T00:00:00Z

fn reading(sensor: &str, value: f64, secs: u64, device: &str) -> Reading {
    Reading { sensor: sensor.into(), value: Some(value), timestamp: chrono_like(secs, 0), device: Some(device.into()) }
}

async fn connect(s: &Server) -> WeirClient<tonic::transport::Channel> {
    WeirClient::connect(s.grpc_url.clone().expect("gRPC listens")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_ingest_errors_queries_and_sql() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut client = connect(&server).await;

    // 40 batches of 250 readings in one stream.
    let batches: Vec<ReadingBatch> = (0..40u64)
        .map(|b| {
            let readings = (0..250u64).map(|i| reading("speed", (b * 250 + i) as f64, T0 + b * 250 + i, "truck-7"));
            ReadingBatch::new(readings, false)
        })
        .collect();
    let ack = client.ingest(futures_util::stream::iter(batches)).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.rejected_count), (10_000, 0));
    assert!(!ack.position.is_empty());

    // Per-reading errors: the good ones are stored, each bad one named by batch and index with the HTTP reason.
    let bad = ReadingBatch::new(
        [
            reading("fuel", 1.0, T0, "truck-7"),
            reading("warp", 1.0, T0, "truck-7"),
            Reading { value: None, ..reading("fuel", 0.0, T0 + 1, "truck-7") },
            Reading { timestamp: "yesterday".into(), ..reading("fuel", 1.0, T0, "truck-7") },
            reading("fuel", f64::NAN, T0 + 2, "truck-7"),
        ],
        false,
    );
    let ack = client.write(bad).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.rejected_count), (1, 4), "{ack:?}");
    let reasons: Vec<(u32, u32, &str)> = ack.rejected.iter().map(|r| (r.batch, r.index, r.reason.as_str())).collect();
    assert_eq!(reasons.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(0, 1), (0, 2), (0, 3), (0, 4)]);
    assert!(reasons[0].2.contains("unknown sensor \"warp\""), "{reasons:?}");
    assert!(reasons[1].2.contains("missing field"), "{reasons:?}");
    assert!(reasons[2].2.contains("RFC 3339"), "{reasons:?}");

    // A reading whose own encoding is broken (a sensor that is not UTF-8) is rejected alone, by index and reason;
    // the message carries it as sent (the batch keeps each reading's bytes as received).
    let good = prost::Message::encode_to_vec(&reading("fuel", 2.0, T0 + 3, "truck-7"));
    let mut raw = Vec::new();
    for r in [&good[..], &[0x0a, 0x02, 0xff, 0xfe][..], &good[..]] {
        raw.extend([0x0a, r.len() as u8]);
        raw.extend_from_slice(r);
    }
    let broken = <ReadingBatch as prost::Message>::decode(&raw[..]).unwrap();
    let ack = client.write(broken).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.rejected_count), (2, 1), "{ack:?}");
    assert_eq!(ack.rejected[0].index, 1);
    assert!(ack.rejected[0].reason.contains("not a valid weir.v1.Reading") && ack.rejected[0].reason.contains("UTF-8"));

    // Latest and Series, reading our own writes; the same answers as HTTP.
    let latest = client
        .latest(LatestRequest { device: "truck-7".into(), after: ack.position.clone() })
        .await
        .unwrap()
        .into_inner();
    let speed = latest.latest.iter().find(|v| v.sensor == "speed").unwrap();
    assert_eq!((speed.value, speed.timestamp.as_str()), (9_999.0, chrono_like(T0 + 9_999, 0).as_str()));
    let http: serde_json::Value = client_get(&server, "/api/v1/latest?device=truck-7").await;
    assert_eq!(http["latest"].as_array().unwrap().len(), latest.latest.len());
    let series = client
        .series(SeriesRequest {
            sensor: "speed".into(),
            device: "truck-7".into(),
            window: "1h".into(),
            ..SeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let http: serde_json::Value = client_get(&server, "/api/v1/series?sensor=speed&device=truck-7&window=1h").await;
    assert_eq!(series.windows.len(), http["windows"].as_array().unwrap().len());
    assert_eq!(series.windows.iter().map(|w| w.count).sum::<i64>(), 10_000);
    assert_eq!(series.windows[0].start, http["windows"][0]["start"].as_str().unwrap());
    let unknown = client.series(SeriesRequest { sensor: "warp".into(), ..SeriesRequest::default() }).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::InvalidArgument);

    // SQL as Arrow IPC.
    let sql = "SELECT sensor, count(*) AS n FROM readings GROUP BY sensor ORDER BY sensor";
    let mut stream = client.query(SqlRequest { sql: sql.into() }).await.unwrap().into_inner();
    let mut rows = Vec::new();
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(message.arrow_ipc), None).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            // `sensor` is dictionary-encoded in the archive.
            let sensors = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let sensors = arrow::array::cast::as_string_array(&sensors).clone();
            let counts = batch.column(1).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().clone();
            for i in 0..batch.num_rows() {
                rows.push((sensors.value(i).to_owned(), counts.value(i)));
            }
        }
    }
    // fuel: one from the batch with bad readings, one from the batch with a broken one (its two are the same reading).
    assert_eq!(rows, vec![("fuel".to_owned(), 2), ("speed".to_owned(), 10_000)]);
    let refused = client.query(SqlRequest { sql: "DROP TABLE readings".into() }).await;
    let Err(status) = refused else { panic!("DROP TABLE must be refused") };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("read-only"), "{status:?}");
}

async fn client_get(s: &Server, path: &str) -> serde_json::Value {
    client().get(format!("{}{path}", s.url)).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_api_keys_as_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--api-key", "k1"]);
    let mut client = connect(&server).await;
    let batch = || ReadingBatch::new([reading("speed", 1.0, T0, "default")], false);
    let none = client.write(batch()).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
    assert!(none.message().contains("no credentials"), "{none:?}");
    let mut wrong = Request::new(batch());
    wrong.metadata_mut().insert("x-api-key", MetadataValue::from_static("nope"));
    assert_eq!(client.write(wrong).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut by_header = Request::new(batch());
    by_header.metadata_mut().insert("x-api-key", MetadataValue::from_static("k1"));
    assert_eq!(client.write(by_header).await.unwrap().into_inner().accepted, 1);
    let mut basic = Request::new(LatestRequest::default());
    // base64("k1:")
    basic.metadata_mut().insert("authorization", MetadataValue::from_static("Basic azE6"));
    assert_eq!(client.latest(basic).await.unwrap().into_inner().device, "default");
    let mut bad_basic = Request::new(LatestRequest::default());
    bad_basic.metadata_mut().insert("authorization", MetadataValue::from_static("Basic eDo="));
    assert_eq!(client.latest(bad_basic).await.unwrap_err().message(), "invalid api key");
}

/// Reads updates until `want` holds for one, within 20 s.
async fn next_matching(
    stream: &mut tonic::Streaming<WindowUpdate>,
    want: impl Fn(&WindowUpdate) -> bool,
) -> WindowUpdate {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let update = tokio::time::timeout_at(deadline, stream.next()).await.expect("an update in time");
        let update = update.expect("the stream goes on").unwrap();
        if want(&update) {
            return update;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_starts_from_the_state_then_sees_updates_and_corrections() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut grpc = connect(&server).await;
    let write = |readings: Vec<Reading>| ReadingBatch::new(readings, false);
    let ack = grpc
        .write(write(vec![reading("speed", 10.0, T0 + 5, "van-1"), reading("speed", 20.0, T0 + 65, "van-1")]))
        .await
        .unwrap()
        .into_inner();
    grpc.latest(LatestRequest { device: "van-1".into(), after: ack.position }).await.unwrap();

    let request =
        SubscribeRequest { device: "van-1".into(), sensor: "speed".into(), window: "1m".into(), ..Default::default() };
    let mut feed = grpc.subscribe(request).await.unwrap().into_inner();
    let mut snapshot = Vec::new();
    loop {
        let u = feed.next().await.unwrap().unwrap();
        if u.kind == UpdateKind::Ready as i32 {
            break;
        }
        assert_eq!(u.kind, UpdateKind::Snapshot as i32);
        snapshot.push(u);
    }
    assert_eq!(snapshot.len(), 2, "two 1-minute windows: {snapshot:?}");
    assert!(snapshot.iter().all(|u| u.device == "van-1" && u.sensor == "speed" && u.window == "1m"));

    // A reading in a new minute: an update of a new window.
    grpc.write(write(vec![reading("speed", 30.0, T0 + 125, "van-1")])).await.unwrap();
    let update =
        next_matching(&mut feed, |u| u.stats.as_ref().is_some_and(|s| s.start == chrono_like(T0 + 120, 0))).await;
    assert_eq!(update.kind, UpdateKind::Update as i32);
    assert!(!update.replaces);
    assert_eq!(update.stats.as_ref().unwrap().mean, 30.0);

    // A late reading for the first minute: a correction that replaces the value sent in the snapshot.
    grpc.write(write(vec![reading("speed", 50.0, T0 + 30, "van-1")])).await.unwrap();
    let correction =
        next_matching(&mut feed, |u| u.stats.as_ref().is_some_and(|s| s.start == chrono_like(T0, 0))).await;
    assert_eq!(correction.kind, UpdateKind::Correction as i32);
    assert!(correction.replaces);
    let stats = correction.stats.unwrap();
    assert_eq!((stats.count, stats.mean), (2, 30.0));

    // Another device's readings do not reach this subscription; the same feed over HTTP as Server-Sent Events.
    let sse = client()
        .get(format!("{}/api/v1/subscribe?device=van-1&sensor=speed&window=1m", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(sse.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = sse.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("event: ready") {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await.expect("SSE in time").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(text.matches("event: snapshot").count(), 3, "{text}");
    grpc.write(write(vec![reading("speed", 40.0, T0 + 185, "van-1"), reading("speed", 1.0, T0 + 185, "other")]))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("event: update") {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await.expect("SSE update in time").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let update = text.split("event: update").nth(1).unwrap();
    let data = update.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (data["device"].as_str(), data["start"].as_str()),
        (Some("van-1"), Some(chrono_like(T0 + 180, 0).as_str()))
    );
    assert_eq!(data["replaces"], false);
}

/// Issue 16, 7: with several workers the live feed missed updates (10 devices, one reading each: 10 updates with
/// 1 worker, 4 with 2, 0 with 3).
#[tokio::test(flavor = "multi_thread")]
async fn the_live_feed_sees_every_update_with_three_workers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--workers", "3"]);
    let mut grpc = connect(&server).await;
    let request = SubscribeRequest { sensor: "speed".into(), window: "1m".into(), ..Default::default() };
    let mut feed = grpc.subscribe(request).await.unwrap().into_inner();
    next_matching(&mut feed, |u| u.kind == UpdateKind::Ready as i32).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readings = (0..10).map(|d| reading("speed", f64::from(d), T0 + 5, &format!("truck-{d}")));
    grpc.write(ReadingBatch::new(readings, false)).await.unwrap();
    let mut devices = std::collections::BTreeSet::new();
    while devices.len() < 10 {
        let u = next_matching(&mut feed, |u| u.kind == UpdateKind::Update as i32).await;
        devices.insert(u.device);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_list_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let url = server.grpc_url.clone().unwrap();
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = tonic_health::pb::HealthCheckRequest { service: "weir.v1.Weir".into() };
    assert_eq!(health.check(check).await.unwrap().into_inner().status, 1, "SERVING");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers =
        reflection.server_reflection_info(futures_util::stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"weir.v1.Weir".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
}
