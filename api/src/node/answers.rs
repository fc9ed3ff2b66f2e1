//! The live statistics in users' terms, for every transport: a series' windows as rows, a device's latest values,
//! and the checks of what a user names (sensor, window width, time bounds) with errors that say what to write.

use weir_operators::completeness::completeness;
use weir_operators::{DeviceId, SensorId, SeriesKey, Width, WindowAgg, WindowKey};
use weir_pipeline::decode::parse_timestamp;

use super::error::ServiceError;
use super::stats::{StatsService, device_or_default, timestamp_text};
use crate::position::LogPosition;

/// The most windows one `/api/v1/series` answer holds.
pub const MAX_SERIES_WINDOWS: usize = 100_000;

/// One window with all its statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WindowRow {
    pub start: String,
    pub end: String,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub first: f64,
    pub first_timestamp: String,
    pub last: f64,
    pub last_timestamp: String,
    /// Percentiles from the window's sketch (within 1 %, and within `[min, max]`); `None` (JSON `null`) for a
    /// width that carries no sketch (`--sketch-widths`).
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    /// The quantiles asked for with `q=`, in the order asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quantiles: Vec<QuantileValue>,
    /// Readings of the window that arrived after a newer reading of their series (admitted, in `count`).
    pub late: i64,
    /// Readings of the window dropped as duplicates of one already written (not in `count`).
    pub duplicates: i64,
    /// Readings the window should hold by now by its sensor's `--expected-interval`; `None` without one.
    pub expected: Option<f64>,
    /// `min(1, count / expected)`; `None` without an expected interval.
    pub completeness: Option<f64>,
}

/// One quantile asked for by `q=`, and its value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QuantileValue {
    pub q: f64,
    pub value: Option<f64>,
}

/// The most quantiles one `q=` may ask for.
pub const MAX_QUANTILES: usize = 16;

/// `q=0.5,0.999`: quantiles between 0 and 1, at most [`MAX_QUANTILES`].
pub fn quantiles_of(text: Option<&str>) -> Result<Vec<f64>, ServiceError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(Vec::new()) };
    let quantiles = text
        .split(',')
        .map(|q| match q.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
            _ => Err(ServiceError::invalid(format!("q: {q:?} is not a quantile between 0 and 1 (e.g. q=0.5,0.999)"))),
        })
        .collect::<Result<Vec<f64>, _>>()?;
    if quantiles.len() > MAX_QUANTILES {
        return Err(ServiceError::invalid(format!("q: at most {MAX_QUANTILES} quantiles at once")));
    }
    Ok(quantiles)
}

impl WindowRow {
    /// The window's row, with the quantiles `quantiles` besides the named percentiles, and `expected` readings
    /// (see [`StatsService::expected`]).
    pub fn of(key: &WindowKey, w: &WindowAgg, quantiles: &[f64], expected: Option<f64>) -> WindowRow {
        WindowRow {
            start: timestamp_text(key.start),
            end: timestamp_text(key.start + key.width.micros()),
            count: w.count,
            sum: w.sum(),
            min: w.min,
            max: w.max,
            mean: w.mean(),
            first: w.first.value,
            first_timestamp: timestamp_text(w.first.micros),
            last: w.last.value,
            last_timestamp: timestamp_text(w.last.micros),
            p50: w.quantile(0.5),
            p90: w.quantile(0.9),
            p95: w.quantile(0.95),
            p99: w.quantile(0.99),
            quantiles: quantiles.iter().map(|&q| QuantileValue { q, value: w.quantile(q) }).collect(),
            late: w.late,
            duplicates: w.duplicates,
            expected,
            completeness: completeness(w.count, expected),
        }
    }
}

/// What `/api/v1/series` (and gRPC `Series`) is asked.
#[derive(Debug, Default, Clone)]
pub struct SeriesQuery {
    pub sensor: Option<String>,
    pub device: Option<String>,
    pub window: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub after: Option<LogPosition>,
    /// More quantiles to answer (`q=`), checked by [`quantiles_of`].
    pub quantiles: Vec<f64>,
}

/// The windows of one series.
#[derive(Debug)]
pub struct SeriesAnswer {
    pub device: String,
    pub sensor: String,
    pub width: Width,
    pub rows: Vec<WindowRow>,
}

/// A time bound given as RFC 3339 text.
pub fn time_bound(name: &str, text: &Option<String>, default: i64) -> Result<i64, ServiceError> {
    match text.as_deref().filter(|t| !t.is_empty()) {
        None => Ok(default),
        Some(t) => parse_timestamp(t).map_err(|e| ServiceError::invalid(format!("{name}: {e}"))),
    }
}

/// A window width's name, checked.
pub fn width_of(window: &str) -> Result<Width, ServiceError> {
    Width::parse(window)
        .ok_or_else(|| ServiceError::invalid(format!("unknown window {window:?}: use 1m, 15m, 1h or 1d")))
}

