//! Live window statistics: the current state of the windows a subscriber asks for, then every change.
//!
//! One service for both feeds, gRPC `Subscribe` and `GET /api/v1/subscribe` (Server-Sent Events, in
//! `crate::stats::sse`). A subscription
//! takes the current state through the ordinary statistics queries, then polls the dataflow for the windows that
//! changed since its last poll ([`Query::Changes`], answered by every worker of the cluster from what it recorded),
//! and sends each change once: an `update` for the newest window of its series and width, a `correction` for an
//! older one (late readings), with `replaces` when the window was sent before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_operators::{DeviceId, SeriesKey, Width, WindowAgg, WindowKey};
use weir_pipeline::stats::{Answer, Query, WindowFilter};

use super::answers::{WindowRow, time_bound, width_of};
use super::error::ServiceError;
use super::stats::StatsService;

/// How often a subscription asks for changes.
pub const POLL: Duration = Duration::from_millis(50);

/// What a subscriber asks for (each `None` or empty: all).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct SubscribeParams {
    pub device: Option<String>,
    pub sensor: Option<String>,
    pub window: Option<String>,
    /// Only windows starting at or after this time are in the initial state.
    pub from: Option<String>,
}

/// What an event of a live feed says about its window. gRPC sends it as the proto's `UpdateKind` (same names), the
/// HTTP feed as the event's name ([`UpdateKind::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// A window of the state when the subscription started.
    Snapshot,
    /// The state has been sent; changes follow.
    Ready,
    /// The newest window of its series changed (or a newer one began).
    Update,
    /// A window older than its series' newest changed: a late reading corrected it.
    Correction,
}

impl UpdateKind {
    /// The event's name in the HTTP feed.
    pub fn name(self) -> &'static str {
        match self {
            UpdateKind::Snapshot => "snapshot",
            UpdateKind::Ready => "ready",
            UpdateKind::Update => "update",
            UpdateKind::Correction => "correction",
        }
    }
}

/// One event of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowEvent {
    pub kind: UpdateKind,
    pub device: String,
    pub sensor: String,
    /// The window (`None` for `ready`).
    pub window: Option<(Width, WindowRow)>,
    pub replaces: bool,
}

/// A checked subscription request.
struct Subscription {
    filter: WindowFilter,
    from: i64,
    stats: Arc<StatsService>,
    names: HashMap<DeviceId, String>,
    /// Per window sent: what says it changed ([`change_mark`]), to send a window again only when it did.
    sent: HashMap<WindowKey, ChangeMark>,
    /// Per series and width, the newest window start sent.
    newest: HashMap<(SeriesKey, Width), i64>,
}

