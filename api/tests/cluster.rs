//! Three `weir serve` processes on loopback joined by timely's cluster runtime, sharing one archive: ingest spread
//! over all three, every process answers statistics and SQL like a single Weir given the same input, and the days
//! the cluster seals (each by its owner) have the same dump as the single Weir's; after a `kill -9` of one process
//! the others stop too, and the restarted cluster has every acknowledged reading exactly once in its statistics
//! and its archive.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Settings every Weir of these tests runs with, alone or in the cluster: quick seals of past days.
const SETTINGS: [&str; 6] = ["--seal-grace", "1s", "--seal-interval", "200ms", "--archive-flush-age", "300ms"];

/// Starts every process of `hosts` at once (each waits for the others before it listens), sharing the archive
/// `root/archive`.
fn start_cluster(root: &Path, hosts: &Path, n: usize) -> Vec<Server> {
    let archive = root.join("archive").display().to_string();
    let handles: Vec<_> = (0..n)
        .map(|p| {
            let (data, hosts, archive) = (root.join(format!("data-{p}")), hosts.to_path_buf(), archive.clone());
            std::thread::spawn(move || {
                let process = p.to_string();
                let mut args = vec!["--cluster", hosts.to_str().unwrap(), "--process", &process, "--workers", "2"];
                args.extend(["--archive-url", &archive]);
                args.extend(SETTINGS);
                Server::start(&data, &args)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn start_single(root: &Path) -> Server {
    Server::start(&root.join("single"), &SETTINGS)
}

/// Device `d`'s readings `range`, one per second.
fn lines(d: usize, range: std::ops::Range<u64>) -> Vec<String> {
    range
        .map(|n| {
            // Every ten minutes from the start of yesterday: 300 readings span yesterday (sealed at once), today
            // and tomorrow (not sealed yet).
            let t = chrono_like(start_of_yesterday() + n * 600, 0);
            let sensor = ["speed", "fuel"][(n % 2) as usize];
            format!(
                r#"{{"sensor":"{sensor}","value":{},"timestamp":"{t}","device":"dev-{d}"}}"#,
                n as f64 * 0.5 + d as f64
            )
        })
        .collect()
}

/// What SQL says of the whole archive.
const QUERIES: [&str; 3] = [
    "SELECT count(*) AS n FROM readings",
    "SELECT device, sensor, date, count(*) AS n, sum(value) AS total, min(timestamp) AS first, max(timestamp) AS last \
     FROM readings GROUP BY device, sensor, date ORDER BY device, sensor, date",
    "SELECT count(*) AS n FROM (SELECT device, sensor, timestamp FROM readings GROUP BY device, sensor, timestamp)",
];

/// Everything a user can ask, once `positions` are processed.
async fn answers(s: &Server, positions: &[String], devices: usize) -> Vec<Value> {
    for p in positions {
        get_json(s, &format!("/api/v1/devices?after={p}")).await;
    }
    let mut out = vec![get_json(s, "/api/v1/devices").await];
    for d in 0..devices {
        out.push(get_json(s, &format!("/api/v1/latest?device=dev-{d}")).await);
        for window in ["1m", "1h"] {
            let mut series = get_json(s, &format!("/api/v1/series?sensor=speed&device=dev-{d}&window={window}")).await;
            // Late and duplicate counts depend on the order this process saw the writes in (and start again when a
            // restart rebuilds windows from the archive): not part of what every process answers alike.
            for w in series["windows"].as_array_mut().into_iter().flatten() {
                if let Some(w) = w.as_object_mut() {
                    w.remove("late");
                    w.remove("duplicates");
                }
            }
            out.push(series);
        }
    }
    for query in QUERIES {
        out.push(sql_json(s, query).await);
    }
    out
}

/// Waits until every day before `today` in the archive is sealed alone (one file, its journal counting every
/// reading of the day), then returns each such day's dump.
async fn sealed_dumps(s: &Server, archive: &Path, today: &str) -> Vec<(String, Vec<u8>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let days =
            format!("SELECT date, count(*) AS n FROM readings WHERE date < '{today}' GROUP BY date ORDER BY date");
        let days = sql_json(s, &days).await;
        let seals = sql_json(s, "SELECT date, readings AS n FROM seals ORDER BY date").await;
        let alone = days.as_array().unwrap().iter().all(|d| {
            let dir = archive.join("readings").join(format!("date={}", d["date"].as_str().unwrap()));
            std::fs::read_dir(dir).map(|entries| entries.count()).unwrap_or(0) == 1
        });
        if days == seals && alone {
            let mut out = Vec::new();
            for d in days.as_array().unwrap() {
                let date = d["date"].as_str().unwrap();
                out.push((date.to_owned(), std::fs::read(archive.join(format!("dumps/{date}.json.gz"))).unwrap()));
            }
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "not sealed: {days} vs {seals}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nine devices, each sent in three parts to three different processes; plus a repeat of one part elsewhere.
fn requests() -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for d in 0..9 {
        for c in 0..3u64 {
            out.push(((d + c as usize) % 3, lines(d, c * 100..(c + 1) * 100)));
        }
    }
    // Device 4's readings 150..250 (today and tomorrow: not sealed, so only the live dedup keeps them once) went
    // to processes 2 and 0; a repeat at process 1 duplicates them across processes.
    out.push((1, lines(4, 150..250)));
    out
}

fn hosts_file(root: &Path, n: usize) -> PathBuf {
    let hosts = root.join("hosts.txt");
    std::fs::write(&hosts, free_addresses(n).join("\n") + "\n").unwrap();
    hosts
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_answer_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let today = chrono_like(start_of_yesterday() + 86_400, 0)[..10].to_owned();
    let single = start_single(dir.path());
    for (_, body) in requests() {
        post_position(&single, &body).await;
    }
    let want = answers(&single, &[], 9).await;
    assert_eq!(want[want.len() - 3], want[want.len() - 1], "each key once: {:?}", &want[want.len() - 3..]);
    let single_dumps = sealed_dumps(&single, &dir.path().join("single/archive"), &today).await;
    assert_eq!(single_dumps.len(), 1, "yesterday");
    assert!(single.stop().success());

    let cluster = start_cluster(dir.path(), &hosts_file(dir.path(), 3), 3);
    let mut positions = Vec::new();
    for (p, body) in requests() {
        positions.push(post_position(&cluster[p], &body).await);
    }
    assert!(positions.iter().all(|p| p.contains(':')), "a position names its process: {positions:?}");
    for (p, s) in cluster.iter().enumerate() {
        assert_eq!(answers(s, &positions, 9).await, want, "process {p}");
    }
    // Each day sealed by one process, from every process's parts: the dumps are the single Weir's, byte for byte.
    assert_eq!(sealed_dumps(&cluster[0], &dir.path().join("archive"), &today).await, single_dumps);
    for s in &cluster {
        assert_eq!(answers(s, &[], 9).await, want, "after the seals");
    }
    // `weir dump` seals only a single Weir's archive: a cluster's days are its owners' to seal.
    let yesterday = chrono_like(start_of_yesterday(), 0)[..10].to_owned();
    let out = std::process::Command::new(BIN)
        .args(["dump", "--date", &yesterday, "--archive"])
        .arg(dir.path().join("archive"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a cluster's archive"), "{stderr}");
    // A position of another process is waited for too, and a process that does not exist is refused.
    let r = client().get(format!("{}/api/v1/devices?after=7:1", cluster[0].url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("no process 7"));
    // Issue 16, 12: a position another process never acknowledged is a 400 at once (it waited, then answered 503
    // with this process's position).
    let started = std::time::Instant::now();
    let r = client().get(format!("{}/api/v1/devices?after=1:999999", cluster[0].url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("beyond the last log position process 1 acknowledged (1:"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4), "answered without waiting for --read-wait");
    for s in cluster {
        s.kill9();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_kill_9_the_cluster_stops_and_restarts_with_every_reading_once() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), 3);
    let mut cluster = start_cluster(dir.path(), &hosts, 3);
    let all = requests();
    let (before, after) = all.split_at(15);
    for (p, body) in before {
        post_position(&cluster[*p], body).await;
    }
    cluster.remove(1).kill9();
    // The others notice and stop: a timely cluster stops as a whole.
    for s in &mut cluster {
        let status = s.wait_exit(Duration::from_secs(30)).expect("a peer's death stops the process");
        assert_eq!(status.code(), Some(70), "{}", s.log_text());
        assert!(s.log_text().contains("the cluster stops as a whole"));
    }
    drop(cluster);
    let cluster = start_cluster(dir.path(), &hosts, 3);
    let mut positions = Vec::new();
    for (p, body) in after {
        positions.push(post_position(&cluster[*p], body).await);
    }
    let single = start_single(dir.path());
    for (_, body) in &all {
        post_position(&single, body).await;
    }
    let want = answers(&single, &[], 9).await;
    for (p, s) in cluster.iter().enumerate() {
        assert_eq!(answers(s, &positions, 9).await, want, "process {p} after the restart");
    }
    for s in cluster {
        s.kill9();
    }
}

#[test]
fn a_process_whose_peers_never_come_gives_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // The hosts given inline this time (`--cluster-hosts`, also WEIR_CLUSTER_HOSTS) instead of a file.
    let hosts = free_addresses(3).join(",");
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "off",
            "--pg-listen",
            "off",
            "--process",
            "0",
            "--cluster-connect-timeout",
            "2s",
        ])
        .arg("--archive-url")
        .arg(dir.path().join("archive"))
        .arg("--cluster-hosts")
        .arg(&hosts)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("waiting for cluster peers") || stderr.contains("joining the cluster"), "{stderr}");
    assert!(stderr.contains("still missing process 1 at") && stderr.contains("process 2 at"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_cluster_without_a_shared_archive_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--pg-listen", "off", "--process", "0"])
        .args(["--cluster-hosts", "127.0.0.1:1,127.0.0.1:2"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pass the same --archive-url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_weirs_archive_is_not_taken_for_a_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let single = start_single(dir.path());
    post_position(&single, &lines(0, 0..10)).await;
    assert!(single.stop().success(), "stopping flushes the archive");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--pg-listen", "off", "--process", "0"])
        .args(["--cluster-hosts", "127.0.0.1:1,127.0.0.1:2", "--archive-url"])
        .arg(dir.path().join("single/archive"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("are not interchangeable"), "{stderr}");
}
