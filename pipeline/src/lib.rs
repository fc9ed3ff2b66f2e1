//! Weir's pipeline: the reading model, the NDJSON decoder, and the durable write-ahead log that ingest writes
//! before it acknowledges.

pub mod budget;
pub mod clock;
pub mod cluster;
pub mod data_dir;
pub mod decode;
pub mod devices;
pub mod idempotency;
pub mod ingest;
pub mod line_protocol;
pub mod lines;
pub mod reading;
pub mod rejected;
pub mod stats;
pub mod wal;
