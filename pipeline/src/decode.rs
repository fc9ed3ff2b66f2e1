//! Decoding and validating one NDJSON line into a reading.
//!
//! The decoder borrows strings from the input line (`Cow` only allocates when a string contains escapes), looks the
//! sensor up in the configured [`SensorSet`], interns the device into the batch, and parses the RFC 3339 timestamp
//! into UTC microseconds. It never panics: any byte sequence yields either a row in the batch or a [`LineError`]
//! saying what is wrong.
//!
//! Errors come in two classes, kept apart because the replaced system reported them differently:
//! [`LineErrorKind::Undecodable`] (not a JSON object of the right shape) and [`LineErrorKind::Invalid`] (a
//! well-formed reading that fails validation: unknown sensor, missing or bad timestamp, ...).

use std::borrow::Cow;

use serde::Deserialize;

use crate::reading::{DEFAULT_DEVICE, DeviceInterner, MAX_DEVICE_BYTES, ReadingBatch, Row, SensorSet};

/// Microseconds since the epoch of Go's zero time, 0001-01-01T00:00:00Z, which the replaced system rejected.
const GO_ZERO_TIME_MICROS: i64 = -62_135_596_800_000_000;

/// Which kind of rejection a line got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineErrorKind {
    /// The line is not a JSON object of the reading's shape.
    Undecodable,
    /// The line decoded but the reading is not valid.
    Invalid,
}

/// Why one line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LineError {
    pub kind: LineErrorKind,
    pub message: String,
}

impl LineError {
    fn undecodable(message: impl Into<String>) -> Self {
        LineError { kind: LineErrorKind::Undecodable, message: message.into() }
    }
    fn invalid(message: impl Into<String>) -> Self {
        LineError { kind: LineErrorKind::Invalid, message: message.into() }
    }
    /// The error for a line longer than the limit.
    pub fn too_long(len: u64, max: usize) -> Self {
        LineError::undecodable(format!("line too long: {len} bytes, the limit is {max} bytes (--max-line-bytes)"))
    }
}

/// The wire shape of a reading. Unknown fields are ignored; `null` counts as missing.
#[derive(Deserialize)]
struct WireReading<'a> {
    #[serde(borrow, default)]
    sensor: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device: Option<Cow<'a, str>>,
}

/// Decodes lines into a batch, against one sensor configuration.
#[derive(Debug, Clone)]
pub struct Decoder {
    sensors: SensorSet,
}

impl Decoder {
    pub fn new(sensors: SensorSet) -> Self {
        Decoder { sensors }
    }

    pub fn sensors(&self) -> &SensorSet {
        &self.sensors
    }

    /// Decodes one line (without its line ending) and appends the reading to `batch` when valid.
    pub fn decode_into(
        &self,
        line: &[u8],
        batch: &mut ReadingBatch,
        devices: &mut DeviceInterner,
    ) -> Result<(), LineError> {
        let wire: WireReading<'_> = serde_json::from_slice(line).map_err(json_error)?;
        let sensor_name = wire.sensor.ok_or_else(|| LineError::invalid("missing field `sensor`"))?;
        let sensor = self.sensors.index_of(&sensor_name).ok_or_else(|| {
            LineError::invalid(format!(
                "unknown sensor {:?}; configured sensors: {}",
                truncate(&sensor_name, 64),
                self.sensors.names().join(", ")
            ))
        })?;
        let value = wire.value.ok_or_else(|| LineError::invalid("missing field `value`"))?;
        if !value.is_finite() {
            return Err(LineError::invalid("value is not a finite number"));
        }
        let timestamp = wire.timestamp.ok_or_else(|| LineError::invalid("missing field `timestamp`"))?;
        let micros = parse_timestamp(&timestamp)?;
        let device = match wire.device.as_deref() {
            None => DEFAULT_DEVICE,
            Some("") => return Err(LineError::invalid("device is empty; omit the field for the default device")),
            Some(d) if d.len() > MAX_DEVICE_BYTES => {
                return Err(LineError::invalid(format!(
                    "device is {} bytes long, the limit is {MAX_DEVICE_BYTES}",
                    d.len()
                )));
            }
            Some(d) => d,
        };
        let device = devices.intern(&mut batch.devices, device);
        batch.rows.push(Row { sensor, device, micros, value });
        Ok(())
    }
}

