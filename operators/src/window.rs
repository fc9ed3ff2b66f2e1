//! Window statistics as a semigroup: a window's whole state is one [`WindowAgg`], whatever its reading count.
//!
//! Every deduplicated reading becomes one `WindowAgg` per window width it falls in, carried as the *difference* of a
//! differential collection keyed by [`WindowKey`]. Differential adds differences of the same key together as it
//! compacts its arrangement, so the arrangement holds one `WindowAgg` per window (plus not-yet-compacted updates),
//! not one entry per reading, and a late reading simply adds into the window it belongs to.

use differential_dataflow::AsCollection;
use differential_dataflow::difference::{IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::operators::arrange::arrangement::Arranged;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::{Collection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::Inspect;

use crate::fold::fold_by_key;
use crate::model::{Reading, Time, Width, WindowKey};

/// A value with the order of its event time and write, for first/last.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub micros: i64,
    pub seq: u64,
    pub value: f64,
}

impl Stamped {
    fn key(&self) -> (i64, u64) {
        (self.micros, self.seq)
    }
}

/// count, sum, min, max, first and last of the readings in a window.
///
/// The sum is kept with Neumaier compensation (`sum + compensation`), so adding the same values in any order gives
/// the same total to within a few units in the last place: means differ by far less than 1e-9 relative whatever the
/// arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowAgg {
    pub count: i64,
    sum: f64,
    compensation: f64,
    pub min: f64,
    pub max: f64,
    /// The reading with the smallest timestamp.
    pub first: Stamped,
    /// The reading with the greatest timestamp (ties: the first written).
    pub last: Stamped,
}

impl WindowAgg {
    /// The statistics of one reading.
    pub fn of(r: &Reading) -> Self {
        let s = Stamped { micros: r.micros, seq: r.seq, value: r.value };
        WindowAgg { count: 1, sum: r.value, compensation: 0.0, min: r.value, max: r.value, first: s, last: s }
    }

    /// The sum of the values.
    pub fn sum(&self) -> f64 {
        self.sum + self.compensation
    }

    /// The mean of the values (0 for an empty window).
    pub fn mean(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.sum() / self.count as f64 }
    }

    fn add_to_sum(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }
}

impl IsZero for WindowAgg {
    fn is_zero(&self) -> bool {
        self.count == 0
    }
}

impl Semigroup for WindowAgg {
    fn plus_equals(&mut self, rhs: &Self) {
        if rhs.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *rhs;
            return;
        }
        self.count += rhs.count;
        self.add_to_sum(rhs.sum);
        self.compensation += rhs.compensation;
        self.min = self.min.min(rhs.min);
        self.max = self.max.max(rhs.max);
        if rhs.first.key() < self.first.key() {
            self.first = rhs.first;
        }
        // Greatest timestamp; among equal timestamps the smaller seq (first written).
        if (rhs.last.micros, std::cmp::Reverse(rhs.last.seq)) > (self.last.micros, std::cmp::Reverse(self.last.seq)) {
            self.last = rhs.last;
        }
    }
}

impl Monoid for WindowAgg {
    fn zero() -> Self {
        let s = Stamped { micros: 0, seq: 0, value: 0.0 };
        WindowAgg { count: 0, sum: 0.0, compensation: 0.0, min: 0.0, max: 0.0, first: s, last: s }
    }
}

/// Readings are only ever added (deduplication never retracts), so the multiplier is always +1; a count multiplier
/// scales count and sum and leaves the order statistics alone.
impl Multiply<isize> for WindowAgg {
    type Output = WindowAgg;
    fn multiply(mut self, rhs: &isize) -> WindowAgg {
        if *rhs != 1 {
            self.count *= *rhs as i64;
            self.sum *= *rhs as f64;
            self.compensation *= *rhs as f64;
        }
        self
    }
}

// Differential wants totally ordered differences; order by the bits, which is total and stable.
impl Eq for WindowAgg {}
impl PartialOrd for WindowAgg {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WindowAgg {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let bits = |a: &WindowAgg| {
            (
                a.count,
                a.sum.to_bits(),
                a.compensation.to_bits(),
                a.min.to_bits(),
                a.max.to_bits(),
                (a.first.micros, a.first.seq, a.first.value.to_bits()),
                (a.last.micros, a.last.seq, a.last.value.to_bits()),
            )
        };
        bits(self).cmp(&bits(other))
    }
}

