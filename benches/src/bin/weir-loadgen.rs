//! A first load generator: pushes pre-generated, distinct NDJSON readings at a running Weir and reports
//! acknowledged readings/s, MiB/s and ack latency. (The full tool — rates, late/duplicate fractions, freshness,
//! `--spawn` — is issue 5.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Push distinct readings at a running Weir and report throughput")]
struct Args {
    /// Base URL of the Weir server.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Total readings to send.
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// Readings per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Distinct devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// API key (sent as the basic-auth username).
    #[arg(long, env = "WEIR_API_KEY")]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let body = weir_benches::ndjson_body(args.count, args.devices);
    let lines: Vec<&str> = body.lines().collect();
    let bodies: Arc<Vec<(String, usize)>> =
        Arc::new(lines.chunks(args.batch.max(1)).map(|c| (c.join("\n") + "\n", c.len())).collect());
    let total_bytes: usize = bodies.iter().map(|(b, _)| b.len()).sum();
    eprintln!(
        "generated {} readings in {} requests ({:.1} MiB) in {:.2?}",
        args.count,
        bodies.len(),
        total_bytes as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.connections).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| {
            let (client, bodies, next, url, key) =
                (client.clone(), bodies.clone(), next.clone(), format!("{}/ingest", args.url), args.api_key.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0usize;
                let mut acked = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((body, readings)) = bodies.get(i) else { break };
                    let mut req =
                        client.post(&url).header("content-type", "application/stream+json").body(body.clone());
                    if let Some(k) = &key {
                        req = req.basic_auth(k, None::<&str>);
                    }
                    let t = Instant::now();
                    match req.send().await {
                        Ok(r) if r.status().is_success() => {
                            latencies.push(t.elapsed());
                            acked += readings;
                        }
                        Ok(_) | Err(_) => failures += 1,
                    }
                }
                (latencies, failures, acked)
            })
        })
        .collect();
    // Freshness: while the load runs, push one reading at a time and measure from its ack until the statistics
    // answer a read with `after=` its position.
    let probe = {
        let (client, url, key, done) = (client.clone(), args.url.clone(), args.api_key.clone(), next.clone());
        let total = bodies.len();
        tokio::spawn(async move {
            let mut fresh = Vec::new();
            let mut n = 0u64;
            while done.load(Ordering::Relaxed) < total || fresh.len() < 20 {
                n += 1;
                let line = format!(
                    "{{\"sensor\":\"speed\",\"value\":{n},\"timestamp\":\"2030-01-01T00:00:00.{:06}Z\",\"device\":\"freshness-probe\"}}\n",
                    n % 1_000_000
                );
                let mut req =
                    client.post(format!("{url}/ingest")).header("content-type", "application/stream+json").body(line);
                if let Some(k) = &key {
                    req = req.basic_auth(k, None::<&str>);
                }
                let Ok(r) = req.send().await else { break };
                let acked = Instant::now();
                let Some(pos) = r.headers().get("weir-position").and_then(|v| v.to_str().ok()).map(String::from) else {
                    break;
                };
                let mut get = client.get(format!("{url}/api/v1/latest?device=freshness-probe&after={pos}"));
                if let Some(k) = &key {
                    get = get.basic_auth(k, None::<&str>);
                }
                match get.send().await {
                    Ok(r) if r.status().is_success() => fresh.push(acked.elapsed()),
                    _ => break,
                }
            }
            fresh
        })
    };
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut acked = 0;
    for t in tasks {
        let (l, f, a) = t.await?;
        latencies.extend(l);
        failures += f;
        acked += a;
    }
    let elapsed = started.elapsed();
    let mut fresh = probe.await?;
    fresh.sort();
    let fresh_pct = |p: f64| {
        fresh
            .get(((fresh.len() as f64 * p) as usize).min(fresh.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    };
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(Duration::ZERO)
    };
    let summary = serde_json::json!({
        "readings_acknowledged": acked,
        "requests_failed": failures,
        "seconds": elapsed.as_secs_f64(),
        "readings_per_second": acked as f64 / elapsed.as_secs_f64(),
        "mib_per_second": total_bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
        "latency_ms": {
            "p50": pct(0.5).as_secs_f64() * 1e3, "p90": pct(0.9).as_secs_f64() * 1e3,
            "p99": pct(0.99).as_secs_f64() * 1e3, "max": latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        },
        "freshness_ms": { "samples": fresh.len(), "p50": fresh_pct(0.5), "p99": fresh_pct(0.99) },
        "batch": args.batch, "connections": args.connections,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
