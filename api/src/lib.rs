//! Weir's HTTP server: the axum application behind the `weir` binary.

// Guards return the `Response` to send as their `Err`; boxing every early answer would buy nothing.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod commands;
pub mod dashboard;
pub mod flight;
pub mod grpc;
pub mod health;
pub mod ingest;
pub mod listen;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod pg;
pub mod position;
pub mod push;
pub mod rejected;
pub mod requests;
pub mod server;
pub mod sql;
pub mod stats;
pub mod tls;
