//! SQL over the archive through the real binary: `POST /api/v1/sql` in every format, refusals, `weir sql` against
//! the server and against the archive directly, and exactly-once archiving across `kill -9`.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

async fn sql(s: &Server, query: &str, accept: &str) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/sql", s.url))
        .header("content-type", "text/plain")
        .header("accept", accept)
        .body(query.to_owned())
        .send()
        .await
        .unwrap()
}

fn readings() -> Vec<String> {
    let mut lines: Vec<String> = (0..50).map(|n| reading("speed", n, None)).collect();
    lines.extend((0..30).map(|n| reading("fuel", n, Some("truck-7"))));
    lines.push(reading("speed", 3, None).replace("3.5", "999.0")); // duplicate key, other value: ignored
    lines
}

#[tokio::test]
async fn sql_answers_in_json_csv_and_arrow_and_sees_unflushed_readings() {
    let dir = tempfile::tempdir().unwrap();
    // Parts are flushed only after an hour: every answer here comes from unflushed readings, then from Parquet.
    let s = Server::start(dir.path(), &["--archive-flush-age", "1h"]);
    ingest_lines(&s, &readings()).await;
    let r = sql(
        &s,
        "SELECT sensor, count(*) AS n, sum(value) AS total FROM readings GROUP BY sensor ORDER BY sensor",
        "application/json",
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let sum = |k: u64| (0..k).map(|n| n as f64 + 0.5).sum::<f64>();
    assert_eq!(
        v,
        json!([{"sensor": "fuel", "n": 30, "total": sum(30)}, {"sensor": "speed", "n": 50, "total": sum(50)}])
    );

    let r = sql(&s, "SELECT device, count(*) AS n FROM readings GROUP BY device ORDER BY device", "text/csv").await;
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "device,n\ndefault,50\ntruck-7,30\n");

    let r = sql(&s, "SELECT * FROM readings WHERE sensor = 'fuel'", "application/vnd.apache.arrow.stream").await;
    assert_eq!(r.headers()["content-type"], "application/vnd.apache.arrow.stream");
    let bytes = r.bytes().await.unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let names: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["device", "sensor", "value", "timestamp", "date"]);
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 30);

    // {"sql": ...} works too.
    let r = client()
        .post(format!("{}/api/v1/sql", s.url))
        .json(&json!({"sql": "SELECT count(*) AS n FROM readings"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!([{"n": 80}]));

    // After a clean stop the archiver has flushed: the same answer from Parquet, with no server, via `weir sql`.
    assert!(s.stop().success());
    let archive = dir.path().join("archive");
    let out = Command::new(BIN)
        .args(["sql", "--archive"])
        .arg(&archive)
        .args(["--format", "csv", "SELECT count(*) AS n, count(DISTINCT date) AS days FROM readings"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "n,days\n80,1\n");
    let parts: Vec<_> = walk(&archive.join("readings"));
    assert!(!parts.is_empty() && parts.iter().all(|p| p.contains("/date=") && p.ends_with(".parquet")), "{parts:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn refusals_errors_and_the_cli_against_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--sql-max-rows", "10", "--archive-flush-age", "50ms"]);
    ingest_lines(&s, &readings()).await;
    for (q, needle) in [
        ("DROP TABLE readings", "read-only"),
        ("INSERT INTO readings VALUES ('a','b',1.0,now(),'d')", "read-only"),
        ("COPY readings TO '/tmp/x.csv'", "read-only"),
        ("SET datafusion.execution.batch_size = 1", "read-only"),
        ("SELECT nope FROM readings", "nope"),
        ("SELECT * FROM readings", "more than 10 rows"),
        ("", "no SQL given"),
    ] {
        let r = sql(&s, q, "application/json").await;
        assert_eq!(r.status(), 400, "{q}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{q}: {v}");
    }
    let out = Command::new(BIN)
        .args(["sql", "--url", &s.url, "SELECT sensor, count(*) AS n FROM readings GROUP BY sensor ORDER BY sensor"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| fuel   | 30 |") && table.contains("| speed  | 50 |"), "{table}");
    let out = Command::new(BIN).args(["sql", "--url", &s.url, "DELETE FROM readings"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
}

#[tokio::test]
async fn the_archive_holds_every_acknowledged_reading_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut acknowledged = 0u64;
    let mut next = 0u64;
    for round in 0..3 {
        let s = Server::start(&data, &["--archive-flush-age", "20ms", "--archive-flush-rows", "37"]);
        for _ in 0..20 {
            let lines: Vec<String> = (next..next + 25).map(|n| reading("speed", n, Some("k9"))).collect();
            next += 25;
            ingest_lines(&s, &lines).await;
            acknowledged += 25;
        }
        tokio::time::sleep(Duration::from_millis(10 * round)).await;
        s.kill9();
    }
    let s = Server::start(&data, &[]);
    let r = sql(&s, "SELECT count(*) AS n, count(DISTINCT timestamp) AS distinct_n FROM readings", "application/json")
        .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!([{"n": acknowledged, "distinct_n": acknowledged}]));
    assert!(s.stop().success());
    let out = Command::new(BIN)
        .args(["sql", "--archive"])
        .arg(data.join("archive"))
        .args(["--format", "json", "SELECT count(*) AS n FROM readings"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), format!("[{{\"n\":{acknowledged}}}]"));
}
