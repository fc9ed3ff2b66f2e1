//! `/healthz` and `/readyz` on the real binary: no API key needed, ready once the statistics have replayed the log
//! and the archiver has loaded the archive.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

async fn get(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn wait_ready(s: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(&format!("{}/readyz", s.url)).await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_and_readiness_need_no_key_and_readiness_follows_replay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--api-key", "k1"]);
    assert_eq!(get(&format!("{}/healthz", s.url)).await, (200, json!({"status": "ok"})));
    assert_eq!(wait_ready(&s).await, json!({"ready": true}));
    // Other routes still want the key.
    assert_eq!(get(&format!("{}/api/v1/devices", s.url)).await.0, 401);
    let lines: Vec<String> = (0..20_000).map(|n| reading("speed", n, Some("d"))).collect();
    let r = client()
        .post(format!("{}/ingest", s.url))
        .basic_auth("k1", None::<&str>)
        .header("content-type", NDJSON)
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.kill9();
    // After a restart it becomes ready again, once the log has been replayed.
    let s = Server::start(&data, &["--api-key", "k1"]);
    assert_eq!(get(&format!("{}/healthz", s.url)).await.0, 200);
    assert_eq!(wait_ready(&s).await, json!({"ready": true}));
    assert!(s.stop().success());
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_what_ingest_did() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--api-key", "k1"]);
    let scrape = || async {
        let r = client().get(format!("{}/metrics", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "no key needed");
        r.text().await.unwrap()
    };
    let before = scrape().await;
    let post = |body: String| {
        client()
            .post(format!("{}/ingest", s.url))
            .basic_auth("k1", None::<&str>)
            .header("content-type", NDJSON)
            .body(body)
            .send()
    };
    let good: Vec<String> = (0..1234).map(|n| reading("speed", n, None)).collect();
    assert_eq!(post(good.join("\n")).await.unwrap().status(), 200);
    let mixed = format!("{}\nnot json\n{}", reading("fuel", 1, None), reading("fuel", 2, None));
    assert_eq!(post(mixed).await.unwrap().status(), 400);
    let after = scrape().await;
    let moved = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(moved("weir_readings_accepted_total"), 1236.0, "{after}");
    assert_eq!(moved("weir_readings_rejected_total"), 1.0);
    assert_eq!(moved("weir_ingest_requests_total{status=\"200\"}"), 1.0);
    assert_eq!(moved("weir_ingest_requests_total{status=\"400\"}"), 1.0);
    assert!(metric(&after, "weir_process_resident_memory_bytes") > 1e6);
    assert!(s.stop().success());
}