/// The arrangement of window statistics: key [`WindowKey`], accumulated difference [`WindowAgg`].
pub type WindowTrace = TraceAgent<KeySpine<WindowKey, Time, WindowAgg>>;

/// `window_stats`: deduplicated readings in, window statistics out.
///
/// In: a collection of [`Reading`]s (each present once). Out: an arrangement keyed by [`WindowKey`] — every
/// 1-minute, 15-minute, 1-hour and 1-day UTC window of every series — whose accumulated difference is the window's
/// [`WindowAgg`]. Windows are spread over workers by key. `on_updates` sees every batch of updates on its way into
/// the arrangement (which windows changed when; for live subscriptions), without copying it.
pub fn window_stats<'scope>(
    readings: VecCollection<'scope, Time, Reading, isize>,
    mut on_updates: impl FnMut(&[(WindowKey, Time, WindowAgg)]) + 'static,
) -> Arranged<'scope, WindowTrace> {
    let windows: Collection<'scope, Time, Vec<(WindowKey, Time, WindowAgg)>> =
        fold_by_key(readings, "WindowStatsFold", |r: &Reading| {
            let agg = WindowAgg::of(r);
            Width::ALL.map(|width| (WindowKey { series: r.series, width, start: width.start_of(r.micros) }, agg))
        });
    let windows = windows
        .inner
        .inspect_core(move |event| {
            if let Ok((_, updates)) = event {
                on_updates(updates);
            }
        })
        .as_collection();
    windows.arrange_by_self_named("WindowStats")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, SeriesKey};
    use proptest::prelude::*;

    fn reading(micros: i64, seq: u64, value: f64) -> Reading {
        Reading { series: SeriesKey { device: DeviceId(1), sensor: 0 }, micros, value, seq }
    }

    #[test]
    fn aggregates_one_window() {
        let mut agg = WindowAgg::zero();
        for (i, (t, v)) in [(30, 2.0), (10, -1.0), (20, 5.0)].into_iter().enumerate() {
            agg.plus_equals(&WindowAgg::of(&reading(t, i as u64, v)));
        }
        assert_eq!(agg.count, 3);
        assert_eq!(agg.sum(), 6.0);
        assert_eq!(agg.mean(), 2.0);
        assert_eq!((agg.min, agg.max), (-1.0, 5.0));
        assert_eq!((agg.first.value, agg.last.value), (-1.0, 2.0));
    }

    #[test]
    fn last_among_equal_timestamps_is_the_first_written() {
        let mut a = WindowAgg::of(&reading(5, 2, 1.0));
        a.plus_equals(&WindowAgg::of(&reading(5, 1, 9.0)));
        assert_eq!(a.last.value, 9.0);
        let mut b = WindowAgg::of(&reading(5, 1, 9.0));
        b.plus_equals(&WindowAgg::of(&reading(5, 2, 1.0)));
        assert_eq!(b, a);
    }

    proptest! {
        /// Merging in any order gives the same statistics; the mean agrees to 1e-9 relative.
        #[test]
        fn merge_order_does_not_matter(
            values in proptest::collection::vec((-1e6f64..1e6, 0i64..1000), 1..200),
            seed in any::<u64>(),
        ) {
            let items: Vec<WindowAgg> = values.iter().enumerate().map(|(i, (v, t))| WindowAgg::of(&reading(*t, i as u64, *v))).collect();
            let mut forward = WindowAgg::zero();
            items.iter().for_each(|a| forward.plus_equals(a));
            let mut shuffled = items.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            // Merge as a tree too, as compaction does.
            let mut partials: Vec<WindowAgg> = shuffled.chunks(7).map(|c| { let mut a = WindowAgg::zero(); c.iter().for_each(|x| a.plus_equals(x)); a }).collect();
            partials.reverse();
            let mut other = WindowAgg::zero();
            partials.iter().for_each(|a| other.plus_equals(a));
            prop_assert_eq!(forward.count, other.count);
            prop_assert_eq!((forward.min, forward.max), (other.min, other.max));
            prop_assert_eq!((forward.first, forward.last), (other.first, other.last));
            let scale = values.iter().map(|(v, _)| v.abs()).sum::<f64>().max(1.0);
            prop_assert!((forward.sum() - other.sum()).abs() <= 1e-12 * scale, "{} vs {}", forward.sum(), other.sum());
        }
    }
}
