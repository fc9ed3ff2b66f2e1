//! Ingest: readings in, durable and acknowledged out, whatever transport brought them.
//!
//! [`IngestService`] reads its input a chunk at a time from a [`ChunkSource`] (HTTP hands it the request body,
//! decompressed and limited) or takes typed fields (gRPC), validates every reading with the NDJSON rules
//! ([`BodyDecoder`]), queues each full batch to the WAL as soon as it is full (so memory stays at one batch), and
//! answers only once every batch it counts as accepted is fsynced. A failure is a [`ServiceError`] that says how much
//! was made durable before it; the transports turn it into their status at the edge.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::time::Instant;
use weir_pipeline::budget::MemoryBudget;
use weir_pipeline::decode::{Decoder, ReadingFields};
use weir_pipeline::idempotency::{Claim, IdempotencyKey, KeyEntry, Keys};
use weir_pipeline::ingest::{BodyDecoder, DecodeLimits, KeepLimits, LineReport, RejectionCounts};
use weir_pipeline::line_protocol::{LineProtocolDecoder, LineProtocolMapping, RejectedLine};
use weir_pipeline::reading::{DeviceInterner, MAX_SENSORS, ReadingBatch};
use weir_pipeline::rejected::{KeptLine, Origin, RejectedStore};
use weir_pipeline::wal::{AppendError, KeyView, PendingAppend, ReadingLog};

use super::error::{ErrorKind, ServiceError};
use super::idempotent::{KeyedRequest, StoredAnswer};
use crate::position::LogPosition;

/// Limits of one ingest request.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub decode: DecodeLimits,
    /// Largest body, counted after decompression (`--max-body-bytes`); enforced by the transport's source.
    pub max_body_bytes: u64,
    /// Longest time one request may take, reading included (`--max-request-time`).
    pub max_request_time: Duration,
    /// How long a request waits for room in the WAL queue before it fails as unavailable.
    pub queue_timeout: Duration,
    /// The largest message of a protocol read whole (remote write, OTLP), compressed and decompressed alike
    /// (`--max-message-bytes`).
    pub max_message_bytes: u64,
    /// The most readings an atomic request may hold until its end (`--max-atomic-readings`; about 24–48 bytes each).
    pub max_atomic_readings: usize,
}

/// Where a request's bytes come from, a chunk at a time: a transport's body, already decompressed, failing with
/// [`ErrorKind::TooLarge`] beyond the body limit.
pub trait ChunkSource: Send {
    /// The next chunk; `None` at the end.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, ServiceError>> + Send;

    /// Bytes given out so far (after decompression).
    fn bytes_read(&self) -> u64;
}

/// Decodes requests and makes their readings durable.
#[derive(Clone)]
pub struct IngestService {
    decoder: Decoder,
    limits: IngestLimits,
    log: Arc<dyn ReadingLog>,
    /// In a cluster, this process's index: positions are then written `PROCESS:POS`.
    process: Option<u32>,
    /// Requests are refused while it is used up.
    budget: Option<Arc<MemoryBudget>>,
    /// How the other protocols' names become readings' devices and sensors.
    protocols: Arc<Protocols>,
    /// The idempotency keys this process remembers.
    keys: Arc<Keys>,
    /// The API key of the request, when it has a rate: its readings are taken from it as they are stored.
    rate: Option<crate::auth::Principal>,
    /// Where rejected lines are recorded (`None`: nowhere, only counted).
    rejected: Option<Arc<RejectedStore>>,
    /// Who sent the request and where to ([`IngestService::for_request`]), for the record of rejected lines.
    origin: Origin,
}

/// How the protocols other than NDJSON and gRPC name devices and sensors (`weir serve`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocols {
    /// Line protocol: sensor naming and the device tags.
    pub line_protocol: LineProtocolMapping,
    /// Prometheus remote write: the label that names the device.
    pub remote_write_device_label: String,
    /// OTLP: the resource attribute that names the device.
    pub otlp_device_attribute: String,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            line_protocol: LineProtocolMapping::default(),
            remote_write_device_label: "instance".into(),
            otlp_device_attribute: "service.instance.id".into(),
        }
    }
}

