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
