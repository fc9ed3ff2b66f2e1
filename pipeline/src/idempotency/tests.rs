//! Keys against a model: random requests under colliding keys, random trims and restarts; whatever happens, the
//! rebuilt table answers every key in its window with its first write.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;

use super::store::{self, Retention};
use super::*;
use crate::reading::ReadingBatch;
use crate::wal::{self, KeyView, Wal, WalAppender, WalOptions};

const HOUR: i64 = 3_600_000_000;

fn retention(max_bytes: usize) -> Retention {
    Retention { window: Duration::from_secs(24 * 3600), max_bytes }
}

fn append(a: &WalAppender, key: &str, request: u8, received_micros: i64) -> u64 {
    let answer = format!("{{\"accepted\":{request}}}");
    let view = KeyView { key, request: [request; 32], received_micros, answer: answer.as_bytes() };
    let mut payload = Vec::new();
    wal::record::encode_keyed_batch(&ReadingBatch::new(), &view, &mut payload);
    a.append_payload_blocking(payload).unwrap()
}

#[test]
fn keys_are_checked_as_sent() {
    assert_eq!(IdempotencyKey::parse("\"8e03978e-40d5\"").unwrap().as_str(), "8e03978e-40d5");
    assert_eq!(IdempotencyKey::parse(" abc ").unwrap().as_str(), "abc");
    assert_eq!(IdempotencyKey::parse("\"\""), Err(KeyError::Empty));
    assert_eq!(IdempotencyKey::parse(&"k".repeat(256)), Err(KeyError::TooLong(256)));
    assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
    assert_eq!(IdempotencyKey::parse("a\u{7f}b"), Err(KeyError::Character(0x7f)));
    assert!(IdempotencyKey::parse("é").unwrap_err().to_string().contains("visible ASCII"));
}

#[test]
fn the_request_hash_does_not_depend_on_chunk_boundaries_but_on_endpoint_and_parameters() {
    let whole = |endpoint: &str, params: &str, chunks: &[&[u8]]| {
        let mut h = RequestHasher::new(endpoint, params);
        chunks.iter().for_each(|c| h.update(c));
        h.finish()
    };
    assert_eq!(whole("/ingest", "", &[b"ab", b"c"]), whole("/ingest", "", &[b"abc"]));
    assert_ne!(whole("/ingest", "", &[b"abc"]), whole("/write", "", &[b"abc"]));
    assert_ne!(whole("/ingest", "atomic=true", &[b"abc"]), whole("/ingest", "", &[b"abc"]));
    assert_ne!(whole("/ingest", "a", &[b"bc"]), whole("/ingest", "ab", &[b"c"]));
}

#[test]
fn a_table_forgets_after_its_window_and_beyond_its_bytes_counting_early_evictions() {
    let entry = |received_micros, answer: &str| KeyEntry {
        request: [0; 32],
        position: 1,
        received_micros,
        answer: answer.as_bytes().into(),
    };
    let mut t = KeyTable::new(Duration::from_secs(3600), 10 * (KeyTable::ENTRY_BYTES + 2));
    t.insert(1, entry(0, "{x}"), 0);
    t.insert(1, entry(0, "{}"), 5);
    assert_eq!(t.get(1).unwrap().answer.as_ref(), b"{}", "a key written again (it was forgotten) has its new answer");
    t.insert(2, entry(HOUR / 2, "{}"), HOUR / 2);
    t.insert(3, entry(HOUR, "{}"), HOUR);
    assert!(t.get(1).is_none() && t.get(2).is_some() && t.get(3).is_some(), "key 1 is a window old");
    assert_eq!(t.evicted(), 0);
    assert!(t.get(4).is_none());
    t.insert(4, entry(-HOUR, "{}"), HOUR);
    assert!(t.get(4).is_none(), "an entry already past its window is not kept");
    for k in 10..30 {
        t.insert(k, entry(HOUR, "{}"), HOUR);
    }
    assert_eq!(t.len(), 10);
    assert!(t.bytes() <= 10 * (KeyTable::ENTRY_BYTES + 2));
    assert_eq!(t.evicted(), 12);
    assert!(t.get(29).is_some() && t.get(2).is_none());
}

#[test]
fn claims_refuse_a_second_request_in_flight_and_see_the_first_answer() {
    let keys = Keys::in_memory(Duration::from_secs(60), 1 << 20);
    let key = IdempotencyKey::parse("k1").unwrap();
    let claim = keys.claim(&key).unwrap();
    assert!(claim.earlier().is_none());
    assert!(keys.claim(&key).is_none(), "in flight");
    drop(claim);
    let claim = keys.claim(&key).expect("released when dropped");
    let entry =
        KeyEntry { request: [9; 32], position: 7, received_micros: now_micros(), answer: b"{}".as_slice().into() };
    claim.complete(entry.clone());
    assert_eq!(keys.claim(&key).unwrap().earlier(), Some(&entry));
    assert_eq!(keys.usage().keys, 1);
}

