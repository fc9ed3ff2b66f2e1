//! Issue 24, 2: is the data complete? Against the real binary: a device with a one-hour hole shows it in
//! `/api/v1/gaps`, its windows' `completeness` falls below 1 for those hours (series, CSV, SQL), the dashboard's map
//! shows it per hour, the answers survive a restart, and bad thresholds and intervals are refused with the reason.

mod support;

use serde_json::{Value, json};
use support::*;

const INTERVALS: &str = "speed=10s,*=1m";

fn line(device: &str, sensor: &str, value: f64, secs: i64) -> String {
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({"device": device, "sensor": sensor, "value": value, "timestamp": t}).to_string()
}

/// 2026-11-22T08:00:00Z.
const EIGHT: i64 = 1_795_334_400;

/// truck-7: speed every 10 s from 08:00 to 12:00 but not in [09:20, 10:20), fuel every minute; truck-8: speed every
/// 10 s from 08:00 to 09:00. Sent in shuffled order, so holes do not depend on arrival order.
fn readings() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..4 * 360 {
        let t = EIGHT + i * 10;
        if !(EIGHT + 80 * 60..EIGHT + 140 * 60).contains(&t) {
            lines.push(line("truck-7", "speed", (i % 50) as f64, t));
        }
        if i < 360 {
            lines.push(line("truck-8", "speed", 1.0, t));
        }
    }
    for m in 0..240 {
        lines.push(line("truck-7", "fuel", 50.0, EIGHT + m * 60));
    }
    // A fixed shuffle: reverse every other block of 97 lines.
    for (n, chunk) in lines.chunks_mut(97).enumerate() {
        if n % 2 == 1 {
            chunk.reverse();
        }
    }
    lines
}

async fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = client().get(format!("{}{path}", s.url)).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn check(s: &Server, after: u64) {
    // The one hole, by the default threshold (twice 10 s, at least a minute) and by min=10m.
    let hole = json!({"device": "truck-7", "truncated": false, "gaps": [{
        "sensor": "speed", "start": "2026-11-22T09:19:50Z", "end": "2026-11-22T10:20:00Z", "seconds": 3610.0,
        "missing": 360, "open": false}]});
    assert_eq!(get_json(s, &format!("/api/v1/gaps?device=truck-7&after={after}")).await, hole);
    assert_eq!(get_json(s, &format!("/api/v1/gaps?device=truck-7&min=10m&after={after}")).await, hole);
    assert_eq!(get_json(s, &format!("/api/v1/gaps?device=truck-7&min=2h&after={after}")).await["gaps"], json!([]));
    // Bounds a user chose are edges: the hours before the first reading and after the last are holes too.
    let bounded = get_json(
        s,
        &format!("/api/v1/gaps?device=truck-7&from=2026-11-22T07:00:00Z&to=2026-11-22T13:00:00Z&min=10m&after={after}"),
    )
    .await;
    let spans: Vec<(String, String, String, bool, i64)> = bounded["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let text = |k: &str| g[k].as_str().unwrap().to_owned();
            (text("sensor"), text("start"), text("end"), g["open"].as_bool().unwrap(), g["missing"].as_i64().unwrap())
        })
        .collect();
    let span = |sensor: &str, start: &str, end: &str, open, missing| {
        (sensor.to_owned(), format!("2026-11-22T{start}Z"), format!("2026-11-22T{end}Z"), open, missing)
    };
    assert_eq!(
        spans,
        vec![
            span("fuel", "07:00:00", "08:00:00", true, 60),
            span("speed", "07:00:00", "08:00:00", true, 360),
            span("speed", "09:19:50", "10:20:00", false, 360),
            span("fuel", "11:59:00", "13:00:00", true, 61),
            span("speed", "11:59:50", "13:00:00", true, 361),
        ]
    );
    // Only one sensor's holes.
    let fuel = get_json(
        s,
        &format!("/api/v1/gaps?device=truck-7&sensor=fuel&from=2026-11-22T07:00:00Z&min=10m&after={after}"),
    )
    .await;
    assert_eq!(fuel["gaps"].as_array().unwrap().len(), 1, "{fuel}");

    // Completeness per window: speed's hours hold 360, 120, 240 and 360 of the 360 expected.
    let series = get_json(s, &format!("/api/v1/series?device=truck-7&sensor=speed&window=1h&after={after}")).await;
    let per_hour: Vec<(i64, f64, f64)> = series["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["count"].as_i64().unwrap(), w["expected"].as_f64().unwrap(), w["completeness"].as_f64().unwrap()))
        .collect();
    assert_eq!(per_hour, vec![(360, 360.0, 1.0), (120, 360.0, 1.0 / 3.0), (240, 360.0, 2.0 / 3.0), (360, 360.0, 1.0)]);
    // A 15-minute window inside the hole's edge: 09:15 holds 30 of 90.
    let quarter = get_json(
        s,
        &format!(
            "/api/v1/series?device=truck-7&sensor=speed&window=15m&from=2026-11-22T09:15:00Z&to=2026-11-22T09:16:00Z&after={after}"
        ),
    )
    .await;
    assert_eq!(quarter["windows"][0]["completeness"], json!(30.0 / 90.0));
    // CSV carries the same columns.
    let csv = client()
        .get(format!("{}/api/v1/series?device=truck-7&sensor=speed&window=1h&format=csv&after={after}", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",expected,completeness"), "{csv}");
    assert!(csv.lines().nth(2).unwrap().ends_with(&format!(",360,{}", 1.0 / 3.0)), "{csv}");

    // SQL's windows_1h says the same.
    let sql = sql_json(
        s,
        "SELECT CAST(window_start AS VARCHAR) AS h, expected, completeness FROM windows_1h \
         WHERE device = 'truck-7' AND sensor = 'speed' ORDER BY h",
    )
    .await;
    let from_sql: Vec<f64> = sql.as_array().unwrap().iter().map(|r| r["completeness"].as_f64().unwrap()).collect();
    assert_eq!(from_sql, vec![1.0, 1.0 / 3.0, 2.0 / 3.0, 1.0], "{sql}");

    // The map: per device and hour, the share of all expected readings that arrived (speed and fuel together);
    // by default the 24 hours up to the end of the newest reading's hour.
    let map = get_json(s, &format!("/api/v1/completeness?after={after}")).await;
    let hours = map["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    assert_eq!(hours[20], json!("2026-11-22T08:00:00Z"));
    let devices: Vec<&str> = map["devices"].as_array().unwrap().iter().map(|d| d["device"].as_str().unwrap()).collect();
    assert_eq!(devices, vec!["truck-7", "truck-8"]);
    let truck7 = &map["devices"][0]["completeness"];
    assert_eq!(truck7[19], json!(0.0), "nothing arrived at 07:00");
    assert_eq!(truck7[20], json!(1.0));
    assert_eq!(truck7[21], json!(180.0 / 420.0));
    assert_eq!(truck7[22], json!(300.0 / 420.0));
    assert_eq!(truck7[23], json!(1.0));
    assert_eq!(map["devices"][1]["completeness"][21], json!(0.0), "truck-8 stopped at 09:00");
    let one = get_json(
        s,
        &format!("/api/v1/completeness?device=truck-8&from=2026-11-22T08:00:00Z&to=2026-11-22T10:00:00Z&after={after}"),
    )
    .await;
    assert_eq!(
        one,
        json!({"hours": ["2026-11-22T08:00:00Z", "2026-11-22T09:00:00Z"], "devices": [{"device": "truck-8", "completeness": [1.0, 0.0]}]})
    );
}

#[tokio::test]
async fn a_one_hour_hole_shows_in_gaps_completeness_and_the_map_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--expected-interval", INTERVALS, "--workers", "2"]);
    let mut after = 0;
    for chunk in readings().chunks(500) {
        after = ingest_lines(&s, chunk).await;
    }
    check(&s, after).await;
    assert!(s.stop().success());
    let s = Server::start_with_env(&data, &[], &[("WEIR_EXPECTED_INTERVAL", INTERVALS)]);
    wait_ready(&s).await;
    check(&s, 0).await;

    // Without an interval a window has no completeness, and a map has no cells.
    assert!(s.stop().success());
    let s = Server::start(&data, &[]);
    wait_ready(&s).await;
    let series = get_json(&s, "/api/v1/series?device=truck-7&sensor=speed&window=1h").await;
    assert_eq!(series["windows"][1]["completeness"], Value::Null);
    assert_eq!(series["windows"][1]["expected"], Value::Null);
    assert_eq!(get_json(&s, "/api/v1/completeness").await["devices"], json!([]));
    // Holes without intervals: 5 minutes or more by default, no count of missing readings.
    let gaps = get_json(&s, "/api/v1/gaps?device=truck-7").await;
    assert_eq!(gaps["gaps"][0]["missing"], Value::Null);
    assert_eq!(gaps["gaps"].as_array().unwrap().len(), 1, "{gaps}");
}

#[tokio::test]
async fn bad_thresholds_and_intervals_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--expected-interval", INTERVALS]);
    for (path, needle) in [
        ("/api/v1/gaps?device=d&min=10s", "shortest threshold is 1m"),
        ("/api/v1/gaps?device=d&min=soon", "min:"),
        ("/api/v1/gaps?device=d&from=yesterday", "from:"),
        ("/api/v1/gaps?device=d&sensor=warp", "unknown sensor"),
        ("/api/v1/completeness?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z", "at most 744"),
        ("/api/v1/completeness?from=2026-03-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from is after to"),
    ] {
        let (status, v) = get(&s, path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v.to_string().contains(needle), "{path}: {v}");
    }
    for bad in ["speed", "speed=fast", "speed=0s", "speed=1s,speed=2s"] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("never"))
            .args(["--expected-interval", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(stderr.contains("--expected-interval"), "{bad}: {stderr}");
    }
}
