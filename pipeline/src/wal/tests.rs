use std::io::Write;
use std::time::Duration;

use super::*;
use crate::reading::{DEFAULT_SENSORS, DeviceInterner, ReadingBatch, Row};

fn batch(seed: i64, rows: usize) -> ReadingBatch {
    let mut b = ReadingBatch::new();
    let mut i = DeviceInterner::default();
    for k in 0..rows as i64 {
        let device = i.intern(&mut b.devices, &format!("dev-{}", (seed + k) % 3));
        let sensor = i.intern_sensor(&mut b.sensors, DEFAULT_SENSORS[(k % 6) as usize]).unwrap();
        b.rows.push(Row { sensor, device, micros: seed * 1000 + k, value: (seed + k) as f64 / 4.0 });
    }
    b
}

/// The batch of record `seed`.
fn record_batch(seed: i64) -> ReadingBatch {
    batch(seed, 1 + (seed as usize % 5))
}

/// Its bytes in the log (to know where records end).
fn payload(seed: i64) -> Vec<u8> {
    let mut out = Vec::new();
    record::encode_batch(&record_batch(seed), &mut out);
    out
}

fn read_all(dir: &Path) -> Vec<(u64, ReadingBatch)> {
    let mut r = WalReader::new(dir, 1);
    let mut out = Vec::new();
    while let Some(record) = r.next_batch().unwrap() {
        out.push((record.position, record.batch));
    }
    out
}

fn small_segments() -> WalOptions {
    WalOptions { segment_bytes: 300, ..WalOptions::default() }
}

#[test]
fn appends_get_consecutive_positions_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(rec.last_position, 0);
    let a = wal.appender();
    let positions: Vec<u64> = (0..20).map(|s| a.append_blocking(&record_batch(s)).unwrap()).collect();
    assert_eq!(positions, (1..=20).collect::<Vec<_>>());
    assert_eq!(a.durable_position(), 20);
    wal.close();
    assert!(segment::list_segments(dir.path()).unwrap().len() > 2, "small segments roll over");

    let (wal, rec) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(rec.last_position, 20);
    assert_eq!(rec.truncated, None);
    assert_eq!(wal.appender().append_blocking(&record_batch(99)).unwrap(), 21);
    wal.close();
    let all = read_all(dir.path());
    assert_eq!(all.len(), 21);
    for (i, (p, batch)) in all.iter().enumerate() {
        assert_eq!(*p, i as u64 + 1);
        let seed = if i == 20 { 99 } else { i as i64 };
        assert_eq!(batch, &record_batch(seed));
    }
    let from_7: Vec<u64> = {
        let mut r = WalReader::new(dir.path(), 7);
        std::iter::from_fn(|| r.next_batch().unwrap().map(|record| record.position)).collect()
    };
    assert_eq!(from_7, (7..=21).collect::<Vec<_>>());
}

#[test]
fn concurrent_appenders_share_fsyncs_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let a = wal.appender();
            std::thread::spawn(move || {
                (0..50).map(|k| a.append_blocking(&record_batch(t * 1000 + k)).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut positions: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    positions.sort();
    assert_eq!(positions, (1..=400).collect::<Vec<_>>());
    wal.close();
    assert_eq!(read_all(dir.path()).len(), 400);
}

/// The write time of each record, by position: the records of one group share theirs.
fn write_times(dir: &Path) -> Vec<u64> {
    let mut r = WalReader::new(dir, 1);
    let mut out = Vec::new();
    while let Some(record) = r.next_batch().unwrap() {
        out.push(record.written);
    }
    out
}

/// One writer at a time: each append is a group of its own and is never held back, however long the delay.
#[test]
fn a_lone_writer_never_waits_for_company() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { commit_delay: Duration::from_secs(30), ..WalOptions::default() };
    let (wal, _) = Wal::open(dir.path(), options).unwrap();
    let started = std::time::Instant::now();
    for k in 0..20 {
        wal.appender().append_blocking(&record_batch(k)).unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(10), "appends waited: {:?}", started.elapsed());
    wal.close();
    let times = write_times(dir.path());
    assert_eq!(times.len(), 20);
    assert!(times.windows(2).all(|w| w[0] < w[1]), "each append its own group: {times:?}");
}

/// Writers at once until two of their appends have met in a group without waiting (which starts the waiting).
fn share_a_group(appender: &WalAppender, dir: &Path) {
    let shared = |times: &[u64]| times.windows(2).any(|w| w[0] == w[1]);
    for round in 0..50 {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let a = appender.clone();
                std::thread::spawn(move || a.append_blocking(&record_batch(round * 8 + t)).unwrap())
            })
            .collect();
        handles.into_iter().for_each(|h| assert!(h.join().unwrap() > 0));
        if shared(&write_times(dir)) {
            return;
        }
    }
    panic!("8 writers at once never shared a group");
}

