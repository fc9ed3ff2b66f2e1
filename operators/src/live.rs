//! The live windows: the [`WindowAgg`] of every window of the series a worker holds, in memory the operator owns.
//!
//! Why not a differential arrangement (as before): a window's aggregate is a semigroup without inverses (min, max,
//! first and last cannot be taken back), so an arrangement can never drop a window — it only grows with history —
//! and its batcher sorted and merged every update again (17 % of the process near the maximum rate). Here each
//! worker keeps, per series, one ordered map of window start → aggregate per width, applies a time's updates once
//! the input frontier has passed that time (so an answer read after the probe passes a position sees exactly the
//! updates through it, as with the arrangement), and reports which windows changed for live subscriptions.
//!
//! **The horizon.** A series keeps the windows of the days that lie wholly within `horizon` of its newest reading
//! (event time; so, with the live horizon equal to the dedup horizon, a live window never holds a duplicate that
//! deduplication admitted as older than its horizon), and of every day whose rollups are not written yet (`rolled_through`: the archive's seals say how far
//! they are); older days leave memory, a whole day (every width) at a time, so that per series the live windows
//! are exactly those from [`LiveWindows::live_from`] on, and the ones before are answered from the day's rollups,
//! which hold the same numbers. An update for a window before `live_from` (a reading older than the horizon,
//! arriving late) is dropped and counted: it is archived, its day is sealed again, and the rollup then has it.
//! Memory is therefore bounded by series × (horizon + 1 day + the days not yet rolled up), not by history.
//!
//! Readings reach this operator on the worker that owns their device (deduplication routes them by device and this
//! operator reads its input in place), so all windows of a series live on one worker: a series' windows can be read,
//! and later evicted, in one place. Each reading costs one lookup of its series, and an update in place of its
//! window of each *held* width: the 1-minute windows, and the finest width that carries a sketch (15 minutes by
//! default). The other widths are merged from those when read ([`MAX_DERIVED_PARTS`]), so a reading touches two
//! windows, not four (each a cache miss at hundreds of thousands of readings a second). Cost: about
//! [`BYTES_PER_WINDOW`] bytes per held window (the aggregate and its start in a sorted vector), against ~162
//! measured for the arrangement.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use differential_dataflow::VecCollection;
use differential_dataflow::difference::Multiply;
use differential_dataflow::difference::Semigroup;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::dedup::{Admission, Verdict};
use crate::model::{DeviceId, Reading, SensorId, SeriesKey, Time, Width, WindowKey};
use crate::sketch::Bucket;
use crate::stats::on_grid;
use crate::window::{Latest, WindowAgg};

/// Estimated memory of one live window: 8 bytes of start and 112 of aggregate in a sorted vector, with its growth
/// slack (a sketch's buckets are counted apart: [`LiveWindows::sketch_bytes`]).
pub const BYTES_PER_WINDOW: usize = 136;

/// The widths whose windows carry a quantile sketch unless configured otherwise: not the 1-minute windows, which
/// are most of a series' windows (1 440 a day against 121 for the others together), so that sketches add a few
/// per cent to the live windows' memory instead of doubling it (benches/RESULTS.md, "Issue 24").
pub const DEFAULT_SKETCHED_WIDTHS: [Width; 3] = [Width::QuarterHour, Width::Hour, Width::Day];

/// One series' windows, per width (in [`Width::ALL`]'s order), sorted by start. Sorted vectors, not B-trees: a
/// B-tree's first leaf holds room for 11 entries (~1.1 KB a width), which made a series with one reading cost
/// ~5 KB; a vector grows with what it holds, readings mostly arrive in order (an append), and a day leaves from
/// the front.
#[derive(Debug)]
struct SeriesWindows {
    by_width: [Vec<(i64, WindowAgg)>; 4],
    /// The newest reading's timestamp.
    newest: i64,
    /// A day boundary: the windows before it are not live.
    live_from: i64,
    /// The latest reading, whatever its day: kept here, where the reading's series entry is in cache anyway,
    /// rather than in an arrangement of its own (whose batcher and merges were ~12 % of the server at 400 k
    /// readings/s, `benches/RESULTS.md`).
    latest: Latest,
}

/// The live windows one worker holds.
#[derive(Debug)]
pub struct LiveWindows {
    series: HashMap<SeriesKey, SeriesWindows, foldhash::fast::RandomState>,
    /// The sensors of the series held (each once; as many as there are sensor names at most), so that one
    /// device's latest values are a lookup per sensor rather than a scan of every series.
    sensors: BTreeSet<SensorId>,
    windows: usize,
    /// How far behind its newest reading a series keeps its days (`None`: for ever).
    horizon_micros: Option<i64>,
    /// Days ending at or before this have their rollups written: they may leave.
    rolled_through: i64,
    /// Where a series seen for the first time is live from (a start that did not load older days).
    start_from: i64,
    /// Readings dropped because their window was no longer live.
    dropped_readings: u64,
    /// Per width (in [`Width::ALL`]'s order), where its windows come from: [`Source`].
    sources: [Source; 4],
    /// Heap memory of the sketches held.
    sketch_bytes: usize,
}

