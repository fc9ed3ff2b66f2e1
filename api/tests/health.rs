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

/// The sum over every label set of `name` (or the one sample when `name` includes its labels).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_count_what_ingest_did() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--api-key", "k1", "--archive-flush-age", "100ms", "--max-line-bytes", "1KiB"],
    );
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
            .header("x-request-id", "test-request-42")
            .body(body)
            .send()
    };
    let good: Vec<String> = (0..1234).map(|n| reading("speed", n, None)).collect();
    let r = post(good.join("\n")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "test-request-42", "the client's request id comes back");
    // Two valid readings, one line of each rejection reason.
    let mixed = [
        reading("fuel", 1, None),
        "not json".to_owned(),
        reading("warp", 1, None),
        format!("{{\"sensor\":\"{}\"}}", "x".repeat(2000)),
        reading("fuel", 2, None),
    ]
    .join("\n");
    assert_eq!(post(mixed.clone()).await.unwrap().status(), 400);
    // 100 readings sent again: acknowledged (and logged), dropped by deduplication.
    // ... and one new reading older than the newest of its series (late: out of order).
    let late = format!(r#"{{"sensor":"speed","value":7,"timestamp":"{}"}}"#, chrono_like(1_795_000_000, 4500));
    let again = format!("{}\n{late}", good[..100].join("\n"));
    assert_eq!(post(again.clone()).await.unwrap().status(), 200);
    let sql =
        |q: &'static str| client().post(format!("{}/api/v1/sql", s.url)).basic_auth("k1", None::<&str>).body(q).send();
    let r = sql("SELECT count(*) AS n FROM readings").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-request-id").is_some_and(|v| !v.is_empty()), "a new id when the client sent none");
    assert_eq!(sql("SELEKT nothing").await.unwrap().status(), 400);

    // The archiver counts duplicates and parts as it goes: wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let text = scrape().await;
        let archived =
            metric_sum(&text, "weir_archive_readings_total") - metric_sum(&before, "weir_archive_readings_total");
        if archived >= 1237.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "the archive never caught up:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved = |name: &str| metric_sum(&after, name) - metric_sum(&before, name);
    assert_eq!(moved("weir_readings_received_total"), 1234.0 + 5.0 + 101.0, "{after}");
    assert_eq!(moved("weir_readings_accepted_total"), 1236.0 + 101.0);
    assert_eq!(moved("weir_readings_late_total"), 1.0);
    assert_eq!(moved("weir_readings_rejected_total"), 3.0);
    for reason in ["undecodable", "invalid", "too_long"] {
        assert_eq!(moved(&format!("weir_readings_rejected_total{{reason=\"{reason}\"}}")), 1.0, "{reason}");
    }
    assert_eq!(moved("weir_readings_deduplicated_total"), 100.0);
    assert_eq!(moved("weir_archive_readings_total"), 1237.0);
    assert!(moved("weir_archive_parts_total") >= 1.0 && moved("weir_archive_bytes_total") > 1000.0);
    let body_bytes = (good.join("\n").len() + mixed.len() + again.len()) as f64;
    assert_eq!(moved("weir_ingest_body_bytes_total"), body_bytes);
    assert_eq!(moved("weir_ingest_requests_total{status=\"200\"}"), 2.0);
    assert_eq!(moved("weir_ingest_requests_total{status=\"400\"}"), 1.0);
    assert_eq!(moved("weir_http_requests_total{route=\"/ingest\",status=\"200\"}"), 2.0);
    assert_eq!(moved("weir_http_requests_total{route=\"/ingest\",status=\"400\"}"), 1.0);
    assert_eq!(moved("weir_http_request_duration_seconds_count{route=\"/api/v1/sql\",status=\"200\"}"), 1.0);
    assert_eq!(moved("weir_sql_queries_total{result=\"ok\"}"), 1.0);
    assert_eq!(moved("weir_sql_queries_total{result=\"error\"}"), 1.0);
    assert_eq!(moved("weir_wal_appends_total"), 3.0, "one record per request");
    assert!(moved("weir_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(after.contains("weir_wal_fsync_duration_seconds_bucket{le=\"0.001\"}"), "a histogram with buckets");
    assert!(metric(&after, "weir_wal_bytes") > body_bytes / 10.0);
    assert_eq!(metric(&after, "weir_wal_durable_position"), 3.0);
    assert!(after.contains("weir_dataflow_lag_seconds "));
    assert!(after.contains("# HELP weir_dataflow_lag_positions "));
    assert!(metric(&after, "weir_process_resident_memory_bytes") > 1e6);
    let log_path = s.log.clone();
    assert!(s.stop().success());
    // One log line per request, with its id, route and status; client errors are not logged as errors.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let ingest_lines: Vec<&str> =
        log.lines().filter(|l| l.contains("test-request-42") && l.contains("request finished")).collect();
    assert_eq!(ingest_lines.len(), 3, "{log}");
    assert!(ingest_lines.iter().all(|l| l.contains("route=/ingest") && l.contains("readings=")), "{log}");
    assert!(ingest_lines.iter().any(|l| l.contains("status=400") && l.contains(" INFO ")), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn json_logs_carry_each_request_span() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--log-format", "json"]);
    let r = client()
        .post(format!("{}/ingest", s.url))
        .header("content-type", NDJSON)
        .header("x-request-id", "json-log-7")
        .body(reading("speed", 1, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log_path = s.log.clone();
    assert!(s.stop().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let finished = lines
        .iter()
        .find(|l| l["span"]["id"] == "json-log-7" && l["fields"]["message"] == "request finished")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(finished["level"], "INFO");
    assert_eq!(finished["span"]["route"], "/ingest");
    assert_eq!(finished["span"]["status"], 200);
    assert_eq!(finished["span"]["readings"], 1);
    assert!(finished["span"]["duration_ms"].as_f64().is_some());
}
