//! The API listener (docs/protocol.md): long-poll views, registrations and
//! the service listing. Each request is routed by method and path, answered
//! with JSON, and counted by resource and status.

pub mod certificate;
mod chunks;
pub mod fanout;
pub mod registrations;
pub mod services;
pub mod views;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use remora_api::protocol::ApiError;
use remora_server::serve::{Drain, Peer};
use remora_server::{full, Body};

use crate::ca::Authority;
use crate::metrics::{Metrics, RequestLabels, ViewMetrics};
use crate::state::{Kind, Registrants, State};
use fanout::ThreadViews;
use remora_api::SpiffeId;

/// What the API serves from, shared by every connection.
pub struct Api {
    pub state: Arc<State>,
    outbound: ViewMetrics,
    inbound: ViewMetrics,
    requests: Family<RequestLabels, Counter>,
    /// Signaled at shutdown: held long-polls answer at once.
    drain: Drain,
    restart: RestartGrace,
    /// `None` with `--insecure`.
    authority: Option<Arc<Authority>>,
}

/// Registrations are soft state: a restarted control plane knows each
/// service from the file at once, but its endpoints only as the sidecars
/// register again. For a while after start, outbound views are marked
/// `incomplete`, so that proxies keep the endpoints they had (`State`
/// does that); and a poll that presents a version from before this process
/// for a service this process does not know yet is held rather than told
/// the service is unknown. New proxies (no version) are answered at once.
#[derive(Clone, Copy, Debug)]
pub struct RestartGrace {
    /// This process's first version: anything lower is from an earlier one.
    pub first_version: u64,
    pub until: std::time::Instant,
}

