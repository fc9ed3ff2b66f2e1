//! Decodes a generated body once: a fixed workload for instruction counts under
//! `valgrind --tool=callgrind` (repeatable on a noisy machine, unlike wall time).
//!
//! `cargo build --release -p weir-benches --example decode_once && valgrind --tool=callgrind \
//!   --toggle-collect='*decode_body*' target/release/examples/decode_once 200000`

use weir_pipeline::decode::Decoder;
use weir_pipeline::ingest::{BodyDecoder, DecodeLimits};
use weir_pipeline::reading::SensorSet;

#[inline(never)]
fn decode_body(body: &[u8]) -> u64 {
    let mut d = BodyDecoder::new(Decoder::new(SensorSet::default()), DecodeLimits::default());
    for chunk in body.chunks(64 << 10) {
        d.feed(chunk);
        while d.take_full_batch().is_some() {}
    }
    d.finish();
    d.decoded()
}

fn main() {
    let count = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let body = weir_benches::ndjson_body(count, 100);
    let decoded = decode_body(body.as_bytes());
    assert_eq!(decoded as usize, count);
    println!("decoded {decoded} readings");
}
