//! Pooled connections to endpoints. Each endpoint has clients of its own
//! (one per setting of connect timeout, idle timeout and protocol), whose
//! connector dials that endpoint whatever the request's URI names: the URI
//! carries the request's own authority (the service's name), which HTTP/2
//! sends as `:authority`, while the pool is the endpoint's. A meshed
//! endpoint (one with an identity) is reached over mutual TLS, HTTP/2, and
//! must prove that identity.

use std::error::Error as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::Service;

use remora_certs::verify::{ALPN_H2, ALPN_HTTP1};
use remora_certs::SpiffeId;
use remora_server::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW};

use super::tls::MeshConnector;
use super::Body;
use crate::identity::Identity;
use crate::tcp::dial::OpaqueDial;

/// A client of plain HTTP, or of HTTP/2 over mutual TLS to one identity.
#[derive(Clone)]
pub enum HttpClient {
    Plain(Client<Dial, Body>),
    Mesh(Client<MeshConnector, Body>),
}

impl HttpClient {
    pub fn request(&self, req: http::Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            HttpClient::Plain(c) => c.request(req),
            HttpClient::Mesh(c) => c.request(req),
        }
    }

    pub fn is_mesh(&self) -> bool {
        matches!(self, HttpClient::Mesh(_))
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// HTTP/2 with prior knowledge, multiplexed on one connection.
    pub http2: bool,
}

/// A service's settings when its file gives none.
impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: remora_api::DEFAULT_CONNECT_TIMEOUT.get(),
            idle_timeout: remora_api::DEFAULT_IDLE_TIMEOUT.get(),
            http2: false,
        }
    }
}

/// Makes the clients of endpoints, with this proxy's identity for those
/// reached over mutual TLS.
#[derive(Clone, Default)]
pub struct Clients {
    /// This proxy's identity; without one, meshed endpoints are reached
    /// in plaintext like any other.
    identity: Option<Arc<Identity>>,
}

impl Clients {
    pub fn new(identity: Option<Arc<Identity>>) -> Clients {
        Clients { identity }
    }

    /// A client whose every connection goes to `endpoint`: over mutual TLS
    /// to one proving `identity`, when this proxy has an identity of its
    /// own to prove; otherwise in plaintext.
    pub fn to(
        &self,
        settings: ClientSettings,
        endpoint: SocketAddr,
        identity: Option<&SpiffeId>,
    ) -> HttpClient {
        let dial = Dial::new(settings, endpoint);
        match (&self.identity, identity) {
            (Some(own), Some(identity)) => {
                let connector = MeshConnector::new(
                    dial,
                    &own.anchors,
                    own.store.clone(),
                    identity.clone(),
                    ALPN_H2,
                );
                HttpClient::Mesh(builder(settings, true).build(connector))
            }
            _ => HttpClient::Plain(builder(settings, settings.http2).build(dial)),
        }
    }

    /// For requests that upgrade their connection (WebSockets), which
    /// HTTP/2 does not carry: a client of HTTP/1.1 over mutual TLS to a
    /// meshed endpoint, whose connections each carry one upgraded stream
    /// (hyper takes an upgraded connection out of its pool). `None` where
    /// `to` would speak plaintext: its HTTP/1.1 client upgrades already.
    pub fn upgrades(
        &self,
        settings: ClientSettings,
        endpoint: SocketAddr,
        identity: Option<&SpiffeId>,
    ) -> Option<HttpClient> {
        let (own, identity) = (self.identity.as_ref()?, identity?);
        let dial = Dial::new(settings, endpoint);
        let connector = MeshConnector::new(
            dial,
            &own.anchors,
            own.store.clone(),
            identity.clone(),
            ALPN_HTTP1,
        );
        Some(HttpClient::Mesh(builder(settings, false).build(connector)))
    }

    /// Dials `endpoint` for opaque streams: over mutual TLS when `to`
    /// would.
    pub fn opaque(
        &self,
        settings: ClientSettings,
        endpoint: SocketAddr,
        identity: Option<&SpiffeId>,
    ) -> OpaqueDial {
        OpaqueDial::new(
            endpoint,
            settings.connect_timeout,
            self.identity.as_deref(),
            identity,
        )
    }
}

