//! The pieces cover each range exactly; and over random Parquet files (row groups of any size, whatever the rule
//! guesses, sorted by sensor as the archive is, some sensors null), queries answer the same with and without the
//! rule and [`ProvenFilters`], on 1–4 partitions — and the plans show the rules cut the scan and dropped proven
//! filters, so the comparison is not vacuous.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::pretty::pretty_format_batches;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use proptest::prelude::*;

use super::super::file_caches::FileCaches;
use super::super::proven_filters::ProvenFilters;
use super::{ScanInPieces, pieces_of};

fn file(size: u64, range: Option<(u64, u64)>, rows: Option<usize>) -> PartitionedFile {
    let mut file = PartitionedFile::new("f.parquet", size);
    if let Some((start, end)) = range {
        file = file.with_range(start as i64, end as i64);
    }
    if let Some(rows) = rows {
        let statistics = Statistics {
            num_rows: Precision::Exact(rows),
            total_byte_size: Precision::Absent,
            column_statistics: vec![ColumnStatistics::new_unknown()],
        };
        file = file.with_statistics(Arc::new(statistics));
    }
    file
}

proptest! {
    #[test]
    fn the_pieces_cover_the_range_exactly_in_order(
        size in 1u64..50_000_000,
        cut in (0.0f64..1.0, 0.0f64..1.0),
        whole in any::<bool>(),
        rows in proptest::option::of(0usize..5_000_000),
        rows_per_row_group in 0usize..300_000,
    ) {
        let (a, b) = ((cut.0 * size as f64) as u64, (cut.1 * size as f64) as u64);
        let range = (!whole && a != b).then(|| (a.min(b), a.max(b)));
        let f = file(size, range, rows);
        let pieces = pieces_of(&f, rows_per_row_group);
        let (start, end) = f.range();
        prop_assert_eq!(pieces[0].range().0, start);
        prop_assert_eq!(pieces.last().unwrap().range().1, end);
        for pair in pieces.windows(2) {
            prop_assert_eq!(pair[0].range().1, pair[1].range().0, "contiguous");
        }
        for piece in &pieces {
            prop_assert!(piece.range().0 < piece.range().1 || pieces.len() == 1, "no empty piece");
            prop_assert_eq!(piece.path(), f.path());
            let whole_file = pieces.len() == 1;
            prop_assert!(whole_file || piece.statistics.is_none(), "a piece carries no statistics of the file");
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// One row: sensor (5: null), device, time, value.
type Row = (u8, u8, i64, Option<i32>);

/// Writes `rows` (sorted by sensor, device, time, as the archive is) in row groups of `row_group_rows`.
fn write_file(path: &std::path::Path, rows: &mut [Row], row_group_rows: usize) {
    rows.sort();
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(rows.iter().map(|r| (r.0 % 6 != 5).then(|| format!("s{}", r.0 % 6))).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| format!("d{}", r.1 % 7)).map(Some).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.3.map(f64::from)).collect::<Float64Array>()),
        ],
    )
    .expect("a batch of the schema");
    let properties = WriterProperties::builder().set_max_row_group_row_count(Some(row_group_rows.max(1))).build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).expect("create"), schema(), Some(properties)).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

/// The queries compared; the last two filter on the partition column `day` and a file column together, so that the
/// filter reaches the scan with the partition column in it.
const QUERIES: [&str; 11] = [
    "SELECT sensor, count(*), sum(value), min(value), max(value) FROM t GROUP BY sensor ORDER BY sensor",
    "SELECT * FROM t WHERE sensor = 's2' ORDER BY day, device, ts, value",
    "SELECT count(*), count(value) FROM t",
    "SELECT device, ts, value FROM t WHERE sensor IN ('s0', 's4') AND ts > 500 ORDER BY device, ts, value",
    "SELECT day, count(*), sum(value) FROM t WHERE day = 'd1' OR sensor = 's3' GROUP BY day ORDER BY day",
    concat!(
        "SELECT * FROM t WHERE (day = 'd0' AND sensor = 's1') OR (day = 'd1' AND ts < 300) ",
        "ORDER BY day, sensor, device, ts, value"
    ),
    "SELECT count(*) FROM (SELECT ts FROM t WHERE sensor = 's0' LIMIT 7)",
    "SELECT device, ts FROM t WHERE 's3' = sensor AND value > 0 ORDER BY device, ts",
    "SELECT count(*), sum(value) FROM t WHERE sensor = 's1'",
    "SELECT sensor, count(*), max(ts) FROM t WHERE sensor = 's4' OR sensor IS NULL GROUP BY sensor ORDER BY sensor",
    "SELECT count(*), max(ts) FROM t WHERE sensor = 's4'",
];

