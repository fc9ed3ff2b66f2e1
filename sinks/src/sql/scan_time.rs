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

/// `unflushed`: the running archiver's buffered readings, in the `archived` table's schema (none without one).
#[derive(Debug)]
pub(super) struct Unflushed {
    pub schema: SchemaRef,
    pub progress: Option<Arc<ArchiveProgress>>,
}

#[async_trait::async_trait]
impl TableProvider for Unflushed {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        let records = self.progress.as_ref().map(|p| p.unflushed_snapshot()).unwrap_or_default();
        let rows: Vec<ArchivedReading> = records.iter().flat_map(|r| archived_readings(&r.batch, r.written)).collect();
        let batch = to_record_batch(&rows).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch =
            super::with_date(&batch, &rows, &self.schema).map_err(|e| DataFusionError::External(Box::new(e)))?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}

/// `seals (date, readings, late_readings)`, from the seal journals.
#[derive(Debug)]
pub(super) struct Seals {
    pub location: ArchiveLocation,
}

#[async_trait::async_trait]
impl TableProvider for Seals {
    fn schema(&self) -> SchemaRef {
        super::seals_schema()
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
        let table = super::seals_table(&self.location).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        table.scan(state, projection, filters, limit).await
    }
}
