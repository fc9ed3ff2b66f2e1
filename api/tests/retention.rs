//! WAL segments are deleted once archived, and a restart after that — even a `kill -9` — gives the same
//! statistics and the same archive: both start from the archive, and duplicates of readings that now exist only
//! there are still rejected.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const ARGS: [&str; 6] = ["--wal-segment-bytes", "16KiB", "--batch-rows", "200", "--archive-flush-age", "20ms"];

async fn get(s: &Server, path: &str) -> Value {
    let r = client().get(format!("{}{path}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

async fn sql(s: &Server, query: &str) -> Value {
    let r = client().post(format!("{}/api/v1/sql", s.url)).body(query.to_owned()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn segments(data: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

/// Everything a user can ask, as of `after`.
async fn answers(s: &Server, after: u64) -> Vec<Value> {
    let mut out = vec![get(s, &format!("/api/v1/devices?after={after}")).await];
    for device in ["dev-0", "dev-3"] {
        out.push(get(s, &format!("/api/v1/latest?device={device}&after={after}")).await);
        for window in ["1m", "1h"] {
            let q = format!("/api/v1/series?sensor=speed&device={device}&window={window}&after={after}");
            let mut series = get(s, &q).await;
            // Late and duplicate counts are the live statistics' record of what this process saw (a restart from
            // the archive starts them again): checked apart, below.
            for w in series["windows"].as_array_mut().into_iter().flatten() {
                if let Some(w) = w.as_object_mut() {
                    w.remove("late");
                    w.remove("duplicates");
                }
            }
            out.push(series);
        }
    }
    out.push(sql(s, "SELECT count(*) AS n, sum(value) AS total FROM readings").await);
    out
}

fn readings(range: std::ops::Range<u64>, value: impl Fn(u64) -> f64) -> Vec<String> {
    range
        .map(|n| {
            let t = chrono_like(1_795_000_000 + n * 10, 0);
            let (device, sensor) = (n % 5, ["speed", "fuel"][(n / 5 % 2) as usize]);
            format!(r#"{{"sensor":"{sensor}","value":{},"timestamp":"{t}","device":"dev-{device}"}}"#, value(n))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn archived_segments_are_deleted_and_a_restart_starts_from_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &ARGS);
    let mut last = 0;
    for chunk in readings(0..6000, |n| n as f64).chunks(1000) {
        last = ingest_lines(&s, chunk).await;
    }
    // 30 records of 200 readings in about eight 16 KiB segments: all but the newest go once archived.
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&data).len() > 2 {
        assert!(Instant::now() < deadline, "segments not deleted: {:?}", segments(&data));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!segments(&data).contains(&"00000000000000000001.wal".to_owned()));
    let before = answers(&s, last).await;
    assert_eq!(before.last().unwrap()[0]["n"], 6000);
    s.kill9();
    // `weir wal dump` shows only what the log still holds (possibly nothing: every record may be archived).
    let dumped = wal_dump(&data);
    assert!(dumped.iter().all(|d| d.position > 1 && d.position <= last), "{:?}", dumped.first());

    let s = Server::start(&data, &ARGS);
    assert_eq!(answers(&s, last).await, before, "the same answers after a restart from the archive");
    // Replays of readings whose segments are gone, with other values: still duplicates.
    let replay = ingest_lines(&s, &readings(0..3000, |_| -1.0)).await;
    assert_eq!(answers(&s, replay).await, before, "duplicates of archived readings are rejected");
    // ... and counted in their windows: 300 of the replayed readings are dev-0's speed.
    let hours = get(&s, &format!("/api/v1/series?sensor=speed&device=dev-0&window=1h&after={replay}")).await;
    let duplicates: i64 = hours["windows"].as_array().unwrap().iter().map(|w| w["duplicates"].as_i64().unwrap()).sum();
    assert_eq!(duplicates, 300, "{hours}");
    // New readings still count.
    let more = ingest_lines(&s, &readings(6000..6010, |_| 1.0)).await;
    let after = answers(&s, more).await;
    assert_eq!(after.last().unwrap()[0]["n"], 6010);
    assert!(s.stop().success());
}

#[tokio::test]
async fn a_log_trimmed_past_the_checkpoint_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &ARGS);
    for chunk in readings(0..3000, |n| n as f64).chunks(1000) {
        ingest_lines(&s, chunk).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(&data).len() > 2 {
        assert!(Instant::now() < deadline, "segments not deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.stop().success());
    // Without its checkpoint the archive would not know where the log takes over.
    std::fs::remove_file(data.join("archive-checkpoint.json")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--pg-listen", "off", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the write-ahead log starts at position") && err.contains("checkpoint"), "{err}");
}
