//! Which windows changed recently, per worker: what live subscriptions poll.
//!
//! A subscription asks [`Query::Changes`](super::Query::Changes) every few milliseconds with the time its last
//! answer went up to; each worker answers with the windows it holds that changed at or after that time (and before
//! its frontier, so their values are complete), with their current values. A worker records changes only while
//! someone has asked within [`TRACKING`], and keeps them for [`RETENTION`] of wall-clock time: a subscriber further
//! behind is told to take the whole state again (`resync`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weir_operators::{DeviceId, SensorId, Time, Width, WindowKey};

/// Changes are recorded while a subscription has asked within this long.
pub const TRACKING: Duration = Duration::from_secs(30);
/// Recorded changes are kept this long.
pub const RETENTION: Duration = Duration::from_secs(10);

/// Which windows a subscription wants (every field: `None` = all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct WindowFilter {
    pub device: Option<DeviceId>,
    pub sensor: Option<SensorId>,
    pub width: Option<Width>,
}

impl WindowFilter {
    pub fn matches(&self, key: &WindowKey) -> bool {
        self.device.is_none_or(|d| key.series.device == d)
            && self.sensor.is_none_or(|s| key.series.sensor == s)
            && self.width.is_none_or(|w| key.width == w)
    }
}

/// One worker's log of recent window changes: per window, its last update (so memory is bounded by the windows
/// changed within [`RETENTION`], however fast they change).
#[derive(Debug, Default)]
pub struct RecentChanges {
    /// Window → (time of its last update, when it was recorded).
    entries: HashMap<WindowKey, (Time, Instant)>,
    /// When old entries were last dropped.
    pruned: Option<Instant>,
    /// When a subscription last asked; changes are recorded until `TRACKING` after it.
    last_asked: Option<Instant>,
    /// Changes at or after this time are all recorded (while tracking).
    complete_from: Option<Time>,
    /// This worker's frontier: every time before it is complete.
    pub frontier: Option<Time>,
}

/// A worker's answer to a poll.
pub struct ChangedSince {
    /// Windows whose last update is at or after the asked time.
    pub keys: Vec<WindowKey>,
    /// The time the answer goes up to (this worker's frontier).
    pub through: Time,
    /// The log does not reach back to the asked time: take the whole state again.
    pub resync: bool,
}

impl RecentChanges {
    fn tracking(&self, now: Instant) -> bool {
        self.last_asked.is_some_and(|t| now.duration_since(t) < TRACKING)
    }

    /// Records windows updated at their times (while someone subscribes).
    pub fn record(&mut self, updates: impl Iterator<Item = (Time, WindowKey)>) {
        let now = Instant::now();
        if !self.tracking(now) {
            self.last_asked = None;
            self.complete_from = None;
            self.entries.clear();
            return;
        }
        for (time, key) in updates {
            let entry = self.entries.entry(key).or_insert((time, now));
            *entry = (entry.0.max(time), now);
        }
        if self.pruned.is_none_or(|t| now.duration_since(t) > Duration::from_secs(1)) {
            self.pruned = Some(now);
            let mut dropped_through = None;
            self.entries.retain(|_, (time, at)| {
                let keep = now.duration_since(*at) <= RETENTION;
                if !keep {
                    dropped_through = dropped_through.max(Some(*time));
                }
                keep
            });
            if let Some(t) = dropped_through {
                self.complete_from = self.complete_from.map(|c| c.max(t + 1));
            }
        }
    }

    /// The windows matching `filter` that changed at or after `since` (`None`: a new subscription, which takes the
    /// current state itself and only needs to know where changes start).
    pub fn changed_since(&mut self, since: Option<Time>, filter: &WindowFilter) -> ChangedSince {
        let now = Instant::now();
        // Before the worker has recorded its frontier (just started), nothing is complete: 0, never `MAX`, or the
        // subscription's next poll would ask for changes after every time there is.
        let through = self.frontier.unwrap_or(0);
        if !self.tracking(now) {
            // From now on, every change at or after the frontier is recorded.
            self.complete_from = Some(self.frontier.unwrap_or(0));
        }
        self.last_asked = Some(now);
        let Some(since) = since else { return ChangedSince { keys: Vec::new(), through, resync: false } };
        if self.complete_from.is_none_or(|c| c > since) {
            return ChangedSince { keys: Vec::new(), through, resync: true };
        }
        // A window updated again at or after `through` is reported now and again by the next poll (same value or
        // newer: the subscription sends only what differs).
        let mut keys: Vec<WindowKey> = self
            .entries
            .iter()
            .filter(|(key, (time, _))| *time >= since && filter.matches(key))
            .map(|(key, _)| *key)
            .collect();
        keys.sort();
        ChangedSince { keys, through, resync: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_operators::SeriesKey;

    fn key(device: u64, start: i64) -> WindowKey {
        WindowKey {
            series: SeriesKey { device: DeviceId(device), sensor: weir_operators::SensorId(0) },
            width: Width::Minute,
            start,
        }
    }

    #[test]
    fn changes_are_recorded_only_while_someone_asks_and_answered_up_to_the_frontier() {
        let mut log = RecentChanges { frontier: Some(10), ..RecentChanges::default() };
        log.record([(5, key(1, 0))].into_iter());
        assert!(log.entries.is_empty(), "nobody asked yet");
        let start = log.changed_since(None, &WindowFilter::default());
        assert_eq!((start.through, start.resync), (10, false));
        assert!(log.changed_since(Some(3), &WindowFilter::default()).resync, "before the log starts");
        log.record([(10, key(1, 0)), (10, key(2, 60))].into_iter());
        log.record([(12, key(1, 60))].into_iter());
        log.frontier = Some(12);
        let all = log.changed_since(Some(10), &WindowFilter::default());
        assert_eq!((all.keys, all.through, all.resync), (vec![key(1, 0), key(1, 60), key(2, 60)], 12, false));
        // A window changed again keeps one entry, at its last time.
        log.record([(13, key(1, 0))].into_iter());
        assert_eq!(log.entries.len(), 3);
        assert_eq!(log.changed_since(Some(13), &WindowFilter::default()).keys, vec![key(1, 0)]);
        log.frontier = Some(14);
        let device_1 = WindowFilter { device: Some(DeviceId(1)), ..WindowFilter::default() };
        assert_eq!(log.changed_since(Some(12), &device_1).keys, vec![key(1, 0), key(1, 60)]);
    }
}
