//! `POST /api/v1/sql`: read-only SQL over the archive, as JSON rows, CSV or an Arrow IPC stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use weir_pipeline::wal::ReadingLog;
use weir_sinks::archive::ArchiveProgress;
use weir_sinks::sql::{SqlArchive, SqlError, SqlResult};

use crate::server::AppState;
use crate::stats::StatsService;

/// The Arrow IPC stream media type.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
/// The longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Answers SQL for the HTTP handler.
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

    /// In a cluster, a query first has every process flush what it acknowledged, and then reads the shared archive
    /// only (its own archiver's unflushed readings are not the whole cluster's).
    pub fn in_cluster(mut self, stats: Arc<StatsService>) -> Self {
        self.cluster = Some(stats);
        self
    }

    /// Waits until every process of the cluster has committed to the archive what its log held when asked.
    async fn flush_cluster(&self, stats: &StatsService) -> Result<(), Response> {
        let deadline = tokio::time::Instant::now() + self.catch_up_wait;
        let unavailable = |e: String| error(StatusCode::SERVICE_UNAVAILABLE, e);
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
    pub async fn query(&self, sql: &str) -> Result<SqlResult, Response> {
        let started = std::time::Instant::now();
        let result = self.query_unmeasured(sql).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(r) if r.status() == StatusCode::REQUEST_TIMEOUT => "timeout",
            Err(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => "busy",
            Err(_) => "error",
        };
        metrics::counter!("weir_sql_queries_total", "result" => outcome).increment(1);
        metrics::histogram!("weir_sql_query_duration_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn query_unmeasured(&self, sql: &str) -> Result<SqlResult, Response> {
        if let Some(stats) = &self.cluster {
            // Refuse what is not a read-only query before making every process flush for it.
            weir_sinks::sql::check_read_only(sql).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
            self.flush_cluster(stats).await?;
            return self.run(sql).await;
        }
        let acknowledged = self.log.durable_position();
        let deadline = tokio::time::Instant::now() + self.catch_up_wait;
        while self.progress.read_through.load(Ordering::Acquire) < acknowledged {
            if tokio::time::Instant::now() >= deadline {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the archive has not caught up with log position {acknowledged} yet; retry"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.run(sql).await
    }

    async fn run(&self, sql: &str) -> Result<SqlResult, Response> {
        self.archive.query(sql).await.map_err(|e| {
            let status = match e {
                SqlError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                _ => StatusCode::BAD_REQUEST,
            };
            error(status, e.to_string())
        })
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let mut r = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// The output formats, chosen by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFormat {
    Json,
    Csv,
    Arrow,
}

impl SqlFormat {
    fn from_accept(headers: &HeaderMap) -> SqlFormat {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if accept.contains(ARROW_STREAM) {
            SqlFormat::Arrow
        } else if accept.contains("text/csv") {
            SqlFormat::Csv
        } else {
            SqlFormat::Json
        }
    }
}

/// Encodes a result in `format`.
pub fn encode(result: &SqlResult, format: SqlFormat) -> Result<(Vec<u8>, &'static str), arrow::error::ArrowError> {
    let batches: Vec<&arrow::array::RecordBatch> = result.batches.iter().collect();
    match format {
        SqlFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write_batches(&batches)?;
            w.finish()?;
            let mut out = w.into_inner();
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            Ok((out, "application/json"))
        }
        SqlFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
            if batches.is_empty() {
                w.write(&arrow::array::RecordBatch::new_empty(result.schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
            Ok((w.into_inner(), "text/csv; charset=utf-8"))
        }
        SqlFormat::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &result.schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            Ok((w.into_inner()?, ARROW_STREAM))
        }
    }
}

/// `POST /api/v1/sql`: the SQL as the body (`text/plain`) or as `{"sql": "..."}` (`application/json`).
pub async fn sql(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_SQL_BYTES).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the SQL text is over {MAX_SQL_BYTES} bytes")),
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let text = if is_json {
        match serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["sql"].as_str().map(String::from))
        {
            Some(s) => s,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "send {\"sql\": \"SELECT ...\"} or the SQL as text/plain".into(),
                );
            }
        }
    } else {
        match String::from_utf8(bytes.to_vec()) {
            Ok(s) => s,
            Err(_) => return error(StatusCode::BAD_REQUEST, "the SQL text is not UTF-8".into()),
        }
    };
    if text.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "no SQL given: send e.g. SELECT count(*) FROM readings".into());
    }
    let result = match state.sql.query(&text).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    match encode(&result, SqlFormat::from_accept(&headers)) {
        Ok((bytes, content_type)) => {
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], bytes).into_response();
            if let Ok(v) = HeaderValue::from_str(&result.rows().to_string()) {
                r.headers_mut().insert("weir-rows", v);
            }
            r
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the result failed: {e}")),
    }
}
