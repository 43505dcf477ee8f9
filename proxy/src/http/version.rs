//! The HTTP version each hop speaks: a request head in a version, and
//! `remora-orig-proto` between sidecars, which carry an app's HTTP/1.1
//! request as HTTP/2 over mutual TLS and restore it on the far side.

use http::uri::Authority;
use http::{header, HeaderMap, HeaderValue, Method, Request, Uri, Version};

/// Says that a request carried as HTTP/2 between sidecars was HTTP/1.1
/// when the app sent it, so that the far side restores it.
pub const ORIG_PROTO: &str = "remora-orig-proto";
/// The one value of [`ORIG_PROTO`].
pub const ORIG_PROTO_HTTP1: &str = "HTTP/1.1";

/// The request head of one try upstream (or of the hop to the app), in
/// the version spoken there, for `authority` (the service as the caller
/// named it) and the path of `uri`. In HTTP/2 the authority is
/// `:authority` and no `host` may disagree with it (RFC 9113 §8.3.1); in
/// HTTP/1.1 it is `Host`, replacing any the caller sent: the next hop acts
/// on the name that routed and authorized the request.
pub fn attempt_head(
    method: &Method,
    uri: &Uri,
    authority: &Authority,
    mut headers: HeaderMap,
    http2: bool,
) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = super::upstream_uri(authority, uri);
    if http2 {
        *req.version_mut() = Version::HTTP_2;
        headers.remove(header::HOST);
    } else {
        *req.version_mut() = Version::HTTP_11;
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(header::HOST, host);
        }
    }
    *req.headers_mut() = headers;
    req.into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_carries_its_method_headers_and_version() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "1".parse().unwrap());
        let (uri, web) = (Uri::from_static("/a?b"), Authority::from_static("web"));
        let head = attempt_head(&Method::PUT, &uri, &web, headers.clone(), true);
        assert_eq!(
            (head.method, head.version, head.headers),
            (Method::PUT, Version::HTTP_2, headers)
        );
        assert_eq!(head.uri, "http://web/a?b");
        let head = attempt_head(&Method::GET, &uri, &web, HeaderMap::new(), false);
        assert_eq!(head.version, Version::HTTP_11);
    }

    #[test]
    fn http2_has_the_authority_and_no_host_http1_has_a_host() {
        let (uri, web) = (Uri::from_static("/"), Authority::from_static("web:8080"));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "elsewhere".parse().unwrap());
        let head = attempt_head(&Method::GET, &uri, &web, headers.clone(), true);
        assert_eq!(head.uri.authority(), Some(&web));
        assert!(head.headers.get(header::HOST).is_none());
        let head = attempt_head(&Method::GET, &uri, &web, headers, false);
        assert_eq!(
            head.headers[header::HOST],
            "web:8080",
            "the name that routed replaces the caller's Host"
        );
        let head = attempt_head(&Method::GET, &uri, &web, HeaderMap::new(), false);
        assert_eq!(head.headers[header::HOST], "web:8080");
    }
}
