//! A query's answer as it is produced: the schema first, then its record batches through a channel of
//! [`STREAM_BATCHES`] batches.
//!
//! Why a channel: the PostgreSQL wire protocol and Flight SQL send results of any length (a million rows is an
//! ordinary export), so the answer cannot be collected first. The query runs on its SQL thread and hands each batch
//! over as it is made; when the channel is full the query waits, so a slow reader holds at most
//! [`STREAM_BATCHES`] batches of the query's memory, never the whole result. Dropping the stream cancels the query
//! (its thread sees the channel closed and stops). `POST /api/v1/sql` collects the same stream.
//!
//! Bounds: `--sql-timeout` covers the whole answer, the reading included (PostgreSQL's `statement_timeout` counts
//! the time spent sending rows too); `--sql-max-rows` ends the stream with [`SqlError::TooManyRows`] after that
//! many rows.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::SqlError;

/// Batches a query may have made that its reader has not taken yet.
pub const STREAM_BATCHES: usize = 2;

/// What a query answers, known before it runs.
#[derive(Debug, Clone)]
pub struct Described {
    /// The types of its parameters `$1`, `$2`, … (`None` where the query does not decide one).
    pub params: Vec<Option<DataType>>,
    /// The schema of its result.
    pub schema: SchemaRef,
}

/// A query's result, batch by batch.
#[derive(Debug)]
pub struct SqlStream {
    pub schema: SchemaRef,
    pub(super) batches: mpsc::Receiver<Result<RecordBatch, SqlError>>,
    pub(super) deadline: Instant,
    pub(super) timeout: std::time::Duration,
}

impl SqlStream {
    /// The next batch; `None` at the end. After the query's deadline: [`SqlError::Timeout`], and the query stops.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, SqlError>> {
        match tokio::time::timeout_at(self.deadline, self.batches.recv()).await {
            Ok(next) => next,
            Err(_) => {
                self.batches.close();
                Some(Err(SqlError::Timeout(self.timeout)))
            }
        }
    }

    /// The whole result (for answers that are sent at once).
    pub async fn collect(mut self) -> Result<super::SqlResult, SqlError> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next().await {
            batches.push(batch?);
        }
        Ok(super::SqlResult { schema: self.schema, batches })
    }

    /// As a `futures` stream (for servers that take one).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<RecordBatch, SqlError>> + Send + 'static {
        futures_util::stream::unfold(self, |mut s| async move { s.next().await.map(|item| (item, s)) })
    }
}

/// The sending side, on the query's SQL thread.
pub(super) struct Producer {
    pub(super) schema: Option<tokio::sync::oneshot::Sender<Result<SchemaRef, SqlError>>>,
    pub(super) batches: mpsc::Sender<Result<RecordBatch, SqlError>>,
    pub(super) max_rows: usize,
    pub(super) rows: usize,
}

impl Producer {
    /// Announces the schema; `false` when nobody waits for the answer any more.
    pub(super) fn start(&mut self, schema: SchemaRef) -> bool {
        self.schema.take().is_some_and(|s| s.send(Ok(schema)).is_ok())
    }

    /// Hands `batch` on; `Err` ends the query (too many rows), `Ok(false)` when the reader is gone.
    pub(super) async fn send(&mut self, batch: RecordBatch) -> Result<bool, SqlError> {
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        self.rows += batch.num_rows();
        if self.rows > self.max_rows {
            return Err(SqlError::TooManyRows(self.max_rows));
        }
        Ok(self.batches.send(Ok(batch)).await.is_ok())
    }

    /// Ends the answer with `error`: before the schema, the query is refused; after it, the stream ends with it.
    pub(super) async fn fail(mut self, error: SqlError) {
        match self.schema.take() {
            Some(s) => {
                let _ = s.send(Err(error));
            }
            None => {
                let _ = self.batches.send(Err(error)).await;
            }
        }
    }
}
