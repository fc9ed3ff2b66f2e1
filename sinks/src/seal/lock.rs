//! One sealer per archive: a single Weir seals its days itself, and `weir dump` seals by hand only when no Weir
//! runs on that archive. Two sealers of one day stage to the same file and each deletes the parts of its own
//! listing, so readings the other merged are lost.
//!
//! The lock is an OS file lock (`flock`) on `locks/sealer.lock` in a local archive directory: the kernel releases
//! it when its holder exits, even by `kill -9`, so a crash never leaves a stale lock. A single Weir and `weir dump`
//! hold it exclusively; the processes of a cluster hold it *shared* ([`SealerLock::share`]: each seals only the days
//! it owns), so neither `weir dump` nor a single Weir can seal while any of them runs. An archive on an object store
//! has no such lock; there the server and `weir dump` cannot see each other (the README says so).

use std::fs::{File, TryLockError};
use std::path::PathBuf;

use super::super::archive::{ArchiveError, ArchiveLocation};

/// Held while this process may seal days of the archive; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct SealerLock {
    /// `None` for an archive that is not a local directory (no lock is possible there).
    _file: Option<File>,
    /// The lock file, when there is one.
    pub path: Option<PathBuf>,
}

impl SealerLock {
    /// Takes the archive's sealer lock, or says who holds it: [`ArchiveError::SealerBusy`].
    pub fn acquire(location: &ArchiveLocation) -> Result<SealerLock, ArchiveError> {
        Self::take(location, false)
    }

    /// Takes the lock shared with the other processes of a cluster (refused while a single Weir or `weir dump`
    /// holds it; it keeps them out while held).
    pub fn share(location: &ArchiveLocation) -> Result<SealerLock, ArchiveError> {
        Self::take(location, true)
    }

    fn take(location: &ArchiveLocation, shared: bool) -> Result<SealerLock, ArchiveError> {
        if location.url.scheme() != "file" {
            return Ok(SealerLock { _file: None, path: None });
        }
        let Ok(dir) = location.url.to_file_path() else {
            return Ok(SealerLock { _file: None, path: None });
        };
        let path = dir.join("locks").join("sealer.lock");
        let io = |source| ArchiveError::Lock { path: path.clone(), source };
        std::fs::create_dir_all(dir.join("locks")).map_err(io)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        let locked = if shared { file.try_lock_shared() } else { file.try_lock() };
        match locked {
            Ok(()) => Ok(SealerLock { _file: Some(file), path: Some(path) }),
            Err(TryLockError::WouldBlock) => Err(ArchiveError::SealerBusy { path }),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_free_again_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let location = ArchiveLocation::open(dir.path().to_str().unwrap()).unwrap();
        let held = SealerLock::acquire(&location).unwrap();
        assert!(held.path.is_some());
        let second = SealerLock::acquire(&location).unwrap_err();
        assert!(matches!(second, ArchiveError::SealerBusy { .. }), "{second}");
        assert!(second.to_string().contains("locks/sealer.lock"), "{second}");
        drop(held);
        SealerLock::acquire(&location).expect("free once the holder is gone");
        // A cluster's processes share it, and keep an exclusive holder (weir dump) out.
        let first = SealerLock::share(&location).unwrap();
        let second = SealerLock::share(&location).unwrap();
        assert!(matches!(SealerLock::acquire(&location), Err(ArchiveError::SealerBusy { .. })));
        drop((first, second));
        SealerLock::acquire(&location).expect("free once the cluster is gone");
        let memory = ArchiveLocation::open("memory:///").unwrap();
        assert!(SealerLock::acquire(&memory).unwrap().path.is_none());
    }
}