impl Default for LiveWindows {
    fn default() -> Self {
        LiveWindows::new(None)
    }
}

/// The live windows of a worker, shared by the operator that fills them and the queries that read them (on the same
/// worker thread).
pub type SharedLiveWindows = Rc<RefCell<LiveWindows>>;

/// Where the windows of one width come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Each window is held, updated by every reading of it (its sketch too when `sketched`).
    Own { sketched: bool },
    /// Each window is merged, when read, from the held windows of the finer width `from` that it is made of (at
    /// most [`MAX_DERIVED_PARTS`] of them), their sketches with them when `sketched`; none is held.
    Finer { from: Width, sketched: bool },
}

/// The most finer windows a window is merged from when read: a 1-day window from 96 quarter-hours, not from 1 440
/// minutes.
///
/// Why derive at all: a reading's update of a window is a cache miss (its series' windows are rarely in cache at
/// hundreds of thousands of readings a second across thousands of series). `Store::add` was the statistics
/// worker's top symbol with one sketch update per sketched width (11 % of the server at 400 k readings/s, three
/// widths), and `add_reading` with `plus_equals` the next with one window per width. A window's aggregate and
/// sketch are exactly the merge of its finer windows' (count, sums, min, max, first and last are semigroups; DDSketch
/// merges add counts, which `sketch`'s property tests check bit for bit), and the windows of a day all leave memory
/// together, so a window's finer windows are always all there. With the default widths a reading updates two
/// windows (its minute and its quarter-hour, which holds the sketch) instead of four; reading an hour merges 4
/// windows and a day 96 (~2–3 µs, `benches/benches/live_windows.rs`) instead of copying one.
pub const MAX_DERIVED_PARTS: i64 = 96;

/// Per width (in [`Width::ALL`]'s order), where its windows come from when `sketched` are the widths that carry a
/// sketch: a width is merged from the coarsest finer held width within [`MAX_DERIVED_PARTS`] windows that carries a
/// sketch if it needs one, and held otherwise. The finest width is always held.
fn sources(sketched: &[Width]) -> [Source; 4] {
    let mut sources = [Source::Own { sketched: false }; 4];
    for (i, width) in Width::ALL.into_iter().enumerate() {
        let wants = sketched.contains(&width);
        let from = Width::ALL[..i].iter().rev().copied().find(|finer| {
            matches!(sources[width_index(*finer)], Source::Own { sketched } if sketched || !wants)
                && width.micros() / finer.micros() <= MAX_DERIVED_PARTS
        });
        sources[i] = match from {
            Some(from) => Source::Finer { from, sketched: wants },
            None => Source::Own { sketched: wants },
        };
    }
    sources
}

fn width_index(width: Width) -> usize {
    match width {
        Width::Minute => 0,
        Width::QuarterHour => 1,
        Width::Hour => 2,
        Width::Day => 3,
    }
}

impl LiveWindows {
    /// Live windows that keep each series' days within `horizon_micros` of its newest reading (`None`: all days).
    pub fn new(horizon_micros: Option<i64>) -> Self {
        LiveWindows {
            series: HashMap::default(),
            sensors: BTreeSet::new(),
            windows: 0,
            horizon_micros: horizon_micros.map(|h| h.max(0)),
            rolled_through: i64::MIN,
            start_from: i64::MIN,
            dropped_readings: 0,
            sources: sources(&DEFAULT_SKETCHED_WIDTHS),
            sketch_bytes: 0,
        }
    }

    /// The same live windows where only `widths` carry a quantile sketch ([`DEFAULT_SKETCHED_WIDTHS`] by default).
    pub fn with_sketched_widths(mut self, widths: &[Width]) -> Self {
        self.sources = sources(widths);
        self
    }

