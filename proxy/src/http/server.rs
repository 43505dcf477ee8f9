//! The HTTP server of both directions: accept, detect HTTP/1.1 or HTTP/2
//! (prior knowledge) per connection, enforce header limits and the header
//! read timeout, count connections and bytes, and drain gracefully.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::smuggling::{AmbiguousFraming, Framing};
use super::Body;
use crate::metrics::{BytesLabels, ConnectionLabels, Direction, TransportMetrics};

/// Headers of one request may take this much in all (→ 431 past it).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 client may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub direction: Direction,
    pub header_read_timeout: Duration,
    /// Whether connections may write with `writev`. The proxy's do: a large
    /// body goes out beside its frame header without a copy. A server of
    /// many small HTTP/2 responses is better off without: h2 then copies
    /// DATA frames under 1 KiB into its write buffer (from 256 bytes up it
    /// sends each in a write of its own when writes are vectored), so that
    /// the responses that are ready together leave in one write.
    pub vectored_writes: bool,
}

/// Tells servers to stop accepting and finish what they have.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

pub struct DrainTrigger(watch::Sender<bool>);

pub fn drain_channel() -> (DrainTrigger, Drain) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger(tx), Drain(rx))
}

impl DrainTrigger {
    pub fn drain(&self) {
        let _ = self.0.send(true);
    }
}

impl Drain {
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

/// Serves `listener` until drained, then waits for open connections to
/// finish their requests. `make_service` gets each connection's peer.
pub async fn serve<S, F>(
    listener: TcpListener,
    settings: ServerSettings,
    transport: TransportMetrics,
    mut drain: Drain,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let graceful = GracefulShutdown::new();
    let labels = ConnectionLabels {
        direction: settings.direction,
        tls: false,
    };
    let open = transport.open.get_or_create_owned(&labels);
    let total = transport.total.get_or_create_owned(&labels);
    let read = transport.bytes.get_or_create_owned(&BytesLabels {
        direction: settings.direction,
        rw: "read",
    });
    let written = transport.bytes.get_or_create_owned(&BytesLabels {
        direction: settings.direction,
        rw: "write",
    });
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.signaled() => break,
        };
        let _ = stream.set_nodelay(true);
        total.inc();
        open.inc();
        let (framing, verdicts) = Framing::new();
        let io = TokioIo::new(Counted {
            inner: stream,
            read: read.clone(),
            written: written.clone(),
            framing,
            vectored: settings.vectored_writes,
        });
        let service = make_service(peer);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if verdicts.next_is_ambiguous() {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            service.call(req)
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        let conn = graceful.watch(conn.into_owned());
        let open = open.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            open.dec();
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

pin_project_lite::pin_project! {
    /// A stream that counts the bytes it moves and follows the framing of
    /// the requests it reads.
    struct Counted {
        #[pin]
        inner: TcpStream,
        read: Counter,
        written: Counter,
        framing: Framing,
        vectored: bool,
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.inc_by(n as u64);
            this.framing.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = result {
            this.written.inc_by(n as u64);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            this.written.inc_by(n as u64);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored && self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
