//! `POST /ingest` against the real binary: status codes, bodies, auth, gzip, limits.

mod support;

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use support::*;

async fn post(
    s: &Server,
    query: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = client().post(format!("{}/ingest{query}", s.url)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap_or_else(|e| panic!("POST /ingest{query}: {e:?}"))
}

fn position(r: &reqwest::Response) -> u64 {
    r.headers()["weir-position"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn all_valid_answers_exactly_empty_object_with_a_growing_position() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let body = format!("{}\n{}\n", reading("speed", 1, None), reading("fuel", 2, Some("truck-7")));
    let r = post(&s, "", Some(NDJSON), body).await;
    assert_eq!(r.status(), 200);
    let p1 = position(&r);
    assert_eq!(r.text().await.unwrap(), "{}");
    let r = post(&s, "", Some("application/x-ndjson; charset=utf-8"), reading("speed", 3, None)).await;
    assert_eq!(r.status(), 200);
    assert!(position(&r) > p1);
    let r = post(&s, "?verbose=true", Some(NDJSON), format!("{}\n\n\n", reading("speed", 4, None))).await;
    let p = position(&r);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"accepted": 1, "position": p}));
    drop(s);
    let dumped = wal_dump(dir.path());
    assert_eq!(dumped.len(), 4);
    assert_eq!(dumped[1].device, "truck-7");
    assert_eq!(dumped[0].device, "default");
    assert_eq!(dumped[0].value, 1.5);
}

#[tokio::test]
async fn bad_lines_are_named_and_valid_lines_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let lines = [
        reading("speed", 1, None),                                                       // 1 ok
        "{not json".to_string(),                                                         // 2 bad JSON
        r#"{"sensor":"warp","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#.into(),      // 3 unknown sensor
        r#"{"sensor":"speed","value":1}"#.into(),                                        // 4 missing timestamp
        r#"{"sensor":"speed","value":1e999,"timestamp":"2026-11-22T18:25:43Z"}"#.into(), // 5 out of range
        String::new(),                                                                   // 6 blank: skipped
        reading("fuel", 2, None),                                                        // 7 ok
        r#"{"sensor":"speed","value":"x","timestamp":"2026-11-22T18:25:43Z"}"#.into(),   // 8 wrong type
        r#"{"sensor":"speed","value":1,"timestamp":"2026-13-45T00:00:00Z"}"#.into(),     // 9 bad timestamp
    ];
    let r = post(&s, "", Some(NDJSON), lines.join("\n")).await;
    assert_eq!(r.status(), 400);
    assert!(position(&r) >= 1);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2);
    let lines_reported: Vec<u64> =
        v["errors"].as_array().unwrap().iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines_reported, vec![2, 3, 4, 5, 8, 9]);
    let reason = |i: usize| v["errors"][i]["error"].as_str().unwrap().to_owned();
    assert!(reason(0).contains("bad JSON"), "{}", reason(0));
    assert!(reason(1).contains("unknown sensor \"warp\""), "{}", reason(1));
    assert!(reason(2).contains("missing field `timestamp`"), "{}", reason(2));
    assert!(reason(3).contains("out of range"), "{}", reason(3));
    assert!(reason(4).contains("invalid type"), "{}", reason(4));
    assert!(reason(5).contains("not RFC 3339"), "{}", reason(5));
    // `invalid` holds the readings that decoded but failed validation, as the replaced system did.
    let invalid = v["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 3);
    assert_eq!(invalid[0]["sensor"], "warp");
    drop(s);
    let stored: Vec<String> = wal_dump(dir.path()).into_iter().map(|d| d.sensor).collect();
    assert_eq!(stored, vec!["speed", "fuel"]);
}

#[tokio::test]
async fn atomic_stores_nothing_unless_every_line_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--batch-rows", "2"]);
    let good: Vec<String> = (0..5).map(|n| reading("speed", n, None)).collect();
    let mut bad = good.clone();
    bad.push("garbage".into());
    let r = post(&s, "?atomic=true", Some(NDJSON), bad.join("\n")).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["errors"][0]["line"], 6);
    let r = post(&s, "?atomic=true", Some(NDJSON), good.join("\n")).await;
    assert_eq!(r.status(), 200);
    drop(s);
    let dumped = wal_dump(dir.path());
    assert_eq!(dumped.len(), 5);
    assert!(dumped.iter().all(|d| d.position == dumped[0].position), "one record: all or nothing on disk");
}

