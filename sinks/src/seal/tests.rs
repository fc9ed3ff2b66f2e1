//! Sealing: merge, dedup across parts, idempotence to the byte, late readings, the dump's lines, crash recovery.

use std::io::Read;

use object_store::ObjectStoreExt;

use super::*;
use crate::part::{ArchivedReading, read_parquet, sort_for_archive, write_parquet};

const DAY: &str = "2026-11-19";
const T: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z

fn r(device: &str, sensor: &str, secs: i64, value: f64) -> ArchivedReading {
    ArchivedReading { device: device.into(), sensor: sensor.into(), value, micros: T + secs * 1_000_000, written: 0 }
}

struct Store {
    location: ArchiveLocation,
    rt: tokio::runtime::Runtime,
}

impl Store {
    fn new() -> Store {
        Store {
            location: ArchiveLocation::open("memory:///").unwrap(),
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        }
    }
    fn put_part(&self, first: u64, last: u64, mut rows: Vec<ArchivedReading>) {
        sort_for_archive(&mut rows);
        let path = self.location.part_path(DAY, first, last);
        self.rt.block_on(self.location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
    }
    fn put_verdicts(&self, kind: crate::archive::VerdictKind, first: u64, last: u64, mut rows: Vec<ArchivedReading>) {
        sort_for_archive(&mut rows);
        let path = self.location.verdict_path(kind, DAY, first, last);
        self.rt.block_on(self.location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
    }
    fn get(&self, path: &Path) -> Vec<u8> {
        self.rt.block_on(async { self.location.store.get(path).await.unwrap().bytes().await.unwrap() }).to_vec()
    }
    fn seal(&self) -> SealOutcome {
        self.rt.block_on(seal_day(&self.location, DAY, None, None)).unwrap()
    }
    fn parts(&self) -> Vec<PartName> {
        self.rt.block_on(self.location.list_parts()).unwrap()
    }
    fn dump_lines(&self) -> Vec<serde_json::Value> {
        let gz = self.get(&dump_path(&self.location.root, DAY));
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

#[test]
fn sealing_merges_parts_keeps_first_writes_and_is_byte_identical_when_repeated() {
    let s = Store::new();
    s.put_part(1, 4, vec![r("default", "speed", 30, 1.0), r("truck-7", "fuel", 10, 2.0)]);
    // A later part repeats a key with another value (a duplicate older than the live horizon): the first wins.
    s.put_part(5, 9, vec![r("default", "speed", 30, 99.0), r("default", "speed", 20, 3.0)]);
    let first = s.seal();
    assert_eq!(first.parts_merged, 2);
    assert_eq!(first.record.readings, 3);
    assert_eq!(first.record.late_readings, 0);
    let parts = s.parts();
    assert_eq!(parts.len(), 1, "one file for the day");
    assert_eq!((parts[0].first, parts[0].last), (1, 9));
    let sealed = s.get(&parts[0].path);
    let rows = read_parquet(sealed.clone().into()).unwrap();
    assert_eq!(rows.iter().map(|r| r.value).collect::<Vec<_>>(), vec![2.0, 3.0, 1.0], "sorted by sensor, device, time");
    let dump = s.get(&dump_path(&s.location.root, DAY));

    let again = s.seal();
    assert!(!again.changed);
    assert_eq!(s.get(&s.parts()[0].path), sealed, "same Parquet bytes");
    assert_eq!(s.get(&dump_path(&s.location.root, DAY)), dump, "same dump bytes");
}

#[test]
fn the_dump_is_the_replaced_systems_format_in_the_archives_order() {
    let s = Store::new();
    s.put_part(
        1,
        1,
        vec![r("default", "speed", 30, 55.5), r("truck-7", "fuel", 10, 2.0), r("default", "fuel", 20, 12.0)],
    );
    s.seal();
    let lines = s.dump_lines();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"sensor": "fuel", "value": 12.0, "timestamp": "2026-11-19T00:00:20Z"}),
            serde_json::json!({"sensor": "fuel", "value": 2.0, "timestamp": "2026-11-19T00:00:10Z", "device": "truck-7"}),
            serde_json::json!({"sensor": "speed", "value": 55.5, "timestamp": "2026-11-19T00:00:30Z"}),
        ]
    );
}

