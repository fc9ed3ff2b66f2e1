//! Window statistics as a semigroup: a window's whole state is one [`WindowAgg`], whatever its reading count.
//!
//! Every deduplicated reading becomes one `WindowAgg` per window width it falls in; adding aggregates together
//! (in any order, in any grouping) gives the window's statistics, so the live windows ([`crate::live`]) hold one
//! `WindowAgg` per window, not one entry per reading, a late reading simply adds into the window it belongs to, and
//! a sealed day's rollups are the same sums.

use differential_dataflow::difference::{IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

use crate::model::Reading;
use crate::sketch::{Bucket, Sketch};

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

    /// Keeps the later of `self` and `other`: the greater timestamp, and of equal timestamps the first written
    /// (the smaller `seq`). The one rule for a window's last reading and a series' latest.
    #[inline]
    pub fn keep_later(&mut self, other: &Stamped) {
        if (other.micros, std::cmp::Reverse(other.seq)) > (self.micros, std::cmp::Reverse(self.seq)) {
            *self = *other;
        }
    }
}

/// The latest reading of a series: the one with the greatest timestamp, and of those the first written
/// ([`Stamped::keep_later`]).
pub type Latest = Stamped;

/// count, sum, min, max, first and last of the readings in a window; the sketch of their values (percentiles);
/// and how many readings of the window arrived late or were dropped as duplicates.
///
/// The sum is kept with Neumaier compensation (`sum + compensation`), so adding the same values in any order gives
/// the same total to within a few units in the last place: means differ by far less than 1e-9 relative whatever the
/// arrival order.
///
/// Near the range limits the sum never overflows, whatever the order: once a window holds a value of magnitude
/// [`SCALED_FROM`] or more (a property of its min and max, so of its readings, not of their order), its sum is kept
/// scaled by 2^-[`SCALE_BITS`], where even 2^63 readings of the largest finite value cannot overflow, and every
/// partial sum merged into it is scaled alike. [`WindowAgg::mean`] is therefore always finite, and
/// [`WindowAgg::sum`] saturates at ±`f64::MAX` when the true sum lies beyond what a double holds. Min and max order
/// `-0.0` below `0.0`, so they do not depend on arrival order either.
///
/// **The sketch** ([`Sketch`], DDSketch) is kept only for the window widths configured to carry one (it costs
/// memory per window): whoever adds readings adds their [`Bucket`]s with [`WindowAgg::add_to_sketch`] beside
/// merging [`WindowAgg::of`] them. A sketch that does not cover every reading of the window (one merged with
/// windows that had none) answers no quantile: [`WindowAgg::quantile`] is `None` rather than wrong.
///
/// **Late and duplicates** count readings of the window that arrived after a newer reading of their series had
/// been processed (admitted, in `count`), and readings dropped because their (device, sensor, timestamp) was
/// already written (not in `count`). They add like counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Readings admitted after a newer reading of their series (out of order).
    #[serde(default)]
    pub late: i64,
    /// Readings dropped as duplicates of one already written.
    #[serde(default)]
    pub duplicates: i64,
    #[serde(default)]
    sketch: Option<Box<Sketch>>,
}

/// Magnitude from which a window keeps its sum scaled: 2^959, so that 2^63 values below it sum below 2^1022.
pub const SCALED_FROM: f64 = 4.872_657_005_7e288; // 2^959 exactly (test below)

/// How far a scaled sum is scaled down: values up to `f64::MAX` (2^1024) become at most 2^960.
pub const SCALE_BITS: i32 = 64;

const SCALE_DOWN: f64 = 1.0 / 18_446_744_073_709_551_616.0; // 2^-64
const SCALE_UP: f64 = 18_446_744_073_709_551_616.0; // 2^64

impl WindowAgg {
    /// The statistics of one reading.
    pub fn of(r: &Reading) -> Self {
        let s = Stamped { micros: r.micros, seq: r.seq, value: r.value };
        let sum = if scaled(r.value, r.value) { r.value * SCALE_DOWN } else { r.value };
        WindowAgg {
            count: 1,
            sum,
            compensation: 0.0,
            min: r.value,
            max: r.value,
            first: s,
            last: s,
            late: 0,
            duplicates: 0,
            sketch: None,
        }
    }

    /// A window with only late or duplicate readings counted (to merge into the window they belong to).
    pub fn verdicts(late: i64, duplicates: i64) -> Self {
        WindowAgg { late, duplicates, ..WindowAgg::zero() }
    }

    /// Adds `count` values of `bucket` to the window's sketch (starting one if it had none): with
    /// [`WindowAgg::of`] merged in for the same readings, the sketch covers them.
    pub fn add_to_sketch(&mut self, bucket: Bucket, count: u64) {
        self.sketch.get_or_insert_default().add(bucket, count);
    }

