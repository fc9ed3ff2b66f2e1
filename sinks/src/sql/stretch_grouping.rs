//! Grouping by small keys in stretches: by dictionary-encoded names without row-encoding them, or by one number
//! without hashing every row — a physical plan rule and the partial aggregation it puts in place. Both keys come in
//! stretches of one group in the archive's order (sensor, device, timestamp); each stretch is looked up once, and a
//! long one is aggregated as a whole slice.
//!
//! Why: the archive's `device` and `sensor` are dictionary columns, and DataFusion (55) groups dictionary columns
//! with its generic row format — each row's string is copied into a row, hashed and compared (`GroupValuesRows`,
//! `arrow_row::encode_dictionary_values`, `memcmp`): 45 % of `GROUP BY sensor` over a sealed day in the profile
//! (`benches/RESULTS.md`, issue 19, 3). A batch's dictionary has a handful of names for thousands of rows, so here
//! each batch's *dictionary* is numbered (one hash lookup per distinct name), and a row's group is a lookup of its
//! keys' numbers: two small integers, never a string.
//!
//! The same stage groups by **one number** (a `Float64`, `Int64` or timestamp expression: a time bucket such as
//! `floor(extract(epoch FROM timestamp) / 900)`), looking a stretch of rows with the same key up once
//! ([`number_groups`]): DataFusion hashes every row's key (11 % of a 15-minute-means query over a sealed day).
//!
//! What it replaces: only a hash aggregation's stage over raw rows — the partial stage, or the one stage where
//! the input is a single partition (`Single`, `SinglePartitioned`) — whose group keys are one or two plain columns
//! of `Dictionary(_, Utf8)`, or one number, and whose aggregates all have DataFusion's own
//! [`GroupsAccumulator`]s (count, sum, min, max, avg, …; no `DISTINCT`, no `ORDER BY` inside the aggregate). The
//! accumulators, their arguments and filters are DataFusion's, so the partial states (or values) are exactly those
//! it would emit, and its final stage merges them unchanged. Anything else is left as DataFusion planned it.
//!
//! Memory: the groups and accumulators are reserved in the query's memory pool (`--sql-memory`). When the pool
//! refuses more, the partial states so far are emitted and the groups start again — the final stage merges them,
//! as DataFusion's own partial aggregation does under pressure — so memory stays bounded whatever the number of
//! groups. A one-stage aggregation cannot emit in parts: there the refusal is the query's error, as in DataFusion.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{
    AggregateExec, AggregateInputMode, AggregateOutputMode, aggregate_expressions, evaluate_many,
};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PhysicalExpr, PlanProperties, apply_expression_roots,
};
use futures_util::StreamExt;

use super::float_extremes::Extreme;
use crate::names::Names;
use number_groups::NumberGroups;

/// The plan rule: partial aggregations grouped by one or two dictionary columns, or by one number, become
/// [`StretchAggregateExec`].
#[derive(Debug)]
pub(super) struct StretchGrouping {
    /// A run of at least this many rows of one group is aggregated as a whole (see [`MIN_RUN_ROWS`]).
    pub(super) min_run_rows: usize,
}

impl Default for StretchGrouping {
    fn default() -> Self {
        StretchGrouping { min_run_rows: MIN_RUN_ROWS }
    }
}

/// Rows of one group in a row, from which they are aggregated as one slice by DataFusion's plain accumulators
/// (vectorised: one `min`, `sum`, … over the slice; `min` and `max` of floats by [`Extreme`], which finds arrow's
/// answer without its one-value-at-a-time total order) and merged into the group's state, instead of row by row.
/// The archive is sorted by sensor and device, so most of a batch is such runs. Below this, the per-slice cost (an
/// accumulator made, its state merged: a few µs) outweighs what it saves (a few ns per row and aggregate).
const MIN_RUN_ROWS: usize = 1024;

