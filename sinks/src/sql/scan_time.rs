//! Tables whose rows are read when a query is planned, not when the session is built: so one session (its views
//! planned once) serves every query, and each query still sees the archive as it is.
//!
//! - `unflushed`: the first-written readings the archiver has read but not yet flushed. A query plans (and so scans)
//!   under the visibility lock it holds to its end, so the snapshot and the parts it lists agree: every reading once.
//! - `seals`: one row per sealed day, from the seal journals.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::archive::{ArchiveLocation, ArchiveProgress, archived_readings};
use crate::part::{ArchivedReading, to_record_batch};

/// What a scan-time table reads when a query is planned.
#[async_trait::async_trait]
pub(super) trait Snapshot: std::fmt::Debug + Send + Sync + 'static {
    fn schema(&self) -> SchemaRef;
    /// The table's rows now.
    async fn snapshot(&self) -> Result<MemTable>;
}

/// A table whose rows are [`Snapshot::snapshot`] taken when a query scans it.
#[derive(Debug)]
pub(super) struct ScanTime<S>(pub S);

#[async_trait::async_trait]
impl<S: Snapshot> TableProvider for ScanTime<S> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.snapshot().await?.scan(state, projection, filters, limit).await
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// `unflushed`: the running archiver's buffered readings, in the `archived` table's schema (none without one).
#[derive(Debug)]
pub(super) struct Unflushed {
    pub schema: SchemaRef,
    pub progress: Option<Arc<ArchiveProgress>>,
}

#[async_trait::async_trait]
impl Snapshot for Unflushed {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn snapshot(&self) -> Result<MemTable> {
        let records = self.progress.as_ref().map(|p| p.unflushed_snapshot()).unwrap_or_default();
        let rows: Vec<ArchivedReading> = records.iter().flat_map(|r| archived_readings(&r.batch, r.written)).collect();
        let batch = to_record_batch(&rows).map_err(external)?;
        let batch = super::with_date(&batch, &rows, &self.schema).map_err(external)?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])
    }
}

/// `seals (date, readings, late_readings)`, from the seal journals.
#[derive(Debug)]
pub(super) struct Seals {
    pub location: ArchiveLocation,
}

#[async_trait::async_trait]
impl Snapshot for Seals {
    fn schema(&self) -> SchemaRef {
        super::seals_schema()
    }

    async fn snapshot(&self) -> Result<MemTable> {
        super::seals_table(&self.location).await.map_err(external)
    }
}
