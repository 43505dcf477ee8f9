//! Opaque TCP: byte streams passed through as they are, for `protocol:
//! tcp` services and for inbound connections that do not speak HTTP.
//! Both directions are spliced until both have ended, so that either side
//! may half-close and still hear the other's answer. A stream that moves
//! no byte either way for the idle timeout is cut, and one that never
//! moves a byte is cut sooner, like a connection that sends no request:
//! silent connections cost the app no more than they cost the proxy.

pub mod dial;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use remora_server::serve::OpaqueIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::StreamMetrics;

/// How a stream ended.
#[derive(Debug)]
enum Ended {
    /// Both sides closed their half.
    Closed {
        read: u64,
        written: u64,
    },
    /// Nothing moved for the idle timeout.
    Idle,
    /// Nothing ever moved, for the first-byte limit.
    Silent,
    Failed(io::Error),
}

/// How long a stream may go without moving a byte.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// From its opening, until a first byte moves either way.
    pub first_byte: Duration,
    /// From the last byte moved.
    pub idle: Duration,
}

/// Splices `downstream` (the accepted connection) and `upstream` until
/// both directions have ended, or nothing moves within `limits`. Bytes
/// read from and written to `downstream` are counted in `metrics`.
pub async fn splice(
    downstream: OpaqueIo,
    upstream: OpaqueIo,
    limits: StreamLimits,
    metrics: StreamMetrics,
) {
    let started = Instant::now();
    match spliced(downstream, upstream, limits, &metrics).await {
        Ended::Closed { read, written } => {
            tracing::debug!(read, written, lasted = ?started.elapsed(), "stream closed")
        }
        Ended::Idle => tracing::debug!(limit = ?limits.idle, "idle stream cut"),
        Ended::Silent => tracing::debug!(limit = ?limits.first_byte, "silent stream cut"),
        Ended::Failed(e) => tracing::debug!(error = %e, "stream failed"),
    }
}

async fn spliced(
    downstream: OpaqueIo,
    mut upstream: OpaqueIo,
    limits: StreamLimits,
    metrics: &StreamMetrics,
) -> Ended {
    metrics.total.inc();
    metrics.open.inc();
    let opened = Instant::now();
    let last_moved = Arc::new(AtomicU64::new(NOTHING_MOVED));
    let mut downstream = Counted {
        inner: downstream,
        read: metrics.read.clone(),
        written: metrics.written.clone(),
        opened,
        last_moved: last_moved.clone(),
    };
    let ended = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => match copied {
            Ok((read, written)) => Ended::Closed { read, written },
            Err(e) => Ended::Failed(e),
        },
        silent = quiet_for(limits, opened, &last_moved) => match silent {
            true => {
                metrics.silent_closed.inc();
                Ended::Silent
            }
            false => {
                metrics.idle_closed.inc();
                Ended::Idle
            }
        }
    };
    metrics.open.dec();
    ended
}

/// `last_moved` before any byte has.
const NOTHING_MOVED: u64 = u64::MAX;

/// Resolves once nothing has moved within `limits`: whether nothing
/// ever did.
async fn quiet_for(limits: StreamLimits, opened: Instant, last_moved: &AtomicU64) -> bool {
    loop {
        let deadline = match last_moved.load(Ordering::Relaxed) {
            // Never later than an idle stream's: woken in time for that.
            NOTHING_MOVED => opened + limits.first_byte.min(limits.idle),
            ms => opened + Duration::from_millis(ms) + limits.idle,
        };
        if Instant::now() >= deadline {
            return last_moved.load(Ordering::Relaxed) == NOTHING_MOVED;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// The accepted side of a stream: counts its bytes and when they last
/// moved (in milliseconds since it opened; every byte spliced passes here
/// one way or the other).
struct Counted {
    inner: OpaqueIo,
    read: Counter,
    written: Counter,
    opened: Instant,
    last_moved: Arc<AtomicU64>,
}

impl Counted {
    fn moved(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NOTHING_MOVED - 1);
        self.last_moved.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
            self.moved();
        }
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.written.inc_by(n as u64);
                self.moved();
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
