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

use std::sync::Arc;

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
    /// How the query ended, set before its side of the channel closes: a closed channel without it is a cut-off
    /// answer.
    pub(super) end: Arc<End>,
    /// The stream has ended (its end or its error returned): nothing follows.
    pub(super) done: bool,
}

/// How a query's answer ended: `None` while it runs, then `Ok` (all handed over) or the error that stopped it. An
/// error goes here, not into the channel, so that a query ends at once even when its reader is not reading.
pub(super) type End = std::sync::Mutex<Option<Result<(), SqlError>>>;

impl SqlStream {
    /// The next batch; `None` at the end. After the query's deadline: [`SqlError::Timeout`], and the query stops
    /// (even with batches still waiting: an answer is whole or an error, never silently cut).
    pub async fn next(&mut self) -> Option<Result<RecordBatch, SqlError>> {
        if self.done {
            return None;
        }
        if Instant::now() >= self.deadline {
            return self.over(Some(SqlError::Timeout(self.timeout)));
        }
        match tokio::time::timeout_at(self.deadline, self.batches.recv()).await {
            Ok(Some(next)) => Some(next),
            Ok(None) => {
                let end = self.end.lock().expect("the end's lock is never poisoned").take();
                match end {
                    Some(Ok(())) => self.over(None),
                    Some(Err(e)) => self.over(Some(e)),
                    // The query's thread stopped without a word (it panicked: see the log).
                    None => self.over(Some(SqlError::Invalid("the query stopped before its end (see the log)".into()))),
                }
            }
            Err(_) => self.over(Some(SqlError::Timeout(self.timeout))),
        }
    }

    /// Ends the stream, with `error` if there is one; every later call answers `None`.
    fn over(&mut self, error: Option<SqlError>) -> Option<Result<RecordBatch, SqlError>> {
        self.batches.close();
        while self.batches.try_recv().is_ok() {}
        self.done = true;
        error.map(Err)
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
    pub(super) end: Arc<End>,
    /// The schema announced: every batch is given exactly its types.
    pub(super) announced: Option<SchemaRef>,
}

/// `batch` with the announced column types. The plan's batches can differ from the schema the query announced (a
/// view's union reads dictionary-encoded columns from the archive's files and plain strings from the unflushed
/// readings); Arrow Flight clients reject a stream whose batches differ from its schema, so every answer is made
/// to agree here, once, for every transport.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, SqlError> {
    if batch.schema_ref().fields().iter().zip(schema.fields()).all(|(a, b)| a.data_type() == b.data_type()) {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SqlError::Invalid(format!("cannot give the result its announced types: {e}")))?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| SqlError::Invalid(format!("cannot give the result its announced types: {e}")))
}

impl Producer {
    /// Announces the schema; `false` when nobody waits for the answer any more.
    pub(super) fn start(&mut self, schema: SchemaRef) -> bool {
        self.announced = Some(schema.clone());
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
        let batch = match &self.announced {
            Some(schema) => conform(batch, schema)?,
            None => batch,
        };
        Ok(self.batches.send(Ok(batch)).await.is_ok())
    }

    /// The whole answer has been handed over.
    pub(super) fn finish(self) {
        *self.end.lock().expect("the end's lock is never poisoned") = Some(Ok(()));
    }

    /// Ends the answer with `error`: before the schema, the query is refused; after it, the stream ends with it
    /// once the batches before it are read. Never waits: the query's thread is free at once.
    pub(super) fn fail(mut self, error: SqlError) {
        match self.schema.take() {
            Some(s) => {
                let _ = s.send(Err(error));
            }
            None => *self.end.lock().expect("the end's lock is never poisoned") = Some(Err(error)),
        }
    }
}
