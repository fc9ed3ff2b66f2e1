//! The decoder's corpus of hostile inputs (`tests/decoder-corpus/`): deep nesting, invalid and overlong UTF-8,
//! lone surrogates, NUL and control bytes, numbers and timestamps at and beyond every limit, duplicate and escaped
//! keys, non-objects, huge lines, CRLF and a BOM. None has ever crashed the decoder; they are kept so none ever does.
//! Add any input that the property tests (`proptest-regressions/`) or a user find to crash or misbehave.
//!
//! For every file, fed in chunks of 1, 7, 4 096 and all bytes at once: no panic; every non-blank line is either a
//! reading or a rejection with its line number and a reason; and the outcome does not depend on the chunking.

use std::path::PathBuf;

use weir_pipeline::decode::Decoder;
use weir_pipeline::ingest::{BodyDecoder, DecodeLimits};
use weir_pipeline::reading::SensorSet;

/// What decoding a body gave: readings as (device, sensor, micros, value bits), rejections as (line, reason).
#[derive(Debug, PartialEq)]
struct Outcome {
    readings: Vec<(String, String, i64, u64)>,
    rejections: Vec<(u64, String)>,
    rejected: u64,
}

fn decode(body: &[u8], chunk: usize) -> Outcome {
    let limits = DecodeLimits { batch_rows: 3, ..DecodeLimits::default() };
    let mut decoder = BodyDecoder::new(Decoder::new(SensorSet::default()), limits);
    let mut readings = Vec::new();
    let mut take = |batch: weir_pipeline::reading::ReadingBatch| {
        for row in &batch.rows {
            readings.push((
                batch.devices[row.device as usize].to_string(),
                batch.sensors[row.sensor as usize].to_string(),
                row.micros,
                row.value.to_bits(),
            ));
            assert!(row.value.is_finite(), "a non-finite value was accepted");
        }
    };
    for part in body.chunks(chunk.max(1)) {
        decoder.feed(part);
        while let Some(batch) = decoder.take_full_batch() {
            take(batch);
        }
    }
    decoder.finish();
    while let Some(batch) = decoder.take_batch() {
        take(batch);
    }
    let r = decoder.into_rejections();
    Outcome { readings, rejections: r.errors.into_iter().map(|e| (e.line, e.error)).collect(), rejected: r.rejected }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/decoder-corpus");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus is in {}", dir.display());
    files
}

#[test]
fn every_corpus_input_is_accounted_for_line_by_line_whatever_the_chunking() {
    for (name, body) in corpus() {
        let whole = decode(&body, body.len());
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        let non_blank = lines.iter().filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count() as u64;
        assert_eq!(whole.readings.len() as u64 + whole.rejected, non_blank, "{name}: {whole:?}");
        assert_eq!(whole.rejected, whole.rejections.len() as u64, "{name}");
        for (line, reason) in &whole.rejections {
            assert!(*line >= 1 && *line <= lines.len() as u64, "{name}: line {line}");
            assert!(!reason.is_empty(), "{name}: line {line} has no reason");
        }
        for chunk in [1, 7, 4096] {
            assert_eq!(decode(&body, chunk), whole, "{name} in chunks of {chunk}");
        }
    }
}

/// A few answers pinned down, so a change of behaviour on hostile input is a visible decision.
#[test]
fn known_corpus_answers() {
    let get = |name: &str| {
        let (_, body) = corpus().into_iter().find(|(n, _)| n == name).unwrap();
        decode(&body, 4096)
    };
    let deep = get("deep-nesting.ndjson");
    assert_eq!((deep.readings.len(), deep.rejected), (1, 1), "the nested line is too long; the next one is fine");
    let numbers = get("numbers.ndjson");
    // Accepted: 1e308, 1e-400 (rounds to 0, as any IEEE parser), -0, 1e-31 and a 30-digit integer (rounded).
    // Rejected with a reason: ±1e999, NaN, ±Infinity, +1, .5, 5., 0x10, 1_000, "1", true, null, [1], {}.
    assert_eq!(numbers.readings.len(), 5, "{numbers:?}");
    assert_eq!(numbers.rejected, 15);
    let timestamps = get("timestamps.ndjson");
    // Accepted, as RFC 3339 allows: year 0000, a leap second (read as the next second), 30 fractional digits
    // (truncated to microseconds), a space or lower-case t/z, and a JSON escape inside the text.
    assert_eq!((timestamps.readings.len(), timestamps.rejected), (6, 11), "{timestamps:?}");
    let bom = get("bom-and-crlf.ndjson");
    assert_eq!(bom.readings.len() + bom.rejected as usize, 2);
    let whitespace = get("whitespace-only.ndjson");
    // Blank lines are skipped; a vertical tab is not JSON whitespace, so that line is rejected (with its number).
    assert_eq!((whitespace.readings.len(), whitespace.rejected), (0, 1));
    assert_eq!(whitespace.rejections[0].0, 4);
}
