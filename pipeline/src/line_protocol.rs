//! InfluxDB line protocol in: every numeric field of a line is one reading.
//!
//! `cpu,device=truck-7,region=eu speed=55.5,fuel=30i 1700000000000000000` gives two readings of device `truck-7`:
//! sensor `speed` = 55.5 and sensor `fuel` = 30 at that instant. The mapping, and why:
//!
//! - **sensor**: the field key ([`SensorNaming::Field`], the default), so that `speed=55.5` is the same sensor an
//!   NDJSON client names `"speed"`; or `measurement_field` ([`SensorNaming::MeasurementField`]) for agents such as
//!   Telegraf whose measurements reuse field keys (`mem used_percent` and `disk used_percent`). Either way the name
//!   must be a configured sensor (`--sensors`), like any reading's.
//! - **device**: the value of the first of the configured tags the line has (`device`, then `host` by default), else
//!   the default device. Other tags are not stored: a Weir series is (device, sensor).
//! - **value**: floats as they are; integers (`30i`, `30u`) as the nearest float (exact up to 2^53). Strings and
//!   booleans are rejected, each with its line number; the line's numeric fields are still stored.
//! - **timestamp**: the line's integer at the request's [`Precision`] (nanoseconds unless the endpoint says
//!   otherwise), truncated to microseconds, Weir's resolution; a line without one takes the time it was received.
//!
//! Parsing is InfluxData's own parser (`influxdb-line-protocol`, the one InfluxDB 3 uses), fed a chunk at a time:
//! only complete lines are parsed and the incomplete tail waits for the next chunk, so a body of any size is read
//! in memory bounded by its longest line (`--max-line-bytes`). Line numbers are those of InfluxData's line splitter
//! (a newline inside a quoted string value does not end the line).

use std::str::FromStr;

use crate::decode::{LineError, ReadingFields, Timestamp};
use crate::ingest::BodyDecoder;

/// How a line's measurement and field key become a sensor name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SensorNaming {
    /// The field key alone.
    #[default]
    Field,
    /// `measurement_field` (an underscore, since sensor names are letters, digits and `_`).
    MeasurementField,
}

impl FromStr for SensorNaming {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "field" => Ok(SensorNaming::Field),
            "measurement_field" | "measurement-field" => Ok(SensorNaming::MeasurementField),
            other => Err(format!("{other:?} is not a sensor naming: use `field` or `measurement_field`")),
        }
    }
}

/// How line protocol maps onto readings (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProtocolMapping {
    pub sensor: SensorNaming,
    /// The tags that name the device, first present wins.
    pub device_tags: Vec<String>,
}

impl Default for LineProtocolMapping {
    fn default() -> Self {
        LineProtocolMapping { sensor: SensorNaming::Field, device_tags: vec!["device".into(), "host".into()] }
    }
}

/// The unit of a line's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Guessed from the magnitude, as InfluxDB 3 does: below 5·10⁹ seconds, below 5·10¹² milliseconds, below
    /// 5·10¹⁵ microseconds, else nanoseconds (each boundary is about the year 2128 in the smaller unit).
    Auto,
    Nanosecond,
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
}

impl FromStr for Precision {
    type Err = String;
    /// The names InfluxDB's v1 (`n`, `u`, `ms`, `s`, `m`, `h`), v2 (`ns`, `us`, `ms`, `s`) and v3 (`auto`,
    /// `nanosecond` … `second`) write APIs accept.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Precision::Auto,
            "n" | "ns" | "nanosecond" => Precision::Nanosecond,
            "u" | "us" | "µ" | "µs" | "microsecond" => Precision::Microsecond,
            "ms" | "millisecond" => Precision::Millisecond,
            "s" | "second" => Precision::Second,
            "m" | "minute" => Precision::Minute,
            "h" | "hour" => Precision::Hour,
            other => {
                return Err(format!(
                    "precision {other:?} is not one of ns, us, ms, s (also n, u, m, h, auto, nanosecond, \
                     microsecond, millisecond, second)"
                ));
            }
        })
    }
}

impl Precision {
    /// `t` in this unit as microseconds since the epoch (truncated toward negative infinity), `None` on overflow.
    pub fn to_micros(self, t: i64) -> Option<i64> {
        let unit = match self {
            Precision::Auto => {
                return match t.unsigned_abs() {
                    0..5_000_000_000 => Precision::Second,
                    5_000_000_000..5_000_000_000_000 => Precision::Millisecond,
                    5_000_000_000_000..5_000_000_000_000_000 => Precision::Microsecond,
                    _ => Precision::Nanosecond,
                }
                .to_micros(t);
            }
            unit => unit,
        };
        match unit {
            Precision::Nanosecond => Some(t.div_euclid(1_000)),
            Precision::Microsecond => Some(t),
            Precision::Millisecond => t.checked_mul(1_000),
            Precision::Second => t.checked_mul(1_000_000),
            Precision::Minute => t.checked_mul(60_000_000),
            Precision::Hour => t.checked_mul(3_600_000_000),
            Precision::Auto => unreachable!("resolved above"),
        }
    }
}

