//! First write wins: a reading whose (device, sensor, timestamp) was already written is dropped, whatever its value
//! (the replaced system's `INSERT … ON CONFLICT DO NOTHING`).
//!
//! Readings are routed by device, so every reading of a device meets the same [`FirstWriteFilter`]. The operator
//! holds each logical time's readings until the input frontier has passed it, then admits them in time order and,
//! within a time, in write order (`seq`), so the result is the same for any number of workers.
//!
//! Memory is bounded by the *horizon*: per series (device, sensor), only timestamps within `horizon` of event time
//! behind the series' newest reading are remembered. A reading older than that is admitted without a check; if it
//! was a duplicate, the live statistics count it again (the archive's daily seal deduplicates exactly, whatever the
//! age).
//!
//! Readings mostly arrive in time order per series, so the keys live in a sorted ring of plain timestamps (8 bytes
//! each, appended and expired at the ends, checked by binary search); only readings older than the newest go into
//! a B-tree beside it. A hash set or B-tree of every key cost ~34 bytes and a cache miss per reading.

use std::collections::{BTreeSet, VecDeque};

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::model::{Reading, SeriesKey, Time};

type SeriesMap<V> = std::collections::HashMap<SeriesKey, V, foldhash::fast::RandomState>;

/// The per-series memory of timestamps already written.
#[derive(Debug)]
pub struct FirstWriteFilter {
    horizon_micros: i64,
    series: SeriesMap<SeriesTimestamps>,
    late: u64,
    /// Keys remembered, over all series (kept as they come and go).
    remembered: usize,
}

/// One series' remembered timestamps: `in_order` is strictly increasing and ends at the newest timestamp seen;
/// `late` holds the ones that arrived after a newer one.
///
/// The ring's two ends are also kept beside it (`newest`, `oldest`): a reading in order compares with the newest and
/// expires from the oldest, and reading them from the ring's buffer were two cache misses a reading beyond the
/// entry's own (`FirstWriteFilter::warm` was ~7 % of the server at 400 k readings/s). With them here only the
/// buffer's back is touched (written) unless something expires.
#[derive(Debug)]
struct SeriesTimestamps {
    in_order: VecDeque<i64>,
    late: BTreeSet<i64>,
    /// `in_order`'s last timestamp (`i64::MIN` while empty).
    newest: i64,
    /// `in_order`'s first timestamp (`i64::MAX` while empty).
    oldest: i64,
}

impl Default for SeriesTimestamps {
    fn default() -> Self {
        SeriesTimestamps { in_order: VecDeque::new(), late: BTreeSet::new(), newest: i64::MIN, oldest: i64::MAX }
    }
}

impl SeriesTimestamps {
    #[inline]
    fn newest(&self) -> i64 {
        self.newest
    }

    /// Appends `micros`, newer than every timestamp in the ring.
    #[inline]
    fn push_newest(&mut self, micros: i64) {
        self.in_order.push_back(micros);
        self.newest = micros;
        self.oldest = self.oldest.min(micros);
    }

    /// Forgets timestamps before `cutoff`: the ring at once (cheap, from the front), the B-tree in steps of
    /// `slack` so its cost is amortised. Returns how many it forgot.
    fn expire(&mut self, cutoff: i64, slack: i64) -> usize {
        let before = self.in_order.len() + self.late.len();
        if self.oldest < cutoff {
            while self.in_order.front().is_some_and(|&t| t < cutoff) {
                self.in_order.pop_front();
            }
            self.oldest = self.in_order.front().copied().unwrap_or(i64::MAX);
            if self.in_order.is_empty() {
                self.newest = i64::MIN;
            }
        }
        if let Some(&oldest) = self.late.first()
            && oldest < cutoff.saturating_sub(slack)
        {
            self.late = self.late.split_off(&cutoff);
        }
        before - (self.in_order.len() + self.late.len())
    }
}

impl FirstWriteFilter {
    /// A filter that is exact for duplicates within `horizon_micros` of event time behind each series' newest.
    pub fn new(horizon_micros: i64) -> Self {
        FirstWriteFilter { horizon_micros: horizon_micros.max(0), series: SeriesMap::default(), late: 0, remembered: 0 }
    }

