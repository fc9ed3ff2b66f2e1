//! Weir's dataflow operators: what the live statistics are, with no I/O.
//!
//! The statistics dataflow reads top to bottom:
//!
//! ```text
//! readings (WAL order) ─► dedup_first_write ─┬─► live_windows  (LiveWindows, with the verdicts: late, duplicate) WindowKey → WindowAgg
//!                                             └─► latest_by_time (fold_by_key ─► arrange) SeriesKey → Latest
//! device names ───────────────────────────────────────────────────► arrangement (DeviceId, name)
//! ```
//!
//! Aggregates are semigroups, so a window or series keeps one value, not one per reading: the latest values as
//! differential *differences* in an arrangement, the windows in memory of their own ([`live`], which can let go of
//! them). [`stats::stats_dataflow`] wires the operators together; `weir-pipeline` runs it.

pub mod completeness;
pub mod dedup;
pub mod fold;
pub mod latest;
pub mod live;
pub mod model;
pub mod sketch;
pub mod stats;
pub mod window;

pub use dedup::{Admission, Deduplicated, FirstWriteFilter, Verdict, dedup_first_write};
pub use latest::{Latest, LatestTrace, latest_by_time};
pub use live::{LiveWindows, SharedLiveWindows, live_windows};
pub use model::{DeviceId, NameId, Reading, SensorId, SeriesKey, Time, Width, WindowKey};
pub use window::{Stamped, WindowAgg};
