use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::segment::{self, HEADER_BYTES};
use super::*;

/// Now, µs since the epoch (segments without records are dated by their files' times).
fn now() -> i64 {
    static NOW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *NOW.get_or_init(crate::idempotency::now_micros)
}

fn origin(key: Option<&str>, source: &str) -> Origin {
    Origin { key: key.map(Arc::from), source: Arc::from(source) }
}

fn kept(line: u64, kind: LineErrorKind, error: &str, text: &[u8]) -> KeptLine {
    KeptLine { line, kind, error: error.into(), text: text.to_vec() }
}

fn options(max_bytes: u64) -> RejectedOptions {
    RejectedOptions { max_bytes, ..RejectedOptions::default() }
}

fn open(dir: &Path, options: RejectedOptions, now: i64) -> (RejectedStore, Recovery) {
    RejectedStore::open(dir, options, now).unwrap()
}

fn all(store: &RejectedStore, now: i64) -> Vec<Rejection> {
    let (records, damaged) = store.read(&Filter::default(), usize::MAX, now).unwrap();
    assert!(damaged.is_empty(), "{damaged:?}");
    records
}

/// Bytes of every segment file on disk.
fn bytes_on_disk(dir: &Path) -> u64 {
    segment::list(dir).unwrap().iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum()
}

#[test]
fn records_round_trip_through_a_restart_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, recovery) = open(dir.path(), RejectedOptions::default(), now());
    assert_eq!((recovery.segments, recovery.records), (0, 0));
    let lines = [
        kept(2, LineErrorKind::Undecodable, "expected value at line 1 column 1", b"{bad"),
        kept(5, LineErrorKind::Invalid, "value is not finite", "{\"value\":NaN,\"é\":1}".as_bytes()),
    ];
    store.append(&origin(Some("ingester"), "/ingest"), now() - 10, &lines).unwrap();
    store
        .append(&origin(None, "mqtt:plant/7"), now() - 5, &[kept(1, LineErrorKind::TooLong, "too long", b"")])
        .unwrap();
    drop(store);
    let (store, recovery) = open(dir.path(), RejectedOptions::default(), now());
    assert_eq!((recovery.segments, recovery.records), (1, 3));
    assert!(recovery.truncated.is_none() && recovery.damaged.is_empty());
    let got = all(&store, now());
    let summary: Vec<_> = got.iter().map(|r| (r.line, r.kind, r.source.as_str(), r.key.as_deref())).collect();
    assert_eq!(
        summary,
        [
            (1, LineErrorKind::TooLong, "mqtt:plant/7", None),
            (5, LineErrorKind::Invalid, "/ingest", Some("ingester")),
            (2, LineErrorKind::Undecodable, "/ingest", Some("ingester")),
        ]
    );
    assert_eq!(got[1].received_micros, now() - 10);
    assert_eq!(got[1].error, "value is not finite");
    assert_eq!(got[1].text_lossy(), "{\"value\":NaN,\"é\":1}");
    // Appends after a restart go to a new segment and read with the old ones.
    store.append(&origin(None, "grpc"), now(), &[kept(3, LineErrorKind::Invalid, "x", b"y")]).unwrap();
    assert_eq!(segment::list(dir.path()).unwrap().len(), 2);
    assert_eq!(all(&store, now()).len(), 4);
}

#[test]
fn reads_filter_and_limit_newest_first_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), options(MIN_MAX_BYTES), now());
    let text = vec![b'x'; 200];
    for request in 0..100i64 {
        let source = if request % 2 == 0 { "/ingest" } else { "/write" };
        let lines: Vec<_> = (1..=5).map(|n| kept(n, LineErrorKind::Invalid, "bad", &text)).collect();
        store.append(&origin(Some("k"), source), now() - 1000 + request, &lines).unwrap();
    }
    assert!(store.snapshot().len() > 2, "several segments");
    let filter = Filter { source: Some("/write".into()), ..Filter::default() };
    let (got, _) = store.read(&filter, 7, now()).unwrap();
    assert_eq!(got.len(), 7);
    assert!(got.iter().all(|r| r.source == "/write"));
    assert_eq!(got[0].received_micros, now() - 1000 + 99);
    assert!(got.windows(2).all(|w| w[0].received_micros >= w[1].received_micros));
    let window =
        Filter { from_micros: Some(now() - 1000 + 98), to_micros: Some(now() - 1000 + 99), ..Filter::default() };
    let (got, _) = store.read(&window, 100, now()).unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|r| r.received_micros == now() - 1000 + 98 && r.source == "/ingest"));
    let kind = Filter { kind: Some(LineErrorKind::TooLong), ..Filter::default() };
    assert!(store.read(&kind, 100, now()).unwrap().0.is_empty());
}

