//! Weir's HTTP server: the axum application behind the `weir` binary.

pub mod auth;
pub mod commands;
pub mod ingest;
pub mod server;
