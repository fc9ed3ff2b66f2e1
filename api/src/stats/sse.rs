//! `GET /api/v1/subscribe`: the live feed ([`subscribe`]) as Server-Sent Events.

use std::time::Duration;

use axum::extract::{Query as QueryParams, State};
use axum::response::sse::{Event, KeepAlive, Sse};

use crate::node::error::ServiceError;
use crate::node::subscribe::{SubscribeParams, subscribe};
use crate::server::AppState;

/// `GET /api/v1/subscribe?device=&sensor=&window=&from=`: the live feed as Server-Sent Events — `snapshot` events
/// (the current state), one `ready`, then `update` and `correction` events; each event's data is the window as
/// JSON with `device`, `sensor`, `window` and `replaces`.
pub async fn sse(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<SubscribeParams>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>, ServiceError> {
    use futures_util::StreamExt;
    let events = subscribe(state.stats.clone(), params, state.stopping.clone()).await?;
    let events = events.map(|e| {
        let data = match &e.window {
            None => "{}".to_owned(),
            Some((width, row)) => {
                let mut value = serde_json::to_value(row).unwrap_or_default();
                if let Some(map) = value.as_object_mut() {
                    map.insert("device".into(), e.device.into());
                    map.insert("sensor".into(), e.sensor.into());
                    map.insert("window".into(), width.name().into());
                    map.insert("replaces".into(), e.replaces.into());
                }
                value.to_string()
            }
        };
        Ok(Event::default().event(e.kind.name()).data(data))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}
