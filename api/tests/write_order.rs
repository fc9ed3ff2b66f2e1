//! One write order across a cluster, through the real binary (issue 16, 3 and 6): the first write of a key is the
//! one the statistics decided, in the live statistics, the sealed file, the dump and SQL, after restarts in either
//! order — also when one process's clock is 6 s behind (libfaketime, installed by `scripts/install-faketime.sh`).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A dedup horizon of one hour, so that a duplicate two hours behind its series' newest reading is admitted again
/// live and only the seal decides.
const SETTINGS: [&str; 4] = ["--dedup-horizon", "1h", "--workers", "1"];

/// Quick seals of past days, quick flushes.
const SEAL_QUICKLY: [&str; 6] = ["--seal-grace", "1s", "--seal-interval", "200ms", "--archive-flush-age", "100ms"];

/// No seals, and nothing archived unless a query asks for it: what is acknowledged stays in the logs.
const KEEP_IN_THE_LOG: [&str; 4] = ["--seal-grace", "8760h", "--archive-flush-age", "1h"];

struct Cluster {
    root: PathBuf,
    hosts: PathBuf,
    /// Environment of each process (libfaketime for a process whose clock is off).
    env: Vec<Vec<(String, String)>>,
}

impl Cluster {
    fn new(root: &Path, env: Vec<Vec<(String, String)>>) -> Cluster {
        let hosts = root.join("hosts.txt");
        std::fs::write(&hosts, free_addresses(env.len()).join("\n") + "\n").unwrap();
        Cluster { root: root.to_path_buf(), hosts, env }
    }

    fn archive(&self) -> PathBuf {
        self.root.join("archive")
    }

    /// Starts every process with `settings`, `first` a moment before the others (each waits for its peers before it
    /// listens).
    fn start(&self, first: usize, settings: &'static [&'static str]) -> Vec<Server> {
        let n = self.env.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.rotate_left(first);
        let handles: Vec<_> = order
            .iter()
            .map(|&p| {
                let (data, hosts, archive) = (self.root.join(format!("data-{p}")), self.hosts.clone(), self.archive());
                let env = self.env[p].clone();
                let handle = std::thread::spawn(move || {
                    let process = p.to_string();
                    let mut args = vec!["--cluster", hosts.to_str().unwrap(), "--process", &process];
                    args.extend(["--archive-url", archive.to_str().unwrap()]);
                    args.extend(SETTINGS);
                    args.extend(settings);
                    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    (p, Server::start_with_env(&data, &args, &env))
                });
                std::thread::sleep(Duration::from_millis(300));
                handle
            })
            .collect();
        let mut servers: Vec<(usize, Server)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        servers.sort_by_key(|(p, _)| *p);
        servers.into_iter().map(|(_, s)| s).collect()
    }
}

/// `kill -9` of one process; its peers stop too (status 70).
fn crash(mut servers: Vec<Server>, victim: usize) {
    servers.remove(victim).kill9();
    for mut s in servers {
        let status = s.wait_exit(Duration::from_secs(30));
        assert_eq!(status.and_then(|s| s.code()), Some(70), "a peer of the killed process");
    }
}

fn line(device: &str, secs: u64, value: f64) -> String {
    format!(r#"{{"sensor":"speed","value":{value},"timestamp":"{}","device":"{device}"}}"#, chrono_like(secs, 0))
}

/// The values SQL holds for the key (`device`, speed, `secs`).
async fn values_in_sql(s: &Server, device: &str, secs: u64) -> Vec<f64> {
    let query = format!(
        "SELECT value FROM readings WHERE device = '{device}' AND sensor = 'speed' \
         AND CAST(timestamp AS BIGINT) = {} ORDER BY value",
        secs * 1_000_000
    );
    sql_json(s, &query).await.as_array().unwrap().iter().map(|r| r["value"].as_f64().unwrap()).collect()
}

/// Waits until `date` is sealed with `readings` readings; returns the values the dump holds for `device` at `secs`.
async fn sealed_dump_values(
    s: &Server,
    archive: &Path,
    date: &str,
    readings: u64,
    device: &str,
    secs: u64,
) -> Vec<f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seals = sql_json(s, &format!("SELECT readings FROM seals WHERE date = '{date}'")).await;
        let parts = std::fs::read_dir(archive.join(format!("readings/date={date}"))).map(|d| d.count()).unwrap_or(0);
        if seals[0]["readings"].as_u64() == Some(readings) && parts == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{date} not sealed alone: {seals}, {parts} files");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gz = std::fs::read(archive.join(format!("dumps/{date}.json.gz"))).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    let timestamp = chrono_like(secs, 0);
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["device"] == device && v["timestamp"].as_str().is_some_and(|t| t.starts_with(&timestamp[..19])))
        .map(|v| v["value"].as_f64().unwrap())
        .collect()
}

