//! Idempotency keys against the real binary (issue 22): on every ingest endpoint a retry gets the first answer byte
//! for byte and the log grows by nothing; another request under a used key is 422, one under a key in flight 409;
//! keys survive `kill -9`, restarts and the deletion of the WAL segments that held them; they are forgotten after
//! the window.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;
use weir_api::grpc::proto::weir_client::WeirClient;
use weir_api::grpc::proto::{Reading, ReadingBatch};
use weir_api::ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};

/// `weir wal keys`: (position, key, readings) of every record written under a key.
fn wal_keys(data_dir: &Path) -> Vec<(u64, String, u64)> {
    let out = Command::new(BIN).args(["wal", "keys", "--data-dir"]).arg(data_dir).output().unwrap();
    assert!(out.status.success(), "wal keys failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["position"].as_u64().unwrap(), v["key"].as_str().unwrap().to_owned(), v["readings"].as_u64().unwrap())
        })
        .collect()
}

/// What a client sees of an answer: status, the headers that matter, the body's bytes.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    position: Option<String>,
    replayed: bool,
    body: Vec<u8>,
}

async fn post(s: &Server, path: &str, key: Option<&str>, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let mut request = client().post(format!("{}{path}", s.url)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.unwrap();
    let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (position, replayed) = (header("weir-position"), header("idempotent-replayed").as_deref() == Some("true"));
    Answer { status: r.status().as_u16(), position, replayed, body: r.bytes().await.unwrap().to_vec() }
}

/// Sends the same request twice: the second answer is the first, marked as replayed.
async fn twice(s: &Server, path: &str, key: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let first = post(s, path, Some(key), headers, body.to_vec()).await;
    assert!(!first.replayed, "{path}: {first:?}");
    let again = post(s, path, Some(key), headers, body.to_vec()).await;
    assert!(again.replayed, "{path}: {again:?}");
    assert_eq!(Answer { replayed: false, ..again }, first, "{path}: the retry's answer differs");
    first
}

fn ndjson_body(from: u64, n: u64, bad: bool) -> Vec<u8> {
    let mut lines: Vec<String> = (from..from + n).map(|i| reading("speed", i, Some("truck-1"))).collect();
    if bad {
        lines.insert(1, r#"{"sensor":"warp","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#.into());
        lines.insert(2, "not json".into());
    }
    lines.join("\n").into_bytes()
}

const NDJSON_HEADERS: &[(&str, &str)] = &[("content-type", NDJSON)];

#[tokio::test]
async fn every_endpoint_answers_a_retry_with_its_first_answer_and_stores_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--keep-archived-wal", "--sensors=speed,fuel"]);
    // NDJSON: accepted, with rejected lines (400), verbose and atomic.
    let a = twice(&s, "/ingest", "ndjson-1", NDJSON_HEADERS, &ndjson_body(0, 50, false)).await;
    assert_eq!((a.status, a.body.as_slice()), (200, b"{}".as_slice()));
    let a = twice(&s, "/ingest", "ndjson-2", NDJSON_HEADERS, &ndjson_body(100, 10, true)).await;
    assert_eq!(a.status, 400);
    let report: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!((report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(10), Some(2)), "{report}");
    assert!(report["invalid"][0].to_string().contains("warp"), "{report}");
    let a = twice(&s, "/ingest?verbose=true", "ndjson-3", NDJSON_HEADERS, &ndjson_body(200, 5, false)).await;
    let verbose: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(verbose["position"].to_string(), a.position.clone().unwrap(), "{verbose}");
    let a = twice(&s, "/ingest?atomic=true", "ndjson-4", NDJSON_HEADERS, &ndjson_body(300, 5, true)).await;
    assert_eq!(a.status, 400);
    // Line protocol (v1, v2, v3), with a rejected line quoted back.
    let lp = b"truck,device=truck-2 speed=1.5 1795000000000000000\ntruck,device=truck-2 fuel=2 1795000000000000000\nbroken line\n";
    let a = twice(&s, "/api/v2/write?precision=ns", "lp-1", &[], lp).await;
    assert_eq!(a.status, 400);
    assert!(String::from_utf8_lossy(&a.body).contains("broken line"), "{a:?}");
    let a = twice(&s, "/write", "lp-2", &[], &lp[..lp.len() - 12]).await;
    assert_eq!(a.status, 204);
    twice(&s, "/api/v3/write_lp?precision=second", "lp-3", &[], b"truck,device=truck-3 speed=3 1795000000\n").await;
    // Prometheus remote write.
    let series = TimeSeries {
        labels: vec![
            Label { name: "__name__".into(), value: "speed".into() },
            Label { name: "instance".into(), value: "truck-4".into() },
        ],
        samples: vec![Sample { value: 4.5, timestamp: 1_795_000_000_000 }],
        histograms: Vec::new(),
    };
    let rw = snap::raw::Encoder::new()
        .compress_vec(&prost::Message::encode_to_vec(&WriteRequest { timeseries: vec![series] }))
        .unwrap();
    let headers = [("content-encoding", "snappy"), ("content-type", "application/x-protobuf")];
    assert_eq!(twice(&s, "/api/v1/prom/write", "rw-1", &headers, &rw).await.status, 204);
    // OTLP as JSON.
    let otlp = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.instance.id","value":{"stringValue":"truck-5"}}]},
        "scopeMetrics":[{"metrics":[{"name":"speed","gauge":{"dataPoints":[{"timeUnixNano":"1795000000000000000","asDouble":61.0}]}}]}]}]}"#;
    let a = twice(&s, "/v1/metrics", "otlp-1", &[("content-type", "application/json")], otlp.as_bytes()).await;
    assert_eq!(a.status, 200);
    // gRPC: Write with a batch_id, twice; the acknowledgement is the same, marked as replayed.
    let mut grpc = WeirClient::connect(s.grpc_url.clone().unwrap()).await.unwrap();
    let readings = (0..3).map(|i| Reading {
        sensor: "speed".into(),
        value: Some(f64::from(i)),
        timestamp: chrono_like(1_795_000_100 + u64::try_from(i).unwrap(), 0),
        device: Some("truck-6".into()),
    });
    let batch = ReadingBatch::new(readings, false).with_batch_id("grpc-1");
    let first = grpc.write(batch.clone()).await.unwrap().into_inner();
    let again = grpc.write(batch.clone()).await.unwrap().into_inner();
    assert_eq!((first.accepted, first.replayed_batches, again.replayed_batches), (3, 0, 1));
    assert_eq!(weir_api::grpc::proto::IngestAck { replayed_batches: 0, ..again }, first);

    // One record per key, whatever the retries; the log holds each reading once.
    let keys = wal_keys(dir.path());
    let mut names: Vec<&str> = keys.iter().map(|(_, k, _)| k.as_str()).collect();
    names.sort();
    let expected = ["grpc-1", "lp-1", "lp-2", "lp-3", "ndjson-1", "ndjson-2", "ndjson-3", "ndjson-4", "otlp-1", "rw-1"];
    assert_eq!(names, expected);
    let readings: u64 = keys.iter().map(|(_, _, n)| n).sum();
    // ndjson-1..3 (ndjson-4 was atomic with bad lines: none), lp-1..3, rw-1, otlp-1, grpc-1.
    assert_eq!(readings, 50 + 10 + 5 + 2 + 2 + 1 + 1 + 1 + 3);
    assert_eq!(wal_dump(dir.path()).len() as u64, readings, "no reading was written twice");
    let text = client().get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("weir_idempotent_replays_total 10"), "{text}");
}

