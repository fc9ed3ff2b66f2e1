//! Scoped API keys against the real binary (issue 23, 2): every route against every scope, table-driven; a
//! device-limited write key's other devices rejected line by line; `weir keys revoke` refused without a restart.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn keys(file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN).arg("keys").args(args).arg("--file").arg(file).output().unwrap();
    assert!(out.status.success(), "weir keys {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// (method, path, body, content type, the scope it needs)
const ROUTES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "POST",
        "/ingest",
        r#"{"sensor":"speed","value":1,"timestamp":"2026-11-22T18:25:43Z","device":"truck-7"}"#,
        "application/x-ndjson",
        "write",
    ),
    ("POST", "/api/v2/write?precision=s", "t,device=truck-7 speed=1 1795000000", "text/plain", "write"),
    ("POST", "/write?precision=s", "t,device=truck-7 speed=2 1795000000", "text/plain", "write"),
    ("GET", "/api/status", "", "", "read"),
    ("GET", "/api/v1/devices", "", "", "read"),
    ("GET", "/api/statistics/latest", "", "", "read"),
    ("POST", "/api/v1/sql", "SELECT 1", "text/plain", "sql"),
];

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    request
}

#[tokio::test]
async fn every_route_against_every_scope_device_limits_and_revocation_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let mut secrets = Vec::new();
    for scope in ["write", "read", "sql", "admin"] {
        secrets.push((scope, keys(&file, &["add", &format!("only-{scope}"), "--scopes", scope])));
    }
    let truck = keys(&file, &["add", "truck-7", "--scopes", "write", "--devices", "truck-7,van-*"]);
    let listed = keys(&file, &["list"]);
    assert!(listed.contains("truck-7\twrite\ttruck-7,van-*") && !listed.contains("weir_"), "{listed}");
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&truck), "only hashes are kept");
    let file_arg = file.to_str().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--api-keys-file", file_arg, "--sensors", "speed,fuel"]);

    for (method, path, body, content_type, needs) in ROUTES {
        for (scope, secret) in &secrets {
            let mut request = client().request(method.parse().unwrap(), format!("{}{path}", s.url)).bearer_auth(secret);
            if !body.is_empty() {
                request = request.header("content-type", *content_type).body(*body);
            }
            let status = request.send().await.unwrap().status().as_u16();
            let allowed = scope == needs || *scope == "admin";
            assert!(allowed == (status < 400), "{method} {path} with a {scope} key: {status}");
            if !allowed {
                assert_eq!(status, 403, "{method} {path} with a {scope} key");
            }
        }
        let status = client().request(method.parse().unwrap(), format!("{}{path}", s.url)).bearer_auth("weir_wrong");
        assert_eq!(status.send().await.unwrap().status(), 401, "{path}");
    }

    // A device-limited key: its devices are stored, another device's lines are rejected with the reason.
    let body = [
        r#"{"sensor":"speed","value":1,"timestamp":"2026-11-22T18:25:43Z","device":"truck-7"}"#,
        r#"{"sensor":"speed","value":2,"timestamp":"2026-11-22T18:25:43Z","device":"truck-8"}"#,
        r#"{"sensor":"speed","value":3,"timestamp":"2026-11-22T18:25:43Z","device":"van-12"}"#,
        r#"{"sensor":"speed","value":4,"timestamp":"2026-11-22T18:25:44Z"}"#,
    ]
    .join("\n");
    let r = client()
        .post(format!("{}/ingest", s.url))
        .bearer_auth(&truck)
        .header("content-type", NDJSON)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!((report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(2), Some(2)), "{report}");
    let reason = report["errors"][0]["error"].as_str().unwrap();
    assert!(reason.contains("the API key truck-7 may not write device \"truck-8\""), "{reason}");
    assert_eq!(report["errors"][1]["line"], 4, "no device: the default device, not allowed either");
    let lp = client()
        .post(format!("{}/api/v2/write?precision=s", s.url))
        .bearer_auth(&truck)
        .body("t,device=truck-9 speed=5 1795000000\nt,device=van-1 speed=5 1795000000")
        .send()
        .await
        .unwrap();
    assert_eq!(lp.status(), 400);
    assert!(lp.text().await.unwrap().contains("may not write device \\\"truck-9\\\""));

    // gRPC: the same scopes and device limits.
    let mut grpc = weir_api::grpc::proto::weir_client::WeirClient::connect(s.grpc_url.clone().unwrap()).await.unwrap();
    let batch = |device: &str| {
        let reading = weir_api::grpc::proto::Reading {
            sensor: "speed".into(),
            value: Some(1.0),
            timestamp: "2026-11-22T18:25:45Z".into(),
            device: Some(device.into()),
        };
        weir_api::grpc::proto::ReadingBatch::new([reading], false)
    };
    let denied = grpc.write(with_key(batch("truck-7"), &secrets[1].1)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    let sql = weir_api::grpc::proto::SqlRequest { sql: "SELECT 1".into() };
    let denied = grpc.query(with_key(sql.clone(), &secrets[0].1)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    assert!(grpc.query(with_key(sql, &secrets[2].1)).await.is_ok());
    let ack = grpc.write(with_key(batch("van-3"), &truck)).await.unwrap().into_inner();
    assert_eq!(ack.accepted, 1);
    let ack = grpc.write(with_key(batch("truck-8"), &truck)).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.rejected_count), (0, 1));
    assert!(ack.rejected[0].reason.contains("may not write device"), "{:?}", ack.rejected);

    // Revoked: refused from the next reload on (the server watches the file), without a restart.
    keys(&file, &["revoke", "only-read"]);
    let read = &secrets[1].1;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client().get(format!("{}/api/v1/devices", s.url)).bearer_auth(read).send().await.unwrap();
        if r.status() == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the revoked key is still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = s.log_text();
    assert!(!secrets.iter().any(|(_, secret)| text.contains(secret.as_str())), "a secret in the log");
}
