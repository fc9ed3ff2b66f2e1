//! Daily seal and dumps through the real binary: automatic after the grace period, again for late readings,
//! on demand with `weir dump`, and the late counts queryable in SQL.

mod support;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

fn dump_lines(path: &std::path::Path) -> Vec<Value> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_string(&mut text).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn ingest(s: &Server, lines: &[Value]) {
    ingest_lines(s, &lines.iter().map(Value::to_string).collect::<Vec<_>>()).await;
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn past_days_are_sealed_with_a_dump_and_resealed_for_late_readings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--archive-flush-age", "20ms", "--seal-interval", "50ms", "--seal-grace", "1h"]);
    ingest(
        &s,
        &[
            json!({"sensor": "speed", "value": 55.5, "timestamp": "2026-11-19T10:00:00Z"}),
            json!({"sensor": "fuel", "value": 12.0, "timestamp": "2026-11-19T09:00:00+01:00", "device": "truck-7"}),
            json!({"sensor": "speed", "value": 99.0, "timestamp": "2026-11-19T10:00:00Z"}), // duplicate: first wins
        ],
    )
    .await;
    let dump = data.join("archive/dumps/2026-11-19.json.gz");
    wait_for("the dump", || dump.exists());
    assert_eq!(
        dump_lines(&dump),
        vec![
            json!({"sensor": "fuel", "value": 12.0, "timestamp": "2026-11-19T08:00:00Z", "device": "truck-7"}),
            json!({"sensor": "speed", "value": 55.5, "timestamp": "2026-11-19T10:00:00Z"}),
        ]
    );
    // A device replays a late reading for the sealed day: the day is sealed again, the late reading counted.
    ingest(&s, &[json!({"sensor": "speed", "value": 1.0, "timestamp": "2026-11-19T00:00:01Z"})]).await;
    wait_for("the reseal", || dump_lines(&dump).len() == 3);
    let day_dir = data.join("archive/readings/date=2026-11-19");
    wait_for("one sealed file", || std::fs::read_dir(&day_dir).unwrap().count() == 1);
    let r = client()
        .post(format!("{}/api/v1/sql", s.url))
        .body("SELECT date, readings, late_readings FROM seals")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!([{"date": "2026-11-19", "readings": 3, "late_readings": 1}]));
    assert!(s.stop().success());
}

#[tokio::test]
async fn weir_dump_seals_a_day_on_demand_and_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Today's readings are not sealed automatically (the day is not over), so `weir dump` does it.
    let today = chrono_like(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 0);
    let date = &today[..10];
    let s = Server::start(&data, &["--archive-flush-age", "20ms"]);
    ingest(
        &s,
        &[
            json!({"sensor": "speed", "value": 1.5, "timestamp": today}),
            json!({"sensor": "fuel", "value": 2.5, "timestamp": today, "device": "d"}),
        ],
    )
    .await;
    // Issue 16, 1: while the server runs it is the archive's sealer; `weir dump` of the same archive is refused
    // (two sealers of one day lost readings), and so is a second server on it.
    let refused = Command::new(BIN).args(["dump", "--date", date, "--data-dir"]).arg(&data).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another process seals this archive"), "{stderr}");
    let second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--pg-listen", "off", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--archive-url")
        .arg(data.join("archive"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another process seals this archive"));
    assert!(s.stop().success());
    let out_dir = dir.path().join("out");
    let run = || {
        let out = Command::new(BIN)
            .args(["dump", "--date", date, "--data-dir"])
            .arg(&data)
            .arg("--to")
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.contains("2 readings"), "{first}");
    let dump = out_dir.join(format!("dumps/{date}.json.gz"));
    let bytes = std::fs::read(&dump).unwrap();
    assert_eq!(dump_lines(&dump).len(), 2);
    run();
    assert_eq!(std::fs::read(&dump).unwrap(), bytes, "the same day dumps to the same bytes");
    let out = Command::new(BIN).args(["dump", "--date", "2026-13-40", "--data-dir"]).arg(&data).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM-DD"));
}

#[tokio::test]
async fn todays_parts_are_compacted_in_tiers_and_every_reading_stays_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Today, at midnight: the day is not over, so it is compacted, not sealed.
    let midnight = now - now % 86_400;
    let date = chrono_like(midnight, 0)[..10].to_owned();
    let args = ["--archive-flush-rows", "1", "--archive-flush-age", "10ms", "--seal-interval", "50ms"];
    let s = Server::start(&data, &args);
    // 20 requests, each flushed as its own part (one record per part): 8 + 8 become two tier-1 parts.
    for i in 0..20u64 {
        let line =
            json!({"sensor": "speed", "value": i as f64, "timestamp": chrono_like(midnight + i, 0), "device": "t"});
        // Every fifth request repeats an earlier reading with another value: the first write stays.
        let again =
            json!({"sensor": "speed", "value": -1.0, "timestamp": chrono_like(midnight + i / 5, 0), "device": "t"});
        ingest(&s, &[line]).await;
        if i % 5 == 4 {
            ingest(&s, &[again]).await;
        }
    }
    let day_dir = data.join(format!("archive/readings/date={date}"));
    let tiers = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&day_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    wait_for("two tier-1 parts", || tiers().iter().filter(|n| n.ends_with("-t1.parquet")).count() == 2);
    assert!(tiers().len() <= 2 + 7, "{:?}", tiers());
    let expect = json!([{"n": 20, "sum": 190.0}]);
    let q = "SELECT count(*) AS n, sum(value) AS sum FROM readings WHERE device = 't'";
    assert_eq!(sql_json(&s, q).await, expect);
    // After a restart (the statistics and the archiver rebuild from the compacted parts) nothing changed.
    s.kill9();
    let s = Server::start(&data, &args);
    assert_eq!(sql_json(&s, q).await, expect);
    let series = client()
        .get(format!("{}/api/v1/series?device=t&sensor=speed&window=1d&from={date}T00:00:00Z", s.url))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(series["windows"][0]["count"], json!(20), "{series}");
    assert!(s.stop().success());
}
