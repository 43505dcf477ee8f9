//! The outbound direction: the local app's calls to other services.
//! accept → detect → target service → route → fault → split → balance →
//! try (with per-try timeout) → retry → respond, all under the route's
//! timeout. `Outbound::handle` reads in that order: `target` names the
//! service, the `snapshot` holds its routes and backends, `balance` picks
//! an endpoint, `attempt` sends one try (feeding the `breaker`), and
//! `send_with_retries` decides whether another follows.

mod attempt;
pub mod balance;
mod body;
pub mod breaker;
mod gauges;
pub mod health;
pub mod routes;
pub mod snapshot;
pub mod target;
pub mod tcp;
pub mod transparent;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use remora_server::serve::{self as server, Drain, ServerSettings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use self::attempt::{Attempts, Failed, Tried};
use self::balance::{Endpoint, InFlight, InFlightBody};
use self::body::RequestBody;
use self::snapshot::{Backend, Route, Snapshot};
use crate::access_log::AccessRecord;
use crate::discovery::{OnDemand, Presence};
use crate::http::client::Clients;
use crate::http::deadline::Deadline;
use crate::http::errors::{self, ProxyError};
use crate::http::headers;
use crate::http::{boxed, Body};
use crate::metrics::{
    Direction, HttpMetrics, Metrics, RetryLabels, RouteLabels, TcpMetrics, TransportMetrics,
};

/// The outbound direction, top to bottom: accept on `listener` (the local
/// app's calls, in plaintext) → HTTP/1.1 or HTTP/2 → per request,
/// [`Outbound::handle`]: the target service (watched on the app's first
/// call to it) → route → fault → admission → split → balance → one try
/// after another, within the retry policy and budget.
pub fn serve(
    intercepted: Arc<Intercepted>,
    listener: TcpListener,
    settings: ServerSettings,
    transport: &TransportMetrics,
    drain: Drain,
) -> JoinHandle<()> {
    let outbound = intercepted.outbound.clone();
    let settings = ServerSettings {
        metrics: Some(transport.listener(Direction::Outbound, false)),
        opaque: Some(intercepted),
        transparent: true,
        ..settings
    };
    tokio::spawn(server::serve(listener, settings, drain, move |peer| {
        let outbound = outbound.clone();
        let original_dst = peer.original_dst;
        service_fn(move |req| {
            let outbound = outbound.clone();
            async move { Ok::<_, Infallible>(outbound.handle(req, original_dst).await) }
        })
    }))
}

pub use self::gauges::EndpointGauges;
pub use self::transparent::Intercepted;

/// The peer label of a request to or from a process with no mesh identity.
const UNMESHED: &str = "unmeshed";

pub struct Outbound {
    snapshot: ArcSwap<Snapshot>,
    /// Makes the clients of destinations outside the snapshot.
    clients: Clients,
    /// Where intercepted traffic went by its original destination, until
    /// the next snapshot.
    destinations: Mutex<HashMap<SocketAddr, Arc<snapshot::Service>>>,
    /// Virtual IPs (ClusterIPs) of services, as the control plane listed
    /// them.
    virtual_addresses: Mutex<HashMap<SocketAddr, String>>,
    /// Names of intercepted requests that the control plane's listing
    /// lacked, and when.
    unlisted: Mutex<HashMap<String, std::time::Instant>>,
    /// Bumped after each new snapshot, for requests waiting on discovery.
    applied: tokio::sync::watch::Sender<u64>,
    discovery: Option<Discovery>,
    metrics: HttpMetrics,
    /// Its opaque streams' series.
    tcp: TcpMetrics,
    /// How long the app's request body may go without progress.
    caller_body_idle: Duration,
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

    /// The error of a try that went to `endpoint`.
    fn at(endpoint: Arc<Endpoint>, retries: u32, e: ProxyError) -> Self {
        Self {
            endpoint: Some(endpoint),
            retries,
            ..Outcome::error(e)
        }
    }
}

impl Outbound {
    /// The outbound, its endpoint gauges registered in `metrics`; services
    /// the mesh view lacks are looked up through `discovery`, if any.
    pub fn build(
        metrics: &mut Metrics,
        discovery: Option<Discovery>,
        clients: Clients,
        caller_body_idle: Duration,
    ) -> Arc<Outbound> {
        let mut outbound = Outbound::new(metrics.http.clone(), caller_body_idle);
        outbound.tcp = metrics.tcp.clone();
        outbound.discovery = discovery;
        outbound.clients = clients;
        let outbound = Arc::new(outbound);
        metrics
            .registry
            .register_collector(Box::new(EndpointGauges(outbound.clone())));
        outbound
    }