    /// Adds one reading (`agg`: its aggregate, times its multiplicity; `bucket`: its value's sketch bucket) into its
    /// window of every held width, with one lookup of its series (four, one per width, were the top of the
    /// statistics' profile); the other widths are merged from those when read.
    pub fn add_reading(&mut self, key: SeriesKey, micros: i64, agg: &WindowAgg, bucket: Option<Bucket>) {
        let start_from = self.start_from;
        let sensors = &mut self.sensors;
        let series = self.series.entry(key).or_insert_with(|| {
            sensors.insert(key.sensor);
            SeriesWindows { by_width: Default::default(), newest: i64::MIN, live_from: start_from, latest: agg.last }
        });
        // Before the horizon's check: a reading too old for the windows may still be its series' latest (one of a
        // series first seen after a start that loaded only recent days).
        series.latest.keep_later(&agg.last);
        // `live_from` is a day boundary: a reading's windows of every width are all before it, or none is.
        if Width::Day.start_of(micros) < series.live_from {
            self.dropped_readings += agg.count.max(0) as u64;
            return;
        }
        for (width, source) in Width::ALL.into_iter().zip(self.sources) {
            let Source::Own { sketched } = source else { continue };
            let start = width.start_of(micros);
            let windows = &mut series.by_width[width_index(width)];
            // The window's index, and whether it is new (then it starts as `agg` itself, not as zero plus `agg`).
            let (i, new) = match windows.last().map(|(s, _)| *s) {
                Some(last) if last == start => (windows.len() - 1, false),
                Some(last) if last > start => match windows.binary_search_by_key(&start, |(s, _)| *s) {
                    Ok(i) => (i, false),
                    Err(i) => {
                        windows.insert(i, (start, agg.clone()));
                        (i, true)
                    }
                },
                _ => {
                    // A series with one window (most of a sparse or short-lived one) holds room for one, not four.
                    if windows.capacity() == 0 {
                        windows.reserve_exact(1);
                    }
                    windows.push((start, agg.clone()));
                    (windows.len() - 1, true)
                }
            };
            self.windows += usize::from(new);
            let window = &mut windows[i].1;
            if !new {
                window.plus_equals(agg);
            }
            if let Some(bucket) = bucket.filter(|_| sketched) {
                let before = window.heap_bytes();
                window.add_to_sketch(bucket, agg.count.max(0) as u64);
                self.sketch_bytes = self.sketch_bytes + window.heap_bytes() - before;
            }
        }
        if agg.last.micros > series.newest {
            series.newest = agg.last.micros;
            let (windows, bytes) = evict(series, self.horizon_micros, self.rolled_through);
            self.windows -= windows;
            self.sketch_bytes -= bytes;
        }
    }

    /// Reads, changing nothing, the state that adding `readings` (with their values' `buckets`) will update: their
    /// series' entries, the newest window of each held width, and its sketch's bucket. Why: each is a cache miss,
    /// and within one reading they depend on each other (the series' entry says where its windows are, a window
    /// where its sketch is), so the worker waited for them one after another; here the loads of different readings
    /// do not depend on each other, and the processor has those of a whole group in flight at once. Adding a
    /// group of readings just read finds them in cache.
    pub fn warm(&self, readings: &[(Reading, isize)], buckets: &[Option<Bucket>]) {
        let mut seen = 0u64;
        for ((r, _), bucket) in readings.iter().zip(buckets) {
            let Some(s) = self.series.get(&r.series) else { continue };
            for (windows, source) in s.by_width.iter().zip(self.sources) {
                if let (Source::Own { .. }, Some((start, agg))) = (source, windows.last()) {
                    seen ^= (start ^ agg.count ^ agg.last.micros) as u64;
                    if let (Some(sketch), Some(bucket)) = (agg.sketch(), bucket) {
                        seen ^= sketch.count_of(*bucket);
                    }
                }
            }
        }
        std::hint::black_box(seen);
    }

    /// Counts a late or duplicate reading of `series` at `micros` in each of its windows that is held (a window
    /// that is not — its day left memory — is not made for it; an in-order admission counts nothing).
    pub fn add_verdict(&mut self, series: SeriesKey, micros: i64, admission: Admission) {
        let verdict = match admission {
            Admission::InOrder => return,
            Admission::Late => WindowAgg::verdicts(1, 0),
            Admission::Duplicate => WindowAgg::verdicts(0, 1),
        };
        let Some(s) = self.series.get_mut(&series) else { return };
        for (width, source) in Width::ALL.into_iter().zip(self.sources) {
            if !matches!(source, Source::Own { .. }) {
                continue;
            }
            let windows = &mut s.by_width[width_index(width)];
            if let Ok(i) = windows.binary_search_by_key(&width.start_of(micros), |(start, _)| *start) {
                windows[i].1.plus_equals(&verdict);
            }
        }
    }

    /// Days ending at or before `micros` have their rollups written (it only moves forward): their windows may
    /// leave once they are beyond the horizon.
    pub fn set_rolled_through(&mut self, micros: i64) {
        if micros <= self.rolled_through {
            return;
        }
        self.rolled_through = micros;
        for series in self.series.values_mut() {
            let (windows, bytes) = evict(series, self.horizon_micros, micros);
            self.windows -= windows;
            self.sketch_bytes -= bytes;
        }
    }

