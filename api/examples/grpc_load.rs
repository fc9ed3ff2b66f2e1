//! gRPC ingest throughput: `--count` readings in batches of `--batch`, over `--connections` concurrent clients, each
//! with its own connection, by unary `Write` (or by `Ingest` streams of `--stream-batches` batches each); every
//! batch acknowledged after fsync, as for `weir-loadgen` over HTTP. Batches are built before the clock starts.
//!
//! `cargo run --release -p weir-api --example grpc_load -- --url http://127.0.0.1:50051 --count 2000000`

use std::time::Instant;

use weir_api::grpc::proto::weir_client::WeirClient;
use weir_api::grpc::proto::{Reading, ReadingBatch};

const SENSORS: [&str; 6] =
    ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_owned())
}

fn batches(count: u64, batch: u64, devices: u64) -> Vec<ReadingBatch> {
    let start = 1_795_046_400i64 * 1_000_000;
    let timestamp = |n: u64| weir_pipeline::decode::format_timestamp(start + (n / (devices * 6)) as i64 * 1_000_000);
    (0..count.div_ceil(batch))
        .map(|b| {
            let readings = (b * batch..((b + 1) * batch).min(count)).map(|n| Reading {
                sensor: SENSORS[(n % 6) as usize].to_owned(),
                value: Some((n % 1000) as f64 * 0.25),
                timestamp: timestamp(n),
                device: Some(format!("device-{}", (n / 6) % devices)),
            });
            ReadingBatch::new(readings, false)
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = arg("--url", "http://127.0.0.1:50051");
    let count: u64 = arg("--count", "1000000").parse()?;
    let batch: u64 = arg("--batch", "1000").parse()?;
    let connections: usize = arg("--connections", "8").parse()?;
    let devices: u64 = arg("--devices", "1000").parse()?;
    let stream_batches: usize = arg("--stream-batches", "0").parse()?;
    let all = batches(count, batch, devices);
    let mut shares: Vec<Vec<ReadingBatch>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, b) in all.into_iter().enumerate() {
        shares[i % connections].push(b);
    }
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(WeirClient::connect(url.clone()).await?.max_encoding_message_size(usize::MAX));
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(shares)
        .map(|(mut client, share)| {
            tokio::spawn(async move {
                let mut accepted = 0u64;
                if stream_batches == 0 {
                    for b in share {
                        accepted += client.write(b).await?.into_inner().accepted;
                    }
                } else {
                    let mut share = share.into_iter().peekable();
                    while share.peek().is_some() {
                        let chunk: Vec<ReadingBatch> = share.by_ref().take(stream_batches).collect();
                        accepted += client.ingest(futures_util::stream::iter(chunk)).await?.into_inner().accepted;
                    }
                }
                Ok::<u64, tonic::Status>(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mode =
        if stream_batches == 0 { "Write".to_owned() } else { format!("Ingest streams of {stream_batches} batches") };
    println!(
        "{{\"readings\":{accepted},\"seconds\":{seconds:.3},\"readings_per_second\":{:.0},\"batch\":{batch},\"connections\":{connections},\"mode\":\"{mode}\"}}",
        accepted as f64 / seconds
    );
    Ok(())
}
