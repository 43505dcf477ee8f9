//! The access log: one line per request, and one per opaque stream, under
//! the `remora::access` target, so that `--log-level remora::access=off`
//! silences it alone.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Direction;

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

/// The access-log line of one opaque stream, written when it is dropped:
/// when the stream ends, or when its listener cuts it (idle, silent, shed
/// for a newcomer, or drained), which drops it unfinished.
pub struct StreamLog {
    pub direction: Direction,
    pub service: Arc<str>,
    pub peer: Arc<str>,
    /// The accepted side's address.
    pub client: SocketAddr,
    /// Where the stream was carried: the endpoint, or the app.
    pub endpoint: Arc<str>,
    opened: Instant,
    /// Bytes read from, and written to, the accepted side.
    pub read: AtomicU64,
    pub written: AtomicU64,
    /// How it ended; `cut` until the splice says otherwise.
    pub ended: Cow<'static, str>,
}

impl StreamLog {
    pub fn new(
        direction: Direction,
        service: Arc<str>,
        peer: Arc<str>,
        client: SocketAddr,
        endpoint: Arc<str>,
    ) -> StreamLog {
        StreamLog {
            direction,
            service,
            peer,
            client,
            endpoint,
            opened: Instant::now(),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            ended: Cow::Borrowed("cut"),
        }
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            direction = self.direction.as_str(),
            service = &*self.service,
            peer = &*self.peer,
            client = %self.client,
            endpoint = &*self.endpoint,
            bytes_read = self.read.load(Ordering::Relaxed),
            bytes_written = self.written.load(Ordering::Relaxed),
            duration_ms = self.opened.elapsed().as_secs_f64() * 1000.0,
            ended = &*self.ended,
            "stream"
        );
    }
}
