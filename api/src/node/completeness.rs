//! Is the data complete? The holes of a device's series (`/api/v1/gaps`) and the completeness of every device per
//! hour (`/api/v1/completeness`, the dashboard's map), both from the windows [`StatsService::series_windows`]
//! answers (live, then rollups) and the one rule of [`weir_operators::completeness`].

use std::collections::{BTreeMap, HashMap};

use weir_operators::completeness::{Hole, combined_completeness, holes};
use weir_operators::{DeviceId, SeriesKey, Width};

use super::answers::{MAX_SERIES_WINDOWS, time_bound};
use super::error::ServiceError;
use super::stats::{StatsService, device_or_default, timestamp_text};
use crate::position::LogPosition;

/// The most holes one `/api/v1/gaps` answer lists; beyond it the answer says it is truncated.
pub const MAX_GAPS: usize = 10_000;

/// The most series one completeness map covers (one windows query each).
pub const MAX_MAP_SERIES: usize = 2_000;

/// The most hours one completeness map covers (31 days).
pub const MAX_MAP_HOURS: i64 = 31 * 24;

/// How many series' windows are asked for at once.
const CONCURRENT_QUERIES: usize = 16;

/// The shortest hole a gap report finds: two readings a minute apart lie in different 1-minute windows, which is
/// what makes holes exact from the windows alone.
const MIN_HOLE: i64 = Width::Minute.micros();

/// The threshold without `min=`: twice the sensor's expected interval (at least a minute), or 5 minutes for a
/// sensor without one.
fn default_min(interval: Option<i64>) -> i64 {
    interval.map_or(5 * MIN_HOLE, |i| i.saturating_mul(2).max(MIN_HOLE))
}

/// What `/api/v1/gaps` is asked.
#[derive(Debug, Default, Clone)]
pub struct GapsQuery {
    pub device: Option<String>,
    /// Only this sensor's holes (all sensors' without).
    pub sensor: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The shortest hole reported, as a duration (`10m`); see [`default_min`].
    pub min: Option<String>,
    pub after: Option<LogPosition>,
}

/// One hole of one series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GapRow {
    pub sensor: String,
    /// The last reading before the hole, or `from` when none came before it.
    pub start: String,
    /// The first reading after the hole, or `to` when none came after it.
    pub end: String,
    pub seconds: f64,
    /// Readings the sensor's expected interval puts inside the hole; `None` without an interval.
    pub missing: Option<i64>,
    /// Whether a side of the hole is `from` or `to` rather than a reading.
    pub open: bool,
}

/// A device's holes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GapsAnswer {
    pub device: String,
    pub gaps: Vec<GapRow>,
    /// Whether more than [`MAX_GAPS`] holes were found (the first ones are listed).
    pub truncated: bool,
}

/// A threshold such as `10m`, at least a minute.
fn min_of(text: &Option<String>) -> Result<Option<i64>, ServiceError> {
    let Some(text) = text.as_deref().filter(|t| !t.is_empty()) else { return Ok(None) };
    let min = humantime::parse_duration(text)
        .map_err(|e| ServiceError::invalid(format!("min: {e}; write a duration like 90s, 10m or 1h")))?;
    let min = i64::try_from(min.as_micros()).unwrap_or(i64::MAX);
    if min < MIN_HOLE {
        return Err(ServiceError::invalid(format!(
            "min={text}: holes are found from 1-minute windows, so the shortest threshold is 1m"
        )));
    }
    Ok(Some(min))
}

/// The holes of at least `min` in `device`'s series (or one sensor's) over `[from, to)`, in time order.
pub async fn gaps_answer(stats: &StatsService, q: &GapsQuery) -> Result<GapsAnswer, ServiceError> {
    let device = device_or_default(&q.device).to_owned();
    let min = min_of(&q.min)?;
    let from = time_bound("from", &q.from, i64::MIN)?;
    let to = time_bound("to", &q.to, i64::MAX)?;
    if from > to {
        return Err(ServiceError::invalid("from is after to"));
    }
    let edges = (from != i64::MIN, to != i64::MAX);
    let wanted = match q.sensor.as_deref().filter(|s| !s.is_empty()) {
        Some(sensor) => Some(stats.sensor_id(sensor)?),
        None => None,
    };
    let mut sensors = Vec::new();
    for (key, _) in stats.latest_of(&device, q.after).await? {
        if wanted.is_none_or(|w| w == key.sensor)
            && let Some(name) = stats.sensor_name(key.sensor).await
        {
            sensors.push((key, name));
        }
    }
    let mut gaps = Vec::new();
    for (series, sensor) in &sensors {
        let windows = stats.series_windows(*series, (&device, sensor), Width::Minute, (from, to), q.after).await?;
        if windows.len() > MAX_SERIES_WINDOWS {
            return Err(ServiceError::invalid(format!(
                "{sensor} has {} minutes with readings in [from, to); at most {MAX_SERIES_WINDOWS} are looked at \
                 once: narrow from/to",
                windows.len()
            )));
        }
        let interval = stats.expected_intervals().interval_of(sensor);
        let min = min.unwrap_or_else(|| default_min(interval));
        let minutes = windows.iter().filter(|(_, w)| w.count > 0).map(|(_, w)| (w.first.micros, w.last.micros));
        for Hole { start, end, open } in holes(minutes, (from, to), edges, min) {
            let missing = interval.map(|i| ((end - start) / i - i64::from(!open)).max(0));
            gaps.push(GapRow {
                sensor: sensor.to_string(),
                start: timestamp_text(start),
                end: timestamp_text(end),
                seconds: (end - start) as f64 / 1e6,
                missing,
                open,
            });
        }
    }
    // RFC 3339 texts of one format sort as their times do.
    gaps.sort_by(|a, b| (&a.start, &a.sensor).cmp(&(&b.start, &b.sensor)));
    let truncated = gaps.len() > MAX_GAPS;
    gaps.truncate(MAX_GAPS);
    Ok(GapsAnswer { device, gaps, truncated })
}

