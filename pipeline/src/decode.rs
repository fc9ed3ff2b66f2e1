//! Decoding and validating one NDJSON line into a reading.
//!
//! The decoder reads the common shape of a line on a fast path of its own ([`fast_json`], which hands anything
//! unusual to serde_json and is property-tested against it), otherwise through serde_json, borrowing strings from
//! the input line (`Cow` only allocates when a string contains escapes); it checks the sensor against the
//! [`SensorSet`], interns sensor and device into the batch, and parses the RFC 3339 timestamp
//! into UTC microseconds. It never panics: any byte sequence yields either a row in the batch or a [`LineError`]
//! saying what is wrong.
//!
//! Errors come in two classes, kept apart because the replaced system reported them differently:
//! [`LineErrorKind::Undecodable`] (not a JSON object of the right shape) and [`LineErrorKind::Invalid`] (a
//! well-formed reading that fails validation: unknown sensor, missing or bad timestamp, ...).

use std::borrow::Cow;

use serde::Deserialize;

mod fast_json;

use crate::devices::{DeviceNames, Refused, SeriesLimit};
use crate::reading::{DEFAULT_DEVICE, DeviceInterner, MAX_DEVICE_BYTES, MAX_SENSORS, ReadingBatch, Row, SensorSet};

/// Microseconds since the epoch of Go's zero time, 0001-01-01T00:00:00Z, which the replaced system rejected.
const GO_ZERO_TIME_MICROS: i64 = -62_135_596_800_000_000;

/// The instants RFC 3339 can write in UTC (`0000-01-01T00:00:00Z` through `9999-12-31T23:59:59.999999Z`): an offset
/// may carry a written year 9999 past it (`9999-12-31T23:59:59-01:00`), and such a reading could be neither printed
/// as RFC 3339 nor ingested again from a dump.
pub const UTC_RANGE_MICROS: std::ops::RangeInclusive<i64> = -62_167_219_200_000_000..=253_402_300_799_999_999;

/// Which kind of rejection a line got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineErrorKind {
    /// The line is not a JSON object of the reading's shape.
    Undecodable,
    /// The line decoded but the reading is not valid.
    Invalid,
    /// The line is longer than the limit (and was not read).
    TooLong,
}

impl LineErrorKind {
    /// A short stable name, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LineErrorKind::Undecodable => "undecodable",
            LineErrorKind::Invalid => "invalid",
            LineErrorKind::TooLong => "too_long",
        }
    }
}

/// Why one line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LineError {
    pub kind: LineErrorKind,
    pub message: String,
}

impl LineError {
    /// The error for a reading that cannot be decoded at all.
    pub fn undecodable(message: impl Into<String>) -> Self {
        LineError { kind: LineErrorKind::Undecodable, message: message.into() }
    }
    /// The error for a reading that decodes but breaks a rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        LineError { kind: LineErrorKind::Invalid, message: message.into() }
    }
    /// The error for a line longer than the limit.
    pub fn too_long(len: u64, max: usize) -> Self {
        LineError {
            kind: LineErrorKind::TooLong,
            message: format!("line too long: {len} bytes, the limit is {max} bytes (--max-line-bytes)"),
        }
    }
}

/// The wire shape of a reading. Unknown fields are ignored; `null` counts as missing.
#[derive(Deserialize)]
struct WireReading<'a> {
    #[serde(borrow, default)]
    sensor: Option<Text<'a>>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(borrow, default)]
    timestamp: Option<Text<'a>>,
    #[serde(borrow, default)]
    device: Option<Text<'a>>,
}

/// A reading's fields as sent, before validation (`None`: the field is missing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReadingFields<'a> {
    pub sensor: Option<&'a str>,
    pub value: Option<f64>,
    pub timestamp: Option<Timestamp<'a>>,
    pub device: Option<&'a str>,
}

/// A reading's event time as a transport gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp<'a> {
    /// RFC 3339 text (NDJSON, gRPC).
    Rfc3339(&'a str),
    /// Microseconds since the Unix epoch, UTC, already converted from the transport's integer form (line protocol).
    Micros(i64),
}

