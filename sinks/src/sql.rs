//! SQL over the archive with DataFusion: the `readings` table, read-only, with limits.
//!
//! `readings (device, sensor, value, timestamp, date)` is a view over two tables: `archived`, a DataFusion
//! `ListingTable` over the hive-partitioned Parquet parts (so `date` filters prune partitions and other predicates
//! reach the Parquet statistics), and `unflushed`, the first-written readings the archiver has read but not yet
//! flushed. A query holds the archive's visibility lock while it is planned (its snapshot of `unflushed` and its
//! listing of the parts), so every reading appears exactly once, and the `replacing` lock to its end, so no seal or
//! compaction deletes a part it reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_operators::completeness::ExpectedIntervals;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;

mod bounded;
mod completeness;
mod fast_floor;
mod file_caches;
mod float_extremes;
mod pg_catalog;
mod proven_filters;
mod rejected;
mod scan_in_pieces;
mod scan_time;
mod stream;
mod stretch_grouping;
mod threads;
mod window_functions;
pub use pg_catalog::{CATALOG, SERVER_VERSION, setting};
pub use rejected::rejected_schema;
use stream::Producer;
pub use stream::{Described, STREAM_BATCHES, SqlStream};
pub use threads::{Busy, SqlThreads, StartError};

use crate::archive::{ArchiveLocation, ArchiveProgress};
use crate::part::{ArchivedReading, archive_schema};

/// Limits of one query, and of how many run at once.
#[derive(Debug, Clone)]
pub struct SqlLimits {
    pub timeout: Duration,
    pub max_rows: usize,
    /// Memory the query may use for sorts, joins and aggregations; beyond it, it spills or fails cleanly.
    pub memory_bytes: usize,
    /// The longest query text.
    pub max_query_bytes: usize,
    /// Queries that run at once, each on a thread of its own ([`SqlThreads`]).
    pub concurrency: usize,
    /// Workers that run the queries' partitions, shared by the queries (0: one per core); also each query's
    /// `target_partitions`.
    pub parallelism: usize,
    /// Queries that may wait for a thread; more are refused at once.
    pub queue: usize,
    /// How much lower the SQL threads' CPU priority is than the rest of the process (a nice increment, 0–19).
    pub nice: u8,
    /// Bytes of the files' footers and statistics kept between queries ([`file_caches`]).
    pub cache_bytes: usize,
}

impl SqlLimits {
    /// The memory SQL may hold at once, its share of the memory budget: every running query's pool
    /// (`memory_bytes` × `concurrency`) and the files' caches (`cache_bytes`).
    pub fn memory_share(&self) -> u64 {
        (self.memory_bytes as u64).saturating_mul(self.concurrency as u64).saturating_add(self.cache_bytes as u64)
    }
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
            memory_bytes: 512 << 20,
            max_query_bytes: 64 << 10,
            concurrency: 2,
            parallelism: 0,
            nice: 10,
            queue: 16,
            cache_bytes: 64 << 20,
        }
    }
}

/// The deepest nesting of expressions and subqueries a query may have: `a OR b OR c …` is one level per `OR`.
/// Deeper queries are refused before planning (planning recurses once per level; a SQL thread's stack holds far
/// more than this, and the query text limit bounds what the check itself walks).
pub const MAX_NESTING: usize = 1_024;

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    /// The text is not SQL Weir can parse.
    #[error("{0}")]
    Syntax(String),
    #[error("the query took longer than the limit of {0:?} (--sql-timeout)")]
    Timeout(Duration),
    #[error("the result has more than {0} rows (--sql-max-rows): add a LIMIT or aggregate")]
    TooManyRows(usize),
    #[error("the query needs more memory than --sql-memory allows: {0}")]
    Memory(String),
    #[error("{0}")]
    Busy(#[from] Busy),
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        match e.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => SqlError::Memory(m.clone()),
            datafusion::error::DataFusionError::SQL(..) => SqlError::Syntax(e.to_string()),
            _ => SqlError::Invalid(e.to_string()),
        }
    }
}