/// The longest piece of a rejected line kept for the answer.
pub const MAX_ECHO_BYTES: usize = 256;

/// A rejected line as the answer quotes it (InfluxDB 3's `original_line`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejectedLine {
    pub line: u64,
    /// The line's text, cut to [`MAX_ECHO_BYTES`].
    pub text: String,
}

/// Turns a line protocol body, fed a chunk at a time, into readings pushed into a [`BodyDecoder`] (which
/// validates, counts, reports and batches them like NDJSON readings).
pub struct LineProtocolDecoder {
    mapping: LineProtocolMapping,
    precision: Precision,
    /// The time of lines without a timestamp (when the request was received), µs.
    now_micros: i64,
    /// Bytes not yet parsed: the start of an incomplete line.
    pending: Vec<u8>,
    /// The number of the next line.
    next_line: u64,
    /// Skipping the rest of a line longer than the limit (already rejected).
    skipping: bool,
    sensor_name: String,
    rejected_lines: Vec<RejectedLine>,
}

impl LineProtocolDecoder {
    pub fn new(mapping: LineProtocolMapping, precision: Precision, now_micros: i64) -> Self {
        LineProtocolDecoder {
            mapping,
            precision,
            now_micros,
            pending: Vec::new(),
            next_line: 1,
            skipping: false,
            sensor_name: String::new(),
            rejected_lines: Vec::new(),
        }
    }

