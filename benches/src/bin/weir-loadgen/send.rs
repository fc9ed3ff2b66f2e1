//! The connections: each takes ready bodies off the shared queue and posts them one at a time, paced by a token
//! bucket shared by all connections, and records ack latencies and errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::generate::{Body, BodyReceiver};

/// Live counts for the progress bar.
#[derive(Debug, Default)]
pub struct Counters {
    /// Readings in requests that got an answer (or failed).
    pub answered: AtomicU64,
    /// Readings Weir acknowledged.
    pub acked: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
}

/// What the connections measured, added up.
#[derive(Debug, Default)]
pub struct LoadTotals {
    pub requests_ok: u64,
    pub readings_sent: u64,
    pub readings_acknowledged: u64,
    pub duplicates_acknowledged: u64,
    pub late_acknowledged: u64,
    /// NDJSON bytes of acknowledged bodies, before compression.
    pub raw_bytes_acknowledged: u64,
    /// Bytes on the wire of acknowledged bodies.
    pub wire_bytes_acknowledged: u64,
    /// Ack latency of each acknowledged request.
    pub latencies: Vec<Duration>,
    /// Failed requests by HTTP status, or `connect`, `timeout`, `request` (another transport error).
    pub errors: BTreeMap<String, u64>,
}

impl LoadTotals {
    fn merge(&mut self, other: LoadTotals) {
        self.requests_ok += other.requests_ok;
        self.readings_sent += other.readings_sent;
        self.readings_acknowledged += other.readings_acknowledged;
        self.duplicates_acknowledged += other.duplicates_acknowledged;
        self.late_acknowledged += other.late_acknowledged;
        self.raw_bytes_acknowledged += other.raw_bytes_acknowledged;
        self.wire_bytes_acknowledged += other.wire_bytes_acknowledged;
        self.latencies.extend(other.latencies);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn record(&mut self, body: &Body, outcome: Outcome, latency: Duration) {
        self.readings_sent += body.readings as u64;
        match outcome {
            Outcome::Acked => {
                self.requests_ok += 1;
                self.readings_acknowledged += body.readings as u64;
                self.duplicates_acknowledged += body.duplicates as u64;
                self.late_acknowledged += body.late as u64;
                self.raw_bytes_acknowledged += body.raw_bytes as u64;
                self.wire_bytes_acknowledged += body.bytes.len() as u64;
                self.latencies.push(latency);
            }
            Outcome::Failed { error, accepted } => {
                self.readings_acknowledged += accepted;
                *self.errors.entry(error).or_default() += 1;
            }
        }
    }
}

/// How one request ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// 2xx: every reading is durable.
    Acked,
    /// Anything else; `accepted` readings were still stored (a 400 names how many).
    Failed { error: String, accepted: u64 },
}

/// Paces requests to a rate in readings per second across all connections. A request takes its readings' tokens at
/// once, going into debt if need be, and waits until the debt is paid, so concurrent requests queue up in order.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` readings per second, at most `burst` readings sent at once after an idle time.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket { rate, burst, state: std::sync::Mutex::new((burst, now)) }
    }

    /// Takes `n` tokens at `now`; returns how long to wait before sending.
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        let mut state = self.state.lock().expect("token bucket lock");
        let (tokens, last) = *state;
        let refilled = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        let left = refilled - n as f64;
        *state = (left, now.max(last));
        if left >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-left / self.rate) }
    }

    /// Waits until `n` readings may be sent, or until `deadline` if that comes first.
    async fn acquire(&self, n: usize, deadline: Option<tokio::time::Instant>) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            let until = tokio::time::Instant::now() + wait;
            tokio::time::sleep_until(deadline.map_or(until, |d| d.min(until))).await;
        }
    }
}

/// The load: connections, pacing and where to stop.
pub struct Load {
    clients: Vec<reqwest::Client>,
    shared: Shared,
    duration: Option<Duration>,
}

/// What every connection reads.
struct Shared {
    ingest_url: String,
    content_type: &'static str,
    api_key: Option<String>,
    gzip: bool,
    bodies: BodyReceiver,
    bucket: Option<TokenBucket>,
    deadline: Option<tokio::time::Instant>,
    counters: Arc<Counters>,
}

