//! The keys a process remembers: bounded by a window of time and by bytes.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::KeyHash;
use crate::wal::KeyView;

/// What is remembered of one answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// SHA-256 of the request: a retry must match it.
    pub request: [u8; 32],
    /// The WAL position of the record the request was stored as.
    pub position: u64,
    /// When the request was received (µs since the Unix epoch).
    pub received_micros: i64,
    /// The answer, as the transport encoded it.
    pub answer: Box<[u8]>,
}

impl KeyEntry {
    /// The entry of a record written under `key` at `position`.
    pub fn of(position: u64, key: &KeyView<'_>) -> Self {
        KeyEntry { request: key.request, position, received_micros: key.received_micros, answer: key.answer.into() }
    }

    /// Bytes it costs in a table, its answer included.
    pub fn cost(&self) -> usize {
        KeyTable::ENTRY_BYTES + self.answer.len()
    }
}

/// Keys → entries, oldest first; each is kept for the window after it was received, and the oldest are forgotten
/// early when the entries' bytes would exceed the limit.
#[derive(Debug)]
pub struct KeyTable {
    entries: HashMap<KeyHash, KeyEntry, foldhash::fast::RandomState>,
    /// Insertion order (which is about receive order): what expires or is evicted first; with each key the position
    /// of the entry it was inserted with (an entry replaced since is not removed by its old place).
    order: VecDeque<(KeyHash, u64)>,
    window_micros: i64,
    max_bytes: usize,
    bytes: usize,
    evicted: u64,
    /// The WAL position through which the table holds every key (see [`super::store`]).
    pub(super) through: u64,
}

impl KeyTable {
    /// Bytes one entry costs besides its answer, at most: its (key hash, entry) slot (80 bytes) and control byte in a
    /// hash map just grown (hashbrown doubles when 7/8 full, so a slot may stand for 16/7 of its size), its place
    /// in the order (a `VecDeque` of 32-byte (hash, position) pairs, at most half empty: 64) and the answer's allocation overhead
    /// (16): 265. An upper bound, so that `--idempotency-memory` bounds what the table really takes;
    /// `benches/RESULTS.md` has the measured figure.
    pub const ENTRY_BYTES: usize =
        (std::mem::size_of::<(KeyHash, KeyEntry)>() + 1) * 16 / 7 + 2 * std::mem::size_of::<(KeyHash, u64)>() + 16;

    /// An empty table keeping keys for `window`, within `max_bytes`.
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        KeyTable {
            entries: HashMap::default(),
            order: VecDeque::new(),
            window_micros: window.as_micros().min(i64::MAX as u128) as i64,
            max_bytes,
            bytes: 0,
            evicted: 0,
            through: 0,
        }
    }

    pub fn get(&self, hash: KeyHash) -> Option<&KeyEntry> {
        self.entries.get(&hash)
    }

    /// Remembers `entry` under `hash`, then forgets what is older than the window at `now_micros` or beyond the
    /// byte limit. A key is written again only once its earlier entry was forgotten (a claim finds it otherwise),
    /// so in log order the later entry is the one to keep: it replaces an earlier one.
    pub fn insert(&mut self, hash: KeyHash, entry: KeyEntry, now_micros: i64) {
        if entry.received_micros.saturating_add(self.window_micros) <= now_micros {
            return;
        }
        self.bytes += entry.cost();
        self.order.push_back((hash, entry.position));
        if let Some(earlier) = self.entries.insert(hash, entry) {
            self.bytes -= earlier.cost();
        }
        self.expire(now_micros);
    }

    /// Forgets the keys received a window or more before `now_micros`, and the oldest beyond the byte limit.
    pub fn expire(&mut self, now_micros: i64) {
        while let Some(&(oldest, position)) = self.order.front() {
            let Some(entry) = self.entries.get(&oldest).filter(|e| e.position == position) else {
                self.order.pop_front();
                continue;
            };
            let expired = entry.received_micros.saturating_add(self.window_micros) <= now_micros;
            let over = self.bytes > self.max_bytes;
            if !expired && !over {
                break;
            }
            if !expired {
                self.evicted += 1;
            }
            self.bytes -= entry.cost();
            self.entries.remove(&oldest);
            self.order.pop_front();
        }
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (KeyHash, &KeyEntry)> {
        self.order.iter().filter_map(|(h, p)| self.entries.get(h).filter(|e| e.position == *p).map(|e| (*h, e)))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the entries cost ([`KeyEntry::cost`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keys forgotten before their window ended, for lack of room.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The WAL position through which the table holds every key.
    pub fn through(&self) -> u64 {
        self.through
    }
}
