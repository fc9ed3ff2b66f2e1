//! Weir's dataflow operators: what the live statistics are, with no I/O.
//!
//! The statistics dataflow reads top to bottom:
//!
//! ```text
//! readings (WAL order) ─► dedup_first_write ─┬─► window_stats  (fold_by_key ─► arrange) WindowKey → WindowAgg
//!                                             └─► latest_by_time (fold_by_key ─► arrange) SeriesKey → Latest
//! device names ───────────────────────────────────────────────────► arrangement (DeviceId, name)
//! ```
//!
//! Aggregates are differential *differences* (semigroups), so an arrangement keeps one value per window or series,
//! not one per reading. [`stats::stats_dataflow`] wires the operators together; `weir-pipeline` runs it.

pub mod dedup;
pub mod fold;
pub mod latest;
pub mod model;
pub mod stats;
pub mod window;

pub use dedup::{Admission, Deduplicated, FirstWriteFilter, Verdict, dedup_first_write};
pub use latest::{Latest, LatestTrace, latest_by_time};
pub use model::{DeviceId, Reading, SeriesKey, Time, Width, WindowKey};
pub use window::{Stamped, WindowAgg, WindowTrace, window_stats};