/// A JSON string borrowed from the input, owned only when it contains escapes. (serde's own `Cow<str>` inside an
/// `Option` always allocates.)
struct Text<'a>(Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Decodes lines into a batch, against one sensor configuration and the device names this process knows.
#[derive(Debug, Clone)]
pub struct Decoder {
    sensors: SensorSet,
    /// A device name whose id another name holds is refused ([`DeviceNames`]).
    names: DeviceNames,
    /// The device of a reading that names none (`None`: [`DEFAULT_DEVICE`]).
    default_device: Option<std::sync::Arc<str>>,
    /// The devices this request may write (its API key's limit); `None`: any.
    device_limit: Option<DeviceLimit>,
}

/// The devices an API key may write: exact names, or `prefix*` patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLimit {
    /// The key's name (for the reason a line is rejected).
    pub key: std::sync::Arc<str>,
    pub patterns: std::sync::Arc<[String]>,
}

impl DeviceLimit {
    pub fn allows(&self, device: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => device.starts_with(prefix),
            None => p == device,
        })
    }
}

impl Decoder {
    /// A decoder with its own registry of device names.
    pub fn new(sensors: SensorSet) -> Self {
        Decoder { sensors, names: DeviceNames::default(), default_device: None, device_limit: None }
    }

    /// The same, giving readings that name no device to `device` instead of [`DEFAULT_DEVICE`] (an MQTT topic's
    /// device level). `device` must satisfy the rules a named device does (the caller checks it with
    /// [`check_device`]).
    pub fn with_default_device(mut self, device: &str) -> Self {
        self.default_device = Some(device.into());
        self
    }

    /// The same, rejecting readings of devices `limit` does not allow (with the key's name and the device).
    pub fn with_device_limit(mut self, limit: DeviceLimit) -> Self {
        self.device_limit = Some(limit);
        self
    }

    /// The same, sharing `names` (the process's, which the statistics also fill from the log and the archive).
    pub fn with_device_names(mut self, names: DeviceNames) -> Self {
        self.names = names;
        self
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
        // Validating UTF-8 once for the whole line is cheaper than serde_json checking each string.
        let text = std::str::from_utf8(line).map_err(|e| {
            LineError::undecodable(format!("invalid UTF-8 at column {} (lines must be UTF-8)", e.valid_up_to() + 1))
        })?;
        if let Some(fields) = fast_json::fields(text) {
            return self.validate_into(fields, batch, devices);
        }
        let wire: WireReading<'_> = serde_json::from_str(text).map_err(json_error)?;
        let fields = ReadingFields {
            sensor: wire.sensor.as_deref(),
            value: wire.value,
            timestamp: wire.timestamp.as_deref().map(Timestamp::Rfc3339),
            device: wire.device.as_deref(),
        };
        self.validate_into(fields, batch, devices)
    }

    /// Validates a reading whose fields are already apart (gRPC sends them typed) with the same rules and error
    /// texts as a line, and appends it to `batch` when valid.
    pub fn validate_into(
        &self,
        fields: ReadingFields<'_>,
        batch: &mut ReadingBatch,
        devices: &mut DeviceInterner,
    ) -> Result<(), LineError> {
        let sensor_name = fields.sensor.ok_or_else(|| LineError::invalid("missing field `sensor`"))?;
        // A sensor already in the batch passed the check; only a new one is checked.
        let sensor = devices.find_sensor(&batch.sensors, sensor_name);
        if sensor.is_none() {
            self.sensors.check(sensor_name).map_err(LineError::invalid)?;
        }
        let value = fields.value.ok_or_else(|| LineError::invalid("missing field `value`"))?;
        if !value.is_finite() {
            return Err(LineError::invalid("value is not a finite number"));
        }
        let timestamp = fields.timestamp.ok_or_else(|| LineError::invalid("missing field `timestamp`"))?;
        let micros = match timestamp {
            Timestamp::Rfc3339(text) => parse_timestamp(text)?,
            Timestamp::Micros(micros) => check_micros(micros)?,
        };
        let device = match fields.device {
            None => self.default_device.as_deref().unwrap_or(DEFAULT_DEVICE),
            Some("") => return Err(LineError::invalid("device is empty; omit the field for the default device")),
            Some(d) if d.len() > MAX_DEVICE_BYTES => {
                return Err(LineError::invalid(format!(
                    "device is {} bytes long, the limit is {MAX_DEVICE_BYTES}",
                    d.len()
                )));
            }
            Some(d) => d,
        };
        if let Some(limit) = &self.device_limit
            && !limit.allows(device)
        {
            return Err(LineError::invalid(format!(
                "the API key {} may not write device {:?} (it may write {})",
                limit.key,
                truncate(device, 64),
                limit.patterns.join(", ")
            )));
        }
        let found = devices.find(&batch.devices, device);
        let sensors = batch.sensors.len();
        // A device or series new to this batch is claimed in the process's registry (one lookup when it is stored).
        if !found.zip(sensor).is_some_and(|(d, s)| devices.has_series(d, s, sensors))
            && let Err(refused) = self.names.claim_series_of(device, sensor_name, found.is_none())
        {
            let (device, sensor) = (truncate(device, 64), truncate(sensor_name, 64));
            return Err(LineError::invalid(match refused {
                Refused::Device(taken) => format!(
                    "device {device:?} has the same 64-bit id as the device {:?}, which is already stored; two names \
                     never share data, so this one is refused: give the device another name",
                    truncate(&taken.holder, 64)
                ),
                Refused::Series(limit @ SeriesLimit::SensorIdTaken(_)) => {
                    format!("sensor {sensor:?} is refused: {limit}")
                }
                Refused::Series(limit) => format!(
                    "series limit reached: {limit}; this reading would start a new series (device {device:?}, sensor \
                     {sensor:?}): readings of stored series are still accepted"
                ),
            }));
        }
        let sensor = devices.add_sensor_if_missing(&mut batch.sensors, sensor_name, sensor).map_err(|_| {
            LineError::invalid(format!(
                "this request names more than {MAX_SENSORS} distinct sensors in one batch; send fewer per request or \
                 lower --batch-rows"
            ))
        })?;
        let device = devices.add_if_missing(&mut batch.devices, device, found);
        devices.add_series(device, sensor, batch.sensors.len());
        batch.rows.push(Row { sensor, device, micros, value });
        Ok(())
    }
}

