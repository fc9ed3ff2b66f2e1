//! The latest value of each series, as a semigroup: per series, the reading with the greatest timestamp, and among
//! readings with the same timestamp the first written.

use differential_dataflow::difference::{IsZero, Multiply, Semigroup};
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::operators::arrange::arrangement::Arranged;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::{Collection, VecCollection};
use serde::{Deserialize, Serialize};

use crate::fold::fold_by_key;
use crate::model::{Reading, SeriesKey, Time};

/// The latest reading of a series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub micros: i64,
    pub seq: u64,
    pub value: f64,
}

impl Latest {
    pub fn of(r: &Reading) -> Self {
        Latest { micros: r.micros, seq: r.seq, value: r.value }
    }

    fn rank(&self) -> (i64, std::cmp::Reverse<u64>) {
        (self.micros, std::cmp::Reverse(self.seq))
    }
}

impl IsZero for Latest {
    fn is_zero(&self) -> bool {
        false
    }
}

impl Semigroup for Latest {
    fn plus_equals(&mut self, rhs: &Self) {
        if rhs.rank() > self.rank() {
            *self = *rhs;
        }
    }
}

/// Readings are never retracted, so the multiplier is always +1 and leaves the value as it is.
impl Multiply<isize> for Latest {
    type Output = Latest;
    fn multiply(self, _rhs: &isize) -> Latest {
        self
    }
}

impl Eq for Latest {}
impl PartialOrd for Latest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Latest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.micros, self.seq, self.value.to_bits()).cmp(&(other.micros, other.seq, other.value.to_bits()))
    }
}

/// The arrangement of latest values: key [`SeriesKey`], accumulated difference [`Latest`].
pub type LatestTrace = TraceAgent<KeySpine<SeriesKey, Time, Latest>>;

/// `latest_by_time`: deduplicated readings in, the latest reading per series out (an arrangement keyed by
/// [`SeriesKey`] whose accumulated difference is the [`Latest`]).
pub fn latest_by_time<'scope>(readings: VecCollection<'scope, Time, Reading, isize>) -> Arranged<'scope, LatestTrace> {
    let latest: Collection<'scope, Time, Vec<(SeriesKey, Time, Latest)>> =
        fold_by_key(readings, "LatestFold", |r: &Reading| Some((r.series, Latest::of(r))));
    latest.arrange_by_self_named("LatestByTime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greatest_timestamp_wins_and_ties_go_to_the_first_written() {
        let l = |micros, seq, value| Latest { micros, seq, value };
        let mut a = l(10, 5, 1.0);
        a.plus_equals(&l(9, 9, 2.0));
        assert_eq!(a.value, 1.0);
        a.plus_equals(&l(10, 3, 3.0));
        assert_eq!(a.value, 3.0, "same time, written earlier");
        a.plus_equals(&l(10, 4, 4.0));
        assert_eq!(a.value, 3.0);
        a.plus_equals(&l(11, 99, 5.0));
        assert_eq!(a.value, 5.0);
    }
}
