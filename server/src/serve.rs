//! The HTTP server of every listener of both binaries: accept within the
//! listener's connection cap, detect TLS or plaintext (where the listener
//! takes TLS), detect HTTP/1.1 or HTTP/2 (prior knowledge) per connection,
//! enforce header limits and every connection's time limits (see
//! [`crate::connections`]), count connections, handshakes and bytes where
//! the listener's owner asks, and drain gracefully.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use remora_certs::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::body::IdleTimeout;
use futures_util::future::BoxFuture;
use remora_certs::verify::ALPN_OPAQUE;

use crate::connections::{Activity, Admitted, InFlight, Limits, Table, Verdict};
use crate::detect::{self, Protocol};
use crate::metrics::OpenGuard;
use crate::smuggling::{AmbiguousFraming, Framing};
use crate::tls::ServerTls;
use crate::{Body, HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW, MAX_HEADER_BYTES};

/// Streams one HTTP/2 client may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub limits: Limits,
    /// Whether connections may write with `writev`. The proxy's do: a large
    /// body goes out beside its frame header without a copy. A server of
    /// many small HTTP/2 responses is better off without: h2 then copies
    /// DATA frames under 1 KiB into its write buffer (from 256 bytes up it
    /// sends each in a write of its own when writes are vectored), so that
    /// the responses that are ready together leave in one write.
    pub vectored_writes: bool,
    /// TLS for connections that start a handshake (the inbound listener
    /// of a proxy with an identity, the control plane's API); `None`
    /// serves plaintext only.
    pub tls: Option<ServerTls>,
    /// The listener's connection metrics, for a listener of proxied
    /// traffic; `None` counts nothing.
    pub metrics: Option<ConnectionMetrics>,
    /// Who takes the connections that are not HTTP (a sidecar's inbound);
    /// `None` serves HTTP only.
    pub opaque: Option<Arc<dyn OpaqueStreams>>,
    /// Whether each connection's original destination is read
    /// (`SO_ORIGINAL_DST`), for connections iptables redirects here.
    pub transparent: bool,
}

/// A connection's stream, in plaintext or TLS, as an opaque stream's
/// owner gets it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type OpaqueIo = Box<dyn Io>;

/// The owner of a listener's opaque streams: connections whose mutual TLS
/// asked for them by ALPN ([`ALPN_OPAQUE`]), and plaintext ones as
/// [`OpaqueStreams::detection`] says.
pub trait OpaqueStreams: Send + Sync + 'static {
    /// What a plaintext connection from `peer` is taken for.
    fn detection(&self, peer: &Peer) -> Detection;
    /// Serves one opaque stream until it ends.
    fn serve(self: Arc<Self>, io: OpaqueIo, peer: Peer) -> BoxFuture<'static, ()>;
}

/// What a plaintext connection is taken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// HTTP, whatever it sends.
    Http,
    /// An opaque stream, whatever it sends; where the listener takes TLS,
    /// a handshake is still looked for, this long.
    Opaque(Duration),
    /// HTTP if its first bytes say so within this long; otherwise (other
    /// bytes, or silence, as a server-speaks-first protocol's client keeps)
    /// an opaque stream.
    Within(Duration),
}

impl std::fmt::Debug for dyn OpaqueStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpaqueStreams").finish_non_exhaustive()
    }
}

/// A listener's connection metrics, resolved once by its owner.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// Connections open and accepted, in plaintext and over TLS.
    pub plain: (Gauge, Counter),
    pub tls: (Gauge, Counter),
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    /// TLS handshakes that succeeded, that failed, and plaintext
    /// connections refused by a TLS-only policy.
    pub handshakes_ok: Counter,
    pub handshakes_failed: Counter,
    pub plaintext_refused: Counter,
    pub closed: ClosedConnections,
}

/// Connections the listener closed by its limits, by why.
#[derive(Clone, Debug, Default)]
pub struct ClosedConnections {
    /// No request head (or a later HTTP/1 head not whole) in time.
    pub header_timeout: Counter,
    pub idle: Counter,
    pub stalled: Counter,
    /// Closed, idle, to make room for a newcomer at the cap.
    pub shed: Counter,
    /// A newcomer closed at once: the cap reached, every connection busy.
    pub refused: Counter,
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

/// Who is on the other end of an accepted connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The identity its certificate names, on a mutual-TLS connection.
    pub identity: Option<SpiffeId>,
    /// Where the connection was going when iptables redirected it here
    /// (transparent mode); `None` for a connection made to the listener.
    pub original_dst: Option<SocketAddr>,
}

