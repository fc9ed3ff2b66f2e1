//! The fast path for the JSON devices send almost always: one flat object whose keys are `sensor`, `value`,
//! `timestamp` and `device` (each at most once, in any order, with any JSON whitespace), strings without escapes or
//! control characters, `value` a JSON number that a finite `f64` holds.
//!
//! Anything else — an escape, another key, `null`, a nested value, a repeated key, a number JSON does not allow or
//! `f64` cannot hold, anything after the object — answers `None`, and serde_json decides, with its own error
//! messages. So the fast path never rejects a line and never accepts one serde_json would not; a property test
//! checks that wherever it answers, it answers what serde_json does.
//!
//! Why: in a profile at 400 k readings/s, serde_json's derived visitor (`deserialize_struct`, `skip_to_escape`,
//! `Option` and string visitors) was about 7 % of the server's CPU. Numbers are still parsed by the standard
//! library's correctly rounded `f64` parser, as serde_json's `float_roundtrip` does.

use super::{ReadingFields, Timestamp};

/// The fields of `line` when it has the common shape (see the module documentation), else `None`.
pub(super) fn fields(line: &str) -> Option<ReadingFields<'_>> {
    let b = line.as_bytes();
    let mut i = skip_whitespace(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_whitespace(b, i + 1);
    let mut out = ReadingFields::default();
    let mut seen = 0u8;
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (key, next) = string(line, i)?;
            i = skip_whitespace(b, next);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_whitespace(b, i + 1);
            let bit = match key {
                "sensor" => 1,
                "value" => 2,
                "timestamp" => 4,
                "device" => 8,
                _ => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            if bit == 2 {
                let (value, next) = number(line, i)?;
                out.value = Some(value);
                i = next;
            } else {
                let (text, next) = string(line, i)?;
                match bit {
                    1 => out.sensor = Some(text),
                    4 => out.timestamp = Some(Timestamp::Rfc3339(text)),
                    _ => out.device = Some(text),
                }
                i = next;
            }
            i = skip_whitespace(b, i);
            match b.get(i) {
                Some(b',') => i = skip_whitespace(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_whitespace(b, i) == b.len()).then_some(out)
}

fn skip_whitespace(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// A string starting at `i` (its opening quote) without escapes or control characters, and where it ends.
fn string(line: &str, i: usize) -> Option<(&str, usize)> {
    let b = line.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let len = b[i + 1..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    let end = i + 1 + len;
    // The line is UTF-8 and `"` is ASCII, so both ends are character boundaries.
    (b[end] == b'"').then(|| (&line[i + 1..end], end + 1))
}

/// A JSON number starting at `i` (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`) that a finite `f64` holds,
/// and where it ends.
fn number(line: &str, start: usize) -> Option<(f64, usize)> {
    let b = line.as_bytes();
    let digits = |mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    let value: f64 = line[start..i].parse().ok()?;
    value.is_finite().then_some((value, i))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::WireReading;

    /// Fields as owned values, the value as its bits (so that `-0.0` and `0.0` differ).
    type Owned = (Option<String>, Option<u64>, Option<String>, Option<String>);

    fn owned(f: ReadingFields<'_>) -> Owned {
        let timestamp = f.timestamp.map(|t| match t {
            Timestamp::Rfc3339(text) => text.to_owned(),
            Timestamp::Micros(m) => m.to_string(),
        });
        (f.sensor.map(str::to_owned), f.value.map(f64::to_bits), timestamp, f.device.map(str::to_owned))
    }

    /// What serde_json makes of `line` (`None`: it refuses it).
    fn by_serde(line: &str) -> Option<Owned> {
        let wire: WireReading<'_> = serde_json::from_str(line).ok()?;
        let text = |t: &Option<crate::decode::Text<'_>>| t.as_ref().map(|t| t.to_string());
        Some((text(&wire.sensor), wire.value.map(f64::to_bits), text(&wire.timestamp), text(&wire.device)))
    }

    #[test]
    fn the_common_shapes_take_the_fast_path() {
        for line in [
            r#"{"sensor": "speed", "value": 55.5, "timestamp": "2012-04-23T18:25:43.511Z"}"#,
            r#"{"device":"truck-7","timestamp":"2026-11-22T18:25:43Z","value":-1.5e3,"sensor":"fuel"}"#,
            "\t{ \"sensor\" : \"a\" ,\"value\":0 } ",
            r#"{"sensor":"speed","value":-0.0,"timestamp":"x","device":"wetter-ü"}"#,
            "{}",
        ] {
            let fast = fields(line).unwrap_or_else(|| panic!("not on the fast path: {line}"));
            assert_eq!(Some(owned(fast)), by_serde(line), "{line}");
        }
        for line in [
            r#"{"sensor":"sp\u0065ed","value":1}"#,
            r#"{"sensor":"speed","value":1,"x":2}"#,
            r#"{"sensor":"speed","value":null}"#,
            r#"{"sensor":"speed","sensor":"fuel"}"#,
            r#"{"sensor":"speed","value":1e999}"#,
            r#"{"sensor":"speed","value":01}"#,
            r#"{"sensor":"speed","value":1.}"#,
            r#"{"sensor":"speed","value":+1}"#,
            r#"{"sensor":"speed","value":5x}"#,
            r#"{"sensor":"speed"} x"#,
            r#"{"sensor":"speed",}"#,
            "{\"sensor\":\"a\tb\"}",
        ] {
            assert_eq!(fields(line), None, "{line}");
        }
    }

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("\t".to_owned()),
            Just("null".to_owned()),
            Just("[1]".to_owned()),
            prop_oneof![Just("sensor"), Just("value"), Just("timestamp"), Just("device"), Just("x")]
                .prop_map(|k| format!("\"{k}\"")),
            "[a-z0-9 ü\\\\\"\\t-]{0,6}".prop_map(|s| format!("\"{s}\"")),
            "-?[0-9]{0,4}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{0,3})?",
            any::<f64>().prop_map(|v| format!("{v:?}")),
        ]
    }

    fn object() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            "\"[a-zA-Z0-9 ü:.-]{0,8}\"",
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
            any::<f64>().prop_map(|v| format!("{v:?}")),
            Just("null".to_owned()),
        ];
        let key = prop_oneof![Just("sensor"), Just("value"), Just("timestamp"), Just("device")];
        let space = prop_oneof![Just(""), Just(" "), Just("\t"), Just(" \r")];
        prop::collection::vec((space.clone(), key, space.clone(), value, space), 0..6).prop_map(|members| {
            let inner: Vec<String> = members.iter().map(|(a, k, b, v, c)| format!("{a}\"{k}\"{b}:{c}{v}{a}")).collect();
            format!("{{{}}}", inner.join(","))
        })
    }

    proptest! {
        /// Wherever the fast path answers, serde_json answers the same; on well-formed objects of the four keys
        /// it answers unless a value is `null`, a key repeats or a number does not fit.
        #[test]
        fn the_fast_path_agrees_with_serde_json(
            line in prop_oneof![object(), prop::collection::vec(piece(), 0..12).prop_map(|p| p.concat())],
        ) {
            if let Some(fast) = fields(&line) {
                prop_assert_eq!(Some(owned(fast)), by_serde(&line), "{}", line);
            }
        }
    }
}
