//! Issue 20, 5: the open sensor set. With `--sensors any` every name that follows the open rule is a sensor — in
//! the statistics, SQL, `/api/v1/devices` and the latest values, across a restart — names are kept apart however
//! alike they look, and `--max-series` bounds the series they start.

mod support;

use support::*;

/// Posts an NDJSON body; returns the status and the JSON answer.
async fn post(s: &Server, lines: &[String]) -> (u16, serde_json::Value) {
    let r = client()
        .post(format!("{}/ingest?verbose=true", s.url))
        .header("content-type", NDJSON)
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `(sensor, value)` of `device`'s latest values, in the order they are answered.
async fn latest(s: &Server, device: &str) -> Vec<(String, f64)> {
    let body = get_json(s, &format!("/api/v1/latest?device={device}")).await;
    let values = body["latest"].as_array().unwrap_or_else(|| panic!("latest values: {body}"));
    values.iter().map(|v| (v["sensor"].as_str().unwrap().to_owned(), v["value"].as_f64().unwrap())).collect()
}

fn line(sensor: &str, value: f64, second: u64, device: &str) -> String {
    let t = chrono_like(1_795_000_000 + second, 0);
    format!(r#"{{"sensor":"{sensor}","value":{value},"timestamp":"{t}","device":"{device}"}}"#)
}

/// What a user asks of a server holding the readings of the first test, before and after a restart.
async fn check(s: &Server) {
    let want: Vec<(String, f64)> =
        [("Speed", 3.5), ("cpu.usage_idle", 0.5), ("mem-free", 2.5), ("node:load1", 1.5), ("speed", 7.0)]
            .map(|(n, v)| (n.to_owned(), v))
            .to_vec();
    assert_eq!(latest(s, "host-1").await, want, "named sensors, by name");
    let host2 = latest(s, "host-2").await;
    assert_eq!(host2, vec![("usage_system".to_owned(), 2.0), ("usage_user".to_owned(), 1.5)]);
    let series = get_json(s, "/api/v1/series?device=host-1&sensor=node:load1&window=1m").await;
    assert_eq!(series["windows"].as_array().map(Vec::len), Some(1), "{series}");
    assert_eq!(series["windows"][0]["count"], 1, "{series}");
    let devices = get_json(s, "/api/v1/devices").await;
    let sensors: Vec<(String, u64)> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"].as_str().unwrap().to_owned(), d["sensors"].as_u64().unwrap()))
        .collect();
    let want = [("host-1", 5), ("host-2", 2), ("host-3", 1)].map(|(d, n)| (d.to_owned(), n)).to_vec();
    assert_eq!(sensors, want);
    let sql = sql_json(s, "SELECT sensor, count(*) AS n FROM readings GROUP BY sensor ORDER BY sensor").await;
    let counted: Vec<(String, u64)> = sql
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["sensor"].as_str().unwrap().to_owned(), r["n"].as_u64().unwrap()))
        .collect();
    let want = [
        ("Speed", 1),
        ("cpu.usage_idle", 1),
        ("mem-free", 1),
        ("node:load1", 1),
        ("speed", 2),
        ("usage_system", 1),
        ("usage_user", 1),
        ("x", 1),
    ]
    .map(|(n, c)| (n.to_owned(), c))
    .to_vec();
    assert_eq!(counted, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn any_sensor_name_is_stored_answered_and_bounded_by_the_series_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--sensors", "any", "--max-series", "8"];
    let s = Server::start(&data, &args);

    // Names that differ only in case or punctuation are different sensors; a name outside the rule is refused on
    // its line with the reason.
    let names = ["cpu.usage_idle", "node:load1", "mem-free", "Speed", "speed"];
    let mut lines: Vec<String> =
        names.iter().enumerate().map(|(i, n)| line(n, i as f64 + 0.5, i as u64, "host-1")).collect();
    lines.push(line("has space", 1.0, 9, "host-1"));
    lines.push(line(&"x".repeat(129), 1.0, 9, "host-1"));
    let (status, body) = post(&s, &lines).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(5), Some(2)), "{body}");
    assert_eq!(body["errors"][0]["line"], 6, "{body}");
    assert!(body["errors"][0]["error"].as_str().unwrap().contains("contains ' '"), "{body}");
    assert!(body["errors"][1]["error"].as_str().unwrap().contains("129 bytes long"), "{body}");

    // Line protocol names its sensors by field key: two more series of another device.
    let r = client()
        .post(format!("{}/write?precision=s", s.url))
        .body("cpu,host=host-2 usage_user=1.5,usage_system=2 1795000010\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);

    // The eighth series is accepted, the ninth refused on its line; stored series still take readings.
    let more = [line("x", 1.0, 20, "host-3"), line("y", 1.0, 20, "host-3"), line("speed", 7.0, 30, "host-1")];
    let (status, body) = post(&s, &more).await;
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(2), Some(1)), "{status} {body}");
    assert_eq!(body["errors"][0]["line"], 2, "{body}");
    let error = body["errors"][0]["error"].as_str().unwrap();
    assert!(error.contains("series limit reached") && error.contains("\"y\""), "{error}");

    check(&s).await;
    assert!(s.stop().success());

    // After a restart the names come back from the log and the archive, and the limit still counts them.
    let s = Server::start(&data, &args);
    wait_ready(&s).await;
    check(&s).await;
    let (_, body) = post(&s, &[line("z", 1.0, 40, "host-3"), line("mem-free", 9.0, 41, "host-1")]).await;
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(1), Some(1)), "{body}");
    assert!(s.stop().success());
}

/// The configured set (the default) still refuses other names, and says how to accept them.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_set_refuses_other_names_and_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let (status, body) = post(&s, &[line("speed", 1.0, 0, "d"), line("cpu.usage_idle", 1.0, 0, "d")]).await;
    assert_eq!(status, 400, "{body}");
    let error = body["errors"][0]["error"].as_str().unwrap();
    assert!(error.contains("unknown sensor \"cpu.usage_idle\"") && error.contains("--sensors any"), "{error}");
    let r = client().get(format!("{}/api/v1/series?sensor=cpu.usage_idle", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(s.stop().success());
}