    /// Series seen from now on are live from the day boundary `micros` (their windows before it were not loaded).
    pub fn set_start_from(&mut self, micros: i64) {
        self.start_from = Width::Day.start_of(micros);
    }

    /// From where `series`' windows are live (a day boundary; `i64::MIN`: all of them): the windows before it are
    /// answered from rollups.
    pub fn live_from(&self, series: SeriesKey) -> i64 {
        self.series.get(&series).map_or(self.start_from, |s| s.live_from)
    }

    /// The latest reading of each series this worker holds, of `device` only when given (unordered).
    pub fn latest(&self, device: Option<DeviceId>) -> Vec<(SeriesKey, Latest)> {
        match device {
            // A lookup per sensor, while that is fewer than the series.
            Some(device) if self.sensors.len() < self.series.len() => self
                .sensors
                .iter()
                .map(|&sensor| SeriesKey { device, sensor })
                .filter_map(|key| self.series.get(&key).map(|s| (key, s.latest)))
                .collect(),
            _ => {
                let of_device = |key: &SeriesKey| device.is_none_or(|d| key.device == d);
                self.series.iter().filter(|(key, _)| of_device(key)).map(|(key, s)| (*key, s.latest)).collect()
            }
        }
    }

    /// Readings dropped because their windows were no longer live.
    pub fn dropped_readings(&self) -> u64 {
        self.dropped_readings
    }

    /// Heap memory of the windows' sketches (beyond [`BYTES_PER_WINDOW`] each).
    pub fn sketch_bytes(&self) -> usize {
        self.sketch_bytes
    }

    /// The windows of `series` and `width` whose start is in `[from, to)`, in order.
    pub fn scan(&self, series: SeriesKey, width: Width, from: i64, to: i64) -> Vec<(WindowKey, WindowAgg)> {
        let Some(s) = self.series.get(&series) else { return Vec::new() };
        if from >= to {
            return Vec::new();
        }
        let key = |start| WindowKey { series, width, start };
        match self.sources[width_index(width)] {
            Source::Own { .. } => {
                let windows = &s.by_width[width_index(width)];
                let first = windows.partition_point(|(start, _)| *start < from);
                let end = windows.partition_point(|(start, _)| *start < to);
                windows[first..end.max(first)].iter().map(|(start, agg)| (key(*start), agg.clone())).collect()
            }
            Source::Finer { from: finer, sketched } => {
                // The held windows of the finer width that make up the windows starting in [from, to): a window's
                // parts are consecutive, and the start of the window a part is in grows with the part's start.
                let parts = &s.by_width[width_index(finer)];
                let first = parts.partition_point(|(start, _)| width.start_of(*start) < from);
                let end = parts.partition_point(|(start, _)| width.start_of(*start) < to);
                parts[first..end.max(first)]
                    .chunk_by(|(a, _), (b, _)| width.start_of(*a) == width.start_of(*b))
                    .map(|run| (key(width.start_of(run[0].0)), merged(run, sketched)))
                    .collect()
            }
        }
    }

    /// The window `key`, if this worker holds it (or, for a width merged when read, one of its parts).
    pub fn get(&self, key: &WindowKey) -> Option<WindowAgg> {
        let s = self.series.get(&key.series)?;
        match self.sources[width_index(key.width)] {
            Source::Own { .. } => {
                let windows = &s.by_width[width_index(key.width)];
                let i = windows.binary_search_by_key(&key.start, |(s, _)| *s).ok()?;
                Some(windows[i].1.clone())
            }
            Source::Finer { from: finer, sketched } => {
                if key.width.start_of(key.start) != key.start {
                    return None;
                }
                let parts = &s.by_width[width_index(finer)];
                let first = parts.partition_point(|(start, _)| *start < key.start);
                let end = parts.partition_point(|(start, _)| key.width.start_of(*start) <= key.start);
                let run = &parts[first..end.max(first)];
                (!run.is_empty()).then(|| merged(run, sketched))
            }
        }
    }

    /// How many windows are held.
    pub fn len(&self) -> usize {
        self.windows
    }

    pub fn is_empty(&self) -> bool {
        self.windows == 0
    }

    /// How many series have windows here.
    pub fn series(&self) -> usize {
        self.series.len()
    }
}

/// One window merged from the finer windows `parts` it is made of (at least one), with their sketches when `sketched`.
fn merged(parts: &[(i64, WindowAgg)], sketched: bool) -> WindowAgg {
    let ((_, first), rest) = parts.split_first().expect("a window is merged from at least one part");
    if !sketched {
        let mut window = first.clone_without_sketch();
        rest.iter().for_each(|(_, part)| window.plus_equals_without_sketch(part));
        return window;
    }
    let mut window = first.clone();
    rest.iter().for_each(|(_, part)| window.plus_equals(part));
    window
}

