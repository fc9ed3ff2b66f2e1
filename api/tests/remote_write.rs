//! Prometheus remote write 1.0 (`POST /api/v1/prom/write`) against the real binary: samples stored with their
//! device and timestamps, stale markers skipped, partial rejections, limits and snappy bombs, auth.

mod support;

use support::*;
use weir_api::ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};

fn series(name: &str, instance: &str, samples: &[(f64, i64)]) -> TimeSeries {
    TimeSeries {
        labels: vec![
            Label { name: "__name__".into(), value: name.into() },
            Label { name: "instance".into(), value: instance.into() },
            Label { name: "job".into(), value: "node".into() },
        ],
        samples: samples.iter().map(|&(value, timestamp)| Sample { value, timestamp }).collect(),
        histograms: Vec::new(),
    }
}

fn body(timeseries: Vec<TimeSeries>) -> Vec<u8> {
    let bytes = prost::Message::encode_to_vec(&WriteRequest { timeseries });
    snap::raw::Encoder::new().compress_vec(&bytes).unwrap()
}

async fn post(s: &Server, auth: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let mut request = client()
        .post(format!("{}/api/v1/prom/write", s.url))
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn samples_are_stored_with_their_instance_and_time_and_stale_markers_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--sensors=speed,fuel"]);
    let stale = f64::from_bits(weir_api::ingest::remote_write::STALE_NAN_BITS);
    let (status, text) = post(
        &s,
        None,
        body(vec![
            series(
                "speed",
                "truck-1:9100",
                &[(1.5, 1_700_000_000_000), (2.5, 1_700_000_000_500), (stale, 1_700_000_001_000)],
            ),
            series("fuel", "truck-2:9100", &[(40.0, 1_700_000_000_250)]),
        ]),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    // A series Weir has no sensor for: the rest is stored, the 400 says which.
    let (status, text) = post(
        &s,
        None,
        body(vec![
            series("up", "truck-1:9100", &[(1.0, 1_700_000_000_000)]),
            series("fuel", "truck-1:9100", &[(7.0, 1_700_000_000_000)]),
        ]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("1 of 2 samples rejected") && text.contains("unknown sensor \"up\""), "{text}");
    s.stop();
    let stored: Vec<_> = wal_dump(dir.path()).into_iter().map(|d| (d.device, d.sensor, d.value, d.timestamp)).collect();
    assert_eq!(
        stored,
        vec![
            ("truck-1:9100".into(), "speed".into(), 1.5, "2023-11-14T22:13:20Z".into()),
            ("truck-1:9100".into(), "speed".into(), 2.5, "2023-11-14T22:13:20.500Z".into()),
            ("truck-2:9100".into(), "fuel".into(), 40.0, "2023-11-14T22:13:20.250Z".into()),
            ("truck-1:9100".into(), "fuel".into(), 7.0, "2023-11-14T22:13:20Z".into()),
        ]
    );
}

#[tokio::test]
async fn oversized_bodies_snappy_bombs_garbage_and_wrong_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--sensors=speed", "--max-message-bytes=64KiB", "--api-key=k1"]);
    let auth = Some("Bearer k1");
    let many: Vec<_> = (0..20_000).map(|i| series("speed", &format!("d{i}"), &[(1.0, i)])).collect();
    let (status, text) = post(&s, auth, body(many)).await;
    assert_eq!(status, 413, "{text}");
    // A few bytes that declare a 1 GiB expansion.
    let mut bomb = vec![0x80, 0x80, 0x80, 0x80, 0x04];
    bomb.extend_from_slice(&[0u8; 16]);
    let (status, text) = post(&s, auth, bomb).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--max-message-bytes"), "{text}");
    let (status, text) = post(&s, auth, b"\x05garbage".to_vec()).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(post(&s, Some("Bearer k2"), body(vec![series("speed", "a", &[(1.0, 1)])])).await.0, 401);
    assert_eq!(post(&s, auth, body(vec![series("speed", "a", &[(1.0, 1)])])).await.0, 204);
    assert_eq!(client().get(format!("{}/healthz", s.url)).send().await.unwrap().status(), 200, "still serving");
}