/// Answers a series query: the windows of one series whose start lies in `[from, to)`.
pub async fn series_answer(stats: &StatsService, p: &SeriesQuery) -> Result<SeriesAnswer, ServiceError> {
    let sensor = p
        .sensor
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ServiceError::invalid("missing parameter sensor"))?;
    let sensor_id = stats.sensor_id(sensor)?;
    let width = width_of(p.window.as_deref().filter(|w| !w.is_empty()).unwrap_or("1m"))?;
    let from = time_bound("from", &p.from, i64::MIN)?;
    let to = time_bound("to", &p.to, i64::MAX)?;
    if from > to {
        return Err(ServiceError::invalid("from is after to"));
    }
    let device = device_or_default(&p.device).to_owned();
    let series = SeriesKey { device: DeviceId::of(&device), sensor: sensor_id };
    let windows = stats.series_windows(series, (&device, sensor), width, (from, to), p.after).await?;
    if windows.len() > MAX_SERIES_WINDOWS {
        return Err(ServiceError::invalid(format!(
            "{} windows match; at most {MAX_SERIES_WINDOWS} are returned at once: narrow from/to or use a wider window",
            windows.len()
        )));
    }
    let rows = windows.iter().map(|(k, w)| WindowRow::of(k, w, &p.quantiles, stats.expected(sensor, k))).collect();
    Ok(SeriesAnswer { device, sensor: sensor.to_owned(), width, rows })
}

/// One sensor's latest value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SensorValue {
    pub sensor: String,
    pub value: f64,
    pub timestamp: String,
}

/// Every sensor's latest value of `device` (the default device when absent).
pub async fn latest_answer(
    stats: &StatsService,
    device: &Option<String>,
    after: Option<LogPosition>,
) -> Result<(String, Vec<SensorValue>), ServiceError> {
    let device = device_or_default(device);
    let latest = stats.latest_of(device, after).await?;
    let mut values = Vec::with_capacity(latest.len());
    for (k, l) in &latest {
        if let Some(sensor) = stats.sensor_name(k.sensor).await {
            values.push(SensorValue {
                sensor: sensor.to_string(),
                value: l.value,
                timestamp: timestamp_text(l.micros),
            });
        }
    }
    values.sort_by(|a, b| stats.sensors().sort_key(&a.sensor).cmp(&stats.sensors().sort_key(&b.sensor)));
    Ok((device.to_owned(), values))
}

/// The sensors a location fix is made of.
pub const LATITUDE: &str = "location_latitude";
pub const LONGITUDE: &str = "location_longitude";

/// A location fix: both coordinates of one device at one timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub micros: i64,
    pub latitude: f64,
    pub longitude: f64,
}

/// The newest complete fix of `device`: the newest timestamp that has both a latitude and a longitude (never a
/// latitude of one fix with the longitude of another, the replaced system's defect). `None` while it has none.
///
/// The live statistics answer when the newest latitude and longitude share their timestamp (the usual case); when
/// they do not, the newest complete fix is older than one of them and SQL finds it over the archive and the readings
/// not yet flushed (first writes, exactly): first in the day of the older of the two, then before it.
pub async fn latest_fix(
    stats: &StatsService,
    sql: &super::sql::SqlService,
    device: &str,
    after: Option<LogPosition>,
) -> Result<Option<Fix>, ServiceError> {
    let (Ok(lat), Ok(lon)) = (stats.sensor_id(LATITUDE), stats.sensor_id(LONGITUDE)) else {
        return Ok(None);
    };
    let latest = stats.latest_of(device, after).await?;
    let newest = |sensor: SensorId| latest.iter().find(|(k, _)| k.sensor == sensor).map(|(_, l)| *l);
    let (Some(latitude), Some(longitude)) = (newest(lat), newest(lon)) else { return Ok(None) };
    if latitude.micros == longitude.micros {
        return Ok(Some(Fix { micros: latitude.micros, latitude: latitude.value, longitude: longitude.value }));
    }
    let bound = latitude.micros.min(longitude.micros);
    let day = timestamp_text(bound)[..10].to_owned();
    for days in [format!("date = '{day}'"), format!("date < '{day}'")] {
        let query = format!(
            "SELECT CAST(timestamp AS BIGINT) AS t, \
             max(CASE WHEN sensor = '{LATITUDE}' THEN value END) AS latitude, \
             max(CASE WHEN sensor = '{LONGITUDE}' THEN value END) AS longitude \
             FROM readings WHERE device = '{}' AND sensor IN ('{LATITUDE}', '{LONGITUDE}') AND {days} \
             AND timestamp <= to_timestamp_micros({bound}) \
             GROUP BY timestamp HAVING count(DISTINCT sensor) = 2 ORDER BY timestamp DESC LIMIT 1",
            device.replace('\'', "''")
        );
        if let Some(fix) = first_fix(&sql.query(&query).await?) {
            return Ok(Some(fix));
        }
    }
    Ok(None)
}

/// The first row of a `(t, latitude, longitude)` answer.
fn first_fix(result: &weir_sinks::sql::SqlResult) -> Option<Fix> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    let batch = result.batches.iter().find(|b| b.num_rows() > 0)?;
    let (t, lat, lon) = (
        batch.column(0).as_primitive_opt::<Int64Type>()?,
        batch.column(1).as_primitive_opt::<Float64Type>()?,
        batch.column(2).as_primitive_opt::<Float64Type>()?,
    );
    (!t.is_null(0) && !lat.is_null(0) && !lon.is_null(0)).then(|| Fix {
        micros: t.value(0),
        latitude: lat.value(0),
        longitude: lon.value(0),
    })
}
