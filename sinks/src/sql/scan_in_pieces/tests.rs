//! The pieces cover each range exactly; and over random Parquet files (row groups of any size, whatever the rule
//! guesses, sorted by sensor as the archive is), queries answer the same with and without the rule, on 1–4
//! partitions — and the plans show the rule cut the scan, so the comparison is not vacuous.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::pretty::pretty_format_batches;
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use proptest::prelude::*;

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
            prop_assert!(pieces.len() == 1 || piece.statistics.is_none(), "a piece does not carry the file's statistics");
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// One row: sensor, device, time, value.
type Row = (u8, u8, i64, Option<i32>);

/// Writes `rows` (sorted by sensor, device, time, as the archive is) in row groups of `row_group_rows`.
fn write_file(path: &std::path::Path, rows: &mut [Row], row_group_rows: usize) {
    rows.sort();
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(rows.iter().map(|r| format!("s{}", r.0 % 5)).map(Some).collect::<StringArray>()),
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

const QUERIES: [&str; 4] = [
    "SELECT sensor, count(*), sum(value), min(value), max(value) FROM t GROUP BY sensor ORDER BY sensor",
    "SELECT * FROM t WHERE sensor = 's2' ORDER BY device, ts, value",
    "SELECT count(*), count(value) FROM t",
    "SELECT device, ts, value FROM t WHERE sensor IN ('s0', 's4') AND ts > 500 ORDER BY device, ts, value",
];

/// Each query's answer as text, and whether the plans show a scan cut into pieces by the rule.
fn answers(dir: &std::path::Path, partitions: usize, rule: Option<ScanInPieces>) -> (Vec<String>, bool) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    rt.block_on(async {
        let mut config = SessionConfig::new().with_target_partitions(partitions);
        config.options_mut().optimizer.repartition_file_min_size = 0;
        let mut state = SessionStateBuilder::new().with_config(config).with_default_features();
        let cut = rule.is_some();
        if let Some(rule) = rule {
            state = state.with_physical_optimizer_rule(Arc::new(rule));
        }
        let ctx = SessionContext::new_with_state(state.build());
        let options = ParquetReadOptions::default();
        ctx.register_parquet("t", dir.to_str().expect("utf-8 path"), options).await.expect("register");
        let mut out = Vec::new();
        let mut pieces = false;
        for query in QUERIES {
            let batches = ctx.sql(query).await.expect("plans").collect().await.expect("runs");
            out.push(pretty_format_batches(&batches).expect("formats").to_string());
            let plan = ctx.sql(&format!("EXPLAIN {query}")).await.expect("plans").collect().await.expect("runs");
            let plan = pretty_format_batches(&plan).expect("formats").to_string();
            // A piece shows as `path:start..end`; more ranges than partitions means the rule cut a range.
            pieces |= cut && plan.matches("..").count() > partitions;
        }
        (out, pieces)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn queries_answer_the_same_with_the_scan_in_pieces(
        files in proptest::collection::vec(
            (proptest::collection::vec((0u8..5, 0u8..7, 0i64..1000, proptest::option::of(-100i32..100)), 0..600),
             1usize..80),
            1..4,
        ),
        partitions in 1usize..5,
        guessed_rows_per_row_group in 1usize..200,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, (rows, row_group_rows)) in files.iter().enumerate() {
            let mut rows = rows.clone();
            write_file(&dir.path().join(format!("part-{i}.parquet")), &mut rows, *row_group_rows);
        }
        let (want, _) = answers(dir.path(), partitions, None);
        let rule = ScanInPieces { rows_per_row_group: guessed_rows_per_row_group };
        let (got, _) = answers(dir.path(), partitions, Some(rule));
        prop_assert_eq!(got, want);
    }
}

/// Not vacuous: a file of several row groups is scanned in more pieces than partitions, and a filter that keeps one
/// sensor's row groups answers as without the rule.
#[test]
fn a_file_of_many_row_groups_is_scanned_in_pieces() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows: Vec<Row> = (0..5000).map(|i| ((i % 5) as u8, (i % 7) as u8, i64::from(i), Some(i % 100))).collect();
    write_file(&dir.path().join("day.parquet"), &mut rows, 250);
    let (want, cut_without) = answers(dir.path(), 2, None);
    let (got, cut) = answers(dir.path(), 2, Some(ScanInPieces { rows_per_row_group: 250 }));
    assert!(!cut_without);
    assert!(cut, "the plan shows the pieces");
    assert_eq!(got, want);
}
