//! The archive as a starting point. Once the WAL before the archive's committed position has been deleted, the
//! statistics and the archiver's dedup filter can no longer be rebuilt by replaying the log from position 1; they
//! start from the archive instead — every first-written reading through the committed position, exactly what
//! replaying that prefix of the log would have admitted — and read the log after it.

use std::collections::VecDeque;

use object_store::ObjectStoreExt;
use weir_pipeline::reading::ReadingBatch;

use crate::archive::{ArchiveError, ArchiveLocation, PartName};
use crate::part::read_parquet_batches;

/// Reads every committed part, in order of the last WAL position each covers, as reading batches.
pub struct ArchiveSnapshot {
    location: ArchiveLocation,
    runtime: tokio::runtime::Handle,
    parts: VecDeque<PartName>,
    pending: VecDeque<ReadingBatch>,
    /// The last position of the part `pending` came from.
    pending_last: u64,
}

impl ArchiveSnapshot {
    /// The parts holding readings through `committed` (a part starting after it belongs to a flush that never
    /// committed); in a cluster, this process's share of them. Reads happen on `runtime`, from a thread that is not one of its workers.
    pub async fn open(
        location: &ArchiveLocation,
        committed: u64,
        runtime: tokio::runtime::Handle,
    ) -> Result<ArchiveSnapshot, ArchiveError> {
        // In a cluster each process loads its own committed parts and the sealed files of the days it owns, so
        // that together the processes load every archived reading once.
        let mine = |p: &PartName| match location.share {
            None => p.last <= committed,
            Some(share) if p.sealed => share.owns_day(&p.date),
            Some(_) => location.is_own(p) && p.last <= committed,
        };
        let mut parts: Vec<PartName> = location.list_parts().await?.into_iter().filter(mine).collect();
        parts.sort_by(|a, b| (a.last, a.first, &a.date).cmp(&(b.last, b.first, &b.date)));
        Ok(ArchiveSnapshot {
            location: location.clone(),
            runtime,
            parts: parts.into(),
            pending: VecDeque::new(),
            pending_last: 0,
        })
    }

    /// How many parts it will read.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    fn read_part(&self, part: &PartName) -> Result<Vec<ReadingBatch>, ArchiveError> {
        let store = self.location.store.clone();
        let bytes = self.runtime.block_on(async { store.get(&part.path).await?.bytes().await })?;
        Ok(read_parquet_batches(bytes)?)
    }
}

impl Iterator for ArchiveSnapshot {
    /// A batch with the last WAL position of the part it comes from.
    type Item = Result<(u64, ReadingBatch), ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok((self.pending_last, batch)));
            }
            let part = self.parts.pop_front()?;
            match self.read_part(&part) {
                Ok(batches) => {
                    self.pending = batches.into();
                    self.pending_last = part.last;
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
