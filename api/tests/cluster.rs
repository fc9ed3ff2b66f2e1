//! Three `weir serve` processes on loopback joined by timely's cluster runtime: ingest spread over all three,
//! every process answers like a single Weir given the same input; after a `kill -9` of one process the others
//! stop too, and the restarted cluster has every acknowledged reading exactly once in its statistics.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn free_addresses(n: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

/// Starts every process of `hosts` at once (each waits for the others before it listens).
fn start_cluster(root: &Path, hosts: &Path, n: usize) -> Vec<Server> {
    let handles: Vec<_> = (0..n)
        .map(|p| {
            let (data, hosts) = (root.join(format!("data-{p}")), hosts.to_path_buf());
            std::thread::spawn(move || {
                let process = p.to_string();
                let args = ["--cluster", hosts.to_str().unwrap(), "--process", &process, "--workers", "2"];
                Server::start(&data, &args)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Device `d`'s readings `range`, one per second.
fn lines(d: usize, range: std::ops::Range<u64>) -> Vec<String> {
    range
        .map(|n| {
            let t = chrono_like(1_795_000_000 + n, 0);
            let sensor = ["speed", "fuel"][(n % 2) as usize];
            format!(
                r#"{{"sensor":"{sensor}","value":{},"timestamp":"{t}","device":"dev-{d}"}}"#,
                n as f64 * 0.5 + d as f64
            )
        })
        .collect()
}

/// Posts `body` and returns the Weir-Position it was acknowledged at.
async fn post(s: &Server, body: Vec<String>) -> String {
    let r = client().post(format!("{}/ingest", s.url)).header("content-type", NDJSON).body(body.join("\n")).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["weir-position"].to_str().unwrap().to_owned()
}

async fn get(s: &Server, path: &str) -> Value {
    let r = client().get(format!("{}{path}", s.url)).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Everything a user can ask, once `positions` are processed.
async fn answers(s: &Server, positions: &[String], devices: usize) -> Vec<Value> {
    for p in positions {
        get(s, &format!("/api/v1/devices?after={p}")).await;
    }
    let mut out = vec![get(s, "/api/v1/devices").await];
    for d in 0..devices {
        out.push(get(s, &format!("/api/v1/latest?device=dev-{d}")).await);
        for window in ["1m", "1h"] {
            out.push(get(s, &format!("/api/v1/series?sensor=speed&device=dev-{d}&window={window}")).await);
        }
    }
    out
}

/// Nine devices, each sent in three parts to three different processes; plus a repeat of one part elsewhere.
fn requests() -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for d in 0..9 {
        for c in 0..3u64 {
            out.push(((d + c as usize) % 3, lines(d, c * 100..(c + 1) * 100)));
        }
    }
    out.push((1, lines(4, 0..100)));
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
    let single = Server::start(&dir.path().join("single"), &[]);
    for (_, body) in requests() {
        post(&single, body).await;
    }
    let want = answers(&single, &[], 9).await;
    assert!(single.stop().success());

    let cluster = start_cluster(dir.path(), &hosts_file(dir.path(), 3), 3);
    let mut positions = Vec::new();
    for (p, body) in requests() {
        positions.push(post(&cluster[p], body).await);
    }
    assert!(positions.iter().all(|p| p.contains(':')), "a position names its process: {positions:?}");
    for (p, s) in cluster.iter().enumerate() {
        assert_eq!(answers(s, &positions, 9).await, want, "process {p}");
    }
    // A position of another process is waited for too, and a process that does not exist is refused.
    let r = client().get(format!("{}/api/v1/devices?after=7:1", cluster[0].url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("no process 7"));
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
        post(&cluster[*p], body.clone()).await;
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
        positions.push(post(&cluster[*p], body.clone()).await);
    }
    let single = Server::start(&dir.path().join("single"), &[]);
    for (_, body) in &all {
        post(&single, body.clone()).await;
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
        .args(["serve", "--listen", "127.0.0.1:0", "--process", "0", "--cluster-connect-timeout", "2s"])
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
