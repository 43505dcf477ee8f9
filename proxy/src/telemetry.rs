//! Logs: JSON or text lines through `tracing`, a level that can change at
//! run time (`PUT /log-level`), and the access log: one line per request
//! under the `remora::access` target.

use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub const ACCESS_LOG_TARGET: &str = "remora::access";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogLevel(reload::Handle<EnvFilter, Registry>);

impl LogLevel {
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("invalid log level {directives:?}: {e}"))?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }

    pub fn current(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }
}

/// Installs the global subscriber. Logs go to stderr.
pub fn init(format: LogFormat, directives: &str) -> Result<LogLevel, String> {
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| format!("invalid --log-level {directives:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(false))
            .try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    }
    .map_err(|e| e.to_string())?;
    Ok(LogLevel(handle))
}

/// What the access log says of one request.
pub struct AccessRecord<'a> {
    pub direction: &'static str,
    pub service: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub endpoint: &'a str,
    pub retries: u32,
    pub request_id: &'a str,
    pub error: &'a str,
}

impl AccessRecord<'_> {
    pub fn log(&self) {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            direction = self.direction,
            service = self.service,
            route = self.route,
            method = self.method,
            authority = self.authority,
            path = self.path,
            status = self.status,
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            endpoint = self.endpoint,
            retries = self.retries,
            request_id = self.request_id,
            error = self.error,
            "request"
        );
    }
}
