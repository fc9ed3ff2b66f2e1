//! The dashboard in a real browser: the real server with readings in it, the page opened in headless Chromium
//! (Debian's, installed by `scripts/install-chromium.sh` when missing) and driven over WebDriver by
//! `scripts/browser_test.py`: the latest value, a chart point that the live feed adds, a SQL result, an upload's
//! per-line error report, and the API-key prompt. Screenshots go to `$WEIR_SCREENSHOTS` (default: a temporary
//! directory); the README's are in `docs/screenshots/`, taken by the same script.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn now_minus(secs: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    chrono_like(now - secs, 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_live_data_runs_sql_and_reports_upload_errors_in_chromium() {
    let install = Command::new(root().join("scripts/install-chromium.sh")).status().unwrap();
    assert!(install.success(), "scripts/install-chromium.sh failed");
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start(&dir.path().join("data"), &["--api-key", "dash-key", "--expected-interval", "speed=1m,fuel=1m"]);
    // The page and its files need no key (the page asks for one); the API does.
    for path in ["/", "/dashboard/app.js", "/dashboard/style.css"] {
        let r = client().get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = client().get(format!("{}/api/v1/devices", server.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let mut lines = Vec::new();
    for (i, secs) in [420u64, 360, 300, 240, 180].into_iter().enumerate() {
        lines.push(format!(
            r#"{{"sensor":"speed","value":{},"timestamp":"{}","device":"truck-7"}}"#,
            40.0 + i as f64,
            now_minus(secs)
        ));
        lines.push(format!(
            r#"{{"sensor":"fuel","value":{},"timestamp":"{}","device":"truck-7"}}"#,
            70.0 - i as f64,
            now_minus(secs)
        ));
    }
    lines.push(format!(r#"{{"sensor":"speed","value":55.5,"timestamp":"{}","device":"truck-7"}}"#, now_minus(120)));
    let r = client()
        .post(format!("{}/ingest", server.url))
        .basic_auth("dash-key", Some(""))
        .header("content-type", NDJSON)
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let shots = std::env::var("WEIR_SCREENSHOTS").map(std::path::PathBuf::from).unwrap_or(dir.path().join("shots"));
    let url = server.url.clone();
    let shots_dir = shots.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(root().join("scripts/browser_test.py"))
            .args(["--url", &url, "--api-key", "dash-key", "--screenshots"])
            .arg(&shots_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed:\n{text}");
    for shot in ["dashboard.png", "dashboard-sql.png", "dashboard-phone.png"] {
        assert!(shots.join(shot).exists(), "{shot} in {}", shots.display());
    }
    drop(server);
}
