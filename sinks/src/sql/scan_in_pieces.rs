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
//! What it leaves alone: scans that are not Parquet, scans whose partitions must keep their files (an order to
//! preserve, partitions declared by file group, or work stealing turned off), and files of one piece. The number of
//! partitions, and so the rest of the plan, is unchanged.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use weir_format::ROW_GROUP_ROWS;

/// The size of a piece of a file whose number of rows the listing does not know.
pub(super) const PIECE_BYTES_WITHOUT_STATISTICS: u64 = 1 << 20;

/// At most this many pieces in one scan (planning and opening a piece has a cost; a scan of many files is balanced
/// by its files already).
const MAX_PIECES_PER_SCAN: usize = 4096;

/// The plan rule: Parquet scans whose partitions may share their files read them in pieces of about a row group.
#[derive(Debug)]
pub(super) struct ScanInPieces {
    /// The rows of a row group in the files scanned ([`ROW_GROUP_ROWS`] in the archive).
    rows_per_row_group: usize,
}

impl Default for ScanInPieces {
    fn default() -> Self {
        ScanInPieces { rows_per_row_group: ROW_GROUP_ROWS }
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
            let Some((scan, _)) = exec.downcast_to_file_source::<ParquetSource>() else {
                return Ok(Transformed::no(node));
            };
            if scan.preserve_order || scan.output_partitioning.is_some() {
                return Ok(Transformed::no(node));
            }
            let Some(groups) = in_pieces(&scan.file_groups, self.rows_per_row_group) else {
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

/// The groups with each file range cut into pieces; `None` when no range has more than one piece (or the scan
/// would have too many).
fn in_pieces(groups: &[FileGroup], rows_per_row_group: usize) -> Option<Vec<FileGroup>> {
    let mut cut = false;
    let mut pieces_in_scan = 0;
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let mut files = Vec::with_capacity(group.len());
        for file in group.iter() {
            let pieces = pieces_of(file, rows_per_row_group);
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

#[cfg(test)]
mod tests;
