//! Dropping the parts of a filter that the statistics of every row group a scan reads already prove.
//!
//! Why: the archive's writer gives a sensor with enough rows row groups of its own (`weir_format::PartWriter`), so a
//! query that keeps one sensor (`WHERE sensor = 'speed'`) reads row groups whose statistics say `sensor` is `speed`
//! on every row: minimum and maximum both `speed`, exact, no nulls. Comparing each row again cost a quarter of such
//! a query's time over a sealed day (decoding the `sensor` column, and the comparison), about what DuckDB's whole
//! query takes beyond the scan.
//!
//! What it does: for a filter over a Parquet scan (directly, or through repartitions that only move its rows) whose
//! files' footers are cached ([`super::file_caches`]),
//! each conjunct `column = 'literal'` (a string column of the files, either side) is dropped when every row group
//! the scan may read — those whose start lies in one of its file ranges, as DataFusion decides which range reads a
//! row group — has exact statistics for the column with minimum = maximum = the literal and a null count of 0. The
//! rows the scan yields are then exactly those the conjunct keeps. When no conjunct is left, the filter becomes the
//! projection it carried (or goes), and the projection is pushed into the scan, so that a column only the filter
//! read is not decoded at all.
//!
//! Why it cannot change an answer: the scan prunes row groups and pages only by the same filter, so it yields a
//! subset of the rows of the row groups checked, and every one of those satisfies the dropped conjunct. A file
//! whose footer is not cached or is stale, whose column types are not the scan's, or that carries an access plan of
//! its own, proves nothing; nor does a filter with a limit (`fetch`) when all of it would go. Statistics truncated
//! by the writer (long strings) are not exact, and prove nothing.
//!
//! It runs after [`super::scan_in_pieces::ScanInPieces`] (whose pieces it reads like any file range); the model
//! tests of that rule run with this one too (`scan_in_pieces/tests.rs`).

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::listing::{FileRange, PartitionedFile};
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccessPlanFilter};
use datafusion::datasource::physical_plan::{FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::projection_pushdown::ProjectionPushdown;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use parquet::file::metadata::ParquetMetaData;

/// The plan rule: filters over Parquet scans lose the conjuncts their row groups' statistics prove.
pub(super) struct ProvenFilters {
    /// The footers the queries' runtimes keep: only files found here prove anything.
    footers: Option<Arc<FileMetadataCache>>,
}

impl std::fmt::Debug for ProvenFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvenFilters").field("footers", &self.footers.is_some()).finish()
    }
}

impl ProvenFilters {
    /// The rule, proving from the footers in `footers`.
    pub(super) fn new(footers: Option<Arc<FileMetadataCache>>) -> Self {
        ProvenFilters { footers }
    }
}

