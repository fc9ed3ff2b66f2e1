//! The gRPC API (`proto/weir/v1/weir.proto`), served by the same `weir serve` on its own port.
//!
//! [`WeirGrpc`] is a thin adapter: it checks the API key, turns messages into calls of a [`Backend`] and answers
//! with what it returns. The real backend ([`backend`], over [`AppState`](crate::server::AppState)) calls the same
//! ingest, statistics, SQL and subscription services as the HTTP handlers, so both APIs validate, deduplicate,
//! store and answer alike; tests put a double behind the trait to check the adapter alone.

pub mod backend;
pub mod batch;
pub mod connections;
#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Admitted, ApiKeys, Principal, Refusal, Scope};

/// The code generated from the proto file, and its descriptors (for server reflection).
pub mod proto {
    tonic::include_proto!("weir.v1");

    /// Hand-written in place of the generated type (see [`batch`](super::batch)).
    pub use super::batch::ReadingBatch;

    /// The encoded `FileDescriptorSet` of `weir.proto`.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weir_descriptor.bin"));
}

use proto::weir_server::Weir;
use proto::{
    IngestAck, LatestRequest, LatestResponse, ReadingBatch, RejectedReading, SeriesRequest, SeriesResponse, SqlRequest,
    SqlResponse, SubscribeRequest, WindowUpdate,
};

/// A stream of messages for a server-streaming call.
pub type MessageStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What one batch came to.
#[derive(Debug, Default)]
pub struct BatchAck {
    pub accepted: u64,
    /// (index in the batch, reason), at most `--max-reported-errors`.
    pub rejected: Vec<(u32, String)>,
    pub rejected_count: u64,
    /// The log position of the last record written (or the durable position when nothing was), as text.
    pub position: String,
    /// Set when storing stopped early (the readings counted in `accepted` are durable all the same).
    pub failure: Option<Status>,
    /// Whether this is the acknowledgement of an earlier batch with the same `batch_id` (nothing stored now).
    pub replayed: bool,
}

/// The services behind the gRPC API.
pub trait Backend: Send + Sync + 'static {
    /// Validates and stores one batch (acknowledged once durable); readings of devices outside `limit` (the API
    /// key's devices) are rejected.
    fn write(&self, batch: ReadingBatch, key: Option<&Principal>) -> impl Future<Output = BatchAck> + Send;
    fn latest(&self, request: LatestRequest) -> impl Future<Output = Result<LatestResponse, Status>> + Send;
    fn series(&self, request: SeriesRequest) -> impl Future<Output = Result<SeriesResponse, Status>> + Send;
    /// Runs read-only SQL; one message per record batch.
    fn query(&self, sql: String) -> impl Future<Output = Result<Vec<SqlResponse>, Status>> + Send;
    fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> impl Future<Output = Result<MessageStream<WindowUpdate>, Status>> + Send;
}

/// The `weir.v1.Weir` service over a backend.
pub struct WeirGrpc<B> {
    backend: Arc<B>,
    keys: ApiKeys,
}

impl<B: Backend> WeirGrpc<B> {
    pub fn new(backend: Arc<B>, keys: ApiKeys) -> Self {
        WeirGrpc { backend, keys }
    }

    /// The same API keys and rule as every port ([`ApiKeys::admit`]): UNAUTHENTICATED without a valid key,
    /// PERMISSION_DENIED for a key without the scope, RESOURCE_EXHAUSTED over the key's concurrency. The call
    /// holds what is returned until it ends.
    fn authorize<T>(&self, request: &Request<T>, scope: Scope) -> Result<Option<Admitted>, Status> {
        self.keys.admit_headers(&request.metadata().clone().into_headers(), scope).map_err(Refusal::into_status)
    }
}

/// The most bytes of rejection descriptions one acknowledgement carries, over a whole stream.
pub const MAX_ACK_REPORT_BYTES: usize = 1 << 20;

/// Adds one batch's outcome to a stream's acknowledgement; descriptions of rejected readings only while the
/// acknowledgement stays under [`MAX_ACK_REPORT_BYTES`] (a stream of many bad batches made acks no client could read).
fn add_batch(ack: &mut IngestAck, batch: u32, done: BatchAck) {
    ack.accepted += done.accepted;
    ack.rejected_count += done.rejected_count;
    ack.replayed_batches += u32::from(done.replayed);
    ack.rejected_truncated |= done.rejected.len() as u64 != done.rejected_count;
    let mut bytes: usize = ack.rejected.iter().map(|r| r.reason.len() + 16).sum();
    for (index, reason) in done.rejected {
        bytes += reason.len() + 16;
        if bytes > MAX_ACK_REPORT_BYTES {
            ack.rejected_truncated = true;
            break;
        }
        ack.rejected.push(RejectedReading { batch, index, reason });
    }
    ack.position = done.position;
}

