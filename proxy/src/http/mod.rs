//! HTTP building blocks shared by both directions: errors as responses,
//! header hygiene, replayable bodies, retries, upgrades and the upstream
//! clients. One concern per file. The server and the body type are
//! `remora_server`'s, which the control plane runs too.

pub mod client;
pub mod deadline;
pub mod errors;
pub mod headers;
pub mod replay;
pub mod retry;
pub mod tls;
pub mod upgrade;
pub mod version;

use bytes::Bytes;
use http_body_util::BodyExt;
pub use remora_server::body::{boxed, empty, full, Body, BoxError};

/// The caller's request body, its errors marked as the caller's so that a
/// failed send is not blamed on the endpoint.
pub fn from_caller(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(errors::CallerBodyError(e)) as BoxError)
        .boxed_unsync()
}

/// `ADDRESS` as a URI authority, made once per endpoint rather than per request.
pub fn authority_of(address: std::net::SocketAddr) -> http::uri::Authority {
    http::uri::Authority::from_maybe_shared(Bytes::from(address.to_string()))
        .expect("a socket address is a valid authority")
}

/// The authority a request names, lower-cased: its URI's (absolute form,
/// or HTTP/2's `:authority`), else its `Host` when that is a valid one.
pub fn request_authority(
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Option<http::uri::Authority> {
    let authority = match uri.authority() {
        Some(a) => a.clone(),
        None => http::uri::Authority::try_from(headers.get(http::header::HOST)?.as_bytes()).ok()?,
    };
    // Copied again only in the rare case that it needs lower-casing.
    if authority.as_str().bytes().any(|b| b.is_ascii_uppercase()) {
        return authority.as_str().to_ascii_lowercase().parse().ok();
    }
    Some(authority)
}

/// `http://AUTHORITY/path?query`: the clients pool connections by authority.
pub fn upstream_uri(authority: &http::uri::Authority, original: &http::Uri) -> http::Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    http::Uri::from_parts(parts).expect("scheme, authority and path make a valid URI")
}