/// Serves `listener` until drained, then waits for open connections to
/// finish their requests. `make_service` gets each connection's peer.
/// With `settings.tls`, a connection that starts a TLS handshake is served
/// over mutual TLS; one that does not is served only where the policy
/// allows plaintext, and is closed (and counted) elsewhere.
pub async fn serve<S, F>(
    listener: TcpListener,
    settings: ServerSettings,
    mut drain: Drain,
    make_service: F,
) where
    F: Fn(Peer) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own header timer runs from the end of a response, so it
        // closes a kept-alive connection idle for that long, under the
        // client's next request as likely as not. Heads are timed here
        // instead: the first from accept, a later one from its first part.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let table = Table::new(settings.limits.max_connections);
    let connections = Arc::new(Connections {
        builder,
        make_service,
        settings,
        drain: drain.clone(),
    });
    // Every connection holds a sender: when the last is gone, all have ended.
    let (open_tx, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (stream, addr) = tokio::select! {
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
        // Refused: every connection has a request in flight. Closed at
        // once, so that the client hears it rather than waiting.
        let Some(admitted) = table.admit(Instant::now()) else {
            if let Some(m) = &connections.settings.metrics {
                m.closed.refused.inc();
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(
            connections
                .clone()
                .serve(stream, addr, admitted, open_tx.clone()),
        );
    }
    drop(listener);
    drop(open_tx);
    let _ = all_closed.recv().await;
}

/// Serves `listener`, whose every connection is an opaque stream for
/// `settings.opaque` (which must be set, and take every connection for a
/// stream), until drained.
pub async fn serve_opaque(listener: TcpListener, settings: ServerSettings, drain: Drain) {
    // Never called: no connection of this listener is taken for HTTP.
    let no_http = |_peer| {
        hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(crate::empty()))
        })
    };
    serve(listener, settings, drain, no_http).await
}

/// What every connection of one listener shares.
struct Connections<F> {
    builder: auto::Builder<TokioExecutor>,
    make_service: F,
    settings: ServerSettings,
    drain: Drain,
}

