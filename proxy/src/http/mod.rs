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
use remora_server::body::IdleTimeout;
pub use remora_server::body::{boxed, empty, full, Body, BoxError};

/// The caller's request body, its errors marked as the caller's so that a
/// failed send is not blamed on the endpoint, cut when it makes no
/// progress for `idle_limit` (a caller that stops halfway through).
pub fn from_caller(body: hyper::body::Incoming, idle_limit: std::time::Duration) -> Body {
    IdleTimeout::new(body, idle_limit)
        .map_err(|e| Box::new(errors::CallerBodyError(e)) as BoxError)
        .boxed_unsync()
}

/// `ADDRESS` as a URI authority, made once per endpoint rather than per request.
pub fn authority_of(address: std::net::SocketAddr) -> http::uri::Authority {
    http::uri::Authority::from_maybe_shared(Bytes::from(address.to_string()))
        .expect("a socket address is a valid authority")
}

/// The one authority a request names, lower-cased: its URI's (absolute
/// form, or HTTP/2's `:authority`), else its `Host` when that is a valid
/// one. It is the name that routes, that authorizes, and that the next
/// hop receives ([`version::attempt_head`]), so a request that names two
/// is refused (RFC 9112 §3.2, RFC 9113 §8.3.1): two `Host` headers, or an
/// HTTP/2 `Host` that disagrees with `:authority`. An HTTP/1 absolute-form
/// URI outranks `Host`, which is replaced.
pub fn request_authority(
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Result<Option<http::uri::Authority>, errors::ProxyError> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(errors::ProxyError::BadRequest("more than one Host header"));
    }
    let authority = match (uri.authority(), host) {
        (Some(a), Some(host)) if version == http::Version::HTTP_2 => {
            if !host.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                return Err(errors::ProxyError::BadRequest(
                    "Host disagrees with :authority",
                ));
            }
            a.clone()
        }
        (Some(a), _) => a.clone(),
        (None, Some(host)) => match http::uri::Authority::try_from(host.as_bytes()) {
            Ok(a) => a,
            Err(_) => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    // Copied again only in the rare case that it needs lower-casing.
    if authority.as_str().bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(authority.as_str().to_ascii_lowercase().parse().ok());
    }
    Ok(Some(authority))
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
