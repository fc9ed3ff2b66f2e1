//! SQL over the archive, checked against values computed here from the input.

use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};

use super::*;
use crate::archive::{Archiver, ArchiverOptions};
use crate::test_support::*;
use weir_operators::model::{DeviceId, SeriesKey};
use weir_operators::{Reading, WindowAgg};

const DAY: i64 = 86_400_000_000;
const T0: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z

/// Readings over two days, a duplicate, three devices.
fn records() -> Vec<Vec<Input>> {
    vec![
        vec![(0, 0, T0 + 1_000_000, 10.0), (0, 0, T0 + 2_000_000, 20.0), (1, 0, T0 + 1_000_000, 5.0)],
        vec![(0, 0, T0 + 1_000_000, 999.0), (0, 1, T0 + 3_000_000, 40.0)], // first: duplicate, ignored
        vec![(2, 0, T0 + DAY + 1, 7.0), (0, 0, T0 + DAY + 5, 30.0)],
    ]
}

fn archived(url: Option<&str>) -> Fixture {
    let f = fixture(&records(), url);
    f.archive(small_flushes()).unwrap();
    f
}

fn sql(f: &Fixture, limits: SqlLimits) -> SqlArchive {
    SqlArchive::new(f.location.clone(), None, limits).unwrap()
}

fn run(f: &Fixture, q: &str) -> SqlResult {
    f.runtime.block_on(sql(f, SqlLimits::default()).query(q)).unwrap()
}

