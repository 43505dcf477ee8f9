//! Errors the proxy makes itself. Each becomes a response with a clear
//! status and a `remora-error` header naming the cause, so an app (or a
//! person with curl) can tell the proxy's failures from the upstream's.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use super::{Body, BoxError};

pub const REMORA_ERROR: &str = "remora-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request names no service: give an absolute URI or a Host header")]
    NoAuthority,
    #[error("no service named {0:?} in the mesh")]
    UnknownService(String),
    #[error("no view of service {0:?} came from the control plane within {1:?}")]
    DiscoveryTimeout(String, Duration),
    #[error("no route of service {0:?} matches this request")]
    NoRoute(String),
    #[error("service {0:?} has no endpoints")]
    NoEndpoints(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the caller's deadline had passed when the request arrived")]
    DeadlineExceeded,
    #[error("could not connect to {endpoint}: {reason}")]
    ConnectFailed { endpoint: String, reason: String },
    #[error("the connection to {endpoint} broke before a response: {reason}")]
    UpstreamReset { endpoint: String, reason: String },
    #[error("retry budget exhausted after: {0}")]
    BudgetExhausted(Box<ProxyError>),
    #[error("service {0:?} has too many requests pending")]
    Overloaded(String),
    #[error("service {0:?} is receiving more requests than its rate limit allows")]
    RateLimited(String),
    #[error("fault injected by the route")]
    FaultInjected(StatusCode),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the local app is unreachable at {endpoint}: {reason}")]
    AppUnreachable { endpoint: String, reason: String },
    #[error("the request body could not be read: {0}")]
    RequestBody(String),
    #[error("{0} is a tcp service: its streams go through a --tcp-listen port, not HTTP requests")]
    OpaqueService(String),
    #[error("HTTP upgrades (WebSocket) are carried only to endpoints that speak HTTP/1.1; {0}'s protocol is HTTP/2")]
    UpgradeOverHttp2(String),
    #[error("{caller} may not call {service}: {rule}")]
    Forbidden {
        caller: String,
        service: String,
        rule: String,
    },
}

/// Reading the caller's request body failed (malformed chunks, or the
/// caller went away): the caller's fault, never the endpoint's.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read")]
pub struct CallerBodyError(#[source] pub BoxError);

impl ProxyError {
    /// The short, stable name carried in `remora-error`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoAuthority => "no-authority",
            ProxyError::UnknownService(_) => "unknown-service",
            ProxyError::DiscoveryTimeout(..) => "discovery-timeout",
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::DeadlineExceeded => "deadline-exceeded",
            ProxyError::ConnectFailed { .. } => "upstream-refused",
            ProxyError::UpstreamReset { .. } => "upstream-reset",
            ProxyError::BudgetExhausted(_) => "retry-budget-exhausted",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::FaultInjected(_) => "fault-injected",
            ProxyError::RateLimited(_) => "rate-limited",
            ProxyError::BadRequest(_) | ProxyError::RequestBody(_) => "bad-request",
            ProxyError::AppUnreachable { .. } => "app-unreachable",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::OpaqueService(_) => "tcp-service",
            ProxyError::UpgradeOverHttp2(_) => "upgrade-over-http2",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoAuthority
            | ProxyError::BadRequest(_)
            | ProxyError::RequestBody(_)
            | ProxyError::OpaqueService(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownService(_) | ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints(_)
            | ProxyError::Overloaded(_)
            | ProxyError::DiscoveryTimeout(..) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout(_) | ProxyError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::AppUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BudgetExhausted(inner) => inner.status(),
            ProxyError::FaultInjected(status) => *status,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::UpgradeOverHttp2(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let message = self.to_string();
        let mut response = Response::new(super::full(format!("{message}\n")));
        response.extensions_mut().insert(Message(message));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(REMORA_ERROR, HeaderValue::from_static(self.code()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// What a proxy error said, kept beside its response for
/// [`for_caller`].
#[derive(Clone)]
struct Message(String);

/// The app's view of a response, `grpc` when its request was a gRPC call.
/// To a gRPC caller, an error response the proxy made (one with a
/// `remora-error` header, made here or by the far sidecar) becomes `200`
/// with a `grpc-status` and `grpc-message` and no body, a trailers-only
/// response, as Envoy and Linkerd answer: gRPC clients read only the
/// status. HTTP statuses map as gRPC's own table says; a timeout is
/// `DEADLINE_EXCEEDED`. Metrics count the error as the HTTP status it was.
/// Anything else passes as it is.
pub fn for_caller(grpc: bool, response: Response<Body>) -> Response<Body> {
    let code = match response.headers().get(REMORA_ERROR) {
        Some(code) if grpc => code.clone(),
        _ => return response,
    };
    let status = match (code.as_bytes(), response.status().as_u16()) {
        (b"timeout" | b"deadline-exceeded", _) => GrpcStatus::DeadlineExceeded,
        (_, 400) => GrpcStatus::Internal,
        (_, 401) => GrpcStatus::Unauthenticated,
        (_, 403) => GrpcStatus::PermissionDenied,
        (_, 404) => GrpcStatus::Unimplemented,
        (_, 429 | 502 | 503 | 504) => GrpcStatus::Unavailable,
        _ => GrpcStatus::Unknown,
    };
    let message = response
        .extensions()
        .get::<Message>()
        .map(|m| m.0.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(code.as_bytes()).into_owned());
    let mut grpc = Response::new(super::empty());
    let headers = grpc.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(status as u16));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", message);
    }
    headers.insert(REMORA_ERROR, code);
    grpc
}

/// Whether a request is a gRPC call, by its content type.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status codes a proxy error becomes.
#[derive(Clone, Copy)]
enum GrpcStatus {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and
/// `%` itself.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => encoded.push(b as char),
            _ => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_its_cause_in_a_header() {
        let r = ProxyError::UnknownService("nope".into()).into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[REMORA_ERROR], "unknown-service");
        let r = ProxyError::BudgetExhausted(Box::new(ProxyError::ConnectFailed {
            endpoint: "127.0.0.1:1".into(),
            reason: "refused".into(),
        }))
        .into_response();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[REMORA_ERROR], "retry-budget-exhausted");
    }

    #[test]
    fn a_grpc_caller_gets_a_grpc_status() {
        let r = for_caller(
            true,
            ProxyError::Timeout(Duration::from_secs(1)).into_response(),
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()["grpc-message"], "no response within 1s");
        assert_eq!(r.headers()[REMORA_ERROR], "timeout");
        let r = for_caller(
            true,
            ProxyError::NoEndpoints("échos".into()).into_response(),
        );
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "service \"%C3%A9chos\" has no endpoints"
        );
        // An app's own answer is its own.
        let app = Response::new(crate::http::empty());
        assert!(for_caller(true, app).headers().get("grpc-status").is_none());
    }
}