/// Writes `requests` appends and returns the file and the byte offsets at which each record ends.
fn one_segment(dir: &Path) -> (std::path::PathBuf, Vec<u64>, Vec<Rejection>) {
    let (store, _) = open(dir, RejectedOptions::default(), now());
    let mut ends = Vec::new();
    for n in 0..4u64 {
        let lines: Vec<_> = (0..=n).map(|i| kept(i + 1, LineErrorKind::Invalid, "why", &[b'a' + i as u8; 7])).collect();
        store.append(&origin(Some("key"), "/ingest"), now() - 100 + n as i64, &lines).unwrap();
    }
    let path = store.snapshot()[0].path.clone();
    let records = {
        let mut r = all(&store, now());
        r.reverse();
        r
    };
    let bytes = std::fs::read(&path).unwrap();
    let mut offset = HEADER_BYTES;
    while offset < bytes.len() as u64 {
        let o = offset as usize;
        let len = u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as u64;
        offset += 8 + len;
        ends.push(offset);
    }
    assert_eq!(ends.len(), records.len());
    (path, ends, records)
}

#[test]
fn a_segment_cut_at_every_byte_recovers_exactly_its_complete_records() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ends, records) = one_segment(&dir.path().join("source"));
    let bytes = std::fs::read(&path).unwrap();
    for cut in 0..=bytes.len() {
        let trial = dir.path().join(format!("cut-{cut}"));
        std::fs::create_dir_all(&trial).unwrap();
        std::fs::write(trial.join(segment::name(1)), &bytes[..cut]).unwrap();
        let (store, recovery) = open(&trial, RejectedOptions::default(), now());
        let complete = ends.iter().filter(|&&end| end <= cut as u64).count();
        let mut got = all(&store, now());
        got.reverse();
        assert_eq!(got, records[..complete], "cut at {cut}");
        let at_boundary = cut as u64 == HEADER_BYTES || ends.contains(&(cut as u64));
        assert_eq!(recovery.truncated.is_some(), !at_boundary, "cut at {cut}: {:?}", recovery.truncated);
        assert!(recovery.damaged.is_empty());
        // What is left is whole records (or nothing), and the record goes on.
        let left = segment::list(&trial).unwrap();
        if cut < HEADER_BYTES as usize {
            assert!(left.is_empty(), "a segment without a header is removed");
        } else {
            let len = std::fs::metadata(&left[0].1).unwrap().len();
            assert_eq!(len, ends.iter().copied().filter(|&e| e <= cut as u64).max().unwrap_or(HEADER_BYTES));
        }
        store.append(&origin(None, "grpc"), now(), &[kept(9, LineErrorKind::Invalid, "later", b"z")]).unwrap();
        drop(store);
        let (store, recovery) = open(&trial, RejectedOptions::default(), now());
        assert!(recovery.truncated.is_none() && recovery.damaged.is_empty(), "cut at {cut}: {recovery:?}");
        assert_eq!(all(&store, now()).len(), complete + 1);
        std::fs::remove_dir_all(&trial).unwrap();
    }
}

#[test]
fn damage_before_the_newest_segment_is_reported_and_the_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ends, _) = one_segment(dir.path());
    {
        let (store, _) = open(dir.path(), RejectedOptions::default(), now());
        store.append(&origin(None, "/write"), now(), &[kept(1, LineErrorKind::Undecodable, "newer", b"n")]).unwrap();
    }
    // Flip one byte inside the third record's payload.
    let mut bytes = std::fs::read(&path).unwrap();
    let inside = ends[2] as usize + 12;
    bytes[inside] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (store, recovery) = open(dir.path(), RejectedOptions::default(), now());
    assert!(recovery.truncated.is_none());
    assert_eq!(recovery.damaged.len(), 1, "{recovery:?}");
    let damage = &recovery.damaged[0];
    assert_eq!(
        (damage.path.as_path(), damage.offset, &damage.reason),
        (path.as_path(), ends[2], &Corruption::Checksum)
    );
    assert!(damage.to_string().contains("checksum"), "{damage}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a damaged older segment is not cut");
    let (records, damaged) = store.read(&Filter::default(), usize::MAX, now()).unwrap();
    assert_eq!(damaged.len(), 1);
    assert_eq!(records.len(), 3 + 1, "the newer segment and the records before the damage");
    assert_eq!(records[0].error, "newer");
}

