//! SQL over the archive with DataFusion: the `readings` table, read-only, with limits.
//!
//! `readings (device, sensor, value, timestamp, date)` is a view over two tables: `archived`, a DataFusion
//! `ListingTable` over the hive-partitioned Parquet parts (so `date` filters prune partitions and other predicates
//! reach the Parquet statistics), and `unflushed`, the first-written readings the archiver has read but not yet
//! flushed. A query holds the archive's visibility lock from its snapshot of `unflushed` to its end, so every
//! reading appears exactly once.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;

use weir_pipeline::wal::LogRecord;

use crate::archive::{ArchiveLocation, ArchiveProgress, archived_readings};
use crate::part::{ArchivedReading, archive_schema, to_record_batch};

/// Limits of one query.
#[derive(Debug, Clone)]
pub struct SqlLimits {
    pub timeout: Duration,
    pub max_rows: usize,
    /// Memory the query may use for sorts, joins and aggregations; beyond it, it spills or fails cleanly.
    pub memory_bytes: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits { timeout: Duration::from_secs(30), max_rows: 100_000, memory_bytes: 512 << 20 }
    }
}

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the query took longer than the limit of {0:?} (--sql-timeout)")]
    Timeout(Duration),
    #[error("the result has more than {0} rows (--sql-max-rows): add a LIMIT or aggregate")]
    TooManyRows(usize),
    #[error("the query needs more memory than --sql-memory allows: {0}")]
    Memory(String),
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        match e.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => SqlError::Memory(m.clone()),
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
}

/// Refuses anything but one read-only query, naming the class of what was sent.
pub fn check_read_only(sql: &str) -> Result<(), SqlError> {
    let statements = DFParser::parse_sql(sql).map_err(|e| SqlError::Invalid(e.to_string()))?;
    if statements.len() != 1 {
        return Err(SqlError::Refused(format!("send exactly one statement ({} given)", statements.len())));
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

impl SqlArchive {
    pub fn new(location: ArchiveLocation, progress: Option<Arc<ArchiveProgress>>, limits: SqlLimits) -> Self {
        SqlArchive { location, progress, limits }
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// Runs `sql` (one read-only query) and collects its result within the limits.
    ///
    /// With a running archiver in this process, its visibility lock keeps flushes and seals from changing the
    /// parts under the query. Without one (a cluster, whose days are sealed by other processes, or `weir sql
    /// --archive`), the query is optimistic: it waits while a seal is under way, and runs again when the seal
    /// journals changed while it ran (a seal only swaps parts between two journal writes).
    pub async fn query(&self, sql: &str) -> Result<SqlResult, SqlError> {
        check_read_only(sql)?;
        if self.progress.is_some() {
            return self.query_once(sql).await;
        }
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        loop {
            let before = self.seals().await?;
            if before.iter().any(|r| !r.replacing.is_empty()) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(SqlError::Timeout(self.limits.timeout));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let result = self.query_once(sql).await;
            if self.seals().await? == before {
                return result;
            }
            tracing::debug!("a seal ran during the query; running it again");
        }
    }

    async fn seals(&self) -> Result<Vec<crate::seal::SealRecord>, SqlError> {
        crate::seal::seal_records(&self.location).await.map_err(|e| SqlError::Invalid(e.to_string()))
    }

    async fn query_once(&self, sql: &str) -> Result<SqlResult, SqlError> {
        let _visible = match &self.progress {
            Some(p) => Some(p.visibility.read().await),
            None => None,
        };
        let unflushed = self.progress.as_ref().map(|p| p.unflushed_snapshot()).unwrap_or_default();
        let ctx = self.context(&unflushed).await?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let run = async {
            let df = ctx.sql_with_options(sql, options).await?;
            let explain = matches!(
                df.logical_plan(),
                datafusion::logical_expr::LogicalPlan::Explain(_) | datafusion::logical_expr::LogicalPlan::Analyze(_)
            );
            // Stop reading one row past the limit: enough to tell the result is too large.
            let df = if explain { df } else { df.limit(0, Some(self.limits.max_rows + 1))? };
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            Ok::<_, SqlError>(SqlResult { schema, batches })
        };
        let result = tokio::time::timeout(self.limits.timeout, run)
            .await
            .map_err(|_| SqlError::Timeout(self.limits.timeout))??;
        if result.rows() > self.limits.max_rows {
            return Err(SqlError::TooManyRows(self.limits.max_rows));
        }
        Ok(result)
    }

    /// A session with `archived`, `unflushed` and the `readings` view.
    async fn context(&self, unflushed: &[Arc<LogRecord>]) -> Result<SessionContext, SqlError> {
        let runtime = RuntimeEnvBuilder::new().with_memory_limit(self.limits.memory_bytes, 1.0).build_arc()?;
        let config = SessionConfig::from_env().unwrap_or_default();
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let url = &self.location.url;
        let base = url::Url::parse(&format!("{}://{}", url.scheme(), url.authority()))
            .map_err(|e| SqlError::Invalid(e.to_string()))?;
        ctx.register_object_store(&base, self.location.store.clone());

        let readings_url = url.join("readings/").map_err(|e| SqlError::Invalid(e.to_string()))?;
        let table_url = ListingTableUrl::parse(readings_url.as_str())?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".into(), arrow::datatypes::DataType::Utf8)]);
        let config = ListingTableConfig::new(table_url).with_listing_options(options).with_schema(archive_schema());
        let archived = ListingTable::try_new(config)?;
        let table_schema = datafusion::datasource::TableProvider::schema(&archived);
        ctx.register_table("archived", Arc::new(archived))?;

        let rows: Vec<ArchivedReading> =
            unflushed.iter().flat_map(|r| archived_readings(&r.batch, r.written)).collect();
        let batch =
            with_date(&to_record_batch(&rows).map_err(|e| SqlError::Invalid(e.to_string()))?, &rows, &table_schema)?;
        ctx.register_table("unflushed", Arc::new(MemTable::try_new(table_schema, vec![vec![batch]])?))?;
        ctx.register_table("seals", Arc::new(seals_table(&self.location).await?))?;
        ctx.sql(
            "CREATE VIEW readings AS \
             SELECT device, sensor, value, timestamp, date FROM archived \
             UNION ALL SELECT device, sensor, value, timestamp, date FROM unflushed",
        )
        .await?;
        Ok(ctx)
    }
}

/// `seals (date, readings, late_readings)`: one row per sealed day, from the seal journal.
async fn seals_table(location: &ArchiveLocation) -> Result<MemTable, SqlError> {
    use arrow::array::UInt64Array;
    use arrow::datatypes::DataType;
    let records = crate::seal::seal_records(location).await.map_err(|e| SqlError::Invalid(e.to_string()))?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("date", DataType::Utf8, false),
        Field::new("readings", DataType::UInt64, false),
        Field::new("late_readings", DataType::UInt64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.date.as_str()))),
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.readings))),
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.late_readings))),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| SqlError::Invalid(e.to_string()))?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

/// `batch` with a `date` column appended, typed as the listing table types it.
fn with_date(batch: &RecordBatch, rows: &[ArchivedReading], schema: &SchemaRef) -> Result<RecordBatch, SqlError> {
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
