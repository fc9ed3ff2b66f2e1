//! Freshness: how long after Weir acknowledges a reading it is visible in the live statistics.
//!
//! While the load runs, a probe ingests one reading of its own device, takes the `Weir-Position` of the answer and
//! asks `GET /api/v1/latest?device=…&after=<position>`, which answers once the statistics dataflow has processed
//! that position. The time from the ack to that answer is one sample.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::args::Args;

/// The probe's own device, so that its readings never collide with the load's.
const PROBE_DEVICE: &str = "loadgen-freshness-probe";
/// Pause between samples, so that the probe adds little load of its own.
const INTERVAL: Duration = Duration::from_millis(100);
/// Samples taken after the load when it was too short to give this many.
const MIN_SAMPLES: usize = 5;

/// The probe's samples and failures.
#[derive(Debug, Default)]
pub struct Freshness {
    pub samples: Vec<Duration>,
    pub errors: u64,
}

/// Starts the probe; it stops when `done` is set (and it has [`MIN_SAMPLES`]).
pub fn spawn_probe(
    args: &Args,
    url: &str,
    sensor: &str,
    done: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<Freshness>> {
    let probe = Probe {
        client: reqwest::Client::builder().timeout(args.timeout).build()?,
        url: url.to_owned(),
        sensor: sensor.to_owned(),
        api_key: args.api_key.clone(),
    };
    Ok(tokio::spawn(async move { probe.run(&done).await }))
}

struct Probe {
    client: reqwest::Client,
    url: String,
    sensor: String,
    api_key: Option<String>,
}

impl Probe {
    async fn run(&self, done: &AtomicBool) -> Freshness {
        let mut out = Freshness::default();
        let mut last_micros = 0;
        while !done.load(Ordering::Relaxed) || (out.samples.len() < MIN_SAMPLES && out.errors < MIN_SAMPLES as u64) {
            // Wall-clock timestamps, strictly increasing so that no probe reading is a duplicate.
            last_micros = now_micros().max(last_micros + 1);
            match self.sample(last_micros).await {
                Ok(d) => out.samples.push(d),
                Err(_) => out.errors += 1,
            }
            tokio::time::sleep(INTERVAL).await;
        }
        out
    }

    /// One sample: ingest, then read back with `after=`; the time from the ack to the answer.
    async fn sample(&self, micros: i64) -> anyhow::Result<Duration> {
        let timestamp = weir_pipeline::decode::format_timestamp(micros);
        let line = format!(
            "{{\"sensor\":\"{}\",\"value\":1,\"timestamp\":\"{timestamp}\",\"device\":\"{PROBE_DEVICE}\"}}\n",
            self.sensor
        );
        let ingest = self
            .authorized(self.client.post(format!("{}/ingest", self.url)))
            .header(reqwest::header::CONTENT_TYPE, "application/stream+json")
            .body(line);
        let response = ingest.send().await?.error_for_status()?;
        let acked = Instant::now();
        let position = response
            .headers()
            .get("weir-position")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("no Weir-Position header"))?
            .to_owned();
        response.bytes().await?;
        let read = self.client.get(format!("{}/api/v1/latest?device={PROBE_DEVICE}&after={position}", self.url));
        self.authorized(read).send().await?.error_for_status()?.bytes().await?;
        Ok(acked.elapsed())
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.basic_auth(key, None::<&str>),
            None => request,
        }
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}
