//! Scanning large Parquet files in pieces of about one row group, so that every partition of a query has work.
//!
//! Why: DataFusion splits a scan into `target_partitions` byte ranges of equal size, one per partition. A file of
//! the archive is sorted by (sensor, device, timestamp), so a query that keeps one sensor (`WHERE sensor =
//! 'speed'`) finds every row group it reads in one of those ranges: that partition decodes them all while the
//! others, their row groups pruned, have nothing to do (`output_rows_skew=100%` in `EXPLAIN ANALYZE`; Q1 of
//! `benches/sql-vs-duckdb.sh` ran on one core of two). DataFusion 55's file streams take unopened files (or ranges)
//! from each other once their own are done (`enable_file_stream_work_stealing`, on by default). So this rule cuts
//! each range into pieces of about one row group: a partition that finds nothing in its pieces takes the next piece
//! from the queue the partitions share, and the row groups a filter keeps are decoded on every core.
//!
//! Why it cannot read a row group twice or miss one: a piece is a byte range, and DataFusion reads a row group in the
//! one range that holds the start of its first column chunk. The pieces of a range cover it exactly, so each row
//! group still belongs to exactly one of them, whatever the sizes guessed here. The guess only decides the balance:
//! a piece is the file's size divided by its row groups (its rows from the listing's statistics, divided by the
//! archive's [`ROW_GROUP_ROWS`]); without statistics, [`PIECE_BYTES_WITHOUT_STATISTICS`].
//!
//! With the file's footer in the footer cache ([`super::file_caches`]; listing the files for their statistics puts
//! it there, so a query finds it from the first), the pieces are the row groups exactly, and only those whose
//! statistics may hold rows of the scan's filter. The rule prunes row groups once per file, as DataFusion's opener
//! does (the partition columns replaced by the file's values, the filter simplified, then
//! [`RowGroupAccessPlanFilter::prune_by_statistics`]), instead of every piece building the same pruning predicate
//! when it is opened only to find its row group pruned (12 of the 16 pieces of a sealed day for a one-sensor query).
//! Each piece is pruned again when it is opened, so this can only skip what the scan would skip. It is done only
//! where the footer's column types are the scan's and the filter's columns are the file's (other files are read
//! through DataFusion's adaptation, which the rule does not repeat), and for ranges of two row groups or more.
//! Otherwise (or with `--sql-cache 0`) the pieces are guessed from the file's size.
//!
//! What it leaves alone: scans that are not Parquet, scans whose partitions must keep their files (an order to
//! preserve, partitions declared by file group, or work stealing turned off), and files of one piece. The number of
//! partitions, and so the rest of the plan, is unchanged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{Fields, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccessPlanFilter};
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, FileSource, ParquetFileMetrics, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::simplifier::PhysicalExprSimplifier;
use datafusion::physical_expr_adapter::replace_columns_with_literals;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use parquet::file::metadata::ParquetMetaData;
use weir_format::ROW_GROUP_ROWS;

/// The size of a piece of a file whose number of rows the listing does not know.
pub(super) const PIECE_BYTES_WITHOUT_STATISTICS: u64 = 1 << 20;

/// At most this many pieces in one scan (planning and opening a piece has a cost; a scan of many files is balanced
/// by its files already).
const MAX_PIECES_PER_SCAN: usize = 4096;

/// The plan rule: Parquet scans whose partitions may share their files read them in pieces of about a row group.
pub(super) struct ScanInPieces {
    /// The rows of a row group in the files scanned ([`ROW_GROUP_ROWS`] in the archive).
    rows_per_row_group: usize,
    /// The footers the queries' runtimes keep, if any: files found here are cut at their row groups.
    footers: Option<Arc<FileMetadataCache>>,
}

impl std::fmt::Debug for ScanInPieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanInPieces")
            .field("rows_per_row_group", &self.rows_per_row_group)
            .field("footers", &self.footers.is_some())
            .finish()
    }
}

impl ScanInPieces {
    /// The rule for the archive's files, cutting those whose footer is in `footers` at their row groups.
    pub(super) fn new(footers: Option<Arc<FileMetadataCache>>) -> Self {
        ScanInPieces { rows_per_row_group: ROW_GROUP_ROWS, footers }
    }
}

