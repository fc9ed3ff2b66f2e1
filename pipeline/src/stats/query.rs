//! Questions the HTTP side asks the statistics dataflow, and how each worker answers from its arrangements.

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use timely::progress::Antichain;
use weir_operators::stats::NamesTrace;

pub use super::changes::WindowFilter;
use weir_operators::{DeviceId, Latest, NameId, SensorId, SeriesKey, SharedLiveWindows, Width, WindowAgg, WindowKey};

/// A question for the statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Query {
    /// The windows of one series and width whose start is in `[from, to)` (microseconds).
    Series { series: SeriesKey, width: Width, from: i64, to: i64 },
    /// The latest value of every series of `device`, or of every series when `None`.
    Latest { device: Option<DeviceId> },
    /// Every device with its name.
    Devices,
    /// Every sensor with its name (those stored at any process of a cluster).
    Sensors,
    /// The windows matching `filter` that changed at or after `since` (a live subscription's poll; `None`: a new
    /// subscription asking where changes start).
    Changes { since: Option<u64>, filter: WindowFilter },
    /// Where each process's archive stands (answered by each process's first worker, not from the statistics);
    /// with `flush`, each process is also asked to flush what its log holds now.
    Archive { flush: bool },
    /// `process` stops its statistics: every worker records it, and leaves once every process has (see
    /// [`stopping`](super::stopping)). Answered with [`Answer::Stopping`] by every worker.
    Stopping { process: u32 },
}

/// One process's archive, as its first worker answers [`Query::Archive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveState {
    pub process: u32,
    /// The last position of its log acknowledged when it answered.
    pub durable: u64,
    /// The last position of its log whose readings are committed to the archive.
    pub committed: u64,
    /// Whether it has loaded the archive at start (statistics and archiver): until every process has, no day may
    /// be sealed, because sealing replaces parts that a loading process may be reading.
    pub loaded: bool,
}

/// An answer, merged over all workers and sorted by key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Answer {
    /// The live windows asked for, and from where the series' windows are live (a day boundary; `i64::MIN`: all):
    /// the windows before it have left memory and are in the archive's rollups.
    Windows {
        windows: Vec<(WindowKey, WindowAgg)>,
        live_from: i64,
    },
    Latest(Vec<(SeriesKey, Latest)>),
    Devices(Vec<(DeviceId, String)>),
    Sensors(Vec<(SensorId, String)>),
    Archive(Vec<ArchiveState>),
    /// Changed windows with their current values; `through`: the next poll's `since`; `resync`: the changes no
    /// longer reach back to `since`, take the whole state again.
    Changes {
        windows: Vec<(WindowKey, WindowAgg)>,
        through: u64,
        resync: bool,
    },
    /// A worker has recorded a [`Query::Stopping`].
    Stopping,
}

impl Answer {
    /// Combines the partial answers of several workers (each holds the keys routed to it).
    pub fn merge(parts: Vec<Answer>) -> Option<Answer> {
        let mut parts = parts.into_iter();
        let mut out = parts.next()?;
        for part in parts {
            match (&mut out, part) {
                (Answer::Windows { windows, live_from }, Answer::Windows { windows: more, live_from: other }) => {
                    windows.extend(more);
                    // Only the worker holding the series knows it; the others say where any series starts.
                    *live_from = (*live_from).max(other);
                }
                (Answer::Latest(a), Answer::Latest(b)) => a.extend(b),
                (Answer::Devices(a), Answer::Devices(b)) => a.extend(b),
                (Answer::Sensors(a), Answer::Sensors(b)) => a.extend(b),
                (Answer::Archive(a), Answer::Archive(b)) => a.extend(b),
                (
                    Answer::Changes { windows, through, resync },
                    Answer::Changes { windows: more, through: other, resync: behind },
                ) => {
                    windows.extend(more);
                    *through = (*through).min(other);
                    *resync |= behind;
                }
                (Answer::Stopping, Answer::Stopping) => {}
                _ => {}
            }
        }
        match &mut out {
            Answer::Windows { windows, .. } => windows.sort_by_key(|(k, _)| *k),
            Answer::Latest(a) => a.sort_by_key(|(k, _)| *k),
            Answer::Devices(a) => {
                a.sort();
                a.dedup();
            }
            Answer::Sensors(a) => {
                a.sort();
                a.dedup();
            }
            Answer::Archive(a) => a.sort_by_key(|s| s.process),
            Answer::Changes { windows, .. } => windows.sort_by_key(|(k, _)| *k),
            Answer::Stopping => {}
        }
        Some(out)
    }
}