/// What happened to one request.
#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// Readings made durable.
    pub accepted: u64,
    /// WAL position of the last record written for this request, if any.
    pub position: Option<u64>,
    pub rejected: u64,
    /// `rejected` by reason.
    pub rejected_by_reason: RejectionCounts,
    /// Lines that held a reading, valid or not (blank lines are not counted).
    pub received: u64,
    pub errors: Vec<LineReport>,
    pub invalid: Vec<Box<RawValue>>,
    /// Line protocol: the texts of the rejected lines the report describes.
    pub echoes: Vec<RejectedLine>,
    /// Whether rejected lines went undescribed (beyond the report's limits); `rejected` counts them all.
    pub truncated: bool,
    /// Whether this is the answer of an earlier request with the same idempotency key (nothing was stored now).
    pub replayed: bool,
    /// Set when reading or storing stopped early; its `accepted` (like `accepted` here) counts what was made
    /// durable before.
    pub failure: Option<ServiceError>,
}

impl IngestOutcome {
    /// A request refused before anything was stored.
    pub fn failed(failure: ServiceError) -> Self {
        IngestOutcome { failure: Some(failure), ..IngestOutcome::default() }
    }
}

impl IngestService {
    pub fn new(decoder: Decoder, limits: IngestLimits, log: Arc<dyn ReadingLog>) -> Self {
        let keys = Keys::in_memory(Duration::from_secs(24 * 3600), 64 << 20);
        IngestService {
            decoder,
            limits,
            log,
            process: None,
            budget: None,
            protocols: Arc::default(),
            keys,
            rate: None,
            rejected: None,
            origin: Origin { key: None, source: Arc::from("unknown") },
        }
    }

    /// Records every rejected line in `store` before the request is answered.
    pub fn with_rejected(mut self, store: Arc<RejectedStore>) -> Self {
        self.rejected = Some(store);
        self
    }

    /// The record of rejected lines, if rejected lines are recorded.
    pub fn rejected(&self) -> Option<&Arc<RejectedStore>> {
        self.rejected.as_ref()
    }

    /// The service for one request from `source` (its route, `grpc`, or `mqtt:<topic>`) under the API key
    /// `principal`: its rejected lines are recorded with the source and the key's name; it writes only the devices
    /// its key lists (other readings are rejected line by line, with the reason), and its readings are taken from
    /// the key's rate as they are stored (beyond it, [`ErrorKind::RateLimited`]). Every transport gets its service
    /// here.
    pub fn for_request(
        &self,
        principal: Option<&crate::auth::Principal>,
        source: &str,
    ) -> std::borrow::Cow<'_, IngestService> {
        let limited = principal.filter(|p| p.devices.is_some() || p.limiter.is_some());
        if self.rejected.is_none() && limited.is_none() {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut service = self.clone();
        service.origin = Origin { key: principal.map(|p| p.name.clone()), source: Arc::from(source) };
        let Some(principal) = limited else {
            return std::borrow::Cow::Owned(service);
        };
        if let Some(patterns) = &principal.devices {
            let limit = weir_pipeline::decode::DeviceLimit { key: principal.name.clone(), patterns: patterns.clone() };
            service.decoder = service.decoder.with_device_limit(limit);
        }
        service.rate = principal.limiter.is_some().then(|| principal.clone());
        std::borrow::Cow::Owned(service)
    }

    /// Takes `readings` from the request key's rate, if it has one.
    fn take_rate(&self, readings: usize) -> Result<(), ServiceError> {
        match &self.rate {
            None => Ok(()),
            Some(principal) => principal.take(readings as u64).map_err(|limit| {
                let refusal = crate::auth::Refusal::Limited { key: principal.name.clone(), limit: limit.clone() };
                crate::auth::failed(&refusal);
                let mut error = ServiceError::from(limit);
                error.message = refusal.to_string();
                error
            }),
        }
    }