/// A query's result.
#[derive(Debug)]
pub struct SqlResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl SqlResult {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Answers SQL over one archive.
#[derive(Clone)]
pub struct SqlArchive {
    location: ArchiveLocation,
    /// The running archiver's progress (unflushed readings), when there is one.
    progress: Option<Arc<ArchiveProgress>>,
    limits: SqlLimits,
    threads: SqlThreads,
    /// The session every query starts from (see [`SqlArchive::context`]), and the object stores it reads.
    session: Arc<tokio::sync::Mutex<Option<CachedSession>>>,
    /// Set when this process has written rollups: the next query lists them again.
    rollups_changed: Arc<AtomicBool>,
    stores: Arc<DefaultObjectStoreRegistry>,
    /// The record of rejected lines, the `rejected` table (empty without one).
    rejected: Option<Arc<weir_pipeline::rejected::RejectedStore>>,
    /// Each sensor's expected interval: the `windows_*` views' `expected` and `completeness`.
    intervals: ExpectedIntervals,
    /// The files' footers and statistics, kept between queries.
    caches: file_caches::FileCaches,
    /// The seal and compaction journals as last read, with the listing they were read after (see
    /// [`SqlArchive::journals`]).
    journals_read: Arc<std::sync::Mutex<Option<ListedJournals>>>,
}

/// The seal and the compaction journals.
type Journals = (Vec<crate::seal::SealRecord>, Vec<crate::compact::CompactionRecord>);

/// The journals' listing (`seals/` and `compactions/`) and the journals read after it.
type ListedJournals = (Vec<object_store::ObjectMeta>, Journals);

/// A session with every table and view registered, built once and rebuilt only when the days with rollups change
/// (the `windows_*` views name them). Planning the views took 10 ms per query when each query built its own.
struct CachedSession {
    rolled: [Vec<String>; 4],
    state: SessionState,
    /// When `rolled` was listed.
    listed_at: Instant,
}

/// How long a query trusts the list of days with rollups before it lists `rollups/` again. Listing it took 16 ms per
/// query with a year of rollups (1 464 files, local disk), and grows with history; on S3 it is a request per 1 000
/// files. A stale list is safe: the `windows_*` views read a listed day from its rollups only and any other day from
/// its readings only, so a day sealed since the list was taken is answered from its readings, which give the same
/// windows as its rollups (`window_tables_answer_from_readings_then_from_rollups_alike`); and this process's own
/// sealer says at once when it wrote rollups ([`SqlArchive::rollups_changed`]).
pub const ROLLED_DAYS_TRUSTED_FOR: Duration = Duration::from_secs(30);

/// Refuses anything but one read-only query of at most `max_bytes` bytes and [`MAX_NESTING`] levels, naming
/// what is wrong. Parses the text: call it on a SQL thread ([`SqlArchive::check`]), whose stack holds any nesting
/// the size limit allows.
pub fn check_query(sql: &str, max_bytes: usize) -> Result<(), SqlError> {
    if sql.len() > max_bytes {
        return Err(SqlError::Refused(format!(
            "the query is {} bytes, more than the {max_bytes} allowed (--sql-max-query-bytes)",
            sql.len()
        )));
    }
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let statements = DFParser::parse_sql_with_dialect(sql, &dialect).map_err(|e| SqlError::Syntax(e.to_string()))?;
    if statements.len() != 1 {
        return Err(SqlError::Refused(format!("send exactly one statement ({} given)", statements.len())));
    }
    if let DfStatement::Statement(statement) = &statements[0] {
        let depth = nesting(statement);
        if depth > MAX_NESTING {
            return Err(SqlError::Refused(format!(
                "the query nests {depth} levels of expressions deep, more than the {MAX_NESTING} allowed: write long \
                 chains of OR as `IN (…)`, or split the query"
            )));
        }
    }
    let class = match &statements[0] {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) => return Ok(()),
            Statement::Explain { statement, .. } if matches!(statement.as_ref(), Statement::Query(_)) => return Ok(()),
            Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) | Statement::Merge { .. } => {
                "data-changing (DML)"
            }
            Statement::Copy { .. } => "COPY",
            Statement::Set(_) => "SET",
            other => {
                let text = other.to_string().to_ascii_uppercase();
                if ["CREATE", "DROP", "ALTER", "TRUNCATE"].iter().any(|k| text.starts_with(k)) {
                    "schema-changing (DDL)"
                } else {
                    "this kind of"
                }
            }
        },
        DfStatement::Explain(_) => return Ok(()),
        DfStatement::CopyTo(_) => "COPY",
        DfStatement::CreateExternalTable(_) => "schema-changing (DDL)",
        _ => "this kind of",
    };
    Err(SqlError::Refused(format!(
        "Weir's SQL is read-only: {class} statements are refused; send a SELECT over `readings`"
    )))
}