/// Lets `series`' days leave that lie neither wholly within its horizon nor among the days not rolled up yet;
/// returns how many windows left and the sketch bytes they held.
fn evict(series: &mut SeriesWindows, horizon_micros: Option<i64>, rolled_through: i64) -> (usize, usize) {
    let Some(horizon) = horizon_micros else { return (0, 0) };
    // Only days wholly within the horizon stay, so that a live day lies wholly within the dedup horizon too (with
    // --live-horizon = --dedup-horizon) and never holds a duplicate that deduplication let through as too old; and
    // every day not rolled up yet stays.
    let (within, rolled) = (series.newest.saturating_sub(horizon), rolled_through);
    // (Far below any timestamp a reading may have, and where a day's start would overflow.)
    if within.min(rolled) < -(1 << 62) {
        return (0, 0);
    }
    let cutoff = day_ceil(within).min(Width::Day.start_of(rolled));
    if cutoff <= series.live_from {
        return (0, 0);
    }
    series.live_from = cutoff;
    let (mut left, mut bytes) = (0, 0);
    for windows in &mut series.by_width {
        let gone = windows.partition_point(|(start, _)| *start < cutoff);
        bytes += windows.drain(..gone).map(|(_, w)| w.heap_bytes()).sum::<usize>();
        windows.shrink_to(windows.len() * 2);
        left += gone;
    }
    (left, bytes)
}

/// The first day boundary at or after `micros`.
fn day_ceil(micros: i64) -> i64 {
    let start = Width::Day.start_of(micros);
    if start == micros { start } else { start.saturating_add(Width::Day.micros()) }
}

/// How many readings [`LiveWindows::warm`] (and deduplication's `warm`) read ahead of using them: enough misses in
/// flight to overlap, few enough that what they bring stays in the first-level cache.
pub(crate) const WARM_GROUP: usize = 16;

/// The readings and verdicts of one time not yet applied (readings with their multiplicity), with a capability for
/// that time (which holds the probe back).
type Pending = (Capability<Time>, Vec<(Reading, isize)>, Vec<Verdict>);