    fn new(metrics: HttpMetrics, caller_body_idle: Duration) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            clients: Clients::default(),
            destinations: Mutex::default(),
            virtual_addresses: Mutex::default(),
            unlisted: Mutex::default(),
            applied: tokio::sync::watch::channel(0).0,
            discovery: None,
            metrics,
            tcp: TcpMetrics::default(),
            caller_body_idle,
            unmeshed: UNMESHED.into(),
        }
    }

    /// Swaps in a new view; requests in flight finish on the old one.
    pub fn update(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.destinations().clear();
        self.applied.send_modify(|n| *n += 1);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// One request of the app's; `original_dst`, where its connection was
    /// going when transparent mode intercepted it.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        original_dst: Option<SocketAddr>,
    ) -> Response<Body> {
        let started = Instant::now();
        let grpc = errors::is_grpc(req.headers());
        if headers::is_smuggling_attempt(req.headers(), req.extensions()) {
            let e = ProxyError::BadRequest("Content-Length and Transfer-Encoding together");
            return self.finish_unrouted(&req, "", e, started);
        }
        let authority = match (target::authority(&req), original_dst) {
            (Ok(Some(authority)), _) => authority,
            (Ok(None), Some(destination)) => crate::http::authority_of(destination),
            (Ok(None), None) => {
                return self.finish_unrouted(&req, "", ProxyError::NoAuthority, started)
            }
            (Err(e), _) => return self.finish_unrouted(&req, "", e, started),
        };
        let service = match original_dst {
            Some(destination) => Ok(self.intercepted(authority.as_str(), destination).await),
            None => self.service(authority.as_str()).await,
        };
        let service = match service {
            Ok(service) if service.opaque => {
                let e = ProxyError::OpaqueService(service.name.to_string());
                return self.finish_unrouted(&req, authority.as_str(), e, started);
            }
            Ok(service) => service,
            Err(e) => return self.finish_unrouted(&req, authority.as_str(), e, started),
        };
        // A clone of the URI shares its bytes; the path is read from it.
        let uri = req.uri().clone();
        let path = uri.path();
        let Some(route) = service.route(req.method(), path, req.headers()) else {
            return self.finish_unrouted(
                &req,
                authority.as_str(),
                ProxyError::NoRoute(service.name.to_string()),
                started,
            );
        };
        let request_id = headers::ensure_request_id(req.headers_mut());
        headers::ensure_traceparent(req.headers_mut());
        let method = req.method().clone();

        // The caller's deadline, if it sent one, within the route's timeout.
        let asked = Deadline::of_request(req.headers(), started);
        let deadline = Deadline::within(asked, route.timeout, started);
        let outcome = match deadline {
            Some(d) if d.has_passed(Instant::now()) => {
                self.metrics.timeouts.get_or_create(&route.labels).inc();
                Outcome::error(ProxyError::DeadlineExceeded)
            }
            Some(d) => match tokio::time::timeout_at(
                d.0.into(),
                self.route_request(&service, route, req, &authority, deadline),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.metrics.timeouts.get_or_create(&route.labels).inc();
                    Outcome::error(ProxyError::Timeout(d.0 - started))
                }
            },
            None => {
                self.route_request(&service, route, req, &authority, None)
                    .await
            }
        };
        self.record(&route.labels, &outcome, started);
        AccessRecord {
            direction: "outbound",
            service: &service.name,
            route: &route.labels.route,
            method: method.as_str(),
            authority: authority.as_str(),
            path,
            status: outcome.response.status().as_u16(),
            duration: started.elapsed(),
            endpoint: outcome.endpoint.as_ref().map_or("", |e| &e.label),
            retries: outcome.retries,
            request_id: request_id.to_str().unwrap_or(""),
            error: outcome.error.unwrap_or(""),
        }
        .log();
        errors::for_caller(grpc, outcome.response)
    }

    /// The service `authority` names: from the snapshot, or discovered.
    async fn service(&self, authority: &str) -> Result<Arc<snapshot::Service>, ProxyError> {
        let known = self.snapshot.load().lookup(authority).cloned();
        match known {
            Some(service) => Ok(service),
            None => self.discover(authority).await,
        }
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
        authority: &Authority,
        deadline: Option<Deadline>,
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
        let mut outcome = self
            .send_with_retries(route, backend, req, authority, deadline)
            .await;
        outcome.peer = outcome
            .endpoint
            .as_ref()
            .filter(|e| e.is_meshed())
            .and_then(|e| e.peer.clone());
        outcome
    }

    /// The tries: pick an endpoint (not the one that just failed), try it,
    /// then respond, give up, or back off and try again.
    async fn send_with_retries(
        &self,
        route: &Route,
        backend: &Backend,
        req: Request<Incoming>,
        authority: &Authority,
        deadline: Option<Deadline>,
    ) -> Outcome {
        let (mut head, body) = req.into_parts();
        let upgrade = crate::http::upgrade::forward_request_head(&mut head);
        let hash_key = backend
            .hash_header
            .as_ref()
            .and_then(|h| head.headers.get(h))
            .map(|v| v.as_bytes().to_vec());
        let retry = route.retry.as_ref();
        if let Some(r) = retry {
            r.deposit();
        }
        route.unsent.deposit();
        let retry = retry.filter(|r| r.allows_method(&head.method));
        let (mut body, mut try_body) = RequestBody::first_try(body, self.caller_body_idle);
        let per_try_timeout = retry.and_then(|r| r.per_try_timeout);
        let attempts = Attempts {
            backend,
            authority,
            deadline,
            route: &route.labels,
            per_try_timeout,
            upgrade: upgrade.is_some(),
            metrics: &self.metrics,
        };
        let (mut avoid, mut retries) = (None, 0);
        loop {
            let Some(endpoint) = backend.pick(hash_key.as_deref(), avoid.as_ref()) else {
                return Outcome::error(ProxyError::NoEndpoints(backend.service.to_string()));
            };
            // A request that cannot go again gives its headers away rather
            // than copying them.
            let headers = match body.can_replay() {
                true => head.headers.clone(),
                false => std::mem::take(&mut head.headers),
            };
            let failed = match attempt::run(&attempts, &endpoint, &head, headers, try_body).await {
                Tried::Answered(response, in_flight) => {
                    return respond(response, in_flight, retries, upgrade)
                }
                Tried::Failed(failed) => failed,
                Tried::CallerBody(e) => return Outcome::at(endpoint, retries, e),
                // Reported, as it always was, with no retries.
                Tried::NotSent(e) => return Outcome::at(endpoint, 0, e),
            };
            // The route's policy, or, for a try that never reached its
            // endpoint, a resend at once whatever the policy.
            let (policy, resend) = match retry.filter(|r| r.covers(failed.failure)) {
                Some(r) => (Some(r), false),
                None if failed.resend.allows(&head.method) => (Some(&route.unsent), true),
                None => (None, false),
            };
            let Some(r) = policy.filter(|r| retries < r.attempts && body.can_replay()) else {
                return give_up(failed, retries);
            };
            let wait = match resend {
                true => Duration::ZERO,
                false => r.backoff(retries),
            };
            // A retry that could not finish in time is not started: after
            // its wait, there must be time left for a try like the last.
            let try_needs = failed
                .in_flight
                .elapsed()
                .min(per_try_timeout.unwrap_or(Duration::MAX));
            if deadline.is_some_and(|d| d.left(Instant::now()) <= wait + try_needs) {
                return give_up(failed, retries);
            }
            if !r.withdraw() {
                self.metrics
                    .budget_exhausted
                    .get_or_create(&route.labels)
                    .inc();
                return budget_exhausted(failed, retries);
            }
            // Copied now, not after the backoff: the copy supersedes the
            // failed try's body, which would otherwise read on past the cap.
            let Some(next_body) = body.next_try() else {
                return give_up(failed, retries);
            };
            let reason = failed.failure.reason();
            // The failed try is done with: neither its response nor its
            // endpoint's in-flight count may last through the backoff.
            drop(failed);
            let labels = RetryLabels {
                route: route.labels.clone(),
                reason,
            };
            self.metrics.retries.get_or_create(&labels).inc();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            (avoid, retries, try_body) = (Some(endpoint), retries + 1, next_body);
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
        errors::for_caller(errors::is_grpc(req.headers()), outcome.response)
    }
}

