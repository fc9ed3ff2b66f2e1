//! The live statistics through HTTP against the real binary: every endpoint, read-your-writes with `after=`,
//! duplicates, late readings, several devices, and the same answers after a restart.

mod support;

use serde_json::{Value, json};
use support::*;

async fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = client().get(format!("{}{path}", s.url)).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn line(sensor: &str, value: f64, t: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => json!({"sensor": sensor, "value": value, "timestamp": t, "device": d}).to_string(),
        None => json!({"sensor": sensor, "value": value, "timestamp": t}).to_string(),
    }
}

/// What the test pushes: default device speed in two quarter-hours, a duplicate with another value (ignored), a
/// late reading for the previous day, location fixes, and a second device.
fn first_batch() -> Vec<String> {
    vec![
        line("speed", 10.0, "2026-11-22T10:00:05Z", None),
        line("speed", 20.0, "2026-11-22T10:07:00+01:00", None), // 09:07 UTC
        line("speed", 30.0, "2026-11-22T10:14:59.5Z", None),
        line("speed", 999.0, "2026-11-22T10:00:05Z", None), // duplicate: first write wins
        line("speed", 40.0, "2026-11-22T10:15:00Z", None),
        line("fuel", 55.5, "2026-11-22T10:20:00Z", None),
        line("location_latitude", 52.5, "2026-11-22T10:20:00Z", None),
        line("location_longitude", 13.4, "2026-11-22T10:20:00Z", None),
        line("speed", 7.0, "2026-11-22T10:00:00Z", Some("truck-7")),
    ]
}

fn late_batch() -> Vec<String> {
    vec![
        line("speed", 100.0, "2026-11-21T23:59:59Z", None), // yesterday, arriving late
        line("engine_temperature", 90.0, "2026-11-22T10:30:00Z", None),
        line("revolution", 3000.0, "2026-11-22T10:30:00Z", None),
        line("speed", 1.0, "2026-11-22T10:15:00Z", None), // duplicate of the 40.0
    ]
}