impl Load {
    pub fn new(args: &Args, url: &str, bodies: BodyReceiver) -> anyhow::Result<Self> {
        let clients = (0..args.connections)
            .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).timeout(args.timeout).build())
            .collect::<Result<_, _>>()?;
        let shared = Shared {
            ingest_url: format!("{url}{}", args.ingest_path()),
            content_type: if args.line_protocol { "text/plain; charset=utf-8" } else { "application/stream+json" },
            api_key: args.api_key.clone(),
            gzip: args.gzip,
            bodies,
            bucket: args.rate.map(|r| TokenBucket::new(r, f64::from(args.batch), Instant::now())),
            deadline: None,
            counters: Arc::default(),
        };
        Ok(Load { clients, shared, duration: args.duration })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Runs every connection until the bodies or the time are used up.
    pub async fn run(mut self) -> anyhow::Result<LoadTotals> {
        self.shared.deadline = self.duration.map(|d| tokio::time::Instant::now() + d);
        if let Some(bucket) = &self.shared.bucket {
            bucket.reserve(0, Instant::now()); // pacing starts now, not when the load was set up
        }
        let shared = Arc::new(self.shared);
        let tasks: Vec<_> =
            self.clients.into_iter().map(|client| tokio::spawn(connection(client, shared.clone()))).collect();
        let mut totals = LoadTotals::default();
        for task in tasks {
            totals.merge(task.await?);
        }
        Ok(totals)
    }
}

/// One connection: one request in flight at a time.
async fn connection(client: reqwest::Client, shared: Arc<Shared>) -> LoadTotals {
    let mut totals = LoadTotals::default();
    while let Some(body) = shared.next_body().await {
        if let Some(bucket) = &shared.bucket {
            bucket.acquire(body.readings, shared.deadline).await;
        }
        if shared.is_over() {
            break;
        }
        let started = Instant::now();
        let outcome = shared.post(&client, &body).await;
        shared.count(&body, &outcome);
        totals.record(&body, outcome, started.elapsed());
    }
    totals
}

impl Shared {
    fn is_over(&self) -> bool {
        self.deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
    }

    /// The next ready body, or `None` when all are sent or the time is over.
    async fn next_body(&self) -> Option<Body> {
        if self.is_over() {
            return None;
        }
        let next = async { self.bodies.lock().await.recv().await };
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, next).await.ok().flatten(),
            None => next.await,
        }
    }

    async fn post(&self, client: &reqwest::Client, body: &Body) -> Outcome {
        let mut request = client
            .post(&self.ingest_url)
            .header(reqwest::header::CONTENT_TYPE, self.content_type)
            .body(body.bytes.clone());
        if self.gzip {
            request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        if let Some(key) = &self.api_key {
            request = request.basic_auth(key, None::<&str>);
        }
        match request.send().await {
            Ok(response) => outcome_of(response).await,
            Err(e) => Outcome::Failed { error: transport_error(&e).into(), accepted: 0 },
        }
    }

    fn count(&self, body: &Body, outcome: &Outcome) {
        self.counters.answered.fetch_add(body.readings as u64, Ordering::Relaxed);
        match outcome {
            Outcome::Acked => self.counters.acked.fetch_add(body.readings as u64, Ordering::Relaxed),
            Outcome::Failed { accepted, .. } => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.counters.acked.fetch_add(*accepted, Ordering::Relaxed)
            }
        };
    }
}

/// Reads the answer to the end (so the connection is reused) and classifies it.
async fn outcome_of(response: reqwest::Response) -> Outcome {
    let status = response.status();
    let text = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Outcome::Failed { error: transport_error(&e).into(), accepted: 0 },
    };
    if status.is_success() {
        return Outcome::Acked;
    }
    // A 400 (some lines bad) and a failure part-way still say how many readings were stored.
    let accepted = serde_json::from_slice::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("accepted").and_then(|a| a.as_u64()))
        .unwrap_or(0);
    Outcome::Failed { error: status.as_u16().to_string(), accepted }
}

fn transport_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::TokenBucket;

    #[test]
    fn the_token_bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1000.0, 100.0, t0);
        assert_eq!(bucket.reserve(100, t0), Duration::ZERO, "the burst goes at once");
        assert_eq!(bucket.reserve(100, t0), Duration::from_millis(100));
        assert_eq!(bucket.reserve(100, t0), Duration::from_millis(200), "requests queue up behind each other");
        // 200 ms later the debt is paid and the bucket is empty: the next 100 wait 100 ms.
        assert_eq!(bucket.reserve(100, t0 + Duration::from_millis(200)), Duration::from_millis(100));
        // After a long pause it holds only `burst`.
        assert_eq!(bucket.reserve(100, t0 + Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(bucket.reserve(50, t0 + Duration::from_secs(10)), Duration::from_millis(50));
    }
}