fn single_i64(r: &SqlResult) -> i64 {
    r.batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[test]
fn counts_and_aggregates_match_the_input() {
    let f = archived(None);
    assert_eq!(single_i64(&run(&f, "SELECT count(*) FROM readings")), 6);
    let r = run(
        &f,
        "SELECT sensor, count(*) AS n, min(value), max(value), avg(value) FROM readings GROUP BY sensor ORDER BY sensor",
    );
    let b = &r.batches[0];
    let sensors = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
    let sensors = sensors.as_string::<i32>();
    assert_eq!((sensors.value(0), sensors.value(1)), ("fuel", "speed"));
    assert_eq!(b.column(1).as_primitive::<Int64Type>().values().to_vec(), vec![1, 5]);
    assert_eq!(b.column(4).as_primitive::<Float64Type>().value(1), (10.0 + 20.0 + 5.0 + 7.0 + 30.0) / 5.0);
}

#[test]
fn time_functions_are_available() {
    let f = archived(None);
    let q = "SELECT date_bin(INTERVAL '15 minutes', timestamp) AS bucket, count(*) AS n, round(avg(value), 2) AS mean \
             FROM readings WHERE sensor = 'speed' AND date = '2026-11-19' GROUP BY bucket ORDER BY bucket";
    let r = run(&f, q);
    assert_eq!(r.rows(), 1);
    let e = run(&f, "SELECT floor(extract(epoch FROM timestamp) / 900) AS b FROM readings LIMIT 1");
    assert_eq!(e.rows(), 1);
}

#[test]
fn the_date_partition_filters() {
    let f = archived(None);
    assert_eq!(single_i64(&run(&f, "SELECT count(*) FROM readings WHERE date = '2026-11-20'")), 2);
    let r = run(
        &f,
        "SELECT max(value) FROM readings WHERE date = '2026-11-19' AND device = 'default' AND sensor = 'speed'",
    );
    assert_eq!(r.batches[0].column(0).as_primitive::<Float64Type>().value(0), 20.0);
    // The plan prunes by the partition column: only that day's files are scanned.
    let plan = run(&f, "EXPLAIN SELECT sum(value) FROM readings WHERE date = '2026-11-20'");
    let text = arrow::util::pretty::pretty_format_batches(&plan.batches).unwrap().to_string();
    assert!(text.contains("date=2026-11-20") && !text.contains("date=2026-11-19"), "{text}");
}

#[test]
fn without_an_archiver_readings_is_the_archive_alone() {
    // Nothing is unflushed without an archiver in the process: no union with an empty table to plan and run.
    let f = archived(None);
    let plan = run(&f, "EXPLAIN SELECT sum(value) FROM readings");
    let text = arrow::util::pretty::pretty_format_batches(&plan.batches).unwrap().to_string();
    assert!(!text.contains("Union") && text.contains("DataSourceExec"), "{text}");
}

#[test]
fn unflushed_readings_are_seen_once() {
    let f = fixture(&records(), Some("memory:///"));
    // An archiver that never flushes on its own: everything stays unflushed while it runs.
    let archiver = Archiver::start(
        f.wal_dir.clone(),
        f.durable.clone(),
        f.verdicts.clone(),
        f.location.clone(),
        f.checkpoint.clone(),
        ArchiverOptions { flush_rows: usize::MAX, flush_age: Duration::from_secs(3600), ..small_flushes() },
        f.runtime.handle().clone(),
    )
    .unwrap();
    while archiver.progress.read_through.load(std::sync::atomic::Ordering::Acquire) < f.last {
        std::thread::sleep(Duration::from_millis(2));
    }
    let live = SqlArchive::new(f.location.clone(), Some(archiver.progress.clone()), SqlLimits::default()).unwrap();
    let count = |s: &SqlArchive| single_i64(&f.runtime.block_on(s.query("SELECT count(*) FROM readings")).unwrap());
    assert_eq!(count(&live), 6, "all unflushed, all visible");
    archiver.stop().unwrap(); // flushes on stop
    assert_eq!(count(&live), 6, "the same session after the flush: all flushed, once");
    assert_eq!(
        count(&SqlArchive::new(f.location.clone(), None, SqlLimits::default()).unwrap()),
        6,
        "all flushed, once"
    );
}

/// One session answers many queries: a part written after a query is seen by the next (a listing kept in the
/// session's runtime once hid every part flushed after the first query).
#[test]
fn parts_written_after_a_query_are_seen_by_the_next() {
    let f = archived(Some("memory:///"));
    let session = sql(&f, SqlLimits::default());
    let count = || single_i64(&f.runtime.block_on(session.query("SELECT count(*) FROM readings")).unwrap());
    assert_eq!(count(), 6);
    let rows: Vec<crate::part::ArchivedReading> = (0..3)
        .map(|i| crate::part::ArchivedReading {
            device: "late".into(),
            sensor: "speed".into(),
            value: f64::from(i),
            micros: T0 + 2 * DAY + i64::from(i),
            written: 1,
        })
        .collect();
    let path = f.location.part_path("2026-11-21", 1_000, 1_002);
    let bytes = crate::part::write_parquet(&rows).unwrap();
    use object_store::ObjectStoreExt;
    f.runtime.block_on(f.location.store.put(&path, bytes.into())).unwrap();
    assert_eq!(count(), 9, "the same session after a part was written");
}

#[test]
fn writes_and_other_statements_are_refused_by_class() {
    for (q, class) in [
        ("CREATE TABLE t AS SELECT 1", "DDL"),
        ("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/tmp/x'", "DDL"),
        ("DROP TABLE readings", "DDL"),
        ("CREATE VIEW v AS SELECT 1", "DDL"),
        ("INSERT INTO readings VALUES ('a', 'b', 1.0, now(), 'x')", "DML"),
        ("DELETE FROM readings", "DML"),
        ("UPDATE readings SET value = 1", "DML"),
        ("COPY readings TO '/tmp/out.parquet'", "COPY"),
        ("SET datafusion.execution.batch_size = 1", "SET"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
    ] {
        match check_query(q, 64 << 10) {
            Err(SqlError::Refused(m)) => assert!(m.contains(class), "{q}: {m}"),
            other => panic!("{q}: {other:?}"),
        }
    }
    assert!(check_query("SELECT * FROM readings", 64 << 10).is_ok());
    assert!(check_query("WITH x AS (SELECT 1) SELECT * FROM x", 64 << 10).is_ok());
    // Reading files by path is not possible either.
    let f = archived(None);
    let err = f.runtime.block_on(sql(&f, SqlLimits::default()).query("SELECT * FROM '/etc/passwd'")).unwrap_err();
    assert!(matches!(err, SqlError::Invalid(_)), "{err:?}");
}

#[test]
fn bad_sql_gets_datafusions_message() {
    let f = archived(None);
    let err = f.runtime.block_on(sql(&f, SqlLimits::default()).query("SELECT nope FROM readings")).unwrap_err();
    assert!(matches!(&err, SqlError::Invalid(m) if m.contains("nope")), "{err:?}");
    // Text that does not parse is told apart (the PostgreSQL protocol answers it with SQLSTATE 42601).
    let err = f.runtime.block_on(sql(&f, SqlLimits::default()).query("SELEC 1")).unwrap_err();
    assert!(matches!(err, SqlError::Syntax(_)), "{err:?}");
}

#[test]
fn limits_are_enforced() {
    let f = archived(None);
    let few_rows = SqlLimits { max_rows: 3, ..SqlLimits::default() };
    let err = f.runtime.block_on(sql(&f, few_rows.clone()).query("SELECT * FROM readings")).unwrap_err();
    assert!(matches!(err, SqlError::TooManyRows(3)), "{err:?}");
    assert_eq!(f.runtime.block_on(sql(&f, few_rows).query("SELECT * FROM readings LIMIT 3")).unwrap().rows(), 3);
    let no_time = SqlLimits { timeout: Duration::from_nanos(1), ..SqlLimits::default() };
    let slow = "SELECT count(*) FROM generate_series(1, 100000000) a";
    let err = f.runtime.block_on(sql(&f, no_time).query(slow)).unwrap_err();
    assert!(matches!(err, SqlError::Timeout(_)), "{err:?}");
    // A tiny memory pool: the query spills or fails cleanly, it never takes the process down.
    let tiny = SqlLimits { memory_bytes: 64 << 10, ..SqlLimits::default() };
    let big_sort = "SELECT a FROM generate_series(1, 300000) AS t(a) ORDER BY a DESC LIMIT 1";
    match f.runtime.block_on(sql(&f, tiny).query(big_sort)) {
        Ok(r) => assert_eq!(r.batches[0].column(0).as_primitive::<Int64Type>().value(0), 300000),
        Err(SqlError::Memory(m)) => assert!(!m.is_empty()),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn an_empty_archive_answers_zero() {
    let f = fixture(&[], None);
    assert_eq!(single_i64(&run(&f, "SELECT count(*) FROM readings")), 0);
    let all = run(&f, "SELECT * FROM readings");
    assert_eq!(all.rows(), 0);
    let names: Vec<&str> = all.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["device", "sensor", "value", "timestamp", "date"]);
}

/// Issue 17, 1: queries of a few KB whose expressions nest deep killed the process (stack overflow while planning
/// on a 2 MiB stack). A 1 000-term `OR` and `1+1+…+1` answer; beyond the nesting limit a query gets a clear refusal;
/// beyond the size limit too.
#[test]
fn deep_and_long_queries_answer_or_are_refused_never_crash() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let location = ArchiveLocation::open("memory:///").unwrap();
    let archive = SqlArchive::new(location, None, SqlLimits::default()).unwrap();
    // Near the limit (1 000 of MAX_NESTING's 1 024 levels).
    let ors = (0..1000).map(|d| format!("device = 'd{d}'")).collect::<Vec<_>>().join(" OR ");
    let result = rt.block_on(archive.query(&format!("SELECT count(*) AS n FROM readings WHERE {ors}"))).unwrap();
    assert_eq!(result.rows(), 1);
    let sum = vec!["1"; 1000].join("+");
    let result = rt.block_on(archive.query(&format!("SELECT {sum} AS n"))).unwrap();
    assert_eq!(result.rows(), 1);
    let too_deep = vec!["1"; MAX_NESTING + 10].join("+");
    let e = rt.block_on(archive.query(&format!("SELECT {too_deep} AS n"))).unwrap_err().to_string();
    assert!(e.contains("nests") && e.contains("IN ("), "{e}");
    let parens = format!("SELECT {}1{} AS n", "(".repeat(5000), ")".repeat(5000));
    assert!(rt.block_on(archive.query(&parens)).is_err());
    let long = format!("SELECT 1 AS n -- {}", "x".repeat(70_000));
    let e = rt.block_on(archive.query(&long)).unwrap_err().to_string();
    assert!(e.contains("--sql-max-query-bytes"), "{e}");
}

/// Issue 17: SQL fuzzing. Random expressions from a small grammar — deep, long, mixing types, functions and
/// subqueries — answer or are refused; none crashes the process or panics a SQL thread.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("value".to_owned()),
            Just("device".to_owned()),
            Just("timestamp".to_owned()),
            Just("NULL".to_owned()),
            any::<i32>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            "[a-z']{0,8}".prop_map(|t| format!("'{}'", t.replace('\'', "''"))),
        ];
        leaf.prop_recursive(24, 400, 6, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    prop::sample::select(vec!["+", "-", "*", "/", "%", "AND", "OR", "=", "<", "||"]),
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                (
                    prop::sample::select(vec!["abs", "round", "length", "upper", "sqrt", "ln", "cast_text"]),
                    inner.clone()
                )
                    .prop_map(|(f, a)| if f == "cast_text" {
                        format!("CAST({a} AS VARCHAR)")
                    } else {
                        format!("{f}({a})")
                    }),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(c, a, b)| format!("CASE WHEN {c} THEN {a} ELSE {b} END")),
                prop::collection::vec(inner.clone(), 1..6).prop_map(|v| format!("coalesce({})", v.join(", "))),
                inner.clone().prop_map(|a| format!("(SELECT {a} AS x)")),
                (1usize..1500).prop_map(|n| vec!["1"; n].join(" + ")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::test_support::cases_or(48), ..ProptestConfig::default() })]

        #[test]
        fn random_queries_answer_or_are_refused_never_crash(select in expr(), filter in expr()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let location = ArchiveLocation::open("memory:///").unwrap();
            let limits = SqlLimits { timeout: Duration::from_secs(20), ..SqlLimits::default() };
            let archive = SqlArchive::new(location, None, limits).unwrap();
            for sql in [format!("SELECT {select} AS a"), format!("SELECT count(*) FROM readings WHERE {filter}")] {
                match rt.block_on(archive.query(&sql)) {
                    Ok(_) => {}
                    Err(e) => prop_assert!(!e.to_string().contains("failed on its thread"), "{sql}: {e}"),
                }
            }
        }
    }
}

