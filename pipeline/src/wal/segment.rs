//! Segment files: naming, the file header, and scanning records.
//!
//! A segment is `<first position, 20 digits>.wal`: a 16-byte header (`WEIRWAL` magic, format version) followed
//! by records. A record is `len u32 | crc32 u32 | position u64 | payload[len]`, little-endian, where the CRC covers
//! the position and the payload, and positions increase by one from the segment's first position.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Magic bytes at the start of every segment.
pub const MAGIC: &[u8; 8] = b"WEIRWAL\0";
/// The segment format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const HEADER_BYTES: u64 = 16;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: u64 = 16;
/// The largest payload a record may have.
pub const MAX_PAYLOAD_BYTES: u32 = u32::MAX - 1;

/// The segment header bytes.
pub fn header() -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// The CRC stored in a record header.
pub fn record_crc(position: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&position.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one framed record to `out`.
pub fn frame_record(position: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record_crc(position, payload).to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A segment file in the WAL directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_position: u64,
    pub path: PathBuf,
}

/// The file name of the segment starting at `first_position`.
pub fn segment_name(first_position: u64) -> String {
    format!("{first_position:020}.wal")
}

/// The segments in `dir`, in position order. Other files are ignored.
pub fn list_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".wal") else { continue };
        if stem.len() != 20 {
            continue;
        }
        if let Ok(first_position) = stem.parse::<u64>() {
            out.push(SegmentFile { first_position, path: entry.path() });
        }
    }
    out.sort_by_key(|s| s.first_position);
    Ok(out)
}

/// How a scan of one segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// The file ended exactly after a whole record.
    Clean,
    /// Bytes from `offset` on are not a valid record (torn write, zeros, garbage).
    Torn { offset: u64, reason: String },
}

/// What scanning a segment found.
#[derive(Debug)]
pub struct SegmentScan {
    /// Position of the last valid record, if any.
    pub last_position: Option<u64>,
    /// Offset just after the last valid record.
    pub valid_bytes: u64,
    pub end: ScanEnd,
}

/// Reads records of one segment in order.
pub struct SegmentReader {
    input: BufReader<File>,
    next_position: u64,
    offset: u64,
}

/// Why a segment could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum SegmentOpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("segment header is incomplete ({0} bytes)")]
    ShortHeader(u64),
    #[error("not a Weir WAL segment (bad magic bytes)")]
    BadMagic,
    #[error(
        "WAL segment format version {0} is not supported by this Weir (it reads version {FORMAT_VERSION}); \
         use the Weir release that wrote this data directory"
    )]
    UnsupportedVersion(u32),
}

impl SegmentReader {
    pub fn open(segment: &SegmentFile) -> Result<Self, SegmentOpenError> {
        let file = File::open(&segment.path)?;
        let len = file.metadata()?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        if len < HEADER_BYTES {
            return Err(SegmentOpenError::ShortHeader(len));
        }
        let mut h = [0u8; HEADER_BYTES as usize];
        input.read_exact(&mut h)?;
        if &h[..8] != MAGIC {
            return Err(SegmentOpenError::BadMagic);
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(SegmentOpenError::UnsupportedVersion(version));
        }
        Ok(SegmentReader { input, next_position: segment.first_position, offset: HEADER_BYTES })
    }

    /// Byte offset just after the last record returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record as `(position, payload)`, `Ok(None)` at a clean end, `Err` describing a torn or corrupt
    /// record (the offset stays at that record's start).
    pub fn next_record(&mut self, payload: &mut Vec<u8>) -> Result<Option<u64>, String> {
        let result = self.read_record(payload);
        if !matches!(result, Ok(Some(_))) {
            // Rewind to the record's start so a later call sees it whole once the writer has finished it.
            self.input.seek(SeekFrom::Start(self.offset)).map_err(|e| format!("seek error: {e}"))?;
        }
        result
    }

    fn read_record(&mut self, payload: &mut Vec<u8>) -> Result<Option<u64>, String> {
        let mut h = [0u8; RECORD_HEADER_BYTES as usize];
        match read_full(&mut self.input, &mut h) {
            Ok(0) => return Ok(None),
            Ok(n) if n < h.len() => return Err(format!("record header cut short after {n} bytes")),
            Ok(_) => {}
            Err(e) => return Err(format!("read error: {e}")),
        }
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let position = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        if len > MAX_PAYLOAD_BYTES {
            return Err(format!("record length {len} is impossible"));
        }
        if position != self.next_position {
            return Err(format!("record position {position}, expected {}", self.next_position));
        }
        payload.clear();
        let got = (&mut self.input).take(len as u64).read_to_end(payload).map_err(|e| format!("read error: {e}"))?;
        if got < len as usize {
            return Err(format!("record payload cut short: {got} of {len} bytes"));
        }
        if record_crc(position, payload) != crc {
            return Err("record checksum mismatch".into());
        }
        self.next_position += 1;
        self.offset += RECORD_HEADER_BYTES + len as u64;
        Ok(Some(position))
    }

    /// Scans to the end of the segment.
    pub fn scan(mut self) -> SegmentScan {
        let mut payload = Vec::new();
        let mut last_position = None;
        loop {
            match self.next_record(&mut payload) {
                Ok(Some(p)) => last_position = Some(p),
                Ok(None) => return SegmentScan { last_position, valid_bytes: self.offset, end: ScanEnd::Clean },
                Err(reason) => {
                    return SegmentScan {
                        last_position,
                        valid_bytes: self.offset,
                        end: ScanEnd::Torn { offset: self.offset, reason },
                    };
                }
            }
        }
    }
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
