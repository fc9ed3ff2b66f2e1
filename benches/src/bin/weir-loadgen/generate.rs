//! Request bodies, built ahead of time on their own threads so that generating load is never what limits it.
//!
//! The stream is a grid: line `n` is device `n % devices`, sensor `(n / devices) % sensors`, at event time
//! `start + tick * --tick` (100 ms by default) with `tick = n / (devices * sensors)`, so every reading is distinct by construction
//! (Weir identifies a reading by device, sensor and timestamp). On top of that grid:
//!
//! - a **late** reading keeps its device and sensor but moves `h` whole hours back (`h` in 1..=47) plus a
//!   sub-100 ms offset `1 + tick % 99_999` µs. The offset keeps it off the grid of on-time readings, and two late
//!   readings of one series could only meet if their ticks differed by a multiple of 36 000 (hours) that is also a
//!   multiple of 99 999 (offsets), which needs more than 47 hours: late readings are distinct too;
//! - a **duplicate** line repeats, byte for byte, a random line of one of the last few bodies this thread built
//!   (or an earlier line of the same body at the very start); the grid reading of its line number is skipped.
//!
//! Body `i` holds lines `i * batch ..`; its random choices come from a generator seeded by `(seed, i)`, so a body
//! is the same whatever thread builds it (only which earlier body a duplicate copies depends on the thread).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Event time between two readings of one series, by default.
#[cfg(test)]
const TICK_MICROS: i64 = 100_000;
const HOUR_MICROS: i64 = 3_600_000_000;
/// Recent bodies a thread keeps to copy duplicates from.
const HISTORY: usize = 4;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Plan {
    pub devices: u64,
    pub sensors: Vec<String>,
    /// Lines per body.
    pub batch: usize,
    /// Lines in all; `None`: without end.
    pub count: Option<u64>,
    /// Event time of tick 0, µs since the epoch.
    pub start_micros: i64,
    /// Event time between two readings of one series.
    pub tick_micros: i64,
    pub late_fraction: f64,
    pub dup_fraction: f64,
    pub seed: u64,
    pub gzip: bool,
    /// Line protocol instead of NDJSON: one line a reading, `v,device=vehicle-00001 speed=60.5 <µs>`.
    pub line_protocol: bool,
}

impl Plan {
    /// Bodies in all (`None`: without end).
    pub fn bodies(&self) -> Option<u64> {
        self.count.map(|c| c.div_ceil(self.batch as u64))
    }

    fn lines_in(&self, index: u64) -> usize {
        let first = index * self.batch as u64;
        match self.count {
            Some(c) => (c.saturating_sub(first)).min(self.batch as u64) as usize,
            None => self.batch,
        }
    }
}

/// One request body, ready to send.
#[derive(Debug, Clone)]
pub struct Body {
    /// What goes on the wire: NDJSON, gzip-compressed with `--gzip`.
    pub bytes: Bytes,
    /// Lines (readings) in the body.
    pub readings: usize,
    /// Size of the NDJSON before compression.
    pub raw_bytes: usize,
    /// Lines that repeat an earlier reading.
    pub duplicates: usize,
    /// Lines timestamped hours in the past.
    pub late: usize,
}

/// The uncompressed NDJSON of a body and where its lines start (plus its end).
struct Lines {
    bytes: Bytes,
    starts: Vec<u32>,
}

