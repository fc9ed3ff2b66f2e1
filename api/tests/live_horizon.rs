//! Issue 18: live windows bounded by a horizon. Days beyond `--live-horizon` of a series' newest reading leave memory
//! once their rollups are written; every answer about windows (series, the 96-bucket endpoint, SQL over windows)
//! stays the same, read from the rollups; a late reading older than the horizon is counted and shows after its
//! day's reseal.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// 2026-11-10T00:00:00Z: six past days of readings from here.
const DAY0: u64 = 1_794_268_800;

fn readings() -> Vec<String> {
    let mut out = Vec::new();
    for day in 0..6u64 {
        for n in 0..40u64 {
            let t = chrono_like(DAY0 + day * 86_400 + n * 1_000, n);
            let value = (day * 100 + n) as f64 * 0.5 - 7.0;
            out.push(format!(r#"{{"sensor":"speed","value":{value},"timestamp":"{t}"}}"#));
            out.push(format!(r#"{{"sensor":"fuel","value":{},"timestamp":"{t}","device":"van/1 ü"}}"#, -value));
        }
    }
    out
}

/// Everything about windows a user can ask over the six days.
async fn answers(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    for (device, sensor) in [("default", "speed"), ("van%2F1%20%C3%BC", "fuel")] {
        for window in ["1m", "15m", "1h", "1d"] {
            out.push(
                get_json(s, &format!("/api/v1/series?sensor={sensor}&device={device}&window={window}&from=2026-11-01T00:00:00Z&to=2026-11-20T00:00:00Z")).await,
            );
        }
    }
    for date in ["2026-11-10", "2026-11-12", "2026-11-15"] {
        out.push(get_json(s, &format!("/api/statistics/sensor/speed/date/{date}")).await);
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn metrics(s: &Server) -> String {
    client().get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_do_not_change_when_windows_leave_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // First without seals: every window is live.
    let s = Server::start(&data, &["--seal-grace", "8760h", "--archive-flush-age", "20ms"]);
    let position = post_position(&s, &readings()).await;
    get_json(&s, &format!("/api/v1/latest?after={position}")).await;
    let live = answers(&s).await;
    let all_windows = metric(&metrics(&s).await, "weir_live_windows");
    assert!(all_windows > 0.0);
    assert!(s.stop().success());

    // Then with seals: the days are sealed, their rollups written, and the days not wholly within 48 h of each
    // series' newest reading (the 15th, 10:50) — the 10th to the 13th — leave memory.
    let args =
        ["--seal-grace", "1h", "--seal-interval", "100ms", "--live-horizon", "48h", "--archive-flush-age", "20ms"];
    let s = Server::start(&data, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let held = metric(&metrics(&s).await, "weir_live_windows");
        if held < all_windows {
            break held;
        }
        assert!(Instant::now() < deadline, "no window left memory: {held} of {all_windows}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // 2 of 6 days stay (the 14th and the 15th), for both series.
    assert_eq!(held, all_windows / 3.0, "windows held after eviction");
    assert_eq!(answers(&s).await, live, "answers from rollups equal the live answers");
    let sql = sql_json(&s, "SELECT count(*) AS n, sum(count) AS readings FROM windows_1m").await;
    assert_eq!(sql[0]["readings"], 480, "{sql}");

    // A late reading for the 10th (older than the horizon): not live, counted; after the day's reseal it shows.
    let late = format!(r#"{{"sensor":"speed","value":1000,"timestamp":"{}"}}"#, chrono_like(DAY0 + 50_000, 0));
    let position = post_position(&s, &[late]).await;
    get_json(&s, &format!("/api/v1/latest?after={position}")).await;
    assert_eq!(metric(&metrics(&s).await, "weir_live_dropped_readings_total"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let day =
            get_json(&s, "/api/v1/series?sensor=speed&window=1d&from=2026-11-10T00:00:00Z&to=2026-11-11T00:00:00Z")
                .await;
        let count = day["windows"][0]["count"].as_u64();
        if count == Some(41) {
            assert_eq!(day["windows"][0]["max"], 1000.0);
            break;
        }
        assert_eq!(count, Some(40), "{day}");
        assert!(Instant::now() < deadline, "the late reading never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = answers(&s).await;
    let latest = get_json(&s, "/api/v1/latest?device=van%2F1%20%C3%BC").await;
    assert!(s.stop().success());

    // A restart reads only the days within the horizon (and each series' last reading of the days before, from the
    // rollups): the same answers, the same latest values and devices, no more windows in memory than before.
    let s = Server::start(&data, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client().get(format!("{}/readyz", s.url)).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        s.log_text().contains("live_from=\"2026-11-13T00:00:00Z\"") || s.log_text().contains("live_from=2026-11-13"),
        "{}",
        s.log_text()
    );
    assert_eq!(metric(&metrics(&s).await, "weir_live_windows"), held, "only the live days were loaded");
    assert_eq!(answers(&s).await, before);
    assert_eq!(get_json(&s, "/api/v1/latest?device=van%2F1%20%C3%BC").await, latest);
    let devices = get_json(&s, "/api/v1/devices").await.to_string();
    assert!(devices.contains("van/1 ü") && devices.contains("default"), "{devices}");
    assert!(s.stop().success());
}
