//! The inbound direction: calls from other services to the local app.
//! accept → TLS or plaintext (the server; plaintext only where the service
//! is `permissive`) → check the request → who may call (`allow`) → the
//! rate limit → say who called (`remora-peer-identity`, `x-forwarded-for`)
//! → forward to the app over a pooled connection.

mod policy;
mod tcp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use remora_api::{InboundPolicy, Protocol, SpiffeId};
use remora_certs::verify::{ClientAuth, ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE};
use remora_server::serve::{self as server, Drain, Peer, ServerSettings};
use remora_server::tls::{PlaintextPolicy, ServerTls};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::access_log::AccessRecord;
use crate::http::client::{classify, ClientSettings, Clients, HttpClient, Resend, SendFailure};
use crate::http::deadline::Deadline;
use crate::http::errors::ProxyError;
use crate::http::version::{attempt_head, ORIG_PROTO, ORIG_PROTO_HTTP1};
use crate::http::{boxed, headers, Body};
use crate::identity::Identity;
use crate::metrics::{
    Direction, HttpMetrics, PeerLabels, RouteLabels, TcpMetrics, TransportMetrics,
};

use self::policy::Policy;

/// The route label of inbound requests: the app has no routes of its own.
const INBOUND_ROUTE: &str = "inbound";
/// Tells the app who called, as the caller's certificate says; a caller
/// cannot send it itself.
pub const PEER_IDENTITY: &str = "remora-peer-identity";
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// As for any endpoint: below the 5s keep-alive of Node.js and Apache, so
/// the pool lets go of a connection before the app closes it.
const APP_IDLE_TIMEOUT: Duration = remora_api::DEFAULT_IDLE_TIMEOUT.get();

/// The inbound direction, top to bottom: accept on `listener` → TLS or
/// plaintext, told by the first byte (mutual TLS with this proxy's
/// identity when it has one, the caller's chain checked; plaintext only
/// where the service's `mtls` is `permissive`) → HTTP/1.1 or HTTP/2 → per
/// connection, who called ([`Inbound::caller`]) → per request,
/// [`Inbound::handle`]: check the request, authorize (`allow`),
/// rate-limit, say who called, forward to the app.
pub fn serve(
    inbound: Arc<Inbound>,
    listener: TcpListener,
    settings: ServerSettings,
    identity: Option<&Identity>,
    transport: &TransportMetrics,
    drain: Drain,
) -> Result<JoinHandle<()>, remora_certs::Error> {
    let tls = match identity {
        Some(identity) => Some(ServerTls::new(
            &identity.anchors,
            identity.store.clone(),
            ClientAuth::Required,
            &[ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE],
            inbound.clone(),
        )?),
        None => None,
    };
    let settings = ServerSettings {
        metrics: Some(transport.listener(Direction::Inbound, tls.is_some())),
        tls,
        opaque: Some(inbound.clone()),
        ..settings
    };
    Ok(tokio::spawn(server::serve(
        listener,
        settings,
        drain,
        move |peer| {
            let inbound = inbound.clone();
            let caller = Arc::new(inbound.caller(peer));
            service_fn(move |req| {
                let (inbound, caller) = (inbound.clone(), caller.clone());
                async move { Ok::<_, Infallible>(inbound.handle(req, &caller).await) }
            })
        },
    )))
}

pub struct Inbound {
    policy: ArcSwap<Policy>,
    app_authority: http::uri::Authority,
    app_label: Arc<str>,
    http1: HttpClient,
    http2: HttpClient,
    labels: RouteLabels,
    metrics: HttpMetrics,
    caller_body_idle: Duration,
    unmeshed: Arc<str>,
    streams: tcp::Streams,
}

/// How the inbound treats connections that may not be HTTP.
pub struct StreamSettings {
    /// How long a plaintext connection's first bytes may take to show
    /// that it speaks HTTP; past it, it is an opaque stream.
    pub detect_timeout: Duration,
    /// The app's ports whose connections are opaque streams, never HTTP.
    pub opaque_ports: Vec<u16>,
    pub metrics: TcpMetrics,
}

