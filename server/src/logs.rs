//! Logs: JSON or text lines on stderr through `tracing`, with a level
//! that can change at run time (the proxy's `PUT /log-level`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

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
        self.0
            .reload(filter(directives)?)
            .map_err(|e| e.to_string())
    }

    pub fn current(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }
}

/// Checks a log filter (`info`, `remora=debug,hyper=info`) as the
/// binaries will read it, for those who write one down for them.
pub fn check_directives(directives: &str) -> Result<(), String> {
    filter(directives).map(drop)
}

fn filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(directives).map_err(|e| format!("invalid log level {directives:?}: {e}"))
}

/// Installs the global subscriber. Logs go to stderr.
pub fn init(format: LogFormat, directives: &str) -> Result<LogLevel, String> {
    let (filter, handle) = reload::Layer::new(filter(directives)?);
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