/// How deep expressions and queries nest in `statement` (the deepest path through the syntax tree).
fn nesting(statement: &Statement) -> usize {
    use datafusion::sql::sqlparser::ast::{Expr, Query, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Depth {
        now: usize,
        deepest: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.now += 1;
            self.deepest = self.deepest.max(self.now);
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.now += 1;
            self.deepest = self.deepest.max(self.now);
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    let mut depth = Depth { now: 0, deepest: 0 };
    let _ = statement.visit(&mut depth);
    depth.deepest
}

impl SqlArchive {
    /// Answers SQL over `location` on a pool of `limits.concurrency` SQL threads of its own.
    pub fn new(
        location: ArchiveLocation,
        progress: Option<Arc<ArchiveProgress>>,
        limits: SqlLimits,
    ) -> Result<Self, StartError> {
        let threads = SqlThreads::start(limits.concurrency, limits.parallelism, limits.queue, limits.nice)?;
        // An archive URL always has a scheme (ArchiveLocation::open made it one); an empty registry only fails reads.
        let stores = store_registry(&location).unwrap_or_default();
        let caches = file_caches::FileCaches::new(limits.cache_bytes);
        Ok(SqlArchive {
            location,
            progress,
            limits,
            threads,
            session: Default::default(),
            journals_read: Default::default(),
            rollups_changed: Default::default(),
            stores,
            rejected: None,
            intervals: ExpectedIntervals::default(),
            caches,
        })
    }

    /// Answers `rejected` from `store` (this process's record of rejected lines).
    pub fn with_rejected(mut self, store: Arc<weir_pipeline::rejected::RejectedStore>) -> Self {
        self.rejected = Some(store);
        self
    }

    /// Judges the `windows_*` views' completeness by `intervals` (`--expected-interval`).
    pub fn with_expected_intervals(mut self, intervals: ExpectedIntervals) -> Self {
        self.intervals = intervals;
        self
    }

    /// Says that rollups were written (a seal): the next query lists the days with rollups again instead of trusting
    /// its list for up to [`ROLLED_DAYS_TRUSTED_FOR`].
    pub fn rollups_changed(&self) {
        self.rollups_changed.store(true, Ordering::Release);
    }

    /// [`check_query`] on a SQL thread.
    pub async fn check(&self, sql: &str) -> Result<(), SqlError> {
        let (sql, max) = (sql.to_owned(), self.limits.max_query_bytes);
        self.on_sql_thread(move || async move { check_query(&sql, max) }).await
    }

    /// Runs `work` on a SQL thread; the answer comes within the query timeout, whether or not the work has ended.
    async fn on_sql_thread<T, F, W>(&self, work: W) -> Result<T, SqlError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, SqlError>> + 'static,
        W: FnOnce() -> F + Send + 'static,
    {
        let answer = self.threads.run(work)?;
        match tokio::time::timeout(self.limits.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SqlError::Invalid("the query failed on its thread (see the log)".into())),
            Err(_) => Err(SqlError::Timeout(self.limits.timeout)),
        }
    }

    /// The windows of one series and width whose start is in `[from, to)` from the rollups, as the live statistics
    /// held them (for windows that have left memory). On a SQL thread, within the query timeout and at most
    /// `--sql-max-rows` windows (beyond: [`SqlError::TooManyRows`]); the days' files are pruned by date and their
    /// rows by the Parquet statistics.
    pub async fn rollup_windows(
        &self,
        width: weir_operators::Width,
        device: &str,
        sensor: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<crate::rollup::RollupRow>, SqlError> {
        let (this, device, sensor) = (self.clone(), device.to_owned(), sensor.to_owned());
        self.on_sql_thread(move || async move {
            // A reseal publishes a day's rollups under the visibility lock; without a local archiver (a cluster) a
            // read that met a replaced file is tried again.
            let mut attempt = 0;
            loop {
                let _visible = match &this.progress {
                    Some(p) => Some(p.visibility.read().await),
                    None => None,
                };
                match this.rollup_windows_once(width, &device, &sensor, from, to).await {
                    Err(e) if attempt < 3 && this.progress.is_none() => {
                        tracing::debug!(error = %e, "reading rollups failed; trying again");
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    result => return result,
                }
            }
        })
        .await
    }

    async fn rollup_windows_once(
        &self,
        width: weir_operators::Width,
        device: &str,
        sensor: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<crate::rollup::RollupRow>, SqlError> {
        use datafusion::prelude::{col, lit};
        if from >= to {
            return Ok(Vec::new());
        }
        let runtime = RuntimeEnvBuilder::new().with_object_store_registry(self.stores.clone()).build_arc()?;
        let ctx = SessionContext::new_with_config_rt(SessionConfig::default(), runtime);
        ctx.register_table("rollup", Arc::new(rollup_table(&self.location, width)?))?;
        let day =
            |micros: i64| chrono::DateTime::from_timestamp_micros(micros).map(|t| t.format("%Y-%m-%d").to_string());
        let time =
            |micros: i64| lit(datafusion::scalar::ScalarValue::TimestampMicrosecond(Some(micros), Some("UTC".into())));
        let mut df = ctx
            .table("rollup")
            .await?
            .filter(col("device").eq(lit(device)))?
            .filter(col("sensor").eq(lit(sensor)))?
            .filter(col("window_start").gt_eq(time(from)))?
            .filter(col("window_start").lt(time(to)))?;
        if let Some(first) = day(from) {
            df = df.filter(col("date").gt_eq(lit(first)))?;
        }
        if let Some(last) = day(to.saturating_sub(1)) {
            df = df.filter(col("date").lt_eq(lit(last)))?;
        }
        let columns: Vec<String> = crate::rollup::rollup_schema().fields().iter().map(|f| f.name().clone()).collect();
        // At most --sql-max-rows windows, read one past it to tell: a range of years of minutes stays bounded.
        let max_rows = self.limits.max_rows;
        let df =
            df.select_columns(&columns.iter().map(String::as_str).collect::<Vec<_>>())?.limit(0, Some(max_rows + 1))?;
        let run = async {
            let mut rows = Vec::new();
            for batch in df.collect().await? {
                rows.extend(crate::rollup::rows_of_batch(&batch).map_err(|e| SqlError::Invalid(e.to_string()))?);
            }
            if rows.len() > max_rows {
                return Err(SqlError::TooManyRows(max_rows));
            }
            rows.sort_by_key(|r| r.start);
            Ok::<_, SqlError>(rows)
        };
        tokio::time::timeout(self.limits.timeout, run).await.map_err(|_| SqlError::Timeout(self.limits.timeout))?
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// Runs `sql` (one read-only query) and collects its result within the limits: [`SqlArchive::stream`],
    /// collected.
    pub async fn query(&self, sql: &str) -> Result<SqlResult, SqlError> {
        self.stream(sql, Vec::new()).await?.collect().await
    }

    /// What `sql` would answer — its parameters' types and its result's schema — without running it (the
    /// PostgreSQL protocol's Describe, Flight SQL's prepared statements). On a SQL thread, after the same checks.
    pub async fn describe(&self, sql: &str) -> Result<Described, SqlError> {
        let (this, sql) = (self.clone(), sql.to_owned());
        self.on_sql_thread(move || async move {
            check_query(&sql, this.limits.max_query_bytes)?;
            let ctx = this.context().await?;
            let plan = ctx.state().create_logical_plan(&sql).await?;
            Self::options().verify_plan(&plan)?;
            let types = plan.get_parameter_types()?;
            let count = types.keys().filter_map(|k| k.strip_prefix('$')?.parse::<usize>().ok()).max().unwrap_or(0);
            let params = (1..=count).map(|i| types.get(&format!("${i}")).cloned().flatten()).collect();
            Ok(Described { params, schema: Arc::new(plan.schema().as_arrow().clone()) })
        })
        .await
    }

    /// Runs `sql` (one read-only query) with `params` for its `$1`, `$2`, …, and answers batch by batch as they are
    /// made ([`SqlStream`]; a slow reader holds the query back, it does not buffer it).
    ///
    /// With a running archiver in this process, its locks keep a flush from changing what the query sees while it
    /// is planned, and seals and compactions from deleting its parts until the stream ends (or the query's
    /// deadline): a slow reader never holds back a flush (see `ArchiveProgress::replacing`). Without one (a cluster, whose days are
    /// sealed and compacted by other processes, or `weir sql --archive`), the query is optimistic: it waits while a
    /// seal or compaction is under way, and runs again when their journals changed while it ran (both swap parts
    /// only between two journal writes) — so there the result is collected (at most `--sql-max-rows` rows) before
    /// the first batch is handed on.
    ///
    /// Runs on a SQL thread ([`SqlThreads`]); the schema comes within the query timeout, and the stream ends by it.
    pub async fn stream(&self, sql: &str, params: Vec<ScalarValue>) -> Result<SqlStream, SqlError> {
        let timeout = self.limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (schema, schema_answer) = tokio::sync::oneshot::channel();
        let (batches, receiver) = tokio::sync::mpsc::channel(STREAM_BATCHES);
        let end: Arc<stream::End> = Arc::default();
        let producer = Producer {
            schema: Some(schema),
            batches,
            max_rows: self.limits.max_rows,
            rows: 0,
            end: end.clone(),
            announced: None,
        };
        let (this, sql) = (self.clone(), sql.to_owned());
        let _ended =
            self.threads.run(move || async move { this.stream_here(&sql, params, producer, deadline).await })?;
        match tokio::time::timeout_at(deadline, schema_answer).await {
            Ok(Ok(Ok(schema))) => Ok(SqlStream { schema, batches: receiver, deadline, timeout, end, done: false }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(SqlError::Invalid("the query failed on its thread (see the log)".into())),
            Err(_) => Err(SqlError::Timeout(timeout)),
        }
    }

    /// The query's side of [`SqlArchive::stream`]: ends at its deadline, or as soon as nobody reads the answer.
    async fn stream_here(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
        mut out: Producer,
        deadline: tokio::time::Instant,
    ) {
        let reader = out.batches.clone();
        let result = {
            let run = self.produce(sql, params, &mut out);
            tokio::select! {
                result = tokio::time::timeout_at(deadline, run) => {
                    result.unwrap_or(Err(SqlError::Timeout(self.limits.timeout)))
                }
                () = reader.closed() => Ok(()),
            }
        };
        drop(reader);
        match result {
            Ok(()) => out.finish(),
            Err(e) => out.fail(e),
        }
    }

    async fn produce(&self, sql: &str, params: Vec<ScalarValue>, out: &mut Producer) -> Result<(), SqlError> {
        use futures_util::StreamExt;
        check_query(sql, self.limits.max_query_bytes)?;
        let Some(progress) = &self.progress else {
            let result = self.query_optimistic(sql, params).await?;
            if out.start(result.schema) {
                for batch in result.batches {
                    if !out.send(batch).await? {
                        break;
                    }
                }
            }
            return Ok(());
        };
        // Seals and compactions wait until the query ends (they delete parts it may read); a flush only while it is
        // planned: `unflushed` takes its snapshot and the parts are listed then, and a flush only adds parts.
        let _replacing = progress.replacing.read().await;
        let (schema, mut batches) = {
            let _visible = progress.visibility.read().await;
            let df = self.dataframe(sql, params).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            (schema, self.execute(df).await?)
        };
        if !out.start(schema) {
            return Ok(());
        }
        while let Some(batch) = batches.next().await {
            if !out.send(batch?).await? {
                break;
            }
        }
        Ok(())
    }

    /// Without an archiver in this process: the whole result, run again if a seal or compaction swapped parts
    /// meanwhile.
    async fn query_optimistic(&self, sql: &str, params: Vec<ScalarValue>) -> Result<SqlResult, SqlError> {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        loop {
            let before = self.journals().await?;
            if before.0.iter().any(|r| !r.replacing.is_empty()) || before.1.iter().any(|r| !r.replacing.is_empty()) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(SqlError::Timeout(self.limits.timeout));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let result = self.collect(sql, params.clone()).await;
            if self.journals().await? == before {
                return result;
            }
            tracing::debug!("a seal or a compaction ran during the query; running it again");
        }
    }

    /// The seal and compaction journals: parts are swapped only between two writes of one of them.
    ///
    /// Read again only when their listing changed: a journal is replaced whole by a new object (a new entity tag,
    /// size or time), so the same listing means the same journals. A query checks them twice, and reading each
    /// journal of a year of sealed days every time would make every query's cost grow with history.
    async fn journals(&self) -> Result<Journals, SqlError> {
        use futures_util::TryStreamExt;
        let invalid = |e: crate::archive::ArchiveError| SqlError::Invalid(e.to_string());
        let store_error = |e: object_store::Error| SqlError::Invalid(e.to_string());
        let list = |prefix| self.location.store.list(Some(&prefix)).try_collect::<Vec<_>>();
        let seals = list(crate::seal::seals_prefix(&self.location)).await.map_err(store_error)?;
        let compactions = list(crate::compact::compactions_prefix(&self.location)).await.map_err(store_error)?;
        let mut listing: Vec<object_store::ObjectMeta> = seals.iter().chain(&compactions).cloned().collect();
        listing.sort_by(|a, b| a.location.cmp(&b.location));
        let tagged = listing.iter().all(|meta| meta.e_tag.is_some());
        if let Some((listed, journals)) = &*self.journals_read.lock().unwrap_or_else(|e| e.into_inner())
            && tagged
            && *listed == listing
        {
            return Ok(journals.clone());
        }
        // Read from the listing just made: listed once per query, not again for the reading.
        let journals = (
            crate::seal::seal_records_listed(&self.location, seals).await.map_err(invalid)?,
            crate::compact::compaction_records_listed(&self.location, compactions).await.map_err(invalid)?,
        );
        *self.journals_read.lock().unwrap_or_else(|e| e.into_inner()) = Some((listing, journals.clone()));
        Ok(journals)
    }

    /// The whole result of `sql`, stopping one row past `--sql-max-rows`.
    async fn collect(&self, sql: &str, params: Vec<ScalarValue>) -> Result<SqlResult, SqlError> {
        use futures_util::StreamExt;
        let df = self.dataframe(sql, params).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut stream = self.execute(df).await?;
        let (mut batches, mut rows) = (Vec::new(), 0);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            if rows > self.limits.max_rows {
                return Err(SqlError::TooManyRows(self.limits.max_rows));
            }
            batches.push(batch);
        }
        Ok(SqlResult { schema, batches })
    }

    /// What a query may be: a read-only query, nothing else.
    fn options() -> SQLOptions {
        SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
    }

    /// `sql` planned in a fresh context, its parameters bound.
    async fn dataframe(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<datafusion::dataframe::DataFrame, SqlError> {
        let ctx = self.context().await?;
        let df = ctx.sql_with_options(sql, Self::options()).await?;
        Ok(if params.is_empty() { df } else { df.with_param_values(params)? })
    }

    /// `df` planned and run with a memory pool of its own (`--sql-memory`): the session plans with the runtime every
    /// query shares (object stores, footer and statistics caches), and the query's task context runs the plan with
    /// a runtime of its own. (Building a session per query for its runtime registered every function again: a
    /// tenth of a trivial query's time.)
    async fn execute(
        &self,
        df: datafusion::dataframe::DataFrame,
    ) -> Result<datafusion::physical_plan::SendableRecordBatchStream, SqlError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .with_object_store_registry(self.stores.clone())
            .with_cache_manager(self.caches.runtime_config())
            .build_arc()?;
        let task = Arc::new(df.task_ctx().with_runtime(runtime));
        let plan = df.create_physical_plan().await?;
        Ok(datafusion::physical_plan::execute_stream(plan, task)?)
    }

    /// The session queries are planned in: the cached one, rebuilt first if the days with rollups changed (they are
    /// listed at most every [`ROLLED_DAYS_TRUSTED_FOR`], or after [`SqlArchive::rollups_changed`]).
    async fn context(&self) -> Result<SessionContext, SqlError> {
        let state = {
            let mut cached = self.session.lock().await;
            let changed = self.rollups_changed.swap(false, Ordering::AcqRel);
            match &mut *cached {
                Some(c) if !changed && c.listed_at.elapsed() < ROLLED_DAYS_TRUSTED_FOR => c.state.clone(),
                stale => {
                    let listed_at = Instant::now();
                    let rolled = rolled_days(&self.location).await?;
                    match &mut *stale {
                        Some(c) if c.rolled == rolled => {
                            c.listed_at = listed_at;
                            c.state.clone()
                        }
                        _ => {
                            let state = self.session_state(&rolled).await?;
                            *stale = Some(CachedSession { rolled, state: state.clone(), listed_at });
                            state
                        }
                    }
                }
            }
        };
        Ok(SessionContext::new_with_state(state))
    }

    /// A session with `archived`, `unflushed`, `seals`, `rejected` (the record of rejected lines), the `readings` view and the `windows_*` views (which read
    /// the rollups of the `rolled` days).
    async fn session_state(&self, rolled: &[Vec<String>; 4]) -> Result<SessionState, SqlError> {
        // Planning's runtime: no memory is reserved while planning; each query runs with its own pool (`execute`).
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(self.stores.clone())
            .with_cache_manager(self.caches.runtime_config())
            .build_arc()?;
        let mut config = SessionConfig::from_env()
            .unwrap_or_default()
            .with_target_partitions(self.threads.parallelism())
            .with_default_catalog_and_schema(pg_catalog::CATALOG, "public")
            .with_information_schema(true);
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        // A sealed day is one file of a few MiB (DataFusion reads files under 10 MiB on one partition): split it.
        config.options_mut().optimizer.repartition_file_min_size =
            scan_in_pieces::PIECE_BYTES_WITHOUT_STATISTICS as usize;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        pg_catalog::install(&ctx, self.limits.timeout)?;
        for function in bounded::bounded_string_functions(self.limits.memory_bytes) {
            ctx.register_udf(function);
        }
        for function in window_functions::window_functions() {
            ctx.register_udaf(function);
        }
        for function in completeness::completeness_functions(&self.intervals) {
            ctx.register_udf(function);
        }
        ctx.register_udf(fast_floor::fast_floor());
        let url = &self.location.url;

        let readings_url = url.join("readings/").map_err(|e| SqlError::Invalid(e.to_string()))?;
        let table_url = ListingTableUrl::parse(readings_url.as_str())?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".into(), arrow::datatypes::DataType::Utf8)]);
        let config = ListingTableConfig::new(table_url).with_listing_options(options).with_schema(archive_schema());
        let archived = ListingTable::try_new(config)?.with_cache(self.caches.statistics());
        let schema = datafusion::datasource::TableProvider::schema(&archived);
        ctx.register_table("archived", Arc::new(archived))?;
        let unflushed = scan_time::Unflushed { schema, progress: self.progress.clone() };
        ctx.register_table("unflushed", Arc::new(scan_time::ScanTime(unflushed)))?;
        match &self.rejected {
            Some(store) => ctx.register_table("rejected", Arc::new(rejected::rejected_table(store.clone())?))?,
            None => ctx.register_table("rejected", Arc::new(MemTable::try_new(rejected_schema(), vec![vec![]])?))?,
        };
        ctx.register_table(
            "seals",
            Arc::new(scan_time::ScanTime(scan_time::Seals { location: self.location.clone() })),
        )?;
        let verdicts_url = url.join("verdicts/").map_err(|e| SqlError::Invalid(e.to_string()))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("kind".into(), arrow::datatypes::DataType::Utf8),
                ("date".into(), arrow::datatypes::DataType::Utf8),
            ]);
        let config = ListingTableConfig::new(ListingTableUrl::parse(verdicts_url.as_str())?)
            .with_listing_options(options)
            .with_schema(archive_schema());
        ctx.register_table(
            "verdict_parts",
            Arc::new(ListingTable::try_new(config)?.with_cache(self.caches.statistics())),
        )?;
        ctx.sql("CREATE VIEW verdicts AS SELECT device, sensor, value, timestamp, kind, date FROM verdict_parts")
            .await?;
        // Without an archiver in this process (`weir sql --archive`, a cluster's processes) nothing is ever unflushed
        // here: the view is the archive alone, which spares every query planning a union with an empty table (a
        // tenth of a grouping query's time over a sealed day: benches/RESULTS.md, "Issue 19, 3: no empty union").
        let columns = "device, sensor, value, timestamp, date";
        let readings = match self.progress {
            Some(_) => format!(
                "CREATE VIEW readings AS SELECT {columns} FROM archived UNION ALL SELECT {columns} FROM unflushed"
            ),
            None => format!("CREATE VIEW readings AS SELECT {columns} FROM archived"),
        };
        ctx.sql(&readings).await?;
        for (width, days) in weir_operators::Width::ALL.into_iter().zip(rolled) {
            register_windows(&ctx, &self.location, width, days).await?;
        }
        // DataFusion's plan, with grouping by dictionary columns (device, sensor) done on their numbers and by one
        // number (a time bucket) a stretch of equal keys at a time, large files
        // scanned in pieces that the partitions share, and no filter compared where the statistics prove it.
        Ok(SessionStateBuilder::new_from_existing(ctx.state())
            .with_physical_optimizer_rule(Arc::new(stretch_grouping::StretchGrouping::default()))
            .with_physical_optimizer_rule(Arc::new(scan_in_pieces::ScanInPieces::new(self.caches.footers())))
            .with_physical_optimizer_rule(Arc::new(proven_filters::ProvenFilters::new(self.caches.footers())))
            .build())
    }
}

/// The object stores SQL reads: the archive's, under its URL's scheme and authority.
fn store_registry(location: &ArchiveLocation) -> Result<Arc<DefaultObjectStoreRegistry>, SqlError> {
    let url = &location.url;
    let base = url::Url::parse(&format!("{}://{}", url.scheme(), url.authority()))
        .map_err(|e| SqlError::Invalid(e.to_string()))?;
    let stores = Arc::new(DefaultObjectStoreRegistry::new());
    stores.register_store(&base, location.store.clone());
    Ok(stores)
}

/// The days that have rollups, per width (in [`weir_operators::Width::ALL`]'s order), sorted: one listing of
/// `rollups/`.
async fn rolled_days(location: &ArchiveLocation) -> Result<[Vec<String>; 4], SqlError> {
    use futures_util::TryStreamExt;
    let prefix = location.root.clone().join("rollups");
    let listed: Vec<_> = location
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(crate::archive::ArchiveError::from)
        .map_err(|e| SqlError::Invalid(e.to_string()))?;
    let mut days: [Vec<String>; 4] = Default::default();
    for meta in &listed {
        let part = |key: &str| meta.location.parts().find_map(|p| p.as_ref().strip_prefix(key).map(str::to_owned));
        let (Some(width), Some(day)) = (part("width="), part("date=")) else { continue };
        let valid_day = day.len() == 10 && day.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        if let Some(i) = weir_operators::Width::ALL.iter().position(|w| w.name() == width).filter(|_| valid_day) {
            days[i].push(day);
        }
    }
    for list in &mut days {
        list.sort();
        list.dedup();
    }
    Ok(days)
}

/// The rollups of `width` as a listing table partitioned by `date`.
fn rollup_table(location: &ArchiveLocation, width: weir_operators::Width) -> Result<ListingTable, SqlError> {
    let url =
        location.url.join(&format!("rollups/width={}/", width.name())).map_err(|e| SqlError::Invalid(e.to_string()))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".into(), arrow::datatypes::DataType::Utf8)]);
    let config = ListingTableConfig::new(ListingTableUrl::parse(url.as_str())?)
        .with_listing_options(options)
        .with_schema(crate::rollup::rollup_schema());
    Ok(ListingTable::try_new(config)?)
}

/// A predicate on `date` that holds for `days` (sorted `YYYY-MM-DD`) and no other day: one `BETWEEN` per stretch of
/// consecutive days. An `IN` list of every day made planning a `windows_*` query grow with history (95 ms with a year
/// of rollups); the days with rollups are nearly always one stretch.
fn rolled_predicate(days: &[String]) -> String {
    let day = |d: &String| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
    let mut stretches: Vec<(&String, &String)> = Vec::new();
    for d in days {
        match stretches.last_mut() {
            Some((_, last)) if day(last).and_then(|l| l.succ_opt()).is_some_and(|next| day(d) == Some(next)) => {
                *last = d
            }
            _ => stretches.push((d, d)),
        }
    }
    let terms: Vec<String> = stretches
        .iter()
        .map(|(first, last)| match first == last {
            true => format!("date = '{first}'"),
            false => format!("date BETWEEN '{first}' AND '{last}'"),
        })
        .collect();
    match terms.is_empty() {
        true => "FALSE".to_owned(),
        false => format!("({})", terms.join(" OR ")),
    }
}

/// `windows_1m`, `windows_15m`, `windows_1h`, `windows_1d`: one row per window of a series, with the statistics of
/// `/api/v1/series`. A day with rollups ([`crate::rollup`], written when it is sealed) is read from them; a day without
/// (not sealed yet) is aggregated from its readings at query time with the live windows' own aggregate
/// ([`window_functions`]; first: the value at the smallest timestamp, last: at the greatest).
async fn register_windows(
    ctx: &SessionContext,
    location: &ArchiveLocation,
    width: weir_operators::Width,
    days: &[String],
) -> Result<(), SqlError> {
    let name = width.name();
    let table = format!("rollups_{name}");
    ctx.register_table(table.as_str(), Arc::new(rollup_table(location, width)?))?;
    let interval = match width {
        weir_operators::Width::Minute => "1 minute",
        weir_operators::Width::QuarterHour => "15 minutes",
        weir_operators::Width::Hour => "1 hour",
        weir_operators::Width::Day => "1 day",
    };
    let rolled = rolled_predicate(days);
    let start = format!("date_bin(INTERVAL '{interval}', timestamp, TIMESTAMP '1970-01-01T00:00:00Z')");
    ctx.sql(&format!(
        "CREATE VIEW windows_{name} AS \
         SELECT device, sensor, window_start, window_end, count, sum, mean, min, max, first, first_timestamp, last, \
                last_timestamp, p50, p90, p95, p99, late, duplicates, \
                window_expected(sensor, window_start, '{name}') AS expected, \
                window_completeness(count, window_expected(sensor, window_start, '{name}')) AS completeness, date \
         FROM (\
         SELECT CAST(device AS VARCHAR) AS device, CAST(sensor AS VARCHAR) AS sensor, window_start, window_end, \
                count, sum, mean, min, max, first, first_timestamp, last, last_timestamp, \
                p50, p90, p95, p99, COALESCE(late, 0) AS late, COALESCE(duplicates, 0) AS duplicates, date \
         FROM {table} WHERE {rolled} \
         UNION ALL \
         SELECT r.device, r.sensor, r.window_start, r.window_end, r.count, r.sum, r.mean, r.min, r.max, r.first, \
                r.first_timestamp, r.last, r.last_timestamp, r.p50, r.p90, r.p95, r.p99, \
                COALESCE(v.late, 0) AS late, COALESCE(v.duplicates, 0) AS duplicates, r.date \
         FROM (\
           SELECT CAST(device AS VARCHAR) AS device, CAST(sensor AS VARCHAR) AS sensor, {start} AS window_start, \
                  {start} + INTERVAL '{interval}' AS window_end, count(*) AS count, window_sum(value) AS sum, \
                  window_mean(value) AS mean, window_min(value) AS min, window_max(value) AS max, \
                  first_value(value ORDER BY timestamp) AS first, min(timestamp) AS first_timestamp, \
                  last_value(value ORDER BY timestamp) AS last, max(timestamp) AS last_timestamp, \
                  window_p50(value) AS p50, window_p90(value) AS p90, window_p95(value) AS p95, \
                  window_p99(value) AS p99, date \
           FROM readings WHERE NOT ({rolled}) \
           GROUP BY device, sensor, {start}, date) r \
         LEFT JOIN (\
           SELECT CAST(device AS VARCHAR) AS device, CAST(sensor AS VARCHAR) AS sensor, {start} AS window_start, \
                  count(*) FILTER (WHERE kind = 'late') AS late, \
                  count(*) FILTER (WHERE kind = 'duplicate') AS duplicates \
           FROM verdicts WHERE NOT ({rolled}) \
           GROUP BY device, sensor, {start}) v \
         ON r.device = v.device AND r.sensor = v.sensor AND r.window_start = v.window_start)"
    ))
    .await?;
    Ok(())
}

/// The `seals` table's schema.
pub(crate) fn seals_schema() -> SchemaRef {
    use arrow::datatypes::DataType;
    Arc::new(Schema::new(vec![
        Field::new("date", DataType::Utf8, false),
        Field::new("readings", DataType::UInt64, false),
        Field::new("late_readings", DataType::UInt64, false),
    ]))
}

/// `seals (date, readings, late_readings)`: one row per sealed day, from the seal journal.
pub(crate) async fn seals_table(location: &ArchiveLocation) -> Result<MemTable, SqlError> {
    use arrow::array::UInt64Array;
    let records = crate::seal::seal_records(location).await.map_err(|e| SqlError::Invalid(e.to_string()))?;
    let schema = seals_schema();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.date.as_str()))),
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.readings))),
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.late_readings))),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| SqlError::Invalid(e.to_string()))?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

/// `batch` with a `date` column appended, typed as the listing table types it.
pub(crate) fn with_date(
    batch: &RecordBatch,
    rows: &[ArchivedReading],
    schema: &SchemaRef,
) -> Result<RecordBatch, SqlError> {
    let dates: ArrayRef =
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| crate::archive::utc_date(r.micros))));
    let date_field: &Field = schema.field_with_name("date").map_err(|e| SqlError::Invalid(e.to_string()))?;
    let dates = arrow::compute::cast(&dates, date_field.data_type()).map_err(|e| SqlError::Invalid(e.to_string()))?;
    let mut columns = batch.columns().to_vec();
    columns.push(dates);
    let schema = Arc::new(Schema::new(schema.fields().clone()));
    RecordBatch::try_new(schema, columns).map_err(|e| SqlError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests;