impl Inbound {
    /// `caller_body_idle`: how long a caller's request body may go without
    /// progress.
    pub fn new(
        app: SocketAddr,
        service: &str,
        clients: &Clients,
        metrics: HttpMetrics,
        caller_body_idle: Duration,
        streams: StreamSettings,
    ) -> Self {
        let settings = |http2| ClientSettings {
            connect_timeout: APP_CONNECT_TIMEOUT,
            idle_timeout: APP_IDLE_TIMEOUT,
            http2,
        };
        Self {
            policy: ArcSwap::from_pointee(Policy::default()),
            streams: tcp::Streams::new(streams, app),
            app_authority: crate::http::authority_of(app),
            app_label: app.to_string().into(),
            http1: clients.to(settings(false), app, None),
            http2: clients.to(settings(true), app, None),
            labels: RouteLabels::new(Direction::Inbound, service, INBOUND_ROUTE),
            metrics,
            caller_body_idle,
            unmeshed: "unmeshed".into(),
        }
    }

    /// Applies the service's inbound policy and protocol from a new mesh
    /// view.
    pub fn update(&self, policy: Option<&InboundPolicy>, protocol: Protocol, trust_domain: &str) {
        let next = Policy::of(policy, trust_domain, &self.policy.load());
        self.policy.store(Arc::new(next));
        self.streams.set_protocol(protocol);
    }

    /// What the requests of one connection from `peer` carry: made once
    /// per connection, so no request formats its labels.
    pub fn caller(&self, peer: Peer) -> Caller {
        let label = peer
            .identity
            .as_ref()
            .map_or_else(|| self.unmeshed.clone(), |id| Arc::from(id.as_str()));
        let header = peer
            .identity
            .as_ref()
            .and_then(|id| HeaderValue::from_str(id.as_str()).ok());
        Caller {
            addr: peer.addr,
            identity: peer.identity,
            label,
            header,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, caller: &Caller) -> Response<Body> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        // A clone of the URI shares its bytes; the log reads the path from it.
        let uri = parts.uri.clone();
        let (authority, two_authorities) =
            match crate::http::request_authority(&parts.uri, parts.version, &parts.headers) {
                Ok(authority) => (authority, None),
                Err(e) => (None, Some(e)),
            };
        let request_id = headers::ensure_request_id(&mut parts.headers);
        headers::ensure_traceparent(&mut parts.headers);

        let deadline = Deadline::of_request(&parts.headers, started);
        let smuggled = headers::is_smuggling_attempt(&parts.headers, &parts.extensions);
        let policy = self.policy.load();
        let (response, error) = if smuggled {
            let e = ProxyError::BadRequest("Content-Length and Transfer-Encoding together");
            (e.into_response(), Some("bad-request"))
        } else if let Some(e) = two_authorities {
            (e.into_response(), Some("bad-request"))
        } else if let Err(denied) = self.authorize(&policy, caller) {
            let e = ProxyError::Forbidden {
                caller: denied.caller,
                service: self.labels.service.to_string(),
                rule: denied.rule,
            };
            (e.into_response(), Some("forbidden"))
        } else if deadline.is_some_and(|d| d.has_passed(Instant::now())) {
            // The caller has given up already: the app is not called.
            self.metrics.timeouts.get_or_create(&self.labels).inc();
            let e = ProxyError::DeadlineExceeded;
            (e.into_response(), Some("deadline-exceeded"))
        } else if !policy.admit() {
            self.metrics.rate_limited.get_or_create(&self.labels).inc();
            let e = ProxyError::RateLimited(self.labels.service.to_string());
            (e.into_response(), Some("rate-limited"))
        } else {
            // Only this proxy says who called.
            parts.headers.remove(PEER_IDENTITY);
            if let Some(identity) = &caller.header {
                parts.headers.insert(PEER_IDENTITY, identity.clone());
            }
            let authority = authority.as_ref().unwrap_or(&self.app_authority);
            match deadline {
                Some(d) => {
                    d.forward(&mut parts.headers, Instant::now());
                    let forward = self.forward(parts, authority, body, caller.addr);
                    match tokio::time::timeout_at(d.0.into(), forward).await {
                        Ok(answered) => answered,
                        Err(_) => {
                            self.metrics.timeouts.get_or_create(&self.labels).inc();
                            let e = ProxyError::Timeout(d.0 - started);
                            (e.into_response(), Some("timeout"))
                        }
                    }
                }
                None => self.forward(parts, authority, body, caller.addr).await,
            }
        };

        let status = response.status().as_u16();
        self.metrics.record_request(
            &self.labels,
            status,
            &caller.label,
            caller.identity.is_some(),
            started.elapsed(),
        );
        AccessRecord {
            direction: "inbound",
            service: &self.labels.service,
            route: INBOUND_ROUTE,
            method: method.as_str(),
            authority: authority.as_ref().map_or("", |a| a.as_str()),
            path: uri.path(),
            status,
            duration: started.elapsed(),
            endpoint: &self.app_label,
            retries: 0,
            request_id: request_id.to_str().unwrap_or(""),
            error: error.unwrap_or(""),
        }
        .log();
        response
    }

