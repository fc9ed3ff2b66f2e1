//! The one error type the node's services return, whatever transport asked: what kind of failure it is, a message
//! for the user, when to retry and how much was already accepted. HTTP turns it into a status and a JSON body
//! , gRPC into a `Status`; neither parses the other's form back.

use std::time::Duration;

/// What kind of failure a [`ServiceError`] is; transports map each to their own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (bad parameter, refused SQL, bad input): do not retry it as it is.
    InvalidArgument,
    /// The request is larger than a configured limit.
    TooLarge,
    /// The request took longer than a configured limit.
    Timeout,
    /// Another request with the same idempotency key is being processed: retry once it is answered.
    Conflict,
    /// An idempotency key answered before came with a different request: do not retry it as it is.
    KeyReused,
    /// The request's API key is over its rate (readings a second): retry after `retry_after`.
    RateLimited,
    /// Weir cannot answer now (the log is full, the statistics or the archive have not caught up): retry.
    Unavailable,
    /// The disk is full: nothing more is stored until Weir has space (and is restarted).
    StorageFull,
    /// Something failed inside Weir.
    Internal,
}

/// A service's failure, transport-neutral.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
    /// When the client should try again (set for [`ErrorKind::Unavailable`]).
    pub retry_after: Option<Duration>,
    /// Readings made durable before the failure (ingest only; 0 elsewhere).
    pub accepted: u64,
}

impl ServiceError {
    /// A failure of `kind`; [`ErrorKind::Unavailable`] comes with a retry after 1 s.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retry_after = match kind {
            ErrorKind::Unavailable => Some(Duration::from_secs(1)),
            ErrorKind::StorageFull => Some(Duration::from_secs(30)),
            _ => None,
        };
        ServiceError { kind, message: message.into(), retry_after, accepted: 0 }
    }

    /// Whole seconds to wait before retrying, rounded up (at least 1): what `Retry-After` says.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.retry_after.map(|after| after.as_secs_f64().ceil().max(1.0) as u64)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorKind::Internal, message)
    }
}

impl From<crate::auth::LimitExceeded> for ServiceError {
    fn from(e: crate::auth::LimitExceeded) -> Self {
        let mut error = ServiceError::new(ErrorKind::RateLimited, e.to_string());
        error.retry_after = Some(e.retry_after());
        error
    }
}

impl From<weir_pipeline::stats::QueryError> for ServiceError {
    fn from(e: weir_pipeline::stats::QueryError) -> Self {
        ServiceError::unavailable(e.to_string())
    }
}

impl From<weir_sinks::sql::SqlError> for ServiceError {
    fn from(e: weir_sinks::sql::SqlError) -> Self {
        use weir_sinks::sql::SqlError;
        let kind = match e {
            SqlError::Timeout(_) => ErrorKind::Timeout,
            SqlError::Busy(_) => ErrorKind::Unavailable,
            SqlError::Refused(_)
            | SqlError::Invalid(_)
            | SqlError::Syntax(_)
            | SqlError::TooManyRows(_)
            | SqlError::Memory(_) => ErrorKind::InvalidArgument,
        };
        ServiceError::new(kind, e.to_string())
    }
}
