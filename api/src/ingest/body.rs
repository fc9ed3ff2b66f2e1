//! Reading an HTTP request body as the ingest service's [`ChunkSource`], gunzipping it when it says so, and enforcing
//! the body size limit on the bytes Weir actually decodes (so a small gzip bomb cannot get past it).

use axum::body::{Body, BodyDataStream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::node::error::{ErrorKind, ServiceError};
use crate::node::ingest::ChunkSource;

/// The body's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
}

/// Why the body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body failed: {0}")]
    Read(String),
    #[error("the gzip body is corrupt or truncated: {0}")]
    Gzip(String),
    #[error("the request body is larger than the limit of {limit} bytes (--max-body-bytes)")]
    TooLarge { limit: u64 },
}

type GzipReader = async_compression::tokio::bufread::GzipDecoder<
    tokio_util::io::StreamReader<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>, Bytes>,
>;

/// A body being read.
pub struct BodySource {
    inner: Inner,
    seen: u64,
    limit: u64,
}

enum Inner {
    Plain(BodyDataStream),
    Gzip { reader: Box<GzipReader>, buf: Vec<u8> },
}

/// Marks I/O errors that came from the HTTP body rather than from gzip.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl BodySource {
    pub fn new(body: Body, coding: Coding, limit: u64) -> Self {
        let stream = body.into_data_stream();
        let inner = match coding {
            Coding::Identity => Inner::Plain(stream),
            Coding::Gzip => {
                let bytes = stream.map(|r| r.map_err(|e| std::io::Error::other(TransportError(e.to_string())))).boxed();
                let mut reader =
                    async_compression::tokio::bufread::GzipDecoder::new(tokio_util::io::StreamReader::new(bytes));
                reader.multiple_members(true);
                Inner::Gzip { reader: Box::new(reader), buf: vec![0; 64 << 10] }
            }
        };
        BodySource { inner, seen: 0, limit }
    }

    /// Reads and discards what is left of the body, at most `max_bytes` within `max_time`, so that a client still
    /// sending after an early answer (413, 408) reads that answer rather than a reset connection.
    pub async fn drain(&mut self, max_bytes: u64, max_time: std::time::Duration) {
        self.limit = u64::MAX;
        let start = self.seen;
        let _ = tokio::time::timeout(max_time, async {
            while self.seen - start < max_bytes {
                if !matches!(self.next_chunk().await, Ok(Some(_))) {
                    break;
                }
            }
        })
        .await;
    }

    /// Body bytes read so far, after gzip decoding.
    pub fn bytes_read(&self) -> u64 {
        self.seen
    }

    /// The next chunk of decoded body bytes; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        let chunk = match &mut self.inner {
            Inner::Plain(stream) => match stream.next().await {
                None => None,
                Some(Ok(bytes)) => Some(bytes),
                Some(Err(e)) => return Err(BodyError::Read(e.to_string())),
            },
            Inner::Gzip { reader, buf } => match reader.read(buf).await {
                Ok(0) => None,
                Ok(n) => Some(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => {
                    return Err(match e.get_ref().and_then(|inner| inner.downcast_ref::<TransportError>()) {
                        Some(t) => BodyError::Read(t.0.clone()),
                        None => BodyError::Gzip(e.to_string()),
                    });
                }
            },
        };
        if let Some(c) = &chunk {
            self.seen += c.len() as u64;
            if self.seen > self.limit {
                return Err(BodyError::TooLarge { limit: self.limit });
            }
        }
        Ok(chunk)
    }
}

impl From<BodyError> for ServiceError {
    fn from(e: BodyError) -> Self {
        let kind = match e {
            BodyError::TooLarge { .. } => ErrorKind::TooLarge,
            BodyError::Read(_) | BodyError::Gzip(_) => ErrorKind::InvalidArgument,
        };
        ServiceError::new(kind, e.to_string())
    }
}

impl ChunkSource for BodySource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ServiceError> {
        BodySource::next_chunk(self).await.map_err(ServiceError::from)
    }

    fn bytes_read(&self) -> u64 {
        self.seen
    }
}
