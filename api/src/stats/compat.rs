//! The replaced system's statistics routes, with its JSON shapes, for the default device.

use axum::Json;
use axum::extract::{Path, Query as QueryParams, State};
use serde::Serialize;
use serde_json::json;
use weir_operators::{DeviceId, SeriesKey, Width};
use weir_pipeline::reading::DEFAULT_DEVICE;
use weir_pipeline::stats::{Answer, Query};

use super::After;
use crate::node::answers::latest_fix;
use crate::node::error::ServiceError;
use crate::node::stats::timestamp_text;
use crate::server::AppState;

/// `GET /api/statistics/latest`: the latest speed, fuel, engine temperature and revolutions, 0 where none.
pub async fn statistics_latest(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<After>,
) -> Result<Json<serde_json::Value>, ServiceError> {
    let stats = &state.stats;
    let latest = stats.latest_of(DEFAULT_DEVICE, p.after).await?;
    Ok(Json(json!({
        "speed": stats.value_or_zero(&latest, "speed"),
        "fuel": stats.value_or_zero(&latest, "fuel"),
        "engineTemperature": stats.value_or_zero(&latest, "engine_temperature"),
        "revolutions": stats.value_or_zero(&latest, "revolution"),
    })))
}

/// `GET /api/location/latest`: the newest complete fix (latitude and longitude of one timestamp), 0 and 0 while the
/// device has none. (The replaced system paired the newest of each, possibly from different fixes.)
pub async fn location_latest(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<After>,
) -> Result<Json<serde_json::Value>, ServiceError> {
    let fix = latest_fix(&state.stats, &state.sql, DEFAULT_DEVICE, p.after).await?;
    Ok(Json(json!({
        "latitude": fix.map_or(0.0, |f| f.latitude),
        "longitude": fix.map_or(0.0, |f| f.longitude),
    })))
}

/// `GET /api/status`: the greatest reading timestamp of all devices (Go's zero time when there is none).
pub async fn status(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<After>,
) -> Result<Json<serde_json::Value>, ServiceError> {
    let newest = match state.stats.ask(Query::Latest { device: None }, p.after).await? {
        Answer::Latest(all) => all.iter().map(|(_, l)| l.micros).max(),
        _ => None,
    };
    let text = newest.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), timestamp_text);
    Ok(Json(json!({ "lastIngestTimestamp": text })))
}

#[derive(Serialize)]
pub struct Bucket {
    sensor: String,
    value: f64,
    timestamp: String,
}

/// `GET /api/statistics/sensor/{sensor}/date/{YYYY-MM-DD}`: 96 quarter-hour means of the default device's sensor
/// for that UTC day, in order, 0 for empty buckets.
pub async fn sensor_day(
    State(state): State<AppState>,
    Path((sensor, date)): Path<(String, String)>,
    QueryParams(p): QueryParams<After>,
) -> Result<Json<Vec<Bucket>>, ServiceError> {
    let stats = &state.stats;
    let sensor_id = stats.sensor_id(&sensor)?;
    let day_start = parse_date(&date)?;
    let series = SeriesKey { device: DeviceId::of(DEFAULT_DEVICE), sensor: sensor_id };
    let day = (day_start, day_start + Width::Day.micros());
    let windows = stats.series_windows(series, (DEFAULT_DEVICE, &sensor), Width::QuarterHour, day, p.after).await?;
    let quarter = Width::QuarterHour.micros();
    let buckets = (0..96)
        .map(|i| {
            let start = day_start + i * quarter;
            let value = windows.iter().find(|(k, _)| k.start == start).map_or(0.0, |(_, w)| w.mean());
            Bucket { sensor: sensor.clone(), value, timestamp: timestamp_text(start) }
        })
        .collect();
    Ok(Json(buckets))
}

/// Microseconds at the start of a `YYYY-MM-DD` UTC day.
pub fn parse_date(date: &str) -> Result<i64, ServiceError> {
    let parsed = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .filter(|_| date.len() == 10)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .ok_or_else(|| ServiceError::invalid(format!("bad date {date:?}: write the UTC day as YYYY-MM-DD")))?;
    Ok(parsed.and_utc().timestamp_micros())
}
