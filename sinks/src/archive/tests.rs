//! The archive against the deduplicated input: exactly once, whatever the order, splits, duplicates and crashes.

use std::collections::HashSet;

use proptest::prelude::*;
use weir_pipeline::wal::{Wal, WalOptions};

use super::*;
use crate::test_support::*;

/// First write wins in write order: what the archive must hold.
fn model(records: &[Vec<Input>]) -> Vec<(String, String, i64, u64)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &(d, s, micros, value) in records.iter().flatten() {
        if seen.insert((d, s, micros)) {
            out.push((DEVICES[d as usize].to_owned(), SENSORS[usize::from(s)].to_owned(), micros, value.to_bits()));
        }
    }
    out.sort();
    out
}

/// The verdicts the statistics give in write order: a key written before is a duplicate, a first write whose series
/// had a newer reading is late; (kind, device, sensor, timestamp, value bits), sorted.
fn model_verdicts(records: &[Vec<Input>]) -> Vec<(&'static str, String, String, i64, u64)> {
    let mut seen = HashSet::new();
    let mut newest = std::collections::HashMap::new();
    let mut out = Vec::new();
    for &(d, s, micros, value) in records.iter().flatten() {
        let kind = if !seen.insert((d, s, micros)) {
            Some("duplicate")
        } else if newest.get(&(d, s)).is_some_and(|n| *n > micros) {
            Some("late")
        } else {
            None
        };
        let n = newest.entry((d, s)).or_insert(micros);
        *n = (*n).max(micros);
        if let Some(kind) = kind {
            out.push((
                kind,
                DEVICES[d as usize].to_owned(),
                SENSORS[usize::from(s)].to_owned(),
                micros,
                value.to_bits(),
            ));
        }
    }
    out.sort();
    out
}

fn records_strategy() -> impl Strategy<Value = Vec<Vec<Input>>> {
    let day = 86_400_000_000i64;
    let base = 20_000 * day;
    let reading = (0u8..3, 0u16..4, -3 * day..day, -100i32..100)
        .prop_map(move |(d, s, t, v)| (d, s, base + (t / 1_000_000) * 1_000_000, f64::from(v) / 4.0));
    (proptest::collection::vec(reading, 1..80), proptest::collection::vec(1usize..15, 1..20)).prop_map(
        |(mut readings, splits)| {
            let dups: Vec<Input> = readings.iter().step_by(4).map(|r| (r.0, r.1, r.2, r.3 + 0.5)).collect();
            readings.extend(dups);
            readings.reverse();
            let mut records = Vec::new();
            let mut rest = &readings[..];
            for s in splits.into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at(s.min(rest.len()));
                records.push(head.to_vec());
                rest = tail;
            }
            records
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crate::test_support::cases_or(16), ..ProptestConfig::default() })]

    /// The archive holds exactly the first-written readings, each once.
    #[test]
    fn archive_equals_the_deduplicated_input(records in records_strategy()) {
        let f = fixture(&records, None);
        f.archive(small_flushes()).unwrap();
        prop_assert_eq!(f.contents(), model(&records));
        prop_assert_eq!(f.verdict_contents(), model_verdicts(&records));
    }

    /// A crash at any point of a flush, then a restart, still leaves every reading in the archive exactly once.
    #[test]
    fn a_crash_at_any_point_of_a_flush_loses_and_duplicates_nothing(
        records in records_strategy(),
        fault in prop_oneof![
            Just(FaultPoint::BeforeUpload),
            Just(FaultPoint::MidUpload),
            Just(FaultPoint::BeforeCommit),
            Just(FaultPoint::AfterMove),
        ],
    ) {
        let f = fixture(&records, None);
        let failed = f.archive(ArchiverOptions { fault: Some(fault), ..small_flushes() });
        prop_assert!(matches!(failed, Err(ArchiveError::Injected(p)) if p == fault), "{:?}", failed);
        // Restart with other flush sizes, so the redone flush covers another position range than the parts the
        // failed one left behind: those must be removed, not kept beside the new ones.
        f.archive(ArchiverOptions { flush_rows: 1000, ..small_flushes() }).unwrap();
        prop_assert_eq!(f.contents(), model(&records));
        prop_assert_eq!(f.verdict_contents(), model_verdicts(&records));
    }
}

#[test]
fn a_restart_continues_from_the_checkpoint_and_keeps_deduplicating() {
    let t = 1_795_000_000_000_000;
    let records = vec![vec![(0, 0, t, 1.0), (1, 0, t, 2.0)], vec![(0, 0, t, 9.0)], vec![(0, 0, t + 1, 3.0)]];
    let f = fixture(&records[..1], None);
    f.archive(small_flushes()).unwrap();
    let committed = Checkpoint { path: f.checkpoint.clone() }.read().unwrap();
    assert_eq!(committed, 1);
    // More records arrive after the restart, one a duplicate of an archived reading, in new segments (one a
    // record), and the archived segment is deleted: the archiver goes on from its checkpoint, and leaves out what
    // the statistics' verdicts name.
    let (wal, _) = Wal::open(&f.wal_dir, WalOptions { segment_bytes: 1, ..WalOptions::default() }).unwrap();
    let mut last = 0;
    for record in &records[1..] {
        last = wal.appender().append_blocking(&batch_of(&record[..1])).unwrap();
    }
    assert_eq!(weir_pipeline::wal::trim_through(&f.wal_dir, committed).unwrap().len(), 1);
    assert_eq!(weir_pipeline::wal::first_position(&f.wal_dir).unwrap(), 2);
    let f = Fixture { durable: wal.appender().watch_durable(), last, verdicts: ModelVerdicts::of(&records), ..f };
    f.archive(small_flushes()).unwrap();
    wal.close();
    assert_eq!(f.contents(), model(&records));
}

