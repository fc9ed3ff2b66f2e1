//! SQL over the archive as a service: every reading acknowledged before the query, read-only, within the
//! configured limits; failures are [`ServiceError`]s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::scalar::ScalarValue;
use weir_pipeline::wal::ReadingLog;
use weir_sinks::archive::ArchiveProgress;
use weir_sinks::sql::{Described, SqlArchive, SqlError, SqlResult, SqlStream};

use super::error::{ErrorKind, ServiceError};
use super::stats::StatsService;

/// The largest SQL request a transport reads (the query text itself is limited by `--sql-max-query-bytes`).
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Answers SQL over the archive, for any transport.
pub struct SqlService {
    archive: SqlArchive,
    progress: Arc<ArchiveProgress>,
    log: Arc<dyn ReadingLog>,
    /// Longest wait for the archiver to have read everything acknowledged before the query started.
    catch_up_wait: Duration,
    /// In a cluster: the statistics, through which every process is asked to flush before a query.
    cluster: Option<Arc<StatsService>>,
}

impl SqlService {
    pub fn new(
        archive: SqlArchive,
        progress: Arc<ArchiveProgress>,
        log: Arc<dyn ReadingLog>,
        catch_up_wait: Duration,
    ) -> Self {
        SqlService { archive, progress, log, catch_up_wait, cluster: None }
    }

    /// The archive it queries.
    pub fn archive(&self) -> &SqlArchive {
        &self.archive
    }

    /// In a cluster, a query first has every process flush what it acknowledged, and then reads the shared archive
    /// only (its own archiver's unflushed readings are not the whole cluster's).
    pub fn in_cluster(mut self, stats: Arc<StatsService>) -> Self {
        self.cluster = Some(stats);
        self
    }

    /// Waits until every process of the cluster has committed to the archive what its log held when asked.
    async fn flush_cluster(&self, stats: &StatsService) -> Result<(), ServiceError> {
        let deadline = tokio::time::Instant::now() + self.catch_up_wait;
        let unavailable = ServiceError::unavailable;
        let targets = stats.archive_states(true).await.map_err(|e| unavailable(e.to_string()))?;
        loop {
            let states = stats.archive_states(false).await.map_err(|e| unavailable(e.to_string()))?;
            let behind: Vec<String> = targets
                .iter()
                .filter(|t| states.iter().find(|s| s.process == t.process).is_none_or(|s| s.committed < t.durable))
                .map(|t| format!("process {} (log position {})", t.process, t.durable))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "the archive has not caught up with {} yet; retry",
                    behind.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `sql` over every reading acknowledged before now, its whole result at once.
    pub async fn query(&self, sql: &str) -> Result<SqlResult, ServiceError> {
        let started = std::time::Instant::now();
        let result = match self.stream(sql, Vec::new()).await {
            Ok(stream) => stream.collect().await.map_err(ServiceError::from),
            Err(e) => Err(ServiceError::from(e)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.kind {
                ErrorKind::Timeout => "timeout",
                ErrorKind::Unavailable | ErrorKind::StorageFull => "busy",
                ErrorKind::InvalidArgument
                | ErrorKind::TooLarge
                | ErrorKind::Internal
                | ErrorKind::Conflict
                | ErrorKind::KeyReused
                | ErrorKind::RateLimited => "error",
            },
        };
        metrics::counter!("weir_sql_queries_total", "result" => outcome).increment(1);
        metrics::histogram!("weir_sql_query_duration_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// Runs `sql` with `params` (`$1`, `$2`, …) over every reading acknowledged before now, answering batch by batch
    /// ([`SqlStream`]: the PostgreSQL protocol and Flight SQL, which send results of any length).
    pub async fn stream(&self, sql: &str, params: Vec<ScalarValue>) -> Result<SqlStream, QueryFailure> {
        self.catch_up(sql).await.map_err(QueryFailure::Service)?;
        self.archive.stream(sql, params).await.map_err(QueryFailure::Sql)
    }

    /// What `sql` would answer (its parameters' types and its result's schema), without running it.
    pub async fn describe(&self, sql: &str) -> Result<Described, QueryFailure> {
        if sql.trim().is_empty() {
            return Err(QueryFailure::Service(ServiceError::invalid(NO_SQL)));
        }
        self.archive.describe(sql).await.map_err(QueryFailure::Sql)
    }

    /// Waits until the archive has every reading acknowledged before now (in a cluster: at every process).
    async fn catch_up(&self, sql: &str) -> Result<(), ServiceError> {
        if sql.trim().is_empty() {
            return Err(ServiceError::invalid(NO_SQL));
        }
        if let Some(stats) = &self.cluster {
            // Refuse what is not a read-only query before making every process flush for it.
            self.archive.check(sql).await?;
            return self.flush_cluster(stats).await;
        }
        let acknowledged = self.log.durable_position();
        let deadline = tokio::time::Instant::now() + self.catch_up_wait;
        while self.progress.read_through.load(Ordering::Acquire) < acknowledged {
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::unavailable(format!(
                    "the archive has not caught up with log position {acknowledged} yet; retry"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

const NO_SQL: &str = "no SQL given: send e.g. SELECT count(*) FROM readings";

/// Why a streamed query gave no answer: the query itself ([`SqlError`], which the PostgreSQL protocol maps to
/// SQLSTATE codes), or the service around it (the archive not caught up).
#[derive(Debug, thiserror::Error)]
pub enum QueryFailure {
    #[error(transparent)]
    Sql(SqlError),
    #[error(transparent)]
    Service(ServiceError),
}

impl From<QueryFailure> for ServiceError {
    fn from(e: QueryFailure) -> Self {
        match e {
            QueryFailure::Sql(e) => e.into(),
            QueryFailure::Service(e) => e,
        }
    }
}