/// Once appends have shared a group, a group's first append waits for the next writer: two appends 50 ms apart,
/// far more than a write and an fsync take, land in one group (one write time) — and both are durable.
#[test]
fn concurrent_writers_keep_sharing_groups() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { commit_delay: Duration::from_millis(400), ..WalOptions::default() };
    let (wal, _) = Wal::open(dir.path(), options).unwrap();
    let appender = wal.appender();
    share_a_group(&appender, dir.path());
    let before = write_times(dir.path()).len();
    let first = {
        let a = appender.clone();
        std::thread::spawn(move || a.append_blocking(&record_batch(1_000)).unwrap())
    };
    std::thread::sleep(Duration::from_millis(50));
    let second = appender.append_blocking(&record_batch(1_001)).unwrap();
    let first = first.join().unwrap();
    assert_eq!((first.max(second), first.min(second)), (before as u64 + 2, before as u64 + 1));
    wal.close();
    let times = write_times(dir.path());
    assert_eq!(times.len(), before + 2);
    assert_eq!(times[before], times[before + 1], "the second writer joined the first one's group: {times:?}");
}

/// A writer left alone after others (a client, and a probe now and then) waits a few groups, finds nobody, and
/// stops waiting.
#[test]
fn a_writer_left_alone_stops_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(100);
    let options = WalOptions { commit_delay: delay, ..WalOptions::default() };
    let (wal, _) = Wal::open(dir.path(), options).unwrap();
    let appender = wal.appender();
    share_a_group(&appender, dir.path());
    let took: Vec<Duration> = (0..30)
        .map(|k| {
            let started = std::time::Instant::now();
            appender.append_blocking(&record_batch(2_000 + k)).unwrap();
            started.elapsed()
        })
        .collect();
    assert!(took[0] >= delay, "the first lone append waited: {took:?}");
    // The rest of the writers' last round may have made groups of up to seven while waiting: a dozen lone groups
    // bring the mean below the threshold from there.
    assert!(took[15..].iter().all(|t| *t < delay), "the last fifteen did not wait: {took:?}");
    wal.close();
}

/// A crash can cut the last segment anywhere: every cut leaves the records before it and nothing else, and the
/// log accepts appends afterwards.
#[test]
fn torn_tail_is_truncated_at_every_cut_point() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for s in 0..4 {
        wal.appender().append_blocking(&record_batch(s)).unwrap();
    }
    wal.close();
    let seg = segment::list_segments(dir.path()).unwrap().pop().unwrap();
    let full = std::fs::read(&seg.path).unwrap();
    // Record boundaries, to know how many records a cut keeps.
    let mut ends = vec![segment::HEADER_BYTES as usize];
    for s in 0..4 {
        ends.push(ends.last().unwrap() + segment::RECORD_HEADER_BYTES as usize + payload(s).len());
    }
    for cut in 0..full.len() {
        let copy = tempfile::tempdir().unwrap();
        let path = copy.path().join(seg.path.file_name().unwrap());
        std::fs::write(&path, &full[..cut]).unwrap();
        let (wal, rec) = Wal::open(copy.path(), WalOptions::default()).unwrap();
        let kept = ends.iter().filter(|&&e| e <= cut).count().saturating_sub(1) as u64;
        assert_eq!(rec.last_position, kept, "cut at {cut}");
        assert_eq!(rec.truncated.is_some(), !ends.contains(&cut), "cut at {cut}");
        assert_eq!(wal.appender().append_blocking(&record_batch(7)).unwrap(), kept + 1);
        wal.close();
        assert_eq!(read_all(copy.path()).len() as u64, kept + 1);
    }
}

#[test]
fn garbage_after_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.appender().append_blocking(&record_batch(1)).unwrap();
    wal.close();
    let seg = segment::list_segments(dir.path()).unwrap().pop().unwrap();
    std::fs::OpenOptions::new().append(true).open(&seg.path).unwrap().write_all(&[0u8; 100]).unwrap();
    let (wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let t = rec.truncated.unwrap();
    assert_eq!(t.bytes_removed, 100);
    assert_eq!(rec.last_position, 1);
    wal.close();
}

