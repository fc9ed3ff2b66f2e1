//! The PostgreSQL wire protocol on `--pg-listen` (default `127.0.0.1:5433`): `psql`, Grafana's PostgreSQL data
//! source, psycopg and JDBC tools query Weir's SQL as they would query PostgreSQL.
//!
//! One path for every query: a statement goes through the same [`SqlService`] as `POST /api/v1/sql` — the same
//! read-only checks, limits (`--sql-timeout`, `--sql-max-rows`, `--sql-memory`, `--sql-concurrency`), session and
//! tables — and its result is streamed (`SqlService::stream`), never collected, so a slow client holds back its
//! own query and nothing else. What is PostgreSQL-specific lives here and nowhere else:
//! - [`auth`]: the API key as the password, by SCRAM-SHA-256 without TLS, in cleartext inside TLS (`--tls-cert`);
//! - [`session`]: `SET`, `SHOW`, `BEGIN`/`COMMIT`/`ROLLBACK`, `DISCARD`, `DEALLOCATE`: the statements clients send
//!   before their first query, accepted without touching the engine;
//! - [`handler`]: the simple and extended query protocols (prepared statements with parameters, text and binary
//!   results with PostgreSQL's type OIDs through `arrow-pg`), SQLSTATE codes for every refusal, cancel requests.
//!
//! `pg_catalog`, `information_schema`, `current_schema()`, `version()` … are part of the one SQL session
//! (`weir_sinks::sql`), so HTTP answers them too.

pub mod auth;
pub mod handler;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use pgwire::api::PgWireServerHandlers;
use tokio::net::TcpListener;

use crate::auth::ApiKeys;
use crate::node::sql::SqlService;
use crate::tls::{Protocol, Tls};

/// The PostgreSQL endpoint's settings.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Connections served at once; more are closed at once (the client sees the connection refused).
    pub max_connections: usize,
}

/// Serves the PostgreSQL protocol on `listener` until the task is dropped; with `tls`, only TLS connections (after
/// PostgreSQL's `SSLRequest`, or direct TLS) are let past the startup.
pub async fn serve(listener: TcpListener, sql: Arc<SqlService>, keys: ApiKeys, config: PgConfig, tls: Option<Tls>) {
    let handlers = Arc::new(handler::WeirPg::new(sql, keys));
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a PostgreSQL connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("weir_pg_connections_refused_total").increment(1);
            tracing::warn!(%peer, max = config.max_connections, "PostgreSQL connection refused: --pg-max-connections reached");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let handlers = Factory { startup: Arc::new(handlers.startup(tls.is_some())), pg: handlers.clone() };
        let acceptor = tls.as_ref().map(|tls| tls.acceptor(Protocol::Postgres));
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Binds `addr` (`off`: `None`).
pub async fn bind(addr: &str) -> anyhow::Result<Option<(TcpListener, SocketAddr)>> {
    if addr.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for PostgreSQL clients on {addr} (--pg-listen): {e}"))?;
    let local = listener.local_addr()?;
    Ok(Some((listener, local)))
}

/// The handlers of one connection: its own startup (authentication state), the rest shared.
struct Factory {
    pg: Arc<handler::WeirPg>,
    startup: Arc<auth::Startup>,
}

impl PgWireServerHandlers for Factory {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.pg.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.pg.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.pg.cancel.clone()
    }
}
