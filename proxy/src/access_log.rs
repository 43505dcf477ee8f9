//! The access log: one line per request under the `remora::access`
//! target, so that `--log-level remora::access=off` silences it alone.

use std::time::Duration;

pub const ACCESS_LOG_TARGET: &str = "remora::access";

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
