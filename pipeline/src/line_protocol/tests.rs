use proptest::prelude::*;

use super::*;
use crate::decode::Decoder;
use crate::ingest::DecodeLimits;
use crate::reading::{OwnedReading, SensorSet};

const NOW: i64 = 1_700_000_000_000_000;

fn decoder(limits: DecodeLimits) -> BodyDecoder {
    let sensors = SensorSet::new(["speed", "fuel", "temp", "cpu_usage"]).unwrap();
    BodyDecoder::new(Decoder::new(sensors), limits)
}

/// Readings, (line, reason) of rejections, and the rejected lines' texts, of `body` fed in `chunks`.
fn decode_in(
    body: &[u8],
    cuts: &[usize],
    mapping: LineProtocolMapping,
    precision: Precision,
    limits: DecodeLimits,
) -> (Vec<OwnedReading>, Vec<(u64, String)>, Vec<RejectedLine>) {
    let mut out = decoder(limits);
    let mut lp = LineProtocolDecoder::new(mapping, precision, NOW);
    let mut at = 0;
    for &cut in cuts.iter().chain([&body.len()]) {
        let cut = cut.clamp(at, body.len());
        lp.feed(&body[at..cut], &mut out);
        at = cut;
    }
    lp.finish(&mut out);
    out.finish();
    let mut readings = Vec::new();
    while let Some(batch) = out.take_batch() {
        readings.extend(batch.iter());
    }
    let errors = out.rejections().errors.iter().map(|e| (e.line, e.error.clone())).collect();
    (readings, errors, lp.rejected_lines().to_vec())
}

fn decode(body: &str) -> (Vec<OwnedReading>, Vec<(u64, String)>, Vec<RejectedLine>) {
    decode_in(body.as_bytes(), &[], LineProtocolMapping::default(), Precision::Nanosecond, DecodeLimits::default())
}

fn reading(device: &str, sensor: &str, value: f64, micros: i64) -> OwnedReading {
    OwnedReading { device: device.into(), sensor: sensor.into(), value, micros }
}

#[test]
fn each_numeric_field_is_a_reading_of_the_tagged_device() {
    let (readings, errors, _) = decode(
        "vehicle,device=truck-7,region=eu speed=55.5,fuel=30i 1700000000123456789\n\
         vehicle,host=edge-1 temp=21u 1700000000000000000\n\
         vehicle,host=edge-1,device=truck-8 speed=1\n\
         vehicle speed=-0.5 1700000000000001000",
    );
    assert_eq!(errors, vec![]);
    assert_eq!(
        readings,
        vec![
            reading("truck-7", "speed", 55.5, 1_700_000_000_123_456),
            reading("truck-7", "fuel", 30.0, 1_700_000_000_123_456),
            reading("edge-1", "temp", 21.0, 1_700_000_000_000_000),
            reading("truck-8", "speed", 1.0, NOW),
            reading("default", "speed", -0.5, 1_700_000_000_000_001),
        ]
    );
}

#[test]
fn sensors_can_be_named_measurement_underscore_field() {
    let mapping = LineProtocolMapping { sensor: SensorNaming::MeasurementField, device_tags: vec!["node".into()] };
    let (readings, errors, _) = decode_in(
        b"cpu,node=a,device=ignored usage=12.5 1\nmem,node=a usage=3 1\n",
        &[],
        mapping,
        Precision::Second,
        DecodeLimits::default(),
    );
    assert_eq!(readings, vec![reading("a", "cpu_usage", 12.5, 1_000_000)]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, 2);
    assert!(errors[0].1.contains("unknown sensor \"mem_usage\""), "{errors:?}");
}

#[test]
fn every_precision_converts_to_microseconds() {
    let cases = [
        ("n", 1_700_000_000_123_456_789, 1_700_000_000_123_456),
        ("u", 1_700_000_000_123_456, 1_700_000_000_123_456),
        ("ms", 1_700_000_000_123, 1_700_000_000_123_000),
        ("s", 1_700_000_000, 1_700_000_000_000_000),
        ("m", 28_333_333, 1_699_999_980_000_000),
        ("h", 472_222, 1_699_999_200_000_000),
        ("auto", 1_700_000_000, 1_700_000_000_000_000),
        ("auto", 1_700_000_000_123, 1_700_000_000_123_000),
        ("auto", 1_700_000_000_123_456, 1_700_000_000_123_456),
        ("auto", 1_700_000_000_123_456_789, 1_700_000_000_123_456),
        ("n", -1, -1),
    ];
    for (name, t, micros) in cases {
        let precision: Precision = name.parse().unwrap();
        assert_eq!(precision.to_micros(t), Some(micros), "{name} {t}");
    }
    assert!("fortnight".parse::<Precision>().unwrap_err().contains("ns, us, ms, s"));
    assert_eq!(Precision::Hour.to_micros(i64::MAX), None);
    let (readings, errors, _) =
        decode_in(b"m speed=1 9223372036854775807\n", &[], Default::default(), Precision::Second, Default::default());
    assert!(readings.is_empty());
    assert!(errors[0].1.contains("overflows"), "{errors:?}");
}