/// Parses an RFC 3339 timestamp with any offset into microseconds since the epoch, UTC. Digits below the
/// microsecond are truncated.
pub fn parse_timestamp(text: &str) -> Result<i64, LineError> {
    let micros = match parse_common_rfc3339(text.as_bytes()) {
        Some(micros) => micros,
        None => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| {
                LineError::invalid(format!(
                    "timestamp {:?} is not RFC 3339 ({e}); expected e.g. 2026-11-22T18:25:43.511Z",
                    truncate(text, 64)
                ))
            })?
            .timestamp_micros(),
    };
    if micros == GO_ZERO_TIME_MICROS {
        return Err(LineError::invalid("timestamp is the zero time 0001-01-01T00:00:00Z"));
    }
    if !UTC_RANGE_MICROS.contains(&micros) {
        return Err(LineError::invalid(format!(
            "timestamp {:?} falls outside the years 0000 to 9999 in UTC, which RFC 3339 cannot write; send it in UTC \
             or with an offset that keeps it within those years",
            truncate(text, 64)
        )));
    }
    Ok(micros)
}

/// Checks a device name with the rules a reading's `device` gets: not empty, at most [`MAX_DEVICE_BYTES`].
pub fn check_device(device: &str) -> Result<(), LineError> {
    if device.is_empty() {
        return Err(LineError::invalid("device is empty"));
    }
    if device.len() > MAX_DEVICE_BYTES {
        return Err(LineError::invalid(format!(
            "device is {} bytes long, the limit is {MAX_DEVICE_BYTES}",
            device.len()
        )));
    }
    Ok(())
}

/// Checks an event time given as microseconds with the rules RFC 3339 text gets: not the zero time, within the
/// years 0000 to 9999.
pub fn check_micros(micros: i64) -> Result<i64, LineError> {
    if micros == GO_ZERO_TIME_MICROS {
        return Err(LineError::invalid("timestamp is the zero time 0001-01-01T00:00:00Z"));
    }
    if !UTC_RANGE_MICROS.contains(&micros) {
        return Err(LineError::invalid(format!(
            "timestamp {micros} µs since 1970 falls outside the years 0000 to 9999 in UTC; check its precision"
        )));
    }
    Ok(micros)
}