/// Issue 16, 3: process 1 writes X = 5; a reading two hours later moves the series on; process 0 then writes X = 3
/// (behind the horizon, so the statistics admit it again and both processes archive their write). The seal that
/// first merges both parts kept the lower process's write (3); it keeps the first (5) — in the sealed file, the dump
/// and SQL, and after a restart in either order and a reseal.
#[tokio::test(flavor = "multi_thread")]
async fn a_seal_keeps_the_first_write_not_the_lower_processs() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path(), vec![Vec::new(), Vec::new()]);
    let servers = cluster.start(0, &KEEP_IN_THE_LOG);
    let day = start_of_yesterday();
    let date = chrono_like(day, 0)[..10].to_owned();
    let five = post_position(&servers[1], &[line("truck-x", day, 5.0), line("truck-x", day + 7200, 1.0)]).await;
    get_json(&servers[0], &format!("/api/v1/devices?after={five}")).await;
    let three = post_position(&servers[0], &[line("truck-x", day, 3.0)]).await;
    get_json(&servers[1], &format!("/api/v1/devices?after={three}")).await;
    // Not sealed yet: both writes are archived (SQL makes every process commit what it holds).
    assert_eq!(values_in_sql(&servers[0], "truck-x", day).await, vec![3.0, 5.0], "before the seal");
    crash(servers, 1);

    let archive = cluster.archive();
    let servers = cluster.start(1, &SEAL_QUICKLY);
    assert_eq!(sealed_dump_values(&servers[0], &archive, &date, 2, "truck-x", day).await, vec![5.0], "the dump");
    for s in &servers {
        assert_eq!(values_in_sql(s, "truck-x", day).await, vec![5.0], "SQL over the sealed day");
    }
    crash(servers, 0);

    for first in [1, 0] {
        let servers = cluster.start(first, &SEAL_QUICKLY);
        // A late reading for the day: the owner seals it again, with the sealed file's verdict.
        post_position(&servers[first], &[line("truck-x", day + 60 * (first as u64 + 1), 7.0)]).await;
        let readings = 3 + (first == 0) as u64;
        let dump = sealed_dump_values(&servers[0], &archive, &date, readings, "truck-x", day).await;
        assert_eq!(dump, vec![5.0], "the dump after a restart ({first} first) and a reseal");
        for s in &servers {
            assert_eq!(values_in_sql(s, "truck-x", day).await, vec![5.0], "SQL after a restart ({first} first)");
        }
        crash(servers, first);
    }
}

/// Issue 16, 6: process 0's clock is 6 s behind. Process 1 writes X = 5; once process 0 has seen it, process 0
/// writes X = 3 (within the horizon: the statistics drop it). Every process answers at once (no read waits for the
/// clocks) and holds 5. Nothing is archived yet, so after `kill -9` the statistics replay both logs: in either
/// order of restart the verdict stands (rounds used to take their time when fed: the replay of the process whose
/// clock was behind came first, and 3 won); then SQL and the dump hold 5 too.
#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_stands_across_restarts_in_either_order_with_a_clock_6_s_behind() {
    let install = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-faketime.sh"))
        .output()
        .unwrap();
    assert!(install.status.success(), "scripts/install-faketime.sh: {}", String::from_utf8_lossy(&install.stderr));
    let lib = String::from_utf8(install.stdout).unwrap().trim().to_owned();
    let behind = vec![
        ("LD_PRELOAD".to_owned(), lib),
        ("FAKETIME".to_owned(), "-6s".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
        ("FAKETIME_DONT_RESET".to_owned(), "1".to_owned()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path(), vec![behind, Vec::new()]);
    let servers = cluster.start(0, &KEEP_IN_THE_LOG);
    let day = start_of_yesterday();
    let date = chrono_like(day, 0)[..10].to_owned();

    let five = post_position(&servers[1], &[line("truck-y", day, 5.0)]).await;
    let started = std::time::Instant::now();
    get_json(&servers[0], &format!("/api/v1/devices?after={five}")).await;
    let three = post_position(&servers[0], &[line("truck-y", day, 3.0)]).await;
    let series = format!("/api/v1/series?device=truck-y&sensor=speed&window=1m&from={}", chrono_like(day, 0));
    live_holds_five(&servers, &[&five, &three], &series, "live").await;
    assert!(started.elapsed() < Duration::from_secs(3), "reads waited for the clocks: {:?}", started.elapsed());
    crash(servers, 0);
    for first in [0, 1] {
        let servers = cluster.start(first, &KEEP_IN_THE_LOG);
        live_holds_five(&servers, &[&five, &three], &series, &format!("after a restart, process {first} first")).await;
        crash(servers, 1 - first);
    }
    let servers = cluster.start(1, &SEAL_QUICKLY);
    live_holds_five(&servers, &[&five, &three], &series, "after the last restart").await;
    for s in &servers {
        assert_eq!(values_in_sql(s, "truck-y", day).await, vec![5.0], "SQL");
    }
    let dump = sealed_dump_values(&servers[0], &cluster.archive(), &date, 1, "truck-y", day).await;
    assert_eq!(dump, vec![5.0], "the dump");
}

/// Every process, once it has processed `positions`, holds 5 as the one value of truck-y's key in its statistics.
async fn live_holds_five(servers: &[Server], positions: &[&str], series: &str, when: &str) {
    for s in servers {
        for position in positions {
            get_json(s, &format!("/api/v1/devices?after={position}")).await;
        }
        let windows = get_json(s, series).await;
        let w = &windows["windows"][0];
        assert_eq!((w["count"].as_u64(), w["first"].as_f64()), (Some(1), Some(5.0)), "{when}: {windows}");
    }
}