#[test]
fn strings_booleans_and_malformed_lines_are_rejected_by_line_and_the_rest_is_stored() {
    let (readings, errors, lines) = decode(
        "# a comment\n\
         \n\
         m,device=a speed=1,status=\"ok\",on=true,fuel=2 1000\n\
         this is not line protocol\n\
         m,device=a speed= 1000\n\
         m,device=a nosuch=3 1000\n\
         m,device=a speed=4 1000\n",
    );
    assert_eq!(
        readings,
        vec![reading("a", "speed", 1.0, 1), reading("a", "fuel", 2.0, 1), reading("a", "speed", 4.0, 1)]
    );
    let lines_of: Vec<u64> = errors.iter().map(|e| e.0).collect();
    assert_eq!(lines_of, vec![3, 3, 4, 5, 6], "{errors:?}");
    assert!(errors[0].1.contains("field \"status\" is a string"), "{errors:?}");
    assert!(errors[1].1.contains("field \"on\" is a boolean"), "{errors:?}");
    assert!(errors[2].1.starts_with("invalid line protocol"), "{errors:?}");
    assert!(errors[4].1.contains("unknown sensor \"nosuch\""), "{errors:?}");
    assert_eq!(lines.iter().map(|l| l.line).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
    assert_eq!(lines[1].text, "this is not line protocol");
}

#[test]
fn a_line_longer_than_the_limit_is_rejected_and_the_next_lines_are_read() {
    let limits = DecodeLimits { max_line_bytes: 64, ..DecodeLimits::default() };
    let long = format!("m,device=a speed=1,{}=2 1000", "x".repeat(200));
    let body = format!("m,device=a speed=1 1000\n{long}\nm,device=a speed=3 1000\n");
    for step in [1, 7, 64, 1000] {
        let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
        let (readings, errors, _) =
            decode_in(body.as_bytes(), &cuts, Default::default(), Precision::Nanosecond, limits.clone());
        assert_eq!(readings, vec![reading("a", "speed", 1.0, 1), reading("a", "speed", 3.0, 1)], "step {step}");
        assert_eq!(errors.len(), 1, "step {step}: {errors:?}");
        assert_eq!(errors[0].0, 2);
        assert!(errors[0].1.contains("--max-line-bytes"), "{errors:?}");
    }
}

#[test]
fn a_line_that_is_not_utf8_is_rejected_alone() {
    let body = b"m,device=a speed=1 1000\nm,device=\xff\xfe speed=2 1000\nm,device=a speed=3 1000\n";
    let (readings, errors, lines) =
        decode_in(body, &[30], Default::default(), Precision::Nanosecond, Default::default());
    assert_eq!(readings, vec![reading("a", "speed", 1.0, 1), reading("a", "speed", 3.0, 1)]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 2);
    assert!(errors[0].1.contains("UTF-8"), "{errors:?}");
    assert_eq!(lines[0].line, 2);
}

/// Lines built from pieces chosen to break a chunked parser: quoted strings holding newlines and escapes,
/// multi-byte characters, comments, blank lines, bad lines, bad bytes.
fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0u8..3, -1e6f64..1e6, 0i64..2_000_000_000)
            .prop_map(|(d, v, t)| { format!("m,device=d{d} speed={v},fuel={}i {t}", t % 1000).into_bytes() }),
        Just(b"m,device=\xc3\xa9t\xc3\xa9 temp=1.5 5".to_vec()),
        Just(b"m,device=q status=\"line one\nline two\",speed=2 7".to_vec()),
        Just(b"m,device=e\\ x speed=3,note=\"a \\\" quote\" 8".to_vec()),
        Just(b"# comment speed=1".to_vec()),
        Just(Vec::new()),
        Just(b"garbage without fields".to_vec()),
        Just(b"m,device=bad\xff speed=1 9".to_vec()),
        Just(b"m speed=1e400 1".to_vec()),
    ]
}

proptest! {
    /// However the body is cut into chunks, the readings and the rejections are those of the whole body at once.
    #[test]
    fn chunks_never_change_what_a_body_gives(
        lines in prop::collection::vec(line_strategy(), 0..20),
        cuts in prop::collection::vec(0usize..2000, 0..12),
        crlf in any::<bool>(),
    ) {
        let separator: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let body = lines.join(separator);
        let mut cuts = cuts;
        cuts.sort_unstable();
        let whole = decode_in(&body, &[], Default::default(), Precision::Nanosecond, Default::default());
        let chunked = decode_in(&body, &cuts, Default::default(), Precision::Nanosecond, Default::default());
        prop_assert_eq!(&whole, &chunked);
        let every_byte: Vec<usize> = (1..body.len()).collect();
        let bytewise = decode_in(&body, &every_byte, Default::default(), Precision::Nanosecond, Default::default());
        prop_assert_eq!(&whole, &bytewise);
    }
}
