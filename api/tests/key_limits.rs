//! Per-key limits against the real binary (issue 23, 3): a key over its readings a second gets 429 with
//! Retry-After (HTTP) or RESOURCE_EXHAUSTED (gRPC) and may write again once the wait has passed; a key over its
//! concurrent requests gets 429 while another key is served; refusals are counted per key name in /metrics and
//! the secret never appears there.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn keys(file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN).arg("keys").args(args).arg("--file").arg(file).output().unwrap();
    assert!(out.status.success(), "weir keys {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn body(from: u64, n: u64) -> String {
    (from..from + n).map(|i| reading("speed", i, Some("truck-1")) + "\n").collect()
}

async fn post(s: &Server, key: &str, body: String) -> reqwest::Response {
    client()
        .post(format!("{}/ingest", s.url))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_over_its_rate_or_its_concurrency_is_429_others_are_served_and_refusals_are_counted_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let slow = keys(&file, &["add", "slow", "--scopes", "write", "--readings-per-second", "200"]);
    let single = keys(&file, &["add", "single", "--scopes", "write", "--concurrent-requests", "1"]);
    let free = keys(&file, &["add", "free", "--scopes", "write,admin"]);
    let listed = keys(&file, &["list"]);
    assert!(listed.contains("slow\twrite\tany device\t200 readings/s\tserver default"), "{listed}");
    let s = Server::start(&dir.path().join("data"), &["--api-keys-file", file.to_str().unwrap()]);

    // One second's burst (200), and the request that goes into debt is still taken whole.
    assert_eq!(post(&s, &slow, body(0, 150)).await.status(), 200);
    assert_eq!(post(&s, &slow, body(150, 150)).await.status(), 200, "not in debt yet: admitted, now 100 in debt");
    let refused = post(&s, &slow, body(300, 10)).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "100 readings of debt at 200/s: {wait}");
    let text = refused.text().await.unwrap();
    assert!(text.contains("slow") && text.contains("200 readings a second"), "{text}");
    // Another key is not slowed by it.
    assert_eq!(post(&s, &free, body(1000, 500)).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(post(&s, &slow, body(300, 10)).await.status(), 200, "after Retry-After the key writes again");

    // gRPC takes from the same rate.
    let grpc = s.grpc_url.clone().unwrap();
    let mut weir = weir_api::grpc::proto::weir_client::WeirClient::connect(grpc).await.unwrap();
    let batch = |from: u64, n: u64| {
        let readings = (from..from + n).map(|i| weir_api::grpc::proto::Reading {
            sensor: "speed".into(),
            value: Some(i as f64),
            timestamp: format!("2026-11-22T{:02}:{:02}:{:02}Z", i / 3600 % 24, i / 60 % 60, i % 60),
            device: Some("truck-2".into()),
        });
        let mut request = tonic::Request::new(weir_api::grpc::proto::ReadingBatch::new(readings, false));
        request.metadata_mut().insert("x-api-key", slow.parse().unwrap());
        request
    };
    let _ = weir.write(batch(2000, 400)).await;
    let status = weir.write(batch(2400, 10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Concurrency: a request of `single` held open; a second one is refused at once; `free` is served meanwhile. The
    // held request is started anew until it is the one in (a probe that overtakes it takes the place first and
    // the held one is the refused one).
    let started = Instant::now();
    let (tx, held) = loop {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk.into_bytes()), rx))
        });
        let held = client()
            .post(format!("{}/ingest", s.url))
            .bearer_auth(&single)
            .header("content-type", "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        let held = tokio::spawn(held);
        tx.send(body(5000, 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = post(&s, &single, body(6000, 1)).await;
        if r.status() == 429 {
            assert!(r.text().await.unwrap().contains("1 requests at once"));
            assert!(!held.is_finished());
            break (tx, held);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the held request never took the key's one place");
        drop(tx);
        let _ = held.await;
    };
    assert_eq!(post(&s, &free, body(7000, 1)).await.status(), 200);
    drop(tx);
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    assert_eq!(post(&s, &single, body(8000, 1)).await.status(), 200, "its place is given back when it ends");

    // A wrong secret and a missing scope are counted too, by name; no secret is in /metrics.
    assert_eq!(post(&s, "weir_not_a_key", body(9000, 1)).await.status(), 401);
    let sql = client().post(format!("{}/api/v1/sql", s.url)).bearer_auth(&slow).body("SELECT 1").send().await.unwrap();
    assert_eq!(sql.status(), 403);
    let metrics = client().get(format!("{}/metrics", s.url)).bearer_auth(&free).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for (key, reason) in
        [("slow", "rate"), ("single", "concurrency"), ("unknown", "unknown_key"), ("slow", "missing_scope")]
    {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("weir_auth_failures_total")
                    && l.contains(&format!("key=\"{key}\""))
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no weir_auth_failures_total for {key} {reason}:\n{metrics}"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1.0, "{line}");
    }
    for secret in [&slow, &single, &free] {
        assert!(!metrics.contains(secret.as_str()), "a secret in /metrics");
    }
    assert!(!std::fs::read_to_string(&s.log).unwrap().contains(slow.as_str()), "a secret in the log");
}