impl PhysicalOptimizerRule for StretchGrouping {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            match StretchAggregateExec::try_replace(aggregate, self.min_run_rows)? {
                Some(replacement) => Ok(Transformed::yes(Arc::new(replacement) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "stretch_grouping"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The most group columns handled: a row's group is the pair of its names' numbers.
const MAX_GROUP_COLUMNS: usize = 2;

/// What a [`StretchAggregateExec`] groups by.
#[derive(Debug, Clone)]
enum GroupKeys {
    /// One or two dictionary columns of names: their indices in the input and their types, which the output keeps.
    Names(Vec<(usize, DataType)>),
    /// One number, computed from the row (see [`NumberGroups`]).
    Number { expr: Arc<dyn PhysicalExpr>, data_type: DataType },
}

/// The partial stage of a hash aggregation grouped by dictionary columns or one number (see the module doc).
#[derive(Debug)]
pub(super) struct StretchAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    /// What the rows are grouped by.
    keys: GroupKeys,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// What each aggregate is computed over (DataFusion's own expressions for the partial stage).
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// The replaced aggregation's schema and properties: the same output, the same partitioning.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Whether it answers final values (one stage: `Single`, `SinglePartitioned`) rather than partial states.
    final_values: bool,
    /// See [`MIN_RUN_ROWS`].
    min_run_rows: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl StretchAggregateExec {
    /// The replacement for `aggregate`, where it qualifies.
    fn try_replace(aggregate: &AggregateExec, min_run_rows: usize) -> Result<Option<Self>> {
        let group_by = aggregate.group_expr();
        let input_schema = aggregate.input_schema();
        let qualifies = aggregate.mode().input_mode() == AggregateInputMode::Raw
            && *aggregate.input_order_mode() == InputOrderMode::Linear
            && aggregate.limit_options().is_none()
            && aggregate.dynamic_expressions_produced().is_empty()
            && group_by.is_single()
            && !group_by.expr().is_empty()
            && group_by.expr().len() <= MAX_GROUP_COLUMNS
            && aggregate
                .aggr_expr()
                .iter()
                .all(|a| a.order_bys().is_empty() && !a.is_distinct() && a.groups_accumulator_supported());
        if !qualifies {
            return Ok(None);
        }
        let arguments = aggregate_expressions(aggregate.aggr_expr(), aggregate.mode(), 0)?;
        let one_key = match group_by.expr() {
            [(expr, _)] => Some((Arc::clone(expr), expr.data_type(&input_schema)?)),
            _ => None,
        };
        let keys = match one_key {
            Some((expr, data_type)) if NumberGroups::takes(&data_type) => GroupKeys::Number { expr, data_type },
            _ => match Self::name_columns(group_by.expr(), &input_schema) {
                Some(columns) => GroupKeys::Names(columns),
                None => return Ok(None),
            },
        };
        Ok(Some(StretchAggregateExec {
            input: Arc::clone(aggregate.input()),
            keys,
            aggregates: aggregate.aggr_expr().to_vec(),
            filters: aggregate.filter_expr().to_vec(),
            arguments,
            schema: aggregate.schema(),
            properties: Arc::clone(aggregate.properties()),
            final_values: aggregate.mode().output_mode() == AggregateOutputMode::Final,
            min_run_rows,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    /// The group columns' indices and (dictionary) types, if every group expression is a dictionary column of
    /// strings.
    fn name_columns(
        group_by: &[(Arc<dyn PhysicalExpr>, String)],
        input_schema: &Schema,
    ) -> Option<Vec<(usize, DataType)>> {
        let mut group_columns = Vec::new();
        for (expr, _) in group_by {
            let column = expr.downcast_ref::<Column>()?;
            let data_type = input_schema.field(column.index()).data_type();
            match data_type {
                DataType::Dictionary(key, value) if key.is_dictionary_key_type() && **value == DataType::Utf8 => {
                    group_columns.push((column.index(), data_type.clone()));
                }
                _ => return None,
            }
        }
        Some(group_columns)
    }
}

impl DisplayAs for StretchAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let groups: Vec<_> = match &self.keys {
            GroupKeys::Names(columns) => {
                columns.iter().map(|(i, _)| self.input.schema().field(*i).name().clone()).collect()
            }
            GroupKeys::Number { expr, .. } => vec![expr.to_string()],
        };
        let aggregates: Vec<_> = self.aggregates.iter().map(|a| a.name().to_owned()).collect();
        let mode = if self.final_values { "Single" } else { "Partial" };
        write!(f, "StretchAggregateExec: mode={mode}, gby=[{}], aggr=[{}]", groups.join(", "), aggregates.join(", "))
    }
}

impl ExecutionPlan for StretchAggregateExec {
    fn name(&self) -> &str {
        "StretchAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let arguments = self.arguments.iter().flatten().cloned();
        let filters = self.filters.iter().flatten().cloned();
        let key = match &self.keys {
            GroupKeys::Names(_) => None,
            GroupKeys::Number { expr, .. } => Some(Arc::clone(expr)),
        };
        apply_expression_roots(arguments.chain(filters).chain(key).collect::<Vec<_>>().iter(), f)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("StretchAggregateExec has one input".into()));
        }
        let input = children.remove(0);
        if input.schema() != self.input.schema() {
            return Err(DataFusionError::Internal("StretchAggregateExec's new input changes the schema".into()));
        }
        Ok(Arc::new(StretchAggregateExec {
            input,
            keys: self.keys.clone(),
            aggregates: self.aggregates.clone(),
            filters: self.filters.clone(),
            arguments: self.arguments.clone(),
            schema: Arc::clone(&self.schema),
            properties: Arc::clone(&self.properties),
            final_values: self.final_values,
            min_run_rows: self.min_run_rows,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let reservation =
            MemoryConsumer::new(format!("StretchAggregateExec[{partition}]")).register(context.memory_pool());
        let accumulators = self.aggregates.iter().map(|a| a.create_groups_accumulator()).collect::<Result<Vec<_>>>()?;
        let groups = Groups::new(&self.keys);
        let state = PartialState {
            input: Some(input),
            groups,
            accumulators,
            arguments: self.arguments.clone(),
            filters: self.filters.clone(),
            schema: Arc::clone(&self.schema),
            reservation,
            batch_rows: context.session_config().batch_size().max(1),
            pending: VecDeque::new(),
            final_values: self.final_values,
            early_emits: MetricBuilder::new(&self.metrics).counter("early_emits", partition),
            aggregates: self.aggregates.clone(),
            // Plain accumulators take no filter: with an aggregate's FILTER, every row goes the groups' way.
            min_run_rows: if self.filters.iter().any(Option::is_some) { usize::MAX } else { self.min_run_rows },
            rows_in_runs: MetricBuilder::new(&self.metrics).counter("rows_in_runs", partition),
        };
        let stream = futures_util::stream::try_unfold(state, |mut state| async move {
            match state.next_output().await? {
                Some(batch) => Ok(Some((batch, state))),
                None => Ok(None),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), stream)))
    }
}

/// One partition's partial aggregation while it runs.
struct PartialState {
    /// `None` once the input is done.
    input: Option<SendableRecordBatchStream>,
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
    reservation: MemoryReservation,
    /// Emitted groups go out in batches of at most this many rows (the session's batch size).
    batch_rows: usize,
    /// The rest of the last emission, sent before more input is read.
    pending: VecDeque<RecordBatch>,
    final_values: bool,
    /// Times the partial states were emitted before the input ended (the memory pool refused more).
    early_emits: Count,
    /// The aggregates, for the plain accumulators of runs.
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// See [`MIN_RUN_ROWS`] (`usize::MAX`: no runs).
    min_run_rows: usize,
    /// Rows aggregated as runs.
    rows_in_runs: Count,
}

impl PartialState {
    /// Reads input until the memory pool refuses more (then emits the partial states so far) or the input ends
    /// (then emits the rest); `None` when nothing is left.
    async fn next_output(&mut self) -> Result<Option<RecordBatch>> {
        if let Some(batch) = self.pending.pop_front() {
            return Ok(Some(batch));
        }
        while let Some(input) = self.input.as_mut() {
            match input.next().await {
                Some(batch) => {
                    self.aggregate(&batch?)?;
                    let size = self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>();
                    if let Err(refused) = self.reservation.try_resize(size) {
                        if self.final_values {
                            // One stage: its groups cannot be emitted in parts.
                            return Err(refused);
                        }
                        if self.groups.len() > 0 {
                            self.early_emits.add(1);
                            return self.emit();
                        }
                    }
                }
                None => self.input = None,
            }
        }
        if self.groups.len() == 0 {
            self.reservation.free();
            return Ok(None);
        }
        self.emit()
    }

    fn aggregate(&mut self, batch: &RecordBatch) -> Result<()> {
        let groups_before = self.groups.len();
        self.groups.intern(batch)?;
        let (indices, total) = (self.groups.rows(), self.groups.len());
        let values = evaluate_many(&self.arguments, batch)?;
        if self.min_run_rows <= indices.len() {
            return self.aggregate_in_runs(&values, groups_before);
        }
        for ((accumulator, values), filter) in self.accumulators.iter_mut().zip(&values).zip(&self.filters) {
            let filter =
                filter.as_ref().map(|f| f.evaluate(batch).and_then(|v| v.into_array(batch.num_rows()))).transpose()?;
            let filter: Option<&BooleanArray> = filter.as_ref().map(|f| f.as_boolean());
            accumulator.update_batch(values, indices, filter, total)?;
        }
        Ok(())
    }

    /// Aggregates a batch (no aggregate has a filter) stretch by stretch: a run of at least `min_run_rows` rows of
    /// one group through plain accumulators, whose state is merged into the group's; the rows between runs row by
    /// row, as always.
    ///
    /// Each call tells the accumulator only the groups known up to its stretch (`known`: those of earlier batches
    /// and of the rows so far — groups are numbered in order of appearance). DataFusion's accumulators take a
    /// stretch without nulls as saying that every group below that number has a value, so telling them the batch's
    /// whole count early marks a later, all-null group as having one.
    fn aggregate_in_runs(&mut self, values: &[Vec<ArrayRef>], groups_before: usize) -> Result<()> {
        let indices = self.groups.rows();
        let mut known = groups_before;
        let mut mixed_from = 0;
        let mut at = 0;
        for &(group, run) in self.groups.runs() {
            if run < self.min_run_rows {
                known = known.max(group + 1);
                at += run;
                continue;
            }
            update_rows(&mut self.accumulators, values, indices, mixed_from..at, known)?;
            known = known.max(group + 1);
            let accumulators = self.accumulators.iter_mut().zip(&self.aggregates);
            for ((accumulator, aggregate), values) in accumulators.zip(values) {
                let run_values = rows_of(values, at..at + run);
                if run_values.first().is_some_and(|v| v.null_count() == run) {
                    // Nothing to aggregate: a plain accumulator's empty state is not always "no value" once merged
                    // (avg's is a count of 0, which evaluates to NaN), so the rows go the groups' way.
                    accumulator.update_batch(&run_values, &indices[at..at + run], None, known)?;
                    continue;
                }
                let state = match Extreme::of_aggregate(aggregate.fun().name()).and_then(|e| e.state_of(&run_values)) {
                    Some(state) => state,
                    None => {
                        let mut plain = aggregate.create_accumulator()?;
                        plain.update_batch(&run_values)?;
                        plain.state()?.iter().map(|v| v.to_array_of_size(1)).collect::<Result<Vec<_>>>()?
                    }
                };
                accumulator.merge_batch(&state, &[group], known)?;
            }
            self.rows_in_runs.add(run);
            at += run;
            mixed_from = at;
        }
        update_rows(&mut self.accumulators, values, indices, mixed_from..indices.len(), known)?;
        debug_assert_eq!(known, self.groups.len(), "every group of the batch told");
        Ok(())
    }

    /// Every group's keys and partial states (or final values), in the replaced aggregation's schema, in batches of
    /// `batch_rows` (the first returned, the rest pending); the groups start again.
    fn emit(&mut self) -> Result<Option<RecordBatch>> {
        let mut columns = self.groups.emit()?;
        for accumulator in &mut self.accumulators {
            if self.final_values {
                columns.push(accumulator.evaluate(EmitTo::All)?);
            } else {
                columns.extend(accumulator.state(EmitTo::All)?);
            }
        }
        let size = self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>();
        self.reservation.shrink(self.reservation.size().saturating_sub(size));
        let all = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let mut offset = 0;
        while offset < all.num_rows() {
            let rows = self.batch_rows.min(all.num_rows() - offset);
            self.pending.push_back(all.slice(offset, rows));
            offset += rows;
        }
        Ok(self.pending.pop_front())
    }
}

/// The rows `rows` of a batch (their `values` and group `indices`) into the accumulators, row by row; `known`: the
/// groups known up to them (see [`PartialState::aggregate_in_runs`]).
fn update_rows(
    accumulators: &mut [Box<dyn GroupsAccumulator>],
    values: &[Vec<ArrayRef>],
    indices: &[usize],
    rows: std::ops::Range<usize>,
    known: usize,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    for (accumulator, values) in accumulators.iter_mut().zip(values) {
        accumulator.update_batch(&rows_of(values, rows.clone()), &indices[rows.clone()], None, known)?;
    }
    Ok(())
}

/// The rows `rows` of each array (zero-copy slices).
fn rows_of(arrays: &[ArrayRef], rows: std::ops::Range<usize>) -> Vec<ArrayRef> {
    arrays.iter().map(|a| a.slice(rows.start, rows.len())).collect()
}

/// A null name's number.
const NULL_NAME: u32 = u32::MAX;

/// The groups seen so far, of names or of one number.
enum Groups {
    Names(NameGroups),
    Number(NumberGroups),
}

impl Groups {
    fn new(keys: &GroupKeys) -> Self {
        match keys {
            GroupKeys::Names(columns) => Groups::Names(NameGroups::new(columns.clone())),
            GroupKeys::Number { expr, data_type } => {
                Groups::Number(NumberGroups::new(Arc::clone(expr), data_type.clone()))
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Groups::Names(g) => g.len(),
            Groups::Number(g) => g.len(),
        }
    }

    fn size(&self) -> usize {
        match self {
            Groups::Names(g) => g.size(),
            Groups::Number(g) => g.size(),
        }
    }

    /// The group index of every row of `batch` into [`Groups::rows`], new groups added.
    fn intern(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            Groups::Names(g) => g.intern(batch),
            Groups::Number(g) => g.intern(batch),
        }
    }

    /// The current batch's row → group index.
    fn rows(&self) -> &[usize] {
        match self {
            Groups::Names(g) => &g.rows,
            Groups::Number(g) => &g.rows,
        }
    }

    /// The current batch's rows as maximal stretches of one group: (group index, rows).
    fn runs(&self) -> &[(usize, usize)] {
        match self {
            Groups::Names(g) => &g.runs,
            Groups::Number(g) => &g.runs,
        }
    }

    /// The group columns of every group; the groups start again.
    fn emit(&mut self) -> Result<Vec<ArrayRef>> {
        match self {
            Groups::Names(g) => g.emit(),
            Groups::Number(g) => g.emit(),
        }
    }
}

/// The groups of names seen so far: each group column's names numbered in order of appearance, and each group's
/// numbers.
struct NameGroups {
    columns: Vec<(usize, DataType)>,
    /// Per group column, its names numbered.
    names: Vec<Names>,
    /// Group index of each pair of numbers (first << 32 | second; the second is 0 with one group column).
    index: HashMap<u64, usize, foldhash::fast::RandomState>,
    /// Each group's numbers, by group index.
    keys: Vec<(u32, u32)>,
    /// The current batch's row → group index.
    rows: Vec<usize>,
    /// The current batch's rows as maximal stretches of one group: (group index, rows).
    runs: Vec<(usize, usize)>,
    /// Scratch: the current batch's dictionary entry → number, per group column.
    numbered: Vec<Vec<u32>>,
    name_bytes: usize,
}

impl NameGroups {
    fn new(columns: Vec<(usize, DataType)>) -> Self {
        let n = columns.len();
        NameGroups {
            columns,
            names: (0..n).map(|_| Default::default()).collect(),
            index: HashMap::default(),
            keys: Vec::new(),
            rows: Vec::new(),
            runs: Vec::new(),
            numbered: vec![Vec::new(); n],
            name_bytes: 0,
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes held (approximately: the maps' entries and the names).
    fn size(&self) -> usize {
        // A name costs an entry in the map and one in the list (~40 bytes) besides its two copies (`name_bytes`).
        let names: usize = self.names.iter().map(|n| n.len() * 40).sum();
        names
            + self.name_bytes
            + self.index.capacity() * 24
            + self.keys.capacity() * 8
            + self.rows.capacity() * 8
            + self.runs.capacity() * 16
    }

    /// The group index of every row of `batch` into `rows`, new groups added.
    fn intern(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        let mut keys: Vec<Vec<usize>> = Vec::with_capacity(self.columns.len());
        for (c, (index, _)) in self.columns.iter().enumerate() {
            let array = batch.column(*index);
            let dictionary = array.as_any_dictionary_opt().ok_or_else(|| {
                DataFusionError::Internal(format!("StretchAggregateExec: column {index} is not a dictionary"))
            })?;
            let values: &StringArray = dictionary.values().as_string_opt::<i32>().ok_or_else(|| {
                DataFusionError::Internal(format!("StretchAggregateExec: column {index} is not of strings"))
            })?;
            let names = &mut self.names[c];
            let numbered = &mut self.numbered[c];
            numbered.clear();
            for i in 0..values.len() {
                if values.is_null(i) {
                    numbered.push(NULL_NAME);
                    continue;
                }
                let name = values.value(i);
                let known = names.len();
                if known >= NULL_NAME as usize {
                    return Err(DataFusionError::ResourcesExhausted("too many names to group by".into()));
                }
                let number = names.intern(name);
                if number as usize == known {
                    self.name_bytes += 2 * name.len();
                }
                numbered.push(number);
            }
            // An empty dictionary (a batch of no rows, or of null keys only) has no entry to point at.
            let mut row_keys =
                if values.is_empty() { vec![usize::MAX; array.len()] } else { dictionary.normalized_keys() };
            if let Some(nulls) = array.logical_nulls() {
                // A null row's key may point anywhere: mark it past the dictionary (a null name).
                for (k, valid) in row_keys.iter_mut().zip(nulls.iter()) {
                    if !valid {
                        *k = usize::MAX;
                    }
                }
            }
            keys.push(row_keys);
        }
        self.rows.clear();
        self.rows.reserve(rows);
        self.runs.clear();
        let number = |c: usize, k: usize, numbered: &[Vec<u32>]| numbered[c].get(k).copied().unwrap_or(NULL_NAME);
        // Rows come in stretches of one dictionary entry (the archive is sorted by sensor, then device): look each
        // stretch's group up once, and keep the stretches for the runs ([`PartialState::aggregate_in_runs`]).
        let entries = self.numbered[0].len();
        let mut group_of_entry = vec![usize::MAX; if keys.len() == 1 { entries + 1 } else { 0 }];
        let mut at = 0;
        while at < rows {
            let group = if keys.len() == 1 {
                // One column: a row's group follows from its dictionary entry, so look each entry up once — when a
                // row first uses it (an entry no row uses makes no group).
                let k = keys[0][at];
                at += 1 + keys[0][at + 1..].iter().take_while(|&&next| next == k).count();
                let entry = k.min(entries);
                if group_of_entry[entry] == usize::MAX {
                    group_of_entry[entry] = self.group_of(number(0, entry, &self.numbered), 0);
                }
                group_of_entry[entry]
            } else {
                let (k0, k1) = (keys[0][at], keys[1][at]);
                let same = keys[0][at + 1..].iter().zip(&keys[1][at + 1..]).take_while(|&(&a, &b)| a == k0 && b == k1);
                at += 1 + same.count();
                let (first, second) = (number(0, k0, &self.numbered), number(1, k1, &self.numbered));
                self.group_of(first, second)
            };
            let run = at - self.rows.len();
            self.rows.extend(std::iter::repeat_n(group, run));
            match self.runs.last_mut() {
                Some((last, length)) if *last == group => *length += run,
                _ => self.runs.push((group, run)),
            }
        }
        Ok(())
    }

    /// The group index of a pair of numbers, a new group if it is new.
    fn group_of(&mut self, first: u32, second: u32) -> usize {
        let next = self.keys.len();
        let group = *self.index.entry(u64::from(first) << 32 | u64::from(second)).or_insert(next);
        if group == next {
            self.keys.push((first, second));
        }
        group
    }

    /// The group columns of every group (in the input's dictionary types); the groups start again.
    fn emit(&mut self) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(self.columns.len());
        for (c, (_, data_type)) in self.columns.iter().enumerate() {
            let names = &self.names[c];
            let strings: StringArray = self
                .keys
                .iter()
                .map(|k| {
                    let n = if c == 0 { k.0 } else { k.1 };
                    (n != NULL_NAME).then(|| names.get(n))
                })
                .collect();
            out.push(arrow::compute::cast(&strings, data_type)?);
        }
        // The numbers meant something only to these groups: the names start again too, so that memory is bounded
        // by what one emission holds, however many distinct names the input has.
        // (New maps, not cleared ones: a cleared map keeps its capacity.)
        self.index = HashMap::default();
        self.keys = Vec::new();
        self.names = (0..self.columns.len()).map(|_| Default::default()).collect();
        self.name_bytes = 0;
        Ok(out)
    }
}

mod number_groups;
#[cfg(test)]
mod tests;
