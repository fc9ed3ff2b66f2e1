//! InfluxDB line protocol (`/write`, `/api/v2/write`, `/api/v3/write_lp`) against the real binary: mapping,
//! partial writes in InfluxDB 3's shape, gzip, limits, auth; what is stored read back from the WAL.

mod support;

use std::io::Write;

use support::*;

const SENSORS: &str = "--sensors=speed,fuel,temp";

async fn post(s: &Server, path: &str, auth: Option<&str>, body: Vec<u8>, gzip: bool) -> (u16, String) {
    let mut request = client().post(format!("{}{path}", s.url)).body(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// (device, sensor, value, timestamp) of everything in the WAL, after the server stopped.
fn stored(s: Server, dir: &std::path::Path) -> Vec<(String, String, f64, String)> {
    s.stop();
    wal_dump(dir).into_iter().map(|d| (d.device, d.sensor, d.value, d.timestamp)).collect()
}

#[tokio::test]
async fn v1_v2_and_v3_store_each_numeric_field_and_answer_204() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[SENSORS]);
    let (status, body) =
        post(&s, "/write?db=fleet&precision=s", None, b"v,device=a speed=1 1700000000".to_vec(), false).await;
    assert_eq!(status, 204, "{body}");
    let v2 = "/api/v2/write?org=o&bucket=b&precision=ms";
    assert_eq!(post(&s, v2, None, b"v,host=b fuel=2i 1700000000000".to_vec(), false).await.0, 204);
    let v3 = "/api/v3/write_lp?db=fleet";
    assert_eq!(post(&s, v3, None, b"v,device=c temp=3,speed=4 1700000000000000".to_vec(), false).await.0, 204);
    let t = "2023-11-14T22:13:20Z".to_string();
    assert_eq!(
        stored(s, dir.path()),
        vec![
            ("a".into(), "speed".into(), 1.0, t.clone()),
            ("b".into(), "fuel".into(), 2.0, t.clone()),
            ("c".into(), "temp".into(), 3.0, t.clone()),
            ("c".into(), "speed".into(), 4.0, t),
        ]
    );
}

#[tokio::test]
async fn a_partial_write_stores_the_valid_lines_and_names_the_bad_ones_in_influxdb_3s_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[SENSORS]);
    let body = b"v,device=a speed=1 1\nv,device=a speed=\"fast\" 2\nnot line protocol\nv,device=a speed=3 3\n";
    let (status, text) = post(&s, "/api/v2/write", None, body.to_vec(), false).await;
    assert_eq!(status, 400);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["error"], "partial write of line protocol occurred");
    assert_eq!(json["code"], "invalid");
    assert_eq!(json["accepted"], 2);
    assert_eq!(json["data"][0]["line_number"], 2);
    assert_eq!(json["data"][0]["original_line"], "v,device=a speed=\"fast\" 2");
    assert!(json["data"][0]["error_message"].as_str().unwrap().contains("is a string"), "{text}");
    assert_eq!(json["data"][1]["line_number"], 3);
    assert!(json["message"].as_str().unwrap().contains("line 2"), "{text}");
    // v3 with accept_partial=false: nothing unless every line is valid.
    let (status, text) = post(&s, "/api/v3/write_lp?accept_partial=false", None, body.to_vec(), false).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(stored(s, dir.path()).len(), 2);
}

#[tokio::test]
async fn gzip_limits_bombs_and_bad_parameters_answer_as_ingest_does() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[SENSORS, "--max-body-bytes=4096"]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"v,device=z speed=9 1\n").unwrap();
    assert_eq!(post(&s, "/write", None, gz.finish().unwrap(), true).await.0, 204);
    let big = "v,device=a speed=1 1\n".repeat(1000).into_bytes();
    assert_eq!(post(&s, "/write", None, big, false).await.0, 413);
    let (status, text) = post(&s, "/write?precision=fortnight", None, b"v speed=1 1".to_vec(), false).await;
    assert_eq!(status, 400);
    assert!(text.contains("precision"), "{text}");
    // A gzip bomb: small on the wire, far beyond the limit once decoded.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b'#'; 16 << 20]).unwrap();
    let (status, text) = post(&s, "/api/v2/write", None, gz.finish().unwrap(), true).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--max-body-bytes"), "{text}");
    assert_eq!(stored(s, dir.path()).len(), 1);
}

#[tokio::test]
async fn each_api_version_authenticates_its_own_way() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[SENSORS, "--api-key=k1"]);
    let line = || b"v,device=a speed=1 1".to_vec();
    assert_eq!(post(&s, "/api/v2/write", None, line(), false).await.0, 401);
    assert_eq!(post(&s, "/api/v2/write", Some("Token nope"), line(), false).await.0, 401);
    assert_eq!(post(&s, "/api/v2/write", Some("Token k1"), line(), false).await.0, 204);
    assert_eq!(post(&s, "/api/v3/write_lp", Some("Bearer k1"), line(), false).await.0, 204);
    assert_eq!(post(&s, "/write?u=me&p=k1", None, line(), false).await.0, 204);
    assert_eq!(client().get(format!("{}/ping", s.url)).send().await.unwrap().status(), 204);
    assert_eq!(stored(s, dir.path()).len(), 3);
}

#[tokio::test]
async fn sensors_can_be_named_measurement_underscore_field_with_the_device_from_a_chosen_tag() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--sensors=cpu_usage,mem_usage",
            "--line-protocol-sensor=measurement_field",
            "--line-protocol-device-tags=node",
        ],
    );
    let body = b"cpu,node=n1,host=h usage=12.5 1700000000000000000\nmem,host=h usage=3 1700000000000000000\n";
    assert_eq!(post(&s, "/write", None, body.to_vec(), false).await.0, 204);
    let t = "2023-11-14T22:13:20Z".to_string();
    assert_eq!(
        stored(s, dir.path()),
        vec![("n1".into(), "cpu_usage".into(), 12.5, t.clone()), ("default".into(), "mem_usage".into(), 3.0, t)]
    );
}