    /// Remembers idempotency keys in `keys` (the node's, rebuilt from the WAL; by default a table in memory).
    pub fn with_keys(mut self, keys: Arc<Keys>) -> Self {
        self.keys = keys;
        self
    }

    /// Names devices and sensors of the other protocols with `protocols`.
    pub fn with_protocols(mut self, protocols: Protocols) -> Self {
        self.protocols = Arc::new(protocols);
        self
    }

    /// How line protocol becomes readings.
    pub fn line_protocol(&self) -> &LineProtocolMapping {
        &self.protocols.line_protocol
    }

    /// The Prometheus label that names the device.
    pub fn device_label(&self) -> &str {
        &self.protocols.remote_write_device_label
    }

    /// The OTLP resource attribute that names the device.
    pub fn otlp_device_attribute(&self) -> &str {
        &self.protocols.otlp_device_attribute
    }

    /// The largest message of a protocol read whole (`--max-message-bytes`).
    pub fn message_limit(&self) -> u64 {
        self.limits.max_message_bytes
    }

    /// Refuses requests (503) while `budget` is used up.
    pub fn with_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The same, for process `process` of a cluster.
    pub fn in_cluster(mut self, process: u32) -> Self {
        self.process = Some(process);
        self
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// Why the log accepts no more writes, once it has failed for good (a full disk, an I/O error).
    pub fn log_failure(&self) -> Option<weir_pipeline::wal::AppendError> {
        self.log.failure()
    }

    /// This process's index in a cluster (`None` alone).
    pub fn process(&self) -> Option<u32> {
        self.process
    }

    /// A log position of this process as clients see it (`POS`, or `PROCESS:POS` in a cluster).
    pub fn position_text(&self, position: u64) -> String {
        LogPosition { process: self.process, position }.to_string()
    }

    /// The durable WAL position.
    pub fn durable_position(&self) -> u64 {
        self.log.durable_position()
    }

    /// Reads `source` to its end and stores its valid NDJSON readings. With `atomic`, nothing is stored unless every
    /// line is valid (the valid readings are then held in memory until the end and written as one record). Under an
    /// idempotency key (`keyed`), the readings are also written as one record, with the key and the answer; a retry
    /// of the same request gets that answer and stores nothing.
    pub async fn ingest(
        &self,
        source: &mut impl ChunkSource,
        atomic: bool,
        keyed: Option<KeyedRequest>,
    ) -> IngestOutcome {
        let outcome = self.run(Input::Body(source), atomic, None, keyed).await;
        outcome.record_metrics(source.bytes_read());
        outcome
    }

    /// Stores the valid readings of `readings`, given as typed fields (gRPC), validated with the same rules and
    /// error texts as NDJSON lines; a reading's number in the report is its 1-based place in `readings`. An `Err`
    /// is a reading whose fields could not be read, rejected with that reason. They are taken a batch at a time.
    /// `encoded_bytes` is the size the transport received them in (counted as body bytes). Under a key, the caller
    /// has hashed the whole request into `keyed`.
    pub async fn ingest_readings<'r>(
        &self,
        mut readings: impl Iterator<Item = Result<ReadingFields<'r>, String>> + Send,
        encoded_bytes: u64,
        atomic: bool,
        keyed: Option<KeyedRequest>,
    ) -> IngestOutcome {
        let outcome = self.run(Input::<NoSource>::Readings(&mut readings), atomic, None, keyed).await;
        outcome.record_metrics(encoded_bytes);
        outcome
    }

    /// Reads `source` to its end as InfluxDB line protocol and stores its valid readings (one per numeric field);
    /// `lines` keeps the rejected lines' texts for the answer.
    pub async fn ingest_line_protocol(
        &self,
        source: &mut impl ChunkSource,
        lines: &mut LineProtocolDecoder,
        atomic: bool,
        keyed: Option<KeyedRequest>,
    ) -> IngestOutcome {
        let outcome = self.run(Input::LineProtocol(source, lines), atomic, None, keyed).await;
        outcome.record_metrics(source.bytes_read());
        outcome
    }