    /// The window's sketch, if it carries one.
    pub fn sketch(&self) -> Option<&Sketch> {
        self.sketch.as_deref()
    }

    /// The same window carrying `sketch` (as stored beside it).
    pub fn with_sketch(mut self, sketch: Option<Sketch>) -> Self {
        self.sketch = sketch.map(Box::new);
        self
    }

    /// The value at quantile `q`: the value of rank ⌊q (n − 1)⌋ — exactly `min` and `max` at the ends, within the
    /// sketch's 1 % relative error (and within `[min, max]`) between them. `None` when the window carries no sketch,
    /// its sketch does not cover every reading, or `q` is not in [0, 1].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let sketch = self.sketch.as_deref()?;
        if sketch.count() != self.count as u64 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (self.count - 1) as f64).floor() as i64;
        if rank <= 0 {
            return Some(self.min);
        }
        if rank >= self.count - 1 {
            return Some(self.max);
        }
        let v = sketch.quantile(q)?;
        Some(if v.total_cmp(&self.min).is_lt() {
            self.min
        } else if v.total_cmp(&self.max).is_gt() {
            self.max
        } else {
            v
        })
    }

    /// Heap memory the window holds beyond its own size (its sketch), for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.sketch.as_deref().map_or(0, |s| std::mem::size_of::<Sketch>() + s.heap_bytes())
    }

    /// The running sum as the window keeps it (scaled by 2^-[`SCALE_BITS`] when the window holds a value of
    /// magnitude [`SCALED_FROM`] or more) and its compensation: what [`WindowAgg::from_stored`] needs to merge the
    /// window with more readings exactly as if it had never been stored. [`WindowAgg::sum`] is what to report.
    pub fn stored_sum(&self) -> (f64, f64) {
        (self.sum, self.compensation)
    }

    /// A window as [`WindowAgg::stored_sum`] and its statistics stored it. Its first and last take sequence number
    /// 0: whatever is merged into it later was written after it, so it wins ties of timestamps as the first write.
    pub fn from_stored(
        count: i64,
        stored_sum: (f64, f64),
        min: f64,
        max: f64,
        first: (i64, f64),
        last: (i64, f64),
    ) -> Self {
        let stamp = |(micros, value): (i64, f64)| Stamped { micros, seq: 0, value };
        let (sum, compensation) = stored_sum;
        WindowAgg {
            count,
            sum,
            compensation,
            min,
            max,
            first: stamp(first),
            last: stamp(last),
            late: 0,
            duplicates: 0,
            sketch: None,
        }
    }

    /// Merges `other` in (the semigroup's addition, for callers without differential's traits).
    pub fn merge(&mut self, other: &WindowAgg) {
        self.plus_equals(other);
    }

    /// Adds one more reading: merges [`WindowAgg::of`] it in.
    pub fn add(&mut self, r: &Reading) {
        self.plus_equals(&WindowAgg::of(r));
    }

    /// The statistics of `readings` together: what the arrangement accumulates for them.
    pub fn of_all(readings: impl IntoIterator<Item = Reading>) -> Self {
        let mut agg = WindowAgg::zero();
        for r in readings {
            agg.plus_equals(&WindowAgg::of(&r));
        }
        agg
    }

    /// Whether the sum is kept scaled by 2^-[`SCALE_BITS`].
    fn is_scaled(&self) -> bool {
        self.count > 0 && scaled(self.min, self.max)
    }

    /// The sum of the values; ±`f64::MAX` when it lies beyond what a double holds.
    pub fn sum(&self) -> f64 {
        let sum = self.sum + self.compensation;
        if self.is_scaled() { (sum * SCALE_UP).clamp(-f64::MAX, f64::MAX) } else { sum }
    }

    /// The mean of the values (0 for an empty window); always finite.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let mean = (self.sum + self.compensation) / self.count as f64;
        if self.is_scaled() { (mean * SCALE_UP).clamp(self.min, self.max) } else { mean }
    }

    /// Scales the sum (when `scale` and not yet scaled).
    fn scale_if(&mut self, scale: bool) {
        (self.sum, self.compensation) = self.sum_scaled_if(scale);
    }

    /// The sum and compensation, scaled when `scale` and not yet scaled.
    fn sum_scaled_if(&self, scale: bool) -> (f64, f64) {
        if scale && !self.is_scaled() {
            (self.sum * SCALE_DOWN, self.compensation * SCALE_DOWN)
        } else {
            (self.sum, self.compensation)
        }
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

/// Whether a window whose values lie in `[min, max]` keeps its sum scaled.
fn scaled(min: f64, max: f64) -> bool {
    min.abs().max(max.abs()) >= SCALED_FROM
}

impl IsZero for WindowAgg {
    fn is_zero(&self) -> bool {
        self.count == 0 && self.late == 0 && self.duplicates == 0
    }
}

impl Semigroup for WindowAgg {
    fn plus_equals(&mut self, rhs: &Self) {
        match (&mut self.sketch, &rhs.sketch) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.sketch = Some(theirs.clone()),
            (_, None) => {}
        }
        self.plus_equals_without_sketch(rhs);
    }
}

