//! The general statistics API: `/api/v1/series`, `/api/v1/latest`, `/api/v1/devices`, and whether the data is
//! complete: `/api/v1/gaps`, `/api/v1/completeness`.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::Json;
use axum::extract::{Query as QueryParams, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use weir_operators::DeviceId;

use crate::node::answers::{SeriesAnswer, SeriesQuery, latest_answer, quantiles_of, series_answer};
use crate::node::completeness::{GapsQuery, MapQuery, completeness_map, gaps_answer};
use crate::node::error::ServiceError;
use crate::node::stats::timestamp_text;
use crate::server::AppState;

#[derive(Debug, Deserialize)]
pub struct SeriesParams {
    sensor: Option<String>,
    device: Option<String>,
    window: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    after: Option<crate::position::LogPosition>,
    q: Option<String>,
}

/// `GET /api/v1/series?sensor=&device=&window=1m|15m|1h|1d&from=&to=[&q=0.5,0.999][&format=csv][&after=]`: the
/// windows of one series whose start lies in `[from, to)` (RFC 3339; both optional), with p50/p90/p95/p99 and the
/// quantiles `q` asks for.
pub async fn series(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<SeriesParams>,
) -> Result<Response, ServiceError> {
    let quantiles = quantiles_of(p.q.as_deref())?;
    let query = SeriesQuery {
        sensor: p.sensor,
        device: p.device,
        window: p.window,
        from: p.from,
        to: p.to,
        after: p.after,
        quantiles: quantiles.clone(),
    };
    let SeriesAnswer { device, sensor, width, rows } = series_answer(&state.stats, &query).await?;
    match p.format.as_deref() {
        None | Some("json") => Ok(Json(serde_json::json!({
            "device": device, "sensor": sensor, "window": width.name(), "windows": rows,
        }))
        .into_response()),
        Some("csv") => {
            let mut csv = String::from(
                "device,sensor,window,start,end,count,sum,min,max,mean,first,first_timestamp,last,last_timestamp,\
                 p50,p90,p95,p99,late,duplicates,expected,completeness",
            );
            for q in &quantiles {
                let _ = write!(csv, ",q{q}");
            }
            csv.push('\n');
            let opt = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
            for r in &rows {
                let _ = write!(
                    csv,
                    "{},{sensor},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    csv_field(&device),
                    width.name(),
                    r.start,
                    r.end,
                    r.count,
                    r.sum,
                    r.min,
                    r.max,
                    r.mean,
                    r.first,
                    r.first_timestamp,
                    r.last,
                    r.last_timestamp,
                    opt(r.p50),
                    opt(r.p90),
                    opt(r.p95),
                    opt(r.p99),
                    r.late,
                    r.duplicates,
                    opt(r.expected),
                    opt(r.completeness)
                );
                for q in &r.quantiles {
                    let _ = write!(csv, ",{}", opt(q.value));
                }
                csv.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
        }
        Some(other) => Err(ServiceError::invalid(format!("unknown format {other:?}: use json or csv"))),
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

#[derive(Debug, Deserialize)]
pub struct LatestParams {
    device: Option<String>,
    after: Option<crate::position::LogPosition>,
}

/// `GET /api/v1/latest?device=`: every sensor's latest value and timestamp for a device (default device when
/// absent).
pub async fn latest(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<LatestParams>,
) -> Result<Response, ServiceError> {
    let (device, latest) = latest_answer(&state.stats, &p.device, p.after).await?;
    Ok(Json(serde_json::json!({ "device": device, "latest": latest })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct DevicesParams {
    after: Option<crate::position::LogPosition>,
}

/// `GET /api/v1/devices`: every device with its number of sensors and newest reading timestamp.
pub async fn devices(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<DevicesParams>,
) -> Result<Response, ServiceError> {
    let stats = &state.stats;
    let names = stats.device_names(p.after).await?;
    let latest = stats.latest(None, p.after).await?;
    let mut per_device: HashMap<DeviceId, (usize, i64)> = HashMap::new();
    for (k, l) in &latest {
        let e = per_device.entry(k.device).or_insert((0, i64::MIN));
        e.0 += 1;
        e.1 = e.1.max(l.micros);
    }
    let mut rows: Vec<serde_json::Value> = names
        .iter()
        .filter_map(|(id, name)| {
            let (sensors, newest) = per_device.get(id)?;
            Some(serde_json::json!({ "device": name, "sensors": sensors, "last_timestamp": timestamp_text(*newest) }))
        })
        .collect();
    rows.sort_by(|a, b| a["device"].as_str().cmp(&b["device"].as_str()));
    Ok(Json(serde_json::json!({ "devices": rows })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct GapsParams {
    device: Option<String>,
    sensor: Option<String>,
    from: Option<String>,
    to: Option<String>,
    min: Option<String>,
    after: Option<crate::position::LogPosition>,
}

/// `GET /api/v1/gaps?device=&from=&to=&min=[&sensor=]`: the holes of at least `min` (default twice the sensor's
/// expected interval, at least 1m; 5m without one) between a device's readings, per sensor, in time order.
pub async fn gaps(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<GapsParams>,
) -> Result<Response, ServiceError> {
    let query = GapsQuery { device: p.device, sensor: p.sensor, from: p.from, to: p.to, min: p.min, after: p.after };
    Ok(Json(gaps_answer(&state.stats, &query).await?).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CompletenessParams {
    device: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<crate::position::LogPosition>,
}

/// `GET /api/v1/completeness?[device=][&from=&to=]`: every device's completeness per hour (the dashboard's map); by
/// default the 24 hours up to the newest reading's.
pub async fn completeness(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<CompletenessParams>,
) -> Result<Response, ServiceError> {
    let query = MapQuery { device: p.device, from: p.from, to: p.to, after: p.after };
    Ok(Json(completeness_map(&state.stats, &query).await?).into_response())
}
