//! Segment files: naming, the header, and parsing a segment's bytes into records.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::record::{self, FRAME_BYTES, MAX_PAYLOAD_BYTES, Rejection};

/// Magic bytes at the start of every segment.
pub const MAGIC: &[u8; 8] = b"WEIRREJ\0";
/// The segment format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const HEADER_BYTES: u64 = 16;
/// The file name suffix of segments.
const SUFFIX: &str = ".rej";

/// The segment header bytes.
pub fn header() -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Why bytes of a segment are not records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("the segment header is incomplete ({0} bytes)")]
    ShortHeader(u64),
    #[error("not a segment of rejected lines (bad magic bytes)")]
    BadMagic,
    #[error("segment format version {0} is not one this Weir reads (it reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("a record cut short: {have} of {need} bytes (a write interrupted by a crash)")]
    CutShort { have: usize, need: usize },
    #[error("a record length of {0} bytes is impossible")]
    ImpossibleLength(u32),
    #[error("a record's checksum does not match")]
    Checksum,
    #[error("a record's checksum holds but its fields do not: {0}")]
    Payload(&'static str),
}

/// The file name of segment `sequence`.
pub fn name(sequence: u64) -> String {
    format!("{sequence:020}{SUFFIX}")
}

/// The segments in `dir` as `(sequence, path)`, in order. Other files are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else { continue };
        if stem.len() == 20
            && let Ok(sequence) = stem.parse::<u64>()
        {
            out.push((sequence, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(sequence, _)| *sequence);
    Ok(out)
}

/// The first `len` bytes of the file at `path` (fewer if it is shorter); `None` if it no longer exists (a segment
/// deleted by retention while it was being read).
pub fn read_prefix(path: &Path, len: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::with_capacity(usize::try_from(len.min(super::MAX_SEGMENT_BYTES)).unwrap_or(0));
    file.take(len).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// How parsing a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes up to the end of the last valid record (the header's end when there is none).
    pub valid_bytes: u64,
    /// Why the bytes after `valid_bytes` are not records (`None`: the segment ended after a whole record).
    pub damage: Option<Corruption>,
}

/// Checks the header of `bytes` and hands each valid record to `visit`, in order, up to the first damage.
pub fn parse(bytes: &[u8], mut visit: impl FnMut(Rejection)) -> Parsed {
    if (bytes.len() as u64) < HEADER_BYTES {
        return Parsed { valid_bytes: 0, damage: Some(Corruption::ShortHeader(bytes.len() as u64)) };
    }
    if &bytes[..8] != MAGIC {
        return Parsed { valid_bytes: 0, damage: Some(Corruption::BadMagic) };
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Parsed { valid_bytes: 0, damage: Some(Corruption::UnsupportedVersion(version)) };
    }
    let mut offset = HEADER_BYTES as usize;
    let damage = loop {
        let rest = &bytes[offset..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < FRAME_BYTES {
            break Some(Corruption::CutShort { have: rest.len(), need: FRAME_BYTES });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_PAYLOAD_BYTES {
            break Some(Corruption::ImpossibleLength(len));
        }
        let need = FRAME_BYTES + len as usize;
        if rest.len() < need {
            break Some(Corruption::CutShort { have: rest.len(), need });
        }
        let payload = &rest[FRAME_BYTES..need];
        if crc32fast::hash(payload) != crc {
            break Some(Corruption::Checksum);
        }
        match record::decode(payload) {
            Ok(rejection) => visit(rejection),
            Err(e) => break Some(e),
        }
        offset += need;
    };
    Parsed { valid_bytes: offset as u64, damage }
}
