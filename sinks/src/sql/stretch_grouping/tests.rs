//! The rule against DataFusion itself: the same queries over the same random batches (dictionaries that differ
//! from batch to batch, names chosen to collide, nulls in keys and in dictionaries, empty partitions) answer the
//! same with and without it — and the plans show it was used, so the comparison is not vacuous.

use std::sync::Arc;

use arrow::array::{DictionaryArray, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{MemoryPool, MemoryReservation, UnboundedMemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;

use super::StretchGrouping;

const NAMES: [&str; 8] = ["speed", "Speed", "speed ", "", "ü", "truck-7", "truck-70", "a\u{0}b"];

fn schema() -> SchemaRef {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new("device", dict.clone(), true),
        Field::new("sensor", dict, true),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// One row: device and sensor as (dictionary entry, or None for a null key), and a value.
type Row = (Option<u8>, Option<u8>, Option<i32>);

/// A batch whose dictionaries are `dict_device`/`dict_sensor` (entries are indices into NAMES, or None for a null
/// entry); a row's key picks an entry of its batch's dictionary.
fn batch(dicts: &Dictionaries, rows: &[Row]) -> RecordBatch {
    let column = |dict: &Vec<Option<u8>>, pick: &dyn Fn(&Row) -> Option<u8>| {
        let values: StringArray = dict.iter().map(|e| e.map(|i| NAMES[i as usize % NAMES.len()])).collect();
        // An empty dictionary: every key is null.
        let keys: Int32Array = rows
            .iter()
            .map(|r| pick(r).filter(|_| !dict.is_empty()).map(|k| i32::from(k) % dict.len() as i32))
            .collect();
        Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).expect("keys within the dictionary"))
    };
    let values: Float64Array = rows.iter().map(|r| r.2.map(f64::from)).collect();
    RecordBatch::try_new(schema(), vec![column(&dicts.0, &|r| r.0), column(&dicts.1, &|r| r.1), Arc::new(values)])
        .expect("a batch of the schema")
}

/// What [`CappedPool`] lets a `StretchAggregateExec` hold.
const CAPPED_BYTES: usize = 64 << 10;

/// A pool that refuses `StretchAggregateExec`s more than `cap` bytes each and everything else nothing: so the
/// partial stage meets a full pool while DataFusion's own stages do not.
#[derive(Debug)]
struct CappedPool {
    cap: usize,
    inner: UnboundedMemoryPool,
}

impl std::fmt::Display for CappedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "capped({} bytes per StretchAggregateExec)", self.cap)
    }
}

impl MemoryPool for CappedPool {
    fn name(&self) -> &str {
        "capped"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> datafusion::error::Result<()> {
        if reservation.consumer().name().starts_with("StretchAggregateExec")
            && reservation.size() + additional > self.cap
        {
            return Err(datafusion::error::DataFusionError::ResourcesExhausted("capped for the test".into()));
        }
        self.inner.try_grow(reservation, additional)
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }
}

/// A session over `partitions`; `rule`: the rule's shortest run (`None`: without the rule).
fn context(partitions: Vec<Vec<RecordBatch>>, rule: Option<usize>, capped: Option<usize>) -> SessionContext {
    context_of(partitions, rule, capped, 3)
}

/// [`context`] with `target_partitions` (1: the aggregation has one stage, whose groups are the answer's).
fn context_of(
    partitions: Vec<Vec<RecordBatch>>,
    rule: Option<usize>,
    capped: Option<usize>,
    target_partitions: usize,
) -> SessionContext {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(cap) = capped {
        runtime = runtime.with_memory_pool(Arc::new(CappedPool { cap, inner: UnboundedMemoryPool::default() }));
    }
    let config = SessionConfig::new().with_target_partitions(target_partitions).with_batch_size(64);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime.build_arc().expect("runtime"))
        .with_default_features();
    if let Some(min_run_rows) = rule {
        state = state.with_physical_optimizer_rule(Arc::new(StretchGrouping { min_run_rows }));
    }
    let ctx = SessionContext::new_with_state(state.build());
    ctx.register_table("t", Arc::new(MemTable::try_new(schema(), partitions).expect("table"))).expect("register");
    ctx
}

