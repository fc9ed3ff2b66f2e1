//! The record of rejected lines against the real binary (issue 24, 4): the rejected lines of every protocol (NDJSON,
//! line protocol, OTLP, remote write, gRPC, MQTT) are in `GET /api/v1/rejected` and the SQL table `rejected` (HTTP and
//! the PostgreSQL protocol) with their line number, reason, key name and source, after a clean restart and after
//! `kill -9`; no secret is ever kept; the size cap holds against a client that tries to exceed it.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use weir_api::grpc::proto::weir_client::WeirClient;
use weir_api::grpc::proto::{Reading, ReadingBatch};
use weir_api::ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};

fn add_key(file: &Path, name: &str, scopes: &str) -> String {
    let out = Command::new(BIN).args(["keys", "add", name, "--scopes", scopes, "--file"]).arg(file).output().unwrap();
    assert!(out.status.success(), "weir keys add: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Mosquitto on a free port (installed by `scripts/install-mosquitto.sh`, as the MQTT tests do).
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker() -> Broker {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    assert!(Command::new(root.join("scripts/install-mosquitto.sh")).status().unwrap().success());
    let dir = tempfile::tempdir().unwrap();
    let port: u16 = free_addresses(1)[0].rsplit(':').next().unwrap().parse().unwrap();
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(&config, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")).unwrap();
    let child = Command::new("/usr/sbin/mosquitto").arg("-c").arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker { child, port, _dir: dir }
}

/// `GET /api/v1/rejected?query` with `key`: the status and the rows.
async fn rejected(s: &Server, key: Option<&str>, query: &str) -> (u16, Vec<Value>) {
    let mut request = client().get(format!("{}/api/v1/rejected?{query}", s.url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let rows = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["rejected"].as_array().cloned());
    (status, rows.unwrap_or_default())
}

/// SQL over HTTP with `key`, as JSON rows.
async fn sql(s: &Server, key: &str, query: &str) -> Vec<Value> {
    let r = client().post(format!("{}/api/v1/sql", s.url)).bearer_auth(key).body(query.to_owned());
    let r = r.send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body.as_array().cloned().unwrap_or_default()
}

/// `(source, line, reason, key_name)` of rows, sorted.
fn summary(rows: &[Value]) -> Vec<(String, u64, String, Option<String>)> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_owned(),
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
                r["key_name"].as_str().map(str::to_owned),
            )
        })
        .collect();
    out.sort();
    out
}

/// Every file under `dir`, as bytes, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const T: &str = "2026-11-19T00:00:00Z";

