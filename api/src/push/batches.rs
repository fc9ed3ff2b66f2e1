//! A file as a sequence of batches: whole lines, at most `batch_bytes` each, the same batches every time the same
//! file is read with the same size — so that each batch's idempotency key (file fingerprint + offset) names the same
//! bytes on every run, and a resumed or repeated push is answered from the server's keys instead of stored twice.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// How a file's lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Newline-delimited JSON readings, as `POST /ingest` takes them.
    Ndjson,
    /// InfluxDB line protocol, as `POST /api/v2/write` takes it.
    LineProtocol,
}

impl Format {
    /// The format a file's name says: `.lp`, `.line`, `.influx` (optionally `.gz`) are line protocol; anything else
    /// is NDJSON.
    pub fn of(path: &Path) -> Format {
        let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if [".lp", ".line", ".influx"].iter().any(|ext| name.ends_with(ext)) {
            Format::LineProtocol
        } else {
            Format::Ndjson
        }
    }
}

/// One file to push: where, how it is written, and what identifies its content.
#[derive(Debug, Clone)]
pub struct PushFile {
    pub path: PathBuf,
    pub format: Format,
    pub gzip: bool,
    /// Bytes on disk (compressed, for `.gz`).
    pub size: u64,
    /// 32 hex digits of SHA-256 over the size, the first MiB and the last MiB: the same file copied or renamed has
    /// the same fingerprint; a different file almost surely not (and if it had, the server refuses its batches as
    /// another request under a used key, 422 — never stores them wrongly).
    pub fingerprint: String,
}

const FINGERPRINT_SPAN: u64 = 1 << 20;

impl PushFile {
    /// Opens `path` to fingerprint it; `format` overrides what the name says.
    pub fn open(path: &Path, format: Option<Format>) -> io::Result<PushFile> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut hasher = Sha256::new();
        hasher.update(size.to_le_bytes());
        let mut head = Vec::new();
        (&mut file).take(FINGERPRINT_SPAN).read_to_end(&mut head)?;
        hasher.update(&head);
        if size > FINGERPRINT_SPAN {
            file.seek(SeekFrom::Start(size.saturating_sub(FINGERPRINT_SPAN).max(FINGERPRINT_SPAN)))?;
            let mut tail = Vec::new();
            file.take(FINGERPRINT_SPAN).read_to_end(&mut tail)?;
            hasher.update(&tail);
        }
        let digest = hasher.finalize();
        let fingerprint = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let mut magic = [0u8; 2];
        let gzip = File::open(path)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        Ok(PushFile { path: path.into(), format: format.unwrap_or_else(|| Format::of(path)), gzip, size, fingerprint })
    }

    /// The idempotency key of the batch of `batch_bytes` batches at `offset`.
    pub fn key(&self, batch_bytes: u64, offset: u64) -> String {
        format!("weir-push:{}:{batch_bytes}:{offset}", self.fingerprint)
    }
}

/// A run of whole lines of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Which file (an index into the push's files).
    pub file: usize,
    /// Where the batch starts in the file's (decompressed) bytes.
    pub offset: u64,
    /// Number of the batch's first line in the file, from 1.
    pub first_line: u64,
    /// Lines in `body`.
    pub lines: u64,
    pub body: Vec<u8>,
    /// Lines left out because they are longer than a batch (their numbers in the file).
    pub too_long: Vec<u64>,
    /// Blank lines in `body` (no reading, never rejected).
    pub blank: u64,
}

/// Reads a file's batches in order. Memory: one batch and one line, whatever the file's size.
pub struct Batches {
    file: usize,
    reader: Box<dyn BufRead + Send>,
    batch_bytes: usize,
    /// Where the next line starts.
    offset: u64,
    /// The next line's number.
    line: u64,
    /// A line read but not yet placed (it did not fit the last batch).
    carry: Option<(u64, Vec<u8>)>,
    done: bool,
}

