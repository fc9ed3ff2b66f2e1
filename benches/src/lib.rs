//! Shared pieces of Weir's benchmarks: generating realistic NDJSON readings.

/// `count` distinct readings as an NDJSON body: `devices` devices round-robin over the six default sensors, one
/// reading per device and sensor every 100 ms of event time, timestamps with milliseconds as devices send them.
pub fn ndjson_body(count: usize, devices: usize) -> String {
    const SENSORS: [&str; 6] =
        ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];
    let mut out = String::with_capacity(count * 110);
    let start = 1_795_000_000_000i64; // ms since the epoch, 2026-11-18
    for n in 0..count {
        let device = n % devices.max(1);
        let sensor = SENSORS[(n / devices.max(1)) % SENSORS.len()];
        let ms = start + (n / (devices.max(1) * SENSORS.len())) as i64 * 100;
        let t = weir_pipeline::decode::format_timestamp(ms * 1000);
        let value = (n as f64 * 0.37).sin() * 100.0;
        out.push_str(&format!(
            "{{\"sensor\":\"{sensor}\",\"value\":{value:.3},\"timestamp\":\"{t}\",\"device\":\"vehicle-{device:05}\"}}\n"
        ));
    }
    out
}

/// `count` generated readings as WAL record batches of `per_record` readings each.
pub fn record_batches(count: usize, per_record: usize, devices: usize) -> Vec<weir_pipeline::reading::ReadingBatch> {
    use weir_pipeline::decode::Decoder;
    use weir_pipeline::ingest::{BodyDecoder, DecodeLimits};
    use weir_pipeline::reading::SensorSet;

    let body = ndjson_body(count, devices);
    let limits = DecodeLimits { batch_rows: per_record, ..DecodeLimits::default() };
    let mut decoder = BodyDecoder::new(Decoder::new(SensorSet::default()), limits);
    let mut batches = Vec::new();
    for chunk in body.as_bytes().chunks(1 << 16) {
        decoder.feed(chunk);
        while let Some(batch) = decoder.take_full_batch() {
            batches.push(batch);
        }
    }
    decoder.finish();
    batches.extend(decoder.take_batch());
    batches
}

/// A WAL with `count` generated readings in records of `per_record`, for the statistics benchmarks.
pub fn wal_with_readings(dir: &std::path::Path, count: usize, per_record: usize, devices: usize) -> u64 {
    use weir_pipeline::wal::{Wal, WalOptions};

    let (wal, _) = Wal::open(dir, WalOptions::default()).expect("WAL opens");
    let appender = wal.appender();
    let mut last = 0;
    for batch in record_batches(count, per_record, devices) {
        last = appender.append_blocking(&batch).expect("append");
    }
    wal.close();
    last
}

/// Runs the statistics over the WAL in `dir` with `workers` until it has processed `last`; returns the time taken.
pub fn replay_statistics(dir: &std::path::Path, last: u64, workers: usize) -> std::time::Duration {
    use weir_pipeline::reading::SensorSet;
    use weir_pipeline::stats::{StatsEngine, StatsOptions};
    let (_tx, durable) = tokio::sync::watch::channel(last);
    let started = std::time::Instant::now();
    let options = StatsOptions { workers, ..StatsOptions::default() };
    let tail = weir_pipeline::wal::LogTail {
        dir: dir.to_path_buf(),
        durable,
        clock: Default::default(),
        doorbell: Default::default(),
    };
    let engine = StatsEngine::start(tail, SensorSet::default(), options).expect("engine starts");
    while engine.processed_position() < last {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let took = started.elapsed();
    engine.stop();
    took
}

#[cfg(test)]
mod tests {
    use weir_pipeline::decode::Decoder;
    use weir_pipeline::ingest::{BodyDecoder, DecodeLimits};
    use weir_pipeline::reading::SensorSet;

    #[test]
    fn generated_bodies_are_entirely_valid() {
        let body = super::ndjson_body(5000, 7);
        let mut d = BodyDecoder::new(Decoder::new(SensorSet::default()), DecodeLimits::default());
        d.feed(body.as_bytes());
        d.finish();
        assert_eq!(d.decoded(), 5000);
        assert_eq!(d.rejections().rejected, 0);
    }
}