fn line(sensor: &str, value: &str) -> String {
    format!(r#"{{"sensor":"{sensor}","value":{value},"timestamp":"{T}","device":"truck-7"}}"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_lines_of_every_protocol_are_kept_through_restarts_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("keys.toml");
    let writer = add_key(&file, "ingester", "write");
    let auditor = add_key(&file, "auditor", "read,sql");
    let broker = broker();
    let mqtt = format!("--mqtt-url=mqtt://127.0.0.1:{}", broker.port);
    let args = [
        "--api-keys-file",
        file.to_str().unwrap(),
        "--sensors=speed,fuel",
        "--max-line-bytes=1KiB",
        &mqtt,
        "--mqtt-topic=fleet/+/telemetry",
        "--mqtt-device-level=1",
        "--mqtt-client-id=weir-rejected-test",
    ];
    let s = Server::start(&data, &args);
    // Messages published before Weir subscribed are not kept for it: probe with valid readings first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = format!(r#"{{"sensor":"speed","value":0,"timestamp":"{T}"}}"#);
        let port = broker.port.to_string();
        let args = ["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", "fleet/probe/telemetry", "-m", &probe];
        assert!(Command::new("mosquitto_pub").args(args).status().unwrap().success());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = sql(&s, &auditor, "SELECT count(*) AS n FROM readings WHERE device = 'probe'").await;
        if n[0]["n"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "Weir did not subscribe");
    }

    // NDJSON: valid lines among bad JSON, a missing field, a non-finite value, an unknown sensor, a blank line,
    // bytes that are not UTF-8 and a line too long.
    let too_long = format!(r#"{{"sensor":"speed","note":"{}"}}"#, "x".repeat(2000));
    let mut body = [
        line("speed", "1"),
        "{bad json".to_owned(),
        r#"{"sensor":"speed","value":1}"#.to_owned(),
        line("speed", "1e999"),
        line("fuel", "2"),
        line("warp", "3"),
        String::new(),
    ]
    .join("\n")
    .into_bytes();
    body.extend_from_slice(b"\n\xff\xfe{\n");
    body.extend_from_slice(too_long.as_bytes());
    body.extend_from_slice(format!("\n{}\n", line("fuel", "4")).as_bytes());
    let r = client()
        .post(format!("{}/ingest", s.url))
        .bearer_auth(&writer)
        .header("content-type", NDJSON)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 3, "{answer}");
    let told: Vec<(u64, String)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["error"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(told.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 3, 4, 6, 8, 9], "{answer}");

    // Line protocol with the key as a v2 token: a string field, a malformed line, an unknown sensor.
    let lp =
        "t,device=a speed=1 1795000000\nt,device=a speed=\"x\" 1795000000\ngarbage\nt,device=a warp=1 1795000000\n";
    let r = client()
        .post(format!("{}/api/v2/write?precision=s", s.url))
        .header("authorization", format!("Token {writer}"))
        .body(lp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "{:?}", r.text().await);

    // OTLP (JSON) and remote write: a metric that is no sensor.
    let otlp = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.instance.id","value":{"stringValue":"truck-5"}}]},
        "scopeMetrics":[{"metrics":[{"name":"warp","gauge":{"dataPoints":[{"timeUnixNano":"1795000000000000000","asDouble":61.0}]}}]}]}]}"#;
    let r = client()
        .post(format!("{}/v1/metrics", s.url))
        .bearer_auth(&writer)
        .header("content-type", "application/json")
        .body(otlp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a partial success");
    let series = |name: &str| TimeSeries {
        labels: vec![
            Label { name: "__name__".into(), value: name.into() },
            Label { name: "instance".into(), value: "truck-3".into() },
        ],
        samples: vec![Sample { value: 1.5, timestamp: 1_795_000_000_000 }],
        histograms: Vec::new(),
    };
    let rw = prost::Message::encode_to_vec(&WriteRequest { timeseries: vec![series("speed"), series("warp")] });
    let r = client()
        .post(format!("{}/api/v1/prom/write", s.url))
        .bearer_auth(&writer)
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .body(snap::raw::Encoder::new().compress_vec(&rw).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // gRPC: the third reading has no value.
    let mut grpc = WeirClient::connect(s.grpc_url.clone().unwrap()).await.unwrap();
    let reading = |sensor: &str, value: Option<f64>| Reading {
        sensor: sensor.into(),
        value,
        timestamp: T.into(),
        device: Some("truck-8".into()),
    };
    let batch =
        ReadingBatch::new([reading("speed", Some(1.0)), reading("fuel", Some(2.0)), reading("fuel", None)], false);
    let mut request = tonic::Request::new(batch);
    request.metadata_mut().insert("x-api-key", writer.parse().unwrap());
    let ack = grpc.write(request).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.rejected_count), (2, 1));

    // MQTT: no key; the source is the topic.
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-t", "fleet/truck-9/telemetry"])
        .args(["-m", "{not json"])
        .status()
        .unwrap();
    assert!(published.success());

    let expected: Vec<(String, u64, String, Option<String>)> = {
        let k = Some("ingester".to_owned());
        let mut e = vec![
            ("/ingest".into(), 2, "undecodable".into(), k.clone()),
            ("/ingest".into(), 3, "invalid".into(), k.clone()),
            ("/ingest".into(), 4, "undecodable".into(), k.clone()),
            ("/ingest".into(), 6, "invalid".into(), k.clone()),
            ("/ingest".into(), 8, "undecodable".into(), k.clone()),
            ("/ingest".into(), 9, "too_long".into(), k.clone()),
            ("/api/v2/write".into(), 2, "invalid".into(), k.clone()),
            ("/api/v2/write".into(), 3, "undecodable".into(), k.clone()),
            ("/api/v2/write".into(), 4, "invalid".into(), k.clone()),
            ("/v1/metrics".into(), 1, "invalid".into(), k.clone()),
            ("/api/v1/prom/write".into(), 2, "invalid".into(), k.clone()),
            ("grpc".into(), 3, "invalid".into(), k.clone()),
            ("mqtt:fleet/truck-9/telemetry".into(), 1, "undecodable".into(), None),
        ];
        e.sort();
        e
    };
    // MQTT is stored asynchronously: wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let (status, rows) = rejected(&s, Some(&auditor), "limit=1000").await;
        assert_eq!(status, 200);
        if rows.len() >= expected.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(summary(&rows), expected, "{rows:#?}");
    // The reason is the one the client got, and the text the line's first bytes.
    let ndjson: Vec<&Value> = rows.iter().filter(|r| r["source"] == "/ingest").collect();
    for (number, error) in &told {
        let row = ndjson.iter().find(|r| r["line"] == *number).unwrap();
        assert_eq!(row["error"].as_str(), Some(error.as_str()), "line {number}");
    }
    let text = |source: &str, number: u64| {
        rows.iter().find(|r| r["source"] == source && r["line"] == number).unwrap()["text"].as_str().unwrap().to_owned()
    };
    assert_eq!(text("/ingest", 2), "{bad json");
    assert_eq!(text("/ingest", 8), "\u{fffd}\u{fffd}{");
    assert_eq!(text("/ingest", 9), too_long[..256]);
    assert_eq!(text("/api/v2/write", 3), "garbage");
    assert_eq!(text("mqtt:fleet/truck-9/telemetry", 1), "{not json");
    assert!(text("grpc", 3).contains(r#""device":"truck-8","sensor":"fuel""#), "{}", text("grpc", 3));
    assert!(text("/api/v1/prom/write", 2).contains("warp"));
    // Newest first, and every time within the test.
    let times: Vec<&str> = rows.iter().map(|r| r["received_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // Filters, the limit, and what is refused.
    let (_, only) = rejected(&s, Some(&auditor), "source=/api/v2/write&reason=invalid").await;
    assert_eq!(summary(&only).iter().map(|r| r.1).collect::<Vec<_>>(), [2, 4]);
    let (_, two) = rejected(&s, Some(&auditor), "limit=2").await;
    assert_eq!(two, rows[..2]);
    assert!(rejected(&s, Some(&auditor), "from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z").await.1.is_empty());
    assert_eq!(rejected(&s, Some(&auditor), "reason=nonsense").await.0, 400);
    assert_eq!(rejected(&s, Some(&auditor), "limit=10001").await.0, 400);
    assert_eq!(rejected(&s, Some(&writer), "").await.0, 403, "a write key may not read them");
    assert_eq!(rejected(&s, None, "").await.0, 401);

    // The same lines as SQL (the PostgreSQL protocol is checked below, without keys: with a key file it needs TLS).
    let query =
        "SELECT received_at, key_name, source, line, reason, error, text FROM rejected ORDER BY received_at DESC";
    let table = sql(&s, &auditor, query).await;
    assert_eq!(summary(&table), expected);
    let counted = sql(&s, &auditor, "SELECT reason, count(*) AS n FROM rejected GROUP BY reason ORDER BY reason").await;
    assert_eq!(counted[0]["reason"], "invalid");
    assert_eq!(counted[0]["n"], 7);
    // Counts by reason stay in /metrics.
    let metrics = client().get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("weir_rejected_recorded_total 13"), "{metrics}");

    // A clean restart, then kill -9 right after a rejected line was answered.
    assert!(s.stop().success());
    let s = Server::start(&data, &args);
    let (_, after) = rejected(&s, Some(&auditor), "limit=1000").await;
    assert_eq!(after, rows, "the same rows after a restart");
    let r = client()
        .post(format!("{}/ingest", s.url))
        .bearer_auth(&writer)
        .header("content-type", NDJSON)
        .body("{just before the crash")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.kill9();
    let s = Server::start(&data, &args);
    let (_, after) = rejected(&s, Some(&auditor), "limit=1000").await;
    assert_eq!(after.len(), rows.len() + 1);
    assert_eq!(after[0]["text"], "{just before the crash");
    assert_eq!(after[1..], rows[..]);
    assert_eq!(summary(&sql(&s, &auditor, query).await).len(), expected.len() + 1);

    // No secret is kept or shown anywhere.
    let kept = all_bytes(&data.join("rejected"));
    assert!(!kept.is_empty());
    for secret in [&writer, &auditor] {
        assert!(!contains(&kept, secret), "a secret is in the record's files");
        assert!(!serde_json::to_string(&after).unwrap().contains(secret.as_str()));
    }
    drop(broker);
}

#[tokio::test]
async fn a_client_cannot_grow_the_record_past_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cap = 128 << 10;
    let s = Server::start(
        &data,
        &["--rejected-max-bytes=128KiB", "--rejected-max-per-request=50", "--rejected-text-bytes=512"],
    );
    // 120 requests of 100 bad lines of 600 bytes: 7 MB of rejected lines.
    let filler = "z".repeat(580);
    for request in 0..120 {
        let body: String = (1..=100).map(|n| format!("{{r{request:04} l{n:03} {filler}\n")).collect();
        let r = client().post(format!("{}/ingest", s.url)).header("content-type", NDJSON).body(body).send();
        assert_eq!(r.await.unwrap().status(), 400);
        let on_disk: u64 =
            std::fs::read_dir(data.join("rejected")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(on_disk <= cap, "{on_disk} bytes after request {request}");
    }
    let (status, rows) = rejected(&s, None, "limit=10000").await;
    assert_eq!(status, 200);
    let requests: std::collections::BTreeSet<&str> = rows.iter().map(|r| &r["text"].as_str().unwrap()[1..6]).collect();
    assert!(requests.contains("r0119"), "the newest request is kept");
    assert!(!requests.contains("r0000"), "the oldest went: {requests:?}");
    assert!(rows.len() > 100, "the cap is used: {} rows", rows.len());
    // Each request kept its first lines, at most 50; every line is still counted.
    assert!(rows.iter().all(|r| r["line"].as_u64().unwrap() <= 50));
    assert_eq!(rows[0]["text"].as_str().unwrap().len(), 512);
    let metrics = client().get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    assert_eq!(value("weir_readings_rejected_total{reason=\"undecodable\"}"), 12_000);
    assert_eq!(value("weir_rejected_not_recorded_total{why=\"per_request_limit\"}"), 120 * 50);
    let too_large = value("weir_rejected_not_recorded_total{why=\"request_too_large\"}");
    let recorded = value("weir_rejected_recorded_total");
    assert_eq!(recorded + too_large, 120 * 50, "every line is recorded or counted");
    assert!(value("weir_rejected_bytes") <= cap);
    // The SQL table over the PostgreSQL protocol: the same rows.
    let pg = s.pg_addr.clone().unwrap();
    let (host, port) = pg.rsplit_once(':').unwrap();
    let (pg, connection) =
        tokio_postgres::connect(&format!("host={host} port={port} user=weir dbname=weir"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let row = pg.query_one("SELECT count(*), CAST(max(line) AS BIGINT), min(source) FROM rejected", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), rows.len() as i64);
    let max_line = rows.iter().map(|r| r["line"].as_i64().unwrap()).max();
    assert_eq!(Some(row.get::<_, i64>(1)), max_line, "a request's records fit one 16 KiB segment: its first lines");
    assert_eq!(row.get::<_, &str>(2), "/ingest");
}
