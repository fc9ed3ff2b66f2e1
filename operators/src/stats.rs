//! The statistics dataflow, wired top to bottom: inputs, operators, arrangements, probe.

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::KeySpine;
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Concat, Exchange, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, Scope, Stream};

use crate::dedup::{Deduplicated, Verdict, dedup_first_write};
use crate::live::{LiveWindows, SharedLiveWindows, live_windows};
use crate::model::WindowKey;
use crate::model::{NameId, Reading, Time};

/// The arrangement of device and sensor names: key `(NameId, name)`, a count as difference.
pub type NamesTrace = TraceAgent<KeySpine<(NameId, String), Time, isize>>;

/// What a worker holds of one statistics dataflow: its inputs, its arrangements, and the probe that says how far it
/// has processed.
pub struct StatsDataflow<'scope> {
    /// Readings as written, at the time of their WAL record.
    pub readings: InputHandleVec<Time, Reading>,
    /// Device and sensor names, each inserted (at least) once.
    pub names: InputSession<Time, (NameId, String), isize>,
    /// Verdicts made before this start, from the archive's record of verdicts: counted into the live windows'
    /// late and duplicate counts like deduplication's own, and nothing else.
    pub judged: InputHandleVec<Time, Verdict>,
    /// The live windows, with each series' latest reading.
    pub windows: SharedLiveWindows,
    pub names_trace: NamesTrace,
    /// Deduplication's verdicts (duplicates dropped, late readings admitted), for the archive of the process that
    /// wrote them.
    pub verdicts: Stream<'scope, Time, Vec<Verdict>>,
    /// Keys deduplication remembers on this worker.
    pub dedup_keys: std::rc::Rc<std::cell::Cell<usize>>,
    pub probe: ProbeHandle<Time>,
}

/// `t` moved up to the next multiple of `grid` (itself when it is one): monotone, never earlier.
pub fn on_grid(t: Time, grid: Time) -> Time {
    let grid = grid.max(1);
    t.div_ceil(grid).saturating_mul(grid)
}

/// Builds the dataflow in `scope`: readings → `dedup_first_write` → `live_windows` (with its verdicts from time
/// `counted_from` on, and the verdicts `judged` brings from before the start), which keeps each series' latest
/// reading beside its windows.
/// `on_window_updates` sees which windows changed at which times (see [`live_windows`]).
///
/// Deduplication sees every reading at its own time (its write time: the order of first writes). The readings it
/// admits then move on to the next multiple of `grid` ([`on_grid`]) before the arrangements, so that updates of one
/// window within a grid cell consolidate in differential's batcher (one time per group commit made the batcher's
/// merge 17 % of the process's CPU near the maximum rate). Whoever compares a time with the arrangements' frontier
/// (marks, "loaded") moves it the same way.
pub fn stats_dataflow<'scope>(
    scope: Scope<'scope, Time>,
    horizon_micros: i64,
    grid: Time,
    (live, counted_from): (LiveWindows, Time),
    on_window_updates: impl FnMut(&mut dyn Iterator<Item = (Time, WindowKey)>) + 'static,
) -> StatsDataflow<'scope> {
    let mut readings = InputHandleVec::new();
    let mut judged = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let (names, name_collection) = scope.new_collection::<(NameId, String), isize>();

    let Deduplicated { admitted, verdicts, remembered } = dedup_first_write(readings.to_stream(scope), horizon_micros);
    let deduplicated = admitted.delay(move |t| on_grid(*t, grid));
    let windows: SharedLiveWindows = std::rc::Rc::new(std::cell::RefCell::new(live));
    // To the worker that deduplicates the verdict's device (as `dedup_first_write` routes readings), which holds its
    // windows.
    let earlier = judged.to_stream(scope).exchange(|v: &Verdict| v.series.device.0);
    // Deduplication's verdicts before `counted_from` judge readings replayed from a snapshot in the archive's order,
    // not their arrival order: what was late then is what `judged` says.
    let counted = verdicts.clone().filter(move |v: &Verdict| v.time >= counted_from);
    let all_verdicts = counted.concat(earlier);
    let windows_applied = live_windows(deduplicated, all_verdicts, grid, windows.clone(), on_window_updates);
    let names_arranged = name_collection.arrange_by_self_named("Names");

    windows_applied.probe_with(&probe);
    names_arranged.stream.probe_with(&probe);
    StatsDataflow {
        readings,
        names,
        judged,
        windows,
        names_trace: names_arranged.trace,
        verdicts,
        dedup_keys: remembered,
        probe,
    }
}