    /// Whether `r` is the first reading with its key; remembers it.
    pub fn admit(&mut self, r: &Reading) -> bool {
        self.check(r) != Admission::Duplicate
    }

    /// What becomes of `r`: the first of its key (in order, or late), or a duplicate; remembers it.
    pub fn check(&mut self, r: &Reading) -> Admission {
        let series = self.series.entry(r.series).or_default();
        let newest = series.newest();
        if r.micros > newest {
            series.push_newest(r.micros);
            self.remembered += 1;
            self.remembered -= series.expire(r.micros.saturating_sub(self.horizon_micros), self.horizon_micros / 8);
            return Admission::InOrder;
        }
        if r.micros == newest {
            return Admission::Duplicate;
        }
        let beyond = r.micros < newest.saturating_sub(self.horizon_micros);
        let admitted = beyond || (!holds_from_the_back(&series.in_order, r.micros) && series.late.insert(r.micros));
        if !admitted {
            return Admission::Duplicate;
        }
        if !beyond {
            self.remembered += 1;
        }
        self.late += 1;
        Admission::Late
    }

    /// Reads, changing nothing, what checking `readings` will look at: their series' entries (which hold the
    /// newest and oldest timestamps) and the back of their rings (where a reading in order is written). Each is a
    /// cache miss, and checking waits for it; here the loads of
    /// different readings do not depend on each other, so the processor has those of a whole group in flight at
    /// once, and checking the group then finds them in cache (as [`crate::live::LiveWindows::warm`] does for the
    /// windows).
    pub fn warm(&self, readings: &[Reading]) {
        // The ring's back too: the next timestamp in order is written beside it.
        let seen = readings
            .iter()
            .filter_map(|r| self.series.get(&r.series))
            .fold(0, |seen, s| seen ^ s.oldest ^ s.in_order.back().copied().unwrap_or(0));
        std::hint::black_box(seen);
    }

    /// Readings admitted although their series already had a newer one (they arrived out of order).
    pub fn late_admitted(&self) -> u64 {
        self.late
    }

    /// Keys remembered, over all series.
    pub fn remembered(&self) -> usize {
        self.remembered
    }
}

/// Whether the increasing `ring` holds `micros`, searched from its newest end: a step of 1, 2, 4, … back until an
/// element is not above `micros`, then a binary search between there and the last step.
///
/// Why not a binary search of the whole ring: a late reading is most often only a little older than its series'
/// newest (concurrent requests of one device committed in the other order), and the ring holds every timestamp of
/// the horizon (tens of thousands per busy series); a binary search from the middle took ~15 dependent cache
/// misses a late reading — `VecDeque::binary_search_by` was 8.7 % of the server at 1 M readings/s on 600 series,
/// where racing requests make many readings late. From the back it touches the last cache line or two for those,
/// and at most twice the binary search's steps for the oldest.
fn holds_from_the_back(ring: &VecDeque<i64>, micros: i64) -> bool {
    // Every element at or after `end` is above `micros`.
    let mut end = ring.len();
    let mut step = 1;
    let start = loop {
        if end == 0 {
            return false;
        }
        let probe = end.saturating_sub(step);
        if ring[probe] <= micros {
            break probe;
        }
        end = probe;
        step *= 2;
    };
    // ring[low] <= micros, and ring[high] > micros (or high is past the end).
    let (mut low, mut high) = (start, end);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if ring[middle] <= micros {
            low = middle;
        } else {
            high = middle;
        }
    }
    ring[low] == micros
}

/// What the filter made of one reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Admission {
    /// The first of its key, and the newest of its series.
    InOrder,
    /// The first of its key, although its series already had a newer reading (it arrived out of order).
    Late,
    /// Its key was already written: dropped.
    Duplicate,
}

