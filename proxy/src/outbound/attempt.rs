//! One try of an outbound request: the client (HTTP/1, HTTP/2, or HTTP/2
//! over mutual TLS to a meshed endpoint), the head in the version spoken
//! upstream, the per-try timeout, and what became of the try, which also
//! feeds the endpoint's circuit breaker. Whether to try again is not
//! decided here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::uri::Authority;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

use super::balance::{Endpoint, InFlight};
use super::breaker::{self, Fault};
use super::snapshot::Backend;
use crate::http::client::{classify, Resend, SendFailure};
use crate::http::deadline::Deadline;
use crate::http::errors::ProxyError;
use crate::http::retry::Failure;
use crate::http::version::attempt_head;
use crate::http::Body;
use crate::metrics::{Direction, EjectionLabels, HttpMetrics, RouteLabels};

/// What every try of one request shares.
pub struct Attempts<'a> {
    pub backend: &'a Backend,
    /// The request's authority, as the caller named the service.
    pub authority: &'a Authority,
    /// The time left of which each try tells its endpoint.
    pub deadline: Option<Deadline>,
    /// The route, for its `remora_timeouts_total`.
    pub route: &'a RouteLabels,
    pub per_try_timeout: Option<Duration>,
    /// The caller asked to upgrade its connection, which HTTP/2 does not
    /// carry.
    pub upgrade: bool,
    pub metrics: &'a HttpMetrics,
}

/// What became of one try.
pub enum Tried {
    /// A response that is no failure: the caller's, whatever follows.
    Answered(Response<Incoming>, InFlight),
    /// A failure that a retry policy may cover.
    Failed(Failed),
    /// The caller's request body failed while it was sent: the caller's
    /// fault, not the endpoint's, and never retried.
    CallerBody(ProxyError),
    /// Not sent: the caller asked for an upgrade and the endpoint speaks
    /// only HTTP/2.
    NotSent(ProxyError),
}

/// A failed try.
pub struct Failed {
    /// Why, as the retry conditions see it.
    pub failure: Failure,
    /// What the caller gets if no try follows: the endpoint's response
    /// (a 5xx, say) or the error.
    pub last: Result<Response<Incoming>, ProxyError>,
    /// Counts the try against its endpoint until it is let go.
    pub in_flight: InFlight,
    /// Whether it may go to another endpoint whatever the retry policy.
    pub resend: Resend,
}

/// Sends one try to `endpoint`. `head` is the caller's request head (its
/// method, URI and version); `headers` are this try's own.
pub async fn run(
    attempts: &Attempts<'_>,
    endpoint: &Arc<Endpoint>,
    head: &Parts,
    mut headers: HeaderMap,
    body: Body,
) -> Tried {
    let backend = attempts.backend;
    if let Some(deadline) = attempts.deadline {
        deadline.forward(&mut headers, Instant::now());
    }
    // An upgrade goes in HTTP/1.1, to an app that speaks it: over mutual
    // TLS on a connection of its own; to an unmeshed endpoint as it is.
    let (client, head) = match (attempts.upgrade, &endpoint.upgrades) {
        (true, Some(upgrades)) if !endpoint.speaks_http2 => (
            upgrades,
            attempt_head(&head.method, &head.uri, attempts.authority, headers, false),
        ),
        (true, _) if endpoint.is_http2() => {
            let e = ProxyError::UpgradeOverHttp2(backend.service.to_string());
            return Tried::NotSent(e);
        }
        _ => (
            &endpoint.client,
            endpoint.request_head(&head.method, &head.uri, attempts.authority, headers),
        ),
    };
    let req = Request::from_parts(head, body);

    let mut in_flight = endpoint.start();
    let sent = client.request(req);
    let result = match attempts.per_try_timeout {
        Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| limit),
        None => Ok(sent.await),
    };

    let (failure, last, resend) = match result {
        Ok(Ok(response)) => {
            let failure = Failure::of_response(response.status(), response.headers());
            let fault = response.status().is_server_error().then_some(Fault::Failed);
            feed_breaker(backend, &mut in_flight, fault, attempts.metrics);
            match failure {
                Some(failure) => (failure, Ok(response), Resend::Never),
                None => return Tried::Answered(response, in_flight),
            }
        }
        Ok(Err(e)) => {
            let endpoint = endpoint.label.to_string();
            let failed = classify(&e);
            let resend = failed.resend();
            let (failure, fault, error) = match failed {
                SendFailure::Connect(reason) => (
                    Failure::ConnectFailure,
                    Fault::Unreachable,
                    ProxyError::ConnectFailed { endpoint, reason },
                ),
                SendFailure::Refused(reason) => (
                    Failure::Refused,
                    Fault::Failed,
                    ProxyError::UpstreamReset { endpoint, reason },
                ),
                SendFailure::Reset(reason) => (
                    Failure::Reset,
                    Fault::Failed,
                    ProxyError::UpstreamReset { endpoint, reason },
                ),
                SendFailure::CallerBody(reason) => {
                    return Tried::CallerBody(ProxyError::RequestBody(reason))
                }
            };
            feed_breaker(backend, &mut in_flight, Some(fault), attempts.metrics);
            (failure, Err(error), resend)
        }
        Err(limit) => {
            feed_breaker(
                backend,
                &mut in_flight,
                Some(Fault::Failed),
                attempts.metrics,
            );
            attempts
                .metrics
                .timeouts
                .get_or_create(attempts.route)
                .inc();
            let error = ProxyError::Timeout(limit);
            (Failure::PerTryTimeout, Err(error), Resend::Never)
        }
    };
    Tried::Failed(Failed {
        failure,
        last,
        in_flight,
        resend,
    })
}

/// Feeds one try's outcome, a `fault` or a success, to its endpoint's
/// breaker under `backend`'s policy and charges a failure to the
/// endpoint's balancing cost; an ejection is logged and counted.
pub(super) fn feed_breaker(
    backend: &Backend,
    in_flight: &mut InFlight,
    fault: Option<Fault>,
    metrics: &HttpMetrics,
) {
    let Some(fault) = fault else {
        in_flight.headers_received();
        in_flight.endpoint().breaker.record_success();
        return;
    };
    in_flight.failed();
    let endpoint = in_flight.endpoint();
    let policy = backend.circuit_breaker.as_ref();
    let now = Instant::now();
    let breakers = backend.endpoints.iter().map(|e| &e.breaker);
    let may_eject = breaker::may_eject(policy, breakers, now);
    if !endpoint
        .breaker
        .record_failure(policy, fault, may_eject, now)
    {
        return;
    }
    let state = endpoint.breaker.state(now);
    let cause = match fault {
        Fault::Unreachable => "cannot connect",
        Fault::Failed => "failures",
    };
    tracing::warn!(endpoint = %endpoint.address, service = %backend.service, ?state, cause, "endpoint ejected");
    metrics
        .ejections
        .get_or_create(&EjectionLabels {
            direction: Direction::Outbound,
            service: backend.service.clone(),
            endpoint: endpoint.label.clone(),
        })
        .inc();
}
