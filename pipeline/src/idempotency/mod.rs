//! Idempotency keys: a client that lost the answer to a write sends it again under the same key, and gets the
//! first answer back instead of a second write.
//!
//! A request that carries a key (HTTP `Idempotency-Key`, gRPC `ReadingBatch.batch_id`) is stored as **one WAL
//! record that holds the key, a SHA-256 of the request and the answer beside its readings** (kind 3 in
//! `wal::record`). Whatever crashes, the key and the readings are durable together or not at all, so a retry is
//! either answered from the key or stored for the first time — never stored twice, and never refused for a write
//! that was lost.
//!
//! What a process knows of keys is a [`KeyTable`]: key → (request hash, WAL position, answer), for
//! `--idempotency-window` after the request was received, within `--idempotency-memory` bytes (beyond it the oldest
//! keys are forgotten early and counted). [`Keys`] adds the requests in flight: a second request with a key that is
//! being processed is refused at once (409) rather than raced.
//!
//! The table is rebuilt at start from the WAL ([`store::rebuild`]). Archived WAL segments are deleted, so before a
//! segment goes its keys are written to a key file in the data directory ([`store::advance`]): the file holds the
//! keys through a position, the WAL the rest. Start-up reads the file, then the keys of the records after it — one
//! mechanism for start-up and trimming.
//!
//! Cost: [`KeyTable::ENTRY_BYTES`] per key plus its answer (`{"accepted":N}`-sized for a request without rejected
//! lines); measured in `benches/RESULTS.md`.

pub mod store;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use table::{KeyEntry, KeyTable};

/// The longest key accepted, in bytes (a record stores its length in one byte).
pub const MAX_KEY_BYTES: usize = 255;

/// A key as a client sent it, checked: 1–255 visible ASCII characters (an RFC 8941 string's quotes removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(Box<str>);

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the idempotency key is empty: send 1 to {MAX_KEY_BYTES} visible ASCII characters, e.g. a UUID")]
    Empty,
    #[error("the idempotency key is {0} bytes long: send at most {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error(
        "the idempotency key holds a character other than visible ASCII (byte {0:#04x}): send letters, digits and \
         punctuation, e.g. a UUID"
    )]
    Character(u8),
}

impl IdempotencyKey {
    /// Checks a key as sent: a structured-field string (`"..."`, as the IETF draft writes it) or a bare token.
    pub fn parse(sent: &str) -> Result<Self, KeyError> {
        let sent = sent.trim();
        let key = sent.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(sent);
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(key.len()));
        }
        if let Some(b) = key.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
            return Err(KeyError::Character(b));
        }
        Ok(IdempotencyKey(key.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the table knows the key by.
    pub fn hash(&self) -> KeyHash {
        key_hash(&self.0)
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first 16 bytes of a key's SHA-256: what the table stores instead of the key.
pub type KeyHash = u128;

/// [`KeyHash`] of a key's text.
pub fn key_hash(key: &str) -> KeyHash {
    let digest = Sha256::digest(key.as_bytes());
    u128::from_le_bytes(digest[..16].try_into().expect("16 of 32 bytes"))
}

/// SHA-256 of what makes a request the same request: which endpoint, its parameters, its body (decompressed).
#[derive(Clone)]
pub struct RequestHasher(Sha256);

impl RequestHasher {
    /// A hasher for requests to `endpoint` with `parameters` (e.g. the query string); the body follows.
    pub fn new(endpoint: &str, parameters: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [endpoint, parameters] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        RequestHasher(hasher)
    }

    /// The same, for a request sent with the API key named `owner`: a key used by another API key is then a
    /// different request (422), never a replay of the other key's answer.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.0.update(b"\0owner\0");
        self.update_item(owner.as_bytes());
        self
    }

    /// Adds body bytes (in order; chunk boundaries do not matter).
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Adds one item of a body made of items (gRPC readings): its length first, so items cannot run together.
    pub fn update_item(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// A process's keys: the table of answered requests and the keys of requests in flight.
pub struct Keys {
    table: Mutex<KeyTable>,
    in_flight: Mutex<HashSet<KeyHash, foldhash::fast::RandomState>>,
}

impl Keys {
    pub fn new(table: KeyTable) -> Arc<Self> {
        Arc::new(Keys { table: Mutex::new(table), in_flight: Mutex::default() })
    }

    /// An empty table kept in memory only (tests, and services that are given no data directory).
    pub fn in_memory(window: Duration, max_bytes: usize) -> Arc<Self> {
        Keys::new(KeyTable::new(window, max_bytes))
    }

    /// Claims `key` for one request: `None` while another request with it is in flight. The claim says whether an
    /// earlier request with the key was answered ([`Claim::earlier`]); it is released when dropped, or completed.
    pub fn claim(self: &Arc<Self>, key: &IdempotencyKey) -> Option<Claim> {
        self.claim_at(key, now_micros())
    }

    /// [`Keys::claim`] at `now_micros` (what is older than the window then is forgotten first).
    pub fn claim_at(self: &Arc<Self>, key: &IdempotencyKey, now_micros: i64) -> Option<Claim> {
        let hash = key.hash();
        if !self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(hash) {
            return None;
        }
        let earlier = {
            let mut table = self.table();
            table.expire(now_micros);
            table.get(hash).cloned()
        };
        Some(Claim { keys: self.clone(), hash, earlier })
    }

    /// Keys known, their bytes, and how many were forgotten early for lack of room.
    pub fn usage(&self) -> KeyUsage {
        let table = self.table();
        KeyUsage { keys: table.len() as u64, bytes: table.bytes() as u64, evicted: table.evicted() }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, KeyTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`Keys::usage`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage {
    pub keys: u64,
    pub bytes: u64,
    pub evicted: u64,
}

/// One request's hold on its key.
pub struct Claim {
    keys: Arc<Keys>,
    hash: KeyHash,
    earlier: Option<KeyEntry>,
}

impl Claim {
    /// The earlier request's entry when the key was answered before.
    pub fn earlier(&self) -> Option<&KeyEntry> {
        self.earlier.as_ref()
    }

    /// Records the request's answer once its record is durable, and releases the key.
    pub fn complete(self, entry: KeyEntry) {
        let received = entry.received_micros;
        self.keys.table().insert(self.hash, entry, received);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.keys.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.hash);
    }
}

/// Now, µs since the Unix epoch.
pub fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since_epoch.as_micros().min(i64::MAX as u128) as i64
}
