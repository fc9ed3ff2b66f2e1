//! Turning a request body, chunk by chunk, into batches of valid readings and a report of rejected lines.
//!
//! [`BodyDecoder`] is the synchronous heart of `POST /ingest`: it knows nothing of HTTP or the log. The server
//! feeds it body chunks as they arrive, takes a [`ReadingBatch`] whenever one is full and appends it to the WAL,
//! so memory stays bounded by one batch plus one line however large the body is — plus the report of rejected
//! lines, which is bounded in bytes ([`DecodeLimits::max_report_bytes`]): beyond it lines are only counted.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::decode::{Decoder, LineError, LineErrorKind, ReadingFields, Timestamp};
use crate::lines::{Line, LineSplitter};
use crate::reading::{DeviceInterner, ReadingBatch};
use crate::rejected::{KeptLine, head};

/// Limits that apply while decoding one body.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Longest accepted line in bytes.
    pub max_line_bytes: usize,
    /// At most this many rejected lines are described in the report (all are counted).
    pub max_reported_errors: usize,
    /// At most this many bytes of reasons and echoed lines in the report (all lines are counted).
    pub max_report_bytes: usize,
    /// A batch is ready to be taken once it holds this many readings.
    pub batch_rows: usize,
}

/// The longest reason one rejected line gets in a report; longer ones (naming a long value) are cut.
pub const MAX_REASON_BYTES: usize = 512;

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_line_bytes: 64 << 10,
            max_reported_errors: 10_000,
            max_report_bytes: 1 << 20,
            batch_rows: 8192,
        }
    }
}

/// One rejected line: its 1-based number and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineReport {
    pub line: u64,
    pub error: String,
}

/// What was rejected in a body.
#[derive(Debug, Default, Serialize)]
pub struct Rejections {
    /// Readings that decoded but failed validation, as sent.
    pub invalid: Vec<Box<RawValue>>,
    /// Every rejected line (up to the report limit) with its reason.
    pub errors: Vec<LineReport>,
    /// Number of rejected lines, including those beyond the report limit.
    pub rejected: u64,
    /// Whether rejected lines went undescribed (beyond `--max-reported-errors` or `--max-report-bytes`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Bytes of reasons and echoed lines in the report so far.
    #[serde(skip)]
    pub report_bytes: usize,
    /// `rejected`, split by reason.
    #[serde(skip)]
    pub by_reason: RejectionCounts,
    /// The rejected lines kept for the record of rejected lines ([`BodyDecoder::keeping`]), in order.
    #[serde(skip)]
    pub kept: Vec<KeptLine>,
    /// Rejected lines beyond [`KeepLimits::max_lines`], not kept.
    #[serde(skip)]
    pub not_kept: u64,
}

/// Which rejected lines a decoder keeps for the record of rejected lines: the first `max_lines`, each with its
/// first `text_bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepLimits {
    pub max_lines: usize,
    pub text_bytes: usize,
}

/// Rejected lines counted by [`LineErrorKind`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RejectionCounts {
    pub undecodable: u64,
    pub invalid: u64,
    pub too_long: u64,
}

impl RejectionCounts {
    fn count(&mut self, kind: LineErrorKind) {
        match kind {
            LineErrorKind::Undecodable => self.undecodable += 1,
            LineErrorKind::Invalid => self.invalid += 1,
            LineErrorKind::TooLong => self.too_long += 1,
        }
    }

    /// `(reason, count)` for every reason, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (LineErrorKind, u64)> {
        [
            (LineErrorKind::Undecodable, self.undecodable),
            (LineErrorKind::Invalid, self.invalid),
            (LineErrorKind::TooLong, self.too_long),
        ]
        .into_iter()
    }
}