impl WindowAgg {
    /// The same window's numbers, without its sketch.
    pub fn clone_without_sketch(&self) -> WindowAgg {
        WindowAgg { sketch: None, ..*self }
    }

    /// Adds `rhs`'s numbers into this window, leaving its sketch as it is ([`Semigroup::plus_equals`] merges the
    /// sketches too).
    pub fn plus_equals_without_sketch(&mut self, rhs: &Self) {
        self.late += rhs.late;
        self.duplicates += rhs.duplicates;
        if rhs.count == 0 {
            return;
        }
        if self.count == 0 {
            let (late, duplicates, sketch) = (self.late, self.duplicates, self.sketch.take());
            *self = WindowAgg { late, duplicates, sketch, ..*rhs };
            return;
        }
        let min = if rhs.min.total_cmp(&self.min).is_lt() { rhs.min } else { self.min };
        let max = if rhs.max.total_cmp(&self.max).is_gt() { rhs.max } else { self.max };
        let scale = scaled(min, max);
        self.scale_if(scale);
        let (rhs_sum, rhs_compensation) = rhs.sum_scaled_if(scale);
        self.count += rhs.count;
        self.add_to_sum(rhs_sum);
        self.compensation += rhs_compensation;
        self.min = min;
        self.max = max;
        if rhs.first.key() < self.first.key() {
            self.first = rhs.first;
        }
        self.last.keep_later(&rhs.last);
    }
}

impl Monoid for WindowAgg {
    fn zero() -> Self {
        let s = Stamped { micros: 0, seq: 0, value: 0.0 };
        WindowAgg {
            count: 0,
            sum: 0.0,
            compensation: 0.0,
            min: 0.0,
            max: 0.0,
            first: s,
            last: s,
            late: 0,
            duplicates: 0,
            sketch: None,
        }
    }
}