/// Parses an RFC 3339 timestamp with any offset into microseconds since the epoch, UTC. Digits below the
/// microsecond are truncated.
pub fn parse_timestamp(text: &str) -> Result<i64, LineError> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        LineError::invalid(format!(
            "timestamp {:?} is not RFC 3339 ({e}); expected e.g. 2026-11-22T18:25:43.511Z",
            truncate(text, 64)
        ))
    })?;
    let micros = parsed.timestamp_micros();
    if micros == GO_ZERO_TIME_MICROS {
        return Err(LineError::invalid("timestamp is the zero time 0001-01-01T00:00:00Z"));
    }
    Ok(micros)
}

/// Formats microseconds since the epoch as RFC 3339 in UTC with microsecond precision.
pub fn format_timestamp(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        None => format!("(out of range: {micros} µs)"),
    }
}

fn json_error(e: serde_json::Error) -> LineError {
    let text = e.to_string();
    // serde_json appends " at line L column C"; the line is always 1 here, so keep only the column.
    let reason = text.rfind(" at line ").map_or(text.as_str(), |i| &text[..i]);
    let what = match e.classify() {
        serde_json::error::Category::Data => "not a reading",
        _ => "bad JSON",
    };
    let hint = if reason.contains("unicode code point") { " (lines must be UTF-8)" } else { "" };
    LineError::undecodable(format!("{what}: {reason}{hint} at column {}", e.column()))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(line: &str) -> Result<crate::reading::OwnedReading, LineError> {
        let d = Decoder::new(SensorSet::default());
        let mut b = ReadingBatch::new(d.sensors());
        d.decode_into(line.as_bytes(), &mut b, &mut DeviceInterner::default())?;
        Ok(b.iter().next().unwrap())
    }

    #[test]
    fn decodes_the_documented_reading() {
        let r = decode(r#"{"sensor": "speed", "value": 55.5, "timestamp": "2026-11-22T18:25:43.511Z"}"#).unwrap();
        assert_eq!(r.sensor, "speed");
        assert_eq!(r.device, DEFAULT_DEVICE);
        assert_eq!(r.value, 55.5);
        assert_eq!(format_timestamp(r.micros), "2026-11-22T18:25:43.511000Z");
    }

    #[test]
    fn offsets_are_stored_as_utc_and_unknown_fields_ignored() {
        let r = decode(r#"{"sensor":"fuel","value":3,"timestamp":"2026-11-22T20:25:43.000001+02:00","x":[1,{"y":2}],"device":"truck-7"}"#).unwrap();
        assert_eq!(format_timestamp(r.micros), "2026-11-22T18:25:43.000001Z");
        assert_eq!(r.device, "truck-7");
        assert_eq!(r.value, 3.0);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let r =
            decode(r#"{"sensor":"sp\u0065ed","value":1,"timestamp":"2026-11-22T18:25:43Z","device":"a\"b"}"#).unwrap();
        assert_eq!(r.sensor, "speed");
        assert_eq!(r.device, "a\"b");
    }

    fn err(line: &[u8]) -> LineError {
        let d = Decoder::new(SensorSet::default());
        let mut b = ReadingBatch::new(d.sensors());
        d.decode_into(line, &mut b, &mut DeviceInterner::default()).unwrap_err()
    }

    #[test]
    fn every_bad_input_class_has_a_reason() {
        use LineErrorKind::*;
        let cases: &[(&[u8], LineErrorKind, &str)] = &[
            (b"{not json", Undecodable, "bad JSON"),
            (b"[1,2]", Undecodable, "not a reading"),
            (b"\"speed\"", Undecodable, "not a reading"),
            (br#"{"sensor":1,"value":1,"timestamp":"2026-11-22T18:25:43Z"}"#, Undecodable, "invalid type"),
            (br#"{"sensor":"speed","value":"fast","timestamp":"2026-11-22T18:25:43Z"}"#, Undecodable, "invalid type"),
            (br#"{"sensor":"speed","value":1e999,"timestamp":"2026-11-22T18:25:43Z"}"#, Undecodable, "out of range"),
            (br#"{"sensor":"speed","value":NaN,"timestamp":"2026-11-22T18:25:43Z"}"#, Undecodable, "bad JSON"),
            (b"{\"sensor\":\"sp\xffd\",\"value\":1,\"timestamp\":\"2026-11-22T18:25:43Z\"}", Undecodable, "UTF-8"),
            (
                br#"{"sensor":"speed","sensor":"fuel","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#,
                Undecodable,
                "duplicate field",
            ),
            (br#"{"sensor":"warp","value":1,"timestamp":"2026-11-22T18:25:43Z"}"#, Invalid, "unknown sensor"),
            (br#"{"value":1,"timestamp":"2026-11-22T18:25:43Z"}"#, Invalid, "missing field `sensor`"),
            (br#"{"sensor":"speed","timestamp":"2026-11-22T18:25:43Z"}"#, Invalid, "missing field `value`"),
            (
                br#"{"sensor":"speed","value":null,"timestamp":"2026-11-22T18:25:43Z"}"#,
                Invalid,
                "missing field `value`",
            ),
            (br#"{"sensor":"speed","value":1}"#, Invalid, "missing field `timestamp`"),
            (br#"{"sensor":"speed","value":1,"timestamp":"yesterday"}"#, Invalid, "not RFC 3339"),
            (br#"{"sensor":"speed","value":1,"timestamp":"0001-01-01T00:00:00Z"}"#, Invalid, "zero time"),
            (
                br#"{"sensor":"speed","value":1,"timestamp":"2026-11-22T18:25:43Z","device":""}"#,
                Invalid,
                "device is empty",
            ),
        ];
        for (line, kind, needle) in cases {
            let e = err(line);
            assert_eq!(e.kind, *kind, "{}: {e}", String::from_utf8_lossy(line));
            assert!(e.message.contains(needle), "{}: {e}", String::from_utf8_lossy(line));
        }
        let long_device = format!(
            r#"{{"sensor":"speed","value":1,"timestamp":"2026-11-22T18:25:43Z","device":"{}"}}"#,
            "d".repeat(129)
        );
        assert!(err(long_device.as_bytes()).message.contains("129 bytes"));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(err(deep.as_bytes()).kind, Undecodable);
    }

    #[test]
    fn json_errors_name_the_column_not_line_one() {
        let e = err(br#"{"sensor": "speed", "value": 5x}"#);
        assert!(e.message.contains("at column 31"), "{e}");
        assert!(!e.message.contains("line 1"), "{e}");
    }

    proptest! {
        /// Any byte sequence decodes or is rejected with a reason; nothing panics.
        #[test]
        fn any_bytes_give_a_row_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let d = Decoder::new(SensorSet::default());
            let mut b = ReadingBatch::new(d.sensors());
            match d.decode_into(&bytes, &mut b, &mut DeviceInterner::default()) {
                Ok(()) => prop_assert_eq!(b.len(), 1),
                Err(e) => { prop_assert!(!e.message.is_empty()); prop_assert_eq!(b.len(), 0); }
            }
        }

        /// Mutations of a valid line never panic either.
        #[test]
        fn mutated_readings_never_panic(pos in 0usize..80, byte in any::<u8>(), cut in 0usize..80) {
            let mut line = br#"{"sensor":"speed","value":-1.5e3,"timestamp":"2026-11-22T18:25:43.5+01:00","device":"d"}"#.to_vec();
            let p = pos % line.len();
            line[p] = byte;
            line.truncate(cut.max(p));
            let d = Decoder::new(SensorSet::default());
            let mut b = ReadingBatch::new(d.sensors());
            let _ = d.decode_into(&line, &mut b, &mut DeviceInterner::default());
        }
    }
}
