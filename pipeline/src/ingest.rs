//! Turning a request body, chunk by chunk, into batches of valid readings and a report of rejected lines.
//!
//! [`BodyDecoder`] is the synchronous heart of `POST /ingest`: it knows nothing of HTTP or the log. The server
//! feeds it body chunks as they arrive, takes a [`ReadingBatch`] whenever one is full and appends it to the WAL,
//! so memory stays bounded by one batch plus one line however large the body is.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::decode::{Decoder, LineError, LineErrorKind, ReadingFields};
use crate::lines::{Line, LineSplitter};
use crate::reading::{DeviceInterner, ReadingBatch};

/// Limits that apply while decoding one body.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Longest accepted line in bytes.
    pub max_line_bytes: usize,
    /// At most this many rejected lines are described in the report (all are counted).
    pub max_reported_errors: usize,
    /// A batch is ready to be taken once it holds this many readings.
    pub batch_rows: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_line_bytes: 64 << 10, max_reported_errors: 10_000, batch_rows: 8192 }
    }
}

/// One rejected line: its 1-based number and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// `rejected`, split by reason.
    #[serde(skip)]
    pub by_reason: RejectionCounts,
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
}

impl BodyDecoder {
    pub fn new(decoder: Decoder, limits: DecodeLimits) -> Self {
        BodyDecoder {
            splitter: LineSplitter::new(limits.max_line_bytes),
            batch: ReadingBatch::new(decoder.sensors()),
            decoder,
            limits,
            devices: DeviceInterner::default(),
            rejections: Rejections::default(),
            decoded: 0,
        }
    }

    /// Decodes every line `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) {
        let BodyDecoder { splitter, decoder, limits, batch, devices, rejections, decoded } = self;
        splitter.feed(chunk, |n, line| handle_line(decoder, limits, batch, devices, rejections, decoded, n, line));
    }

    /// Ends the body, decoding a last line that has no newline.
    pub fn finish(&mut self) {
        let BodyDecoder { splitter, decoder, limits, batch, devices, rejections, decoded } = self;
        splitter.finish(|n, line| handle_line(decoder, limits, batch, devices, rejections, decoded, n, line));
    }

    /// Validates one reading given as fields (not as a line; gRPC sends them typed) with the same rules, counting
    /// and reporting as a line: `number` is its 1-based place in the request.
    pub fn push_reading(&mut self, number: u64, fields: ReadingFields<'_>) {
        let result = self.decoder.validate_into(fields, &mut self.batch, &mut self.devices);
        record(&mut self.rejections, &mut self.decoded, &self.limits, number, result.map_err(|e| (e, None)));
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
        let fresh = ReadingBatch::new(self.decoder.sensors());
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

#[allow(clippy::too_many_arguments)]
fn handle_line(
    decoder: &Decoder,
    limits: &DecodeLimits,
    batch: &mut ReadingBatch,
    devices: &mut DeviceInterner,
    rejections: &mut Rejections,
    decoded: &mut u64,
    number: u64,
    line: Line<'_>,
) {
    let result = match line {
        Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => return,
        Line::Text(text) => decoder.decode_into(text, batch, devices).map_err(|e| (e, Some(text))),
        Line::TooLong { len } => Err((LineError::too_long(len, limits.max_line_bytes), None)),
    };
    record(rejections, decoded, limits, number, result);
}

/// Counts a decoded reading, or records a rejected one (with its text, when it has one, among the invalid).
fn record(
    rejections: &mut Rejections,
    decoded: &mut u64,
    limits: &DecodeLimits,
    number: u64,
    result: Result<(), (LineError, Option<&[u8]>)>,
) {
    match result {
        Ok(()) => *decoded += 1,
        Err((error, text)) => {
            rejections.rejected += 1;
            rejections.by_reason.count(error.kind);
            if rejections.errors.len() < limits.max_reported_errors {
                rejections.errors.push(LineReport { line: number, error: error.message });
                if error.kind == LineErrorKind::Invalid
                    && let Some(raw) = text.and_then(|t| std::str::from_utf8(t).ok())
                    && let Ok(raw) = RawValue::from_string(raw.trim().to_owned())
                {
                    rejections.invalid.push(raw);
                }
            }
        }
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
            DecodeLimits { max_line_bytes: 200, max_reported_errors: 3, batch_rows },
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