/// Issue 17, 10: `length(repeat('x', 300000000))` took 1.25 GB under `--sql-memory 64MiB`. Functions whose result
/// size the query chooses refuse to build a value beyond the query's memory; within it they work as before.
#[test]
fn values_larger_than_the_query_memory_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let location = ArchiveLocation::open("memory:///").unwrap();
    let limits = SqlLimits { memory_bytes: 64 << 20, ..SqlLimits::default() };
    let archive = SqlArchive::new(location, None, limits).unwrap();
    for sql in [
        "SELECT length(repeat('x', 300000000)) AS n",
        "SELECT length(lpad('x', 300000000)) AS n",
        "SELECT length(rpad('x', 300000000, 'ab')) AS n",
    ] {
        let e = rt.block_on(archive.query(sql)).unwrap_err().to_string();
        assert!(e.contains("--sql-memory"), "{sql}: {e}");
    }
    let ok = rt.block_on(archive.query("SELECT length(repeat('ab', 1000)) AS n, lpad('7', 3, '0') AS p")).unwrap();
    assert_eq!(ok.rows(), 1);
    let n = ok.batches[0].column(0).as_any().downcast_ref::<arrow::array::Int32Array>().map(|a| a.value(0));
    assert_eq!(n, Some(2000));
}

/// Issue 18, 4: `windows_1m` … `windows_1d` answer the windows of every series: a day not yet sealed aggregated
/// from its readings, a sealed day from its rollups — the same rows either way.
#[test]
fn window_tables_answer_from_readings_then_from_rollups_alike() {
    let f = archived(None);
    // One archive's SQL for every query below: its session, built once, is rebuilt when told that the seal added
    // rollups.
    let hour = 3_600_000_000;
    let intervals = weir_operators::completeness::ExpectedIntervals::new([("speed".to_owned(), hour)]).unwrap();
    let archive = sql(&f, SqlLimits::default()).with_expected_intervals(intervals);
    let run = |_: &Fixture, q: &str| f.runtime.block_on(archive.query(q)).unwrap();
    let q = |width: &str| {
        let r = run(
            &f,
            &format!(
                "SELECT device, sensor, CAST(window_start AS VARCHAR) AS s, CAST(window_end AS VARCHAR) AS e, count, \
                 sum, mean, min, max, first, CAST(first_timestamp AS VARCHAR) AS f, last, \
                 CAST(last_timestamp AS VARCHAR) AS l, p50, p90, p95, p99, late, duplicates, expected, completeness, date \
                 FROM windows_{width} ORDER BY device, sensor, s"
            ),
        );
        arrow::util::pretty::pretty_format_batches(&r.batches).unwrap().to_string()
    };
    let before: Vec<String> = ["1m", "15m", "1h", "1d"].map(q).to_vec();
    assert_eq!(before[0].lines().filter(|l| l.contains("| 2026-11-")).count(), 5, "{}", before[0]);
    // default/speed on the 19th: 10 at 00:00:01, 20 at 00:00:02 (the 999 is a duplicate).
    let day = run(
        &f,
        "SELECT count, sum, mean, min, max, first, last FROM windows_1d WHERE device = 'default' AND sensor = 'speed' AND date = '2026-11-19'",
    );
    let b = &day.batches[0];
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 2);
    let floats: Vec<f64> = (1..7).map(|i| b.column(i).as_primitive::<Float64Type>().value(0)).collect();
    assert_eq!(floats, vec![30.0, 15.0, 10.0, 20.0, 10.0, 20.0]);
    // Percentiles from the window's sketch (1 % relative error), within [min, max]: the lower median of {10, 20}.
    let p = run(
        &f,
        "SELECT p50, p99 FROM windows_1d WHERE device = 'default' AND sensor = 'speed' AND date = '2026-11-19'",
    );
    let (p50, p99) =
        (p.batches[0].column(0).as_primitive::<Float64Type>(), p.batches[0].column(1).as_primitive::<Float64Type>());
    assert!((p50.value(0) - 10.0).abs() <= 0.1, "{}", p50.value(0));
    assert!((p99.value(0) - 10.0).abs() <= 0.1, "rank ⌊0.99 × 1⌋ = 0: {}", p99.value(0));
    // Completeness by `speed=1h`: a day expects 24 readings, and 2 came; a 1-minute window expects 1/60 and is
    // complete with one; sensors without an interval have none.
    let c = run(
        &f,
        "SELECT sensor, expected, completeness FROM windows_1d WHERE device = 'default' AND date = '2026-11-19' \
         ORDER BY sensor DESC",
    );
    let b = &c.batches[0];
    assert_eq!(b.column(1).as_primitive::<Float64Type>().value(0), 24.0);
    assert_eq!(b.column(2).as_primitive::<Float64Type>().value(0), 2.0 / 24.0);
    assert!(b.num_rows() < 2 || (b.column(1).is_null(1) && b.column(2).is_null(1)), "{b:?}");
    let m = run(&f, "SELECT min(completeness), max(completeness) FROM windows_1m WHERE sensor = 'speed'");
    assert_eq!(m.batches[0].column(0).as_primitive::<Float64Type>().value(0), 1.0);
    // The duplicate 999 is counted in its windows (from the record of verdicts), and is in `verdicts`.
    let d = run(
        &f,
        "SELECT sum(duplicates), sum(late) FROM windows_1d WHERE device = 'default' AND sensor = 'speed' \
         AND date = '2026-11-19'",
    );
    assert_eq!(d.batches[0].column(0).as_primitive::<Int64Type>().value(0), 1);
    assert_eq!(d.batches[0].column(1).as_primitive::<Int64Type>().value(0), 0);
    let v = run(&f, "SELECT value, kind FROM verdicts");
    let text = arrow::util::pretty::pretty_format_batches(&v.batches).unwrap().to_string();
    assert!(text.contains("999.0") && text.contains("duplicate"), "{text}");

    f.runtime.block_on(crate::seal::seal_day(&f.location, "2026-11-19", None, None)).unwrap();
    // Not told of the seal, the archive trusts its list of rolled days (ROLLED_DAYS_TRUSTED_FOR): the sealed day is
    // still answered from its readings, with the same answer.
    let plan = run(&f, "EXPLAIN SELECT * FROM windows_1h");
    let text = arrow::util::pretty::pretty_format_batches(&plan.batches).unwrap().to_string();
    assert!(!text.contains("rollups/width=1h/date=2026-11-19"), "the list is trusted: {text}");
    let trusted: Vec<String> = ["1m", "15m", "1h", "1d"].map(q).to_vec();
    assert_eq!(trusted, before, "a sealed day's readings answer as before");
    archive.rollups_changed();
    let after: Vec<String> = ["1m", "15m", "1h", "1d"].map(q).to_vec();
    assert_eq!(after, before, "a sealed day's rollups answer as its readings did");
    // The sealed day is read from its rollups, the other from readings.
    let plan = run(&f, "EXPLAIN SELECT * FROM windows_1h");
    let text = arrow::util::pretty::pretty_format_batches(&plan.batches).unwrap().to_string();
    assert!(text.contains("rollups/width=1h/date=2026-11-19"), "{text}");
    assert!(text.contains("date IN") || text.contains("2026-11-19"), "{text}");
}

