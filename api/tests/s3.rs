//! The archive on S3: the real binary against a local S3-compatible server (moto from PyPI, installed on first use
//! by `scripts/local-s3.sh` into `$HOME/.cache/weir/tools`). Flushes, a `kill -9`, a restart, SQL and a dump, all
//! with `s3://` URLs and the credentials taken from the usual `AWS_*` environment variables.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use support::*;

const BUCKET: &str = "weir-test";
const ARCHIVE: &str = "s3://weir-test/archive";

/// A moto S3 server on a free loopback port, stopped on drop.
struct LocalS3 {
    child: Child,
    endpoint: String,
}

impl LocalS3 {
    fn start() -> LocalS3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/local-s3.sh");
        let mut child = Command::new("bash")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash runs scripts/local-s3.sh");
        // The first run installs moto from PyPI; later runs start in a second or two.
        let deadline = Instant::now() + Duration::from_secs(300);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("scripts/local-s3.sh exited with {status}: {err}");
            }
            assert!(Instant::now() < deadline, "the local S3 server did not start in 5 minutes");
            std::thread::sleep(Duration::from_millis(100));
        }
        LocalS3 { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "weir".into()),
            ("AWS_SECRET_ACCESS_KEY", "weir-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A `weir` subcommand with the S3 environment.
    fn weir(&self, args: &[&str]) -> String {
        let out = Command::new(BIN).args(args).envs(self.env()).output().unwrap();
        assert!(out.status.success(), "weir {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `weir sql --archive s3://… --format csv` straight from the bucket, with no server: the rows after the header.
    fn sql(&self, query: &str) -> Vec<String> {
        self.weir(&["sql", "--archive", ARCHIVE, "--format", "csv", query]).lines().skip(1).map(String::from).collect()
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Readings over two UTC days (2026-11-18 and -19) for three devices, distinct by (device, sensor, timestamp).
fn distinct_readings(range: std::ops::Range<u64>) -> Vec<(String, String, u64)> {
    let devices = ["truck-1", "truck-2", "truck-3"];
    range.map(|i| (devices[i as usize % 3].to_owned(), ["speed", "fuel"][(i / 3) as usize % 2].to_owned(), i)).collect()
}

fn line((device, sensor, i): &(String, String, u64), value: f64) -> String {
    let t = chrono_like(1_795_000_000 + i * 37, 0); // 37 s apart: 3 000 readings cover about 31 hours
    format!(r#"{{"sensor":"{sensor}","value":{value},"timestamp":"{t}","device":"{device}"}}"#)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_on_s3_is_exactly_once_across_a_crash_and_is_queried_and_dumped() {
    let s3 = LocalS3::start();
    let created = client().put(format!("{}/{BUCKET}", s3.endpoint)).send().await.unwrap();
    assert!(created.status().is_success(), "create bucket: {}", created.status());
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--archive-url", ARCHIVE, "--archive-flush-age", "50ms"];

    // First run: 2 000 readings, then the first 200 again with other values (duplicates: the first write wins).
    let first = distinct_readings(0..2000);
    let server = Server::start_with_env(&data, &args, &env);
    let mut lines: Vec<String> = first.iter().map(|r| line(r, r.2 as f64 + 0.5)).collect();
    lines.extend(first[..200].iter().map(|r| line(r, -1.0)));
    ingest_lines(&server, &lines).await;
    wait_for("the first run in S3", || s3.sql("SELECT count(*) FROM readings") == ["2000"]);
    server.kill9();

    // Second run after the crash: 1 000 new readings and 300 replayed old ones.
    let second = distinct_readings(2000..3000);
    let server = Server::start_with_env(&data, &args, &env);
    let mut lines: Vec<String> = second.iter().map(|r| line(r, r.2 as f64 + 0.5)).collect();
    lines.extend(first[1000..1300].iter().map(|r| line(r, -2.0)));
    ingest_lines(&server, &lines).await;
    wait_for("the second run in S3", || s3.sql("SELECT count(*) FROM readings") == ["3000"]);
    assert!(server.stop().success());

    // Exactly once, first write wins, per day as computed here.
    let all: Vec<_> = first.iter().chain(&second).collect();
    let expected_sum: f64 = all.iter().map(|r| r.2 as f64 + 0.5).sum();
    let got = s3.sql("SELECT count(DISTINCT (device, sensor, timestamp)), sum(value), min(value) FROM readings");
    let got: Vec<f64> = got[0].split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(got, [3000.0, expected_sum, 0.5]);
    let mut per_day: BTreeMap<String, usize> = BTreeMap::new();
    for r in &all {
        let l = line(r, 0.0);
        let day = l.split("\"timestamp\":\"").nth(1).unwrap()[..10].to_owned();
        *per_day.entry(day).or_default() += 1;
    }
    let got = s3.sql("SELECT date, count(*) FROM readings GROUP BY date ORDER BY date");
    let want: Vec<String> = per_day.iter().map(|(d, n)| format!("{d},{n}")).collect();
    assert_eq!(got, want);

    // The dump of the first day, written to and read back from the bucket.
    let (day, count) = per_day.iter().next().unwrap();
    let out = s3.weir(&["dump", "--date", day, "--archive", ARCHIVE]);
    assert!(out.contains(&format!("{count} readings")), "{out}");
    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(&s3.endpoint)
        .with_allow_http(true)
        .with_access_key_id("weir")
        .with_secret_access_key("weir-secret")
        .with_region("us-east-1")
        .build()
        .unwrap();
    let path = object_store::path::Path::from(format!("archive/dumps/{day}.json.gz"));
    let gz = bucket.get(&path).await.unwrap().bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    assert_eq!(text.lines().count(), *count);
    assert_eq!(s3.sql(&format!("SELECT count(*) FROM readings WHERE date = '{day}'")), [count.to_string()]);
}