#[test]
fn a_newer_format_is_reported_and_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = segment::header();
    header[8] = 9;
    let path = dir.path().join(segment::name(4));
    std::fs::write(&path, [header.as_slice(), b"future bytes"].concat()).unwrap();
    let (store, recovery) = open(dir.path(), RejectedOptions::default(), now());
    assert_eq!(recovery.damaged.len(), 1);
    assert_eq!(recovery.damaged[0].reason, Corruption::UnsupportedVersion(9));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 28);
    store.append(&origin(None, "grpc"), now(), &[kept(1, LineErrorKind::Invalid, "x", b"")]).unwrap();
    assert!(dir.path().join(segment::name(5)).exists(), "new records go to a new segment");
}

#[test]
fn retention_drops_whole_old_segments_and_hides_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let day = 24 * 3600 * 1_000_000i64;
    let options = RejectedOptions { retention: Duration::from_secs(24 * 3600), ..options(1 << 20) };
    let (store, _) = open(dir.path(), options.clone(), now());
    let text = vec![b'x'; 1000];
    // Three days of records, many segments.
    for request in 0..120i64 {
        let lines: Vec<_> = (1..=4).map(|n| kept(n, LineErrorKind::Invalid, "bad", &text)).collect();
        store.append(&origin(None, "/ingest"), now() - 3 * day + request * day / 40, &lines).unwrap();
    }
    let before = store.snapshot().len();
    let removed = store.expire(now()).unwrap();
    assert!(removed > 0 && store.snapshot().len() < before);
    assert!(store.snapshot().iter().all(|s| s.newest_micros >= now() - day));
    let got = all(&store, now());
    assert!(!got.is_empty());
    assert!(got.iter().all(|r| r.received_micros >= now() - day), "nothing older than the retention is shown");
    assert_eq!(bytes_on_disk(dir.path()), store.bytes());
    // Everything expires in time, the segment being written too.
    store.expire(now() + 2 * day).unwrap();
    assert!(segment::list(dir.path()).unwrap().is_empty());
    assert_eq!(store.bytes(), 0);
    store.append(&origin(None, "grpc"), now() + 2 * day, &[kept(1, LineErrorKind::Invalid, "x", b"")]).unwrap();
    assert_eq!(all(&store, now() + 2 * day).len(), 1);
    // At a start, expired segments go at once.
    drop(store);
    let (store, _) = open(dir.path(), options, now() + 5 * day);
    assert_eq!(store.bytes(), 0);
}

#[test]
fn the_size_cap_holds_after_every_append_and_drops_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let cap = MIN_MAX_BYTES;
    let (store, _) = open(dir.path(), options(cap), now());
    let text = vec![b'y'; 256];
    let mut written = 0u64;
    for request in 0..2_000i64 {
        let lines: Vec<_> = (1..=3).map(|n| kept(n, LineErrorKind::Undecodable, "bad json", &text)).collect();
        let appended = store.append(&origin(Some("k"), "/ingest"), now() - 10_000 + request, &lines).unwrap();
        assert_eq!(appended, Appended { recorded: 3, too_large: 0 });
        written += 3;
        let on_disk = bytes_on_disk(dir.path());
        assert!(on_disk <= cap, "{on_disk} bytes on disk after request {request}, cap {cap}");
        assert_eq!(on_disk, store.bytes());
    }
    let got = all(&store, now());
    assert!((got.len() as u64) < written / 4, "the oldest were dropped: {} of {written} kept", got.len());
    assert_eq!(got[0].received_micros, now() - 10_000 + 1_999, "the newest is kept");
    assert!(bytes_on_disk(dir.path()) > cap / 2, "the cap is used, not wasted");
    // A smaller cap at the next start drops the oldest at once.
    drop(store);
    let (store, _) = open(dir.path(), options(cap), now());
    assert!(store.bytes() <= cap);
}

#[test]
fn one_request_never_writes_more_than_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(MIN_MAX_BYTES);
    let (store, _) = open(dir.path(), options.clone(), now());
    let lines: Vec<_> = (1..=1000).map(|n| kept(n, LineErrorKind::Invalid, "bad", &[b'q'; 256])).collect();
    let appended = store.append(&origin(None, "/ingest"), now(), &lines).unwrap();
    assert!(appended.recorded > 10 && appended.too_large > 0);
    assert_eq!(appended.recorded + appended.too_large, 1000);
    assert!(bytes_on_disk(dir.path()) <= options.segment_bytes());
    let got = all(&store, now());
    assert_eq!(got.len(), appended.recorded);
    assert_eq!(got.last().map(|r| r.line), Some(1), "the first lines are the ones kept");
}