/// Decodes a body incrementally.
pub struct BodyDecoder {
    splitter: LineSplitter,
    decoder: Decoder,
    limits: DecodeLimits,
    batch: ReadingBatch,
    devices: DeviceInterner,
    rejections: Rejections,
    decoded: u64,
    /// Which rejected lines are kept for the record of rejected lines (`None`: none).
    keep: Option<KeepLimits>,
}

impl BodyDecoder {
    pub fn new(decoder: Decoder, limits: DecodeLimits) -> Self {
        BodyDecoder {
            splitter: LineSplitter::new(limits.max_line_bytes),
            batch: ReadingBatch::new(),
            decoder,
            limits,
            devices: DeviceInterner::default(),
            rejections: Rejections::default(),
            decoded: 0,
            keep: None,
        }
    }

    /// Keeps the first rejected lines, with their first bytes, for the record of rejected lines
    /// ([`Rejections::kept`]); the others are counted in [`Rejections::not_kept`].
    pub fn keeping(mut self, keep: KeepLimits) -> Self {
        self.keep = Some(keep);
        self
    }

    /// Decodes every line `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) {
        let BodyDecoder { splitter, decoder, limits, batch, devices, rejections, decoded, keep } = self;
        let mut out = Out { rejections, decoded, limits, keep: keep.as_ref() };
        splitter.feed(chunk, |n, line| handle_line(decoder, batch, devices, &mut out, n, line));
    }

    /// Ends the body, decoding a last line that has no newline.
    pub fn finish(&mut self) {
        let BodyDecoder { splitter, decoder, limits, batch, devices, rejections, decoded, keep } = self;
        let mut out = Out { rejections, decoded, limits, keep: keep.as_ref() };
        splitter.finish(|n, line| handle_line(decoder, batch, devices, &mut out, n, line));
    }

    fn out(&mut self) -> Out<'_> {
        Out {
            rejections: &mut self.rejections,
            decoded: &mut self.decoded,
            limits: &self.limits,
            keep: self.keep.as_ref(),
        }
    }

    /// Validates one reading given as fields (not as a line; gRPC sends them typed) with the same rules, counting
    /// and reporting as a line: `number` is its 1-based place in the request. `Err` is why the transport could not
    /// read the reading's fields (rejected as undecodable, with that reason). `line` is the text the reading came
    /// from, if it came from one (kept for the record of rejected lines; otherwise its fields are, as NDJSON).
    pub fn push_reading(&mut self, number: u64, fields: Result<ReadingFields<'_>, String>, line: Option<&[u8]>) {
        let (result, described) = match fields {
            Ok(fields) => (self.decoder.validate_into(fields, &mut self.batch, &mut self.devices), Some(fields)),
            Err(reason) => (Err(LineError::undecodable(reason)), None),
        };
        self.out().record(number, result.map_err(|e| (e, None)), |max| match (line, described) {
            (Some(line), _) => head(line, max).to_vec(),
            (None, Some(fields)) => describe(&fields, max),
            (None, None) => Vec::new(),
        });
    }

    /// Rejects reading or line `number` with `error` (a transport's own reasons: line protocol's parse errors,
    /// string fields), counted and reported like any rejected line; `line` is its text.
    pub fn reject(&mut self, number: u64, error: LineError, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.out().record(number, Err((error, None)), |max| head(line, max).to_vec());
    }

    /// The rejected lines kept for the record of rejected lines so far, taken, and how many were not kept.
    pub fn take_kept(&mut self) -> (Vec<KeptLine>, u64) {
        (std::mem::take(&mut self.rejections.kept), std::mem::take(&mut self.rejections.not_kept))
    }

    /// The decode limits this decoder enforces.
    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// The current batch if it has reached the batch size.
    pub fn take_full_batch(&mut self) -> Option<ReadingBatch> {
        (self.batch.len() >= self.limits.batch_rows).then(|| self.take_batch()).flatten()
    }

    /// The current batch if it holds any reading.
    pub fn take_batch(&mut self) -> Option<ReadingBatch> {
        if self.batch.is_empty() {
            return None;
        }
        self.devices.reset();
        let fresh = ReadingBatch::new();
        Some(std::mem::replace(&mut self.batch, fresh))
    }

    /// Valid readings decoded so far (taken or not).
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Lines seen so far.
    pub fn lines(&self) -> u64 {
        self.splitter.lines_seen()
    }

    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    pub fn into_rejections(self) -> Rejections {
        self.rejections
    }
}