/// The verdict on a reading that was not simply admitted in order: the logical time it was fed at, its `seq` (log
/// position and index in the record) and whether it was dropped as a duplicate or admitted late. In a cluster the
/// time says which process fed it (see `weir-pipeline`'s round clock), so the verdict can go back to that process's
/// archiver — the only deduplication the archive has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub time: Time,
    pub seq: u64,
    /// The reading's series and timestamp: which windows count it as late or duplicate.
    pub series: SeriesKey,
    pub micros: i64,
    /// [`Admission::Duplicate`] or [`Admission::Late`] (in-order admissions send no verdict).
    pub admission: Admission,
}

/// What [`dedup_first_write`] produces.
pub struct Deduplicated<'scope> {
    /// Each key's first-written reading, with multiplicity +1 at its record's time.
    pub admitted: VecCollection<'scope, Time, Reading, isize>,
    /// The duplicates dropped and the late readings admitted, at their record's time (few: only readings whose
    /// series already had their timestamp or a newer one).
    pub verdicts: Stream<'scope, Time, Vec<Verdict>>,
    /// Keys this worker's filter remembers (updated as it works; for the memory budget).
    pub remembered: std::rc::Rc<std::cell::Cell<usize>>,
}

/// `dedup_first_write`: readings in (as written, possibly with duplicates), each key's first-written reading out,
/// and the verdicts on the duplicates it dropped and the late readings it admitted beside it.
///
/// In: a stream of [`Reading`]s at the time of their WAL record. Out: a collection of the readings that are the first
/// of their (device, sensor, timestamp), each with multiplicity +1 at its record's time (nothing is ever retracted),
/// and a stream of [`Verdict`]s.
pub fn dedup_first_write<'scope>(
    readings: Stream<'scope, Time, Vec<Reading>>,
    horizon_micros: i64,
) -> Deduplicated<'scope> {
    let by_device = Exchange::new(|r: &Reading| r.series.device.0);
    // Two outputs of one operator: every admitted reading is handed on once, never copied into a second stream.
    let mut builder = OperatorBuilder::new("DedupFirstWrite".to_owned(), readings.scope());
    let mut input = builder.new_input(readings, by_device);
    let (admitted_out, admitted) = builder.new_output::<Vec<(Reading, Time, isize)>>();
    let (verdicts_out, verdicts) = builder.new_output::<Vec<Verdict>>();
    let mut admitted_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(Reading, Time, isize)>>>::from(admitted_out);
    let mut verdicts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Verdict>>>::from(verdicts_out);
    let remembered = std::rc::Rc::new(std::cell::Cell::new(0));
    let remembered_out = remembered.clone();
    builder.build(move |_capabilities| {
        let mut filter = FirstWriteFilter::new(horizon_micros);
        // Per logical time: a capability for each output and the readings.
        let mut stash: Vec<(Capability<Time>, Capability<Time>, Vec<Reading>)> = Vec::new();
        move |frontiers| {
            input.for_each_stamp(|cap, data| {
                if let (Some(admit), Some(judge)) = (cap.retain_least(0), cap.retain_least(1)) {
                    let mut readings = Vec::new();
                    for batch in data {
                        readings.append(batch);
                    }
                    stash.push((admit, judge, readings));
                }
            });
            // Admit complete times in time order, and within a time in write order.
            let frontier = &frontiers[0];
            let (mut ready, waiting): (Vec<_>, Vec<_>) =
                stash.drain(..).partition(|(cap, _, _)| !frontier.frontier().less_equal(cap.time()));
            stash = waiting;
            ready.sort_by_key(|(cap, _, _)| *cap.time());
            let mut admitted = admitted_out.activate();
            let mut verdicts = verdicts_out.activate();
            for (admit, judge, mut readings) in ready {
                readings.sort_unstable_by_key(|r| r.seq);
                let time = *admit.time();
                let mut admitted = admitted.session(&admit);
                let mut verdicts = verdicts.session(&judge);
                for group in readings.chunks(crate::live::WARM_GROUP) {
                    filter.warm(group);
                    for &r in group {
                        let admission = filter.check(&r);
                        if admission != Admission::InOrder {
                            verdicts.give(Verdict { time, seq: r.seq, series: r.series, micros: r.micros, admission });
                        }
                        if admission != Admission::Duplicate {
                            admitted.give((r, time, 1isize));
                        }
                    }
                }
            }
            remembered_out.set(filter.remembered());
        }
    });
    Deduplicated { admitted: admitted.as_collection(), verdicts, remembered }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, SensorId};

    fn r(device: u64, sensor: u16, micros: i64, seq: u64) -> Reading {
        Reading {
            series: SeriesKey { device: DeviceId(device), sensor: SensorId(u64::from(sensor)) },
            micros,
            value: seq as f64,
            seq,
        }
    }

    #[test]
    fn first_write_wins_per_device_sensor_and_timestamp() {
        let mut f = FirstWriteFilter::new(1_000);
        assert!(f.admit(&r(1, 0, 100, 1)));
        assert!(!f.admit(&r(1, 0, 100, 2)), "same key, later write");
        assert!(f.admit(&r(1, 1, 100, 3)), "other sensor");
        assert!(f.admit(&r(2, 0, 100, 4)), "other device");
        assert!(f.admit(&r(1, 0, 101, 5)), "other timestamp");
    }

    /// The operator in a 3-worker dataflow: readings fed by every worker, duplicates in later records (and inside a
    /// record) dropped, the first write kept, whatever worker held it.
    #[test]
    fn operator_keeps_the_first_write_across_workers() {
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::Probe;
        use timely::dataflow::{InputHandleVec, ProbeHandle};

        let admitted = Arc::new(Mutex::new(Vec::new()));
        let sink = admitted.clone();
        timely::execute(timely::Config::process(3), move |worker| {
            let mut input = InputHandleVec::new();
            let probe = ProbeHandle::new();
            let sink = sink.clone();
            worker.dataflow(|scope| {
                dedup_first_write(input.to_stream(scope), 1_000_000)
                    .admitted
                    .inspect(move |(r, time, diff)| sink.lock().unwrap().push((r.seq, r.value, *time, *diff)))
                    .inner
                    .probe_with(&probe);
            });
            // Records 1..=6; worker `position % 3` feeds each, as the runtime does. Every record repeats the key
            // (device 7, sensor 0, t=50) and has one fresh key of its own.
            for position in 1..=6u64 {
                input.advance_to(position);
                if position % 3 == worker.index() as u64 {
                    let dup = r(7, 0, 50, Reading::seq_of(position, 0));
                    let fresh = r(position, 1, 60, Reading::seq_of(position, 1));
                    let dup_again = r(7, 0, 50, Reading::seq_of(position, 2));
                    for mut reading in [dup, fresh, dup_again] {
                        reading.value = position as f64;
                        input.send(reading);
                    }
                }
            }
            input.advance_to(7);
            while probe.less_than(&7) {
                worker.step();
            }
        })
        .unwrap();
        let mut out = admitted.lock().unwrap().clone();
        out.sort_by_key(|(seq, ..)| *seq);
        let dup_key: Vec<_> = out.iter().filter(|(seq, ..)| seq & 0xffff_ffff == 0).collect();
        assert_eq!(dup_key.len(), 1, "{out:?}");
        assert_eq!(*dup_key[0], (Reading::seq_of(1, 0), 1.0, 1, 1), "the first write, from record 1");
        assert_eq!(out.len(), 7, "one duplicated key + six fresh ones: {out:?}");
    }

    proptest::proptest! {
        /// With a horizon longer than the data, the filter is exactly "first time this key is seen", for any order.
        #[test]
        fn without_expiry_the_filter_is_a_set_of_keys(
            keys in proptest::collection::vec((0u64..3, 0u16..2, 0i64..40), 0..300),
        ) {
            let mut f = FirstWriteFilter::new(i64::MAX / 4);
            let mut seen = std::collections::HashSet::new();
            for (seq, &(device, sensor, micros)) in keys.iter().enumerate() {
                let fresh = seen.insert((device, sensor, micros));
                proptest::prop_assert_eq!(f.admit(&r(device, sensor, micros, seq as u64)), fresh);
            }
            proptest::prop_assert_eq!(f.remembered(), seen.len());
        }
    }

    proptest::proptest! {
        /// With a short horizon, any order, timestamps that repeat: a reading newer than its series' newest is in
        /// order, one older than the horizon behind it is admitted unchecked, and in between it is a duplicate
        /// exactly when its key was admitted before — as a from-scratch model of every admitted key says.
        #[test]
        fn with_expiry_the_filter_is_exact_within_the_horizon(
            keys in proptest::collection::vec((0u64..2, 0i64..60), 0..400),
            horizon in 0i64..12,
        ) {
            let mut f = FirstWriteFilter::new(horizon);
            let mut model: std::collections::HashMap<u64, (i64, std::collections::HashSet<i64>)> = Default::default();
            for (seq, &(device, micros)) in keys.iter().enumerate() {
                let (newest, admitted) = model.entry(device).or_insert((i64::MIN, Default::default()));
                let want = if micros > *newest {
                    *newest = micros;
                    admitted.insert(micros);
                    Admission::InOrder
                } else if micros < newest.saturating_sub(horizon) || admitted.insert(micros) {
                    // Beyond the horizon (unchecked), or within it and new.
                    Admission::Late
                } else {
                    Admission::Duplicate
                };
                proptest::prop_assert_eq!(f.check(&r(device, 0, micros, seq as u64)), want, "reading {}", seq);
            }
        }
    }

    proptest::proptest! {
        /// The search from the back answers as a binary search of the whole ring: any increasing ring (wrapped
        /// around its buffer or not), any timestamp, inside, between or beyond its elements.
        #[test]
        fn the_search_from_the_back_is_a_binary_search(
            gaps in proptest::collection::vec(1i64..5, 0..200),
            popped in 0usize..50,
            probes in proptest::collection::vec(-5i64..600, 1..40),
        ) {
            let mut ring: VecDeque<i64> = VecDeque::new();
            let mut t = 0;
            for gap in &gaps {
                t += gap;
                ring.push_back(t);
            }
            // Popped from the front and pushed again at the back: the buffer wraps around.
            for _ in 0..popped.min(ring.len()) {
                ring.pop_front();
                t += 1;
                ring.push_back(t);
            }
            for micros in probes.into_iter().chain(ring.iter().copied()) {
                proptest::prop_assert_eq!(
                    holds_from_the_back(&ring, micros),
                    ring.binary_search(&micros).is_ok(),
                    "{} in {:?}", micros, ring
                );
            }
        }
    }

    #[test]
    fn late_readings_are_checked_against_both_the_ring_and_the_late_set() {
        let mut f = FirstWriteFilter::new(1_000);
        for t in [100, 200, 300] {
            assert!(f.admit(&r(1, 0, t, 0)));
        }
        assert!(f.admit(&r(1, 0, 150, 1)), "late but new");
        assert_eq!(f.late_admitted(), 1);
        assert!(!f.admit(&r(1, 0, 150, 2)), "late duplicate of a late reading");
        assert!(!f.admit(&r(1, 0, 200, 3)), "late duplicate of an in-order reading");
        assert!(!f.admit(&r(1, 0, 300, 4)), "duplicate of the newest");
        assert!(f.admit(&r(1, 0, 400, 5)));
        assert!(!f.admit(&r(1, 0, 150, 6)), "still remembered after a newer reading");
        assert_eq!(f.remembered(), 5);
    }

    #[test]
    fn memory_is_bounded_by_the_horizon() {
        let mut f = FirstWriteFilter::new(1_000);
        for t in 0..100_000 {
            assert!(f.admit(&r(1, 0, t, t as u64)));
        }
        assert!(f.remembered() <= 1_126, "remembered {}", f.remembered());
        // Within the horizon, duplicates are still caught.
        assert!(!f.admit(&r(1, 0, 99_500, 1)));
        // Beyond it, a reading is admitted unchecked (documented).
        assert!(f.admit(&r(1, 0, 10, 2)));
    }
}
