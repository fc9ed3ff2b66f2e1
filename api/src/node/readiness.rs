//! Readiness: whether the node has loaded what it starts from — the statistics have worked through the archive
//! (every process's snapshot: in a cluster also the sealed days this process owns, whatever its own log holds) and
//! replayed what the log held at start, and the archiver reads the log.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use weir_sinks::archive::ArchiveProgress;

use super::stats::LoadProgress;

/// What `/readyz` checks.
pub struct Readiness {
    /// The log's last position when the server started: the statistics are ready once they have processed it.
    pub log_at_start: u64,
    /// The archiver's progress (`started` once it reads the log).
    pub archive: Arc<ArchiveProgress>,
}

impl Readiness {
    /// `None` when ready, else why not.
    pub fn not_ready(&self, statistics: LoadProgress) -> Option<String> {
        if !statistics.snapshot_loaded {
            return Some("the statistics are loading the archive".into());
        }
        if statistics.processed < self.log_at_start {
            return Some(format!(
                "the statistics are replaying the write-ahead log: at position {} of {}",
                statistics.processed, self.log_at_start
            ));
        }
        if !self.archive.started.load(Ordering::Acquire) {
            return Some("the archiver is loading the archive".into());
        }
        if let Some(reason) = self.archive.failing() {
            return Some(format!("archive flushes fail (retrying): {reason}"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(snapshot_loaded: bool, processed: u64) -> LoadProgress {
        LoadProgress { snapshot_loaded, processed }
    }

    #[test]
    fn ready_only_after_the_snapshot_the_replay_and_the_archiver() {
        let r = Readiness { log_at_start: 10, archive: Arc::new(ArchiveProgress::default()) };
        assert_eq!(r.not_ready(at(false, 10)).unwrap(), "the statistics are loading the archive");
        assert!(r.not_ready(at(true, 3)).unwrap().contains("position 3 of 10"));
        assert_eq!(r.not_ready(at(true, 10)).unwrap(), "the archiver is loading the archive");
        r.archive.started.store(true, Ordering::Release);
        assert_eq!(r.not_ready(at(true, 10)), None);
        assert!(r.not_ready(at(true, 9)).is_some());
        assert!(r.not_ready(at(false, 10)).is_some(), "position 0 of an empty log is not loaded");
        r.archive.set_failing(Some("No space left on device".into()));
        assert!(r.not_ready(at(true, 10)).unwrap().contains("archive flushes fail (retrying): No space"));
        r.archive.set_failing(None);
        assert_eq!(r.not_ready(at(true, 10)), None, "ready again once a flush works");
    }
}
