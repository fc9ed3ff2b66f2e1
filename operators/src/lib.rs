//! Weir's dataflow operators: what the live statistics are, with no I/O.
//!
//! The statistics dataflow reads top to bottom:
//!
//! ```text
//! readings (WAL order) ─► dedup_first_write ─► live_windows (LiveWindows, with the verdicts: late, duplicate)
//!                                                   WindowKey → WindowAgg, and SeriesKey → Latest
//! device names ──────────────────────────────► arrangement (DeviceId, name)
//! ```
//!
//! Aggregates are semigroups, so a window or series keeps one value, not one per reading, in memory of its own
//! ([`live`], which can let go of a day's windows). [`stats::stats_dataflow`] wires the operators together;
//! `weir-pipeline` runs it.

pub mod completeness;
pub mod dedup;
pub mod live;
pub mod model;
pub mod sketch;
pub mod stats;
pub mod window;

pub use dedup::{Admission, Deduplicated, FirstWriteFilter, Verdict, dedup_first_write};
pub use live::{LiveWindows, SharedLiveWindows, live_windows};
pub use model::{DeviceId, NameId, Reading, SensorId, SeriesKey, Time, Width, WindowKey};
pub use window::{Latest, Stamped, WindowAgg};