/// One device's hour on the map: (count, expected) of each of its series.
type HourCell = Vec<(i64, Option<f64>)>;

/// What `/api/v1/completeness` is asked.
#[derive(Debug, Default, Clone)]
pub struct MapQuery {
    /// Only this device (all devices without).
    pub device: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub after: Option<LogPosition>,
}

/// Every device's completeness per hour.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MapAnswer {
    /// The hours' starts, in order.
    pub hours: Vec<String>,
    pub devices: Vec<DeviceHours>,
}

/// One device's row of the map.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceHours {
    pub device: String,
    /// Per hour of [`MapAnswer::hours`]: the share of the expected readings of the device's sensors that arrived;
    /// `None` where none of its sensors expected any.
    pub completeness: Vec<Option<f64>>,
}

/// The completeness map over the hours of `[from, to)`: by default the 24 hours up to the end of the newest
/// reading's hour. Only sensors with an expected interval count.
pub async fn completeness_map(stats: &StatsService, q: &MapQuery) -> Result<MapAnswer, ServiceError> {
    let intervals = stats.expected_intervals();
    let device = q.device.as_deref().filter(|d| !d.is_empty()).map(DeviceId::of);
    let latest = stats.latest(device, q.after).await?;
    let newest = latest.iter().map(|(_, l)| l.micros).max().unwrap_or(0);
    let series: Vec<SeriesKey> = latest.into_iter().map(|(k, _)| k).collect();
    let to = time_bound("to", &q.to, Width::Hour.start_of(newest) + Width::Hour.micros())?;
    let from = time_bound("from", &q.from, to - 24 * Width::Hour.micros())?;
    let (from, to) = (Width::Hour.start_of(from), Width::Hour.start_of(to.saturating_add(Width::Hour.micros() - 1)));
    if from > to {
        return Err(ServiceError::invalid("from is after to"));
    }
    let hours = (to - from) / Width::Hour.micros();
    if hours > MAX_MAP_HOURS {
        return Err(ServiceError::invalid(format!("{hours} hours asked; a map covers at most {MAX_MAP_HOURS}")));
    }
    let device_names = stats.device_names(q.after).await?;
    let mut judged = Vec::new();
    for key in series {
        let (Some(device), Some(sensor)) = (device_names.get(&key.device), stats.sensor_name(key.sensor).await) else {
            continue;
        };
        if intervals.interval_of(&sensor).is_some() {
            judged.push((key, device.clone(), sensor));
        }
    }
    if judged.len() > MAX_MAP_SERIES {
        return Err(ServiceError::invalid(format!(
            "{} series have an expected interval; a map covers at most {MAX_MAP_SERIES}: ask for one device",
            judged.len()
        )));
    }
    let mut cells: BTreeMap<String, Vec<HourCell>> = BTreeMap::new();
    for chunk in judged.chunks(CONCURRENT_QUERIES) {
        let answers = futures_util::future::join_all(chunk.iter().map(|(key, device, sensor)| {
            stats.series_windows(*key, (device, sensor), Width::Hour, (from, to), q.after)
        }))
        .await;
        for ((key, device, sensor), windows) in chunk.iter().zip(answers) {
            let counts: HashMap<i64, i64> = windows?.into_iter().map(|(k, w)| (k.start, w.count)).collect();
            let row = cells.entry(device.clone()).or_insert_with(|| vec![Vec::new(); hours as usize]);
            for (h, cell) in row.iter_mut().enumerate() {
                let start = from + h as i64 * Width::Hour.micros();
                let window = weir_operators::WindowKey { series: *key, width: Width::Hour, start };
                cell.push((counts.get(&start).copied().unwrap_or(0), stats.expected(sensor, &window)));
            }
        }
    }
    Ok(MapAnswer {
        hours: (0..hours).map(|h| timestamp_text(from + h * Width::Hour.micros())).collect(),
        devices: cells
            .into_iter()
            .map(|(device, row)| DeviceHours {
                device,
                completeness: row.into_iter().map(combined_completeness).collect(),
            })
            .collect(),
    })
}