/// Requests answered at once append at once: every record comes back whole, a request's lines together and in
/// order, across rotations and the size cap.
#[test]
fn concurrent_appends_keep_each_request_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), options(1 << 20), now());
    let store = Arc::new(store);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for request in 0..50u64 {
                    let text = format!("t{t} r{request}");
                    let lines: Vec<_> =
                        (1..=7).map(|n| kept(n, LineErrorKind::Invalid, "bad", text.as_bytes())).collect();
                    let source = format!("thread-{t}");
                    store.append(&origin(None, &source), now(), &lines).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut got = all(&store, now());
    got.reverse();
    assert_eq!(got.len(), 8 * 50 * 7);
    for request in got.chunks(7) {
        assert!(request.iter().all(|r| r.text == request[0].text), "a request's lines are written together");
        assert_eq!(request.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7]);
    }
    for t in 0..8 {
        let mine: Vec<_> = got.iter().filter(|r| r.source == format!("thread-{t}")).map(|r| r.text_lossy()).collect();
        let expected: Vec<_> = (0..50).flat_map(|r| std::iter::repeat_n(format!("t{t} r{r}"), 7)).collect();
        assert_eq!(mine, expected, "thread {t}'s requests in its order");
    }
    assert_eq!(bytes_on_disk(dir.path()), store.bytes());
}

#[test]
fn heads_keep_whole_characters_and_any_bytes() {
    assert_eq!(head(b"abcdef", 3), b"abc");
    assert_eq!(head("aé".as_bytes(), 2), b"a", "é is not cut in two");
    assert_eq!(head("aé".as_bytes(), 3), "aé".as_bytes());
    assert_eq!(head(&[0xff, 0xfe, b'a'], 2), &[0xff, 0xfe]);
    assert_eq!(head(b"", 10), b"");
    assert_eq!(kind_by_name("too_long"), Some(LineErrorKind::TooLong));
    assert_eq!(kind_by_name("other"), None);
}

#[test]
fn default_options_match_the_documentation() {
    let o = RejectedOptions::default();
    assert_eq!(
        (o.retention, o.max_bytes, o.max_per_request, o.text_bytes),
        (Duration::from_secs(604_800), 256 << 20, 1000, 256)
    );
    assert_eq!(o.segment_bytes(), 16 << 20);
    assert_eq!(options(MIN_MAX_BYTES).segment_bytes(), 16 << 10);
}

fn cut_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever a client sends (any bytes, long lines, long reasons, odd names), the record keeps it, cut, and
    /// reads it back as it was kept.
    #[test]
    fn any_content_round_trips_cut(
        key in proptest::option::of(".{0,300}"),
        source in ".{0,1100}",
        error in ".{0,5000}",
        text in proptest::collection::vec(any::<u8>(), 0..6000),
        line in any::<u64>(),
        received in any::<i64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), RejectedOptions { retention: Duration::MAX, ..RejectedOptions::default() }, i64::MIN);
        let origin = Origin { key: key.as_deref().map(Arc::from), source: Arc::from(source.as_str()) };
        let line = KeptLine { line, kind: LineErrorKind::Invalid, error: error.clone(), text: text.clone() };
        store.append(&origin, received, std::slice::from_ref(&line)).unwrap();
        let got = store.read(&Filter::default(), 10, i64::MIN).unwrap().0;
        prop_assert_eq!(got.len(), 1);
        let r = &got[0];
        prop_assert_eq!(r.received_micros, received);
        prop_assert_eq!(r.line, line.line);
        prop_assert_eq!(r.key.as_deref(), key.as_deref().map(|k| cut_str(k, 256)));
        prop_assert_eq!(r.source.as_str(), cut_str(&source, 1024));
        prop_assert_eq!(r.error.as_str(), cut_str(&error, 4096));
        prop_assert_eq!(r.text.as_slice(), head(&text, MAX_TEXT_BYTES));
    }

    /// Any bytes in a segment file open without a panic; what is kept is whole records.
    #[test]
    fn any_bytes_in_a_segment_never_panic(
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
        with_header in any::<bool>(),
        newest in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = if with_header { [segment::header().as_slice(), &garbage].concat() } else { garbage };
        std::fs::write(dir.path().join(segment::name(1)), &bytes).unwrap();
        if !newest {
            std::fs::write(dir.path().join(segment::name(2)), segment::header()).unwrap();
        }
        let (store, recovery) = open(dir.path(), RejectedOptions::default(), now());
        let _ = store.read(&Filter::default(), usize::MAX, now()).unwrap();
        if newest {
            prop_assert!(recovery.damaged.iter().all(|d| matches!(d.reason, Corruption::UnsupportedVersion(_))));
        }
        let (_, damaged) = store.read(&Filter::default(), usize::MAX, i64::MIN + 1).unwrap();
        if newest {
            prop_assert!(damaged.iter().all(|d| matches!(d.reason, Corruption::UnsupportedVersion(_))));
        }
    }
}