/// The fast path for what devices send almost always: `YYYY-MM-DDTHH:MM:SS`, an optional fraction, then `Z` or
/// `±HH:MM`. Anything else (lowercase `t`/`z`, leap seconds, odd forms, errors) returns `None` and goes to chrono,
/// which decides and explains; both agree wherever this accepts (a property test checks it).
fn parse_common_rfc3339(b: &[u8]) -> Option<i64> {
    #[inline(always)]
    fn digits(b: &[u8]) -> Option<i64> {
        let mut acc = 0i64;
        for &c in b {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            acc = acc * 10 + i64::from(d);
        }
        Some(acc)
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros_frac = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let kept = &frac[..n.min(6)];
        micros_frac = digits(kept)? * 10i64.pow(6 - kept.len() as u32);
        rest = &frac[n..];
    }
    let offset_secs = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros_frac)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats microseconds since the epoch as RFC 3339 in UTC, with as many fraction digits as needed (0, 3 or 6).
pub fn format_timestamp(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
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

pub(crate) fn truncate(s: &str, max: usize) -> &str {
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
        let mut b = ReadingBatch::new();
        d.decode_into(line.as_bytes(), &mut b, &mut DeviceInterner::default())?;
        Ok(b.iter().next().unwrap())
    }

    #[test]
    fn decodes_the_documented_reading() {
        let r = decode(r#"{"sensor": "speed", "value": 55.5, "timestamp": "2026-11-22T18:25:43.511Z"}"#).unwrap();
        assert_eq!(r.sensor, "speed");
        assert_eq!(r.device, DEFAULT_DEVICE);
        assert_eq!(r.value, 55.5);
        assert_eq!(format_timestamp(r.micros), "2026-11-22T18:25:43.511Z");
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
        let mut b = ReadingBatch::new();
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

    fn chrono_micros(text: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
    }

    /// Issue 16, 5: a device name whose id another stored name holds is refused per line, with both names; the
    /// holder and other devices go on as before, in the same batch.
    #[test]
    fn a_device_name_whose_id_another_holds_is_refused() {
        let names = DeviceNames::default();
        names.plant_collision("intruder", "truck-7");
        let d = Decoder::new(SensorSet::default()).with_device_names(names);
        let mut b = ReadingBatch::new();
        let mut interner = DeviceInterner::default();
        let line = |device: &str| {
            format!(r#"{{"sensor":"speed","value":1,"timestamp":"2026-11-22T18:25:43Z","device":"{device}"}}"#)
        };
        d.decode_into(line("truck-7").as_bytes(), &mut b, &mut interner).unwrap();
        let e = d.decode_into(line("intruder").as_bytes(), &mut b, &mut interner).unwrap_err();
        assert_eq!(e.kind, LineErrorKind::Invalid);
        assert!(
            e.message.contains(r#"device "intruder" has the same 64-bit id as the device "truck-7""#),
            "{}",
            e.message
        );
        d.decode_into(line("truck-8").as_bytes(), &mut b, &mut interner).unwrap();
        assert_eq!((b.len(), b.devices.len()), (2, 2));
    }

    /// Issue 20, 5: under `--sensors any` a batch builds its own sensor table; names alike but for case are two
    /// sensors; a rejected reading leaves no sensor name behind; the series limit counts sensors as it counts devices.
    #[test]
    fn the_open_set_builds_each_batchs_sensor_table_and_bounds_its_series() {
        let names = DeviceNames::default();
        names.set_max_series(3);
        let d = Decoder::new(SensorSet::any()).with_device_names(names.clone());
        let mut b = ReadingBatch::new();
        let mut interner = DeviceInterner::default();
        let line = |sensor: &str, value: &str| {
            format!(r#"{{"sensor":"{sensor}","value":{value},"timestamp":"2026-11-22T18:25:43Z","device":"d"}}"#)
        };
        for (sensor, value) in [("cpu.usage_idle", "1"), ("Speed", "2"), ("speed", "3"), ("Speed", "4")] {
            d.decode_into(line(sensor, value).as_bytes(), &mut b, &mut interner).unwrap();
        }
        let e = d.decode_into(line("new:one", "\"x\"").as_bytes(), &mut b, &mut interner).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let e = d.decode_into(line("new:one", "5").as_bytes(), &mut b, &mut interner).unwrap_err();
        assert!(e.message.contains("series limit reached") && e.message.contains("\"new:one\""), "{}", e.message);
        assert_eq!(names.sensor_name(weir_operators::SensorId::of("new:one")), None);
        let e = d.decode_into(line("a/b", "5").as_bytes(), &mut b, &mut interner).unwrap_err();
        assert!(e.message.contains("contains '/'"), "{}", e.message);
        assert_eq!(b.sensors.iter().collect::<Vec<_>>(), ["cpu.usage_idle", "Speed", "speed"]);
        let rows: Vec<(String, f64)> = b.iter().map(|r| (r.sensor, r.value)).collect();
        let want = [("cpu.usage_idle", 1.0), ("Speed", 2.0), ("speed", 3.0), ("Speed", 4.0)];
        assert_eq!(rows, want.map(|(s, v)| (s.to_owned(), v)));
    }

    /// Issue 16, 11: an offset that carries the instant past year 9999 (or before year 0000) in UTC is refused per
    /// line; the ends of the range are accepted and print back as themselves.
    #[test]
    fn timestamps_outside_the_years_rfc_3339_can_write_in_utc_are_refused() {
        for t in ["9999-12-31T23:59:59-01:00", "9999-12-31T23:30:00.5-00:31", "0000-01-01T00:00:00+00:01"] {
            let e = parse_timestamp(t).unwrap_err();
            assert!(e.message.contains("outside the years 0000 to 9999"), "{t}: {}", e.message);
        }
        for t in ["9999-12-31T23:59:59.999999Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59+01:00"] {
            let micros = parse_timestamp(t).unwrap();
            assert_eq!(
                parse_timestamp(&format_timestamp(micros)),
                Ok(micros),
                "{t} prints as {}",
                format_timestamp(micros)
            );
        }
    }

    #[test]
    fn fast_timestamp_path_matches_chrono_on_edge_cases() {
        for t in [
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999Z",
            "2000-02-29T12:00:00+14:00",
            "2100-02-28T23:59:59-12:30",
            "0001-01-01T00:00:01Z",
            "9999-12-31T23:59:59.1234567891Z",
            "2026-11-22T18:25:43.5+01:00",
        ] {
            assert_eq!(parse_common_rfc3339(t.as_bytes()), chrono_micros(t), "{t}");
        }
        for t in ["2026-02-29T00:00:00Z", "2026-11-22T24:00:00Z", "2026-11-22t18:25:43Z", "2026-11-22T18:25:43.Z"] {
            assert_eq!(parse_common_rfc3339(t.as_bytes()), None, "{t}");
        }
    }

    proptest! {
        /// The fast timestamp path and chrono agree wherever the fast path answers.
        #[test]
        fn fast_timestamp_path_agrees_with_chrono(
            y in 0u32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..25, mi in 0u32..61, s in 0u32..62,
            frac in proptest::option::of("[0-9]{1,12}"),
            off in prop_oneof![Just("Z".to_string()), (0u32..25, 0u32..61, any::<bool>()).prop_map(|(h, m, neg)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' }))],
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}{off}", frac.map(|f| format!(".{f}")).unwrap_or_default());
            if let Some(fast) = parse_common_rfc3339(text.as_bytes()) {
                prop_assert_eq!(Some(fast), chrono_micros(&text), "{}", text);
            }
            let expected = chrono_micros(&text).filter(|&m| m != GO_ZERO_TIME_MICROS && UTC_RANGE_MICROS.contains(&m));
            prop_assert_eq!(parse_timestamp(&text).ok(), expected, "{}", text);
        }

        /// Issue 16, 9: the stored value is exactly the value sent, whichever way the number is written (shortest,
        /// 17 digits, exponent), `-0.0` included.
        #[test]
        fn values_are_read_exactly(bits in any::<u64>()) {
            let value = f64::from_bits(bits);
            prop_assume!(value.is_finite());
            let d = Decoder::new(SensorSet::default());
            for text in [format!("{value:?}"), format!("{value:.17e}"), format!("{value:e}")] {
                let line = format!(r#"{{"sensor":"speed","value":{text},"timestamp":"2026-11-22T18:25:43Z"}}"#);
                let mut b = ReadingBatch::new();
                d.decode_into(line.as_bytes(), &mut b, &mut DeviceInterner::default()).unwrap();
                prop_assert_eq!(b.rows[0].value.to_bits(), bits, "{}", text);
            }
        }

        /// Any byte sequence decodes or is rejected with a reason; nothing panics.
        #[test]
        fn any_bytes_give_a_row_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let d = Decoder::new(SensorSet::default());
            let mut b = ReadingBatch::new();
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
            let mut b = ReadingBatch::new();
            let _ = d.decode_into(&line, &mut b, &mut DeviceInterner::default());
        }
    }
}
