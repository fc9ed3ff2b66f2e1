//! Completeness: how much of what a sensor should have reported did arrive, and where the holes are.
//!
//! Why declared and not learned: an operator knows that `speed` is sent every second; a median gap learned from the
//! data moves with the data (a device that fell to one reading a minute would soon "expect" one a minute, and look
//! complete), and under late and out-of-order arrival it is not even stable. So each sensor gets an expected
//! interval (`--expected-interval speed=1s,fuel=10s,*=1m`, `*` for every sensor not named), and a sensor without
//! one has no completeness (`null`), rather than a guess.
//!
//! The algebra, in one place for every reader (series, gRPC, SQL, the dashboard):
//!
//! - `expected = elapsed / interval`, where `elapsed` is the part of the window `[start, end)` before `now` (the
//!   wall clock): a window still in progress expects only what its elapsed part should hold, so the current hour
//!   is 100 % complete so far, not 20 %. A window that has not begun (a device clock ahead of ours) expects none.
//! - `completeness = min(1, count / expected)`, and none where nothing is expected. Capped because a sensor that
//!   reports faster than declared is not more than complete.
//! - Over several series (a device's hour on the dashboard): `Σ min(countᵢ, expectedᵢ) / Σ expectedᵢ`, the share
//!   of all expected readings that arrived, so a 1 Hz sensor weighs as much as its readings.
//!
//! Holes ([`holes`]): the spans longer than a threshold between consecutive readings of a series. They come from the
//! 1-minute windows' first and last timestamps, not from the readings: any two readings at least a minute apart
//! lie in different minutes, so for thresholds of a minute or more a hole is exactly the span from a minute's last
//! reading to the next non-empty minute's first one (a property test checks this against the raw timestamps). One
//! source, the windows, which the live statistics and the rollups keep for as long as the data lives.

use std::collections::BTreeMap;

use crate::Width;

/// Each sensor's expected interval between readings, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ExpectedIntervals {
    per_sensor: BTreeMap<String, i64>,
    /// The interval of every sensor not named (`*=`).
    others: Option<i64>,
}

/// A mistake in an `--expected-interval` list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpectedIntervalError {
    #[error("{0:?} is not sensor=interval: write e.g. speed=1s,fuel=10s,*=1m")]
    NotAPair(String),
    #[error("the interval of {0:?} is not positive: an interval is at least 1 µs")]
    NotPositive(String),
    #[error("{0:?} is named twice")]
    Twice(String),
}

impl ExpectedIntervals {
    /// The intervals of `pairs` (sensor, interval in µs); the sensor `*` stands for every sensor not named.
    pub fn new(pairs: impl IntoIterator<Item = (String, i64)>) -> Result<Self, ExpectedIntervalError> {
        let mut intervals = ExpectedIntervals::default();
        for (sensor, micros) in pairs {
            if micros <= 0 {
                return Err(ExpectedIntervalError::NotPositive(sensor));
            }
            let twice = if sensor == "*" {
                intervals.others.replace(micros).is_some()
            } else {
                intervals.per_sensor.insert(sensor.clone(), micros).is_some()
            };
            if twice {
                return Err(ExpectedIntervalError::Twice(sensor));
            }
        }
        Ok(intervals)
    }

    /// Whether no sensor has an interval.
    pub fn is_empty(&self) -> bool {
        self.per_sensor.is_empty() && self.others.is_none()
    }

    /// `sensor`'s expected interval in microseconds, if it has one.
    pub fn interval_of(&self, sensor: &str) -> Option<i64> {
        self.per_sensor.get(sensor).copied().or(self.others)
    }

    /// How many readings of `sensor` the window of `width` starting at `start` should hold by `now` (µs).
    pub fn expected(&self, sensor: &str, width: Width, start: i64, now: i64) -> Option<f64> {
        let interval = self.interval_of(sensor)?;
        let end = start.saturating_add(width.micros()).min(now);
        let elapsed = end.saturating_sub(start);
        (elapsed > 0).then(|| elapsed as f64 / interval as f64)
    }
}

/// `min(1, count / expected)`; none where nothing is expected.
pub fn completeness(count: i64, expected: Option<f64>) -> Option<f64> {
    let expected = expected.filter(|e| *e > 0.0)?;
    Some((count as f64 / expected).min(1.0))
}

/// The completeness of several series' windows together: `Σ min(countᵢ, expectedᵢ) / Σ expectedᵢ` over the
/// windows that expect something; none if none does.
pub fn combined_completeness(windows: impl IntoIterator<Item = (i64, Option<f64>)>) -> Option<f64> {
    let (arrived, expected) = windows
        .into_iter()
        .filter_map(|(count, expected)| expected.filter(|e| *e > 0.0).map(|e| ((count as f64).min(e), e)))
        .fold((0.0, 0.0), |(a, e), (ai, ei)| (a + ai, e + ei));
    (expected > 0.0).then(|| (arrived / expected).min(1.0))
}

/// A span without readings of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// The last reading before the hole, or the start of the span looked at when none came before.
    pub start: i64,
    /// The first reading after the hole, or the end of the span looked at when none came after.
    pub end: i64,
    /// Whether a side of the hole is the edge of the span looked at rather than a reading.
    pub open: bool,
}