    /// Parses the complete lines `chunk` finishes; keeps the incomplete tail for the next chunk.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BodyDecoder) {
        let mut chunk = chunk;
        if self.skipping {
            match memchr::memchr(b'\n', chunk) {
                None => return,
                Some(end) => {
                    self.skipping = false;
                    self.next_line += 1;
                    chunk = &chunk[end + 1..];
                }
            }
        }
        self.pending.extend_from_slice(chunk);
        let Some(last_newline) = memchr::memrchr(b'\n', &self.pending) else {
            self.check_length(out);
            return;
        };
        let complete = self.pending[..=last_newline].to_vec();
        let tail = self.parse(&complete, false, out);
        self.pending.drain(..tail);
        self.check_length(out);
    }

    /// Parses what is left at the end of the body.
    pub fn finish(&mut self, out: &mut BodyDecoder) {
        if !self.skipping && !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.parse(&rest, true, out);
        }
    }

    /// The rejected lines' texts (at most as many as the decoder reports errors for).
    pub fn rejected_lines(&self) -> &[RejectedLine] {
        &self.rejected_lines
    }

    /// The rejected lines' texts, taken (for the answer).
    pub fn take_rejected_lines(&mut self) -> Vec<RejectedLine> {
        std::mem::take(&mut self.rejected_lines)
    }

    /// An incomplete line longer than the limit is rejected now and the rest of it skipped.
    fn check_length(&mut self, out: &mut BodyDecoder) {
        let max = out.limits().max_line_bytes;
        if self.pending.len() > max {
            let line = self.next_line;
            self.note_rejected(line, &self.pending.clone(), out);
            out.reject(line, LineError::too_long(self.pending.len() as u64, max), &self.pending);
            self.pending.clear();
            self.skipping = true;
        }
    }

    /// Parses the lines of `bytes` (starting at a line's start); returns how many bytes were consumed (all at the
    /// end of the body; otherwise up to the end of the last complete line).
    fn parse(&mut self, bytes: &[u8], at_end: bool, out: &mut BodyDecoder) -> usize {
        // Lines are UTF-8; a line that is not is rejected on its own and the lines around it are still read.
        let mut start = 0;
        while start < bytes.len() {
            let text = match std::str::from_utf8(&bytes[start..]) {
                Ok(text) => text,
                Err(e) => {
                    let bad = start + e.valid_up_to();
                    // The lines before the line holding the bad byte are fine: parse them, then reject that line.
                    let line_start = memchr::memrchr(b'\n', &bytes[start..bad]).map_or(start, |i| start + i + 1);
                    let valid = std::str::from_utf8(&bytes[start..line_start]).expect("checked above");
                    self.parse_text(valid, true, out);
                    let line_end = memchr::memchr(b'\n', &bytes[bad..]).map_or(bytes.len(), |i| bad + i + 1);
                    if line_end == bytes.len() && !at_end && bytes[line_end - 1] != b'\n' {
                        return line_start;
                    }
                    let line = self.next_line;
                    self.note_rejected(line, &bytes[line_start..line_end], out);
                    out.reject(
                        line,
                        LineError::undecodable(format!(
                            "invalid UTF-8 at column {} (lines must be UTF-8)",
                            bad - line_start + 1
                        )),
                        &bytes[line_start..line_end],
                    );
                    self.next_line += 1;
                    start = line_end;
                    continue;
                }
            };
            let consumed = self.parse_text(text, at_end, out);
            return start + consumed;
        }
        bytes.len()
    }

    /// Parses the lines of `text`; unless `at_end`, the last piece the splitter gives is an incomplete line, left
    /// unparsed. Returns the bytes consumed.
    fn parse_text(&mut self, text: &str, at_end: bool, out: &mut BodyDecoder) -> usize {
        let mut pieces = influxdb_line_protocol::split_lines(text).peekable();
        let mut consumed = 0;
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            if last && !at_end {
                break;
            }
            // The splitter drops the newline that ended the piece.
            consumed = (consumed + piece.len() + 1).min(text.len());
            if last && piece.is_empty() {
                break;
            }
            let line = self.next_line;
            self.next_line += 1;
            let max = out.limits().max_line_bytes;
            if piece.len() > max {
                self.note_rejected(line, piece.as_bytes(), out);
                out.reject(line, LineError::too_long(piece.len() as u64, max), piece.as_bytes());
                continue;
            }
            self.line(line, piece, out);
        }
        consumed
    }

    fn line(&mut self, line: u64, text: &str, out: &mut BodyDecoder) {
        let parsed = match influxdb_line_protocol::parse_lines(text).next() {
            None => return, // blank or a comment
            Some(Ok(parsed)) => parsed,
            Some(Err(e)) => {
                self.note_rejected(line, text.as_bytes(), out);
                out.reject(line, LineError::undecodable(format!("invalid line protocol: {e}")), text.as_bytes());
                return;
            }
        };
        let device = self.mapping.device_tags.iter().find_map(|tag| parsed.tag_value(tag)).map(|v| v.as_str());
        let micros = match parsed.timestamp {
            None => self.now_micros,
            Some(t) => match self.precision.to_micros(t) {
                Some(micros) => micros,
                None => {
                    self.note_rejected(line, text.as_bytes(), out);
                    out.reject(
                        line,
                        LineError::invalid(format!("timestamp {t} overflows at precision {:?}", self.precision)),
                        text.as_bytes(),
                    );
                    return;
                }
            },
        };
        let measurement = parsed.series.measurement.as_str();
        for (key, value) in &parsed.field_set {
            let value = match value {
                influxdb_line_protocol::FieldValue::F64(v) => *v,
                influxdb_line_protocol::FieldValue::I64(v) => *v as f64,
                influxdb_line_protocol::FieldValue::U64(v) => *v as f64,
                influxdb_line_protocol::FieldValue::String(_) | influxdb_line_protocol::FieldValue::Boolean(_) => {
                    let kind = if matches!(value, influxdb_line_protocol::FieldValue::String(_)) {
                        "a string"
                    } else {
                        "a boolean"
                    };
                    self.note_rejected(line, text.as_bytes(), out);
                    out.reject(
                        line,
                        LineError::invalid(format!(
                            "field {:?} is {kind}: Weir stores numbers (floats and integers); the line's numeric \
                             fields are stored",
                            key.as_str()
                        )),
                        text.as_bytes(),
                    );
                    continue;
                }
            };
            let sensor = match self.mapping.sensor {
                SensorNaming::Field => key.as_str(),
                SensorNaming::MeasurementField => {
                    self.sensor_name.clear();
                    self.sensor_name.push_str(measurement);
                    self.sensor_name.push('_');
                    self.sensor_name.push_str(key.as_str());
                    &self.sensor_name
                }
            };
            let before = out.rejections().rejected;
            let fields = ReadingFields {
                sensor: Some(sensor),
                value: Some(value),
                timestamp: Some(Timestamp::Micros(micros)),
                device,
            };
            out.push_reading(line, Ok(fields), Some(text.as_bytes()));
            if out.rejections().rejected > before {
                self.note_rejected(line, text.as_bytes(), out);
            }
        }
    }

    /// Keeps `text` as line `line`'s for the answer, once per line and as many lines as errors are reported.
    fn note_rejected(&mut self, line: u64, text: &[u8], out: &BodyDecoder) {
        if self.rejected_lines.last().is_some_and(|r| r.line == line)
            || self.rejected_lines.len() >= out.limits().max_reported_errors
        {
            return;
        }
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end_matches(['\n', '\r']);
        let mut cut = text.len().min(MAX_ECHO_BYTES);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.rejected_lines.push(RejectedLine { line, text: text[..cut].to_owned() });
    }
}

#[cfg(test)]
mod tests;