fn handle_line(
    decoder: &Decoder,
    batch: &mut ReadingBatch,
    devices: &mut DeviceInterner,
    out: &mut Out<'_>,
    number: u64,
    line: Line<'_>,
) {
    match line {
        Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => {}
        Line::Text(text) => {
            let result = decoder.decode_into(text, batch, devices).map_err(|e| (e, Some(text)));
            out.record(number, result, |max| head(text, max).to_vec());
        }
        Line::TooLong { len, head: first } => {
            let error = LineError::too_long(len, out.limits.max_line_bytes);
            out.record(number, Err((error, None)), |max| head(first, max).to_vec());
        }
    }
}

/// A reading's fields as one NDJSON line (what is kept of a rejected reading that came without a line), at most
/// `max` bytes.
fn describe(fields: &ReadingFields<'_>, max: usize) -> Vec<u8> {
    use serde_json::Value;
    // Cut before copying: a reading's name may be as long as its message.
    let text = |s: &str| {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Value::String(s[..end].to_owned())
    };
    let mut object = serde_json::Map::new();
    if let Some(device) = fields.device {
        object.insert("device".into(), text(device));
    }
    if let Some(sensor) = fields.sensor {
        object.insert("sensor".into(), text(sensor));
    }
    if let Some(value) = fields.value {
        // JSON has no NaN or infinities: those are written as text.
        let number =
            serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number);
        object.insert("value".into(), number);
    }
    match fields.timestamp {
        Some(Timestamp::Rfc3339(t)) => {
            object.insert("timestamp".into(), text(t));
        }
        Some(Timestamp::Micros(micros)) => {
            object.insert("timestamp".into(), Value::String(crate::decode::format_timestamp(micros)));
        }
        None => {}
    }
    let bytes = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
    head(&bytes, max).to_vec()
}

/// `text` cut to at most `max` bytes (at a character boundary, marked with `…`).
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Where a decoder's verdicts go.
struct Out<'a> {
    rejections: &'a mut Rejections,
    decoded: &'a mut u64,
    limits: &'a DecodeLimits,
    keep: Option<&'a KeepLimits>,
}

impl Out<'_> {
    /// Counts a decoded reading, or records a rejected one (with its text, when it has one, among the invalid) and
    /// keeps it for the record of rejected lines with the first bytes `line(max)` gives.
    fn record(
        &mut self,
        number: u64,
        result: Result<(), (LineError, Option<&[u8]>)>,
        line: impl FnOnce(usize) -> Vec<u8>,
    ) {
        let (rejections, limits) = (&mut *self.rejections, self.limits);
        let (error, text) = match result {
            Ok(()) => {
                *self.decoded += 1;
                return;
            }
            Err(rejected) => rejected,
        };
        rejections.rejected += 1;
        rejections.by_reason.count(error.kind);
        let reason = cut(error.message, MAX_REASON_BYTES);
        if let Some(keep) = self.keep {
            if rejections.kept.len() < keep.max_lines {
                let text = line(keep.text_bytes);
                rejections.kept.push(KeptLine { line: number, kind: error.kind, error: reason.clone(), text });
            } else {
                rejections.not_kept += 1;
            }
        }
        report(rejections, limits, number, error.kind, reason, text);
    }
}