const QUERIES: [&str; 12] = [
    "SELECT sensor, count(*), count(value), sum(value), min(value), max(value), avg(value) FROM t GROUP BY sensor",
    "SELECT device, sensor, count(*), max(value), min(value) FROM t GROUP BY device, sensor",
    "SELECT sensor, device, sum(value) FILTER (WHERE value > 0), count(*) FILTER (WHERE value IS NULL) FROM t \
     GROUP BY sensor, device",
    "SELECT device, count(*) AS n FROM t GROUP BY device HAVING count(*) > 1 ORDER BY n DESC, device LIMIT 3",
    "SELECT sensor, sum(value * value), count(DISTINCT value) FROM t WHERE value IS NOT NULL GROUP BY sensor",
    // One number: a bucket, keys that are NaN, infinite, -0.0 and 0.0 (two groups), integers, timestamps, nulls.
    "SELECT floor(value / 10) AS b, count(*), sum(value), min(value), max(value), avg(value) FROM t GROUP BY b",
    "SELECT value / 0.0 AS q, count(*), count(value) FROM t GROUP BY q",
    "SELECT value * 0.0 AS z, count(*), min(value) FROM t GROUP BY z",
    "SELECT (0.0 - value) * 0.0 AS z, count(*) FROM t GROUP BY z",
    "SELECT CAST(value AS BIGINT) % 7 AS m, count(*), max(value) FROM t GROUP BY m",
    "SELECT to_timestamp_seconds(CAST(value AS BIGINT)) AS ts, count(*) FROM t GROUP BY ts",
    "SELECT value, count(*) FROM t GROUP BY value",
];

async fn answer(ctx: &SessionContext, query: &str) -> (Vec<String>, String) {
    let frame = ctx.sql(query).await.expect("plans");
    let plan = frame.clone().create_physical_plan().await.expect("physical plan");
    let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
    let batches = frame.collect().await.expect("runs");
    let text = arrow::util::pretty::pretty_format_batches(&batches).expect("formats").to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    (lines, shown)
}

/// A batch's two dictionaries (entries index NAMES; `None` is a null entry).
type Dictionaries = (Vec<Option<u8>>, Vec<Option<u8>>);

/// Partitions of batches, each its dictionaries and rows.
fn rows_strategy() -> impl Strategy<Value = Vec<Vec<(Dictionaries, Vec<Row>)>>> {
    let dict = proptest::collection::vec(proptest::option::weighted(0.9, 0u8..8), 0..6);
    let row = (
        proptest::option::weighted(0.9, 0u8..8),
        proptest::option::weighted(0.9, 0u8..8),
        proptest::option::weighted(0.9, -1000i32..1000),
    );
    // Rows sorted by their names (as the archive's are) or by value make runs of one group.
    let rows = (proptest::collection::vec(row, 0..150), 0..3).prop_map(|(mut rows, sorted)| {
        match sorted {
            0 => rows.sort_by_key(|r| (r.0, r.1)),
            1 => rows.sort_by_key(|r| r.2),
            _ => {}
        }
        rows
    });
    let batch = ((dict.clone(), dict), rows);
    proptest::collection::vec(proptest::collection::vec(batch, 0..4), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn answers_equal_datafusions_own(
        partitions in rows_strategy(),
        min_run in prop_oneof![Just(1usize), Just(2), Just(5), Just(usize::MAX)],
        target_partitions in prop_oneof![Just(1usize), Just(3)],
    ) {
        let batches: Vec<Vec<RecordBatch>> =
            partitions.iter().map(|p| p.iter().map(|(dicts, rows)| batch(dicts, rows)).collect()).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let with = context_of(batches.clone(), Some(min_run), None, target_partitions);
            let without = context_of(batches, None, None, target_partitions);
            for query in QUERIES {
                let (ours, plan) = answer(&with, query).await;
                let (theirs, their_plan) = answer(&without, query).await;
                prop_assert!(plan.contains("StretchAggregateExec"), "{query}: not used:\n{plan}");
                prop_assert!(!their_plan.contains("StretchAggregateExec"));
                prop_assert_eq!(ours, theirs, "{}", query);
            }
            Ok(())
        })?;
    }
}

#[test]
fn other_groupings_are_left_as_planned() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        let ctx =
            context(vec![vec![batch(&(vec![Some(0)], vec![Some(1)]), &[(Some(0), Some(0), Some(1))])]], Some(1), None);
        for query in [
            "SELECT device, sensor, value, count(*) FROM t GROUP BY device, sensor, value",
            "SELECT device, value, count(*) FROM t GROUP BY device, value",
            "SELECT CAST(value AS INT), count(*) FROM t GROUP BY CAST(value AS INT)",
            "SELECT sensor, array_agg(value ORDER BY value) FROM t GROUP BY sensor",
            "SELECT upper(sensor), count(*) FROM t GROUP BY upper(sensor)",
        ] {
            let (_, plan) = answer(&ctx, query).await;
            assert!(!plan.contains("StretchAggregateExec"), "{query}:\n{plan}");
        }
    });
}

