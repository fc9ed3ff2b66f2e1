//! One data path, checked black-box against a model: whatever the order of requests, duplicates, late readings and
//! restarts (clean or `kill -9`), the archive (through SQL) and the live statistics hold exactly the first write of
//! every (device, sensor, timestamp) that was acknowledged, in acknowledgement order.
//!
//! - `restart_keeps_every_first_write_of_sensors_that_first_appear_in_later_parts`: the reproduction of a data-loss
//!   bug (readings of sensors that first appear in a later archive part were dropped after a restart).
//! - `single_process_matches_the_model_across_restarts` and `cluster_matches_the_model_across_restarts`: random
//!   request sequences with random restarts, compared with a from-scratch model after every restart and at the end.
//!   Seeded: the seed of each case is printed; `WEIR_TEST_SEED=<seed>` replays that one case, `WEIR_TEST_CASES=<n>`
//!   changes how many cases run, `WEIR_TEST_KEEP=1` keeps the data directories and logs of a failed case,
//!   `WEIR_TEST_VERBOSE=1` prints what happened at every check.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const SENSORS: [&str; 6] =
    ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];

/// A directory name with every character an object-store path percent-encodes, and more.
const ODD_NAME: &str = "odd ~#%[]{}^|<>\"\\*? name";

/// Device names chosen to look alike: only exact names may match.
const DEVICES: [&str; 4] = ["d", "d1", "D", "d-1"];

// ---------------------------------------------------------------------------------------------------------------
// Time: RFC 3339 text to and from UTC microseconds, without the code under test.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// 2026-11-20T`h`:`m`:`s`Z in microseconds.
fn at(h: i64, m: i64, s: i64) -> i64 {
    days_from_civil(2026, 11, 20) * MICROS_PER_DAY + ((h * 60 + m) * 60 + s) * 1_000_000
}

/// RFC 3339 text of `micros` written in the time zone `offset_minutes` east of UTC.
fn rfc3339(micros: i64, offset_minutes: i64) -> String {
    let local = micros + offset_minutes * 60_000_000;
    let (day, in_day) = (local.div_euclid(MICROS_PER_DAY), local.rem_euclid(MICROS_PER_DAY));
    let (y, mo, d) = civil_from_days(day);
    let secs = in_day / 1_000_000;
    let mut out = format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let frac = in_day % 1_000_000;
    if frac != 0 {
        let digits = format!("{frac:06}");
        write!(out, ".{}", digits.trim_end_matches('0')).unwrap();
    }
    if offset_minutes == 0 {
        out.push('Z');
    } else {
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        write!(out, "{sign}{:02}:{:02}", offset_minutes.abs() / 60, offset_minutes.abs() % 60).unwrap();
    }
    out
}

/// UTC microseconds of `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (what Weir writes); `None` for anything else.
fn micros_of(text: &str) -> Option<i64> {
    let t = text.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse::<i64>().ok()? };
    Some(days_from_civil(y, mo, d) * MICROS_PER_DAY + ((h * 60 + mi) * 60 + s) * 1_000_000 + frac)
}

// ---------------------------------------------------------------------------------------------------------------
// A tiny seeded generator (xorshift64*, seeded through splitmix64), so that a case replays from its seed.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.next() as usize % (i + 1));
        }
    }
}

/// The seeds to run: `WEIR_TEST_SEED` alone if set, else `default_cases` (or `WEIR_TEST_CASES`) fresh ones.
fn seeds(default_cases: usize) -> Vec<u64> {
    if let Ok(seed) = std::env::var("WEIR_TEST_SEED") {
        return vec![seed.trim().parse().expect("WEIR_TEST_SEED is a u64")];
    }
    let cases = std::env::var("WEIR_TEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default_cases);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut rng = Rng::new(now.as_nanos() as u64 ^ u64::from(std::process::id()));
    (0..cases).map(|_| rng.next() % 1_000_000_000_000).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Readings and the model.

#[derive(Debug, Clone)]
struct Reading {
    device: String,
    sensor: &'static str,
    micros: i64,
    value: f64,
    /// The time zone the timestamp is written in (minutes east of UTC); the same instant whatever it is.
    offset_minutes: i64,
}

impl Reading {
    fn line(&self) -> String {
        json!({
            "sensor": self.sensor,
            "value": self.value,
            "timestamp": rfc3339(self.micros, self.offset_minutes),
            "device": self.device,
        })
        .to_string()
    }

    fn key(&self) -> Key {
        (self.device.clone(), self.sensor.to_owned(), self.micros)
    }
}

/// (device, sensor, timestamp in µs).
type Key = (String, String, i64);

/// What a single Weir must hold: the first write of every key, in acknowledgement order.
#[derive(Default)]
struct Model {
    rows: BTreeMap<Key, f64>,
}

/// The statistics of one series over the whole day, as the model computes them.
#[derive(Clone, PartialEq)]
struct Agg {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    first: f64,
    first_micros: i64,
    last: f64,
    last_micros: i64,
}

impl std::fmt::Debug for Agg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let time = |t: i64| if t == -1 { "?".to_owned() } else { rfc3339(t, 0) };
        write!(
            f,
            "count {} sum {} min {} max {} first {} at {} last {} at {}",
            self.count,
            self.sum,
            self.min,
            self.max,
            self.first,
            time(self.first_micros),
            self.last,
            time(self.last_micros)
        )
    }
}