/// `live_windows`: deduplicated readings and deduplication's verdicts in, the live windows filled.
///
/// In: a collection of [`Reading`]s (each present once), on the worker that owns each reading's device, and the
/// [`Verdict`]s on that worker's late and duplicate readings (at their record's time; they apply with the readings
/// of the same `grid` cell, [`on_grid`]). Each reading adds into its window of every held width in `store` (and its
/// value's bucket into the sketches of the held widths that carry one; the 1-minute, 15-minute, 1-hour and 1-day
/// UTC windows are all answered, the others merged when read); each verdict then counts a late or duplicate reading
/// in the same windows. Updates of one time are applied together once both input
/// frontiers have passed it; `on_updates` then may read which windows changed at that time (for live
/// subscriptions; a window appears once per reading or verdict that changed it, and nothing is computed unless
/// read). Out: a stream without data whose frontier says which times are applied (for a probe).
pub fn live_windows<'scope>(
    readings: VecCollection<'scope, Time, Reading, isize>,
    verdicts: Stream<'scope, Time, Vec<Verdict>>,
    grid: Time,
    store: SharedLiveWindows,
    mut on_updates: impl FnMut(&mut dyn Iterator<Item = (Time, WindowKey)>) + 'static,
) -> Stream<'scope, Time, Vec<()>> {
    readings.inner.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        verdicts,
        Pipeline,
        Pipeline,
        "LiveWindows",
        move |_capability, _info| {
            // Readings and verdicts not yet applied, by time, each with a capability for its time (which holds the
            // probe back).
            let mut pending: BTreeMap<Time, Pending> = BTreeMap::new();
            move |(readings_in, readings_frontier), (verdicts_in, verdicts_frontier), _output| {
                readings_in.for_each(|capability, data| {
                    for (reading, time, diff) in data.drain(..) {
                        let (_, readings, _) = pending
                            .entry(time)
                            .or_insert_with(|| (capability.delayed(&time, 0), Vec::new(), Vec::new()));
                        readings.push((reading, diff));
                    }
                });
                verdicts_in.for_each(|capability, data| {
                    for verdict in data.drain(..) {
                        let time = on_grid(verdict.time, grid);
                        let (_, _, verdicts) = pending
                            .entry(time)
                            .or_insert_with(|| (capability.delayed(&time, 0), Vec::new(), Vec::new()));
                        verdicts.push(verdict);
                    }
                });
                while let Some((&time, _)) = pending.first_key_value() {
                    if readings_frontier.less_equal(&time) || verdicts_frontier.less_equal(&time) {
                        break;
                    }
                    let Some((_, (_capability, mut readings, verdicts))) = pending.pop_first() else { break };
                    // One series after another: its windows (and their sketches' buckets) stay in cache while its
                    // readings are added, instead of a cache miss a reading when series interleave (with sketches,
                    // `Store::add` was 13 % of the server's CPU at 400 k readings/s in arrival order). Adding is
                    // commutative, so the order changes no window.
                    readings.sort_by_key(|(r, _)| r.series);
                    {
                        let mut store = store.borrow_mut();
                        for group in readings.chunks(WARM_GROUP) {
                            let buckets: [Option<Bucket>; WARM_GROUP] =
                                std::array::from_fn(|i| group.get(i).and_then(|(r, _)| Bucket::of(r.value)));
                            store.warm(group, &buckets);
                            for ((r, diff), bucket) in group.iter().zip(buckets) {
                                store.add_reading(r.series, r.micros, &WindowAgg::of(r).multiply(diff), bucket);
                            }
                        }
                        for v in &verdicts {
                            store.add_verdict(v.series, v.micros, v.admission);
                        }
                    }
                    // Lazily: with nobody subscribed the callback reads none of it (sorting the changed windows
                    // here was 9 % of the worker); a window repeated is the callback's to fold.
                    let changed = readings
                        .iter()
                        .map(|(r, _)| (r.series, r.micros))
                        .chain(verdicts.iter().map(|v| (v.series, v.micros)));
                    on_updates(&mut changed.flat_map(|(series, micros)| {
                        Width::ALL.map(|width| (time, WindowKey { series, width, start: width.start_of(micros) }))
                    }));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, SensorId};
    use crate::sketch::Sketch;
    use differential_dataflow::difference::Monoid;

    fn key(device: u64, width: Width, start: i64) -> WindowKey {
        WindowKey { series: SeriesKey { device: DeviceId(device), sensor: SensorId(0) }, width, start }
    }

    fn agg(micros: i64, value: f64) -> WindowAgg {
        WindowAgg::of(&Reading {
            series: SeriesKey { device: DeviceId(0), sensor: SensorId(0) },
            micros,
            value,
            seq: 0,
        })
    }

    #[test]
    fn one_devices_latest_values_are_looked_up_or_scanned_alike() {
        let mut live = LiveWindows::new(None);
        for (seq, (device, sensor)) in [(1, 0), (1, 1), (2, 0), (3, 1), (1, 0), (2, 2)].into_iter().enumerate() {
            let series = SeriesKey { device: DeviceId(device), sensor: SensorId(sensor) };
            let r = Reading { series, micros: 10 * seq as i64, value: seq as f64, seq: seq as u64 };
            live.add_reading(series, r.micros, &WindowAgg::of(&r), None);
        }
        assert!(live.sensors.len() < live.series.len(), "the lookup is what is tested");
        for device in [1, 2, 3, 4].map(DeviceId) {
            let mut looked_up = live.latest(Some(device));
            let mut scanned: Vec<_> = live.latest(None).into_iter().filter(|(k, _)| k.device == device).collect();
            looked_up.sort_by_key(|(k, _)| *k);
            scanned.sort_by_key(|(k, _)| *k);
            assert_eq!(looked_up, scanned, "device {device:?}");
        }
        assert_eq!(live.latest(Some(DeviceId(1))).iter().map(|(_, l)| l.value).sum::<f64>(), 4.0 + 1.0);
    }

    #[test]
    fn windows_accumulate_and_scan_in_order() {
        const MINUTE: i64 = 60_000_000;
        let mut live = LiveWindows::default();
        let series = |device| key(device, Width::Minute, 0).series;
        for (micros, v) in [(2 * MINUTE, 1.0), (0, 2.0), (MINUTE, 3.0), (1, 4.0)] {
            live.add_reading(series(1), micros, &agg(micros, v), None);
        }
        live.add_reading(series(2), 0, &agg(0, 9.0), None);
        // Held: three minutes and a quarter-hour of series 1, a minute and a quarter-hour of series 2.
        assert_eq!((live.len(), live.series()), (6, 2));
        let scanned = live.scan(series(1), Width::Minute, 0, 2 * MINUTE);
        assert_eq!(scanned.iter().map(|(k, a)| (k.start, a.count)).collect::<Vec<_>>(), vec![(0, 2), (MINUTE, 1)]);
        assert_eq!(live.get(&key(1, Width::Minute, 0)).map(|a| a.sum()), Some(6.0));
        // An hour is merged from its quarter-hours when read; a start that is no hour's is none.
        assert_eq!(live.get(&key(1, Width::Hour, 0)).map(|a| (a.count, a.sum())), Some((4, 10.0)));
        assert_eq!(live.get(&key(1, Width::Hour, MINUTE)), None);
        assert_eq!(live.scan(series(1), Width::Day, 0, 1).len(), 1);
        assert!(live.scan(series(1), Width::Day, 1, i64::MAX).is_empty());
        assert!(live.scan(series(3), Width::Minute, 0, 1_000).is_empty());
        assert!(live.scan(series(1), Width::Minute, 100, 0).is_empty());
    }

    use proptest::prelude::*;

    const DAY: i64 = 86_400_000_000;

    proptest! {
        /// Readings in any order over ten days, seals (rolled-through moving on) between them, any horizon: at the
        /// end each series holds exactly the windows a from-scratch model computes from the readings at or after
        /// its `live_from`, which is the day of min(newest − horizon, rolled through); nothing before it is held,
        /// and the window count is exact. Each series' latest reading is that of all its readings.
        #[test]
        fn eviction_keeps_exactly_the_days_within_the_horizon_or_not_rolled_up(
            steps in proptest::collection::vec(
                prop_oneof![
                    // Quarter-days as well, so that readings share timestamps (the first written is then the latest).
                    4 => (0u64..3, prop_oneof![0i64..10 * DAY, (0i64..40).prop_map(|q| q * DAY / 4)], -100i32..100)
                        .prop_map(|(d, t, v)| Ok((d, t, f64::from(v)))),
                    1 => (0i64..11).prop_map(|days| Err(days * DAY)),
                ],
                0..200,
            ),
            horizon_days in 0i64..4,
        ) {
            let horizon = horizon_days * DAY + DAY / 2;
            let mut live = LiveWindows::new(Some(horizon));
            let mut rolled = i64::MIN;
            let mut readings: Vec<Reading> = Vec::new();
            for (seq, step) in steps.iter().enumerate() {
                match *step {
                    Ok((device, micros, value)) => {
                        let r = Reading { series: SeriesKey { device: DeviceId(device), sensor: SensorId(0) }, micros, value, seq: seq as u64 };
                        live.add_reading(r.series, micros, &WindowAgg::of(&r), None);
                        readings.push(r);
                    }
                    Err(through) => {
                        rolled = rolled.max(through);
                        live.set_rolled_through(through);
                    }
                }
            }
            let mut total = 0;
            for device in 0..3 {
                let series = SeriesKey { device: DeviceId(device), sensor: SensorId(0) };
                let mine: Vec<&Reading> = readings.iter().filter(|r| r.series == series).collect();
                // The latest reading is every reading's, those too old for the windows included.
                let latest = live.latest(Some(series.device)).into_iter().map(|(k, l)| (k, (l.micros, l.seq, l.value)));
                let want = mine.iter().max_by_key(|r| (r.micros, std::cmp::Reverse(r.seq)));
                prop_assert_eq!(latest.collect::<Vec<_>>(), want.map(|r| (series, (r.micros, r.seq, r.value))).into_iter().collect::<Vec<_>>());
                let Some(newest) = mine.iter().map(|r| r.micros).max() else {
                    prop_assert_eq!(live.live_from(series), i64::MIN);
                    continue;
                };
                let live_from = if rolled == i64::MIN {
                    i64::MIN
                } else {
                    day_ceil(newest - horizon).min(Width::Day.start_of(rolled))
                };
                prop_assert_eq!(live.live_from(series), live_from);
                for width in Width::ALL {
                    let mut model: BTreeMap<i64, WindowAgg> = BTreeMap::new();
                    for r in mine.iter().filter(|r| r.micros >= live_from) {
                        model.entry(width.start_of(r.micros)).or_insert_with(WindowAgg::zero).plus_equals(&WindowAgg::of(r));
                    }
                    let held: BTreeMap<i64, WindowAgg> =
                        live.scan(series, width, i64::MIN, i64::MAX).into_iter().map(|(k, a)| (k.start, a)).collect();
                    prop_assert_eq!(held.len(), model.len());
                    for ((s1, a), (s2, b)) in held.iter().zip(&model) {
                        prop_assert_eq!(s1, s2);
                        prop_assert_eq!((a.count, a.min, a.max, a.first, a.last), (b.count, b.min, b.max, b.first, b.last));
                        prop_assert!((a.sum() - b.sum()).abs() < 1e-9);
                    }
                    // Windows of the widths merged when read are not held.
                    if matches!(live.sources[width_index(width)], Source::Own { .. }) {
                        total += model.len();
                    }
                }
            }
            prop_assert_eq!(live.len(), total);
            prop_assert!(live.dropped_readings() <= readings.len() as u64);
        }

        /// Readings of any values (folding ones among them) in any order over three days, seals and a horizon
        /// between them, any set of sketched widths: every window read — by `scan` and by `get`, whether held or
        /// merged from finer windows when read — holds exactly the numbers of its readings, and the sketch of
        /// them for a sketched width and none for the others; a window without readings is not answered.
        #[test]
        fn every_window_reads_the_numbers_and_sketch_of_its_readings(
            steps in proptest::collection::vec(
                prop_oneof![
                    6 => (0u64..2, 0i64..3 * DAY, prop_oneof![
                        -1e6f64..1e6,
                        Just(0.0),
                        (-300i32..300, -10.0f64..10.0).prop_map(|(e, m)| m * 10f64.powi(e)),
                    ]).prop_map(Ok),
                    1 => (0i64..4).prop_map(|days| Err(days * DAY)),
                ],
                0..300,
            ),
            sketched in proptest::sample::subsequence(Width::ALL.to_vec(), 0..=4),
            horizon_days in 0i64..3,
        ) {
            let horizon = horizon_days * DAY + DAY / 2;
            let mut live = LiveWindows::new(Some(horizon)).with_sketched_widths(&sketched);
            let mut readings: Vec<Reading> = Vec::new();
            for (seq, step) in steps.iter().enumerate() {
                match *step {
                    Ok((device, micros, value)) => {
                        let r = Reading { series: SeriesKey { device: DeviceId(device), sensor: SensorId(0) }, micros, value, seq: seq as u64 };
                        live.add_reading(r.series, micros, &WindowAgg::of(&r), Bucket::of(value));
                        readings.push(r);
                    }
                    Err(through) => live.set_rolled_through(through),
                }
            }
            for device in 0..2 {
                let series = SeriesKey { device: DeviceId(device), sensor: SensorId(0) };
                let live_from = live.live_from(series);
                for width in Width::ALL {
                    let mut model: BTreeMap<i64, (WindowAgg, Sketch)> = BTreeMap::new();
                    for r in readings.iter().filter(|r| r.series == series && r.micros >= live_from) {
                        let (agg, sketch) = model.entry(width.start_of(r.micros)).or_insert_with(|| (WindowAgg::zero(), Sketch::default()));
                        agg.plus_equals(&WindowAgg::of(r));
                        sketch.add_value(r.value);
                    }
                    let held = live.scan(series, width, i64::MIN, i64::MAX);
                    prop_assert_eq!(held.len(), model.len());
                    for ((key, agg), (start, (numbers, sketch))) in held.iter().zip(&model) {
                        prop_assert_eq!(key.start, *start);
                        prop_assert_eq!(
                            (agg.count, agg.min, agg.max, agg.first, agg.last),
                            (numbers.count, numbers.min, numbers.max, numbers.first, numbers.last)
                        );
                        let tolerance = 1e-9 * (1.0 + numbers.sum().abs());
                        prop_assert!((agg.sum() - numbers.sum()).abs() <= tolerance, "{} vs {}", agg.sum(), numbers.sum());
                        // Every window's neighbours are not answered as it: a start between windows reads nothing.
                        prop_assert_eq!(live.get(&WindowKey { start: key.start + 1, ..*key }), None);
                        let want = sketched.contains(&width).then_some(sketch);
                        prop_assert_eq!(agg.sketch(), want, "{:?} at {}", width, start);
                        let got = live.get(key);
                        prop_assert_eq!(got.as_ref().and_then(WindowAgg::sketch), want);
                        // The sketch covers every reading of the window: its quantiles are answered.
                        prop_assert_eq!(agg.quantile(0.5).is_some(), want.is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn widths_are_merged_from_the_coarsest_held_width_within_the_merge_bound() {
        use Source::{Finer, Own};
        use Width::{Day, Hour, Minute, QuarterHour};
        let plain = Own { sketched: false };
        assert_eq!(
            sources(&[]),
            [plain, Finer { from: Minute, sketched: false }, Finer { from: Minute, sketched: false }, plain]
        );
        // The defaults: a reading updates its minute and its quarter-hour (which keeps the sketch).
        assert_eq!(
            sources(&DEFAULT_SKETCHED_WIDTHS),
            [
                plain,
                Own { sketched: true },
                Finer { from: QuarterHour, sketched: true },
                Finer { from: QuarterHour, sketched: true }
            ]
        );
        assert_eq!(
            sources(&Width::ALL),
            [
                Own { sketched: true },
                Finer { from: Minute, sketched: true },
                Finer { from: Minute, sketched: true },
                Own { sketched: true }
            ]
        );
        assert_eq!(
            sources(&[Day]),
            [
                plain,
                Finer { from: Minute, sketched: false },
                Finer { from: Minute, sketched: false },
                Own { sketched: true }
            ]
        );
        assert_eq!(
            sources(&[Hour]),
            [
                plain,
                Finer { from: Minute, sketched: false },
                Own { sketched: true },
                Finer { from: Hour, sketched: false }
            ]
        );
    }
}
