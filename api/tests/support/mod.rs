//! Starting the real `weir` binary for integration tests and talking HTTP to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_weir");

/// A running `weir serve` on 127.0.0.1 with a port chosen by the OS.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// The gRPC address (`http://127.0.0.1:PORT`), unless started with `--grpc-listen off`.
    pub grpc_url: Option<String>,
    /// The PostgreSQL protocol's address (`127.0.0.1:PORT`), unless started with `--pg-listen off`.
    pub pg_addr: Option<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `weir serve` on `data_dir` with extra arguments and waits until it listens.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        Server::start_with_env(data_dir, args, &[])
    }

    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_under(&[], data_dir, args, env)
    }

    /// Like [`Server::start_with_env`], the binary started by the program `wrapper` (with its arguments) when given:
    /// `["unshare", "-rm", …]` runs it in namespaces of its own.
    pub fn start_under(wrapper: &[&str], data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = data_dir.with_extension(format!("log.{}", std::process::id()));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(BIN);
                cmd
            }
        };
        cmd.arg("serve").arg("--data-dir").arg(data_dir);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--grpc-listen") {
            cmd.args(["--grpc-listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--pg-listen") {
            cmd.args(["--pg-listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(log_file).spawn().expect("weir starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("weir listening on ") {
                    let _ = tx.send(url.to_owned());
                }
                if let Some(url) = line.strip_prefix("weir grpc listening on ") {
                    let _ = tx.send(format!("grpc {url}"));
                }
                if let Some(addr) = line.strip_prefix("weir postgres listening on ") {
                    let _ = tx.send(format!("pg {addr}"));
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("weir did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        // The other ports follow the HTTP line, in any order.
        let (mut grpc_url, mut pg_addr) = (None, None);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            if let Some(url) = line.strip_prefix("grpc ") {
                grpc_url = Some(url.to_owned());
            } else if let Some(addr) = line.strip_prefix("pg ") {
                pg_addr = Some(addr.to_owned());
            }
        }
        Server { child, url, grpc_url, pg_addr, data_dir: data_dir.to_path_buf(), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "weir did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGHUP: reload the key file and the TLS certificate.
    pub fn sighup(&self) {
        let _ = Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status();
    }

    /// Sends SIGTERM and returns at once (see [`Server::wait_exit`]).
    pub fn sigterm(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the server process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One line of `weir wal dump`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Dumped {
    pub position: u64,
    pub device: String,
    pub sensor: String,
    pub value: f64,
    pub timestamp: String,
}

/// Everything in the log of `data_dir`, read by `weir wal dump`.
pub fn wal_dump(data_dir: &Path) -> Vec<Dumped> {
    let out = Command::new(BIN).arg("wal").arg("dump").arg("--data-dir").arg(data_dir).output().unwrap();
    assert!(out.status.success(), "wal dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A valid reading line with a distinct timestamp for each `n`.
pub fn reading(sensor: &str, n: u64, device: Option<&str>) -> String {
    let secs = 1_795_000_000 + n / 1000;
    let micros = (n % 1000) * 1000;
    let t = chrono_like(secs, micros);
    match device {
        Some(d) => format!(r#"{{"sensor":"{sensor}","value":{n}.5,"timestamp":"{t}","device":"{d}"}}"#),
        None => format!(r#"{{"sensor":"{sensor}","value":{n}.5,"timestamp":"{t}"}}"#),
    }
}

/// RFC 3339 UTC text for seconds + microseconds since the epoch.
pub fn chrono_like(secs: u64, micros: u64) -> String {
    weir_pipeline::decode::format_timestamp((secs * 1_000_000 + micros) as i64)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

pub const NDJSON: &str = "application/stream+json";

/// Posts `lines` as one NDJSON body, expects 200, and returns the `Weir-Position`.
pub async fn ingest_lines(s: &Server, lines: &[String]) -> u64 {
    let r = client()
        .post(format!("{}/ingest", s.url))
        .header("content-type", NDJSON)
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    let position = r.headers().get("weir-position").and_then(|v| v.to_str().ok()?.parse().ok());
    let status = r.status();
    assert_eq!(status, 200, "{:?}", r.text().await);
    position.expect("a Weir-Position header")
}

/// An ingest request whose body is sent in parts: the returned sender feeds it; dropping it ends the body.
pub fn streaming_post(
    url: String,
) -> (tokio::sync::mpsc::Sender<String>, tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk.into_bytes()), rx))
    });
    let request = client()
        .post(format!("{url}/ingest?verbose=true"))
        .header("content-type", NDJSON)
        .body(reqwest::Body::wrap_stream(body));
    (tx, tokio::spawn(request.send()))
}

#[allow(unused_imports)]
pub use weir_pipeline::cluster::free_addresses;

/// The start of yesterday (UTC), in seconds since the epoch: a past day, sealed soon after its parts are written.
pub fn start_of_yesterday() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    (now / 86_400 - 1) * 86_400
}

/// Posts `lines` as one NDJSON body, which must be acknowledged; returns its `Weir-Position`.
pub async fn post_position(s: &Server, lines: &[String]) -> String {
    let r = client().post(format!("{}/ingest", s.url)).header("content-type", NDJSON).body(lines.join("\n"));
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["weir-position"].to_str().unwrap().to_owned()
}

/// Waits (at most 30 s) until `/readyz` answers 200: the statistics have loaded the log and the archive.
pub async fn wait_ready(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client().get(format!("{}/readyz", s.url)).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path`, which must answer 200 with JSON.
pub async fn get_json(s: &Server, path: &str) -> serde_json::Value {
    let r = client().get(format!("{}{path}", s.url)).send().await.unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// SQL that must answer 200, as JSON rows.
pub async fn sql_json(s: &Server, query: &str) -> serde_json::Value {
    let r = client().post(format!("{}/api/v1/sql", s.url)).header("content-type", "text/plain").body(query.to_owned());
    let r = r.send().await.unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body
}
