//! Weir's archive: every acknowledged reading as Parquet on object storage, and SQL over it.

pub mod archive;
pub mod compact;
pub mod part;
pub mod rollup;
pub mod seal;
pub mod snapshot;
pub mod sql;
#[cfg(test)]
mod test_support;
