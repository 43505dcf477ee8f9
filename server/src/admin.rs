//! What both binaries' admin ports answer alike: `GET /metrics` in the
//! format the scraper asks for, and plain-text answers.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use prometheus_client::registry::Registry;

use crate::metrics::{encode_openmetrics, to_prometheus_text};
use crate::{full, Body};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` of an admin port (the proxy's and the control plane's):
/// OpenMetrics when the scraper's `Accept` asks for it, else the classic
/// Prometheus text.
pub fn metrics<B>(registry: &Registry, req: &Request<B>) -> Response<Body> {
    let wants_openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let openmetrics = encode_openmetrics(registry);
    let (body, content_type) = if wants_openmetrics {
        (openmetrics, OPENMETRICS)
    } else {
        (to_prometheus_text(&openmetrics), PROMETHEUS_TEXT)
    };
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A plain-text answer of an admin port.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
