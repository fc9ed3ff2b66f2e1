//! The caches are shared by the queries of one archive, bounded, and never answer for a file that changed.

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use datafusion::execution::cache::Cache;
use object_store::ObjectStoreExt;

use super::super::{SqlArchive, SqlLimits, SqlResult};
use crate::test_support::*;
use weir_format::{read_parquet, write_parquet};

const T0: i64 = 1_795_046_400_000_000; // 2026-11-19T00:00:00Z

fn archived() -> Fixture {
    let records = vec![
        vec![(0, 0, T0 + 1_000_000, 10.0), (0, 0, T0 + 2_000_000, 20.0), (1, 0, T0 + 1_000_000, 5.0)],
        vec![(0, 1, T0 + 3_000_000, 40.0)],
    ];
    let f = fixture(&records, None);
    f.archive(small_flushes()).unwrap();
    f
}

fn query(f: &Fixture, sql: &SqlArchive, q: &str) -> SqlResult {
    f.runtime.block_on(sql.query(q)).unwrap()
}

fn count_and_sum(r: &SqlResult) -> (i64, f64) {
    let b = &r.batches[0];
    (b.column(0).as_primitive::<Int64Type>().value(0), b.column(1).as_primitive::<Float64Type>().value(0))
}

const COUNT_AND_SUM: &str = "SELECT count(*), sum(value) FROM readings WHERE value > 0";

#[test]
fn the_queries_of_one_archive_share_the_footers_and_statistics() {
    let f = archived();
    let sql = SqlArchive::new(f.location.clone(), None, SqlLimits::default()).unwrap();
    assert_eq!(count_and_sum(&query(&f, &sql, COUNT_AND_SUM)), (4, 75.0));
    let (footers, statistics) = (sql.caches.metadata.len(), sql.caches.statistics.len());
    assert!(footers > 0 && statistics > 0, "kept after the query: {footers} footers, {statistics} statistics");
    assert_eq!(count_and_sum(&query(&f, &sql, COUNT_AND_SUM)), (4, 75.0));
    assert_eq!((sql.caches.metadata.len(), sql.caches.statistics.len()), (footers, statistics), "read once");

    let none = SqlLimits { cache_bytes: 0, ..SqlLimits::default() };
    let sql = SqlArchive::new(f.location.clone(), None, none).unwrap();
    assert_eq!(count_and_sum(&query(&f, &sql, COUNT_AND_SUM)), (4, 75.0));
    assert_eq!((sql.caches.metadata.len(), sql.caches.statistics.len()), (0, 0), "--sql-cache 0 keeps nothing");
}

#[test]
fn a_file_replaced_in_place_is_read_again() {
    let f = archived();
    let sql = SqlArchive::new(f.location.clone(), None, SqlLimits::default()).unwrap();
    assert_eq!(count_and_sum(&query(&f, &sql, COUNT_AND_SUM)), (4, 75.0));
    // Weir never does this; a person or another tool might. The entry no longer matches the file's size.
    let part = f.runtime.block_on(f.location.list_parts()).unwrap().remove(0);
    let bytes = f.runtime.block_on(async { f.location.store.get(&part.path).await?.bytes().await }).unwrap();
    let mut rows = read_parquet(bytes).unwrap();
    let (before_rows, before_sum) = (rows.len() as i64, rows.iter().map(|r| r.value).sum::<f64>());
    let mut extra = rows[0].clone();
    extra.micros += 1;
    rows.push(extra.clone());
    for r in &mut rows {
        r.value += 1000.0;
    }
    let replaced = write_parquet(&rows).unwrap();
    f.runtime.block_on(f.location.store.put(&part.path, replaced.into())).unwrap();
    let after_sum = rows.iter().map(|r| r.value).sum::<f64>();
    assert_eq!(
        count_and_sum(&query(&f, &sql, COUNT_AND_SUM)),
        (4 - before_rows + rows.len() as i64, 75.0 - before_sum + after_sum)
    );
}

#[test]
fn the_caches_hold_no_more_than_their_bytes() {
    let f = archived();
    let tiny = SqlLimits { cache_bytes: 256, ..SqlLimits::default() };
    let sql = SqlArchive::new(f.location.clone(), None, tiny).unwrap();
    for _ in 0..3 {
        assert_eq!(count_and_sum(&query(&f, &sql, COUNT_AND_SUM)), (4, 75.0));
    }
    assert!(sql.caches.metadata.memory_used() <= 192, "{}", sql.caches.metadata.memory_used());
    assert!(sql.caches.statistics.memory_used() <= 64, "{}", sql.caches.statistics.memory_used());
}