#[test]
fn a_damaged_key_file_is_refused_with_what_to_do_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(store::FILE_NAME);
    let mut table = KeyTable::new(Duration::from_secs(3600), 1 << 20);
    for k in 0..3u8 {
        let answer = vec![k; k as usize * 3].into_boxed_slice();
        table.insert(
            u128::from(k),
            KeyEntry { request: [k; 32], position: 10 + u64::from(k), received_micros: 0, answer },
            0,
        );
    }
    store::save(&file, &table).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let loaded = store::load(&file, retention(1 << 20), 0).unwrap();
    assert_eq!(loaded.iter().collect::<Vec<_>>(), table.iter().collect::<Vec<_>>());
    for cut in 0..bytes.len() {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let e = store::load(&file, retention(1 << 20), 0).unwrap_err();
        assert!(e.to_string().contains("Delete it"), "{e}");
    }
    for flip in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[flip] ^= 0x40;
        std::fs::write(&file, &damaged).unwrap();
        assert!(matches!(store::load(&file, retention(1 << 20), 0), Err(store::StoreError::Damaged { .. })));
    }
}

/// One step of a run against the log.
#[derive(Debug, Clone)]
enum Step {
    /// A keyed request (key index, request byte) answered at this hour.
    Write(u8, u8, u8),
    /// Keys of the log through the current end go to the key file, and the segments are deleted.
    Trim,
    /// The process restarts: the table is rebuilt from the key file and the log.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..12, 0u8..3, 0u8..30).prop_map(|(k, r, h)| Step::Write(k, r, h)),
        1 => Just(Step::Trim),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the order of writes, trims and restarts, the table holds each key's first durable write for as long
    /// as its window lasts: the same as a model that never forgets anything but its window.
    #[test]
    fn the_rebuilt_table_equals_a_model_of_first_writes(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let (wal_dir, file) = (dir.path().join("wal"), dir.path().join(store::FILE_NAME));
        let options = || WalOptions { segment_bytes: 400, ..WalOptions::default() };
        let (mut log, _) = Wal::open(&wal_dir, options()).unwrap();
        let keep = retention(1 << 30);
        let mut live = Keys::new(store::rebuild(&file, &wal_dir, u64::MAX, keep, 0).unwrap());
        let mut model: HashMap<String, (u8, u64, i64)> = HashMap::new();
        let mut now = 0i64;
        for step in steps {
            match step {
                Step::Write(k, request, hour) => {
                    now = now.max(i64::from(hour) * HOUR);
                    model.retain(|_, (_, _, received)| *received + 24 * HOUR > now);
                    let key = IdempotencyKey::parse(&format!("key-{k}")).unwrap();
                    let claim = live.claim_at(&key, now).unwrap();
                    if claim.earlier().is_none() {
                        let position = append(&log.appender(), key.as_str(), request, now);
                        let answer = format!("{{\"accepted\":{request}}}").into_bytes().into_boxed_slice();
                        claim.complete(KeyEntry { request: [request; 32], position, received_micros: now, answer });
                        model.entry(key.to_string()).or_insert((request, position, now));
                    }
                }
                Step::Trim => {
                    let end = log.appender().durable_position();
                    if let Some(through) = wal::trimmable_through(&wal_dir, end).unwrap() {
                        store::advance(&file, &wal_dir, through, keep, now).unwrap();
                        wal::trim_through(&wal_dir, through).unwrap();
                    }
                }
                Step::Restart => {
                    log.close();
                    log = Wal::open(&wal_dir, options()).unwrap().0;
                    live = Keys::new(store::rebuild(&file, &wal_dir, u64::MAX, keep, now).unwrap());
                }
            }
            model.retain(|_, (_, _, received)| *received + 24 * HOUR > now);
            live.table().expire(now);
            let mut seen: Vec<(u128, [u8; 32], u64)> =
                live.table().iter().map(|(h, e)| (h, e.request, e.position)).collect();
            seen.sort();
            let mut expected: Vec<(u128, [u8; 32], u64)> =
                model.iter().map(|(k, (r, p, _))| (key_hash(k), [*r; 32], *p)).collect();
            expected.sort();
            prop_assert_eq!(seen, expected);
        }
        log.close();
    }
}
