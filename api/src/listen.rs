//! Serving the router over HTTP/1.1 with the limits `axum::serve` does not set: a deadline for a request's headers
//! (a client that opens connections and trickles headers — slow-loris — would otherwise hold each one forever), a
//! limit on connections open at once (each holds a file descriptor and a task), and a bounded graceful shutdown
//! (stop accepting, let requests in flight finish, but not forever). [`accept_within`] is the accept loop both ports
//! use.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::tls::{self, Protocol, Tls};

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A client must send a request's complete headers within this time, or the connection is closed.
    pub header_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// After the shutdown signal, how long requests in flight may take before their connections are closed.
    pub shutdown_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains connections within the shutdown timeout. With
/// `tls`, every connection is TLS (its handshake bounded by the header timeout); there is no plain fallback.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (stream, peer, permit) = tokio::select! {
            accepted = accept_within(&listener, &permits, Port::Http) => accepted,
            () = &mut shutdown => break,
        };
        let (builder, app, tls, watcher) = (builder.clone(), app.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tls::wrap(tls.as_ref(), Protocol::Http, stream, limits.header_timeout).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_timeout) => tracing::warn!(
            timeout = ?limits.shutdown_timeout,
            "requests still in flight after --shutdown-timeout; closing them unacknowledged"
        ),
    }
}

/// Which port a connection came to (for logs and metrics).
#[derive(Debug, Clone, Copy)]
pub enum Port {
    Http,
    Grpc,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Http => "http",
            Port::Grpc => "grpc",
        }
    }
}

/// The next connection that fits under `permits` (one permit each, held until the connection ends). A connection
/// beyond the limit is closed at once (counted in `weir_connections_refused_total{port}`), so it never waits in the
/// backlog holding a client; a failed accept (out of file descriptors) waits a little instead of spinning.
pub async fn accept_within(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    port: Port,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(port = port.name(), error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("weir_connections_refused_total", "port" => port.name()).increment(1);
            tracing::warn!(port = port.name(), %peer, "connection refused: the connection limit is reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        return (stream, peer, permit);
    }
}
