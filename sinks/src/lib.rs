//! Weir's archive: every acknowledged reading as Parquet on object storage, and SQL over it.

pub mod archive;
pub mod compact;
mod names;
mod priority;
/// The archive's file format (its own crate, so that what needs only the format builds without DataFusion).
pub use weir_format as part;
pub mod rollup;
pub mod seal;
pub mod snapshot;
pub mod sql;
#[cfg(test)]
mod test_support;
pub mod verdicts;
