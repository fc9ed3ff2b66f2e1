//! What a request under an idempotency key brings to the ingest service, and the answer kept for its retries.
//!
//! The answer is kept as the facts every transport renders its answer from ([`StoredAnswer`]): the first answer
//! and every retry's are rendered by the same code from the same facts, decoded from the same bytes, so they are
//! byte for byte the same (the position is the record's, also kept).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use weir_pipeline::idempotency::{IdempotencyKey, KeyError, RequestHasher};
use weir_pipeline::ingest::LineReport;
use weir_pipeline::line_protocol::RejectedLine;

use super::ingest::IngestOutcome;

/// A request sent under a key: the key, and the hash of the request so far (the service adds a streamed body).
pub struct KeyedRequest {
    pub key: IdempotencyKey,
    pub request: RequestHasher,
}

impl KeyedRequest {
    /// A request to `endpoint` with `parameters` (its query string), under the key as sent.
    /// `owner`: the name of the API key the request came with, if any (its answer is given again to that key only).
    pub fn parse(sent: &str, endpoint: &str, parameters: &str, owner: Option<&str>) -> Result<Self, KeyError> {
        let request = RequestHasher::new(endpoint, parameters);
        let request = match owner {
            Some(owner) => request.owned_by(owner),
            None => request,
        };
        Ok(KeyedRequest { key: IdempotencyKey::parse(sent)?, request })
    }
}

/// The facts of an answered request, kept with its key.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub accepted: u64,
    pub rejected: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<LineReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub echoes: Vec<RejectedLine>,
}

impl StoredAnswer {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an answer serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The outcome a transport renders, for the record at `position`.
    pub fn into_outcome(self, position: u64, replayed: bool) -> IngestOutcome {
        IngestOutcome {
            accepted: self.accepted,
            position: Some(position),
            rejected: self.rejected,
            received: self.accepted + self.rejected,
            errors: self.errors,
            invalid: self.invalid,
            echoes: self.echoes,
            truncated: self.truncated,
            replayed,
            ..IngestOutcome::default()
        }
    }
}