/// Dials one endpoint, whatever the URI it is asked for.
#[derive(Clone)]
pub struct Dial {
    tcp: HttpConnector,
    endpoint: http::Uri,
}

impl Dial {
    fn new(settings: ClientSettings, endpoint: SocketAddr) -> Dial {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(settings.connect_timeout));
        tcp.enforce_http(true);
        let endpoint = http::Uri::builder()
            .scheme("http")
            .authority(super::authority_of(endpoint))
            .path_and_query("/")
            .build()
            .expect("a socket address makes a valid URI");
        Dial { tcp, endpoint }
    }
}

impl Service<http::Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _request_uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(self.endpoint.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

fn builder(s: ClientSettings, http2: bool) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(s.idle_timeout)
        .http2_only(http2)
        .http2_keep_alive_interval(if http2 {
            Some(Duration::from_secs(20))
        } else {
            None
        })
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .http2_initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .set_host(false);
    builder
}

/// How a request that got no response failed.
#[derive(Debug)]
pub enum SendFailure {
    /// No connection could be made; nothing reached the endpoint.
    Connect(String),
    /// The endpoint turned the request away unprocessed: an HTTP/2
    /// `REFUSED_STREAM`, or a graceful `GOAWAY` that did not include it.
    Refused(String),
    /// The connection broke before a response arrived: closed under the
    /// request with no answer (as a server does to a kept-alive connection
    /// it times out just as a request arrives), or reset (an endpoint
    /// killed mid-request), or the stream reset.
    Reset(String),
    /// The caller's request body failed while it was being sent.
    CallerBody(String),
}

impl SendFailure {
    /// What the failure allows: the request had no effect anywhere, or
    /// it went unanswered, or the caller's body failed.
    pub fn resend(&self) -> Resend {
        match self {
            SendFailure::Connect(_) | SendFailure::Refused(_) => Resend::Always,
            SendFailure::Reset(_) => Resend::IfIdempotent,
            SendFailure::CallerBody(_) => Resend::Never,
        }
    }
}

/// Whether a failed send may go again whatever a retry policy says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// It never reached its endpoint, or the endpoint turned it away
    /// unprocessed: any method may go again.
    Always,
    /// Its connection broke before an answer (a kept-alive connection the
    /// server timed out as the request arrived, an endpoint killed
    /// mid-request): an idempotent method may go again, as RFC 9110
    /// §9.2.2 allows after a communication failure.
    IfIdempotent,
    /// It got an answer, or may have been processed.
    Never,
}

impl Resend {
    pub fn allows(self, method: &http::Method) -> bool {
        match self {
            Resend::Always => true,
            Resend::IfIdempotent => method.is_idempotent(),
            Resend::Never => false,
        }
    }
}

pub fn classify(err: &hyper_util::client::legacy::Error) -> SendFailure {
    let mut reason = String::new();
    let mut caller = false;
    let mut timed_out = false;
    let mut refused = false;
    let mut source = err.source();
    while let Some(s) = source {
        reason = s.to_string();
        caller |= s.is::<super::errors::CallerBodyError>();
        timed_out |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        if let Some(e) = s.downcast_ref::<h2::Error>() {
            refused |= e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM);
            // A graceful GOAWAY fails only the streams it did not take.
            refused |= e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = s.source();
    }
    if reason.is_empty() {
        reason = err.to_string();
    }
    if caller {
        SendFailure::CallerBody(reason)
    } else if err.is_connect() {
        // hyper-util reports `connect_timeout` as "deadline has elapsed".
        if timed_out {
            reason = "the connection timed out".to_string();
        }
        SendFailure::Connect(reason)
    } else if refused {
        SendFailure::Refused(reason)
    } else {
        SendFailure::Reset(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_failure_allows_to_resend() {
        let (get, post) = (http::Method::GET, http::Method::POST);
        let reset = SendFailure::Reset(String::new());
        for never_sent in [
            SendFailure::Connect(String::new()),
            SendFailure::Refused(String::new()),
        ] {
            assert!(never_sent.resend().allows(&post), "{never_sent:?}");
        }
        assert!(reset.resend().allows(&get));
        assert!(!reset.resend().allows(&post));
        assert!(!SendFailure::CallerBody(String::new()).resend().allows(&get));
    }
}
