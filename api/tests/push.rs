//! `weir push` against the real binary (issue 22): files of every format stored exactly once with rejected lines
//! named by file and line; and a chaos run — the server and the client killed with SIGKILL at random points, the
//! push resumed each time — after which every line is stored once (SQL count and sum equal the file's) and no batch
//! is in the log twice.
//!
//! `WEIR_PUSH_CHAOS_BYTES` sets the chaos file's size (default 24 MiB here; `1GiB` for the issue's run, see
//! `benches/RESULTS.md`), `WEIR_PUSH_CHAOS_KILLS` the number of kills (default 6).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn push(url: &str, state: &Path, files: &[&Path], extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("push").args(files).args(["--url", url, "--state"]).arg(state).args(extra);
    cmd
}

fn run(mut cmd: Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().unwrap();
    (status.code().unwrap_or(-1), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

/// (position, key, readings) of every keyed record in the log.
fn wal_keys(data_dir: &Path) -> Vec<(u64, String, u64)> {
    let out = Command::new(BIN).args(["wal", "keys", "--data-dir"]).arg(data_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["position"].as_u64().unwrap(), v["key"].as_str().unwrap().into(), v["readings"].as_u64().unwrap())
        })
        .collect()
}

/// Every batch is in the log once: no key twice.
fn assert_no_batch_twice(data_dir: &Path) -> u64 {
    let keys = wal_keys(data_dir);
    let mut names: Vec<&String> = keys.iter().map(|(_, k, _)| k).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "a batch was appended twice");
    keys.iter().map(|(_, _, n)| n).sum()
}

