//! Compaction: tiers, what may be compacted, and that a compaction — finished, interrupted at any step, or overtaken
//! by a seal — never changes what the archive holds or what the seal makes of it.

use std::collections::BTreeMap;

use object_store::ObjectStoreExt;
use proptest::prelude::*;

use super::*;
use crate::part::{ArchivedReading, read_parquet, sort_for_archive, write_parquet};
use crate::seal::seal_day;

const DAY: &str = "2026-11-19";
const T: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z
const DAY_MICROS: i64 = 86_400_000_000;
/// A "now" at which DAY is today (and not close to due).
const TODAY: i64 = T + DAY_MICROS / 2;
const GRACE: i64 = 3_600_000_000;

struct Archive {
    location: ArchiveLocation,
    rt: tokio::runtime::Runtime,
}

impl Archive {
    fn new() -> Archive {
        Archive {
            location: ArchiveLocation::open("memory:///").unwrap(),
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        }
    }

    /// One flush's part per element, positions in order (each reading its own position).
    fn put_flushes(&self, flushes: &[Vec<ArchivedReading>]) -> u64 {
        let mut position = 0;
        for rows in flushes {
            let mut rows = rows.clone();
            sort_for_archive(&mut rows);
            let (first, last) = (position + 1, position + rows.len().max(1) as u64);
            position = last;
            let path = self.location.part_path(DAY, first, last);
            self.rt.block_on(self.location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
        }
        position
    }

    fn parts(&self) -> Vec<PartName> {
        let mut parts = self.rt.block_on(self.location.list_parts()).unwrap();
        parts.sort_by_key(|p| (p.first, p.last));
        parts
    }

    /// Every row of every part (duplicates included): what a query over the day reads.
    fn visible(&self) -> Vec<(String, String, i64, u64)> {
        let mut rows: Vec<_> = self
            .parts()
            .iter()
            .flat_map(|p| {
                let bytes = self.rt.block_on(async { self.location.store.get(&p.path).await?.bytes().await }).unwrap();
                read_parquet(bytes).unwrap()
            })
            .map(|r| (r.device, r.sensor, r.micros, r.value.to_bits()))
            .collect();
        rows.sort();
        rows
    }

    fn compact_due(&self, committed: u64) -> Vec<CompactOutcome> {
        self.rt.block_on(compact_due_parts(&self.location, None, committed, TODAY, GRACE)).unwrap()
    }

    /// The sealed file's and the dump's bytes.
    fn seal(&self) -> (Vec<u8>, Vec<u8>) {
        let outcome = self.rt.block_on(seal_day(&self.location, DAY, None, None)).unwrap();
        let get =
            |p: &Path| self.rt.block_on(async { self.location.store.get(p).await?.bytes().await }).unwrap().to_vec();
        (get(&outcome.sealed), get(&outcome.dump))
    }
}

fn reading(device: usize, sensor: usize, second: i64, value: f64, written: u64) -> ArchivedReading {
    ArchivedReading {
        device: format!("d{device}"),
        sensor: ["speed", "fuel", "rpm"][sensor].into(),
        value,
        micros: T + second * 1_000_000,
        written,
    }
}

/// `n` flushes of a few distinct readings each.
fn flushes(n: usize) -> Vec<Vec<ArchivedReading>> {
    (0..n)
        .map(|f| {
            (0..5).map(|i| reading(i % 3, i % 2, (f * 5 + i) as i64, (f * 5 + i) as f64, (f * 5 + i) as u64)).collect()
        })
        .collect()
}

/// The first write of each key, as the seal keeps it: what the archive must hold, whatever compaction did.
fn first_writes(flushes: &[Vec<ArchivedReading>]) -> Vec<(String, String, i64, u64)> {
    let mut kept: BTreeMap<(String, String, i64), (u64, u64)> = BTreeMap::new();
    for r in flushes.iter().flatten() {
        let key = (r.device.clone(), r.sensor.clone(), r.micros);
        let candidate = (r.written, r.value.to_bits());
        kept.entry(key)
            .and_modify(|k| {
                if candidate.0 < k.0 {
                    *k = candidate
                }
            })
            .or_insert(candidate);
    }
    kept.into_iter().map(|((d, s, m), (_, v))| (d, s, m, v)).collect()
}

#[test]
fn flushes_compact_in_tiers_of_eight_and_keep_every_reading() {
    let a = Archive::new();
    let data = flushes(70);
    let committed = a.put_flushes(&data);
    let before = a.visible();
    let done = a.compact_due(committed);
    // 70 flushes: 8 tier-1 parts (64 flushes), merged into one tier-2 part; 6 flushes wait.
    assert_eq!(done.len(), 9);
    let tiers: Vec<u8> = a.parts().iter().map(|p| p.tier).collect();
    assert_eq!(tiers, vec![2, 0, 0, 0, 0, 0, 0]);
    assert_eq!(a.parts()[0].first, 1, "the tier-2 part covers the positions of the flushes it replaced");
    assert_eq!(a.parts()[0].last, 64 * 5);
    assert_eq!(a.visible(), before, "every reading once, none lost");
    assert!(a.compact_due(committed).is_empty(), "nothing more is due");
}

#[test]
fn only_committed_parts_of_days_far_from_due_and_never_sealed_are_compacted() {
    let a = Archive::new();
    let committed = a.put_flushes(&flushes(8));
    // The eighth flush is beyond the checkpoint: it may be written again after a crash.
    let last_part = a.parts()[7].clone();
    assert!(a.rt.block_on(compact_due_parts(&a.location, None, last_part.first - 1, TODAY, GRACE)).unwrap().is_empty());
    // Close to due: the day's end plus half the grace has passed.
    let close = T + DAY_MICROS + GRACE / 2;
    assert!(a.rt.block_on(compact_due_parts(&a.location, None, committed, close, GRACE)).unwrap().is_empty());
    // Sealed once: late parts are the seal's, not compaction's.
    let b = Archive::new();
    let committed = b.put_flushes(&flushes(1));
    b.seal();
    let more: Vec<Vec<ArchivedReading>> = (0..8).map(|f| vec![reading(0, 0, 1000 + f, 1.0, 1000 + f as u64)]).collect();
    for (i, rows) in more.iter().enumerate() {
        let path = b.location.part_path(DAY, committed + 1 + i as u64, committed + 1 + i as u64);
        b.rt.block_on(b.location.store.put(&path, PutPayload::from(write_parquet(rows).unwrap()))).unwrap();
    }
    assert!(b.compact_due(committed + 8).is_empty());
}

#[test]
fn an_interrupted_compaction_is_finished_at_start_at_every_step() {
    for stop in [Stop::Staged, Stop::Journaled, Stop::Moved, Stop::FirstDeleted] {
        let a = Archive::new();
        let data = flushes(8);
        a.put_flushes(&data);
        let (before, parts) = (a.visible(), a.parts());
        let sealed_without = {
            let b = Archive::new();
            b.put_flushes(&data);
            b.seal()
        };
        let err = a.rt.block_on(compact(&a.location, DAY, &parts, None, Some(stop)));
        assert!(err.is_err(), "{stop:?}");
        a.rt.block_on(finish_interrupted_compactions(&a.location)).unwrap();
        assert_eq!(a.visible(), before, "after finishing a compaction stopped {stop:?}");
        let tiers: Vec<u8> = a.parts().iter().map(|p| p.tier).collect();
        match stop {
            Stop::Staged => assert_eq!(tiers, vec![0; 8], "not journaled: the parts stay"),
            _ => assert_eq!(tiers, vec![1], "journaled: finished"),
        }
        let journal = a.rt.block_on(read_journal(&a.location, DAY)).unwrap();
        assert!(journal.is_none_or(|j| j.replacing.is_empty()));
        assert_eq!(a.seal(), sealed_without, "the seal makes the same files of it ({stop:?})");
    }
}

#[test]
fn a_compaction_interrupted_before_its_move_is_dropped_once_a_seal_took_its_parts() {
    let a = Archive::new();
    a.put_flushes(&flushes(8));
    let (before, parts) = (a.visible(), a.parts());
    assert!(a.rt.block_on(compact(&a.location, DAY, &parts, None, Some(Stop::Journaled))).is_err());
    // `weir dump` seals the day before the server starts again.
    a.seal();
    let sealed = a.visible();
    assert_eq!(sealed, before);
    a.rt.block_on(finish_interrupted_compactions(&a.location)).unwrap();
    assert_eq!(a.visible(), sealed, "the staged part does not come back beside the sealed file");
    assert_eq!(a.parts().len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_support::cases_or(24)))]

    /// Random flushes over few keys — duplicates inside a flush, across flushes, and of later writes with other
    /// values — compacted at random points: the seal afterwards writes the same bytes as without compaction.
    #[test]
    fn compaction_never_changes_what_the_seal_keeps(
        flushes in prop::collection::vec(
            prop::collection::vec((0usize..3, 0usize..3, 0i64..20, -5i32..5), 0..6), 1..40),
        compact_after in prop::collection::vec(0usize..40, 0..4),
    ) {
        let mut written = 0u64;
        let data: Vec<Vec<ArchivedReading>> = flushes
            .iter()
            .map(|f| {
                f.iter()
                    .map(|&(d, s, t, v)| {
                        written += 1;
                        reading(d, s, t, f64::from(v) * 0.5, written)
                    })
                    .collect()
            })
            .collect();
        let plain = Archive::new();
        plain.put_flushes(&data);
        let compacted = Archive::new();
        let mut position = 0u64;
        for (i, rows) in data.iter().enumerate() {
            let mut rows = rows.clone();
            sort_for_archive(&mut rows);
            let (first, last) = (position + 1, position + rows.len().max(1) as u64);
            position = last;
            let path = compacted.location.part_path(DAY, first, last);
            compacted.rt.block_on(compacted.location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
            if compact_after.contains(&i) {
                compacted.compact_due(position);
            }
        }
        compacted.compact_due(position);
        let model = first_writes(&data);
        let (sealed, dump) = compacted.seal();
        prop_assert_eq!((sealed, dump), plain.seal());
        prop_assert_eq!(compacted.visible(), model);
    }
}

#[test]
fn a_merge_counts_its_bytes_for_the_memory_budget_until_it_ends_however_it_ends() {
    let progress = Arc::new(ArchiveProgress::default());
    {
        let _guard = ArchiveProgress::merging(Some(&progress), 40);
        assert_eq!(progress.merging.load(std::sync::atomic::Ordering::Acquire), 40);
    }
    assert_eq!(progress.merging.load(std::sync::atomic::Ordering::Acquire), 0);
    let a = Archive::new();
    a.put_flushes(&flushes(8));
    let parts = a.parts();
    assert!(a.rt.block_on(compact(&a.location, DAY, &parts, Some(&progress), Some(Stop::Journaled))).is_err());
    assert_eq!(progress.merging.load(std::sync::atomic::Ordering::Acquire), 0, "released on the error path");
}