#[test]
fn late_readings_are_merged_in_by_a_new_seal_and_counted() {
    let s = Store::new();
    s.put_part(1, 3, vec![r("default", "speed", 1, 1.0), r("default", "speed", 2, 2.0)]);
    s.seal();
    // Late: two new readings and one duplicate of a sealed key.
    s.put_part(
        10,
        12,
        vec![r("default", "speed", 3, 3.0), r("default", "fuel", 1, 4.0), r("default", "speed", 1, 9.0)],
    );
    let resealed = s.seal();
    assert!(resealed.changed);
    assert_eq!(resealed.record.readings, 4);
    assert_eq!(resealed.record.late_readings, 2);
    assert_eq!(s.parts().len(), 1);
    assert_eq!(s.dump_lines().len(), 4);
    let records = s.rt.block_on(seal_records(&s.location)).unwrap();
    assert_eq!(records[0].late_readings, 2);
}

/// Issue 16, 2: in one flush, a duplicate older than the dedup horizon (admitted again) with a smaller value: the
/// part kept the rows ordered by value and the seal kept the later write (3), not the first (5).
#[test]
fn a_duplicate_in_the_same_part_keeps_the_first_write_through_the_seal() {
    let s = Store::new();
    s.put_part(1, 3, vec![r("default", "speed", 0, 5.0), r("default", "speed", 9, 1.0), r("default", "speed", 0, 3.0)]);
    let outcome = s.seal();
    assert_eq!(outcome.record.readings, 2);
    let sealed = read_parquet(s.get(&outcome.sealed).into()).unwrap();
    assert_eq!(sealed.iter().map(|r| r.value).collect::<Vec<_>>(), vec![5.0, 1.0], "{sealed:?}");
    let dump: Vec<f64> = s.dump_lines().iter().map(|l| l["value"].as_f64().unwrap()).collect();
    assert_eq!(dump, vec![5.0, 1.0]);
}

#[test]
fn an_interrupted_seal_is_finished_at_the_next_start() {
    an_interrupted_seal_is_finished(Store::new());
}

/// Issue 16, 4: with these characters in the archive's path, finishing an interrupted seal encoded the journal's
/// paths twice, deleted nothing and left every reading twice.
#[test]
fn an_interrupted_seal_is_finished_whatever_characters_the_archive_path_holds() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("F~x #%[]{}^|<>\"\\*? é");
    std::fs::create_dir_all(&odd).unwrap();
    let location = ArchiveLocation::open(odd.to_str().unwrap()).unwrap();
    an_interrupted_seal_is_finished(Store {
        location,
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
    });
}

fn an_interrupted_seal_is_finished(s: Store) {
    s.put_part(1, 2, vec![r("default", "speed", 1, 1.0)]);
    s.put_part(3, 4, vec![r("default", "speed", 2, 2.0)]);
    // Simulate a crash after the journal and the staged file, before the swap.
    let sealed = s.location.part_path(DAY, 1, 4);
    let staged = s.location.root.clone().join("staging").join(format!("seal-{DAY}.parquet"));
    let mut rows = vec![r("default", "speed", 1, 1.0), r("default", "speed", 2, 2.0)];
    sort_for_archive(&mut rows);
    s.rt.block_on(s.location.store.put(&staged, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
    let record = SealRecord {
        date: DAY.into(),
        readings: 2,
        late_readings: 0,
        first: 1,
        last: 4,
        replacing: vec![s.location.part_path(DAY, 1, 2).to_string(), s.location.part_path(DAY, 3, 4).to_string()],
        through: BTreeMap::new(),
    };
    s.rt.block_on(write_journal(&s.location, &record)).unwrap();
    s.rt.block_on(finish_interrupted_seals(&s.location)).unwrap();
    let parts = s.parts();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].path, sealed);
    assert_eq!(read_parquet(s.get(&sealed).into()).unwrap(), rows);
}

#[test]
fn days_are_due_after_their_end_plus_grace() {
    let s = Store::new();
    s.put_part(1, 1, vec![r("default", "speed", 1, 1.0)]);
    let hour = 3_600_000_000;
    let end_of_day = T + 24 * hour;
    assert!(s.rt.block_on(days_due(&s.location, end_of_day + hour / 2, hour)).unwrap().is_empty());
    assert_eq!(s.rt.block_on(days_due(&s.location, end_of_day + 2 * hour, hour)).unwrap(), vec![DAY.to_string()]);
    s.seal();
    assert!(s.rt.block_on(days_due(&s.location, end_of_day + 2 * hour, hour)).unwrap().is_empty(), "sealed");
}