impl Model {
    fn acknowledged(&mut self, readings: &[Reading]) {
        for r in readings {
            self.rows.entry(r.key()).or_insert(r.value);
        }
    }

    fn series(&self) -> BTreeMap<(String, String), Agg> {
        let mut out: BTreeMap<(String, String), Agg> = BTreeMap::new();
        // Keys are sorted by timestamp within a series: the first row seen is the first, the last the last.
        for ((device, sensor, micros), &v) in &self.rows {
            out.entry((device.clone(), sensor.clone()))
                .and_modify(|a| {
                    a.count += 1;
                    a.sum += v;
                    a.min = a.min.min(v);
                    a.max = a.max.max(v);
                    a.last = v;
                    a.last_micros = *micros;
                })
                .or_insert(Agg {
                    count: 1,
                    sum: v,
                    min: v,
                    max: v,
                    first: v,
                    first_micros: *micros,
                    last: v,
                    last_micros: *micros,
                });
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP.

async fn get(url: &str) -> Result<Value, String> {
    let r = client().get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {url}: {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}: {text}"))
}

async fn sql(url: &str, query: &str) -> Result<Value, String> {
    let r = client()
        .post(format!("{url}/api/v1/sql"))
        .header("content-type", "text/plain")
        .body(query.to_owned())
        .send()
        .await
        .map_err(|e| format!("SQL {query}: {e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("SQL {query}: {e}"))?;
    if status != 200 {
        return Err(format!("SQL {query}: {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("SQL {query}: {e}: {text}"))
}

/// Posts `lines` as one NDJSON body; on 200 returns the `Weir-Position` header (`N`, or `PROCESS:N` in a cluster).
async fn post(url: &str, lines: &[String]) -> Result<String, String> {
    let r = client()
        .post(format!("{url}/ingest"))
        .header("content-type", NDJSON)
        .body(lines.join("\n"))
        .send()
        .await
        .map_err(|e| format!("POST /ingest: {e}"))?;
    let status = r.status();
    let position = r.headers().get("weir-position").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = r.text().await.unwrap_or_default();
    if status != 200 {
        return Err(format!("POST /ingest: {status}: {text}"));
    }
    position.ok_or_else(|| "POST /ingest: no Weir-Position header".to_owned())
}

/// The log position of a `Weir-Position` (`N` or `PROCESS:N`).
fn log_position(header: &str) -> u64 {
    header.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("a Weir-Position: {header:?}"))
}

/// The last WAL position the archive checkpoint of `data_dir` covers (0 when there is none yet).
fn archived_through(data_dir: &Path) -> u64 {
    std::fs::read_to_string(data_dir.join("archive-checkpoint.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["archived_through"].as_u64())
        .unwrap_or(0)
}

/// Waits (at most `timeout`) until the archive checkpoint of `data_dir` covers `position`.
async fn wait_archived(data_dir: &Path, position: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let through = archived_through(data_dir);
        if through >= position {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the archive of {} did not catch up within {timeout:?}: archived through {through}, acknowledged \
                 through {position}",
                data_dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `lines` lines of a server log, less the one line per HTTP request.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.contains("request finished")).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------------------------
// Comparing answers with the model.

/// The rows of `SELECT device, sensor, t, value`, compared with the model: everything missing, extra, repeated or
/// different (values compared bit for bit).
fn diff_rows(model: &Model, answer: &Value) -> Vec<String> {
    let Some(rows) = answer.as_array() else {
        return vec![format!("SQL answer is not an array: {answer}")];
    };
    let mut problems = Vec::new();
    let mut got: BTreeMap<Key, f64> = BTreeMap::new();
    let mut in_order = Vec::new();
    for row in rows {
        let (Some(device), Some(sensor), Some(t), Some(value)) =
            (row["device"].as_str(), row["sensor"].as_str(), row["t"].as_i64(), row["value"].as_f64())
        else {
            problems.push(format!("a row that is not (device, sensor, t, value): {row}"));
            continue;
        };
        let key = (device.to_owned(), sensor.to_owned(), t);
        in_order.push(key.clone());
        if let Some(before) = got.insert(key, value) {
            problems.push(format!("twice: {device} {sensor} {} ({before} and {value})", rfc3339(t, 0)));
        }
    }
    for (key, want) in &model.rows {
        match got.get(key) {
            None => problems.push(format!("missing: {} {} {} = {want}", key.0, key.1, rfc3339(key.2, 0))),
            Some(v) if v.to_bits() != want.to_bits() => problems.push(format!(
                "other value: {} {} {}: {v} instead of the first write {want}",
                key.0,
                key.1,
                rfc3339(key.2, 0)
            )),
            Some(_) => {}
        }
    }
    for (key, v) in &got {
        if !model.rows.contains_key(key) {
            problems.push(format!("extra: {} {} {} = {v}", key.0, key.1, rfc3339(key.2, 0)));
        }
    }
    if problems.is_empty() && !in_order.iter().eq(model.rows.keys()) {
        problems.push("rows not in ORDER BY device, sensor, t order".to_owned());
    }
    problems
}

/// One `/api/v1/series` window compared with the model's statistics of its series.
fn diff_window(device: &str, sensor: &str, want: &Agg, answer: &Value) -> Vec<String> {
    let windows = answer["windows"].as_array().cloned().unwrap_or_default();
    let [w] = windows.as_slice() else {
        return vec![format!("series {device}/{sensor}: want one 1d window, got {answer}")];
    };
    let got = Agg {
        count: w["count"].as_i64().unwrap_or(-1),
        sum: w["sum"].as_f64().unwrap_or(f64::NAN),
        min: w["min"].as_f64().unwrap_or(f64::NAN),
        max: w["max"].as_f64().unwrap_or(f64::NAN),
        first: w["first"].as_f64().unwrap_or(f64::NAN),
        first_micros: w["first_timestamp"].as_str().and_then(micros_of).unwrap_or(-1),
        last: w["last"].as_f64().unwrap_or(f64::NAN),
        last_micros: w["last_timestamp"].as_str().and_then(micros_of).unwrap_or(-1),
    };
    let mut problems = Vec::new();
    // Every value is a multiple of 1/4 well inside 2^40: every sum is exact in any order.
    if got != *want {
        problems.push(format!("series {device}/{sensor}: want {want:?}\n    got  {got:?}"));
    }
    let mean = want.sum / want.count as f64;
    match w["mean"].as_f64() {
        Some(m) if (m - mean).abs() <= 1e-9 * mean.abs().max(1.0) => {}
        other => problems.push(format!("series {device}/{sensor}: mean {other:?}, want {mean}")),
    }
    if w["start"] != "2026-11-20T00:00:00Z" || w["end"] != "2026-11-21T00:00:00Z" {
        problems.push(format!("series {device}/{sensor}: window {} – {}", w["start"], w["end"]));
    }
    problems
}

// ---------------------------------------------------------------------------------------------------------------
// Weir under test: one process, or a cluster of processes sharing one archive.

struct Weir {
    root: PathBuf,
    /// The timely hosts file of a cluster; `None` for a single process.
    hosts: Option<PathBuf>,
    processes: usize,
    servers: Vec<Server>,
    /// Each process's log file (kept across restarts: the logs are appended to).
    logs: Vec<PathBuf>,
    /// The last acknowledged `Weir-Position` of each process.
    acked: Vec<Option<String>>,
}

impl Weir {
    fn new(root: &Path, processes: usize) -> Weir {
        let hosts = (processes > 1).then(|| {
            let hosts = root.join("hosts.txt");
            std::fs::write(&hosts, free_addresses(processes).join("\n") + "\n").unwrap();
            hosts
        });
        Weir {
            root: root.to_path_buf(),
            hosts,
            processes,
            servers: Vec::new(),
            logs: Vec::new(),
            acked: vec![None; processes],
        }
    }

    fn data_dir(&self, p: usize) -> PathBuf {
        self.root.join(format!("data-{p}"))
    }

    /// Starts every process (a cluster's at once: each waits for its peers); returns the settings used.
    fn start(&mut self, rng: &mut Rng) -> String {
        assert!(self.servers.is_empty());
        let flush_rows = rng.range(1, 5).to_string();
        let workers = if self.processes == 1 { rng.range(1, 2) } else { 1 }.to_string();
        // 2026-11-20 is a past day: sealed soon after each flush, or (grace of a year) never — its parts compacted
        // in tiers as they come instead — so that restarts find several parts of the day (more often alone, where
        // the parts are what a restart rebuilds from; more often sealed in a cluster, where each day's sealed file
        // is loaded by the process owning the day).
        let seal: &[&str] = if rng.chance(if self.processes == 1 { 30 } else { 50 }) {
            &["--seal-interval", "200ms"]
        } else {
            &["--seal-grace", "8760h", "--seal-interval", "200ms"]
        };
        let mut args: Vec<String> = ["--archive-flush-rows", &flush_rows, "--archive-flush-age", "50ms"]
            .into_iter()
            .chain(seal.iter().copied())
            .chain(["--workers", &workers])
            .map(str::to_owned)
            .collect();
        if let Some(hosts) = &self.hosts {
            let archive = self.root.join("archive").display().to_string();
            args.extend(["--cluster".into(), hosts.display().to_string(), "--archive-url".into(), archive]);
        }
        let handles: Vec<_> = (0..self.processes)
            .map(|p| {
                let (data, mut args) = (self.data_dir(p), args.clone());
                if self.hosts.is_some() {
                    args.extend(["--process".into(), p.to_string()]);
                }
                std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Server::start(&data, &args)
                })
            })
            .collect();
        self.servers = handles.into_iter().map(|h| h.join().expect("weir starts")).collect();
        self.logs = self.servers.iter().map(|s| s.log.clone()).collect();
        format!("--archive-flush-rows {flush_rows} --workers {workers} {}", seal.join(" "))
    }

    /// SIGTERM to every process, each must exit 0 — having decided everything acknowledged, and (in a cluster)
    /// with every process's statistics stopping together, not at a timeout.
    fn stop(&mut self) -> Result<(), String> {
        const UNCLEAN: [&str; 3] =
            ["did not catch up with the cluster", "did not stop within", "not every process of the cluster announced"];
        let count = |log: &PathBuf| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            UNCLEAN.iter().map(|warning| text.matches(warning).count()).sum::<usize>()
        };
        let before: Vec<usize> = self.logs.iter().map(count).collect();
        for s in &self.servers {
            s.sigterm();
        }
        let mut problems = Vec::new();
        for (p, mut s) in std::mem::take(&mut self.servers).into_iter().enumerate() {
            match s.wait_exit(Duration::from_secs(30)) {
                Some(status) if status.success() => {}
                other => problems.push(format!("process {p} after SIGTERM: {other:?}")),
            }
        }
        for (p, log) in self.logs.iter().enumerate() {
            if count(log) > before.get(p).copied().unwrap_or(0) {
                problems
                    .push(format!("process {p} stopped at a timeout, not together (one of {UNCLEAN:?} in its log)"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }

    /// `kill -9` of one process; in a cluster the others must exit with status 70.
    fn crash(&mut self, victim: usize) -> Result<(), String> {
        let mut servers = std::mem::take(&mut self.servers);
        servers.remove(victim).kill9();
        let mut problems = Vec::new();
        for mut s in servers {
            match s.wait_exit(Duration::from_secs(30)) {
                Some(status) if status.code() == Some(70) => {}
                other => {
                    problems.push(format!("a peer of the killed process {victim}: {other:?} instead of status 70"));
                    s.kill9();
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }

    /// `weir dump` of the test's day beside the running processes: it must refuse (exit 1, naming the running
    /// sealer) and change nothing.
    fn dump_is_refused(&self) -> Vec<String> {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["dump", "--date", "2026-11-20"]);
        match &self.hosts {
            None => cmd.arg("--data-dir").arg(self.data_dir(0)),
            Some(_) => cmd.arg("--archive").arg(self.root.join("archive")),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(1) && !stderr.contains("panicked") {
            Vec::new()
        } else {
            vec![format!("weir dump beside a running Weir: {:?}, stderr: {stderr}", out.status)]
        }
    }

    fn url(&self, p: usize) -> &str {
        &self.servers[p].url
    }

    /// The `?after=` of every process's last acknowledged position.
    fn afters(&self) -> Vec<String> {
        self.acked.iter().flatten().cloned().collect()
    }

    /// Everything that differs from `model`, asking the statistics at `q_stats` and SQL at `q_sql`.
    async fn check(&self, model: &Model, q_stats: usize, q_sql: usize) -> Vec<String> {
        let mut problems = Vec::new();
        // The live statistics, once every acknowledged position is processed.
        let stats = self.url(q_stats);
        for after in self.afters() {
            if let Err(e) = get(&format!("{stats}/api/v1/devices?after={after}")).await {
                problems.push(format!("read-your-writes at process {q_stats}: {e}"));
            }
        }
        let series = model.series();
        let mut want_devices: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
        for ((device, _), agg) in &series {
            let e = want_devices.entry(device).or_insert((0, i64::MIN));
            e.0 += 1;
            e.1 = e.1.max(agg.last_micros);
        }
        let want_devices: Vec<Value> = want_devices
            .iter()
            .map(|(d, (n, last))| json!({"device": d, "sensors": n, "last_timestamp": rfc3339(*last, 0)}))
            .collect();
        match get(&format!("{stats}/api/v1/devices")).await {
            Ok(v) => {
                // Timestamps compared as instants, whatever their spelling.
                let norm = |rows: &Value| -> Vec<(String, i64, i64)> {
                    rows.as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            (
                                r["device"].as_str().unwrap_or("?").to_owned(),
                                r["sensors"].as_i64().unwrap_or(-1),
                                r["last_timestamp"].as_str().and_then(micros_of).unwrap_or(-1),
                            )
                        })
                        .collect()
                };
                if norm(&v["devices"]) != norm(&Value::from(want_devices.clone())) {
                    problems.push(format!("devices: want {}\n    got  {}", json!(want_devices), v["devices"]));
                }
            }
            Err(e) => problems.push(e),
        }
        for ((device, sensor), agg) in &series {
            let url = format!(
                "{stats}/api/v1/series?device={}&sensor={sensor}&window=1d&from=2026-11-20T00:00:00Z&\
                 to=2026-11-21T00:00:00Z",
                url_escape(device)
            );
            match get(&url).await {
                Ok(v) => problems.extend(diff_window(device, sensor, agg, &v)),
                Err(e) => problems.push(e),
            }
        }
        for device in DEVICES {
            // Values and instants as text: compared exactly, readable in a failure.
            let want: BTreeMap<&str, String> = series
                .iter()
                .filter(|((d, _), _)| d == device)
                .map(|((_, s), a)| (s.as_str(), format!("{} at {}", a.last, rfc3339(a.last_micros, 0))))
                .collect();
            match get(&format!("{stats}/api/v1/latest?device={}", url_escape(device))).await {
                Ok(v) => {
                    let got: BTreeMap<&str, String> = v["latest"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| {
                            let time = l["timestamp"].as_str().and_then(micros_of);
                            let time = time.map_or_else(|| format!("{}?", l["timestamp"]), |t| rfc3339(t, 0));
                            let value =
                                l["value"].as_f64().map_or_else(|| format!("{}?", l["value"]), |v| v.to_string());
                            (l["sensor"].as_str().unwrap_or("?"), format!("{value} at {time}"))
                        })
                        .collect();
                    if got != want {
                        problems.push(format!("latest of {device}: want {want:?}\n    got  {got:?}"));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        // SQL at once: it sees every acknowledged reading, flushed or not.
        let query = "SELECT device, sensor, CAST(timestamp AS BIGINT) AS t, value FROM readings \
                     ORDER BY device, sensor, t";
        match sql(self.url(q_sql), query).await {
            Ok(v) => problems.extend(diff_rows(model, &v).into_iter().map(|p| format!("SQL (unflushed too): {p}"))),
            Err(e) => problems.push(e),
        }
        // SQL once the archive itself covers every acknowledged position.
        for (p, acked) in self.acked.iter().enumerate() {
            if let Some(a) = acked
                && let Err(e) = wait_archived(&self.data_dir(p), log_position(a), Duration::from_secs(15)).await
            {
                problems.push(e);
            }
        }
        match sql(self.url(q_sql), query).await {
            Ok(v) => problems.extend(diff_rows(model, &v).into_iter().map(|p| format!("SQL (archived): {p}"))),
            Err(e) => problems.push(e),
        }
        problems
    }

    /// After a failed check: the same check again a little later, to tell answers that were only early (a race)
    /// from a lasting difference.
    async fn recheck(&self, mut problems: Vec<String>, model: &Model, q_stats: usize, q_sql: usize) -> Vec<String> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = self.check(model, q_stats, q_sql).await;
        if again.is_empty() {
            problems.push(
                "-- 2 s later the same check found everything as the model has it: the answers above were early".into(),
            );
        } else if again == problems {
            problems.push("-- 2 s later the same check found the same differences: they last".into());
        } else {
            problems.push("-- 2 s later the same check found:".into());
            problems.extend(again);
        }
        problems
    }

    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for (p, log) in self.logs.iter().enumerate() {
            writeln!(out, "--- last lines of process {p}'s log ({}):\n{}", log.display(), log_tail(log, 25)).unwrap();
        }
        out
    }
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Random request sequences.

/// A random value: a multiple of 1/4, so that every sum of a few of them is exact in any order.
fn value(rng: &mut Rng) -> f64 {
    (rng.range(0, 80_000) as f64 - 40_000.0) / 4.0
}

/// One request of 1–3 groups of readings from the `sensors` in use so far, each either
/// - new: 1–3 devices at an instant (mostly new, sometimes late: one sent before), each with a non-empty subset of
///   the request's sensors — a few of them in most requests, so that archive parts hold different sets of
///   sensors; or
/// - a neighbour: 1–3 sensors at a (device, instant) sent before, so mostly keys next to existing ones (the same
///   device and instant, another sensor), sometimes an existing key again;
///
/// plus, sometimes, exact repeats of earlier keys with other values. Whatever the mix, the first write wins.
fn request(rng: &mut Rng, step: u64, sent: &[Reading], sensors: &[&'static str]) -> Vec<Reading> {
    let mut pool: Vec<&'static str> = sensors.to_vec();
    rng.shuffle(&mut pool);
    if rng.chance(80) {
        pool.truncate(rng.range(1, 3) as usize);
    }
    let mut out: Vec<Reading> = Vec::new();
    for _ in 0..rng.range(1, 3) {
        let offset_minutes = *rng.pick(&[0, 0, 60, -330]);
        if !sent.is_empty() && rng.chance(40) {
            let at = rng.pick(sent);
            let (device, micros) = (at.device.clone(), at.micros);
            let mut sensors = sensors.to_vec();
            rng.shuffle(&mut sensors);
            sensors.truncate(rng.range(1, 3) as usize);
            for sensor in sensors {
                out.push(Reading { device: device.clone(), sensor, micros, value: value(rng), offset_minutes });
            }
            continue;
        }
        // Slots 2.5 s apart from 10:00:00 (plus a fraction that depends on the slot only, so that a slot is one
        // instant); two new slots per step.
        let slot = if step > 0 && rng.chance(30) { rng.range(0, step * 2) } else { step * 2 + rng.range(0, 3) };
        let micros = at(10, 0, 0) + slot as i64 * 2_500_000 + [0, 1, 250_000, 999_999][slot as usize % 4];
        let mut devices: Vec<&str> = DEVICES.to_vec();
        rng.shuffle(&mut devices);
        for device in &devices[..rng.range(1, 3) as usize] {
            let mut sensors: Vec<&'static str> = pool.iter().copied().filter(|_| rng.chance(50)).collect();
            if sensors.is_empty() {
                sensors.push(*rng.pick(&pool));
            }
            for sensor in sensors {
                out.push(Reading { device: (*device).to_owned(), sensor, micros, value: value(rng), offset_minutes });
            }
        }
    }
    // Repeats of keys sent before (or in this very request) with other values.
    if rng.chance(40) {
        for _ in 0..rng.range(1, 3) {
            let pool: Vec<&Reading> = sent.iter().chain(&out).collect();
            let mut again = (*rng.pick(&pool)).clone();
            again.value += rng.range(1, 40) as f64 * 0.25;
            again.offset_minutes = *rng.pick(&[0, 60]);
            out.push(again);
        }
    }
    rng.shuffle(&mut out);
    out
}

/// Runs one case: random requests to random processes, with clean restarts and crashes in between, checked
/// against the model after every restart and at the end.
async fn run_case(test: &str, seed: u64, processes: usize) {
    eprintln!("{test}: seed {seed} (replay: WEIR_TEST_SEED={seed} cargo test -p weir-api --test one_data_path {test})");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut dir = tempfile::tempdir().unwrap();
    // WEIR_TEST_KEEP=1 keeps the data directories, archive and logs of a failed case for a look.
    let keep = std::env::var_os("WEIR_TEST_KEEP").is_some();
    dir.disable_cleanup(keep);
    // Every data directory and the archive sit under a name with the characters object-store paths encode (a seal
    // once deleted the wrong objects under such a name).
    let root = dir.path().join(ODD_NAME);
    std::fs::create_dir(&root).unwrap();
    let mut weir = Weir::new(&root, processes);
    let mut history: Vec<String> = Vec::new();
    let mut model = Model::default();
    let mut sent: Vec<Reading> = Vec::new();

    let fail = |weir: &Weir, history: &[String], step: usize, what: &str, problems: &[String]| -> ! {
        panic!(
            "{test}: seed {seed} (replay: WEIR_TEST_SEED={seed} cargo test -p weir-api --test one_data_path \
             {test} -- --nocapture; with WEIR_TEST_KEEP=1 the data stays in {}), step {step}: {what}:\n  {}\n\n\
             what happened:\n  {}\n\n{}",
            weir.root.display(),
            problems.join("\n  "),
            history.join("\n  "),
            weir.logs_tail()
        )
    };
    let verbose = std::env::var_os("WEIR_TEST_VERBOSE").is_some();
    let note = |history: &mut Vec<String>, what: String| {
        let line = format!("{:5.1} s  {what}", started.elapsed().as_secs_f64());
        if verbose {
            eprintln!("{line}");
        }
        history.push(line);
    };

    let settings = weir.start(&mut rng);
    note(&mut history, format!("start {settings}"));
    let steps = rng.range(6, 12) as usize;
    let mut sensor_order = SENSORS.to_vec();
    rng.shuffle(&mut sensor_order);
    for step in 0..steps {
        // Sensors come into use one after the other (devices gain sensors), so that they first appear in later
        // requests, and so in later archive parts.
        let in_use = &sensor_order[..(1 + step * 5 / 7).min(SENSORS.len())];
        let readings = request(&mut rng, step as u64, &sent, in_use);
        let lines: Vec<String> = readings.iter().map(Reading::line).collect();
        let p = rng.range(0, processes as u64 - 1) as usize;
        let position = match post(weir.url(p), &lines).await {
            Ok(position) => position,
            Err(e) => fail(&weir, &history, step, "a request was not acknowledged", &[e, lines.join("\n  ")]),
        };
        note(&mut history, format!("step {step}: {} lines to process {p}, acknowledged at {position}", lines.len()));
        // Across processes, first means first by write time, which on one machine is acknowledgement order: the
        // next request goes out at once, or (sometimes) after this one is readable.
        if processes > 1
            && rng.chance(30)
            && let Err(e) = get(&format!("{}/api/v1/devices?after={position}", weir.url(p))).await
        {
            fail(&weir, &history, step, "read-your-writes", &[e]);
        }
        weir.acked[p] = Some(position);
        model.acknowledged(&readings);
        sent.extend(readings);

        // An offline `weir dump` of the day while the server runs (and may be sealing it) must refuse: one sealer per
        // day, always.
        if rng.chance(20) {
            let problems = weir.dump_is_refused();
            note(&mut history, "weir dump --date 2026-11-20 while running: refused".into());
            if !problems.is_empty() {
                fail(&weir, &history, step, "an offline dump beside the running server", &problems);
            }
        }
        let action = rng.range(0, 99);
        if step + 1 == steps || action < 50 {
            continue;
        }
        let what = if action < 75 {
            if let Err(e) = weir.stop() {
                fail(&weir, &history, step, "clean stop", &[e]);
            }
            let settings = weir.start(&mut rng);
            format!("clean restart (SIGTERM), {settings}")
        } else {
            let victim = rng.range(0, processes as u64 - 1) as usize;
            if let Err(e) = weir.crash(victim) {
                fail(&weir, &history, step, "kill -9", &[e]);
            }
            let settings = weir.start(&mut rng);
            format!("kill -9 of process {victim} and restart, {settings}")
        };
        let (q_stats, q_sql) =
            (rng.range(0, processes as u64 - 1) as usize, rng.range(0, processes as u64 - 1) as usize);
        note(&mut history, format!("{what}; check: statistics at process {q_stats}, SQL at process {q_sql}"));
        let problems = weir.check(&model, q_stats, q_sql).await;
        if !problems.is_empty() {
            let what = format!("{what}: differs from the model ({} readings)", model.rows.len());
            fail(&weir, &history, step, &what, &weir.recheck(problems, &model, q_stats, q_sql).await);
        }
    }
    // At the end, every process answers alike.
    for q in 0..processes {
        note(&mut history, format!("at the end: check: statistics and SQL at process {q}"));
        let problems = weir.check(&model, q, q).await;
        if !problems.is_empty() {
            let problems = weir.recheck(problems, &model, q, q).await;
            let what =
                format!("at the end, asking process {q}: differs from the model ({} readings)", model.rows.len());
            fail(&weir, &history, steps, &what, &problems);
        }
    }
    if let Err(e) = weir.stop() {
        fail(&weir, &history, steps, "final clean stop", &[e]);
    }
    if keep {
        std::fs::remove_dir_all(dir.path()).unwrap();
    }
    eprintln!(
        "{test}: seed {seed}: {} requests, {} readings kept, {:.1} s",
        steps,
        model.rows.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_first_write_of_sensors_that_first_appear_in_later_parts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--archive-flush-rows", "1", "--archive-flush-age", "100ms"];
    let line = |sensor: &str, s: i64, value: f64| Reading {
        device: "d".into(),
        sensor: SENSORS.iter().find(|&&n| n == sensor).unwrap(),
        micros: at(10, 0, s),
        value,
        offset_minutes: 0,
    };
    // Four requests, each its own archive part; engine_temperature, revolution and location_latitude first
    // appear in the third and fourth parts.
    let parts = [
        vec![line("speed", 0, 1.5)],
        vec![line("fuel", 1, 2.5), line("speed", 1, 3.5)],
        vec![line("engine_temperature", 2, 4.5), line("fuel", 2, 5.5), line("revolution", 9, 6.5)],
        vec![line("location_latitude", 8, 7.5)],
    ];
    let after_restart = vec![line("location_latitude", 9, 8.5), line("revolution", 8, 9.5)];
    let mut model = Model::default();
    let s = Server::start(&data, &args);
    for part in &parts {
        let position = ingest_lines(&s, &part.iter().map(Reading::line).collect::<Vec<_>>()).await;
        model.acknowledged(part);
        wait_archived(&data, position, Duration::from_secs(10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let day = data.join("archive/readings/date=2026-11-20");
    let files = std::fs::read_dir(&day).map(|d| d.count()).unwrap_or(0);
    eprintln!("before the restart: {files} files in {}", day.display());
    let log = s.log.clone();
    assert!(s.stop().success(), "clean stop; log:\n{}", log_tail(&log, 40));

    let s = Server::start(&data, &args);
    let position = ingest_lines(&s, &after_restart.iter().map(Reading::line).collect::<Vec<_>>()).await;
    model.acknowledged(&after_restart);
    let mut problems = Vec::new();
    if let Err(e) = wait_archived(&data, position, Duration::from_secs(10)).await {
        problems.push(e);
    }
    let counts =
        sql(&s.url, "SELECT sensor, count(*) AS n FROM readings GROUP BY sensor ORDER BY sensor").await.unwrap();
    let want = json!([
        {"sensor": "engine_temperature", "n": 1},
        {"sensor": "fuel", "n": 2},
        {"sensor": "location_latitude", "n": 2},
        {"sensor": "revolution", "n": 2},
        {"sensor": "speed", "n": 2},
    ]);
    if counts != want {
        problems.push(format!("SQL counts per sensor: want {want}\n    got  {counts}"));
    }
    let rows = sql(
        &s.url,
        "SELECT device, sensor, CAST(timestamp AS BIGINT) AS t, value FROM readings ORDER BY device, sensor, t",
    )
    .await
    .unwrap();
    problems.extend(diff_rows(&model, &rows).into_iter().map(|p| format!("SQL: {p}")));
    for ((device, sensor), agg) in model.series() {
        let url = format!(
            "{}/api/v1/series?device={device}&sensor={sensor}&window=1d&from=2026-11-20T00:00:00Z&\
             to=2026-11-21T00:00:00Z&after={position}",
            s.url
        );
        match get(&url).await {
            Ok(v) => problems.extend(diff_window(&device, &sensor, &agg, &v)),
            Err(e) => problems.push(e),
        }
    }
    let log = s.log.clone();
    drop(s);
    assert!(
        problems.is_empty(),
        "after a restart, the first writes of sensors that first appeared in later parts:\n  {}\n\n\
         server log:\n{}",
        problems.join("\n  "),
        log_tail(&log, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_process_matches_the_model_across_restarts() {
    for seed in seeds(6) {
        run_case("single_process_matches_the_model_across_restarts", seed, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_matches_the_model_across_restarts() {
    for seed in seeds(2) {
        run_case("cluster_matches_the_model_across_restarts", seed, 3).await;
    }
}

#[test]
fn the_time_helpers_agree_with_each_other() {
    assert_eq!(rfc3339(at(10, 0, 0), 0), "2026-11-20T10:00:00Z");
    assert_eq!(rfc3339(at(10, 0, 0) + 250_000, 60), "2026-11-20T11:00:00.25+01:00");
    assert_eq!(rfc3339(at(0, 0, 0) + 1, -330), "2026-11-19T18:30:00.000001-05:30");
    for t in [at(0, 0, 0), at(10, 0, 2) + 999_999, at(23, 59, 59) + 1] {
        assert_eq!(micros_of(&rfc3339(t, 0)), Some(t));
    }
    assert_eq!(
        micros_of("2026-11-22T18:25:43.511Z"),
        Some(days_from_civil(2026, 11, 22) * MICROS_PER_DAY + 66_343_511_000)
    );
}