impl Lines {
    fn line(&self, i: usize) -> &[u8] {
        &self.bytes[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
    fn len(&self) -> usize {
        self.starts.len() - 1
    }
}

/// Builds bodies for one thread.
pub struct Generator {
    plan: Arc<Plan>,
    history: VecDeque<Lines>,
    /// The formatted timestamp of the last on-time tick.
    tick_text: Option<(u64, String)>,
}

impl Generator {
    pub fn new(plan: Arc<Plan>) -> Self {
        Generator { plan, history: VecDeque::with_capacity(HISTORY), tick_text: None }
    }

    /// Body number `index` of the stream.
    pub fn body(&mut self, index: u64) -> Body {
        let lines = self.plan.lines_in(index);
        let first = index * self.plan.batch as u64;
        let mut rng = Rng::new(self.plan.seed, index);
        let mut buf = Vec::with_capacity(lines * 112);
        let mut starts = Vec::with_capacity(lines + 1);
        let (mut duplicates, mut late) = (0, 0);
        for j in 0..lines {
            starts.push(buf.len() as u32);
            if rng.chance(self.plan.dup_fraction) && self.push_duplicate(&mut rng, &mut buf, &starts) {
                duplicates += 1;
                continue;
            }
            let hours_late = rng.chance(self.plan.late_fraction).then(|| 1 + rng.below(47) as i64);
            late += usize::from(hours_late.is_some());
            self.push_reading(first + j as u64, hours_late, &mut buf);
        }
        starts.push(buf.len() as u32);
        let raw = Bytes::from(buf);
        let bytes = if self.plan.gzip { gzip(&raw) } else { raw.clone() };
        self.remember(Lines { bytes: raw.clone(), starts });
        Body { bytes, readings: lines, raw_bytes: raw.len(), duplicates, late }
    }

    fn remember(&mut self, lines: Lines) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        if lines.len() > 0 {
            self.history.push_back(lines);
        }
    }

    /// Appends a copy of an earlier line: from a recent body, else from this one; false when there is none yet.
    fn push_duplicate(&self, rng: &mut Rng, buf: &mut Vec<u8>, starts: &[u32]) -> bool {
        if !self.history.is_empty() {
            let body = &self.history[rng.below(self.history.len() as u64) as usize];
            buf.extend_from_slice(body.line(rng.below(body.len() as u64) as usize));
            return true;
        }
        let done = starts.len() - 1; // lines complete in this body; the last start is the current line's
        if done == 0 {
            return false;
        }
        let i = rng.below(done as u64) as usize;
        buf.extend_from_within(starts[i] as usize..starts[i + 1] as usize);
        true
    }

    /// Appends grid reading `n`, moved `hours_late` back when given.
    fn push_reading(&mut self, n: u64, hours_late: Option<i64>, buf: &mut Vec<u8>) {
        let plan = &*self.plan;
        let sensors = plan.sensors.len() as u64;
        let device = n % plan.devices;
        let sensor = ((n / plan.devices) % sensors) as usize;
        let tick = n / plan.devices.saturating_mul(sensors);
        let value = sensor_value(&plan.sensors[sensor], device, tick);
        if plan.line_protocol {
            let on_time = plan.start_micros + tick as i64 * plan.tick_micros;
            let micros = hours_late.map_or(on_time, |h| on_time - h * HOUR_MICROS + 1 + (tick % 99_999) as i64);
            let _ = write!(buf, "v,device=vehicle-{device:05} {}=", plan.sensors[sensor]);
            write_milli(buf, (value * 1000.0).round() as i64);
            let _ = writeln!(buf, " {micros}");
            return;
        }
        buf.extend_from_slice(b"{\"sensor\":\"");
        buf.extend_from_slice(plan.sensors[sensor].as_bytes());
        buf.extend_from_slice(b"\",\"value\":");
        write_milli(buf, (value * 1000.0).round() as i64);
        buf.extend_from_slice(b",\"timestamp\":\"");
        match hours_late {
            None => buf.extend_from_slice(self.tick_timestamp(tick).as_bytes()),
            Some(h) => {
                let on_time = self.plan.start_micros + tick as i64 * self.plan.tick_micros;
                let micros = on_time - h * HOUR_MICROS + 1 + (tick % 99_999) as i64;
                buf.extend_from_slice(weir_pipeline::decode::format_timestamp(micros).as_bytes());
            }
        }
        // Writing into a Vec cannot fail.
        let _ = writeln!(buf, "\",\"device\":\"vehicle-{device:05}\"}}");
    }

    /// The timestamp of on-time readings of `tick`, formatted once per tick.
    fn tick_timestamp(&mut self, tick: u64) -> &str {
        if self.tick_text.as_ref().is_none_or(|(t, _)| *t != tick) {
            let micros = self.plan.start_micros + tick as i64 * self.plan.tick_micros;
            self.tick_text = Some((tick, weir_pipeline::decode::format_timestamp(micros)));
        }
        &self.tick_text.as_ref().expect("just set").1
    }
}

/// A plausible value of `sensor` for `device` at `tick`: a slow wave around the sensor's typical value.
fn sensor_value(sensor: &str, device: u64, tick: u64) -> f64 {
    let (center, amplitude) = match sensor {
        "speed" => (60.0, 40.0),
        "fuel" => (50.0, 45.0),
        "revolution" => (3000.0, 2000.0),
        "engine_temperature" => (90.0, 15.0),
        "location_latitude" => (47.0, 2.0),
        "location_longitude" => (8.0, 3.0),
        _ => (50.0, 50.0),
    };
    let phase = tick as f64 * 0.01 + device as f64 * 0.618 + sensor.len() as f64;
    center + amplitude * phase.sin()
}

/// Writes `milli / 1000` with three decimals, without going through float formatting.
fn write_milli(buf: &mut Vec<u8>, milli: i64) {
    let sign = if milli < 0 { "-" } else { "" };
    let m = milli.unsigned_abs();
    let _ = write!(buf, "{sign}{}.{:03}", m / 1000, m % 1000);
}

fn gzip(raw: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4), flate2::Compression::fast());
    encoder.write_all(raw).expect("writing to memory");
    Bytes::from(encoder.finish().expect("writing to memory"))
}