/// A cluster's archive: three processes' parts in one store. Only the day's owner seals it, only committed parts
/// are merged, the sealed file and dump equal those of one process given the same readings, and late parts of any
/// process are merged by the next seal and counted.
#[test]
fn in_a_cluster_the_owner_seals_every_processs_committed_parts() {
    use crate::archive::{ClusterShare, day_owner};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let shared = ArchiveLocation::open("memory:///").unwrap();
    let owner = day_owner(DAY, 3).unwrap();
    let at = |process: u32| shared.clone().shared_by(ClusterShare { process, processes: 3 });
    let put = |location: &ArchiveLocation, first: u64, last: u64, mut rows: Vec<ArchivedReading>| {
        sort_for_archive(&mut rows);
        let path = location.part_path(DAY, first, last);
        rt.block_on(location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
    };
    let readings = [r("default", "speed", 1, 1.0), r("truck-7", "fuel", 2, 2.0), r("default", "speed", 3, 3.0)];
    put(&at(0), 1, 1, vec![readings[0].clone()]);
    put(&at(1), 1, 2, vec![readings[1].clone()]);
    put(&at(2), 4, 4, vec![readings[2].clone()]);
    // Process 2's flush of 5..=5 was moved but never committed: left out.
    put(&at(2), 5, 5, vec![r("default", "speed", 9, 9.0)]);
    let committed: BTreeMap<u32, u64> = [(0, 1), (1, 2), (2, 4)].into();

    let hour = 3_600_000_000;
    let later = T + 26 * hour;
    for p in 0..3 {
        let due = rt.block_on(days_due(&at(p), later, hour)).unwrap();
        assert_eq!(due.is_empty(), p != owner, "only process {owner} seals {DAY}; process {p}: {due:?}");
    }
    let sealer = at(owner);
    let outcome = rt.block_on(seal_committed_day(&sealer, DAY, None, None, Some(&committed))).unwrap();
    assert_eq!((outcome.parts_merged, outcome.record.readings, outcome.late_now), (3, 3, 0));
    assert_eq!(outcome.sealed, sealer.sealed_path(DAY, 0, 0));

    // One process, the same readings: the same sealed rows and the same dump, byte for byte.
    let single = Store::new();
    single.put_part(1, 3, readings.to_vec());
    let alone = single.seal();
    let get = |location: &ArchiveLocation, path: &Path| {
        rt.block_on(async { location.store.get(path).await.unwrap().bytes().await.unwrap() }).to_vec()
    };
    assert_eq!(get(&shared, &outcome.sealed), single.get(&alone.sealed), "sealed file");
    assert_eq!(get(&shared, &outcome.dump), single.get(&alone.dump), "dump");
    let left: Vec<PartName> = rt.block_on(shared.list_parts()).unwrap();
    assert_eq!(left.len(), 2, "the sealed file and the uncommitted part: {left:?}");

    // Process 2 commits 5..=5 and process 0 writes a late part: the next seal merges both and counts them late.
    put(&at(0), 2, 2, vec![r("default", "speed", 10, 10.0)]);
    let committed: BTreeMap<u32, u64> = [(0, 2), (1, 2), (2, 5)].into();
    let again = rt.block_on(seal_committed_day(&sealer, DAY, None, None, Some(&committed))).unwrap();
    assert_eq!((again.record.readings, again.late_now, again.record.late_readings), (5, 2, 2));
    assert_eq!(rt.block_on(shared.list_parts()).unwrap().len(), 1);
    let unchanged = rt.block_on(seal_committed_day(&sealer, DAY, None, None, Some(&committed))).unwrap();
    assert!(!unchanged.changed);
    assert_eq!(unchanged.record.late_readings, 2);
}

/// Issue 16, 3: in a cluster the seal keeps the first write by the statistics' order (write time), not the lower
/// process's. Process 1 wrote X = 5, then (later, beyond the dedup horizon, so the statistics admitted it too)
/// process 0 wrote X = 3: the sealed file and the dump hold 5 — and a later reseal never reopens it, even for a
/// late part with an earlier write time.
#[test]
fn in_a_cluster_the_seal_keeps_the_first_write_by_write_time_not_the_lower_process() {
    use crate::archive::{ClusterShare, day_owner};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let shared = ArchiveLocation::open("memory:///").unwrap();
    let at = |process: u32| shared.clone().shared_by(ClusterShare { process, processes: 2 });
    let put = |location: &ArchiveLocation, first: u64, last: u64, mut rows: Vec<ArchivedReading>| {
        sort_for_archive(&mut rows);
        let path = location.part_path(DAY, first, last);
        rt.block_on(location.store.put(&path, PutPayload::from(write_parquet(&rows).unwrap()))).unwrap();
    };
    let written = |reading: ArchivedReading, written: u64| ArchivedReading { written, ..reading };
    // Write times of a cluster of 2: process 1's are odd, process 0's even.
    put(&at(1), 1, 1, vec![written(r("truck-7", "speed", 5, 5.0), 3_000_001)]);
    put(&at(0), 1, 1, vec![written(r("truck-7", "speed", 5, 3.0), 3_000_010)]);
    let sealer = at(day_owner(DAY, 2).unwrap());
    let committed: BTreeMap<u32, u64> = [(0, 1), (1, 1)].into();
    let outcome = rt.block_on(seal_committed_day(&sealer, DAY, None, None, Some(&committed))).unwrap();
    let sealed =
        read_parquet(rt.block_on(async { sealer.store.get(&outcome.sealed).await.unwrap().bytes().await.unwrap() }))
            .unwrap();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].value, 5.0, "the first write (process 1's) is kept: {sealed:?}");
    assert_eq!(sealed[0].written, 3_000_001, "and keeps its write time");

    // A late part of process 0 with an earlier write time still: the sealed verdict stands.
    put(&at(0), 2, 2, vec![written(r("truck-7", "speed", 5, 1.0), 2_000_000)]);
    let committed: BTreeMap<u32, u64> = [(0, 2), (1, 1)].into();
    let again = rt.block_on(seal_committed_day(&sealer, DAY, None, None, Some(&committed))).unwrap();
    let resealed =
        read_parquet(rt.block_on(async { sealer.store.get(&again.sealed).await.unwrap().bytes().await.unwrap() }))
            .unwrap();
    assert_eq!(resealed.iter().map(|r| r.value).collect::<Vec<_>>(), vec![5.0], "a seal's verdict is never reopened");
}

