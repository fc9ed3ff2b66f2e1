//! Readiness: whether the node has loaded what it starts from (the statistics have replayed what the log held at
//! start, and the archiver reads the log).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use weir_sinks::archive::ArchiveProgress;

/// What `/readyz` checks.
pub struct Readiness {
    /// The log's last position when the server started: the statistics are ready once they have processed it.
    pub log_at_start: u64,
    /// The archiver's progress (`started` once it has rebuilt its filter from the archive).
    pub archive: Arc<ArchiveProgress>,
}

impl Readiness {
    /// `None` when ready, else why not.
    pub fn not_ready(&self, statistics_processed: u64) -> Option<String> {
        if statistics_processed < self.log_at_start {
            return Some(format!(
                "the statistics are replaying the write-ahead log: at position {statistics_processed} of {}",
                self.log_at_start
            ));
        }
        if !self.archive.started.load(Ordering::Acquire) {
            return Some("the archiver is loading the archive".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_replay_and_archive_load() {
        let r = Readiness { log_at_start: 10, archive: Arc::new(ArchiveProgress::default()) };
        assert!(r.not_ready(3).unwrap().contains("position 3 of 10"));
        assert_eq!(r.not_ready(10).unwrap(), "the archiver is loading the archive");
        r.archive.started.store(true, Ordering::Release);
        assert_eq!(r.not_ready(10), None);
        assert!(r.not_ready(9).is_some());
    }
}