/// splitmix64: small, fast, and good enough to pick lines; seeded per body so bodies are reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, index: u64) -> Self {
        let mut rng = Rng(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next();
        rng
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The queue of ready bodies that the connections share.
pub type BodyReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<Body>>>;

/// What the generator threads did: the readings they built and how long building took them.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeneratorReport {
    pub threads: usize,
    pub readings: u64,
    pub busy: Duration,
}

impl GeneratorReport {
    /// How fast the generators build readings when never waiting for the queue: readings per busy second of one
    /// thread, times the threads.
    pub fn max_readings_per_second(&self) -> f64 {
        let per_thread_secs = self.busy.as_secs_f64() / self.threads.max(1) as f64;
        if per_thread_secs > 0.0 { self.readings as f64 / per_thread_secs } else { 0.0 }
    }
}

/// The generator threads and the bounded queue they fill.
pub struct Generators {
    sender: Option<mpsc::Sender<Body>>,
    receiver: Option<BodyReceiver>,
    threads: Vec<JoinHandle<(u64, Duration)>>,
}

impl Generators {
    /// Starts `threads` threads; thread `t` builds bodies `t`, `t + threads`, ... until the plan's end or until
    /// nobody receives any more.
    pub fn start(plan: Arc<Plan>, threads: usize, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let handles = (0..threads)
            .map(|t| {
                let (plan, tx) = (plan.clone(), tx.clone());
                std::thread::Builder::new()
                    .name(format!("loadgen-gen-{t}"))
                    .spawn(move || generate(plan, t as u64, threads as u64, tx))
                    .expect("spawning a generator thread")
            })
            .collect();
        Generators { sender: Some(tx), receiver: Some(Arc::new(tokio::sync::Mutex::new(rx))), threads: handles }
    }