    /// Stores the readings of one message (an MQTT payload) in `format`; readings that name no device are
    /// `default_device`'s when given (checked with the rules of a device name by the caller).
    pub async fn ingest_message(
        &self,
        payload: Bytes,
        format: MessageFormat,
        default_device: Option<&str>,
    ) -> IngestOutcome {
        let mut source = OneChunk(Some(payload), 0);
        let outcome = match format {
            MessageFormat::Ndjson => self.run(Input::Body(&mut source), false, default_device, None).await,
            MessageFormat::LineProtocol(precision) => {
                let now = chrono::Utc::now().timestamp_micros();
                let mut lines = LineProtocolDecoder::new(self.line_protocol().clone(), precision, now);
                self.run(Input::LineProtocol(&mut source, &mut lines), false, default_device, None).await
            }
        };
        outcome.record_metrics(source.1);
        outcome
    }

    async fn run<S: ChunkSource>(
        &self,
        mut input: Input<'_, '_, S>,
        atomic: bool,
        default_device: Option<&str>,
        mut keyed: Option<KeyedRequest>,
    ) -> IngestOutcome {
        let received_micros = weir_pipeline::idempotency::now_micros();
        let deadline = Instant::now() + self.limits.max_request_time;
        // A request under a key holds the key until its answer is remembered; a second one meanwhile is refused.
        let claim = match &keyed {
            None => None,
            Some(k) => match self.keys.claim(&k.key) {
                Some(claim) => Some(claim),
                None => return IngestOutcome::failed(in_progress(&k.key)),
            },
        };
        // Atomic and keyed requests hold their readings until the end and write them as one record.
        let hold = atomic || keyed.is_some();
        let decoder = match default_device {
            Some(device) => self.decoder.clone().with_default_device(device),
            None => self.decoder.clone(),
        };
        let mut decoder = BodyDecoder::new(decoder, self.limits.decode.clone());
        if let Some(store) = &self.rejected {
            let options = store.options();
            decoder =
                decoder.keeping(KeepLimits { max_lines: options.max_per_request, text_bytes: options.text_bytes });
        }
        let mut held = ReadingBatch::new();
        let mut held_devices = DeviceInterner::default();
        let mut pending: Vec<(PendingAppend, u64)> = Vec::new();
        let mut failure = self.budget.as_ref().filter(|b| !b.admits_requests()).map(|b| memory_full(b));
        let mut given = 0u64;
        while failure.is_none() {
            match &mut input {
                Input::Body(source) => match self.next_chunk(*source, deadline).await {
                    Ok(Some(chunk)) => {
                        if let Some(k) = keyed.as_mut() {
                            k.request.update(&chunk);
                        }
                        decoder.feed(&chunk)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
                Input::LineProtocol(source, lines) => match self.next_chunk(*source, deadline).await {
                    Ok(Some(chunk)) => {
                        if let Some(k) = keyed.as_mut() {
                            k.request.update(&chunk);
                        }
                        lines.feed(&chunk, &mut decoder)
                    }
                    Ok(None) => {
                        lines.finish(&mut decoder);
                        break;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
                Input::Readings(readings) => {
                    // A batch's worth at a time, so full batches go to the log as they fill.
                    let mut taken = 0;
                    for fields in readings.by_ref().take(self.limits.decode.batch_rows.max(1)) {
                        given += 1;
                        taken += 1;
                        decoder.push_reading(given, fields, None);
                    }
                    if taken == 0 {
                        break;
                    }
                }
            }
            while let Some(batch) = decoder.take_full_batch() {
                if hold {
                    if held.append_batch(&batch, &mut held_devices).is_err()
                        || held.len() > self.limits.max_atomic_readings
                    {
                        failure = Some(self.too_large_to_hold(keyed.is_some()));
                        break;
                    }
                } else if let Err(e) = self.queue(&batch, deadline, &mut pending).await {
                    failure = Some(e);
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none() {
            decoder.finish();
            if let Some(batch) = decoder.take_batch() {
                if hold {
                    if held.append_batch(&batch, &mut held_devices).is_err()
                        || held.len() > self.limits.max_atomic_readings
                    {
                        failure = Some(self.too_large_to_hold(keyed.is_some()));
                    }
                } else if let Err(e) = self.queue(&batch, deadline, &mut pending).await {
                    failure = Some(e);
                }
            }
        }
        let echoes = match &mut input {
            Input::LineProtocol(_, lines) => lines.take_rejected_lines(),
            Input::Body(_) | Input::Readings(_) => Vec::new(),
        };
        let rejected = decoder.rejections().rejected;
        let kept = decoder.take_kept();
        if let (Some(keyed), Some(claim), None) = (keyed, claim, &failure) {
            let stored = if atomic && rejected > 0 { ReadingBatch::new() } else { held };
            let outcome = self.finish_keyed(keyed, claim, stored, decoder, echoes, received_micros, deadline).await;
            // A replay was recorded the first time; a refused request's lines were not reported.
            if !outcome.replayed && outcome.failure.is_none() {
                self.record_rejected(kept, received_micros).await;
            }
            return outcome;
        }
        if atomic
            && failure.is_none()
            && rejected == 0
            && !held.is_empty()
            && let Err(e) = self.queue(&held, deadline, &mut pending).await
        {
            failure = Some(e);
        }
        // Everything queued is written whether we wait or not; wait so the answer counts exactly what is durable.
        let mut accepted = 0;
        let mut position = None;
        for (append, rows) in pending {
            match append.durable().await {
                Ok(p) => {
                    accepted += rows;
                    position = Some(p);
                }
                Err(e) => {
                    failure.get_or_insert_with(|| log_failure(e));
                }
            }
        }
        if let Some(f) = failure.as_mut() {
            f.accepted = accepted;
        }
        let decoded = decoder.decoded();
        let rejections = decoder.into_rejections();
        self.record_rejected(kept, received_micros).await;
        IngestOutcome {
            accepted,
            position,
            rejected: rejections.rejected,
            rejected_by_reason: rejections.by_reason,
            received: decoded + rejections.rejected,
            errors: rejections.errors,
            invalid: rejections.invalid,
            echoes,
            truncated: rejections.truncated,
            replayed: false,
            failure,
        }
    }

    /// The end of a request under a key, read whole without failure: the earlier answer when the key was answered
    /// before (a different request under it is refused), otherwise `stored` written as one record with the key and
    /// the answer, which is remembered once durable.
    #[allow(clippy::too_many_arguments)]
    async fn finish_keyed(
        &self,
        keyed: KeyedRequest,
        claim: Claim,
        stored: ReadingBatch,
        decoder: BodyDecoder,
        echoes: Vec<RejectedLine>,
        received_micros: i64,
        deadline: Instant,
    ) -> IngestOutcome {
        let request = keyed.request.finish();
        if let Some(earlier) = claim.earlier() {
            if earlier.request != request {
                return IngestOutcome::failed(key_reused(&keyed.key, earlier.position));
            }
            return match StoredAnswer::decode(&earlier.answer) {
                Ok(answer) => answer.into_outcome(earlier.position, true),
                Err(e) => IngestOutcome::failed(ServiceError::new(
                    ErrorKind::Internal,
                    format!("the answer kept for idempotency key {} cannot be read: {e}", keyed.key),
                )),
            };
        }
        if let Err(e) = self.take_rate(stored.len()) {
            return IngestOutcome::failed(e);
        }
        let decoded = decoder.decoded();
        let rejections = decoder.into_rejections();
        let answer = StoredAnswer {
            accepted: stored.len() as u64,
            rejected: rejections.rejected,
            truncated: rejections.truncated,
            errors: rejections.errors,
            invalid: rejections.invalid,
            echoes,
        }
        .encode();
        // Written and remembered in a task of its own: once the record is queued it is written whether the client
        // waits or not, and its key must then be remembered whether the client waits or not.
        let (log, key) = (self.log.clone(), keyed.key);
        let wait = self.limits.queue_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let commit = tokio::spawn(async move {
            let view = KeyView { key: key.as_str(), request, received_micros, answer: &answer };
            let position = log.append_keyed(&stored, &view, wait).await?.durable().await?;
            let outcome = StoredAnswer::decode(&answer).map(|a| a.into_outcome(position, false));
            claim.complete(KeyEntry { request, position, received_micros, answer: answer.into() });
            Ok::<_, AppendError>(outcome)
        });
        let mut outcome = match commit.await {
            Ok(Ok(Ok(outcome))) => outcome,
            Ok(Ok(Err(e))) => IngestOutcome::failed(ServiceError::new(
                ErrorKind::Internal,
                format!("an answer just encoded cannot be decoded: {e}"),
            )),
            Ok(Err(e)) => IngestOutcome::failed(log_failure(e)),
            Err(e) => IngestOutcome::failed(ServiceError::new(ErrorKind::Internal, format!("storing failed: {e}"))),
        };
        outcome.rejected_by_reason = rejections.by_reason;
        outcome.received = decoded + rejections.rejected;
        outcome
    }

    /// Writes the request's rejected lines to the record of rejected lines, with one write on a blocking thread,
    /// before the request is answered. Lines not recorded (beyond the per-request limit or one segment, or when the
    /// write fails) are counted in `weir_rejected_not_recorded_total`, never dropped silently.
    async fn record_rejected(&self, (kept, not_kept): (Vec<KeptLine>, u64), received_micros: i64) {
        let Some(store) = &self.rejected else { return };
        not_recorded("per_request_limit", not_kept);
        if kept.is_empty() {
            return;
        }
        let lines = kept.len() as u64;
        let (store, origin) = (store.clone(), self.origin.clone());
        match tokio::task::spawn_blocking(move || store.append(&origin, received_micros, &kept)).await {
            Ok(Ok(appended)) => {
                metrics::counter!("weir_rejected_recorded_total").increment(appended.recorded as u64);
                not_recorded("request_too_large", appended.too_large as u64);
            }
            Ok(Err(e)) => {
                warn_write_failed(&e);
                not_recorded("write_failed", lines);
            }
            Err(e) => {
                warn_write_failed(&e);
                not_recorded("write_failed", lines);
            }
        }
    }

    async fn next_chunk(
        &self,
        source: &mut impl ChunkSource,
        deadline: Instant,
    ) -> Result<Option<Bytes>, ServiceError> {
        match tokio::time::timeout_at(deadline, source.next_chunk()).await {
            Err(_) => Err(self.timed_out()),
            Ok(chunk) => chunk,
        }
    }

    fn too_large_to_hold(&self, keyed: bool) -> ServiceError {
        let (what, instead) = if keyed {
            ("a request under an idempotency key", "smaller requests, each under its own key")
        } else {
            ("an atomic request", "smaller atomic requests, or without atomic=true")
        };
        ServiceError::new(
            ErrorKind::TooLarge,
            format!(
                "{what} holds its readings until its end, at most {} of them (--max-atomic-readings) of at most \
                 {MAX_SENSORS} distinct sensors: nothing of this one was stored; send it in {instead}",
                self.limits.max_atomic_readings
            ),
        )
    }

    fn timed_out(&self) -> ServiceError {
        ServiceError::new(
            ErrorKind::Timeout,
            format!(
                "the request took longer than the limit of {:?} (--max-request-time)",
                self.limits.max_request_time
            ),
        )
    }

    async fn queue(
        &self,
        batch: &ReadingBatch,
        deadline: Instant,
        pending: &mut Vec<(PendingAppend, u64)>,
    ) -> Result<(), ServiceError> {
        self.take_rate(batch.len())?;
        let wait = self.limits.queue_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let append = self.log.append(batch, wait).await.map_err(log_failure)?;
        pending.push((append, batch.len() as u64));
        Ok(())
    }
}

impl IngestOutcome {
    /// Counts the request in the ingest metrics (a replayed answer only as a replay).
    fn record_metrics(&self, body_bytes: u64) {
        metrics::counter!("weir_ingest_body_bytes_total").increment(body_bytes);
        if self.replayed {
            metrics::counter!("weir_idempotent_replays_total").increment(1);
            return;
        }
        metrics::counter!("weir_readings_received_total").increment(self.received);
        metrics::counter!("weir_readings_accepted_total").increment(self.accepted);
        for (reason, count) in self.rejected_by_reason.iter() {
            // Every reason is registered (with 0) so dashboards see the series before the first rejection.
            metrics::counter!("weir_readings_rejected_total", "reason" => reason.as_str()).increment(count);
        }
    }
}

/// Counts rejected lines left out of the record of rejected lines, by why.
fn not_recorded(why: &'static str, lines: u64) {
    if lines > 0 {
        metrics::counter!("weir_rejected_not_recorded_total", "why" => why).increment(lines);
    }
}

/// Logs a failed write to the record of rejected lines, at most once a minute (a full disk fails every request).
fn warn_write_failed(error: &dyn std::fmt::Display) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = weir_pipeline::idempotency::now_micros();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000_000
        && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::warn!(
            error = %error,
            "cannot write to the record of rejected lines; their lines are counted in weir_rejected_not_recorded_total \
             (logged at most once a minute)"
        );
    }
}

/// A failed append: a full queue is worth retrying at once; a full disk (507) or a failed log (503) only once Weir
/// has been restarted (their `Retry-After` is longer); a log that was closed is Weir stopping.
fn log_failure(e: AppendError) -> ServiceError {
    let kind = match e {
        AppendError::Busy(_) => ErrorKind::Unavailable,
        AppendError::DiskFull(_) => ErrorKind::StorageFull,
        AppendError::Failed(_) | AppendError::Closed => ErrorKind::Unavailable,
    };
    let mut error = ServiceError::new(kind, e.to_string());
    if matches!(e, AppendError::Failed(_)) {
        error.retry_after = Some(std::time::Duration::from_secs(30));
    }
    error
}

/// Another request under the same key is being processed.
fn in_progress(key: &IdempotencyKey) -> ServiceError {
    let mut error = ServiceError::new(
        ErrorKind::Conflict,
        format!(
            "a request with idempotency key {key} is being processed: nothing of this one was read or stored; \
             retry after it has been answered to get its answer"
        ),
    );
    error.retry_after = Some(Duration::from_secs(1));
    error
}

/// A key answered before, sent with another request.
fn key_reused(key: &IdempotencyKey, position: u64) -> ServiceError {
    ServiceError::new(
        ErrorKind::KeyReused,
        format!(
            "idempotency key {key} was used for a different request (another body, endpoint or query string), \
             stored at log position {position}: nothing of this one was stored; send a new request under a new key"
        ),
    )
}

/// The memory budget is used up: nothing of the request is read.
fn memory_full(budget: &MemoryBudget) -> ServiceError {
    let mut error = ServiceError::new(
        ErrorKind::Unavailable,
        format!(
            "the memory budget is used up ({} of {} MiB, --memory-limit; see weir_memory_used_bytes): nothing of this \
             request was stored; retry later — the state shrinks as days leave the live horizon and the archive \
             flushes — or raise --memory-limit",
            budget.used() >> 20,
            budget.limit() >> 20
        ),
    );
    error.retry_after = Some(std::time::Duration::from_secs(30));
    error
}

/// What one request reads its readings from.
enum Input<'s, 'r, S> {
    /// NDJSON, chunk by chunk.
    Body(&'s mut S),
    /// Line protocol, chunk by chunk.
    LineProtocol(&'s mut S, &'s mut LineProtocolDecoder),
    /// Readings given as typed fields (or why one could not be read); what is left of them.
    Readings(&'s mut (dyn Iterator<Item = Result<ReadingFields<'r>, String>> + Send)),
}

/// How a message's payload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    Ndjson,
    /// Line protocol, timestamps at this precision.
    LineProtocol(weir_pipeline::line_protocol::Precision),
}

/// A payload already in memory, as a source of one chunk; counts its bytes.
struct OneChunk(Option<Bytes>, u64);

impl ChunkSource for OneChunk {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ServiceError> {
        let chunk = self.0.take();
        self.1 += chunk.as_ref().map_or(0, |c| c.len() as u64);
        Ok(chunk)
    }

    fn bytes_read(&self) -> u64 {
        self.1
    }
}

/// The source type of an input that has none (typed readings).
struct NoSource;

impl ChunkSource for NoSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ServiceError> {
        Ok(None)
    }

    fn bytes_read(&self) -> u64 {
        0
    }
}

/// Logs for tests of the services and their adapters.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use weir_pipeline::reading::ReadingBatch;
    use weir_pipeline::wal::{AppendError, AppendFuture, ReadingLog};

    /// A log whose queue is always full, as when the disk falls behind.
    pub(crate) struct FullLog;

    impl ReadingLog for FullLog {
        fn append(&self, _batch: &ReadingBatch, wait: Duration) -> AppendFuture<'_> {
            Box::pin(async move {
                tokio::time::sleep(wait).await;
                Err(AppendError::Busy(wait))
            })
        }
        fn append_keyed(
            &self,
            batch: &ReadingBatch,
            _key: &weir_pipeline::wal::KeyView<'_>,
            wait: Duration,
        ) -> AppendFuture<'_> {
            self.append(batch, wait)
        }
        fn durable_position(&self) -> u64 {
            41
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::FullLog;
    use super::*;
    use weir_pipeline::reading::SensorSet;

    /// Chunks given out as they are asked for, then a stall (a client that stops sending).
    struct Chunks(Vec<&'static str>, u64);

    impl ChunkSource for Chunks {
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, ServiceError> {
            if self.0.is_empty() {
                std::future::pending::<()>().await;
            }
            let chunk = self.0.remove(0);
            self.1 += chunk.len() as u64;
            Ok(Some(Bytes::from_static(chunk.as_bytes())))
        }
        fn bytes_read(&self) -> u64 {
            self.1
        }
    }

    fn limits(max_request_time: Duration) -> IngestLimits {
        IngestLimits {
            decode: DecodeLimits::default(),
            max_body_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            max_request_time,
            queue_timeout: Duration::from_millis(50),
            max_atomic_readings: 1_000_000,
        }
    }

    #[tokio::test]
    async fn a_full_log_fails_as_unavailable_with_a_retry_and_accepts_nothing() {
        let service =
            IngestService::new(Decoder::new(SensorSet::default()), limits(Duration::from_secs(10)), Arc::new(FullLog));
        let fields = ReadingFields {
            sensor: Some("speed"),
            value: Some(1.0),
            timestamp: Some(weir_pipeline::decode::Timestamp::Rfc3339("2026-11-22T18:25:43Z")),
            device: None,
        };
        let started = std::time::Instant::now();
        let outcome = service.ingest_readings([Ok(fields)].into_iter(), 10, false, None).await;
        assert!(started.elapsed() >= Duration::from_millis(50), "it waited for room first");
        let failure = outcome.failure.expect("a failure");
        assert_eq!((failure.kind, failure.accepted, outcome.accepted), (ErrorKind::Unavailable, 0, 0));
        assert_eq!(failure.retry_after, Some(Duration::from_secs(1)));
        assert!(failure.message.contains("retry later"), "{failure}");
    }

    #[tokio::test]
    async fn a_source_that_stalls_times_out_naming_the_flag() {
        let service = IngestService::new(
            Decoder::new(SensorSet::default()),
            limits(Duration::from_millis(100)),
            Arc::new(FullLog),
        );
        let mut source = Chunks(vec!["{\"sensor\":\"speed\",", "\"value\":1"], 0);
        let outcome = service.ingest(&mut source, false, None).await;
        let failure = outcome.failure.expect("a failure");
        assert_eq!(failure.kind, ErrorKind::Timeout);
        assert!(failure.message.contains("--max-request-time"), "{failure}");
        assert_eq!(source.bytes_read(), 27);
    }
}
