//! The state file of `weir push --resume`: per file (by fingerprint), the batches the server acknowledged.
//!
//! Batches are acknowledged out of order (several connections), so a file's state is the offset below which every
//! batch is acknowledged plus the few acknowledged beyond it. The file is replaced whole (written beside, renamed),
//! so an interrupted push leaves the last complete state. A batch acknowledged but not yet in the state is sent
//! again on resume, under the same key: the server answers it from its keys and stores nothing twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a push has had acknowledged, for every file it pushed.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PushState {
    /// By file fingerprint.
    pub files: BTreeMap<String, FileState>,
}

/// One file's acknowledged batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileState {
    /// The file's path when it was pushed (for people reading the state).
    pub path: String,
    /// The batch size the keys were made with: a resume uses it again.
    pub batch_bytes: u64,
    /// Every batch starting below this offset is acknowledged.
    pub done_through: u64,
    /// Batches acknowledged at or beyond `done_through`: offset → where the next batch starts.
    pub done: BTreeMap<u64, u64>,
}

impl FileState {
    pub fn new(path: &Path, batch_bytes: u64) -> Self {
        FileState { path: path.display().to_string(), batch_bytes, done_through: 0, done: BTreeMap::new() }
    }

    /// Records the batch at `offset`, which ends where the next starts (`end`).
    pub fn acknowledge(&mut self, offset: u64, end: u64) {
        self.done.insert(offset, end);
        while let Some(end) = self.done.remove(&self.done_through) {
            self.done_through = end;
        }
    }

    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.done_through || self.done.contains_key(&offset)
    }
}

impl PushState {
    /// The state in `path`; an empty one when there is none.
    pub fn load(path: &Path) -> anyhow::Result<PushState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "the state file {} cannot be read ({e}): delete it to push everything again (batches already \
                     stored are answered from their keys, not stored twice)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PushState::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read the state file {}: {e}", path.display())),
        }
    }

    /// Replaces the state in `path`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let beside = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::File::create(&beside)?;
            out.write_all(&serde_json::to_vec_pretty(self).expect("a state serializes"))?;
            out.sync_all()?;
            std::fs::rename(&beside, path)
        };
        write().map_err(|e| anyhow::anyhow!("cannot write the state file {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_in_any_order_compact_to_a_prefix() {
        let mut f = FileState::new(Path::new("a"), 10);
        f.acknowledge(20, 30);
        f.acknowledge(10, 20);
        assert!(f.is_done(20) && f.is_done(10) && !f.is_done(0));
        assert_eq!(f.done_through, 0);
        f.acknowledge(0, 10);
        assert_eq!((f.done_through, f.done.len()), (30, 0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut state = PushState::default();
        state.files.insert("fp".into(), f);
        state.save(&path).unwrap();
        assert_eq!(PushState::load(&path).unwrap(), state);
        std::fs::write(&path, b"{broken").unwrap();
        assert!(PushState::load(&path).unwrap_err().to_string().contains("delete it"));
    }
}