/// A failure part-way through, naming what was stored before it.
fn partial_failure(status: Status, ack: &IngestAck) -> Status {
    Status::new(
        status.code(),
        format!(
            "{} ({} readings were acknowledged before it, through log position {})",
            status.message(),
            ack.accepted,
            if ack.position.is_empty() { "-" } else { &ack.position }
        ),
    )
}

#[tonic::async_trait]
impl<B: Backend> Weir for WeirGrpc<B> {
    async fn ingest(&self, request: Request<Streaming<ReadingBatch>>) -> Result<Response<IngestAck>, Status> {
        let admitted = self.authorize(&request, Scope::Write)?;
        let key = admitted.as_ref().map(|a| &a.principal);
        let mut batches = request.into_inner();
        let mut ack = IngestAck::default();
        let mut index = 0u32;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| partial_failure(e, &ack))?;
            let mut done = self.backend.write(batch, key).await;
            let failure = done.failure.take();
            add_batch(&mut ack, index, done);
            if let Some(status) = failure {
                return Err(partial_failure(status, &ack));
            }
            index += 1;
        }
        Ok(Response::new(ack))
    }

    async fn write(&self, request: Request<ReadingBatch>) -> Result<Response<IngestAck>, Status> {
        let admitted = self.authorize(&request, Scope::Write)?;
        let mut done = self.backend.write(request.into_inner(), admitted.as_ref().map(|a| &a.principal)).await;
        let failure = done.failure.take();
        let mut ack = IngestAck::default();
        add_batch(&mut ack, 0, done);
        match failure {
            Some(status) => Err(partial_failure(status, &ack)),
            None => Ok(Response::new(ack)),
        }
    }

    async fn latest(&self, request: Request<LatestRequest>) -> Result<Response<LatestResponse>, Status> {
        let _admitted = self.authorize(&request, Scope::Read)?;
        Ok(Response::new(self.backend.latest(request.into_inner()).await?))
    }

    async fn series(&self, request: Request<SeriesRequest>) -> Result<Response<SeriesResponse>, Status> {
        let _admitted = self.authorize(&request, Scope::Read)?;
        Ok(Response::new(self.backend.series(request.into_inner()).await?))
    }

    type QueryStream = MessageStream<SqlResponse>;

    async fn query(&self, request: Request<SqlRequest>) -> Result<Response<Self::QueryStream>, Status> {
        let _admitted = self.authorize(&request, Scope::Sql)?;
        let messages = self.backend.query(request.into_inner().sql).await?;
        Ok(Response::new(Box::pin(futures_util::stream::iter(messages.into_iter().map(Ok)))))
    }

    type SubscribeStream = MessageStream<WindowUpdate>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let _admitted = self.authorize(&request, Scope::Read)?;
        Ok(Response::new(self.backend.subscribe(request.into_inner()).await?))
    }
}

/// Serves `weir.v1.Weir`, the standard health service and server reflection on `listener` until `shutdown`,
/// within `limits` ([`connections`]).
pub async fn serve<B: Backend>(
    listener: tokio::net::TcpListener,
    service: WeirGrpc<B>,
    max_message_bytes: usize,
    limits: connections::ConnectionLimits,
    flight: Option<crate::flight::WeirFlightSql>,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<proto::weir_server::WeirServer<WeirGrpc<B>>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both reflection versions: grpcurl asks for v1 and falls back to v1alpha.
    let reflection_v1 = reflection().build_v1().expect("the descriptor sets are generated at build time");
    let reflection_v1alpha = reflection().build_v1alpha().expect("the descriptor sets are generated at build time");
    let weir = proto::weir_server::WeirServer::new(service).max_decoding_message_size(max_message_bytes);
    tonic::transport::Server::builder()
        // Pings keep a quiet but live connection (a subscription) sending: its answers count as activity.
        .http2_keepalive_interval(Some(limits.idle / 3))
        .http2_keepalive_timeout(Some(limits.idle / 3))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(weir)
        .add_optional_service(flight.map(|f| {
            arrow_flight::flight_service_server::FlightServiceServer::new(f)
                .max_decoding_message_size(max_message_bytes)
        }))
        .serve_with_incoming_shutdown(connections::incoming(listener, limits, tls), shutdown)
        .await
}
