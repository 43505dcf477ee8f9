//! Opaque TCP: byte streams passed through as they are, for `protocol:
//! tcp` services and for inbound connections that do not speak HTTP.
//! Both directions are spliced until both have ended, so that either side
//! may half-close and still hear the other's answer. The listener that
//! accepted a stream cuts it when it moves no byte for too long.

pub mod dial;

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use remora_server::metrics::OpenGuard;
use remora_server::serve::OpaqueIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::access_log::StreamLog;
use crate::metrics::{StreamLabels, TcpMetrics};

/// Splices `downstream` (the accepted connection) and `upstream` until
/// both directions have ended, or the listener drops the stream. Bytes
/// read from and written to `downstream` are counted in `metrics`, under
/// `labels`, and in its access-log line, which `log` writes when it ends.
pub async fn splice(
    downstream: OpaqueIo,
    mut upstream: OpaqueIo,
    metrics: &TcpMetrics,
    mut log: StreamLog,
) {
    let labels = StreamLabels {
        direction: log.direction,
        service: log.service.clone(),
        peer: log.peer.clone(),
    };
    let metrics = metrics.stream(labels);
    metrics.total.inc();
    let _open = OpenGuard::new(metrics.open);
    let mut downstream = Counted {
        inner: downstream,
        read: metrics.read,
        written: metrics.written,
        log: &log,
    };
    let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    drop(downstream);
    log.ended = match copied {
        Ok(_) => Cow::Borrowed("closed"),
        Err(e) => Cow::Owned(format!("failed: {e}")),
    };
}

/// The accepted side of a stream, counting its bytes.
struct Counted<'a> {
    inner: OpaqueIo,
    read: Counter,
    written: Counter,
    log: &'a StreamLog,
}

impl AsyncRead for Counted<'_> {
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
            self.log.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.written.inc_by(n as u64);
                self.log.written.fetch_add(n as u64, Ordering::Relaxed);
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
