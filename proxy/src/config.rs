//! The command line: every flag also reads `REMORA_<FLAG>` from the
//! environment. Defaults are the named constants below.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use remora_api::HumanDuration;

use crate::telemetry::LogFormat;

pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:4140";
pub const DEFAULT_INBOUND: &str = "0.0.0.0:4143";
pub const DEFAULT_ADMIN: &str = "0.0.0.0:4191";
pub const DEFAULT_APP: &str = "127.0.0.1:8080";
pub const DEFAULT_DRAIN_TIMEOUT: &str = "30s";
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
pub const DEFAULT_SERVICE: &str = "app";
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_THREADS: &str = "1";

#[derive(Clone, Debug, Parser)]
#[command(
    name = "remora-proxy",
    version,
    about = "remora's sidecar proxy: the local app's calls out, and calls in to it"
)]
pub struct Config {
    /// The mesh config to serve from (standalone mode). It is watched and
    /// reloaded on change; a bad edit keeps the last good config serving.
    #[arg(long, env = "REMORA_CONFIG")]
    pub config: PathBuf,

    /// The service this proxy's app belongs to: labels inbound metrics and
    /// picks the `inbound:` policy (rate limit) of that service.
    #[arg(long, env = "REMORA_SERVICE", default_value = DEFAULT_SERVICE)]
    pub service: String,

    /// Where the local app listens; inbound requests are forwarded there.
    #[arg(long, env = "REMORA_APP", default_value = DEFAULT_APP)]
    pub app: SocketAddr,

    /// Listener for the local app's calls to other services.
    #[arg(long, env = "REMORA_OUTBOUND", default_value = DEFAULT_OUTBOUND)]
    pub outbound: SocketAddr,

    /// Listener for calls from other services to the local app.
    #[arg(long, env = "REMORA_INBOUND", default_value = DEFAULT_INBOUND)]
    pub inbound: SocketAddr,

    /// Listener for /metrics, /ready, /live, /config, /log-level, /shutdown.
    #[arg(long, env = "REMORA_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "REMORA_DRAIN_TIMEOUT", default_value = DEFAULT_DRAIN_TIMEOUT)]
    pub drain_timeout: HumanDuration,

    /// How long a client may take to send a request's headers; also how
    /// long an HTTP/1 connection may sit idle between two requests.
    #[arg(long, env = "REMORA_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT)]
    pub header_read_timeout: HumanDuration,

    /// Threads that serve traffic. One is right for most sidecars; raise it
    /// for a busy service on a node with cores to spare.
    #[arg(long, env = "REMORA_THREADS", default_value = DEFAULT_THREADS)]
    pub threads: std::num::NonZeroUsize,

    #[arg(long, env = "REMORA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// A tracing filter: `info`, `remora=debug,hyper=info`, `remora::access=off`.
    #[arg(long, env = "REMORA_LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    pub log_level: String,
}
