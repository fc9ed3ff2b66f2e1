//! What SQL keeps between queries about the archive's Parquet files: their footers (the metadata DataFusion reads
//! before it reads a row) and the statistics the listing tables collect from them.
//!
//! Why: every query gets a runtime of its own, for its own memory pool ([`super::SqlArchive::context`]), and
//! DataFusion keeps these caches in the runtime. Without sharing them, each query read and decoded the footer of
//! every file it touched again — once to plan (statistics) and once per piece of a file it scans
//! ([`super::scan_in_pieces`]): about 0.2 ms per piece, a quarter of a query over one sealed day.
//!
//! Why it is safe: the archive's files are written once under names of their own and never changed in place (a
//! seal or a compaction writes a new file and deletes the parts); and DataFusion checks every entry against the
//! file's size and modification time before it uses it, so a file replaced anyway is read again. The listing of
//! files is not kept between queries: a query must see the parts flushed since the last one.
//!
//! Bounds: both caches evict the least recently used entries beyond their share of `--sql-cache-bytes`, three
//! quarters for footers and one for statistics. Each cache measures its own entries.

use std::sync::Arc;

use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, CachedFileMetadata, CachedFileMetadataEntry, FileMetadataCache, FileStatisticsCache,
};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, TableScopedPath};
use object_store::path::Path;

/// The footer and statistics caches every query of one [`super::SqlArchive`] shares.
#[derive(Clone)]
pub struct FileCaches {
    metadata: Arc<DefaultCache<Path, CachedFileMetadataEntry>>,
    metadata_bytes: usize,
    statistics: Arc<DefaultCache<TableScopedPath, CachedFileMetadata>>,
}

impl FileCaches {
    /// Caches that hold at most `bytes` together (0: none; every query reads the footers again).
    pub fn new(bytes: usize) -> Self {
        let metadata_bytes = bytes - bytes / 4;
        FileCaches {
            metadata: Arc::new(DefaultCache::new(metadata_bytes).with_name("weir_sql_file_metadata")),
            metadata_bytes,
            statistics: Arc::new(DefaultCache::new(bytes / 4).with_name("weir_sql_file_statistics")),
        }
    }

    /// The cache configuration of the queries' runtimes: the shared footer cache, and no listing cache. Parts come
    /// with every flush, and queries are planned in one shared session: a listing kept there would hide them (each
    /// query lists the files when it is planned).
    pub fn runtime_config(&self) -> CacheManagerConfig {
        CacheManagerConfig::default()
            .with_file_metadata_cache(Some(self.metadata.clone() as _))
            .with_metadata_cache_limit(self.metadata_bytes)
            .with_list_files_cache_limit(0)
    }

    /// The footer cache, for the plan rule that cuts files at their row groups; `None` when footers are not kept.
    pub fn footers(&self) -> Option<Arc<FileMetadataCache>> {
        (self.metadata_bytes > 0).then(|| self.metadata.clone() as Arc<FileMetadataCache>)
    }

    /// The statistics cache for a listing table of the shared session.
    pub fn statistics(&self) -> Option<Arc<FileStatisticsCache>> {
        (self.statistics.cache_limit() > 0).then(|| self.statistics.clone() as Arc<FileStatisticsCache>)
    }
}

#[cfg(test)]
mod tests;
