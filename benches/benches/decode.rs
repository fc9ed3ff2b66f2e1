//! Decoding NDJSON bodies into reading batches: the CPU cost of `POST /ingest` before the WAL.
//!
//! `cargo bench -p weir-benches --bench decode`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_pipeline::decode::Decoder;
use weir_pipeline::ingest::{BodyDecoder, DecodeLimits};
use weir_pipeline::reading::SensorSet;

const READINGS: usize = 100_000;
const CHUNK: usize = 64 << 10;

fn decode(c: &mut Criterion) {
    let body = weir_benches::ndjson_body(READINGS, 100);
    let decoder = Decoder::new(SensorSet::default());
    let mut group = c.benchmark_group("decode");
    group.sample_size(20);
    group.throughput(Throughput::Elements(READINGS as u64));
    group.bench_function("ndjson_to_batches/readings", |b| {
        b.iter(|| {
            let mut d = BodyDecoder::new(decoder.clone(), DecodeLimits::default());
            let mut rows = 0;
            for chunk in body.as_bytes().chunks(CHUNK) {
                d.feed(chunk);
                while let Some(batch) = d.take_full_batch() {
                    rows += batch.len();
                }
            }
            d.finish();
            rows += d.take_batch().map_or(0, |b| b.len());
            assert_eq!(rows, READINGS);
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
