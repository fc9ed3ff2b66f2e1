//! `--spawn`: a fresh Weir on a temporary data directory, and what it costs while it is loaded (RSS and CPU from
//! `/proc`), so that one command measures a known configuration from an empty state.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::args::Args;

/// How long Weir may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long Weir may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two samples of RSS and CPU.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Linux reports CPU time in clock ticks of 1/100 s (`USER_HZ`, the same on every architecture Weir runs on).
const TICKS_PER_SECOND: f64 = 100.0;
/// What `weir serve` prints on stdout once it listens.
const LISTENING: &str = "weir listening on ";

/// A running `weir serve` with its temporary data directory.
pub struct SpawnedWeir {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl SpawnedWeir {
    /// Starts `weir serve --listen 127.0.0.1:0 --data-dir <temp>` and waits for the address it prints.
    pub fn start(args: &Args, sensors: &[String]) -> anyhow::Result<Self> {
        let bin = weir_binary(args)?;
        let dir = tempfile::Builder::new().prefix("weir-loadgen-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("weir.log"))?;
        let mut command = Command::new(&bin);
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--pg-listen")
            .arg("off")
            .arg("--data-dir")
            .arg(dir.path().join("data"));
        if sensors.len() > weir_pipeline::reading::DEFAULT_SENSORS.len() {
            command.arg("--sensors").arg(sensors.join(","));
        }
        if let Some(key) = &args.api_key {
            command.arg("--api-key").arg(key);
        }
        command.args(&args.weir_args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = command.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut weir = SpawnedWeir { child, url: String::new(), dir };
        match wait_for_address(stdout) {
            Some(url) => weir.url = url,
            None => anyhow::bail!(
                "{} did not print its address within {START_TIMEOUT:?}; its log:\n{}",
                bin.display(),
                weir.log_tail()
            ),
        }
        eprintln!("spawned {} (pid {}) at {} on {}", bin.display(), weir.pid(), weir.url, weir.dir.path().display());
        Ok(weir)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops Weir with SIGTERM and waits for it (SIGKILL after [`STOP_TIMEOUT`]); fails if it did not exit cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "weir exited with {status}; its log:\n{}", self.log_tail());
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                anyhow::bail!("weir did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of Weir's log (its stderr), for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("weir.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for SpawnedWeir {
    /// Never leave a Weir behind (on an error before [`SpawnedWeir::stop`]).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `--weir-bin`, else `weir` next to this executable.
fn weir_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let bin = match &args.weir_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("weir"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "no weir binary at {} (build it with `cargo build --release -p weir-api --bin weir`, or pass --weir-bin / WEIR_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// Reads Weir's stdout until it prints its address; keeps draining it afterwards so Weir never blocks on it.
fn wait_for_address(stdout: impl Read + Send + 'static) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.trim().strip_prefix(LISTENING) {
                let _ = tx.send(url.trim_end_matches('/').to_owned());
            }
        }
    });
    rx.recv_timeout(START_TIMEOUT).ok()
}

/// Weir's resource use during the load.
#[derive(Debug, Clone, Serialize)]
pub struct WeirUsage {
    pub rss_start_mib: f64,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
    /// CPU time (user + system) over wall time: 1.0 is one core busy all along.
    pub cpu_cores_mean: f64,
    pub samples: usize,
}

/// One reading of `/proc/PID`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    rss_kib: u64,
    cpu_ticks: u64,
}

/// Samples a process's RSS and CPU time every [`SAMPLE_EVERY`] on its own thread.
pub struct ProcSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl ProcSampler {
    pub fn start(pid: u32) -> Self {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples: Vec<Sample> = sample(&proc_dir).into_iter().collect();
            let mut next = Instant::now() + SAMPLE_EVERY;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(10)));
                if Instant::now() >= next {
                    samples.extend(sample(&proc_dir));
                    next += SAMPLE_EVERY;
                }
            }
            samples.extend(sample(&proc_dir));
            samples
        });
        ProcSampler { stop, thread }
    }

    /// Takes a last sample and sums up; `None` if `/proc` could not be read.
    pub fn stop(self) -> Option<WeirUsage> {
        self.stop.store(true, Ordering::Relaxed);
        usage(&self.thread.join().ok()?)
    }
}

fn usage(samples: &[Sample]) -> Option<WeirUsage> {
    let (first, last) = (samples.first()?, samples.last()?);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let wall = last.at.duration_since(first.at).as_secs_f64();
    let cpu = last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64 / TICKS_PER_SECOND;
    Some(WeirUsage {
        rss_start_mib: mib(first.rss_kib),
        rss_max_mib: mib(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
        rss_end_mib: mib(last.rss_kib),
        cpu_cores_mean: if wall > 0.0 { cpu / wall } else { 0.0 },
        samples: samples.len(),
    })
}

fn sample(proc_dir: &Path) -> Option<Sample> {
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    Some(Sample { at: Instant::now(), rss_kib: vm_rss_kib(&status)?, cpu_ticks: cpu_ticks(&stat)? })
}

/// `VmRSS` of `/proc/PID/status`, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `/proc/PID/stat` (fields 14 and 15), in clock ticks. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_files_are_parsed() {
        let status = "Name:\tweir\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(super::vm_rss_kib(status), Some(51234));
        let stat = "4242 (weir (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(super::cpu_ticks(stat), Some(1234 + 567));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = super::sample(std::path::Path::new("/proc/self")).expect("/proc/self is readable");
        assert!(s.rss_kib > 0);
    }
}