#[tokio::test]
async fn a_used_key_with_another_request_is_422_a_key_in_flight_is_409_and_a_bad_key_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--keep-archived-wal"]);
    let first = post(&s, "/ingest", Some("k"), NDJSON_HEADERS, ndjson_body(0, 3, false)).await;
    assert_eq!(first.status, 200);
    for (path, body) in [("/ingest", ndjson_body(0, 4, false)), ("/ingest?atomic=true", ndjson_body(0, 3, false))] {
        let other = post(&s, path, Some("k"), NDJSON_HEADERS, body).await;
        assert_eq!(other.status, 422, "{other:?}");
        let text = String::from_utf8_lossy(&other.body);
        assert!(text.contains("idempotency key k was used for a different request"), "{text}");
    }
    // A request still reading its body holds its key: a second one is refused at once.
    let slow = client()
        .post(format!("{}/ingest", s.url))
        .header("content-type", NDJSON)
        .header("idempotency-key", "slow")
        .body(reqwest::Body::wrap_stream(futures_util::stream::unfold(0, |n| async move {
            match n {
                0 => Some((Ok::<_, std::io::Error>(reading("speed", 7, Some("truck-1")) + "\n"), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Some((Ok(reading("speed", 8, Some("truck-1"))), 2))
                }
                _ => None,
            }
        })));
    let slow = tokio::spawn(slow.send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = post(&s, "/ingest", Some("slow"), NDJSON_HEADERS, ndjson_body(7, 2, false)).await;
    assert_eq!(busy.status, 409, "{busy:?}");
    assert!(String::from_utf8_lossy(&busy.body).contains("is being processed"));
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    let done = post(&s, "/ingest", Some("slow"), NDJSON_HEADERS, ndjson_body(7, 2, false)).await;
    assert!(done.replayed && done.status == 200, "the same body, sent whole: {done:?}");
    for bad in ["", &"x".repeat(256)] {
        let refused = post(&s, "/ingest", Some(bad), NDJSON_HEADERS, ndjson_body(0, 1, false)).await;
        assert_eq!(refused.status, 400, "{refused:?}");
    }
    assert_eq!(wal_keys(dir.path()).len(), 2);
}

#[tokio::test]
async fn keys_outlive_kill_9_restarts_and_the_deletion_of_their_wal_segments_then_expire() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--wal-segment-bytes", "4KiB", "--archive-flush-rows", "1", "--archive-flush-age", "50ms"];
    let s = Server::start(dir.path(), &args);
    let mut answers = Vec::new();
    for k in 0..20u64 {
        let body = ndjson_body(k * 10, 10, k % 5 == 0);
        answers.push(post(&s, "/ingest?verbose=true", Some(&format!("key-{k}")), NDJSON_HEADERS, body).await);
    }
    // Archived segments are deleted; their keys are in the key file first.
    let wal = dir.path().join("wal");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while weir_pipeline::wal::first_position(&wal).unwrap() < 10 {
        assert!(std::time::Instant::now() < deadline, "the WAL was never trimmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dir.path().join("idempotency-keys").exists());
    s.kill9();
    let s = Server::start(dir.path(), &args);
    for k in 0..20u64 {
        let body = ndjson_body(k * 10, 10, k % 5 == 0);
        let again = post(&s, "/ingest?verbose=true", Some(&format!("key-{k}")), NDJSON_HEADERS, body).await;
        assert!(again.replayed, "key-{k}: {again:?}");
        assert_eq!(Answer { replayed: false, ..again }, answers[k as usize], "key-{k}");
    }
    let count = sql_json(&s, "SELECT count(*) AS n FROM readings").await;
    assert_eq!(count[0]["n"], 200);
    s.stop();
    // With a window of a second, a key is forgotten: the same request is stored again.
    let s = Server::start(dir.path(), &[&args[..], &["--idempotency-window", "1s"]].concat());
    let body = ndjson_body(1000, 1, false);
    assert!(!post(&s, "/ingest", Some("short"), NDJSON_HEADERS, body.clone()).await.replayed);
    assert!(post(&s, "/ingest", Some("short"), NDJSON_HEADERS, body.clone()).await.replayed);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = post(&s, "/ingest", Some("short"), NDJSON_HEADERS, body).await;
    assert!(!later.replayed && later.status == 200, "{later:?}");
}

/// A key's answer is given again only to the API key that stored it: the same idempotency key and body sent with
/// another API key is another request (422), so no key learns another's answer (its rejected lines).
#[tokio::test]
async fn an_answer_is_replayed_only_to_the_api_key_that_stored_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--api-key", "tenant-a", "--api-key", "tenant-b"]);
    let as_key = |key: &'static str| [("content-type", NDJSON), ("authorization", key)];
    let body = ndjson_body(0, 3, true);
    let first = twice(&s, "/ingest", "shared-key", &as_key("Bearer tenant-a"), &body).await;
    assert_eq!(first.status, 400, "a body with rejected lines: {first:?}");
    let other = post(&s, "/ingest", Some("shared-key"), &as_key("Bearer tenant-b"), body.clone()).await;
    assert_eq!(other.status, 422, "{other:?}");
    assert!(!other.replayed && !String::from_utf8_lossy(&other.body).contains("warp"), "{other:?}");
    let again = post(&s, "/ingest", Some("shared-key"), &as_key("Bearer tenant-a"), body).await;
    assert!(again.replayed && again.status == first.status, "{again:?}");
}
