//! The gRPC port's connections, bounded: at most `max` at once, and each closed once it has sent nothing for
//! `idle`.
//!
//! Why: tonic serves whatever connects for as long as it stays. 150 silent TCP connections (no credentials needed)
//! used every file descriptor of a process with `ulimit -n 100`, and `/healthz` stopped answering for as long as
//! they stayed. Here a connection beyond the limit is closed at once (it never waits in the backlog), and a
//! connection that sends no byte — not even the HTTP/2 preface, or the answer to the server's keepalive pings —
//! for `idle` is closed. A live client answers the pings (every `idle / 3`), so a quiet subscription stays open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::listen::{Port, accept_within};
use crate::tls::{self, MaybeTls, Protocol, Tls};

/// Limits of the gRPC port's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as they arrive.
    pub max: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle: Duration,
}

/// Accepted connections within `limits`, as tonic's incoming stream. With `tls`, each after its handshake; the
/// handshakes run side by side (one client stalling its handshake delays no other), each within the idle timeout.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<Tls>,
) -> impl futures_util::Stream<Item = io::Result<MaybeTls<Guarded>>> + Send {
    let permits = Arc::new(Semaphore::new(limits.max.max(1)));
    // Every connection holds a permit, so at most `max` wait here.
    let (ready, connections) = tokio::sync::mpsc::channel(limits.max.max(1));
    tokio::spawn(async move {
        loop {
            let (stream, peer, permit) = tokio::select! {
                accepted = accept_within(&listener, &permits, Port::Grpc) => accepted,
                () = ready.closed() => return,
            };
            let deadline = Box::pin(tokio::time::sleep(limits.idle));
            let guarded = Guarded { stream, _permit: permit, idle: limits.idle, deadline };
            let (ready, tls) = (ready.clone(), tls.clone());
            tokio::spawn(async move {
                match tls::wrap(tls.as_ref(), Protocol::Grpc, guarded, limits.idle).await {
                    Ok(connection) => {
                        let _ = ready.send(Ok(connection)).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(connections)
}

/// One accepted connection: it holds a place under the limit until dropped, and reading from it fails once it has
/// sent nothing for `idle`.
pub struct Guarded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the gRPC connection sent nothing for the idle timeout; closed",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl Connected for MaybeTls<Guarded> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner().connect_info()
    }
}