/// Many groups under a memory pool that refuses the partial stage: it emits early (counted in its `early_emits` metric)
/// and the answer is still every group once.
#[test]
fn a_small_memory_pool_emits_early_and_the_answer_stays_whole() {
    let groups = 3000usize;
    let rows = groups * 4;
    let devices: StringArray = (0..groups).map(|i| Some(format!("device-{i:05}"))).collect();
    let keys: Int32Array = (0..rows as i32).map(|i| Some(i % groups as i32)).collect();
    let device = Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(devices)).expect("dictionary"));
    let sensor_keys: Int32Array = (0..rows).map(|_| Some(0)).collect();
    let sensor = Arc::new(
        DictionaryArray::<Int32Type>::try_new(sensor_keys, Arc::new(StringArray::from(vec!["speed"])))
            .expect("dictionary"),
    );
    let value: Float64Array = (0..rows).map(|i| Some(i as f64)).collect();
    let batch = RecordBatch::try_new(schema(), vec![device, sensor, Arc::new(value)]).expect("batch");
    let partitions = vec![vec![batch.clone()], vec![batch]];
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        // Grouped by names, and by one number (each value modulo the groups: the same groups).
        for inner in [
            "SELECT device, sensor, count(*) AS n FROM t GROUP BY device, sensor",
            "SELECT value % 3000 AS k, count(*) AS n FROM t GROUP BY k",
        ] {
            let query = format!("SELECT count(*), sum(n), min(n), max(n) FROM ({inner})");
            let ctx = context(partitions.clone(), Some(usize::MAX), Some(CAPPED_BYTES));
            let plan = ctx.sql(&query).await.expect("plans").create_physical_plan().await.expect("physical plan");
            let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.expect("runs");
            let text = arrow::util::pretty::pretty_format_batches(&batches).expect("formats").to_string();
            let expected = format!("|{groups}|{}|8|8|", rows * 2);
            assert!(text.replace(' ', "").contains(&expected), "{inner}: {text}");
            let early = metric(plan.as_ref(), "early_emits");
            assert!(early > 1, "{inner}: the partial stage emitted early {early} times");
        }
    });
}

/// Long runs of one group (sorted rows, as in the archive) are aggregated whole — counted in `rows_in_runs` — and
/// the answers, rows between runs included, are DataFusion's own.
#[test]
fn runs_of_one_group_are_aggregated_whole_and_answer_the_same() {
    let mut rows: Vec<Row> = (0..600).map(|i| (Some((i / 200) as u8), Some(1), Some(i - 300))).collect();
    // Between the runs, a few rows of other groups, and nulls.
    rows.insert(200, (Some(1), Some(0), None));
    rows.insert(400, (None, Some(1), Some(7)));
    let dicts = (vec![Some(0), Some(1), Some(2)], vec![Some(0), Some(1)]);
    let partitions = vec![vec![batch(&dicts, &rows)]];
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        // The session's batches are of 64 rows: runs of at least 20 rows within them.
        let (with, without) = (context(partitions.clone(), Some(20), None), context(partitions, None, None));
        for query in QUERIES {
            assert_eq!(answer(&with, query).await.0, answer(&without, query).await.0, "{query}");
        }
        let plan = with.sql(QUERIES[1]).await.expect("plans").create_physical_plan().await.expect("physical plan");
        datafusion::physical_plan::collect(plan.clone(), with.task_ctx()).await.expect("runs");
        let in_runs = metric(plan.as_ref(), "rows_in_runs");
        assert!((400..=600).contains(&in_runs), "most of the three runs of 200 rows: {in_runs}");
    });
}

/// The sum of metric `name` over every [`super::StretchAggregateExec`] in a plan (once run).
fn metric(plan: &dyn datafusion::physical_plan::ExecutionPlan, name: &str) -> usize {
    struct Sum<'a>(&'a str, usize);
    impl datafusion::physical_plan::ExecutionPlanVisitor for Sum<'_> {
        type Error = datafusion::error::DataFusionError;

        fn pre_visit(&mut self, plan: &dyn datafusion::physical_plan::ExecutionPlan) -> Result<bool, Self::Error> {
            if plan.name() == "StretchAggregateExec" {
                self.1 += plan.metrics().and_then(|m| m.sum_by_name(self.0)).map_or(0, |v| v.as_usize());
            }
            Ok(true)
        }
    }
    let mut sum = Sum(name, 0);
    datafusion::physical_plan::accept(plan, &mut sum).expect("walks");
    sum.1
}