/// Describes a rejected line in the report, within its limits.
fn report(
    rejections: &mut Rejections,
    limits: &DecodeLimits,
    number: u64,
    kind: LineErrorKind,
    reason: String,
    text: Option<&[u8]>,
) {
    let echo = match (kind, text) {
        (LineErrorKind::Invalid, Some(text)) => std::str::from_utf8(text).ok().map(str::trim),
        _ => None,
    };
    // 16: the line number and the JSON around a reason, roughly.
    let cost = reason.len() + echo.map_or(0, str::len) + 16;
    if rejections.errors.len() >= limits.max_reported_errors || rejections.report_bytes + cost > limits.max_report_bytes
    {
        rejections.truncated = true;
        return;
    }
    rejections.report_bytes += cost;
    rejections.errors.push(LineReport { line: number, error: reason });
    if let Some(raw) = echo.and_then(|raw| RawValue::from_string(raw.to_owned()).ok()) {
        rejections.invalid.push(raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::SensorSet;
    use proptest::prelude::*;

    fn body_decoder(batch_rows: usize) -> BodyDecoder {
        BodyDecoder::new(
            Decoder::new(SensorSet::default()),
            DecodeLimits { max_line_bytes: 200, max_reported_errors: 3, max_report_bytes: 1 << 20, batch_rows },
        )
    }

    const GOOD: &str = r#"{"sensor":"speed","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#;

    #[test]
    fn valid_lines_are_kept_and_bad_ones_reported_by_line() {
        let body = format!(
            "{GOOD}\n\n{{bad\n{}\n{}\n{GOOD}",
            r#"{"sensor":"warp","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#,
            "x".repeat(300)
        );
        let mut d = body_decoder(100);
        d.feed(body.as_bytes());
        d.finish();
        assert_eq!(d.decoded(), 2);
        assert_eq!(d.take_batch().unwrap().len(), 2);
        let r = d.into_rejections();
        assert_eq!(r.rejected, 3);
        assert_eq!(r.errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(r.errors[2].error.contains("line too long: 300 bytes"));
        assert_eq!(r.invalid.len(), 1);
        assert!(r.invalid[0].get().contains("warp"));
        assert_eq!(r.by_reason, RejectionCounts { undecodable: 1, invalid: 1, too_long: 1 });
    }

    #[test]
    fn reports_are_capped_but_all_rejections_counted() {
        let mut d = body_decoder(100);
        d.feed("nope\n".repeat(10).as_bytes());
        let r = d.into_rejections();
        assert_eq!((r.rejected, r.errors.len()), (10, 3));
    }

    /// Issue 17, 4: 10 000 bad 64 KB lines got a 655 MB report. The report stays within its byte budget, says it is
    /// truncated, and still counts every line; a long reason is cut.
    #[test]
    fn reports_stay_within_their_byte_budget() {
        let limits = DecodeLimits {
            max_line_bytes: 70_000,
            max_reported_errors: 10_000,
            max_report_bytes: 200_000,
            batch_rows: 100,
        };
        let mut d = BodyDecoder::new(Decoder::new(SensorSet::default()), limits);
        let long_sensor = "w".repeat(60_000);
        let line = format!(r#"{{"sensor":"{long_sensor}","value":1,"timestamp":"2026-11-22T18:25:43Z"}}"#);
        for _ in 0..100 {
            d.feed(format!("{line}\n").as_bytes());
        }
        let r = d.into_rejections();
        assert_eq!(r.rejected, 100);
        assert!(r.truncated);
        assert!(r.report_bytes <= 200_000, "{}", r.report_bytes);
        let bytes = serde_json::to_vec(&r).unwrap().len();
        assert!(bytes < 210_000, "{bytes} bytes of report");
        assert!(r.errors.iter().all(|e| e.error.len() <= MAX_REASON_BYTES + 3));
    }

    #[test]
    fn full_batches_are_handed_out_and_nothing_is_lost() {
        let mut d = body_decoder(4);
        let mut taken = 0;
        for _ in 0..10 {
            d.feed(format!("{GOOD}\n").as_bytes());
            if let Some(b) = d.take_full_batch() {
                assert_eq!(b.len(), 4);
                taken += b.len();
            }
        }
        d.finish();
        taken += d.take_batch().map_or(0, |b| b.len());
        assert_eq!(taken, 10);
    }

    const KEEP: KeepLimits = KeepLimits { max_lines: 4, text_bytes: 12 };

    /// What the record of rejected lines gets: every rejected line's number, kind, reason and first bytes, up to
    /// the per-request limit; the rest counted.
    #[test]
    fn rejected_lines_are_kept_with_their_first_bytes_up_to_the_limit() {
        let mut d = body_decoder(100).keeping(KEEP);
        let body = format!("{GOOD}\n{{bad json\n{}\n{}\n", r#"{"sensor":"speed","value":1}"#, "é".repeat(150));
        d.feed(body.as_bytes());
        d.feed(b"\xff\xfe{\n");
        d.feed(b"nope\nnope again\n");
        d.finish();
        let (kept, not_kept) = d.take_kept();
        let got: Vec<_> =
            kept.iter().map(|k| (k.line, k.kind, String::from_utf8_lossy(&k.text).into_owned())).collect();
        assert_eq!(
            got,
            [
                (2, LineErrorKind::Undecodable, "{bad json".to_owned()),
                (3, LineErrorKind::Invalid, r#"{"sensor":"s"#.to_owned()),
                (4, LineErrorKind::TooLong, "éééééé".to_owned()),
                (5, LineErrorKind::Undecodable, "\u{fffd}\u{fffd}{".to_owned()),
            ]
        );
        assert!(kept[1].error.contains("timestamp"), "{}", kept[1].error);
        assert_eq!(kept[2].error, d.rejections().errors[2].error, "the reason the client got");
        assert_eq!(not_kept, 2);
        assert_eq!(d.rejections().rejected, 6, "every line is still counted");
    }

    #[test]
    fn readings_without_a_line_are_kept_as_their_fields() {
        let mut d = body_decoder(100).keeping(KeepLimits { max_lines: 10, text_bytes: 200 });
        let fields = ReadingFields {
            sensor: Some("speed"),
            value: Some(f64::NAN),
            timestamp: Some(Timestamp::Micros(0)),
            device: Some("truck\"7"),
        };
        d.push_reading(1, Ok(fields), None);
        d.push_reading(2, Err("field 3 is not a string".into()), None);
        d.push_reading(3, Ok(ReadingFields { sensor: Some("warp"), ..fields }), Some(b"cpu warp=1"));
        d.reject(4, LineError::undecodable("bad"), b"cpu x\r\n");
        let (kept, _) = d.take_kept();
        let texts: Vec<_> = kept.iter().map(|k| String::from_utf8_lossy(&k.text).into_owned()).collect();
        assert_eq!(
            texts,
            [
                r#"{"device":"truck\"7","sensor":"speed","timestamp":"1970-01-01T00:00:00Z","value":"NaN"}"#,
                "",
                "cpu warp=1",
                "cpu x"
            ]
        );
        // Without keeping, nothing is kept and nothing counted as not kept.
        let mut d = body_decoder(100);
        d.feed(b"nope\n");
        assert_eq!(d.take_kept(), (Vec::new(), 0));
    }

    proptest! {
        /// Every non-blank line is either accepted or rejected, whatever the bytes.
        #[test]
        fn every_line_is_accounted_for(lines in proptest::collection::vec(prop_oneof![
            Just(GOOD.to_string()),
            Just(String::new()),
            ".{0,300}",
        ], 0..30)) {
            let body = lines.join("\n");
            let mut d = body_decoder(5);
            d.feed(body.as_bytes());
            d.finish();
            let nonblank = body.split('\n').filter(|l| !l.trim_ascii().is_empty()).count() as u64;
            prop_assert_eq!(d.decoded() + d.rejections().rejected, nonblank);
        }
    }
}
