//! The adapter alone, over a test double of the backend: auth, acknowledgements, errors passed through.

use std::sync::Mutex;

use tonic::metadata::MetadataValue;

use super::proto::weir_server::Weir;
use super::proto::{Reading, UpdateKind};
use super::*;

/// Remembers what it was asked; fails writes of batches whose first sensor is "fail".
#[derive(Default)]
struct Double {
    writes: Mutex<Vec<usize>>,
}

impl Backend for Double {
    async fn write(&self, batch: ReadingBatch, _key: Option<&crate::auth::Principal>) -> BatchAck {
        self.writes.lock().unwrap().push(batch.len());
        let first = batch.readings().next().and_then(|r| r.ok()).and_then(|r| r.sensor);
        let failure = (first == Some("fail")).then(|| Status::unavailable("the log is full"));
        BatchAck {
            accepted: batch.len() as u64 - 1,
            rejected: vec![(0, "unknown sensor".into())],
            rejected_count: 1,
            position: "7".into(),
            failure,
            replayed: false,
        }
    }
    async fn latest(&self, request: LatestRequest) -> Result<LatestResponse, Status> {
        Ok(LatestResponse { device: request.device, latest: Vec::new() })
    }
    async fn series(&self, _: SeriesRequest) -> Result<SeriesResponse, Status> {
        Err(Status::invalid_argument("unknown sensor"))
    }
    async fn query(&self, sql: String) -> Result<Vec<SqlResponse>, Status> {
        Ok(vec![SqlResponse { arrow_ipc: sql.into_bytes(), rows: 1 }])
    }
    async fn subscribe(&self, _: SubscribeRequest) -> Result<MessageStream<WindowUpdate>, Status> {
        let ready = WindowUpdate { kind: UpdateKind::Ready as i32, ..WindowUpdate::default() };
        Ok(Box::pin(futures_util::stream::iter([Ok(ready)])))
    }
}

fn batch(sensor: &str, n: usize) -> ReadingBatch {
    let reading = Reading { sensor: sensor.into(), value: Some(1.0), timestamp: "t".into(), device: None };
    ReadingBatch::new(vec![reading; n], false)
}

fn service(keys: &[&str]) -> WeirGrpc<Double> {
    WeirGrpc::new(Arc::new(Double::default()), ApiKeys::new(keys.iter().map(|k| k.to_string())))
}

#[tokio::test]
async fn a_write_is_acknowledged_with_its_rejections_and_position() {
    let svc = service(&[]);
    let ack = svc.write(Request::new(batch("speed", 3))).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.rejected_count, ack.position.as_str()), (2, 1, "7"));
    assert_eq!(ack.rejected, vec![RejectedReading { batch: 0, index: 0, reason: "unknown sensor".into() }]);
    let failed = svc.write(Request::new(batch("fail", 4))).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    assert!(failed.message().contains("3 readings were acknowledged before it, through log position 7"), "{failed:?}");
}

#[tokio::test]
async fn every_call_needs_a_key_when_keys_are_configured() {
    let svc = service(&["k1"]);
    assert_eq!(svc.write(Request::new(batch("speed", 1))).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(svc.backend.writes.lock().unwrap().len(), 0, "nothing reaches the backend");
    let mut with_key = Request::new(LatestRequest { device: "d".into(), after: String::new() });
    with_key.metadata_mut().insert("x-api-key", MetadataValue::from_static("k1"));
    assert_eq!(svc.latest(with_key).await.unwrap().into_inner().device, "d");
    let mut basic = Request::new(SqlRequest { sql: "SELECT 1".into() });
    basic.metadata_mut().insert("authorization", MetadataValue::from_static("Basic azE6")); // k1:
    let mut messages = svc.query(basic).await.unwrap().into_inner();
    assert_eq!(messages.next().await.unwrap().unwrap().arrow_ipc, "SELECT 1".as_bytes());
    let mut wrong = Request::new(SubscribeRequest::default());
    wrong.metadata_mut().insert("authorization", MetadataValue::from_static("Basic eDo=")); // x:
    assert_eq!(svc.subscribe(wrong).await.err().unwrap().message(), "invalid api key");
}

#[tokio::test]
async fn backend_errors_pass_through_unchanged() {
    let svc = service(&[]);
    let e = svc.series(Request::new(SeriesRequest::default())).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "unknown sensor"));
    let mut feed = svc.subscribe(Request::new(SubscribeRequest::default())).await.unwrap().into_inner();
    assert_eq!(feed.next().await.unwrap().unwrap().kind, UpdateKind::Ready as i32);
}

/// Issue 17, 8: a stream of 40 batches of 10 000 bad readings made a 54 MB acknowledgement that a standard client
/// (4 MiB) cannot read. The descriptions stop at MAX_ACK_REPORT_BYTES, say so, and every rejection is counted.
#[test]
fn a_streams_acknowledgement_stays_readable_however_many_rejections() {
    let mut ack = IngestAck::default();
    for batch in 0..40 {
        let rejected: Vec<(u32, String)> = (0..10_000).map(|i| (i, format!("unknown sensor 'warp-{i}'"))).collect();
        let done = BatchAck {
            accepted: 10,
            rejected,
            rejected_count: 10_000,
            position: "9".into(),
            failure: None,
            replayed: false,
        };
        add_batch(&mut ack, batch, done);
    }
    assert_eq!((ack.accepted, ack.rejected_count), (400, 400_000));
    assert!(ack.rejected_truncated);
    let bytes = prost::Message::encoded_len(&ack);
    assert!(bytes < 2 << 20, "{bytes} bytes");
}