#[tokio::test]
async fn content_type_and_encoding_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    for ct in [None, Some("text/plain"), Some("application/json")] {
        let r = post(&s, "", ct, reading("speed", 1, None)).await;
        assert_eq!(r.status(), 415, "{ct:?}");
        let text = r.text().await.unwrap();
        assert!(text.contains("application/stream+json") && text.contains("application/x-ndjson"), "{text}");
    }
    let r = client()
        .post(format!("{}/ingest", s.url))
        .header("content-type", NDJSON)
        .header("content-encoding", "br")
        .body(reading("speed", 1, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = client().get(format!("{}/ingest", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

fn basic(user_pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
}

#[tokio::test]
async fn api_keys_are_basic_auth_usernames() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(dir.path(), &["--api-key", "k1"], &[]);
    let send = |auth: Option<String>| {
        let mut req =
            client().post(format!("{}/ingest", s.url)).header("content-type", NDJSON).body(reading("speed", 1, None));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let r = send(None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "no credentials provided");
    let r = send(Some(basic("nope:x"))).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "invalid api key");
    let r = send(Some(basic("k1:whatever"))).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(s);

    // Keys from the environment, comma-separated; without keys, auth is off and the log says so.
    let s = Server::start_with_env(dir.path(), &[], &[("WEIR_API_KEYS", "a,b")]);
    let r = client()
        .post(format!("{}/ingest", s.url))
        .header("content-type", NDJSON)
        .header("authorization", basic("b:"))
        .body(reading("speed", 2, None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(s);
    let open = tempfile::tempdir().unwrap();
    let s = Server::start(open.path(), &[]);
    let r = post(&s, "", Some(NDJSON), reading("speed", 1, None)).await;
    assert_eq!(r.status(), 200);
    assert!(s.log_text().contains("authentication is OFF"));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_truncated_ones_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let body: String = (0..1000).map(|n| reading("speed", n, None) + "\n").collect();
    let zipped = gzip(body.as_bytes());
    let send = |bytes: Vec<u8>| {
        client()
            .post(format!("{}/ingest?verbose=true", s.url))
            .header("content-type", NDJSON)
            .header("content-encoding", "gzip")
            .body(bytes)
            .send()
    };
    let r = send(zipped.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["accepted"], 1000);
    let r = send(zipped[..zipped.len() / 2].to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("gzip body is corrupt or truncated"), "{v}");
    let r = send(b"this is not gzip".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn limits_are_enforced_with_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s =
        Server::start(dir.path(), &["--max-line-bytes", "200", "--max-body-bytes", "4KiB", "--max-request-time", "1s"]);
    // A line over the limit is rejected; the rest of the body goes on.
    let r = post(
        &s,
        "",
        Some(NDJSON),
        format!("{}\n{}\n{}", reading("speed", 1, None), "y".repeat(300), reading("speed", 2, None)),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["errors"][0]["line"], 2);
    assert!(v["errors"][0]["error"].as_str().unwrap().contains("line too long: 300 bytes"));

    // A declared body over the limit is refused before it is read.
    let big = reading("speed", 3, None).repeat(100);
    let r = post(&s, "", Some(NDJSON), big.clone()).await;
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("--max-body-bytes"));
    // A streamed (chunked) body is stopped when it passes the limit.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..100).map(|n| Ok(reading("speed", 100 + n, None) + "\n")).collect();
    let r = post(&s, "", Some(NDJSON), reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))).await;
    assert_eq!(r.status(), 413);

    // A body that trickles in slower than the request time limit gets 408.
    let slow = futures_util::stream::unfold(0u32, |n| async move {
        if n >= 30 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(reading("speed", 1000 + n as u64, None) + "\n"), n + 1))
    });
    let r = post(&s, "", Some(NDJSON), reqwest::Body::wrap_stream(slow)).await;
    assert_eq!(r.status(), 408);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("--max-request-time"), "{v}");
}

/// A streamed body of `mib` MiB of distinct readings, sent in one request; returns the number of readings.
async fn post_streamed_body(s: &Server, mib: u64, first: u64) -> u64 {
    let line_len = reading("speed", 10_000_000, Some("truck-0001")).len() as u64 + 1;
    let lines = mib * 1024 * 1024 / line_len;
    let per_chunk = 2000u64;
    let stream = futures_util::stream::unfold(0u64, move |start| async move {
        if start >= lines {
            return None;
        }
        let end = (start + per_chunk).min(lines);
        let mut chunk = String::with_capacity(((end - start) * line_len) as usize);
        for n in start..end {
            chunk.push_str(&reading("speed", first + n, Some("truck-0001")));
            chunk.push('\n');
        }
        Some((Ok::<_, std::io::Error>(chunk), end))
    });
    let r = post(s, "?verbose=true", Some(NDJSON), reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["accepted"], lines);
    lines
}

/// A large body is streamed: the server's peak memory does not grow with the body. A 32 MiB body first brings
/// every component (ingest, statistics, archiver) to its steady state; a body four times larger must then add
/// almost nothing.
#[tokio::test]
async fn large_body_is_streamed_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    // A short dedup horizon: this test measures the ingest path, not deduplication state (which grows with the
    // readings inside the horizon by design; see the README).
    let s = Server::start(dir.path(), &["--dedup-horizon", "1s", "--archive-flush-rows", "10000"]);
    post_streamed_body(&s, 32, 10_000_000).await;
    let before = s.peak_rss_kib();
    let lines = post_streamed_body(&s, 128, 20_000_000).await;
    let after = s.peak_rss_kib();
    let grew_mib = (after.saturating_sub(before)) / 1024;
    eprintln!(
        "128 MiB body, {lines} readings, after a 32 MiB one: peak RSS {} MiB -> {} MiB (+{grew_mib} MiB)",
        before / 1024,
        after / 1024
    );
    assert!(grew_mib < 16, "peak RSS grew by {grew_mib} MiB for a body 96 MiB larger than the last");
}