impl<S, F> Connections<F>
where
    F: Fn(Peer) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    /// One accepted connection: TLS or plaintext as the settings say, then
    /// HTTP until it closes, is closed by its limits, or is shed.
    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        admitted: Admitted,
        _open: mpsc::Sender<()>,
    ) {
        let activity = admitted.activity.clone();
        tokio::select! {
            () = self.handshake_and_serve(stream, addr, &activity) => {}
            () = activity.shed() => {
                tracing::debug!(peer = %addr, "connection shed for a newcomer");
                if let Some(m) = &self.settings.metrics {
                    m.closed.shed.inc();
                }
            }
        }
        drop(admitted);
    }

    async fn handshake_and_serve(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        activity: &Arc<Activity>,
    ) {
        let tls = self.settings.tls.as_ref();
        let original_dst = match self.settings.transparent {
            true => crate::transparent::original_dst(&stream),
            false => None,
        };
        let plain = || Peer {
            addr,
            identity: None,
            original_dst,
        };
        // The handshake is part of the time to the first request.
        let first_request = activity.opened() + self.settings.limits.header_read;
        let opaque = self.settings.opaque.as_ref();
        // Where plaintext is refused, only TLS is looked for, for as long
        // as a first request may take.
        let plaintext_allowed = tls.is_none_or(|t| t.plaintext.allows_plaintext());
        let detection = match opaque {
            Some(opaque) if plaintext_allowed => opaque.detection(&plain()),
            _ => Detection::Http,
        };
        let protocol = match (tls, opaque, detection) {
            (None, _, Detection::Http) => return self.http(stream, plain(), activity).await,
            (None, Some(opaque), Detection::Opaque(_)) => {
                return self
                    .opaque(opaque, Box::new(stream), plain(), activity)
                    .await
            }
            (_, Some(_), Detection::Opaque(limit) | Detection::Within(limit)) => {
                detect::detect(&stream, limit).await
            }
            _ => {
                let limit = first_request.saturating_duration_since(Instant::now());
                detect::detect(&stream, limit).await
            }
        };
        let metrics = self.settings.metrics.as_ref();
        match (protocol, tls) {
            (Protocol::Closed, _) => {}
            // Boxed: a TLS connection's state is several times a plaintext
            // one's, and every connection's task would be sized for it.
            (Protocol::Tls, Some(tls)) => {
                Box::pin(self.tls(tls, stream, addr, first_request, activity)).await
            }
            (Protocol::Silent, _) if detection == Detection::Http => {
                if let Some(m) = metrics {
                    m.closed.header_timeout.inc();
                }
            }
            (_, Some(tls)) if !tls.plaintext.allows_plaintext() => {
                if let Some(m) = metrics {
                    m.plaintext_refused.inc();
                }
                tracing::info!(peer = %addr, "plaintext refused: this service's inbound is mtls: strict");
            }
            (protocol, _) => match opaque {
                Some(opaque)
                    if matches!(detection, Detection::Opaque(_))
                        || (detection != Detection::Http && protocol != Protocol::Http) =>
                {
                    self.opaque(opaque, Box::new(stream), plain(), activity)
                        .await
                }
                _ => self.http(stream, plain(), activity).await,
            },
        }
    }

    /// A connection that started a TLS handshake: served over mutual TLS,
    /// as HTTP or, where its ALPN asks and the listener takes them, as an
    /// opaque stream.
    async fn tls(
        &self,
        tls: &ServerTls,
        stream: TcpStream,
        addr: SocketAddr,
        first_request: Instant,
        activity: &Arc<Activity>,
    ) {
        let metrics = self.settings.metrics.as_ref();
        match tokio::time::timeout_at(first_request, tls.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                if let Some(m) = metrics {
                    m.handshakes_ok.inc();
                }
                let session = stream.get_ref().1;
                let identity = remora_certs::verify::peer_identity(session.peer_certificates());
                let opaque = self
                    .settings
                    .opaque
                    .as_ref()
                    .filter(|_| session.alpn_protocol() == Some(ALPN_OPAQUE));
                let peer = Peer {
                    addr,
                    identity,
                    original_dst: None,
                };
                match opaque {
                    Some(opaque) => self.opaque(opaque, Box::new(stream), peer, activity).await,
                    None => self.http(stream, peer, activity).await,
                }
            }
            Ok(Err(e)) => {
                if let Some(m) = metrics {
                    m.handshakes_failed.inc();
                }
                tracing::info!(peer = %addr, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                if let Some(m) = metrics {
                    m.handshakes_failed.inc();
                    m.closed.header_timeout.inc();
                }
                tracing::info!(peer = %addr, limit = ?self.settings.limits.header_read, "TLS handshake not finished in time");
            }
        }
    }

    /// An opaque stream, handed to the listener's owner until it ends or
    /// moves no byte for too long: none within the first-request limit
    /// (as a connection that sends no request), or none for the idle
    /// limit. Between bytes it is idle: at the cap, the stream quiet the
    /// longest is shed like any idle connection, so that silent streams
    /// (which a permissive inbound makes of silent connections) cannot
    /// lock real clients out.
    async fn opaque(
        &self,
        opaque: &Arc<dyn OpaqueStreams>,
        io: OpaqueIo,
        peer: Peer,
        activity: &Arc<Activity>,
    ) {
        let addr = peer.addr;
        let io = Box::new(Streamed {
            inner: io,
            activity: activity.clone(),
        });
        let mut serving = std::pin::pin!(opaque.clone().serve(io, peer));
        let limits = &self.settings.limits;
        let closed = self.settings.metrics.as_ref().map(|m| &m.closed);
        loop {
            match activity.stream_verdict(Instant::now(), limits) {
                Verdict::CheckAt(at) => tokio::select! {
                    () = serving.as_mut() => return,
                    () = tokio::time::sleep_until(at) => {}
                },
                Verdict::Silent => {
                    let limit = limits.header_read.min(limits.idle);
                    tracing::debug!(peer = %addr, ?limit, "stream cut: no byte moved in time");
                    if let Some(closed) = closed {
                        closed.header_timeout.inc();
                    }
                    return;
                }
                Verdict::Idle | Verdict::Stalled => {
                    tracing::debug!(peer = %addr, limit = ?limits.idle, "idle stream cut");
                    if let Some(closed) = closed {
                        closed.idle.inc();
                    }
                    return;
                }
            }
        }
    }

    async fn http<IO>(&self, io: IO, peer: Peer, activity: &Arc<Activity>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = self.settings.metrics.as_ref();
        // Dropped with this future, also when the connection is shed.
        let _open = metrics.map(|m| {
            let (open, total) = if peer.identity.is_some() {
                &m.tls
            } else {
                &m.plain
            };
            total.inc();
            OpenGuard::new(open.clone())
        });
        let (framing, verdicts) = Framing::new();
        let io = TokioIo::new(Counted {
            inner: io,
            bytes: metrics.map(|m| (m.read_bytes.clone(), m.written_bytes.clone())),
            activity: activity.clone(),
            framing,
            vectored: self.settings.vectored_writes,
        });
        let addr = peer.addr;
        let service = (self.make_service)(peer);
        let stream_idle = self.settings.limits.stream_idle;
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if verdicts.next_is_ambiguous() {
                req.extensions_mut().insert(AmbiguousFraming);
            }
            let in_flight = requests.request_started();
            let response = service.call(req);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| Answer {
                    body: IdleTimeout::new(body, stream_idle),
                    _in_flight: in_flight,
                }))
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut drain = self.drain.clone();
        let mut last_progress = Instant::now();
        let mut check = std::pin::pin!(tokio::time::sleep_until(activity.opened()));
        // Set once the connection is told to finish: by a drain, or idle.
        let mut closing_since: Option<Instant> = None;
        let ended = loop {
            tokio::select! {
                ended = conn.as_mut() => break ended,
                () = drain.signaled(), if closing_since.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
                () = activity.head_begun() => check.as_mut().reset(Instant::now()),
                () = &mut check => {
                    let now = Instant::now();
                    if let Some(since) = closing_since {
                        // An idle close that the peer does not finish.
                        if !drain.is_draining() && now >= since + self.settings.limits.header_read {
                            break Ok(());
                        }
                    }
                    match activity.verdict(now, &self.settings.limits, &mut last_progress) {
                        Verdict::CheckAt(at) => check.as_mut().reset(at),
                        Verdict::Idle if closing_since.is_none() => {
                            tracing::debug!(peer = %addr, limit = ?self.settings.limits.idle, "idle connection closed");
                            if let Some(m) = metrics {
                                m.closed.idle.inc();
                            }
                            conn.as_mut().graceful_shutdown();
                            closing_since = Some(now);
                            check.as_mut().reset(now + self.settings.limits.header_read);
                        }
                        Verdict::Idle => check.as_mut().reset(now + self.settings.limits.header_read),
                        Verdict::Silent => {
                            tracing::debug!(peer = %addr, limit = ?self.settings.limits.header_read, "connection cut: no request in time");
                            if let Some(m) = metrics {
                                m.closed.header_timeout.inc();
                            }
                            break Ok(());
                        }
                        Verdict::Stalled => {
                            tracing::debug!(peer = %addr, limit = ?self.settings.limits.stream_idle, "connection cut: its requests made no progress");
                            if let Some(m) = metrics {
                                m.closed.stalled.inc();
                            }
                            break Ok(());
                        }
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
        }
    }
}

pin_project_lite::pin_project! {
    /// A response on its way out: its body cut if it stops making
    /// progress, and its request counted in flight until it ends.
    struct Answer {
        #[pin]
        body: IdleTimeout<Body>,
        _in_flight: InFlight,
    }
}

impl http_body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, crate::BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A stream that counts the bytes it moves (read, written) where its
    /// listener counts them, and follows the framing of the requests it
    /// reads.
    struct Counted<IO> {
        #[pin]
        inner: IO,
        bytes: Option<(Counter, Counter)>,
        activity: Arc<Activity>,
        framing: Framing,
        vectored: bool,
    }
}

impl<IO: AsyncRead> AsyncRead for Counted<IO> {
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
            this.activity.moved();
            if let Some((read, _)) = this.bytes {
                read.inc_by(n as u64);
            }
            this.framing.feed(&buf.filled()[before..]);
            if this.framing.head_in_parts() {
                this.activity.head_in_parts();
            }
        }
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for Counted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &result {
            if *n > 0 {
                this.activity.moved();
            }
        }
        if let (Poll::Ready(Ok(n)), Some((_, written))) = (&result, this.bytes) {
            written.inc_by(*n as u64);
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
        if let Poll::Ready(Ok(n)) = &result {
            if *n > 0 {
                this.activity.moved();
            }
        }
        if let (Poll::Ready(Ok(n)), Some((_, written))) = (&result, this.bytes) {
            written.inc_by(*n as u64);
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

/// An opaque stream's connection, telling its activity when bytes move
/// either way: its watchdog and the listener's cap read its idleness.
struct Streamed {
    inner: OpaqueIo,
    activity: Arc<Activity>,
}

impl AsyncRead for Streamed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.stream_moved();
        }
        result
    }
}

impl AsyncWrite for Streamed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.stream_moved();
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