    /// Whether `caller` may call, as `policy`'s `allow` says; a refusal is
    /// counted.
    fn authorize(&self, policy: &Policy, caller: &Caller) -> Result<(), policy::Denied> {
        policy.authorize(caller.identity.as_ref()).inspect_err(|_| {
            self.metrics
                .authz_denied
                .get_or_create(&PeerLabels {
                    route: self.labels.clone(),
                    peer: caller.label.clone(),
                })
                .inc();
        })
    }

    /// Forwards a request for `authority` (as the caller named the
    /// service) to the app.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        authority: &http::uri::Authority,
        body: Incoming,
        peer: SocketAddr,
    ) -> (Response<Body>, Option<&'static str>) {
        let downstream_upgrade = crate::http::upgrade::forward_request_head(&mut parts);
        headers::append_forwarded_for(&mut parts.headers, peer.ip());
        // A request the calling sidecar carried as HTTP/2 reaches the app
        // in the version the calling app spoke.
        let carried_http1 = parts
            .headers
            .remove(ORIG_PROTO)
            .is_some_and(|v| v == ORIG_PROTO_HTTP1);
        let http2 = parts.version == Version::HTTP_2 && !carried_http1;
        let headers = std::mem::take(&mut parts.headers);
        let head = attempt_head(&parts.method, &parts.uri, authority, headers, http2);
        let client = if http2 { &self.http2 } else { &self.http1 };
        let sent = if body.is_end_stream() {
            // A request with no body can go again as it is: an idempotent
            // one does when its connection broke unanswered (the app's
            // keep-alive timing out as the request arrived, say).
            // The app is the only endpoint, so a refused one is not retried.
            let again = head.method.is_idempotent().then(|| head.clone());
            let first = client.request(Request::from_parts(head, crate::http::empty()));
            match (first.await, again) {
                (Err(e), Some(head)) if classify(&e).resend() == Resend::IfIdempotent => {
                    let again = Request::from_parts(head, crate::http::empty());
                    client.request(again).await
                }
                (first, _) => first,
            }
        } else {
            let body = crate::http::from_caller(body, self.caller_body_idle);
            client.request(Request::from_parts(head, body)).await
        };
        match sent {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                crate::http::upgrade::forward_response_head(&mut parts, downstream_upgrade);
                (Response::from_parts(parts, boxed(body)), None)
            }
            Err(e) => {
                let reason = match classify(&e) {
                    SendFailure::Connect(r) | SendFailure::Refused(r) | SendFailure::Reset(r) => r,
                    SendFailure::CallerBody(r) => {
                        return (
                            ProxyError::RequestBody(r).into_response(),
                            Some("bad-request"),
                        )
                    }
                };
                let e = ProxyError::AppUnreachable {
                    endpoint: self.app_label.to_string(),
                    reason,
                };
                (e.into_response(), Some("app-unreachable"))
            }
        }
    }
}

/// One connection's caller, as its requests need it.
pub struct Caller {
    pub addr: SocketAddr,
    /// The identity its certificate names; `None` on plaintext.
    pub identity: Option<SpiffeId>,
    /// The `peer` label of its metrics.
    label: Arc<str>,
    /// Its `remora-peer-identity` header.
    header: Option<HeaderValue>,
}

impl PlaintextPolicy for Inbound {
    fn allows_plaintext(&self) -> bool {
        self.policy.load().allows_plaintext()
    }
}