/// What [`answers`] returns: each query's answer, the file ranges its plan scans, and its plan.
type Answers = (Vec<String>, Vec<usize>, Vec<String>);

/// How a run plans its scans: without the rule, with it guessing pieces from sizes, or with it reading the footers
/// that the run's runtime keeps.
#[derive(Clone, Copy, Debug)]
enum Planning {
    Plain,
    Guessed { rows_per_row_group: usize },
    Footers,
}

/// Each query's answer as text, the number of file ranges each query's plan scans, and its plan as text.
fn answers(dir: &std::path::Path, partitions: usize, planning: Planning, declared: bool) -> Answers {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    rt.block_on(async {
        let mut config = SessionConfig::new().with_target_partitions(partitions);
        config.options_mut().optimizer.repartition_file_min_size = 0;
        let caches = FileCaches::new(64 << 20);
        let runtime =
            RuntimeEnvBuilder::new().with_cache_manager(caches.runtime_config()).build_arc().expect("runtime");
        let mut state =
            SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features();
        let rule = match planning {
            Planning::Plain => None,
            Planning::Guessed { rows_per_row_group } => Some(ScanInPieces { rows_per_row_group, footers: None }),
            Planning::Footers => Some(ScanInPieces { rows_per_row_group: 1, footers: caches.footers() }),
        };
        if let Some(rule) = rule {
            state = state.with_physical_optimizer_rule(Arc::new(rule));
        }
        if let Planning::Footers = planning {
            state = state.with_physical_optimizer_rule(Arc::new(ProvenFilters::new(caches.footers())));
        }
        let ctx = SessionContext::new_with_state(state.build());
        // Declared: the schema the files were written with, as the archive's tables declare theirs. Otherwise
        // DataFusion infers one, with other types for strings than the files' (views).
        let schema = schema();
        let options =
            if declared { ParquetReadOptions::default().schema(&schema) } else { ParquetReadOptions::default() };
        let options = options.table_partition_cols(vec![("day".to_string(), DataType::Utf8)]);
        ctx.register_parquet("t", dir.to_str().expect("utf-8 path"), options).await.expect("register");
        // Every file opened once, so that its footer is in the cache when the queries are planned.
        ctx.sql("SELECT sum(ts) FROM t").await.expect("plans").collect().await.expect("runs");
        let mut out = Vec::new();
        let mut ranges = Vec::new();
        let mut plans = Vec::new();
        for query in QUERIES {
            let batches = ctx.sql(query).await.expect("plans").collect().await.expect("runs");
            out.push(pretty_format_batches(&batches).expect("formats").to_string());
            let plan = ctx.sql(query).await.expect("plans").create_physical_plan().await.expect("plans");
            ranges.push(scanned_ranges(&plan));
            plans.push(datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string());
        }
        (out, ranges, plans)
    })
}

