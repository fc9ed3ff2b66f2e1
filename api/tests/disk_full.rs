//! A full disk, on a small filesystem made for the test (issue 17, 17): the log fails closed — ingest answers 507
//! with `Retry-After`, not 500 — and the engine says so: `/healthz` and `/readyz` answer 503 with the reason, and
//! `weir_wal_failed` is 1. The server runs in mount and user namespaces of its own (`unshare -rm`, util-linux) on a
//! 6 MiB tmpfs mounted over its data directory.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_health_and_readiness_and_answers_507() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let probe = std::process::Command::new("unshare").args(["-rm", "true"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "this test needs `unshare -rm` (util-linux) and user namespaces to mount a small tmpfs"
    );
    let mount = format!("mount -t tmpfs -o size=6m tmpfs '{}' && exec \"$@\"", data.display());
    let wrapper = ["unshare", "-rm", "sh", "-c", &mount, "sh"];
    let s = Server::start_under(
        &wrapper,
        &data,
        &["--archive-flush-age", "100ms", "--wal-segment-bytes", "1MiB", "--keep-archived-wal"],
        &[],
    );
    let body: Vec<String> = (0..5_000).map(|n| reading("speed", n, Some("truck-full"))).collect();
    let mut answer = None;
    for round in 0..200 {
        let r = client()
            .post(format!("{}/ingest", s.url))
            .header("content-type", NDJSON)
            .body(
                body.iter().map(|l| l.replace("truck-full", &format!("truck-{round}"))).collect::<Vec<_>>().join("\n"),
            )
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            answer = Some((r.status().as_u16(), r.headers().get("retry-after").cloned(), r.text().await.unwrap()));
            break;
        }
    }
    let (status, retry_after, text) = answer.expect("the 6 MiB filesystem never filled");
    assert_eq!(status, 507, "{text}");
    assert!(retry_after.is_some(), "Retry-After");
    assert!(text.contains("disk") && text.contains("full"), "{text}");
    let health = client().get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert!(health.text().await.unwrap().contains("failing"));
    let ready = client().get(format!("{}/readyz", s.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let metrics = client().get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "weir_wal_failed 1"), "weir_wal_failed in /metrics");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.stop().success(), "the server still stops cleanly");
}