impl PhysicalOptimizerRule for ProvenFilters {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(footers) = self.footers.as_deref() else {
            return Ok(plan);
        };
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            match without_proven(filter, footers, config)? {
                Some(replaced) => Ok(Transformed::yes(replaced)),
                None => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "proven_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `filter` without the conjuncts its scan's row groups prove; `None` when none is proven (or it is not over a
/// Parquet scan).
fn without_proven(
    filter: &FilterExec,
    footers: &FileMetadataCache,
    config: &ConfigOptions,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let input = filter.input();
    let Some(exec) = scan_below(input) else {
        return Ok(None);
    };
    let Some((scan, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
        return Ok(None);
    };
    let input_schema = input.schema();
    let file_schema = parquet.table_schema().file_schema().clone();
    let conjuncts = split_conjunction(filter.predicate());
    let equalities: Vec<Option<Equality>> =
        conjuncts.iter().map(|c| Equality::of(c.as_ref(), &input_schema, &file_schema)).collect();
    if equalities.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut proven: Vec<bool> = equalities.iter().map(Option::is_some).collect();
    for file in scan.file_groups.iter().flat_map(|group| group.iter()) {
        if !proven.iter().any(|&p| p) {
            return Ok(None);
        }
        let Some(entry) = footers.get(&file.object_meta.location) else {
            return Ok(None);
        };
        if !entry.is_valid_for(&file.object_meta) || !file.extensions.is_empty() {
            return Ok(None);
        }
        let Some(footer) = entry.file_metadata.as_any().downcast_ref::<CachedParquetMetaData>() else {
            return Ok(None);
        };
        let footer = footer.parquet_metadata();
        if !super::scan_in_pieces::types_match(&file_schema, footer) {
            return Ok(None);
        }
        for (equality, proven) in equalities.iter().zip(proven.iter_mut()) {
            if let Some(equality) = equality {
                *proven &= equality.holds_in_every_row_group_of(file, footer);
            }
        }
    }
    if !proven.iter().any(|&p| p) {
        return Ok(None);
    }
    let kept: Vec<Arc<dyn PhysicalExpr>> =
        conjuncts.iter().zip(&proven).filter(|(_, proven)| !**proven).map(|(c, _)| Arc::clone(c)).collect();
    if !kept.is_empty() {
        let narrower = FilterExecBuilder::from(filter).with_predicate(conjunction(kept)).build()?;
        return Ok(Some(Arc::new(narrower)));
    }
    if filter.fetch().is_some() {
        return Ok(None);
    }
    // Nothing left to filter: the columns the filter handed on, read straight from the scan.
    let projected = match filter.projection() {
        None => Arc::clone(input),
        Some(projection) => {
            let columns = projection.iter().map(|&i| {
                let name = input_schema.field(i).name().clone();
                (Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>, name)
            });
            Arc::new(ProjectionExec::try_new(columns, Arc::clone(input))?) as Arc<dyn ExecutionPlan>
        }
    };
    Ok(Some(ProjectionPushdown::new().optimize(projected, config)?))
}

/// The scan `plan` reads its rows from, unchanged: the plan itself, or below nodes that only move rows between
/// partitions or batches (DataFusion puts a round-robin repartition between a filter and a scan of one partition).
fn scan_below(plan: &Arc<dyn ExecutionPlan>) -> Option<&DataSourceExec> {
    if let Some(exec) = plan.downcast_ref::<DataSourceExec>() {
        return Some(exec);
    }
    let moves_rows_only = plan.is::<RepartitionExec>() || plan.is::<CoalescePartitionsExec>();
    match plan.children().as_slice() {
        [child] if moves_rows_only => scan_below(child),
        _ => None,
    }
}

/// A conjunct `column = 'literal'` over a string column of the files.
struct Equality {
    /// The column's name in the files.
    column: String,
    /// The literal's bytes (string statistics are the values' bytes).
    bytes: Vec<u8>,
}

impl Equality {
    /// `expr` as an equality of a file's string column and a string literal, if it is one.
    fn of(expr: &dyn PhysicalExpr, input: &Schema, files: &Schema) -> Option<Equality> {
        let binary = expr.downcast_ref::<BinaryExpr>()?;
        if *binary.op() != Operator::Eq {
            return None;
        }
        let (column, literal) = match (binary.left().downcast_ref::<Column>(), binary.right().downcast_ref::<Literal>())
        {
            (Some(column), Some(literal)) => (column, literal),
            _ => (binary.right().downcast_ref::<Column>()?, binary.left().downcast_ref::<Literal>()?),
        };
        let field = input.fields().get(column.index()).filter(|f| f.name() == column.name())?;
        let in_files = files.field_with_name(column.name()).ok()?;
        if !is_string(field.data_type()) || in_files.data_type() != field.data_type() {
            return None;
        }
        Some(Equality { column: column.name().to_owned(), bytes: string_of(literal.value())?.as_bytes().to_vec() })
    }

    /// Whether every row group that `file`'s range reads holds only rows with the column equal to the literal, by
    /// its exact statistics.
    fn holds_in_every_row_group_of(&self, file: &PartitionedFile, footer: &ParquetMetaData) -> bool {
        let descriptor = footer.file_metadata().schema_descr();
        let Some(index) = descriptor.columns().iter().position(|c| c.path().parts() == [self.column.as_str()]) else {
            return false;
        };
        let groups = footer.row_groups();
        let (start, end) = file.range();
        let mut read = RowGroupAccessPlanFilter::new(ParquetAccessPlan::new_all(groups.len()));
        read.prune_by_range(groups, &FileRange { start: start as i64, end: end as i64 });
        read.row_group_indexes().all(|i| {
            groups[i].column(index).statistics().is_some_and(|s| {
                s.null_count_opt() == Some(0)
                    && s.min_is_exact()
                    && s.max_is_exact()
                    && s.min_bytes_opt() == Some(self.bytes.as_slice())
                    && s.max_bytes_opt() == Some(self.bytes.as_slice())
            })
        })
    }
}

/// Whether values of `data_type` are strings (plain or dictionary-encoded).
fn is_string(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

/// The string a literal holds (plain or dictionary-encoded); `None` for null or anything else.
fn string_of(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.as_deref(),
        ScalarValue::Dictionary(_, inner) => string_of(inner),
        _ => None,
    }
}