/// SQL count and sum of every reading, once the archive has caught up with the log (a large push leaves it behind
/// for a while: 503 until then).
async fn count_and_sum(s: &Server) -> (u64, f64) {
    let query = "SELECT count(*) AS n, sum(value) AS total FROM readings";
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let r = client().post(format!("{}/api/v1/sql", s.url)).header("content-type", "text/plain").body(query);
        let r = r.send().await.unwrap();
        let status = r.status();
        let rows: serde_json::Value = r.json().await.unwrap();
        if status == 200 {
            return (rows[0]["n"].as_u64().unwrap(), rows[0]["total"].as_f64().unwrap_or(0.0));
        }
        assert!(status == 503 && Instant::now() < deadline, "{status}: {rows}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn files_of_every_format_are_stored_once_with_rejected_lines_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--keep-archived-wal", "--sensors=speed,fuel"]);
    // NDJSON with a bad line 3 and a blank line; gzip NDJSON; line protocol with a bad line 2.
    let plain = dir.path().join("a.ndjson");
    let mut lines: Vec<String> = (0..1000).map(|n| reading("speed", n, Some("truck-1"))).collect();
    lines[2] = r#"{"sensor":"warp","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#.into();
    lines[500] = String::new();
    std::fs::write(&plain, lines.join("\n") + "\n").unwrap();
    let gz = dir.path().join("b.json.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for n in 1000..3000 {
        writeln!(e, "{}", reading("fuel", n, Some("truck-2"))).unwrap();
    }
    std::fs::write(&gz, e.finish().unwrap()).unwrap();
    let lp = dir.path().join("c.lp");
    std::fs::write(
        &lp,
        "truck,device=truck-3 speed=1 1795000000000000000\nnope\ntruck,device=truck-3 fuel=2 1795000000000000000\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let files = [plain.as_path(), gz.as_path(), lp.as_path()];
    let (code, out, err) = run(push(&s.url, &state, &files, &["--batch-bytes", "4KiB", "--connections", "3"]));
    assert_eq!(code, 2, "rejected lines: exit 2\n{out}\n{err}");
    assert!(err.contains(&format!("{}:3: unknown sensor \"warp\"", plain.display())), "{err}");
    assert!(err.contains(&format!("{}:2: ", lp.display())), "{err}");
    assert!(out.contains("accepted 3000 lines, rejected 2, duplicates 0"), "{out}");
    let (n, _) = count_and_sum(&s).await;
    assert_eq!(n, 998 + 2000 + 2);
    let stored = assert_no_batch_twice(&data);
    // Again, without --resume: every batch is answered from its key; nothing is stored twice.
    let (code, out, _) = run(push(&s.url, &state, &files, &["--batch-bytes", "4KiB", "--allow-rejected", "-q"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepted 3000 lines, rejected 2, duplicates 3000"), "{out}");
    assert_eq!(assert_no_batch_twice(&data), stored);
    // With --resume: nothing to send.
    let (code, out, _) = run(push(&s.url, &state, &files, &["--resume", "--allow-rejected"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("duplicates 0") && !out.contains("batches skipped 0"), "{out}");
    assert_eq!(count_and_sum(&s).await.0, n);
    // A server that refuses the key: the push stops with the reason.
    s.stop();
    let s = Server::start(&data, &["--api-key", "secret-key-123"]);
    let (code, _, err) = run(push(&s.url, &state, &[plain.as_path()], &["--api-key", "wrong"]));
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
}

/// A small random generator (xorshift), seeded and printed so that a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn size_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse::<bytesize::ByteSize>().ok()).map_or(default, |b| b.as_u64())
}

#[tokio::test]
async fn a_push_killed_with_its_server_at_random_points_stores_every_line_once() {
    let bytes = size_from_env("WEIR_PUSH_CHAOS_BYTES", 24 << 20);
    let kills = std::env::var("WEIR_PUSH_CHAOS_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(6u32);
    let seed = std::env::var("WEIR_PUSH_CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("chaos: {bytes} bytes, {kills} kills, WEIR_PUSH_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The file: distinct readings of 20 devices, integer-and-a-half values (their sum is exact).
    let file: PathBuf = dir.path().join("history.ndjson");
    let (mut lines, mut total) = (0u64, 0f64);
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut written = 0u64;
        while written < bytes {
            let line = reading("speed", lines, Some(&format!("dev-{}", lines % 20)));
            writeln!(out, "{line}").unwrap();
            written += line.len() as u64 + 1;
            total += lines as f64 + 0.5;
            lines += 1;
        }
    }
    let listen = free_addresses(1).remove(0);
    let args = ["--listen", &listen, "--keep-archived-wal", "--archive-flush-age", "1s", "--sql-timeout", "10m"];
    let url = format!("http://{listen}");
    let state = dir.path().join("state");
    let client = |resume: bool| -> Child {
        let mut cmd = push(&url, &state, &[file.as_path()], &["-q", "--batch-bytes", "256KiB", "--connections", "3"]);
        if resume {
            cmd.arg("--resume");
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    };
    let mut server = Server::start(&data, &args);
    let mut pusher = client(false);
    // Kills spread over the push: the larger the file, the longer between them.
    let spread = (bytes / (96 << 20)).max(1);
    for kill in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(2500 * spread)));
        if kill % 2 == 0 {
            // The server dies mid-push; the client retries until it is back.
            server.kill9();
            std::thread::sleep(Duration::from_millis(rng.below(1000)));
            server = Server::start(&data, &args);
        } else {
            // The client dies; it is started again with --resume.
            let _ = pusher.kill();
            let _ = pusher.wait();
            pusher = client(true);
        }
        if let Ok(Some(_)) = pusher.try_wait() {
            pusher = client(true);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = pusher.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the push did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the last push failed: {status:?}");
    wait_ready(&server).await;
    assert_eq!(count_and_sum(&server).await, (lines, total), "seed {seed}");
    assert_eq!(assert_no_batch_twice(&data), lines, "seed {seed}: readings in keyed records");
    assert_eq!(wal_dump(&data).len() as u64, lines, "seed {seed}: no reading was written twice");
    // (A debug server with a gigabyte behind it may take longer to stop than the helper waits; the checks are done.)
    server.kill9();
}
