//! One try of an outbound request: the client (HTTP/1, HTTP/2, or HTTP/2
//! over mutual TLS to a meshed endpoint), the head in the version spoken
//! upstream, the per-try timeout, and what became of the try, which also
//! feeds the endpoint's circuit breaker. Whether to try again is not
//! decided here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use super::balance::{Endpoint, InFlight};
use super::breaker;
use super::snapshot::Backend;
use crate::http::client::{classify, SendFailure};
use crate::http::errors::ProxyError;
use crate::http::retry::Failure;
use crate::http::version::{attempt_head, ORIG_PROTO, ORIG_PROTO_HTTP1};
use crate::http::{upstream_uri, Body};
use crate::metrics::{Direction, EjectionLabels, HttpMetrics, RouteLabels};

/// What every try of one request shares.
pub struct Attempts<'a> {
    pub backend: &'a Backend,
    /// The route, for its `remora_timeouts_total`.
    pub route: &'a RouteLabels,
    pub per_try_timeout: Option<Duration>,
    /// The caller asked to upgrade its connection, which a sidecar's
    /// mutual-TLS hop does not carry.
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
    /// Not sent: the caller asked for an upgrade and the endpoint is reached
    /// over mutual TLS.
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
}

/// Sends one try to `endpoint`. `head` is the caller's request head (its
/// method, URI and version); `headers` are this try's own.
pub async fn run(
    attempts: &Attempts<'_>,
    endpoint: &Arc<Endpoint>,
    head: &Parts,
    headers: HeaderMap,
    body: Body,
) -> Tried {
    let backend = attempts.backend;
    let meshed = backend.meshed(endpoint);
    if meshed.is_some() && attempts.upgrade {
        return Tried::NotSent(ProxyError::UpgradeOverMtls);
    }
    let caller_http2 = head.version == Version::HTTP_2;
    let http2 = caller_http2 || backend.always_http2 || meshed.is_some();
    let mut req = Request::from_parts(attempt_head(&head.method, headers, http2), body);
    if meshed.is_some() && !caller_http2 {
        // Carried as HTTP/2, restored as HTTP/1.1 by the far side.
        req.headers_mut()
            .insert(ORIG_PROTO, HeaderValue::from_static(ORIG_PROTO_HTTP1));
    }
    *req.uri_mut() = upstream_uri(&endpoint.authority, &head.uri);

    let mut in_flight = endpoint.start();
    let client = meshed.unwrap_or_else(|| backend.client(caller_http2));
    let sent = client.request(req);
    let result = match attempts.per_try_timeout {
        Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| limit),
        None => Ok(sent.await),
    };
    in_flight.headers_received();

    let (failure, last) = match result {
        Ok(Ok(response)) => {
            let failure = Failure::of_response(response.status(), response.headers());
            let server_failed = response.status().is_server_error();
            feed_breaker(backend, endpoint, !server_failed, attempts.metrics);
            match failure {
                Some(failure) => (failure, Ok(response)),
                None => return Tried::Answered(response, in_flight),
            }
        }
        Ok(Err(e)) => {
            let (failure, error) = match classify(&e) {
                SendFailure::Connect(reason) => (
                    Failure::ConnectFailure,
                    ProxyError::ConnectFailed {
                        endpoint: endpoint.label.to_string(),
                        reason,
                    },
                ),
                SendFailure::Reset(reason) => (
                    Failure::Reset,
                    ProxyError::UpstreamReset {
                        endpoint: endpoint.label.to_string(),
                        reason,
                    },
                ),
                SendFailure::CallerBody(reason) => {
                    return Tried::CallerBody(ProxyError::RequestBody(reason))
                }
            };
            feed_breaker(backend, endpoint, false, attempts.metrics);
            (failure, Err(error))
        }
        Err(limit) => {
            feed_breaker(backend, endpoint, false, attempts.metrics);
            attempts
                .metrics
                .timeouts
                .get_or_create(attempts.route)
                .inc();
            (Failure::PerTryTimeout, Err(ProxyError::Timeout(limit)))
        }
    };
    Tried::Failed(Failed {
        failure,
        last,
        in_flight,
    })
}

/// Feeds one try's outcome to `endpoint`'s breaker under `backend`'s
/// policy; an ejection is logged and counted.
fn feed_breaker(backend: &Backend, endpoint: &Endpoint, success: bool, metrics: &HttpMetrics) {
    if success {
        endpoint.breaker.record_success();
        return;
    }
    let policy = backend.circuit_breaker.as_ref();
    let now = Instant::now();
    let breakers = backend.endpoints.iter().map(|e| &e.breaker);
    let may_eject = breaker::may_eject(policy, breakers, now);
    if !endpoint.breaker.record_failure(policy, may_eject, now) {
        return;
    }
    tracing::warn!(endpoint = %endpoint.address, service = %backend.service, "endpoint ejected after consecutive failures");
    metrics
        .ejections
        .get_or_create(&EjectionLabels {
            direction: Direction::Outbound,
            service: backend.service.clone(),
            endpoint: endpoint.label.clone(),
        })
        .inc();
}
