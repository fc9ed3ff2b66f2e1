//! MQTT against the real binary and Debian's Mosquitto broker (installed by `scripts/install-mosquitto.sh` when
//! missing): readings published with `mosquitto_pub` at QoS 1 are stored with the topic's device; `kill -9` of Weir
//! while messages flow, then a restart, leaves every published reading stored exactly once; bad payloads are
//! counted and never block the subscription.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

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
    let install = Command::new(root().join("scripts/install-mosquitto.sh")).status().unwrap();
    assert!(install.success(), "scripts/install-mosquitto.sh failed");
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

/// Publishes each line as one QoS 1 message on `topic`.
fn publish(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

fn weir(dir: &Path, port: u16) -> Server {
    let url = format!("--mqtt-url=mqtt://127.0.0.1:{port}");
    Server::start(dir, &[&url, "--mqtt-topic=fleet/+/telemetry", "--mqtt-device-level=1", "--mqtt-client-id=weir-test"])
}

fn line(i: u64) -> String {
    format!(r#"{{"sensor":"speed","value":{i},"timestamp":"{}"}}"#, chrono_like(1_795_000_000 + i, 0))
}

/// Waits until `query`'s first row equals `expected`.
async fn wait_for(s: &Server, query: &str, expected: serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = sql_json(s, query).await;
        if got[0] == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{query}: {got} instead of {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes probes until Weir has subscribed (messages before the first subscription are not kept for it).
async fn wait_subscribed(s: &Server, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publish(port, "fleet/probe/telemetry", &[line(0)]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = sql_json(s, "SELECT count(*) AS n FROM readings WHERE device = 'probe'").await;
        if got[0]["n"].as_i64().unwrap_or(0) > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "Weir did not subscribe");
    }
}

#[tokio::test]
async fn a_kill_9_while_messages_flow_loses_nothing_and_stores_nothing_twice() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Some(weir(dir.path(), broker.port));
    wait_subscribed(s.as_ref().unwrap(), broker.port).await;
    let per_batch = 300;
    let mut sent = 0u64;
    for batch in 0..8u64 {
        let lines: Vec<String> = (0..per_batch).map(|k| line(1 + batch * per_batch + k)).collect();
        let truck = format!("fleet/truck-{}/telemetry", batch % 3);
        publish(broker.port, &truck, &lines);
        sent += per_batch;
        if batch == 2 {
            // Messages of this batch may be stored but not acknowledged: the broker sends them again.
            s.take().unwrap().kill9();
            s = Some(weir(dir.path(), broker.port));
        }
        if batch == 4 {
            s.take().unwrap().kill9(); // batch 5 is published while Weir is down: the persistent session keeps it
        }
        if batch == 5 {
            s = Some(weir(dir.path(), broker.port));
        }
    }
    let s = s.unwrap();
    let total: u64 = (1..=sent).sum();
    let query = "SELECT count(*) AS n, sum(value) AS total, count(DISTINCT device) AS devices FROM readings \
                 WHERE device LIKE 'truck-%'";
    wait_for(&s, query, serde_json::json!({"n": sent, "total": total as f64, "devices": 3})).await;
    // Once more after a while: nothing arrives twice late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_for(&s, query, serde_json::json!({"n": sent, "total": total as f64, "devices": 3})).await;
    s.stop();
}

#[tokio::test]
async fn bad_payloads_are_counted_and_never_block_the_subscription() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let s = weir(dir.path(), broker.port);
    wait_subscribed(&s, broker.port).await;
    publish(broker.port, "fleet/truck-1/telemetry", &["not json".into(), r#"{"sensor":"nosuch","value":1}"#.into()]);
    let long_device = format!("fleet/{}/telemetry", "d".repeat(300));
    publish(broker.port, &long_device, &[line(1)]);
    publish(broker.port, "fleet/truck-1/telemetry", &[line(2)]);
    wait_for(&s, "SELECT count(*) AS n FROM readings WHERE device = 'truck-1'", serde_json::json!({"n": 1})).await;
    let metrics = client().get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    let rejected = metrics
        .lines()
        .find(|l| l.starts_with("weir_mqtt_messages_total{outcome=\"rejected\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(rejected, Some(3), "{metrics}");
    let log = s.log_text();
    assert!(log.contains("not json"), "the payload's first bytes are logged");
}

#[tokio::test]
async fn line_protocol_payloads_take_the_topics_device_when_the_line_names_none() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("--mqtt-url=mqtt://127.0.0.1:{}", broker.port);
    let s = Server::start(
        dir.path(),
        &[
            &url,
            "--mqtt-topic=fleet/+/lp",
            "--mqtt-device-level=1",
            "--mqtt-format=line-protocol",
            "--mqtt-precision=s",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publish(broker.port, "fleet/probe/lp", &["v speed=0 1795000000".into()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = sql_json(&s, "SELECT count(*) AS n FROM readings WHERE device = 'probe'").await;
        if got[0]["n"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "Weir did not subscribe");
    }
    publish(
        broker.port,
        "fleet/truck-4/lp",
        &["v speed=1.5,fuel=2i 1795000001\nv,device=tagged speed=3 1795000002".into()],
    );
    let query = "SELECT device, sensor, value FROM readings WHERE device <> 'probe' ORDER BY value";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = sql_json(&s, query).await;
        let expected = serde_json::json!([
            {"device": "truck-4", "sensor": "speed", "value": 1.5},
            {"device": "truck-4", "sensor": "fuel", "value": 2.0},
            {"device": "tagged", "sensor": "speed", "value": 3.0},
        ]);
        if got == expected {
            break;
        }
        assert!(Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
