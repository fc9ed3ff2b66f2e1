//! `rejected (received_at, key_name, source, line, reason, error, text)`: the record of rejected lines as a table,
//! read when a query runs, one segment at a time (one record batch per segment, so a scan holds at most one
//! segment's rows besides what the query's operators keep, and those are bounded by `--sql-memory`).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures_util::StreamExt;
use weir_pipeline::rejected::{Filter, RejectedStore, Rejection};

/// The table's schema.
pub fn rejected_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("received_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("line", DataType::UInt64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]))
}

/// The table over `store`.
pub(super) fn rejected_table(store: Arc<RejectedStore>) -> Result<StreamingTable> {
    let partition = Segments { schema: rejected_schema(), store };
    StreamingTable::try_new(rejected_schema(), vec![Arc::new(partition)])
}

/// The store's segments as they are when a query runs, read one by one.
struct Segments {
    schema: SchemaRef,
    store: Arc<RejectedStore>,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments").field("dir", &self.store.dir()).finish()
    }
}

impl PartitionStream for Segments {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (store, schema) = (self.store.clone(), self.schema.clone());
        let now = weir_pipeline::idempotency::now_micros();
        let segments = store.snapshot();
        let batches = futures_util::stream::iter(segments).then(move |segment| {
            let (store, schema) = (store.clone(), schema.clone());
            async move {
                let read = tokio::task::spawn_blocking(move || {
                    let (records, damage) = store.read_segment(&segment, &Filter::default(), now)?;
                    if let Some(damage) = damage {
                        tracing::warn!(%damage, "a segment of rejected lines is damaged; the query reads what is before");
                    }
                    Ok::<_, weir_pipeline::rejected::RejectedError>(records)
                });
                let records = read
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                to_batch(&schema, &records)
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// `records` as one batch of the table's schema.
fn to_batch(schema: &SchemaRef, records: &[Rejection]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.received_micros)).with_timezone("UTC"),
        ),
        Arc::new(records.iter().map(|r| r.key.as_deref()).collect::<StringArray>()),
        Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.source.as_str()))),
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.line))),
        Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.kind.as_str()))),
        Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.error.as_str()))),
        Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.text_lossy()))),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