mod rollups {
    use proptest::prelude::*;
    use weir_operators::Width;

    use super::*;
    use crate::rollup::{read_day_rollup, rollup_path};

    /// A window as a from-scratch model computes it from the sealed readings: no shared code with the aggregate.
    #[derive(Debug, PartialEq)]
    struct ModelWindow {
        count: i64,
        min: u64,
        max: u64,
        first: (i64, u64),
        last: (i64, u64),
    }

    fn model(rows: &[ArchivedReading], width: Width) -> BTreeMap<(String, String, i64), (ModelWindow, Vec<f64>)> {
        let mut out: BTreeMap<(String, String, i64), (ModelWindow, Vec<f64>)> = BTreeMap::new();
        for r in rows {
            let start = r.micros.div_euclid(width.micros()) * width.micros();
            let bits = r.value.to_bits();
            let (w, values) = out.entry((r.sensor.clone(), r.device.clone(), start)).or_insert_with(|| {
                let w = ModelWindow { count: 0, min: bits, max: bits, first: (r.micros, bits), last: (r.micros, bits) };
                (w, Vec::new())
            });
            w.count += 1;
            values.push(r.value);
            if r.value.total_cmp(&f64::from_bits(w.min)).is_lt() {
                w.min = bits;
            }
            if r.value.total_cmp(&f64::from_bits(w.max)).is_gt() {
                w.max = bits;
            }
            if r.micros < w.first.0 {
                w.first = (r.micros, bits);
            }
            if r.micros > w.last.0 {
                w.last = (r.micros, bits);
            }
        }
        out
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => -1e6f64..1e6,
            1 => Just(f64::MAX), 1 => Just(-f64::MAX), 1 => Just(1e308), 1 => Just(0.0), 1 => Just(-0.0),
            1 => Just(5e-324),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_support::cases_or(48)))]

        /// Any readings over a day, in parts with duplicates across them: every width's rollup holds exactly the
        /// windows of the sealed readings, each with the model's count, min, max, first and last (bits) and its
        /// sum and mean (mean within [min, max]; sums of ordinary values within a few ulps); a reseal with late
        /// readings rewrites them; the same parts give the same bytes.
        #[test]
        fn rollups_agree_with_the_sealed_readings(
            parts in proptest::collection::vec(
                proptest::collection::vec((0usize..3, 0usize..2, 0i64..86_400 * 4, value()), 0..40), 1..4),
            late in proptest::collection::vec((0usize..3, 0usize..2, 0i64..86_400 * 4, value()), 0..10),
        ) {
            let devices = ["default", "truck-7", "a/b ü"];
            let sensors = ["speed", "fuel"];
            let reading = |&(d, s, quarter_secs, v): &(usize, usize, i64, f64)| {
                ArchivedReading { device: devices[d].into(), sensor: sensors[s].into(), value: v,
                                  micros: T + quarter_secs * 250_000, written: 0 }
            };
            let s = Store::new();
            let mut position = 1;
            for part in parts.iter().filter(|p| !p.is_empty()) {
                s.put_part(position, position + 9, part.iter().map(reading).collect());
                position += 10;
            }
            prop_assume!(position > 1);
            let check = |s: &Store, sealed: &Path| -> Result<(), TestCaseError> {
                let rows = read_parquet(s.get(sealed).into()).unwrap();
                for width in Width::ALL {
                    let rollup = s.rt.block_on(read_day_rollup(&s.location, width, DAY)).unwrap().unwrap();
                    let expected = model(&rows, width);
                    prop_assert_eq!(rollup.len(), expected.len());
                    for (row, ((sensor, device, start), (w, values))) in rollup.iter().zip(&expected) {
                        prop_assert_eq!((&row.sensor, &row.device, row.start), (sensor, device, *start));
                        let a = &row.agg;
                        let got = ModelWindow { count: a.count, min: a.min.to_bits(), max: a.max.to_bits(),
                            first: (a.first.micros, a.first.value.to_bits()), last: (a.last.micros, a.last.value.to_bits()) };
                        prop_assert_eq!(&got, w);
                        prop_assert!(a.min <= a.mean() && a.mean() <= a.max, "{:?}", a);
                        if values.iter().all(|v| v.abs() < 1e300) {
                            let exact: f64 = values.iter().sum();
                            let scale: f64 = values.iter().map(|v| v.abs()).sum::<f64>().max(1e-300);
                            prop_assert!((a.sum() - exact).abs() <= scale * 1e-12, "{} vs {}", a.sum(), exact);
                        }
                    }
                }
                Ok(())
            };
            // Verdicts on some of the readings (late: one of them again; duplicate: its key with another value), in
            // files of their own: each window counts them, nothing else changes.
            let mut judged: BTreeMap<(String, String, i64), (i64, i64)> = BTreeMap::new();
            for (n, part) in parts.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                let (mut late_rows, mut duplicate_rows) = (Vec::new(), Vec::new());
                for (i, r) in part.iter().map(reading).enumerate().filter(|(i, _)| i % 3 == n % 3) {
                    for width in Width::ALL {
                        let start = r.micros.div_euclid(width.micros()) * width.micros();
                        let e = judged.entry((width.name().to_owned() + &r.sensor, r.device.clone(), start)).or_default();
                        if i % 2 == 0 { e.0 += 1 } else { e.1 += 1 }
                    }
                    if i % 2 == 0 { late_rows.push(r) } else { duplicate_rows.push(ArchivedReading { value: -1.0, ..r }) }
                }
                let first = 1 + 10 * n as u64;
                s.put_verdicts(crate::archive::VerdictKind::Late, first, first + 9, late_rows);
                s.put_verdicts(crate::archive::VerdictKind::Duplicate, first, first + 9, duplicate_rows);
            }
            let sealed = s.seal().sealed;
            check(&s, &sealed)?;
            for width in Width::ALL {
                for row in s.rt.block_on(read_day_rollup(&s.location, width, DAY)).unwrap().unwrap() {
                    let key = (width.name().to_owned() + &row.sensor, row.device.clone(), row.start);
                    let want = judged.get(&key).copied().unwrap_or_default();
                    prop_assert_eq!((row.agg.late, row.agg.duplicates), want, "{:?}", key);
                }
            }
            let bytes = |s: &Store| Width::ALL.map(|w| s.get(&rollup_path(&s.location.root, w, DAY)));
            let before = bytes(&s);
            s.seal();
            prop_assert!(bytes(&s) == before, "a seal of the same parts wrote other rollup bytes");
            if !late.is_empty() {
                s.put_part(position, position + 9, late.iter().map(reading).collect());
                let sealed = s.seal().sealed;
                check(&s, &sealed)?;
            }
        }
    }
}