impl PhysicalOptimizerRule for ScanInPieces {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        if !config.execution.enable_file_stream_work_stealing {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some((scan, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
                return Ok(Transformed::no(node));
            };
            if scan.preserve_order || scan.output_partitioning.is_some() {
                return Ok(Transformed::no(node));
            }
            let row_groups = self.footers.as_deref().map(|footers| RowGroups::of(parquet, footers));
            let Some(groups) = in_pieces(&scan.file_groups, self.rows_per_row_group, row_groups.as_ref()) else {
                return Ok(Transformed::no(node));
            };
            let scan: FileScanConfig = FileScanConfigBuilder::from(scan.clone()).with_file_groups(groups).build();
            Ok(Transformed::yes(Arc::new(exec.clone().with_data_source(Arc::new(scan))) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "scan_in_pieces"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The groups with each file range cut into pieces; `None` when no range was cut or pruned (or the scan would have
/// too many pieces).
fn in_pieces(
    groups: &[FileGroup],
    rows_per_row_group: usize,
    row_groups: Option<&RowGroups>,
) -> Option<Vec<FileGroup>> {
    let mut cut = false;
    let mut pieces_in_scan = 0;
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let mut files = Vec::with_capacity(group.len());
        for file in group.iter() {
            let pieces = match row_groups.and_then(|r| r.pieces_of(file)) {
                Some(pieces) => {
                    cut = true;
                    pieces
                }
                None => pieces_of(file, rows_per_row_group),
            };
            cut |= pieces.len() > 1;
            pieces_in_scan += pieces.len();
            files.extend(pieces);
        }
        let mut pieces = FileGroup::new(files);
        if let Some(statistics) = group.file_statistics(None) {
            // The group holds the same rows as before.
            pieces = pieces.with_statistics(Arc::new(statistics.clone()));
        }
        out.push(pieces);
    }
    (cut && pieces_in_scan <= MAX_PIECES_PER_SCAN).then_some(out)
}

/// The bytes of a piece of `file`: its size over its row groups.
fn piece_bytes(file: &PartitionedFile, rows_per_row_group: usize) -> u64 {
    let size = file.object_meta.size;
    let rows = file.statistics.as_ref().and_then(|s| s.num_rows.get_value().copied());
    match rows {
        Some(rows) => {
            let row_groups = rows.div_ceil(rows_per_row_group.max(1)).max(1) as u64;
            size.div_ceil(row_groups).max(1)
        }
        None => PIECE_BYTES_WITHOUT_STATISTICS,
    }
}

/// `file`'s range cut at the multiples of its piece size (so that the k-th row group's start falls in about the
/// k-th piece); the pieces cover the range exactly, in order.
///
/// A piece carries no statistics of its own. The file's would be wrong for a piece (its row count is the whole
/// file's), and with them every piece would run the same file-level pruning when it is opened: building and
/// evaluating a pruning predicate over the same numbers, and rewriting the predicate with the columns the
/// statistics show constant, once per piece (~5 % of a one-sensor query's CPU over a sealed day). Without them a
/// piece is pruned by its row groups' statistics, which the file's cover: a row group lies within its file's
/// minimum and maximum, so a file that its statistics prune has every row group pruned too.
fn pieces_of(file: &PartitionedFile, rows_per_row_group: usize) -> Vec<PartitionedFile> {
    let (start, end) = file.range();
    let step = piece_bytes(file, rows_per_row_group);
    let mut pieces = Vec::new();
    let mut from = start;
    while from < end {
        let to = ((from / step + 1) * step).min(end);
        let mut piece = file.clone().with_range(from as i64, to as i64);
        piece.statistics = None;
        pieces.push(piece);
        from = to;
    }
    if pieces.len() <= 1 {
        return vec![file.clone()];
    }
    pieces
}

/// What cutting a scan's files at their row groups needs: the footers, the scan's columns, and its filter as a
/// pruning predicate (built once for the scan, where each piece opened builds its own).
struct RowGroups<'a> {
    footers: &'a FileMetadataCache,
    /// The scan's file columns (without the partition columns, which files do not hold).
    file_schema: &'a SchemaRef,
    /// The scan's partition columns, whose values a file's path gives.
    partition_columns: &'a Fields,
    /// The scan's filter; `None` when it has none or does not prune by statistics.
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// The filter as a pruning predicate over a file's columns, for each set of partition values seen (a scan's
    /// files share a few: one day's files share their date).
    predicates: RefCell<HashMap<Vec<ScalarValue>, Option<Arc<PruningPredicate>>>>,
}

impl<'a> RowGroups<'a> {
    /// What a scan by `parquet` needs to be cut at the row groups of the footers in `footers`.
    fn of(parquet: &'a ParquetSource, footers: &'a FileMetadataCache) -> Self {
        let schema = parquet.table_schema();
        let filter = if parquet.table_parquet_options().global.pruning { parquet.filter() } else { None };
        RowGroups {
            footers,
            file_schema: schema.file_schema(),
            partition_columns: schema.table_partition_cols(),
            filter,
            predicates: RefCell::default(),
        }
    }

    /// The filter over `file`'s row groups, as DataFusion's opener makes it: the partition columns replaced by the
    /// file's values, simplified, then a pruning predicate over the file's columns. `None` when there is no filter
    /// or it cannot be one (it then prunes nothing here).
    fn predicate(&self, file: &PartitionedFile) -> Option<Arc<PruningPredicate>> {
        let filter = self.filter.as_ref()?;
        let mut predicates = self.predicates.borrow_mut();
        let predicate = predicates.entry(file.partition_values.clone()).or_insert_with(|| {
            let literals: HashMap<&str, &ScalarValue> = self
                .partition_columns
                .iter()
                .zip(&file.partition_values)
                .map(|(column, value)| (column.name().as_str(), value))
                .collect();
            // Simplified as the opener does, so that `'d0' = 'd1' OR sensor = 's3'` becomes `sensor = 's3'`.
            let filter = replace_columns_with_literals(filter.clone(), &literals).ok()?;
            let filter = PhysicalExprSimplifier::new(self.file_schema).simplify(filter).ok()?;
            // Row-group pruning looks columns up by their index in the file's schema: every column left must be
            // that column of the file (a filter over other columns is left to the opener).
            let mut over_file_columns = true;
            filter
                .apply(|node| {
                    if let Some(column) = node.downcast_ref::<Column>() {
                        over_file_columns &= self
                            .file_schema
                            .fields()
                            .get(column.index())
                            .is_some_and(|field| field.name() == column.name());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
                .ok()?;
            over_file_columns.then_some(())?;
            PruningPredicateBuilder::new().with_file_schema(self.file_schema.clone()).build(filter)
        });
        predicate.clone()
    }

    /// `file`'s range as one piece per row group that starts in it and whose statistics may hold rows of the filter
    /// (none when none may); `None` when the footer is not cached, the range holds fewer than two row groups, or the
    /// footer's column types are not the scan's.
    fn pieces_of(&self, file: &PartitionedFile) -> Option<Vec<PartitionedFile>> {
        let entry = self.footers.get(&file.object_meta.location)?;
        if !entry.is_valid_for(&file.object_meta) {
            return None;
        }
        let footer: &ParquetMetaData =
            entry.file_metadata.as_any().downcast_ref::<CachedParquetMetaData>()?.parquet_metadata();
        let groups = footer.row_groups();
        let (start, end) = file.range();
        let start_of = |i: usize| {
            let column = groups[i].column(0);
            column.dictionary_page_offset().unwrap_or_else(|| column.data_page_offset()) as u64
        };
        let mut kept = RowGroupAccessPlanFilter::new(ParquetAccessPlan::new_all(groups.len()));
        kept.prune_by_range(
            groups,
            &datafusion::datasource::listing::FileRange { start: start as i64, end: end as i64 },
        );
        // One row group or none: nothing to cut (and the opener prunes a lone row group as cheaply). Checked before
        // the types, which decode the footer's schema.
        if kept.remaining_row_group_count() < 2 || !types_match(self.file_schema, footer) {
            return None;
        }
        if let Some(predicate) = self.predicate(file) {
            let metrics = ParquetFileMetrics::new(0, file.path().as_ref(), &ExecutionPlanMetricsSet::new());
            kept.prune_by_statistics(
                self.file_schema,
                footer.file_metadata().schema_descr(),
                groups,
                &predicate,
                &metrics,
            );
        }
        // A piece holds the start of its row group and ends where the next row group in the file starts (or at the
        // range's end): DataFusion reads a row group in the one range that holds its start, so no piece holds two.
        let mut starts: Vec<u64> = (0..groups.len()).map(start_of).collect();
        starts.sort_unstable();
        let pieces = kept
            .row_group_indexes()
            .map(|i| {
                let from = start_of(i);
                let next = starts.get(starts.partition_point(|&start| start <= from)).copied().unwrap_or(end);
                let mut piece = file.clone().with_range(from as i64, next.clamp(from + 1, end) as i64);
                piece.statistics = None;
                piece
            })
            .collect();
        Some(pieces)
    }
}

/// Whether every column of `footer` that a scan over `file_schema` reads has the scan's type, so that statistics
/// read in the scan's types are the file's (the opener adapts other files' types; the rules leave them to it).
pub(super) fn types_match(file_schema: &SchemaRef, footer: &ParquetMetaData) -> bool {
    let file_metadata = footer.file_metadata();
    let Ok(written) =
        parquet::arrow::parquet_to_arrow_schema(file_metadata.schema_descr(), file_metadata.key_value_metadata())
    else {
        return false;
    };
    file_schema
        .fields()
        .iter()
        .all(|field| written.field_with_name(field.name()).is_ok_and(|w| w.data_type() == field.data_type()))
}

#[cfg(test)]
mod tests;