/// The state one worker answers from.
pub struct WorkerTraces {
    /// The live windows, with each series' latest reading.
    pub windows: SharedLiveWindows,
    pub names: NamesTrace,
}

impl WorkerTraces {
    /// This worker's part of the answer to `query`.
    pub fn answer(&mut self, query: &Query) -> Answer {
        match query {
            Query::Series { series, width, from, to } => {
                let windows = self.windows.borrow();
                Answer::Windows {
                    windows: windows.scan(*series, *width, *from, *to),
                    live_from: windows.live_from(*series),
                }
            }
            Query::Latest { device } => Answer::Latest(self.windows.borrow().latest(*device)),
            Query::Devices => Answer::Devices(self.names_of(NameId::Device(DeviceId(0)), |id| match id {
                NameId::Device(id) => Some(id),
                NameId::Sensor(_) => None,
            })),
            Query::Sensors => Answer::Sensors(self.names_of(NameId::Sensor(SensorId(0)), |id| match id {
                NameId::Sensor(id) => Some(id),
                NameId::Device(_) => None,
            })),
            // Not the statistics' alone to answer: see `answers`.
            Query::Archive { .. } => Answer::Archive(Vec::new()),
            Query::Changes { .. } => Answer::Changes { windows: Vec::new(), through: u64::MAX, resync: false },
            Query::Stopping { .. } => Answer::Stopping,
        }
    }
}

impl WorkerTraces {
    /// The names of one kind: keys from `first` on while `id_of` takes them (the kinds are contiguous in the
    /// arrangement's order), with their ids.
    fn names_of<Id>(&mut self, first: NameId, id_of: impl Fn(NameId) -> Option<Id>) -> Vec<(Id, String)> {
        let lower = (first, String::new());
        let names: Vec<((NameId, String), isize)> =
            scan!(self.names, &lower, |k: &(NameId, String)| id_of(k.0).is_some(), 0isize);
        names.into_iter().filter(|(_, n)| *n > 0).filter_map(|((id, name), _)| Some((id_of(id)?, name))).collect()
    }

    /// The current statistics of each of `keys` (sorted) that this worker holds.
    pub fn windows_at(&mut self, keys: &[WindowKey]) -> Vec<(WindowKey, WindowAgg)> {
        let windows = self.windows.borrow();
        keys.iter().filter_map(|key| windows.get(key).map(|agg| (*key, agg))).collect()
    }
}

/// Reads keys of `$trace` from `$lower` on while `$in_range(key)` holds, accumulating each key's differences from
/// `$zero`; yields `(key, accumulated)` for keys whose accumulation is not zero. (A macro rather than a generic
/// function: the cursor's key and difference types are generic associated types, which make the bounds unwieldy.)
macro_rules! scan {
    ($trace:expr, $lower:expr, $in_range:expr, $zero:expr) => {{
        let mut out = Vec::new();
        if let Some(spans) = $trace.spans_through(Antichain::new().borrow()) {
            let batches = spans.into_iter().filter_map(|s| s.inner).collect();
            let (mut cursor, storage) = cursor_list(batches);
            cursor.seek_key(&storage, $lower);
            while let Some(key) = cursor.get_key(&storage) {
                if !($in_range)(key) {
                    break;
                }
                let mut acc = $zero;
                while cursor.val_valid(&storage) {
                    cursor.map_times(&storage, |_time, diff| acc.plus_equals(diff));
                    cursor.step_val(&storage);
                }
                if !acc.is_zero() {
                    out.push((key.clone(), acc));
                }
                cursor.step_key(&storage);
            }
        }
        out
    }};
}
use scan;
