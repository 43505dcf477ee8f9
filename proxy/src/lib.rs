//! remora-proxy: the sidecar's data plane. The binary only parses flags
//! and calls [`app::run`]; the modules are public so benchmarks and tests
//! can drive the pieces directly.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod app_probes;
pub mod config;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod metrics;
pub mod outbound;
pub mod tcp;
pub mod wait_ready;