/// The file ranges the Parquet scans of `plan` read.
fn scanned_ranges(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let mut ranges = 0;
    plan.apply(|node| {
        if let Some(exec) = node.downcast_ref::<DataSourceExec>()
            && let Some((scan, _)) = exec.downcast_to_file_source::<ParquetSource>()
        {
            ranges += scan.file_groups.iter().map(|group| group.len()).sum::<usize>();
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visits");
    ranges
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn queries_answer_the_same_with_the_scan_in_pieces(
        files in proptest::collection::vec(
            (proptest::collection::vec((0u8..6, 0u8..7, 0i64..1000, proptest::option::of(-100i32..100)), 0..600),
             1usize..80),
            1..4,
        ),
        partitions in 1usize..5,
        guessed_rows_per_row_group in 1usize..200,
        declared in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, (rows, row_group_rows)) in files.iter().enumerate() {
            let mut rows = rows.clone();
            let day = dir.path().join(format!("day=d{}", i % 2));
            std::fs::create_dir_all(&day).expect("day directory");
            write_file(&day.join(format!("part-{i}.parquet")), &mut rows, *row_group_rows);
        }
        let (want, _, _) = answers(dir.path(), partitions, Planning::Plain, true);
        let planning = match guessed_rows_per_row_group % 2 {
            0 => Planning::Guessed { rows_per_row_group: guessed_rows_per_row_group },
            _ => Planning::Footers,
        };
        let (got, _, _) = answers(dir.path(), partitions, planning, declared);
        prop_assert_eq!(got, want);
    }
}

/// A directory with one file in partition `day=d0`: 5 000 rows of 5 sensors, in 20 row groups of 250 (4 a sensor).
fn day_of_twenty_row_groups() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows: Vec<Row> = (0..5000).map(|i| ((i % 5) as u8, (i % 7) as u8, i64::from(i), Some(i % 100))).collect();
    std::fs::create_dir(dir.path().join("day=d0")).expect("day directory");
    write_file(&dir.path().join("day=d0/day.parquet"), &mut rows, 250);
    dir
}

/// Not vacuous: a file of several row groups is scanned in more pieces than partitions, and a filter that keeps one
/// sensor's row groups answers as without the rule.
#[test]
fn a_file_of_many_row_groups_is_scanned_in_pieces() {
    let dir = day_of_twenty_row_groups();
    let (want, plain, _) = answers(dir.path(), 2, Planning::Plain, true);
    let (got, guessed, _) = answers(dir.path(), 2, Planning::Guessed { rows_per_row_group: 250 }, true);
    assert!(plain.iter().all(|&ranges| ranges <= 2), "{plain:?}");
    assert!(guessed.iter().any(|&ranges| ranges > 2), "the plan shows the pieces: {guessed:?}");
    assert_eq!(got, want);
}

/// With the footer cached, the pieces are the row groups whose statistics may hold the filter's rows: the file's
/// 20 row groups for a query without a filter, the 4 of sensor `s2` for `sensor = 's2'`, and the same answers.
#[test]
fn a_cached_footer_cuts_the_file_at_the_row_groups_the_filter_may_read() {
    let dir = day_of_twenty_row_groups();
    let (want, _, _) = answers(dir.path(), 2, Planning::Plain, true);
    let (got, ranges, plans) = answers(dir.path(), 2, Planning::Footers, true);
    assert_eq!(got, want);
    // QUERIES: all sensors; `s2`; a count (answered from the statistics, no scan); `s0` and `s4` (8 row groups,
    // each with a `ts` over 500); in day `d0`, `s3`; in day `d0`, `s1`; then one sensor each (4 row groups).
    assert_eq!(ranges, [20, 4, 0, 8, 4, 4, 4, 4, 4, 4, 4]);
    // The row groups of one sensor prove `sensor = 's2'` (and `'s3' = sensor`, `sensor = 's1'`): no filter compares
    // it, and where nothing else needs the column, the scan does not read it. A limit keeps its filter; so do
    // `sensor IN (…)`, a disjunction, and `value > 0`.
    for (query, plan) in QUERIES.iter().zip(&plans) {
        let scan = plan.lines().find(|line| line.contains("DataSourceExec")).unwrap_or_default();
        let filter = plan.lines().find(|line| line.contains("FilterExec")).unwrap_or_default();
        match query {
            q if q.contains("WHERE sensor = 's2'") || q.contains("WHERE sensor = 's1'") => {
                assert!(filter.is_empty(), "{query}: {plan}");
                assert!(!scan.contains("projection=[sensor") || q.starts_with("SELECT *"), "{query}: {plan}");
            }
            q if q.contains("'s3' = sensor") => {
                assert!(filter.contains("value") && !filter.contains("s3"), "{query}: {plan}");
            }
            q if q.contains("LIMIT") || q.contains("IN (") || q.contains(" OR ") => {
                assert!(!filter.is_empty(), "{query}: {plan}");
            }
            _ => {}
        }
    }
    let (_, _, plain_plans) = answers(dir.path(), 2, Planning::Plain, true);
    assert!(plain_plans[1].contains("FilterExec"), "without the rule, `sensor = 's2'` is compared: {}", plain_plans[1]);
    // Where the scan's types are not the file's, the rule leaves the file to DataFusion's adaptation: not cut.
    let (got, ranges, _) = answers(dir.path(), 2, Planning::Footers, false);
    assert_eq!(got, want);
    assert!(ranges.iter().all(|&ranges| ranges <= 2), "{ranges:?}");
}

/// A row group whose other rows are null (rows 10–19: five `s4`, five nulls) proves nothing: its statistics say `s4` is the minimum and the maximum,
/// but `sensor = 's4'` is not true of a null.
#[test]
fn nulls_in_a_row_group_keep_the_filter() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("day=d0")).expect("day directory");
    let mut rows: Vec<Row> =
        (0..40).map(|i| (if i < 15 { 4 } else { 5 }, (i % 7) as u8, i64::from(i), Some(i))).collect();
    write_file(&dir.path().join("day=d0/day.parquet"), &mut rows, 10);
    let (want, _, _) = answers(dir.path(), 2, Planning::Plain, true);
    let (got, _, plans) = answers(dir.path(), 2, Planning::Footers, true);
    assert_eq!(got, want);
    assert!(want[10].contains("| 15 "), "{}", want[10]);
    assert!(plans[10].contains("FilterExec"), "{}", plans[10]);
}