/// The caller's response, from the try that answered.
fn respond(
    response: Response<Incoming>,
    in_flight: InFlight,
    retries: u32,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Outcome {
    let endpoint = in_flight.endpoint().clone();
    let (mut parts, body) = response.into_parts();
    crate::http::upgrade::forward_response_head(&mut parts, downstream_upgrade);
    let body = InFlightBody::new(body, in_flight);
    Outcome {
        response: Response::from_parts(parts, boxed(body)),
        endpoint: Some(endpoint),
        peer: None,
        retries,
        error: None,
    }
}

/// No other try: the caller gets what the last one got.
fn give_up(failed: Failed, retries: u32) -> Outcome {
    match failed.last {
        Ok(response) => respond(response, failed.in_flight, retries, None),
        Err(e) => Outcome::at(failed.in_flight.endpoint().clone(), retries, e),
    }
}

/// A retry the budget could not pay for: the caller gets the last
/// response, or the last error saying why it was not retried.
fn budget_exhausted(failed: Failed, retries: u32) -> Outcome {
    match failed.last {
        Ok(response) => respond(response, failed.in_flight, retries, None),
        Err(e) => {
            let e = ProxyError::BudgetExhausted(Box::new(e));
            Outcome::at(failed.in_flight.endpoint().clone(), retries, e)
        }
    }
}

fn chance(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}
