//! The outbound direction: the local app's calls to other services.
//! accept → detect → target service → route → fault → split → balance →
//! try (with per-try timeout) → retry → respond, all under the route's
//! timeout. `Outbound::handle` reads in that order.

pub mod balance;
pub mod breaker;
mod gauges;
pub mod health;
pub mod routes;
pub mod snapshot;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use self::balance::Endpoint;
use self::snapshot::{Backend, Route, Snapshot};
use crate::access_log::AccessRecord;
use crate::discovery::{OnDemand, Presence};
use crate::http::errors::ProxyError;
use crate::http::headers;
use crate::http::replay::{ReplayBody, MAX_REPLAY_BYTES};
use crate::http::retry::Failure;
use crate::http::version::{attempt_head, ORIG_PROTO, ORIG_PROTO_HTTP1};
use crate::http::{boxed, Body};
use crate::metrics::{HttpMetrics, RetryLabels, RouteLabels};

pub use self::gauges::EndpointGauges;

/// The peer label of a request to or from a process with no mesh identity.
const UNMESHED: &str = "unmeshed";

pub struct Outbound {
    snapshot: ArcSwap<Snapshot>,
    /// Bumped after each new snapshot, for requests waiting on discovery.
    applied: tokio::sync::watch::Sender<u64>,
    discovery: Option<Discovery>,
    metrics: HttpMetrics,
    unmeshed: Arc<str>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

/// Where services missing from the snapshot are looked up, and how long a
/// request waits for them.
pub struct Discovery {
    pub client: Arc<dyn OnDemand>,
    pub timeout: Duration,
}

/// What became of a request, for metrics and the access log.
struct Outcome {
    response: Response<Body>,
    endpoint: Option<Arc<Endpoint>>,
    /// The identity of the endpoint, when the last try went over mutual TLS.
    peer: Option<Arc<str>>,
    retries: u32,
    error: Option<&'static str>,
}

impl Outcome {
    fn error(e: ProxyError) -> Self {
        let code = e.code();
        Self {
            response: e.into_response(),
            endpoint: None,
            peer: None,
            retries: 0,
            error: Some(code),
        }
    }
}

impl Outbound {
    pub fn new(metrics: HttpMetrics) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            applied: tokio::sync::watch::channel(0).0,
            discovery: None,
            metrics,
            unmeshed: UNMESHED.into(),
        }
    }

    /// Services the snapshot lacks are watched through `discovery` on
    /// their first request (control-plane mode).
    pub fn with_discovery(mut self, discovery: Discovery) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Swaps in a new view; requests in flight finish on the old one.
    pub fn update(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.applied.send_modify(|n| *n += 1);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        if headers::is_smuggling_attempt(req.headers(), req.extensions()) {
            let e = ProxyError::BadRequest("Content-Length and Transfer-Encoding together");
            return self.finish_unrouted(&req, "", e, started);
        }
        let Some(authority) = target::authority(&req) else {
            return self.finish_unrouted(&req, "", ProxyError::NoAuthority, started);
        };
        let known = self.snapshot.load().lookup(&authority).cloned();
        let service = match known {
            Some(service) => service,
            None => match self.discover(&authority).await {
                Ok(service) => service,
                Err(e) => return self.finish_unrouted(&req, &authority, e, started),
            },
        };
        // A clone of the URI shares its bytes; the path is read from it.
        let uri = req.uri().clone();
        let path = uri.path();
        let Some(route) = service.route(req.method(), path, req.headers()) else {
            return self.finish_unrouted(
                &req,
                &authority,
                ProxyError::NoRoute(service.name.to_string()),
                started,
            );
        };
        let request_id = headers::ensure_request_id(req.headers_mut());
        headers::ensure_traceparent(req.headers_mut());
        let method = req.method().clone();

        let outcome = match route.timeout {
            Some(limit) => match tokio::time::timeout(
                limit,
                self.route_request(&service, route, req, &authority),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.metrics.timeouts.get_or_create(&route.labels).inc();
                    Outcome::error(ProxyError::Timeout(limit))
                }
            },
            None => self.route_request(&service, route, req, &authority).await,
        };
        self.record(&route.labels, &outcome, started);
        AccessRecord {
            direction: "outbound",
            service: &service.name,
            route: &route.labels.route,
            method: method.as_str(),
            authority: &authority,
            path,
            status: outcome.response.status().as_u16(),
            duration: started.elapsed(),
            endpoint: outcome.endpoint.as_ref().map_or("", |e| &e.label),
            retries: outcome.retries,
            request_id: request_id.to_str().unwrap_or(""),
            error: outcome.error.unwrap_or(""),
        }
        .log();
        outcome.response
    }

    /// A service the snapshot lacks: the app's first call to it starts a
    /// watch and waits, within the discovery timeout, for its view.
    async fn discover(&self, authority: &str) -> Result<Arc<snapshot::Service>, ProxyError> {
        let unknown = || ProxyError::UnknownService(target::service_name(authority).to_string());
        let (Some(discovery), Some(name)) = (&self.discovery, target::mesh_service(authority))
        else {
            return Err(unknown());
        };
        let Some(mut presence) = discovery.client.watch(name) else {
            return Err(unknown());
        };
        let mut applied = self.applied.subscribe();
        let deadline = tokio::time::sleep(discovery.timeout);
        tokio::pin!(deadline);
        loop {
            if let Some(service) = self.snapshot.load().lookup(authority) {
                return Ok(service.clone());
            }
            if *presence.borrow_and_update() == Presence::Unknown {
                return Err(unknown());
            }
            tokio::select! {
                _ = applied.changed() => {}
                _ = presence.changed() => {}
                _ = &mut deadline => {
                    return Err(ProxyError::DiscoveryTimeout(name.to_string(), discovery.timeout));
                }
            }
        }
    }

    /// Fault injection, admission, the split, then the tries.
    async fn route_request(
        &self,
        service: &snapshot::Service,
        route: &Route,
        req: Request<Incoming>,
        authority: &str,
    ) -> Outcome {
        if let Some(fault) = &route.fault {
            if let Some(delay) = fault.delay.filter(|d| chance(d.percent)) {
                tokio::time::sleep(delay.duration.into()).await;
            }
            if let Some(abort) = fault.abort.filter(|a| chance(a.percent)) {
                let status = StatusCode::from_u16(abort.status.get())
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Outcome::error(ProxyError::FaultInjected(status));
            }
        }
        let Some(_slot) = service.admit() else {
            return Outcome::error(ProxyError::Overloaded(service.name.to_string()));
        };
        let Some(backend) = route.pick_backend() else {
            return Outcome::error(ProxyError::NoEndpoints(service.name.to_string()));
        };
        let mut outcome = self.send_with_retries(route, backend, req, authority).await;
        outcome.peer = outcome
            .endpoint
            .as_ref()
            .filter(|e| backend.is_meshed(e))
            .and_then(|e| e.peer.clone());
        outcome
    }

    async fn send_with_retries(
        &self,
        route: &Route,
        backend: &Backend,
        req: Request<Incoming>,
        authority: &str,
    ) -> Outcome {
        let (mut parts, body) = req.into_parts();
        let downstream_upgrade = crate::http::upgrade::forward_request_head(&mut parts);
        headers::ensure_host(&mut parts.headers, authority);
        let http2 = parts.version == Version::HTTP_2;
        let hash_key = backend
            .hash_header
            .as_ref()
            .and_then(|h| parts.headers.get(h))
            .map(|v| v.as_bytes().to_vec());

        let retry = route.retry.as_ref();
        if let Some(r) = retry {
            r.deposit();
        }
        let retry = retry.filter(|r| r.allows_method(&parts.method));
        let mut body = RequestBody::new(body, retry.is_some());
        let Some(mut attempt_body) = body.for_attempt() else {
            unreachable!("a request's body always has a first try");
        };
        let mut avoid: Option<Arc<Endpoint>> = None;
        let mut retries = 0u32;
        loop {
            let Some(endpoint) = backend.pick(hash_key.as_deref(), avoid.as_ref()) else {
                return Outcome::error(ProxyError::NoEndpoints(backend.service.to_string()));
            };
            // A request that cannot be retried gives its headers away
            // rather than copying them.
            let headers = match retry {
                Some(_) => parts.headers.clone(),
                None => std::mem::take(&mut parts.headers),
            };
            let meshed = backend.meshed(&endpoint);
            if meshed.is_some() && downstream_upgrade.is_some() {
                return Outcome {
                    endpoint: Some(endpoint),
                    ..Outcome::error(ProxyError::UpgradeOverMtls)
                };
            }
            let mut attempt = Request::from_parts(
                attempt_head(
                    &parts.method,
                    headers,
                    http2 || backend.always_http2 || meshed.is_some(),
                ),
                attempt_body,
            );
            if meshed.is_some() && !http2 {
                // Carried as HTTP/2, restored as HTTP/1.1 by the far side.
                attempt
                    .headers_mut()
                    .insert(ORIG_PROTO, HeaderValue::from_static(ORIG_PROTO_HTTP1));
            }
            *attempt.uri_mut() = crate::http::upstream_uri(&endpoint.authority, &parts.uri);

            let mut in_flight = endpoint.start();
            let client = meshed.unwrap_or_else(|| backend.client(http2));
            let sent = client.request(attempt);
            let result = match retry.and_then(|r| r.per_try_timeout) {
                Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| limit),
                None => Ok(sent.await),
            };
            in_flight.headers_received();

            let (failure, outcome) = match result {
                Ok(Ok(response)) => {
                    let failure = Failure::of_response(response.status(), response.headers());
                    let server_failed = response.status().is_server_error();
                    breaker::record(backend, &endpoint, !server_failed, &self.metrics);
                    match failure {
                        Some(f) => (f, Ok(response)),
                        None => {
                            return self.respond(response, in_flight, retries, downstream_upgrade)
                        }
                    }
                }
                Ok(Err(e)) => {
                    let (failure, error) = match crate::http::client::classify(&e) {
                        crate::http::client::SendFailure::Connect(reason) => (
                            Failure::ConnectFailure,
                            ProxyError::ConnectFailed {
                                endpoint: endpoint.label.to_string(),
                                reason,
                            },
                        ),
                        crate::http::client::SendFailure::Reset(reason) => (
                            Failure::Reset,
                            ProxyError::UpstreamReset {
                                endpoint: endpoint.label.to_string(),
                                reason,
                            },
                        ),
                        crate::http::client::SendFailure::CallerBody(reason) => {
                            // The caller's fault: not the endpoint's, not retried.
                            return Outcome {
                                endpoint: Some(endpoint),
                                retries,
                                ..Outcome::error(ProxyError::RequestBody(reason))
                            };
                        }
                    };
                    breaker::record(backend, &endpoint, false, &self.metrics);
                    (failure, Err(error))
                }
                Err(limit) => {
                    breaker::record(backend, &endpoint, false, &self.metrics);
                    self.metrics.timeouts.get_or_create(&route.labels).inc();
                    (Failure::PerTryTimeout, Err(ProxyError::Timeout(limit)))
                }
            };

            let give_up = |outcome: Result<Response<Incoming>, ProxyError>,
                           in_flight: balance::InFlight| match outcome {
                Ok(response) => self.respond(response, in_flight, retries, None),
                Err(e) => Outcome {
                    endpoint: Some(in_flight.endpoint().clone()),
                    retries,
                    ..Outcome::error(e)
                },
            };
            let Some(r) = retry else {
                return give_up(outcome, in_flight);
            };
            if retries >= r.attempts || !r.covers(failure) || !body.can_replay() {
                return give_up(outcome, in_flight);
            }
            if !r.withdraw() {
                self.metrics
                    .budget_exhausted
                    .get_or_create(&route.labels)
                    .inc();
                return match outcome {
                    Ok(response) => self.respond(response, in_flight, retries, None),
                    Err(e) => Outcome {
                        endpoint: Some(endpoint),
                        retries,
                        ..Outcome::error(ProxyError::BudgetExhausted(Box::new(e)))
                    },
                };
            }
            // Copied now, not after the backoff: the copy supersedes the
            // failed try's body, which would otherwise read on past the cap.
            let Some(next_body) = body.for_attempt() else {
                return give_up(outcome, in_flight);
            };
            // The failed try is done with: neither its response nor its
            // endpoint's in-flight count may last through the backoff.
            drop((outcome, in_flight));
            self.metrics
                .retries
                .get_or_create(&RetryLabels {
                    route: route.labels.clone(),
                    reason: failure.reason(),
                })
                .inc();
            tokio::time::sleep(r.backoff(retries)).await;
            retries += 1;
            avoid = Some(endpoint);
            attempt_body = next_body;
        }
    }

    fn respond(
        &self,
        response: Response<Incoming>,
        in_flight: balance::InFlight,
        retries: u32,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Outcome {
        let endpoint = in_flight.endpoint().clone();
        let (mut parts, body) = response.into_parts();
        crate::http::upgrade::forward_response_head(&mut parts, downstream_upgrade);
        let body = balance::InFlightBody::new(body, in_flight);
        Outcome {
            response: Response::from_parts(parts, boxed(body)),
            endpoint: Some(endpoint),
            peer: None,
            retries,
            error: None,
        }
    }

    fn record(&self, route: &RouteLabels, outcome: &Outcome, started: Instant) {
        let status = outcome.response.status().as_u16();
        let peer = outcome.peer.as_ref().unwrap_or(&self.unmeshed);
        self.metrics.record_request(
            route,
            status,
            peer,
            outcome.peer.is_some(),
            started.elapsed(),
        );
    }

    /// Requests refused before a route was found are logged, not counted
    /// per route: their names are the caller's to choose, and unbounded.
    fn finish_unrouted(
        &self,
        req: &Request<Incoming>,
        authority: &str,
        e: ProxyError,
        started: Instant,
    ) -> Response<Body> {
        let outcome = Outcome::error(e);
        AccessRecord {
            direction: "outbound",
            service: "",
            route: "",
            method: req.method().as_str(),
            authority,
            path: req.uri().path(),
            status: outcome.response.status().as_u16(),
            duration: started.elapsed(),
            endpoint: "",
            retries: 0,
            request_id: req
                .headers()
                .get(headers::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            error: outcome.error.unwrap_or(""),
        }
        .log();
        outcome.response
    }
}

fn chance(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

/// The request body across tries.
enum RequestBody {
    Empty,
    /// Sent once; no retry possible once taken.
    Once(Option<Incoming>),
    Replay(ReplayBody),
}

impl RequestBody {
    fn new(body: Incoming, retryable: bool) -> Self {
        if body.is_end_stream() {
            RequestBody::Empty
        } else if retryable && body.size_hint().lower() <= MAX_REPLAY_BYTES as u64 {
            // A body known to be larger than a replay may keep is sent once.
            RequestBody::Replay(ReplayBody::new(crate::http::from_caller(body)))
        } else {
            RequestBody::Once(Some(body))
        }
    }

    fn for_attempt(&mut self) -> Option<Body> {
        match self {
            RequestBody::Empty => Some(crate::http::empty()),
            RequestBody::Once(b) => b.take().map(crate::http::from_caller),
            RequestBody::Replay(r) => r.try_clone().map(boxed),
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Once(_) => false,
            RequestBody::Replay(r) => r.can_replay(),
        }
    }
}