    /// Waits (at most 10 s) until the queue is full or everything is generated, so that the load starts with
    /// bodies ready.
    pub async fn wait_until_filled(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(tx) = &self.sender {
            let finished = self.threads.iter().all(|h| h.is_finished());
            if tx.capacity() == 0 || finished || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The queue's receiving end, for the connections. Call once: the generators stop when all its clones are
    /// dropped.
    pub fn receiver(&mut self) -> BodyReceiver {
        self.sender = None;
        self.receiver.take().expect("receiver() is called once")
    }

    /// Waits for the threads (they stop once the receiver is gone) and adds up what they did.
    pub fn join(self) -> GeneratorReport {
        drop(self.receiver);
        let mut report = GeneratorReport { threads: self.threads.len(), ..GeneratorReport::default() };
        for handle in self.threads {
            let (readings, busy) = handle.join().expect("a generator thread panicked");
            report.readings += readings;
            report.busy += busy;
        }
        report
    }
}

/// One generator thread: builds every `step`-th body from `first`; returns readings built and time spent building.
fn generate(plan: Arc<Plan>, first: u64, step: u64, tx: mpsc::Sender<Body>) -> (u64, Duration) {
    let mut generator = Generator::new(plan.clone());
    let (mut readings, mut busy) = (0u64, Duration::ZERO);
    let mut index = first;
    while plan.bodies().is_none_or(|n| index < n) {
        let started = Instant::now();
        let body = generator.body(index);
        busy += started.elapsed();
        readings += body.readings as u64;
        if tx.blocking_send(body).is_err() {
            break;
        }
        index += step;
    }
    (readings, busy)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Read;
    use std::sync::Arc;

    use weir_pipeline::decode::{Decoder, parse_timestamp};
    use weir_pipeline::ingest::{BodyDecoder, DecodeLimits};
    use weir_pipeline::reading::SensorSet;

    use super::{Body, Generator, Plan};

    const START: i64 = 1_795_000_000_000_000; // 2026-11-18

    fn plan(count: u64, late: f64, dup: f64) -> Plan {
        Plan {
            devices: 7,
            sensors: crate::args::sensor_names(6),
            batch: 1000,
            count: Some(count),
            start_micros: START,
            tick_micros: super::TICK_MICROS,
            late_fraction: late,
            dup_fraction: dup,
            seed: 42,
            gzip: false,
            line_protocol: false,
        }
    }

    /// Every body of `plan`, built by one generator in order.
    fn bodies(plan: Plan) -> Vec<Body> {
        let n = plan.bodies().unwrap();
        let mut g = Generator::new(Arc::new(plan));
        (0..n).map(|i| g.body(i)).collect()
    }

    fn lines(bodies: &[Body]) -> Vec<String> {
        bodies.iter().flat_map(|b| std::str::from_utf8(&b.bytes).unwrap().lines().map(String::from)).collect()
    }

    /// (device, sensor, timestamp in µs) of a line.
    fn key(line: &str) -> (String, String, i64) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = parse_timestamp(v["timestamp"].as_str().unwrap()).unwrap();
        (v["device"].as_str().unwrap().into(), v["sensor"].as_str().unwrap().into(), t)
    }

    #[test]
    fn readings_are_distinct_without_duplicates_even_when_late() {
        let lines = lines(&bodies(plan(60_500, 0.3, 0.0)));
        assert_eq!(lines.len(), 60_500);
        let keys: HashSet<_> = lines.iter().map(|l| key(l)).collect();
        assert_eq!(keys.len(), lines.len(), "every (device, sensor, timestamp) is distinct");
    }

    /// The same plan as line protocol gives the same readings, late ones and duplicates included.
    #[test]
    fn line_protocol_bodies_hold_the_same_readings_as_ndjson() {
        use weir_pipeline::line_protocol::{LineProtocolDecoder, Precision};
        let decode = |body: &Body, lp: bool| {
            let mut d = BodyDecoder::new(Decoder::new(SensorSet::default()), DecodeLimits::default());
            if lp {
                let mut lines = LineProtocolDecoder::new(Default::default(), Precision::Microsecond, 0);
                lines.feed(&body.bytes, &mut d);
                lines.finish(&mut d);
            } else {
                d.feed(&body.bytes);
            }
            d.finish();
            assert_eq!(d.rejections().rejected, 0);
            let mut out = Vec::new();
            while let Some(batch) = d.take_batch() {
                out.extend(batch.iter());
            }
            out
        };
        let ndjson = bodies(plan(5_000, 0.2, 0.1));
        let lp = bodies(Plan { line_protocol: true, ..plan(5_000, 0.2, 0.1) });
        for (a, b) in ndjson.iter().zip(&lp) {
            assert_eq!(decode(a, false), decode(b, true));
        }
    }

    #[test]
    fn bodies_are_entirely_valid_readings() {
        for body in bodies(plan(5_000, 0.2, 0.1)) {
            let mut d = BodyDecoder::new(Decoder::new(SensorSet::default()), DecodeLimits::default());
            d.feed(&body.bytes);
            d.finish();
            assert_eq!(d.decoded(), body.readings as u64);
            assert_eq!(d.rejections().rejected, 0);
        }
    }

    #[test]
    fn the_duplicate_fraction_is_roughly_honoured() {
        let bodies = bodies(plan(100_000, 0.1, 0.05));
        let lines = lines(&bodies);
        let reported: usize = bodies.iter().map(|b| b.duplicates).sum();
        let mut seen = HashSet::new();
        let repeats = lines.iter().filter(|l| !seen.insert(l.as_str())).count();
        assert_eq!(repeats, reported, "each duplicate repeats an earlier line exactly, nothing else repeats");
        assert!((4_500..=5_500).contains(&repeats), "{repeats} duplicates of 100 000 lines");
    }

    #[test]
    fn the_late_fraction_is_roughly_honoured() {
        let bodies = bodies(plan(100_000, 0.1, 0.0));
        let late: Vec<i64> = lines(&bodies).iter().map(|l| key(l).2).filter(|t| *t < START).collect();
        assert_eq!(late.len(), bodies.iter().map(|b| b.late).sum::<usize>());
        assert!((9_000..=11_000).contains(&late.len()), "{} late of 100 000", late.len());
        // 1 to 47 hours before on-time readings that span 2381 ticks (238 s) from START.
        let end = START + 100_000 / 42 * super::TICK_MICROS;
        assert!(
            late.iter()
                .all(|t| *t > START - 47 * super::HOUR_MICROS && *t < end - super::HOUR_MICROS + super::TICK_MICROS)
        );
        let min = *late.iter().min().unwrap();
        let max = *late.iter().max().unwrap();
        assert!(START - min > 46 * super::HOUR_MICROS, "late readings reach back about 47 h");
        assert!(START - max < 2 * super::HOUR_MICROS, "and as little as about 1 h");
    }

    #[test]
    fn count_and_batch_are_honoured() {
        let bodies = bodies(plan(2_500, 0.0, 0.0));
        assert_eq!(bodies.iter().map(|b| b.readings).collect::<Vec<_>>(), [1000, 1000, 500]);
        let first = lines(&bodies)[0].clone();
        assert_eq!(
            first,
            r#"{"sensor":"speed","value":21.643,"timestamp":"2026-11-18T11:06:40Z","device":"vehicle-00000"}"#
        );
    }

    #[test]
    fn gzip_bodies_decompress_to_the_ndjson() {
        let raw = bodies(plan(3_000, 0.1, 0.1));
        let zipped = bodies(Plan { gzip: true, ..plan(3_000, 0.1, 0.1) });
        for (r, z) in raw.iter().zip(&zipped) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&z.bytes[..]).read_to_end(&mut out).unwrap();
            assert_eq!(out, r.bytes);
            assert_eq!(z.raw_bytes, r.bytes.len());
        }
    }
}