/// A file too small to split is one partition, and DataFusion puts a round-robin repartition between the filter and
/// the scan: the row groups still prove `sensor = 's2'`, the filter goes, the scan reads no `sensor`, and the answer
/// is DataFusion's own.
#[test]
fn a_filter_above_a_repartitioned_scan_is_dropped_too() {
    let dir = day_of_twenty_row_groups();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    let query = "SELECT count(*), sum(value) FROM t WHERE sensor = 's2'";
    let run = |rules: bool| {
        rt.block_on(async {
            let caches = FileCaches::new(64 << 20);
            let runtime =
                RuntimeEnvBuilder::new().with_cache_manager(caches.runtime_config()).build_arc().expect("runtime");
            let mut state = SessionStateBuilder::new()
                .with_config(SessionConfig::new().with_target_partitions(2))
                .with_runtime_env(runtime)
                .with_default_features();
            if rules {
                state = state
                    .with_physical_optimizer_rule(Arc::new(ScanInPieces::new(caches.footers())))
                    .with_physical_optimizer_rule(Arc::new(ProvenFilters::new(caches.footers())));
            }
            let ctx = SessionContext::new_with_state(state.build());
            let schema = schema();
            let options = ParquetReadOptions::default()
                .schema(&schema)
                .table_partition_cols(vec![("day".to_string(), DataType::Utf8)]);
            ctx.register_parquet("t", dir.path().to_str().expect("utf-8 path"), options).await.expect("register");
            ctx.sql("SELECT sum(ts) FROM t").await.expect("plans").collect().await.expect("runs");
            let plan = ctx.sql(query).await.expect("plans").create_physical_plan().await.expect("plans");
            let plan = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
            let batches = ctx.sql(query).await.expect("plans").collect().await.expect("runs");
            (pretty_format_batches(&batches).expect("formats").to_string(), plan)
        })
    };
    let (want, plain) = run(false);
    let (got, plan) = run(true);
    assert_eq!(got, want);
    assert!(plain.contains("FilterExec") && plain.contains("RepartitionExec"), "{plain}");
    assert!(!plan.contains("FilterExec"), "{plan}");
    assert!(plan.lines().any(|l| l.contains("DataSourceExec") && l.contains("projection=[value]")), "{plan}");
}