/// Every answer, the same after a restart (late and duplicate counts too: the archive's record of verdicts keeps
/// them when the log is gone).
async fn check_answers(s: &Server, after: u64) {
    let q = format!("after={after}");
    let (status, v) = get(s, &format!("/api/statistics/latest?{q}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"speed": 40.0, "fuel": 55.5, "engineTemperature": 90.0, "revolutions": 3000.0}));
    let (_, v) = get(s, &format!("/api/location/latest?{q}")).await;
    assert_eq!(v, json!({"latitude": 52.5, "longitude": 13.4}));
    let (_, v) = get(s, &format!("/api/status?{q}")).await;
    assert_eq!(v, json!({"lastIngestTimestamp": "2026-11-22T10:30:00Z"}));

    let (status, v) = get(s, &format!("/api/statistics/sensor/speed/date/2026-11-22?{q}")).await;
    assert_eq!(status, 200);
    let buckets = v.as_array().unwrap();
    assert_eq!(buckets.len(), 96);
    assert_eq!(buckets[0], json!({"sensor": "speed", "value": 0.0, "timestamp": "2026-11-22T00:00:00Z"}));
    // 09:00–09:15 holds 20.0; 10:00–10:15 holds 10.0 and 30.0 (not the duplicate 999); 10:15–10:30 holds 40.0.
    assert_eq!(buckets[36]["value"], 20.0);
    assert_eq!(buckets[40], json!({"sensor": "speed", "value": 20.0, "timestamp": "2026-11-22T10:00:00Z"}));
    assert_eq!(buckets[41]["value"], 40.0);
    let nonzero = buckets.iter().filter(|b| b["value"] != 0.0).count();
    assert_eq!(nonzero, 3);
    let (_, v) = get(s, &format!("/api/statistics/sensor/speed/date/2026-11-21?{q}")).await;
    assert_eq!(v[95]["value"], 100.0, "the late reading corrected yesterday");

    let (_, v) = get(s, &format!("/api/v1/series?sensor=speed&window=1h&{q}")).await;
    let windows = v["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 3, "{v}");
    let ten = &windows[2];
    assert_eq!(ten["start"], "2026-11-22T10:00:00Z");
    assert_eq!(ten["end"], "2026-11-22T11:00:00Z");
    assert_eq!((ten["count"].as_i64(), ten["sum"].as_f64()), (Some(3), Some(80.0)));
    assert_eq!((ten["min"].as_f64(), ten["max"].as_f64()), (Some(10.0), Some(40.0)));
    assert_eq!((ten["first"].as_f64(), ten["last"].as_f64()), (Some(10.0), Some(40.0)));
    assert_eq!(ten["last_timestamp"], "2026-11-22T10:15:00Z");
    // Issue 24: percentiles from the window's sketch (1 % relative error) — rank ⌊q (n − 1)⌋ of {10, 30, 40} —
    // and the readings of the window that were duplicates (999 and 1.0, dropped) or arrived late (none: the 09:07
    // reading arrived after 10:00:05, so the 09:00 window counts it).
    let near = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() <= 0.01 * want;
    assert!(near(&ten["p50"], 30.0) && near(&ten["p99"], 30.0), "{ten}");
    assert_eq!((ten["duplicates"].as_i64(), ten["late"].as_i64()), (Some(2), Some(0)), "{ten}");
    assert_eq!((windows[1]["late"].as_i64(), windows[1]["duplicates"].as_i64()), (Some(1), Some(0)), "{v}");
    // SQL's windows count them alike, once the archive holds them (the readings' flush writes the verdicts).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows = sql_json(
            s,
            "SELECT CAST(window_start AS VARCHAR) AS h, late, duplicates FROM windows_1h \
             WHERE device = 'default' AND sensor = 'speed' ORDER BY h",
        )
        .await;
        let counts: Vec<(i64, i64)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["late"].as_i64().unwrap(), r["duplicates"].as_i64().unwrap()))
            .collect();
        if counts == vec![(1, 0), (1, 0), (0, 2)] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "windows_1h: {rows}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, v) = get(s, &format!("/api/v1/series?sensor=speed&window=1h&q=0,1,0.5&{q}")).await;
    let asked = &v["windows"][2]["quantiles"];
    assert_eq!(asked[0], json!({"q": 0.0, "value": 10.0}), "the minimum, exactly (clamped to min): {asked}");
    assert_eq!(asked[1], json!({"q": 1.0, "value": 40.0}), "the maximum, exactly: {asked}");
    assert!(near(&asked[2]["value"], 30.0), "{asked}");
    let (_, v) =
        get(s, &format!("/api/v1/series?sensor=speed&window=1d&from=2026-11-22T00:00:00Z&to=2026-11-23T00:00:00Z&{q}"))
            .await;
    assert_eq!(v["windows"].as_array().unwrap().len(), 1);
    assert_eq!(v["windows"][0]["count"], 4);
    assert_eq!(v["windows"][0]["mean"], 25.0);
    let r = client()
        .get(format!("{}/api/v1/series?sensor=speed&device=truck-7&window=15m&format=csv&{q}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = r.text().await.unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows[0].starts_with("device,sensor,window,start,end,count,sum,min,max,mean"));
    assert!(rows[1].starts_with("truck-7,speed,15m,2026-11-22T10:00:00Z,2026-11-22T10:15:00Z,1,7,7,7,7,"), "{csv}");

    let (_, v) = get(s, &format!("/api/v1/latest?device=truck-7&{q}")).await;
    assert_eq!(
        v,
        json!({"device": "truck-7", "latest": [{"sensor": "speed", "value": 7.0, "timestamp": "2026-11-22T10:00:00Z"}]})
    );
    let (_, v) = get(s, &format!("/api/v1/latest?{q}")).await;
    assert_eq!(v["device"], "default");
    assert_eq!(v["latest"].as_array().unwrap().len(), 6);
    let (_, v) = get(s, &format!("/api/v1/devices?{q}")).await;
    assert_eq!(
        v,
        json!({"devices": [
            {"device": "default", "sensors": 6, "last_timestamp": "2026-11-22T10:30:00Z"},
            {"device": "truck-7", "sensors": 1, "last_timestamp": "2026-11-22T10:00:00Z"},
        ]})
    );
}

#[tokio::test]
async fn every_endpoint_answers_from_the_dataflow_and_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--workers", "2", "--archive-flush-age", "100ms"]);
    // Empty: zeros, as the replaced system answered.
    let (_, v) = get(&s, "/api/statistics/latest").await;
    assert_eq!(v, json!({"speed": 0.0, "fuel": 0.0, "engineTemperature": 0.0, "revolutions": 0.0}));
    let (_, v) = get(&s, "/api/status").await;
    assert_eq!(v, json!({"lastIngestTimestamp": "0001-01-01T00:00:00Z"}));

    ingest_lines(&s, &first_batch()).await;
    let position = ingest_lines(&s, &late_batch()).await;
    check_answers(&s, position).await;
    assert!(s.stop().success());

    // A restart starts from the archive (everything was archived at the stop) into the same state, late and
    // duplicate counts included (and one worker gives the same answers as two).
    let s = Server::start(&data, &["--workers", "1", "--archive-flush-age", "100ms"]);
    check_answers(&s, position).await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--read-wait", "200ms"]);
    for (path, needle) in [
        ("/api/statistics/sensor/warp/date/2026-11-22", "unknown sensor \"warp\""),
        ("/api/statistics/sensor/speed/date/2026-13-01", "bad date"),
        ("/api/statistics/sensor/speed/date/yesterday", "bad date"),
        ("/api/v1/series", "missing parameter sensor"),
        ("/api/v1/series?sensor=speed&window=0", "unknown window"),
        ("/api/v1/series?sensor=speed&from=soon", "from:"),
        ("/api/v1/series?sensor=speed&from=2026-11-23T00:00:00Z&to=2026-11-22T00:00:00Z", "from is after to"),
        ("/api/v1/series?sensor=speed&format=xml", "unknown format"),
        ("/api/v1/series?sensor=speed&q=1.5", "not a quantile between 0 and 1"),
        ("/api/v1/series?sensor=speed&q=median", "not a quantile between 0 and 1"),
        ("/api/v1/latest?after=999999", "beyond the last acknowledged"),
    ] {
        let (status, v) = get(&s, path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(needle), "{path}: {v}");
    }
}

#[tokio::test]
async fn api_routes_need_the_api_key_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--api-key", "secret"]);
    for path in ["/api/statistics/latest", "/api/v1/devices", "/api/status"] {
        let r = client().get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = client().get(format!("{}{path}", s.url)).basic_auth("secret", Some("x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// Issue 16, 10: `/api/location/latest` answers the newest *complete* fix (both coordinates at one timestamp), never
/// a latitude of one fix with the longitude of another; 0 and 0 while the device has none.
#[tokio::test]
async fn the_location_is_the_newest_complete_fix() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--archive-flush-age", "50ms"]);
    let lat = |v: f64, t: &str| line("location_latitude", v, t, None);
    let lon = |v: f64, t: &str| line("location_longitude", v, t, None);
    let steps: Vec<(Vec<String>, Value)> = vec![
        (vec![lat(1.0, "2026-11-21T09:00:00Z")], json!({"latitude": 0.0, "longitude": 0.0})),
        (
            vec![
                lon(2.0, "2026-11-21T09:00:00Z"),
                lat(3.0, "2026-11-22T10:00:00Z"),
                lon(4.0, "2026-11-22T10:00:00Z"),
                lat(5.0, "2026-11-22T11:00:00Z"),
            ],
            // Not the latitude of 11:00 with the longitude of 10:00.
            json!({"latitude": 3.0, "longitude": 4.0}),
        ),
        (vec![lon(6.0, "2026-11-22T12:00:00Z")], json!({"latitude": 3.0, "longitude": 4.0})),
        // The newest complete fix is on an earlier day than both newest coordinates.
        (
            vec![lat(7.0, "2026-11-23T08:00:00Z"), lon(8.0, "2026-11-23T09:00:00Z")],
            json!({"latitude": 3.0, "longitude": 4.0}),
        ),
        (vec![lat(9.0, "2026-11-23T09:00:00Z")], json!({"latitude": 9.0, "longitude": 8.0})),
    ];
    for (i, (lines, want)) in steps.into_iter().enumerate() {
        let position = ingest_lines(&s, &lines).await;
        let (status, got) = get(&s, &format!("/api/location/latest?after={position}")).await;
        assert_eq!((status, got), (200, want), "step {i}");
    }
}
