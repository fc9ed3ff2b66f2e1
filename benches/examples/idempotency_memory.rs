//! Measures what one remembered idempotency key costs, with a counting allocator: a table of N keys with the
//! answers `weir push` batches get (`{"accepted":N,"rejected":0}`), the bytes it holds per key against what it
//! accounts for (`KeyTable::bytes`, which `--idempotency-memory` bounds), and the time per insert.
//!
//! `cargo run --release -p weir-benches --example idempotency_memory [-- KEYS]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use weir_pipeline::idempotency::{KeyEntry, KeyTable, key_hash};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let keys: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let before = LIVE.load(Ordering::Relaxed);
    let mut table = KeyTable::new(Duration::from_secs(24 * 3600), usize::MAX);
    let started = Instant::now();
    for k in 0..keys {
        let answer = format!("{{\"accepted\":{},\"rejected\":0}}", 10_000 + k % 5000).into_bytes();
        let entry = KeyEntry { request: [k as u8; 32], position: k, received_micros: k as i64, answer: answer.into() };
        table.insert(key_hash(&format!("weir-push:0123456789abcdef:1048576:{k}")), entry, k as i64);
    }
    let elapsed = started.elapsed();
    let held = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{keys} keys: {:.1} bytes/key allocated, {:.1} bytes/key accounted (KeyTable::ENTRY_BYTES = {} + answer), \
         {:.0} ns/insert",
        held as f64 / keys as f64,
        table.bytes() as f64 / keys as f64,
        KeyTable::ENTRY_BYTES,
        elapsed.as_nanos() as f64 / keys as f64
    );
}