/// Starts a subscription; its events arrive on the returned stream until the stream is dropped or `stopping`
/// becomes true (the server is shutting down: the stream then ends).
pub async fn subscribe(
    stats: Arc<StatsService>,
    params: SubscribeParams,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<ReceiverStream<WindowEvent>, ServiceError> {
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let filter = WindowFilter {
        device: nonempty(&params.device).map(|d| DeviceId::of(&d)),
        sensor: nonempty(&params.sensor).map(|s| stats.sensor_id(&s)).transpose()?,
        width: nonempty(&params.window).map(|w| width_of(&w)).transpose()?,
    };
    let from = time_bound("from", &params.from, i64::MIN)?;
    let mut subscription =
        Subscription { filter, from, stats, names: HashMap::new(), sent: HashMap::new(), newest: HashMap::new() };
    // Where changes start, before the state is read: nothing that changes in between is missed.
    let mut through = subscription.start().await?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let feed = async move {
            if subscription.send_state(&tx).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(POLL).await;
                match subscription.send_changes(&tx, through).await {
                    Ok(next) => through = next,
                    Err(Closed) => return,
                }
            }
        };
        // Dropping the feed drops the sender: the subscriber's stream ends.
        tokio::select! {
            () = feed => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The subscriber has gone.
struct Closed;

impl Subscription {
    async fn changes(&self, since: Option<u64>) -> Result<(Vec<(WindowKey, WindowAgg)>, u64, bool), ServiceError> {
        match self.stats.ask(Query::Changes { since, filter: self.filter }, None).await? {
            Answer::Changes { windows, through, resync } => Ok((windows, through, resync)),
            _ => Ok((Vec::new(), since.unwrap_or(0), false)),
        }
    }

    async fn start(&mut self) -> Result<u64, ServiceError> {
        Ok(self.changes(None).await?.1)
    }

    async fn refresh_names(&mut self) -> Result<(), ServiceError> {
        if let Answer::Devices(names) = self.stats.ask(Query::Devices, None).await? {
            self.names = names.into_iter().collect();
        }
        Ok(())
    }

    /// The current state, then `ready`.
    async fn send_state(&mut self, tx: &mpsc::Sender<WindowEvent>) -> Result<(), Closed> {
        let state = self.state().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e.message, "a subscription could not read the current state");
            Vec::new()
        });
        for (key, agg) in state {
            self.send(tx, UpdateKind::Snapshot, key, &agg).await?;
        }
        let ready = WindowEvent {
            kind: UpdateKind::Ready,
            device: String::new(),
            sensor: String::new(),
            window: None,
            replaces: false,
        };
        tx.send(ready).await.map_err(|_| Closed)
    }

    /// Every window matching the filter (from `from` on), by series and width.
    async fn state(&mut self) -> Result<Vec<(WindowKey, WindowAgg)>, ServiceError> {
        self.refresh_names().await?;
        let series: Vec<SeriesKey> = match self.stats.ask(Query::Latest { device: self.filter.device }, None).await? {
            Answer::Latest(latest) => latest
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| self.filter.sensor.is_none_or(|s| k.sensor == s))
                .collect(),
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for series in series {
            let device = self.names.get(&series.device).cloned().unwrap_or_default();
            let sensor = self.stats.sensor_name(series.sensor).await.map(|s| s.to_string()).unwrap_or_default();
            for width in Width::ALL.into_iter().filter(|w| self.filter.width.is_none_or(|f| f == *w)) {
                let range = (self.from, i64::MAX);
                out.extend(self.stats.series_windows(series, (&device, &sensor), width, range, None).await?);
            }
        }
        Ok(out)
    }

    /// Sends what changed since `since`; returns where the next poll starts.
    async fn send_changes(&mut self, tx: &mpsc::Sender<WindowEvent>, since: u64) -> Result<u64, Closed> {
        let (windows, through, resync) = match self.changes(Some(since)).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(error = %e.message, "a subscription poll failed; it is retried");
                return Ok(since);
            }
        };
        if resync {
            // Too far behind the recorded changes: the whole state again (only what changed is sent).
            let through = self.start().await.unwrap_or(since);
            let state = self.state().await.unwrap_or_default();
            for (key, agg) in state {
                self.send_change(tx, key, &agg).await?;
            }
            return Ok(through);
        }
        for (key, agg) in windows {
            self.send_change(tx, key, &agg).await?;
        }
        Ok(through.max(since))
    }

    async fn send_change(
        &mut self,
        tx: &mpsc::Sender<WindowEvent>,
        key: WindowKey,
        agg: &WindowAgg,
    ) -> Result<(), Closed> {
        if self.sent.get(&key) == Some(&change_mark(agg)) {
            return Ok(());
        }
        let newest = self.newest.get(&(key.series, key.width)).copied().unwrap_or(i64::MIN);
        let kind = if key.start < newest { UpdateKind::Correction } else { UpdateKind::Update };
        self.send(tx, kind, key, agg).await
    }

    async fn send(
        &mut self,
        tx: &mpsc::Sender<WindowEvent>,
        kind: UpdateKind,
        key: WindowKey,
        agg: &WindowAgg,
    ) -> Result<(), Closed> {
        if !self.names.contains_key(&key.series.device) {
            let _ = self.refresh_names().await;
        }
        let device =
            self.names.get(&key.series.device).cloned().unwrap_or_else(|| format!("{:x}", key.series.device.0));
        let sensor = match self.stats.sensor_name(key.series.sensor).await {
            Some(name) => name.to_string(),
            None => format!("{:x}", key.series.sensor.0),
        };
        let replaces = self.sent.insert(key, change_mark(agg)).is_some();
        let newest = self.newest.entry((key.series, key.width)).or_insert(i64::MIN);
        *newest = (*newest).max(key.start);
        let window = Some((key.width, WindowRow::of(&key, agg, &[], self.stats.expected(&sensor, &key))));
        let event = WindowEvent { kind, device, sensor, window, replaces };
        tx.send(event).await.map_err(|_| Closed)
    }
}

/// What changes when a window does: its count and sum (readings added) and its late and duplicate counts (readings
/// that changed nothing else).
type ChangeMark = (i64, u64, i64, i64);

fn change_mark(agg: &WindowAgg) -> ChangeMark {
    (agg.count, agg.sum().to_bits(), agg.late, agg.duplicates)
}
