//! Durability against the real binary: `kill -9` mid-stream loses nothing acknowledged and duplicates nothing;
//! a torn log tail is repaired at start-up.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const CLIENTS: usize = 4;
const PER_REQUEST: u64 = 50;

/// Sends distinct readings until the server goes away; records the ids of acknowledged ones.
async fn push_until_gone(url: String, next_id: Arc<AtomicU64>, acked: Arc<Mutex<Vec<u64>>>) {
    let client = client();
    loop {
        let first = next_id.fetch_add(PER_REQUEST, Ordering::SeqCst);
        let ids: Vec<u64> = (first..first + PER_REQUEST).collect();
        let body: String = ids.iter().map(|&n| reading("speed", n, Some("crash-test")) + "\n").collect();
        let sent = client.post(format!("{url}/ingest")).header("content-type", NDJSON).body(body).send().await;
        match sent {
            Ok(r) if r.status() == 200 => acked.lock().unwrap().extend(ids),
            Ok(r) => panic!("unexpected status {}", r.status()),
            Err(_) => return, // killed mid-request: not acknowledged
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_readings_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let next_id = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    // Kill at several points: early, mid-stream, later; small batches and segments so kills land everywhere.
    for (round, after_ms) in [60u64, 250, 500, 900].into_iter().enumerate() {
        let s = Server::start(&data, &["--batch-rows", "7", "--wal-segment-bytes", "64KiB"]);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(push_until_gone(s.url.clone(), next_id.clone(), acked.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let before = acked.lock().unwrap().len();
        s.kill9();
        for c in clients {
            c.await.unwrap();
        }
        eprintln!("round {round}: killed after {after_ms} ms with {before} readings acknowledged so far");
    }
    let s = Server::start(&data, &[]);
    let log = s.log.clone();
    assert!(s.stop().success(), "clean shutdown exits 0; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 1000, "the test acknowledged too little to mean anything: {}", acked.len());
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for d in wal_dump(&data) {
        *seen.entry(d.value as u64).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "readings stored twice: {dups:?}");
    let lost: Vec<_> = acked.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged readings lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    eprintln!("{} acknowledged, {} in the log (the rest were in flight when killed)", acked.len(), seen.len());
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_logged_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]);
    let body: String = (0..10).map(|n| reading("fuel", n, None) + "\n").collect();
    let r = client().post(format!("{}/ingest", s.url)).header("content-type", NDJSON).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.kill9();
    // A crash mid-write leaves a partial record: a plausible header and half a payload.
    let segment = std::fs::read_dir(data.join("wal")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&segment).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 2, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9]).unwrap();
    drop(f);
    let s = Server::start(&data, &[]);
    let r = client()
        .post(format!("{}/ingest", s.url))
        .header("content-type", NDJSON)
        .body(reading("fuel", 99, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["weir-position"], "2");
    assert!(s.log_text().contains("torn tail"), "{}", s.log_text());
    drop(s);
    assert_eq!(wal_dump(&data).len(), 11);
}