/// Readings are only ever added (deduplication never retracts), so the multiplier is always +1; a count multiplier
/// scales count, sum and the late and duplicate counts, and leaves the order statistics alone. (A sketch is added by
/// its owner per reading, so a multiplied window carries none.)
impl Multiply<isize> for WindowAgg {
    type Output = WindowAgg;
    fn multiply(mut self, rhs: &isize) -> WindowAgg {
        if *rhs != 1 {
            self.count *= *rhs as i64;
            self.sum *= *rhs as f64;
            self.compensation *= *rhs as f64;
            self.late *= *rhs as i64;
            self.duplicates *= *rhs as i64;
            self.sketch = None;
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
                (a.late, a.duplicates),
            )
        };
        bits(self).cmp(&bits(other)).then_with(|| self.sketch.cmp(&other.sketch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, SensorId, SeriesKey};
    use proptest::prelude::*;

    fn reading(micros: i64, seq: u64, value: f64) -> Reading {
        Reading { series: SeriesKey { device: DeviceId(1), sensor: SensorId(0) }, micros, value, seq }
    }

    #[test]
    fn the_later_reading_has_the_greater_timestamp_and_of_equal_ones_the_first_written() {
        let l = |micros, seq, value| Stamped { micros, seq, value };
        let mut a = l(10, 5, 1.0);
        a.keep_later(&l(9, 9, 2.0));
        assert_eq!(a.value, 1.0);
        a.keep_later(&l(10, 3, 3.0));
        assert_eq!(a.value, 3.0, "same time, written earlier");
        a.keep_later(&l(10, 4, 4.0));
        assert_eq!(a.value, 3.0);
        a.keep_later(&l(11, 99, 5.0));
        assert_eq!(a.value, 5.0);
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

    #[test]
    fn the_scaling_constants_are_powers_of_two() {
        assert_eq!(SCALED_FROM, 2f64.powi(959));
        assert_eq!((SCALE_UP, SCALE_DOWN), (2f64.powi(SCALE_BITS), 2f64.powi(-SCALE_BITS)));
    }

    /// `items` merged in order one by one, and merged again shuffled (seeded xorshift) in chunks of `chunk` whose
    /// partial results are merged in reverse, as compaction merges batches.
    fn chain_and_shuffled_tree(items: &[WindowAgg], seed: u64, chunk: usize) -> (WindowAgg, WindowAgg) {
        let mut forward = WindowAgg::zero();
        items.iter().for_each(|a| forward.plus_equals(a));
        let mut shuffled = items.to_vec();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut other = WindowAgg::zero();
        for part in shuffled.chunks(chunk).rev() {
            let mut partial = WindowAgg::zero();
            part.iter().for_each(|x| partial.plus_equals(x));
            other.plus_equals(&partial);
        }
        (forward, other)
    }

    fn merged(values: &[f64]) -> WindowAgg {
        let mut agg = WindowAgg::zero();
        for (i, v) in values.iter().enumerate() {
            agg.plus_equals(&WindowAgg::of(&reading(i as i64, i as u64, *v)));
        }
        agg
    }

    /// Issue 16, 8: {1e308, 1e308, -1e308, -1e308} summed to NaN in one order and 0 in another; two 1e308 in one
    /// window made the mean infinite (and JSON `null`).
    #[test]
    fn sums_near_the_range_limits_do_not_overflow_whatever_the_order() {
        let orders = [[1e308, 1e308, -1e308, -1e308], [1e308, -1e308, 1e308, -1e308], [-1e308, 1e308, 1e308, -1e308]];
        for order in orders {
            let agg = merged(&order);
            assert_eq!((agg.sum(), agg.mean()), (0.0, 0.0), "{order:?}");
        }
        let two = merged(&[1e308, 1e308]);
        assert_eq!((two.sum(), two.mean()), (f64::MAX, 1e308));
        let all = merged(&[f64::MAX, f64::MAX, -f64::MAX]);
        assert_eq!((all.sum(), all.mean()), (f64::MAX, f64::MAX / 3.0));
        let tiny = merged(&[5e-324]);
        assert_eq!((tiny.sum(), tiny.mean()), (5e-324, 5e-324), "a window without huge values is not scaled");
        let (a, b) = (merged(&[-0.0, 0.0]), merged(&[0.0, -0.0]));
        assert_eq!((a.min.to_bits(), a.max.to_bits()), ((-0.0f64).to_bits(), 0.0f64.to_bits()));
        assert_eq!(a, b, "signed zeros in either order");
    }

    proptest! {
        /// Values anywhere in the double range, huge and tiny mixed, merged in any order as a chain or a tree: the
        /// same count, min, max, first and last, a finite mean within [min, max], and sums that agree to a few units
        /// in the last place of the largest magnitude involved.
        #[test]
        fn extreme_values_merge_alike_in_any_order(
            values in proptest::collection::vec(prop_oneof![
                any::<f64>().prop_filter("finite", |v| v.is_finite()),
                Just(f64::MAX), Just(-f64::MAX), Just(1e308), Just(-1e308), Just(0.0), Just(-0.0), Just(5e-324),
            ], 1..40),
            seed in any::<u64>(),
        ) {
            let items: Vec<WindowAgg> = values.iter().enumerate().map(|(i, v)| WindowAgg::of(&reading(i as i64, i as u64, *v))).collect();
            let (forward, other) = chain_and_shuffled_tree(&items, seed, 3);
            prop_assert_eq!(forward.count, other.count);
            prop_assert_eq!((forward.min.to_bits(), forward.max.to_bits()), (other.min.to_bits(), other.max.to_bits()));
            prop_assert_eq!((forward.first, forward.last), (other.first, other.last));
            for agg in [&forward, &other] {
                prop_assert!(agg.sum().is_finite() && agg.mean().is_finite(), "{:?}", agg);
                prop_assert!(agg.min <= agg.mean() && agg.mean() <= agg.max, "{:?}", agg);
            }
            let largest = values.iter().map(|v| v.abs()).fold(0.0f64, f64::max);
            let tolerance = largest * values.len() as f64 * f64::EPSILON * 4.0;
            let (a, b) = (forward.sum(), other.sum());
            prop_assert!(a == b || (a - b).abs() <= tolerance || (a.abs() == f64::MAX && b.abs() >= f64::MAX / 2.0) || (b.abs() == f64::MAX && a.abs() >= f64::MAX / 2.0), "{} vs {}", a, b);
        }

        /// Merging in any order gives the same statistics; the mean agrees to 1e-9 relative.
        #[test]
        fn merge_order_does_not_matter(
            values in proptest::collection::vec((-1e6f64..1e6, 0i64..1000), 1..200),
            seed in any::<u64>(),
        ) {
            let items: Vec<WindowAgg> = values.iter().enumerate().map(|(i, (v, t))| WindowAgg::of(&reading(*t, i as u64, *v))).collect();
            let (forward, other) = chain_and_shuffled_tree(&items, seed, 7);
            prop_assert_eq!(forward.count, other.count);
            prop_assert_eq!((forward.min, forward.max), (other.min, other.max));
            prop_assert_eq!((forward.first, forward.last), (other.first, other.last));
            let scale = values.iter().map(|(v, _)| v.abs()).sum::<f64>().max(1.0);
            prop_assert!((forward.sum() - other.sum()).abs() <= 1e-12 * scale, "{} vs {}", forward.sum(), other.sum());
        }
    }
}