/// Extreme values: a window of the live windows' aggregate reports a sum beyond `f64::MAX` as `f64::MAX` (not
/// infinity) and orders -0.0 before 0.0 — `windows_*` give those numbers over readings, as over rollups and as
/// `/api/v1/series` (SQL's own `sum`, `min` and `max` would not).
#[test]
fn window_tables_fold_extreme_values_as_the_live_windows_do() {
    let big = f64::MAX;
    let records = vec![
        vec![(0, 0, T0 + 1_000_000, big), (0, 0, T0 + 2_000_000, big), (0, 0, T0 + 3_000_000, 0.0)],
        vec![(0, 1, T0 + 1_000_000, 0.0), (0, 1, T0 + 2_000_000, -0.0), (0, 1, T0 + 3_000_000, 1e-300)],
    ];
    let f = fixture(&records, None);
    f.archive(small_flushes()).unwrap();
    let archive = sql(&f, SqlLimits::default());
    let windows = || {
        let r = f
            .runtime
            .block_on(archive.query("SELECT sum, mean, min, max, p50, p99 FROM windows_1m ORDER BY sensor DESC"))
            .unwrap();
        let b = &r.batches[0];
        (0..2).map(|row| (0..6).map(|c| b.column(c).as_primitive::<Float64Type>().value(row)).collect()).collect()
    };
    // The model: the live windows' aggregate over the same values.
    let agg = |values: &[f64]| {
        let reading = |value| Reading {
            series: SeriesKey { device: DeviceId(0), sensor: weir_operators::SensorId(0) },
            micros: 0,
            value,
            seq: 0,
        };
        let mut agg = WindowAgg::of(&reading(values[0]));
        for &v in &values[1..] {
            agg.add(&reading(v));
        }
        for &v in values {
            agg.add_to_sketch(weir_operators::sketch::Bucket::of(v).unwrap(), 1);
        }
        vec![agg.sum(), agg.mean(), agg.min, agg.max, agg.quantile(0.5).unwrap(), agg.quantile(0.99).unwrap()]
    };
    let expected: Vec<Vec<f64>> = vec![agg(&[big, big, 0.0]), agg(&[0.0, -0.0, 1e-300])];
    assert_eq!(expected[0][0], f64::MAX, "the live windows saturate the sum");
    let bits = |rows: &Vec<Vec<f64>>| -> Vec<Vec<u64>> {
        rows.iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect()
    };
    let from_readings: Vec<Vec<f64>> = windows();
    assert_eq!(bits(&from_readings), bits(&expected), "over readings");
    f.runtime.block_on(crate::seal::seal_day(&f.location, "2026-11-19", None, None)).unwrap();
    assert_eq!(bits(&windows()), bits(&expected), "over readings, the list of rolled days not listed again yet");
    archive.rollups_changed();
    let from_rollups: Vec<Vec<f64>> = windows();
    assert_eq!(bits(&from_rollups), bits(&expected), "over rollups");
}

