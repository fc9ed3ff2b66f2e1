//! The data directory's format stamp: a file `weir-format` holding `weir data format N`.
//!
//! Weir checks it before touching anything else, so a directory written by a newer Weir (whose log or checkpoint
//! this binary might misread) or a directory that is not Weir's at all is refused with a message, never
//! reinterpreted. An unstamped directory that holds only what this format puts there (a data directory from before
//! the stamp existed) is stamped with the current format.

use std::path::{Path, PathBuf};

/// The format this Weir writes and reads.
pub const DATA_FORMAT: u32 = 1;
/// The stamp's file name inside the data directory.
pub const STAMP_FILE: &str = "weir-format";
const STAMP_PREFIX: &str = "weir data format ";
/// What format 1 keeps in a data directory (besides the stamp).
const FORMAT_1_ENTRIES: [&str; 4] = ["wal", "archive", "archive-checkpoint.json", "archive-checkpoint.tmp"];

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{dir} was written by a newer Weir (data format {found}); this weir reads format {DATA_FORMAT}. Run the newer \
         weir, or give --data-dir a new directory"
    )]
    Newer { dir: PathBuf, found: u32 },
    #[error(
        "{dir} has data format {found}, which this weir (format {DATA_FORMAT}) cannot read. Run the weir that wrote it, \
         or give --data-dir a new directory"
    )]
    Older { dir: PathBuf, found: u32 },
    #[error(
        "{path} is not a Weir format stamp (expected `{STAMP_PREFIX}N`, found {found:?}); restore it or fix it by hand"
    )]
    BadStamp { path: PathBuf, found: String },
    #[error(
        "{dir} is not empty and has no {STAMP_FILE} stamp, so it does not look like a Weir data directory (it holds \
         {entries}). Give --data-dir an empty or new directory"
    )]
    NotWeirs { dir: PathBuf, entries: String },
    #[error("cannot read or write the data directory {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

/// Creates `dir` if needed and checks (or writes) its format stamp.
pub fn check_or_stamp(dir: &Path) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io { dir: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(STAMP_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found =
                text.trim().strip_prefix(STAMP_PREFIX).and_then(|n| n.parse::<u32>().ok()).ok_or_else(|| {
                    DataDirError::BadStamp { path: path.clone(), found: text.chars().take(80).collect() }
                })?;
            match found {
                DATA_FORMAT => Ok(()),
                f if f > DATA_FORMAT => Err(DataDirError::Newer { dir: dir.to_path_buf(), found: f }),
                f => Err(DataDirError::Older { dir: dir.to_path_buf(), found: f }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut foreign: Vec<String> = std::fs::read_dir(dir)
                .map_err(io)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !FORMAT_1_ENTRIES.contains(&name.as_str()) && !name.starts_with(STAMP_FILE))
                .collect();
            if !foreign.is_empty() {
                foreign.sort();
                foreign.truncate(5);
                return Err(DataDirError::NotWeirs { dir: dir.to_path_buf(), entries: foreign.join(", ") });
            }
            write_stamp(dir).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes the stamp atomically.
fn write_stamp(dir: &Path) -> std::io::Result<()> {
    write_atomically(&dir.join(STAMP_FILE), format!("{STAMP_PREFIX}{DATA_FORMAT}\n").as_bytes())
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old or the new content, never a mix: a
/// temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_pre_stamp_directories_are_stamped_and_then_accepted() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("new");
        check_or_stamp(&fresh).unwrap();
        assert_eq!(std::fs::read_to_string(fresh.join(STAMP_FILE)).unwrap(), "weir data format 1\n");
        check_or_stamp(&fresh).unwrap();
        let old = root.path().join("old");
        std::fs::create_dir_all(old.join("wal")).unwrap();
        std::fs::write(old.join("archive-checkpoint.json"), "{}").unwrap();
        check_or_stamp(&old).unwrap();
        assert!(old.join(STAMP_FILE).exists());
    }

    #[test]
    fn newer_bad_and_foreign_directories_are_refused_with_a_reason() {
        let root = tempfile::tempdir().unwrap();
        let newer = root.path().join("newer");
        std::fs::create_dir_all(&newer).unwrap();
        std::fs::write(newer.join(STAMP_FILE), "weir data format 7\n").unwrap();
        let e = check_or_stamp(&newer).unwrap_err().to_string();
        assert!(e.contains("newer Weir (data format 7)") && e.contains("reads format 1"), "{e}");
        std::fs::write(newer.join(STAMP_FILE), "weir data format 0\n").unwrap();
        assert!(matches!(check_or_stamp(&newer), Err(DataDirError::Older { found: 0, .. })));
        std::fs::write(newer.join(STAMP_FILE), "hello").unwrap();
        let e = check_or_stamp(&newer).unwrap_err().to_string();
        assert!(e.contains("not a Weir format stamp") && e.contains("\"hello\""), "{e}");
        let home = root.path().join("home");
        std::fs::create_dir_all(home.join("Documents")).unwrap();
        std::fs::write(home.join(".bashrc"), "").unwrap();
        let e = check_or_stamp(&home).unwrap_err().to_string();
        assert!(e.contains("does not look like a Weir data directory") && e.contains(".bashrc, Documents"), "{e}");
        assert!(!home.join(STAMP_FILE).exists());
    }
}
