//! remora-server: what both binaries run, so that neither links the other.
//! The HTTP server loop with its drain and TLS acceptor, the body type,
//! signals, logs, the metrics registry's encoding, the `mesh.yaml`
//! watcher, and the one backoff of the workspace.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backoff;
pub mod body;
pub mod connections;
pub mod detect;
pub mod logs;
pub mod mesh_file;
pub mod metrics;
pub mod serve;
pub mod signals;
pub mod smuggling;
pub mod tls;
pub mod transparent;

pub use backoff::Backoff;
pub use body::{boxed, empty, full, Body, BoxError};

/// How much of one HTTP/2 stream's data a connection of either binary
/// takes in before the reader consumes it, both ways: a stream whose
/// reader stalls holds at most this much.
pub const HTTP2_STREAM_WINDOW: u32 = 256 * 1024;
/// A connection's window is as large as HTTP/2 allows, so that it never
/// binds before the streams' own: one stalled stream (a client that never
/// reads, an app that never reads its upload) stops only itself, never
/// the other streams sharing its connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Headers of one request may take this much in all (→ 431 past it); the
/// HTTP/1 framing follower reads heads up to the same limit.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
