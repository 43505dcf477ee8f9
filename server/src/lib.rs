//! remora-server: what both binaries run, so that neither links the other.
//! The HTTP server loop with its drain and TLS acceptor, the body type,
//! signals, logs, the metrics registry's encoding, the `mesh.yaml`
//! watcher, and the one backoff of the workspace.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backoff;
pub mod body;
pub mod logs;
pub mod mesh_file;
pub mod metrics;
pub mod serve;
pub mod signals;
pub mod smuggling;
pub mod tls;

pub use backoff::Backoff;
pub use body::{boxed, empty, full, Body, BoxError};

/// Headers of one request may take this much in all (→ 431 past it); the
/// HTTP/1 framing follower reads heads up to the same limit.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
