//! MQTT in: `weir serve --mqtt-url mqtt://broker:1883 --mqtt-topic 'fleet/+/telemetry'` subscribes and stores
//! what devices publish, exactly once.
//!
//! - **Session.** QoS 1 on every topic, a persistent session (`clean_session = false`, client id `--mqtt-client-id`):
//!   what is published while Weir is down waits at the broker. The subscription is renewed on every connection;
//!   lost connections are retried with backoff (100 ms doubling to 30 s), logged once per failure streak.
//! - **Acknowledged only once durable.** Acks are manual: a message's PUBACK goes to the broker only after its
//!   readings are fsynced in the WAL (the same path as `POST /ingest`). A crash before that leaves the message
//!   unacknowledged, so the broker re-delivers it and deduplication (first write wins) stores it once. PUBACKs go
//!   in the order the messages came, as MQTT 3.1.1 asks (§4.6).
//! - **Payloads** are NDJSON or line protocol (`--mqtt-format`). The device is the payload's; with
//!   `--mqtt-device-level N` a reading that names none takes the topic's level N (0-based: `fleet/+/telemetry` →
//!   1), checked like a device name.
//! - **Bad payloads never block.** Rejected readings and unreadable payloads are counted
//!   (`weir_mqtt_messages_total{outcome}`) and logged with the topic and the payload's first bytes, then
//!   acknowledged. A payload that could not be stored (log queue full, disk full) is retried with backoff and not
//!   acknowledged until it is.
//! - **Bounded.** At most [`IN_FLIGHT`] messages are being stored at once; beyond, Weir stops reading from the
//!   broker (which holds the rest). A packet is at most `--max-message-bytes`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::watch;

use crate::node::error::ErrorKind;
use crate::node::ingest::{IngestService, MessageFormat};

/// Messages being stored at once, at most.
pub const IN_FLIGHT: usize = 32;

/// `weir serve`'s MQTT options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (or `tcp://`).
    pub url: String,
    pub topics: Vec<String>,
    pub client_id: String,
    pub format: MessageFormat,
    /// The topic level that names the device of readings that name none.
    pub device_level: Option<usize>,
    /// The largest packet accepted.
    pub max_message_bytes: usize,
}

/// Why the MQTT options are refused.
#[derive(Debug, thiserror::Error)]
pub enum MqttConfigError {
    #[error("--mqtt-url {0:?} is not a URL: {1}")]
    Url(String, url::ParseError),
    #[error("--mqtt-url {0:?}: the scheme must be mqtt:// or tcp:// (TLS is not built in)")]
    Scheme(String),
    #[error("--mqtt-url {0:?} names no host")]
    Host(String),
    #[error("--mqtt-url needs at least one --mqtt-topic")]
    NoTopic,
}

impl MqttConfig {
    fn options(&self) -> Result<MqttOptions, MqttConfigError> {
        let url = url::Url::parse(&self.url).map_err(|e| MqttConfigError::Url(self.url.clone(), e))?;
        if !matches!(url.scheme(), "mqtt" | "tcp") {
            return Err(MqttConfigError::Scheme(self.url.clone()));
        }
        let host = url.host_str().ok_or_else(|| MqttConfigError::Host(self.url.clone()))?;
        if self.topics.is_empty() {
            return Err(MqttConfigError::NoTopic);
        }
        let mut options = MqttOptions::new(self.client_id.clone(), host, url.port().unwrap_or(1883));
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(self.max_message_bytes, 64 << 10);
        if !url.username().is_empty() {
            options.set_credentials(url.username(), url.password().unwrap_or(""));
        }
        Ok(options)
    }
}

/// Checks `config` and starts the subscription; it runs until `stopping` turns true.
pub fn start(
    config: MqttConfig,
    ingest: Arc<IngestService>,
    stopping: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, MqttConfigError> {
    let options = config.options()?;
    Ok(tokio::spawn(run(config, options, ingest, stopping)))
}

async fn run(
    config: MqttConfig,
    options: MqttOptions,
    ingest: Arc<IngestService>,
    mut stopping: watch::Receiver<bool>,
) {
    let (client, mut events) = AsyncClient::new(options, 4 * IN_FLIGHT);
    let filters: Vec<SubscribeFilter> =
        config.topics.iter().map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)).collect();
    let mut storing = FuturesOrdered::new();
    // PUBACKs not yet handed to the client (its request queue was full).
    let mut acks: VecDeque<Publish> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        while let Some(publish) = acks.front() {
            if client.try_ack(publish).is_err() {
                break;
            }
            acks.pop_front();
        }
        tokio::select! {
            _ = stopping.changed() => break,
            Some(publish) = storing.next(), if !storing.is_empty() => acks.push_back(publish),
            event = events.poll(), if storing.len() < IN_FLIGHT => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if failing {
                        tracing::info!(url = %config.url, "MQTT: connected again");
                    }
                    failing = false;
                    backoff = Duration::from_millis(100);
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        tracing::warn!(error = %e, "MQTT: cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    storing.push_back(store(ingest.clone(), config.clone(), publish, stopping.clone()));
                }
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(url = %config.url, error = %e, "MQTT: connection lost; retrying with backoff");
                    }
                    failing = true;
                    metrics::counter!("weir_mqtt_connection_errors_total").increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopping.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
        }
    }
    let _ = client.try_disconnect();
}

/// Stores one message, retrying while Weir cannot store (so it is acknowledged only once durable); returns it to
/// be acknowledged.
async fn store(
    ingest: Arc<IngestService>,
    config: MqttConfig,
    publish: Publish,
    mut stopping: watch::Receiver<bool>,
) -> Publish {
    let device = config.device_level.and_then(|level| publish.topic.split('/').nth(level));
    if let Some(device) = device
        && let Err(e) = weir_pipeline::decode::check_device(device)
    {
        bad_payload(&publish, &format!("the topic's device level: {e}"));
        return publish;
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        let service = ingest.for_request(None, &format!("mqtt:{}", publish.topic));
        let outcome = service.ingest_message(publish.payload.clone(), config.format, device).await;
        match &outcome.failure {
            None if outcome.rejected == 0 => {
                metrics::counter!("weir_mqtt_messages_total", "outcome" => "stored").increment(1);
                return publish;
            }
            None => {
                let first = outcome.errors.first().map(|e| format!("line {}: {}", e.line, e.error)).unwrap_or_default();
                let why = format!("{} readings rejected, {} stored; {first}", outcome.rejected, outcome.accepted);
                bad_payload(&publish, &why);
                return publish;
            }
            Some(failure) if failure.kind == ErrorKind::TooLarge => {
                bad_payload(&publish, &failure.message);
                return publish;
            }
            Some(failure) => {
                tracing::warn!(topic = %publish.topic, error = %failure, "MQTT: cannot store a message now; retrying");
                metrics::counter!("weir_mqtt_retries_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // Shutting down: the message stays unacknowledged, and the broker delivers it again.
                    _ = stopping.changed() => std::future::pending::<()>().await,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn bad_payload(publish: &Publish, why: &str) {
    metrics::counter!("weir_mqtt_messages_total", "outcome" => "rejected").increment(1);
    let first = &publish.payload[..publish.payload.len().min(128)];
    tracing::warn!(
        topic = %publish.topic,
        payload = %String::from_utf8_lossy(first),
        reason = why,
        "MQTT: a message was rejected (acknowledged, not stored)"
    );
}
