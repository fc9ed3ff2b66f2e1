//! One record: a rejected line, its request's origin and time, laid out as a payload and framed with its length
//! and CRC.
//!
//! Payload (little-endian): `received_micros i64 | line u64 | kind u8 | flags u8 (bit 0: has a key) | key | source |
//! error | text`, where each of the last four is `len u16 | bytes` (the key only with its flag). Every text but the
//! line's is UTF-8; the line's bytes are kept as they came.

use crate::decode::LineErrorKind;

use super::segment::Corruption;
use super::{MAX_TEXT_BYTES, Origin, head};

/// A rejected line as ingest keeps it for the record, before it is written: its number, why, and its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptLine {
    /// 1-based line number (for readings given as fields, their place in the request).
    pub line: u64,
    pub kind: LineErrorKind,
    /// The reason the client got.
    pub error: String,
    /// The first bytes of the line (or the reading's fields as NDJSON).
    pub text: Vec<u8>,
}

/// A rejected line as the record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// When its request was received, µs since the epoch (UTC).
    pub received_micros: i64,
    /// The API key's name.
    pub key: Option<String>,
    /// The route, `grpc` or `mqtt:<topic>`.
    pub source: String,
    pub line: u64,
    pub kind: LineErrorKind,
    /// The reason the client got.
    pub error: String,
    /// The first bytes of the line.
    pub text: Vec<u8>,
}

impl Rejection {
    /// The line's bytes as text (bytes that are not UTF-8 shown as U+FFFD).
    pub fn text_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.text)
    }
}

/// Bytes of a record's frame before its payload.
pub const FRAME_BYTES: usize = 8;
/// The largest payload a reader accepts (a larger length is damage, not a record).
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 10;
/// The longest key name kept.
const MAX_KEY_BYTES: usize = 256;
/// The longest source kept (an MQTT topic may be long).
const MAX_SOURCE_BYTES: usize = 1024;
/// The longest reason kept (ingest's reasons are cut to about 512 bytes already).
const MAX_ERROR_BYTES: usize = 4096;

fn kind_code(kind: LineErrorKind) -> u8 {
    match kind {
        LineErrorKind::Undecodable => 0,
        LineErrorKind::Invalid => 1,
        LineErrorKind::TooLong => 2,
    }
}

fn kind_of(code: u8) -> Option<LineErrorKind> {
    match code {
        0 => Some(LineErrorKind::Undecodable),
        1 => Some(LineErrorKind::Invalid),
        2 => Some(LineErrorKind::TooLong),
        _ => None,
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut_str(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every caller cuts to at most 4096 bytes first.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// Appends `line` of a request from `origin` received at `received_micros` to `out` as one framed record; returns
/// the bytes it took. Texts longer than a record keeps are cut.
pub fn encode(origin: &Origin, received_micros: i64, line: &KeptLine, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_BYTES]);
    out.extend_from_slice(&received_micros.to_le_bytes());
    out.extend_from_slice(&line.line.to_le_bytes());
    out.push(kind_code(line.kind));
    out.push(u8::from(origin.key.is_some()));
    if let Some(key) = &origin.key {
        put(out, cut_str(key, MAX_KEY_BYTES).as_bytes());
    }
    put(out, cut_str(&origin.source, MAX_SOURCE_BYTES).as_bytes());
    put(out, cut_str(&line.error, MAX_ERROR_BYTES).as_bytes());
    put(out, head(&line.text, MAX_TEXT_BYTES));
    let payload = &out[start + FRAME_BYTES..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Reads a payload whose checksum held.
pub fn decode(payload: &[u8]) -> Result<Rejection, Corruption> {
    let mut r = Reader(payload);
    let received_micros = i64::from_le_bytes(r.array()?);
    let line = u64::from_le_bytes(r.array()?);
    let [kind, flags] = r.array()?;
    let kind = kind_of(kind).ok_or(Corruption::Payload("unknown kind of rejection"))?;
    if flags > 1 {
        return Err(Corruption::Payload("unknown flags"));
    }
    let key = if flags & 1 == 1 { Some(r.text()?) } else { None };
    let source = r.text()?;
    let error = r.text()?;
    let text = r.bytes()?.to_vec();
    if !r.0.is_empty() {
        return Err(Corruption::Payload("bytes after the record's fields"));
    }
    Ok(Rejection { received_micros, key, source, line, kind, error, text })
}

/// A cursor over a payload; every read checks its bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corruption> {
        if self.0.len() < n {
            return Err(Corruption::Payload("a field runs past the record's end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Corruption> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Corruption> {
        let len = u16::from_le_bytes(self.array()?);
        self.take(len as usize)
    }

    fn text(&mut self) -> Result<String, Corruption> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| Corruption::Payload("a text field is not UTF-8"))
    }
}