impl RestartGrace {
    /// How long a poll presenting `version` must still be held.
    pub fn remaining(&self, version: Option<u64>) -> Option<std::time::Duration> {
        version.filter(|v| *v < self.first_version)?;
        self.until
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// What a request asks for, read from its method and path.
enum Target<'a> {
    View(Kind, &'a str),
    Register(&'a str, &'a str),
    Deregister(&'a str, &'a str),
    Services,
    Certificate,
    MethodNotAllowed(&'static str),
    NotFound,
}

impl Api {
    pub fn new(
        state: Arc<State>,
        metrics: &Metrics,
        drain: Drain,
        restart: RestartGrace,
        authority: Option<Arc<Authority>>,
    ) -> Self {
        Self {
            authority,
            state,
            outbound: metrics.view(Kind::Outbound),
            inbound: metrics.view(Kind::Inbound),
            requests: metrics.requests.clone(),
            drain,
            restart,
        }
    }

    /// Answers `req` from `peer` (with the identity of its client
    /// certificate, if it sent one), holding long-polls on `views`, this
    /// thread's.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        views: &ThreadViews,
        peer: &Peer,
    ) -> Response<Body> {
        // The URI outlives the request, which is let go of while a poll is
        // held; cloning it shares its bytes.
        let uri = req.uri().clone();
        let (resource, target) = route(req.method(), uri.path());
        let response = match self.authorize(&target, peer.identity.as_ref()) {
            Err((status, reason)) => error(status, reason),
            Ok(()) => self.answer(target, req, &uri, views, peer).await,
        };
        self.requests
            .get_or_create(&RequestLabels {
                resource,
                status_code: response.status().as_u16(),
            })
            .inc();
        response
    }

    /// With identity on, everything but a certificate request needs a
    /// client certificate of the mesh, and only a service's own identity
    /// registers endpoints for it: no one else can pose as its endpoints.
    fn authorize(
        &self,
        target: &Target<'_>,
        caller: Option<&SpiffeId>,
    ) -> Result<(), (StatusCode, String)> {
        if self.authority.is_none() {
            return Ok(());
        }
        let Some(caller) = caller else {
            return match target {
                Target::Certificate | Target::MethodNotAllowed(_) | Target::NotFound => Ok(()),
                _ => Err((
                    StatusCode::UNAUTHORIZED,
                    "a client certificate of the mesh is required (POST /v1/certificate issues one)"
                        .to_string(),
                )),
            };
        };
        match target {
            Target::Register(service, _) | Target::Deregister(service, _) => {
                let refused = |why: String| {
                    Err((
                        StatusCode::FORBIDDEN,
                        format!("{caller} may not register endpoints of {service}: {why}"),
                    ))
                };
                match self.state.registrants(service) {
                    Registrants::Declared(owner) if &owner != caller => {
                        refused(format!("only {owner} may"))
                    }
                    Registrants::Pods(pods) if !pods.contains(caller) => {
                        let who = match pods.is_empty() {
                            true => "it has no pods yet".to_string(),
                            false => format!(
                                "only its pods' service accounts may ({})",
                                pods.iter()
                                    .map(SpiffeId::as_str)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        refused(format!(
                            "its endpoints come from Kubernetes, and {who}; to add an instance outside the cluster, give {service} an identity in mesh.yaml"
                        ))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    async fn answer(
        &self,
        target: Target<'_>,
        req: Request<Incoming>,
        uri: &http::Uri,
        views: &ThreadViews,
        peer: &Peer,
    ) -> Response<Body> {
        match target {
            Target::View(kind, service) => {
                drop(req);
                views::poll(self, views, kind, service, uri.query()).await
            }
            Target::Register(service, instance) => {
                registrations::put(self, service, instance, req, peer).await
            }
            Target::Deregister(service, instance) => registrations::delete(self, service, instance),
            Target::Services => services::list(self),
            Target::Certificate => certificate::issue(self, req).await,
            Target::MethodNotAllowed(allowed) => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method not allowed; this path takes {allowed}"),
                );
                if let Ok(v) = HeaderValue::from_str(allowed) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
                r
            }
            Target::NotFound => error(
                StatusCode::NOT_FOUND,
                "not found: the API serves /v1/outbound/{service}, /v1/inbound/{service}, /v1/registrations/{service}/{instance}, /v1/certificate and /v1/services",
            ),
        }
    }

    fn view_metrics(&self, kind: Kind) -> &ViewMetrics {
        match kind {
            Kind::Outbound => &self.outbound,
            Kind::Inbound => &self.inbound,
        }
    }
}

/// The resource label and the target of a request.
fn route<'a>(method: &Method, path: &'a str) -> (&'static str, Target<'a>) {
    let mut segments = path.trim_start_matches('/').split('/');
    // One more than the longest path has, to tell a longer one.
    let segments = [(); 5].map(|_| segments.next());
    match segments {
        [Some("v1"), Some(kind @ ("outbound" | "inbound")), Some(service), None, None] => {
            let (label, kind) = if kind == "outbound" {
                ("outbound", Kind::Outbound)
            } else {
                ("inbound", Kind::Inbound)
            };
            if method == Method::GET {
                (label, Target::View(kind, service))
            } else {
                (label, Target::MethodNotAllowed("GET"))
            }
        }
        [Some("v1"), Some("registrations"), Some(service), Some(instance), None] => {
            let target = match *method {
                Method::PUT => Target::Register(service, instance),
                Method::DELETE => Target::Deregister(service, instance),
                _ => Target::MethodNotAllowed("PUT, DELETE"),
            };
            ("registrations", target)
        }
        [Some("v1"), Some("certificate"), None, None, None] => {
            if method == Method::POST {
                ("certificate", Target::Certificate)
            } else {
                ("certificate", Target::MethodNotAllowed("POST"))
            }
        }
        [Some("v1"), Some("services"), None, None, None] => {
            if method == Method::GET {
                ("services", Target::Services)
            } else {
                ("services", Target::MethodNotAllowed("GET"))
            }
        }
        _ => ("other", Target::NotFound),
    }
}

/// The whole body of `req`, or the `400` that says it is too large or
/// broken.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Response<Body>> {
    use http_body_util::{BodyExt, Limited};
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body (at most {limit} bytes): {e}"),
        )),
    }
}

/// A JSON body with `status`.
fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    json_body(status, full(body.into()))
}

fn json_body(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": "..."}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let body = serde_json::to_vec(&ApiError {
        error: message.into(),
    })
    .unwrap_or_default();
    json(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_by_method_and_shape() {
        let get = Method::GET;
        assert!(matches!(
            route(&get, "/v1/outbound/orders"),
            ("outbound", Target::View(Kind::Outbound, s)) if s == "orders"
        ));
        assert!(matches!(
            route(&get, "/v1/inbound/orders"),
            ("inbound", Target::View(Kind::Inbound, _))
        ));
        assert!(matches!(
            route(&Method::POST, "/v1/outbound/orders"),
            ("outbound", Target::MethodNotAllowed(_))
        ));
        assert!(matches!(
            route(&Method::PUT, "/v1/registrations/orders/pod-1"),
            ("registrations", Target::Register(s, i)) if s == "orders" && i == "pod-1"
        ));
        assert!(matches!(
            route(&Method::DELETE, "/v1/registrations/orders/pod-1"),
            ("registrations", Target::Deregister(..))
        ));
        assert!(matches!(
            route(&get, "/v1/services"),
            ("services", Target::Services)
        ));
        assert!(matches!(
            route(&get, "/v1/outbound/a/b"),
            ("other", Target::NotFound)
        ));
        assert!(matches!(route(&get, "/"), ("other", Target::NotFound)));
    }
}
