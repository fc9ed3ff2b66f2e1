//! SQL over the archive as a service: every reading acknowledged before the query, read-only, within the
//! configured limits; failures are [`ServiceError`]s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_pipeline::wal::ReadingLog;
use weir_sinks::archive::ArchiveProgress;
use weir_sinks::sql::{SqlArchive, SqlResult};

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

    /// Runs `sql` over every reading acknowledged before now.
    pub async fn query(&self, sql: &str) -> Result<SqlResult, ServiceError> {
        let started = std::time::Instant::now();
        let result = self.query_unmeasured(sql).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.kind {
                ErrorKind::Timeout => "timeout",
                ErrorKind::Unavailable | ErrorKind::StorageFull => "busy",
                ErrorKind::InvalidArgument | ErrorKind::TooLarge | ErrorKind::Internal => "error",
            },
        };
        metrics::counter!("weir_sql_queries_total", "result" => outcome).increment(1);
        metrics::histogram!("weir_sql_query_duration_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn query_unmeasured(&self, sql: &str) -> Result<SqlResult, ServiceError> {
        if sql.trim().is_empty() {
            return Err(ServiceError::invalid("no SQL given: send e.g. SELECT count(*) FROM readings"));
        }
        if let Some(stats) = &self.cluster {
            // Refuse what is not a read-only query before making every process flush for it.
            self.archive.check(sql).await?;
            self.flush_cluster(stats).await?;
            return self.run(sql).await;
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
        self.run(sql).await
    }

    async fn run(&self, sql: &str) -> Result<SqlResult, ServiceError> {
        Ok(self.archive.query(sql).await?)
    }
}