#[test]
fn memory_store_and_part_names() {
    let t = 1_795_000_000_000_000;
    let records = vec![vec![(0, 0, t, 1.0), (0, 0, t - 86_400_000_000, 2.0)]];
    let f = fixture(&records, Some("memory:///"));
    f.archive(small_flushes()).unwrap();
    let parts = f.runtime.block_on(f.location.list_parts()).unwrap();
    let names: Vec<String> = parts.iter().map(|p| p.path.to_string()).collect();
    assert_eq!(
        names,
        vec![
            "readings/date=2026-11-17/part-00000000000000000001-00000000000000000001.parquet",
            "readings/date=2026-11-18/part-00000000000000000001-00000000000000000001.parquet",
        ]
    );
}

#[test]
fn stopping_flushes_the_whole_durable_log_not_just_one_flush() {
    let t = 1_795_000_000_000_000;
    // 40 records of one reading each, flushes of 7 readings, no age trigger: several flushes are needed at stop.
    let records: Vec<Vec<Input>> = (0..40).map(|i| vec![(0, 0, t + i, i as f64)]).collect();
    let f = fixture(&records, None);
    let options = ArchiverOptions { flush_rows: 7, flush_age: Duration::from_secs(3600), ..small_flushes() };
    let archiver = Archiver::start(
        f.wal_dir.clone(),
        f.durable.clone(),
        f.verdicts.clone(),
        f.location.clone(),
        f.checkpoint.clone(),
        options,
        f.runtime.handle().clone(),
    )
    .unwrap();
    archiver.stop().unwrap();
    assert_eq!(Checkpoint { path: f.checkpoint.clone() }.read().unwrap(), f.last);
    assert_eq!(f.contents(), model(&records));
}

/// The archiver keeps no filter of its own: it archives a record only once the statistics have decided it, leaves
/// out the duplicates they dropped, and (in a cluster) names its parts and staging after its process.
#[test]
fn with_verdicts_the_archiver_waits_for_them_and_keeps_what_the_statistics_admitted() {
    let records: Vec<Vec<Input>> = (0..12)
        .map(|i| vec![(0, 0, 20_000 * 86_400_000_000 + (i % 5) * 1_000_000, i as f64), (1, 1, i * 1_000_000, 1.0)])
        .collect();
    let f = fixture(&records, None);
    let verdicts = f.verdicts.clone();
    verdicts.decided.store(6, Ordering::Release);
    let location = f.location.clone().shared_by(ClusterShare { process: 1, processes: 3 });
    let archiver = Archiver::start(
        f.wal_dir.clone(),
        f.durable.clone(),
        verdicts.clone(),
        location.clone(),
        f.checkpoint.clone(),
        small_flushes(),
        f.runtime.handle().clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while archiver.progress.committed.load(Ordering::Acquire) < 6 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(archiver.progress.read_through.load(Ordering::Acquire), 6, "nothing read past the decided position");
    verdicts.decided.store(f.last, Ordering::Release);
    while archiver.progress.committed.load(Ordering::Acquire) < f.last {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    archiver.stop().unwrap();
    let parts = f.runtime.block_on(location.list_parts()).unwrap();
    assert!(parts.iter().all(|p| p.process == Some(1) && p.path.as_ref().contains("part-p1-")), "{parts:?}");
    assert_eq!(f.contents(), model(&records));
}

#[test]
fn a_checkpoint_that_does_not_say_exactly_one_position_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive-checkpoint.json");
    let checkpoint = Checkpoint { path: path.clone() };
    assert_eq!(checkpoint.read().unwrap(), 0, "no checkpoint yet: nothing archived");
    checkpoint.write(42).unwrap();
    assert_eq!(checkpoint.read().unwrap(), 42);
    for bad in
        ["{}", "{\"archived_through\":\"7\"}", "{\"archived_thru\":7}", "{\"archived_through\":7,\"x\":1}", "", "7"]
    {
        std::fs::write(&path, bad).unwrap();
        let err = checkpoint.read().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("restore"), "{bad:?}: {err}");
    }
}

/// Issue 17, 12: relative archive paths with `..` were refused (the object store refuses `..`), after creating
/// directories; they are resolved by name.
#[test]
fn relative_archive_paths_with_dot_dot_are_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    std::fs::create_dir_all(&nested).unwrap();
    let relative = format!("{}/../../x/./y", nested.display());
    let location = ArchiveLocation::open(&relative).unwrap();
    assert_eq!(location.url.to_file_path().unwrap(), dir.path().join("x").join("y"));
    assert!(dir.path().join("x/y/readings").is_dir());
    assert_eq!(normalized(std::path::Path::new("/a/./b/../c")).unwrap(), std::path::PathBuf::from("/a/c"));
}