/// The days with rollups as a predicate: one `BETWEEN` per stretch of consecutive days, holding for exactly those
/// days (checked against every day of two years around them).
#[test]
fn the_rolled_days_predicate_holds_for_exactly_those_days() {
    assert_eq!(rolled_predicate(&[]), "FALSE");
    let days = |list: &[&str]| list.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    assert_eq!(rolled_predicate(&days(&["2026-11-19"])), "(date = '2026-11-19')");
    assert_eq!(
        rolled_predicate(&days(&["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-03", "2026-12-31", "2027-01-01"])),
        "(date BETWEEN '2026-02-27' AND '2026-03-01' OR date = '2026-03-03' OR date BETWEEN '2026-12-31' AND '2027-01-01')"
    );
    let f = archived(None);
    let archive = sql(&f, SqlLimits::default());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let all: Vec<String> = (0..730).map(|i| (start + chrono::Days::new(i)).format("%Y-%m-%d").to_string()).collect();
    for _ in 0..4 {
        let mut rolled = Vec::new();
        for d in &all {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if state >> 62 != 0 {
                rolled.push(d.clone());
            }
        }
        let values = all.iter().map(|d| format!("('{d}')")).collect::<Vec<_>>().join(", ");
        let q =
            format!("SELECT date FROM (VALUES {values}) AS t(date) WHERE {} ORDER BY date", rolled_predicate(&rolled));
        let r = f.runtime.block_on(archive.query(&q)).unwrap();
        let got: Vec<String> = r
            .batches
            .iter()
            .flat_map(|b| b.column(0).as_string::<i32>().iter().map(|d| d.unwrap().to_owned()).collect::<Vec<_>>())
            .collect();
        assert_eq!(got, rolled);
    }
}
