//! Keys that outlive their WAL segments: the key file, and the one way a table is built from it and the WAL.
//!
//! ```text
//! magic "WEIRKEY1", through u64, count u64,
//! per key: key hash u128, request [u8; 32], position u64, received i64, answer_len u32, answer bytes
//! crc32 u32 of everything before it
//! ```
//! All integers little-endian. The file is replaced whole (written beside, fsynced, renamed, directory fsynced),
//! so it is always one complete version. It holds every key of WAL positions ≤ `through` still within the window;
//! the WAL holds the rest.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{KeyEntry, KeyTable, key_hash};
use crate::wal::{self, WalError, WalReader};

/// The key file's name in the data directory.
pub const FILE_NAME: &str = "idempotency-keys";
const MAGIC: &[u8; 8] = b"WEIRKEY1";

/// Why the keys could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "the idempotency key file {} is damaged ({reason}). Delete it to start with the keys the write-ahead log \
         still holds: a retry under a key older than the log is then stored again (deduplication keeps its readings \
         once within its horizon)", path.display()
    )]
    Damaged { path: PathBuf, reason: &'static str },
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Where the key file of a data directory is.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// How long keys are kept and in how many bytes.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub window: Duration,
    pub max_bytes: usize,
}

/// The table of the key file (empty when there is none) and the WAL records after it through `through`, as of
/// `now_micros`. Start-up reads every durable record; [`advance`] reads up to what it is about to trim.
pub fn rebuild(
    file: &Path,
    wal_dir: &Path,
    through: u64,
    retention: Retention,
    now_micros: i64,
) -> Result<KeyTable, StoreError> {
    let mut table = load(file, retention, now_micros)?;
    let first = wal::first_position(wal_dir)?;
    if table.through + 1 < first {
        tracing::warn!(
            file = %file.display(), keys_through = table.through, wal_from = first,
            "the key file ends before the write-ahead log starts: keys of the positions between are not known"
        );
    }
    let mut reader = WalReader::new(wal_dir, (table.through + 1).max(first));
    while let Some((position, view)) = reader.next_view_through(through)? {
        if let Some(key) = view.key {
            table.insert(key_hash(key.key), KeyEntry::of(position, &key), now_micros);
        }
        table.through = position;
    }
    Ok(table)
}

/// Writes the keys of the WAL through `through` into the key file, before the segments holding them are deleted.
pub fn advance(
    file: &Path,
    wal_dir: &Path,
    through: u64,
    retention: Retention,
    now_micros: i64,
) -> Result<(), StoreError> {
    let table = rebuild(file, wal_dir, through, retention, now_micros)?;
    save(file, &table)
}

/// The table a key file holds (an empty one when there is no file), keys past the window at `now_micros` left out.
pub fn load(file: &Path, retention: Retention, now_micros: i64) -> Result<KeyTable, StoreError> {
    let mut table = KeyTable::new(retention.window, retention.max_bytes);
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(table),
        Err(source) => return Err(StoreError::Io { action: "read", path: file.into(), source }),
    };
    let damaged = |reason| StoreError::Damaged { path: file.into(), reason };
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else { return Err(damaged("shorter than its header")) };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(damaged("checksum mismatch"));
    }
    let mut input = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| damaged("not a key file"))?;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if input.len() < n {
            return Err(damaged("cut short"));
        }
        let (head, rest) = input.split_at(n);
        input = rest;
        Ok(head)
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let through = u64_of(take(8)?);
    let count = u64_of(take(8)?);
    for _ in 0..count {
        let hash = u128::from_le_bytes(take(16)?.try_into().expect("16 bytes"));
        let request = take(32)?.try_into().expect("32 bytes");
        let position = u64_of(take(8)?);
        let received_micros = u64_of(take(8)?) as i64;
        let answer_len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let answer = take(answer_len)?.into();
        table.insert(hash, KeyEntry { request, position, received_micros, answer }, now_micros);
    }
    table.through = through;
    Ok(table)
}

/// Replaces the key file with `table`.
pub fn save(file: &Path, table: &KeyTable) -> Result<(), StoreError> {
    let mut bytes = Vec::with_capacity(32 + table.bytes());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&table.through.to_le_bytes());
    bytes.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for (hash, entry) in table.iter() {
        bytes.extend_from_slice(&hash.to_le_bytes());
        bytes.extend_from_slice(&entry.request);
        bytes.extend_from_slice(&entry.position.to_le_bytes());
        bytes.extend_from_slice(&entry.received_micros.to_le_bytes());
        bytes.extend_from_slice(&(entry.answer.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&entry.answer);
    }
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
        move |source| StoreError::Io { action, path: path.into(), source }
    }
    let beside = file.with_extension("tmp");
    let mut out = File::create(&beside).map_err(io("create", &beside))?;
    out.write_all(&bytes).map_err(io("write", &beside))?;
    out.sync_all().map_err(io("fsync", &beside))?;
    drop(out);
    std::fs::rename(&beside, file).map_err(io("rename", &beside))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok(())
}