/// Counts the bytes read from the file (compressed), for the progress bar.
struct Counted<R>(R, Arc<AtomicU64>);

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Batches {
    /// Batches of at most `batch_bytes` of `file` (index `index`); `read` counts the bytes read from disk.
    pub fn open(index: usize, file: &PushFile, batch_bytes: u64, read: Arc<AtomicU64>) -> io::Result<Batches> {
        let raw = Counted(File::open(&file.path)?, read);
        let reader: Box<dyn BufRead + Send> = if file.gzip {
            Box::new(BufReader::with_capacity(256 << 10, flate2::read::MultiGzDecoder::new(raw)))
        } else {
            Box::new(BufReader::with_capacity(256 << 10, raw))
        };
        Ok(Batches {
            file: index,
            reader,
            batch_bytes: batch_bytes.clamp(1, usize::MAX as u64) as usize,
            offset: 0,
            line: 1,
            carry: None,
            done: false,
        })
    }

    /// The next line (its offset and bytes, newline included), `None` at the end; a line longer than a batch is
    /// skipped to its end and returned empty (reported as too long).
    fn next_line(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if let Some(line) = self.carry.take() {
            return Ok(Some(line));
        }
        let start = self.offset;
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                break;
            }
            let (take, end) = match memchr_newline(available) {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if !too_long && line.len() + take <= self.batch_bytes {
                line.extend_from_slice(&available[..take]);
            } else {
                too_long = true;
                line.clear();
            }
            self.reader.consume(take);
            self.offset += take as u64;
            if end {
                break;
            }
        }
        if self.offset == start {
            return Ok(None);
        }
        if too_long {
            line.clear();
        }
        Ok(Some((start, line)))
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

impl Iterator for Batches {
    type Item = io::Result<Batch>;

    fn next(&mut self) -> Option<io::Result<Batch>> {
        if self.done {
            return None;
        }
        let mut batch = Batch {
            file: self.file,
            offset: 0,
            first_line: self.line,
            lines: 0,
            body: Vec::new(),
            too_long: Vec::new(),
            blank: 0,
        };
        let mut started = false;
        loop {
            let (offset, line) = match self.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if !started {
                batch.offset = offset;
                started = true;
            }
            if line.is_empty() {
                // Too long to send: left out and reported, but still a line of this batch.
                batch.too_long.push(self.line);
            } else if !batch.body.is_empty() && batch.body.len() + line.len() > self.batch_bytes {
                self.carry = Some((offset, line));
                break;
            } else {
                batch.blank += u64::from(line.iter().all(u8::is_ascii_whitespace));
                batch.body.extend_from_slice(&line);
            }
            batch.lines += 1;
            self.line += 1;
        }
        started.then_some(Ok(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batches_of(bytes: &[u8], gzip: bool, batch_bytes: u64) -> Vec<Batch> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if gzip { "f.json.gz" } else { "f.ndjson" });
        if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, bytes).unwrap();
            std::fs::write(&path, e.finish().unwrap()).unwrap();
        } else {
            std::fs::write(&path, bytes).unwrap();
        }
        let file = PushFile::open(&path, None).unwrap();
        assert_eq!(file.gzip, gzip);
        Batches::open(0, &file, batch_bytes, Arc::default()).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn names_say_the_format() {
        assert_eq!(Format::of(Path::new("a/b.lp.gz")), Format::LineProtocol);
        assert_eq!(Format::of(Path::new("x.influx")), Format::LineProtocol);
        assert_eq!(Format::of(Path::new("day.json.gz")), Format::Ndjson);
    }

    #[test]
    fn a_line_longer_than_a_batch_is_left_out_and_named() {
        let body = format!("a\n{}\nb\nc", "x".repeat(50));
        let batches = batches_of(body.as_bytes(), false, 10);
        let lines: Vec<(u64, u64, &[u8], Vec<u64>)> =
            batches.iter().map(|b| (b.first_line, b.lines, b.body.as_slice(), b.too_long.clone())).collect();
        assert_eq!(lines, vec![(1, 4, b"a\nb\nc".as_slice(), vec![2])]);
    }

    proptest! {
        /// Whatever the lines and the batch size, the batches are the file cut at line ends, in order, each within
        /// its size (but for lines too long, left out and named); plain and gzip alike; and the same every time.
        #[test]
        fn batches_cover_the_file_at_line_ends(
            lines in proptest::collection::vec("[a-z]{0,30}", 0..60),
            trailing in any::<bool>(),
            batch_bytes in 1u64..80,
            gzip in any::<bool>(),
        ) {
            let mut body = lines.join("\n");
            if trailing && !body.is_empty() {
                body.push('\n');
            }
            let batches = batches_of(body.as_bytes(), gzip, batch_bytes);
            prop_assert_eq!(&batches, &batches_of(body.as_bytes(), gzip, batch_bytes));
            let mut next_line = 1;
            let mut kept = Vec::new();
            for b in &batches {
                prop_assert_eq!(b.first_line, next_line);
                prop_assert!(b.body.len() as u64 <= batch_bytes);
                next_line += b.lines;
                kept.extend_from_slice(&b.body);
            }
            let expected: Vec<u8> = body
                .split_inclusive('\n')
                .filter(|l| l.len() as u64 <= batch_bytes)
                .flat_map(|l| l.bytes())
                .collect();
            prop_assert_eq!(kept, expected);
            let counted = body.split_inclusive('\n').count() as u64;
            prop_assert_eq!(next_line - 1, counted);
        }
    }
}