/// The holes of at least `min` µs in `[from, to)` of a series whose non-empty 1-minute windows, in time order, read
/// `(first timestamp, last timestamp)`. `min` is at least a minute (see the module doc). A side of `[from, to)` is
/// a hole's edge only when `edges` says it is a bound the user chose (an unbounded side has no hole).
pub fn holes(
    minutes: impl IntoIterator<Item = (i64, i64)>,
    (from, to): (i64, i64),
    edges: (bool, bool),
    min: i64,
) -> Vec<Hole> {
    debug_assert!(min >= Width::Minute.micros());
    let mut holes = Vec::new();
    let mut previous: Option<i64> = None;
    for (first, last) in minutes {
        match previous {
            Some(p) if first - p >= min => holes.push(Hole { start: p, end: first, open: false }),
            None if edges.0 && first - from >= min => holes.push(Hole { start: from, end: first, open: true }),
            _ => {}
        }
        previous = Some(last);
    }
    match previous {
        Some(p) if edges.1 && to - p >= min => holes.push(Hole { start: p, end: to, open: true }),
        None if edges.0 && edges.1 && to - from >= min => holes.push(Hole { start: from, end: to, open: true }),
        _ => {}
    }
    holes
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECOND: i64 = 1_000_000;
    const MINUTE: i64 = 60 * SECOND;

    #[test]
    fn intervals_name_sensors_and_star_the_rest() {
        let i = ExpectedIntervals::new([("speed".to_owned(), SECOND), ("*".to_owned(), MINUTE)]).unwrap();
        assert_eq!(i.interval_of("speed"), Some(SECOND));
        assert_eq!(i.interval_of("fuel"), Some(MINUTE));
        assert_eq!(ExpectedIntervals::default().interval_of("speed"), None);
        assert!(matches!(
            ExpectedIntervals::new([("a".to_owned(), 1), ("a".to_owned(), 2)]),
            Err(ExpectedIntervalError::Twice(_))
        ));
        assert!(matches!(ExpectedIntervals::new([("a".to_owned(), 0)]), Err(ExpectedIntervalError::NotPositive(_))));
    }

    #[test]
    fn a_window_in_progress_expects_its_elapsed_part() {
        let i = ExpectedIntervals::new([("speed".to_owned(), SECOND)]).unwrap();
        let hour = Width::Hour.micros();
        assert_eq!(i.expected("speed", Width::Hour, 0, 10 * hour), Some(3600.0));
        assert_eq!(i.expected("speed", Width::Hour, 0, 15 * MINUTE), Some(900.0));
        assert_eq!(i.expected("speed", Width::Hour, hour, 0), None, "a window not begun expects nothing");
        assert_eq!(i.expected("fuel", Width::Hour, 0, hour), None);
        assert_eq!(completeness(900, Some(900.0)), Some(1.0));
        assert_eq!(completeness(1800, Some(900.0)), Some(1.0), "capped at 1");
        assert_eq!(completeness(450, Some(900.0)), Some(0.5));
        assert_eq!(completeness(3, None), None);
        assert_eq!(combined_completeness([(60, Some(60.0)), (0, Some(6.0)), (5, None)]), Some(60.0 / 66.0));
        assert_eq!(combined_completeness([(5, None)]), None);
    }

    /// The holes of sorted timestamps, found directly: the model.
    fn model_holes(sorted: &[i64], (from, to): (i64, i64), edges: (bool, bool), min: i64) -> Vec<Hole> {
        let mut holes = Vec::new();
        match sorted.first() {
            Some(&f) if edges.0 && f - from >= min => holes.push(Hole { start: from, end: f, open: true }),
            None if edges.0 && edges.1 && to - from >= min => holes.push(Hole { start: from, end: to, open: true }),
            _ => {}
        }
        for pair in sorted.windows(2) {
            if pair[1] - pair[0] >= min {
                holes.push(Hole { start: pair[0], end: pair[1], open: false });
            }
        }
        match sorted.last() {
            Some(&l) if edges.1 && to - l >= min => holes.push(Hole { start: l, end: to, open: true }),
            _ => {}
        }
        holes
    }

    proptest! {
        /// Holes found from the 1-minute windows' first and last timestamps are the holes between the readings
        /// themselves, for every threshold of a minute or more, duplicates and bounds included.
        #[test]
        fn holes_from_minute_windows_equal_holes_between_readings(
            mut stamps in prop::collection::vec(0i64..4 * 3600 * SECOND, 0..300),
            min in MINUTE..2 * 3600 * SECOND,
            edges in any::<(bool, bool)>(),
            cut in 0i64..600 * SECOND,
        ) {
            let (from, to) = (0 - cut, 4 * 3600 * SECOND + cut);
            stamps.sort_unstable();
            let mut minutes: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
            for &t in &stamps {
                let w = minutes.entry(Width::Minute.start_of(t)).or_insert((t, t));
                w.0 = w.0.min(t);
                w.1 = w.1.max(t);
            }
            let found = holes(minutes.values().copied(), (from, to), edges, min);
            prop_assert_eq!(found, model_holes(&stamps, (from, to), edges, min));
        }

        /// The combined completeness is the share of expected readings that arrived, and never above 1.
        #[test]
        fn combined_completeness_is_a_capped_share(windows in prop::collection::vec((0i64..10_000, 0.5f64..5_000.0), 1..20)) {
            let c = combined_completeness(windows.iter().map(|&(n, e)| (n, Some(e)))).unwrap();
            prop_assert!((0.0..=1.0).contains(&c));
            let all_complete = windows.iter().all(|&(n, e)| n as f64 >= e);
            prop_assert_eq!(c == 1.0, all_complete);
        }
    }
}