#[test]
fn damage_before_the_last_segment_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    for s in 0..20 {
        wal.appender().append_blocking(&record_batch(s)).unwrap();
    }
    wal.close();
    let first = &segment::list_segments(dir.path()).unwrap()[0];
    let mut bytes = std::fs::read(&first.path).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&first.path, bytes).unwrap();
    let err = Wal::open(dir.path(), small_segments()).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains(&first.path.display().to_string()) && msg.contains("damaged"), "{msg}");
}

#[test]
fn unsupported_format_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = segment::header();
    h[8] = 9;
    std::fs::write(dir.path().join(segment::segment_name(1)), h).unwrap();
    let msg = Wal::open(dir.path(), WalOptions::default()).err().expect("refused").to_string();
    assert!(msg.contains("version 9 is not supported"), "{msg}");
}

/// Right after a segment roll the newest segment holds only its header: a reader must stop there, not spin.
#[test]
fn reader_stops_at_a_fresh_empty_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions { segment_bytes: 1, ..WalOptions::default() }).unwrap();
    for s in 0..3 {
        wal.appender().append_blocking(&record_batch(s)).unwrap();
    }
    wal.close();
    let segments = segment::list_segments(dir.path()).unwrap();
    assert_eq!(segments.len(), 4, "every append rolled, the last segment is empty");
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || tx.send(read_all(&path).len()).unwrap());
    let read = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the reader returned");
    assert_eq!(read, 3);
}

#[test]
fn trimming_deletes_only_whole_segments_through_the_position_and_never_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let a = wal.appender();
    for s in 0..40 {
        a.append_blocking(&record_batch(s)).unwrap();
    }
    let before = segment::list_segments(dir.path()).unwrap();
    assert!(before.len() > 4);
    // Through a position in the middle of the third segment: the first two go, the third stays.
    let cut = before[2].first_position;
    assert_eq!(trimmable_through(dir.path(), cut).unwrap(), Some(before[2].first_position - 1));
    assert_eq!(trimmable_through(dir.path(), before[1].first_position - 2).unwrap(), None);
    let deleted = trim_through(dir.path(), cut).unwrap();
    assert_eq!(deleted, vec![before[0].path.clone(), before[1].path.clone()]);
    assert_eq!(first_position(dir.path()).unwrap(), before[2].first_position);
    // Everything after the cut is still readable, and the writer goes on.
    let mut r = WalReader::new(dir.path(), cut + 1);
    let rest: Vec<u64> = std::iter::from_fn(|| r.next_batch().unwrap().map(|record| record.position)).collect();
    assert_eq!(rest, (cut + 1..=40).collect::<Vec<_>>());
    assert_eq!(a.append_blocking(&record_batch(41)).unwrap(), 41);
    // Trimming through everything keeps the last segment.
    trim_through(dir.path(), u64::MAX).unwrap();
    assert_eq!(segment::list_segments(dir.path()).unwrap().len(), 1);
    wal.close();
    // A trimmed log reopens (it starts past 1) and continues its positions.
    let (wal, rec) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(rec.last_position, 41);
    assert_eq!(wal.appender().append_blocking(&record_batch(42)).unwrap(), 42);
    wal.close();
    // Asking for a deleted position is an error that says so, not an endless wait.
    let err = WalReader::new(dir.path(), 1).next_batch().unwrap_err();
    assert!(matches!(err, WalError::Trimmed { wanted: 1, .. }), "{err}");
}

/// A record whose checksum holds but whose payload is not a batch (a bug, or a format from a later version) is read
/// by every reader alike: as an empty batch at its position, so positions stay contiguous and no reader waits on
/// it, with the damage logged and counted.
#[test]
fn a_record_that_is_not_a_batch_is_read_as_an_empty_batch_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let a = wal.appender();
    a.append_blocking(&record_batch(1)).unwrap();
    a.append_payload_blocking(vec![42, 1, 2, 3]).unwrap();
    a.append_blocking(&record_batch(3)).unwrap();
    wal.close();
    let all = read_all(dir.path());
    assert_eq!(
        all.iter().map(|(p, b)| (*p, b.len())).collect::<Vec<_>>(),
        vec![(1, record_batch(1).len()), (2, 0), (3, record_batch(3).len())]
    );
    assert_eq!(all[2].1, record_batch(3));
}
