//! The HTTP version each hop speaks: a request head in a version, and
//! `remora-orig-proto` between sidecars, which carry an app's HTTP/1.1
//! request as HTTP/2 over mutual TLS and restore it on the far side.

use http::{HeaderMap, Method, Request, Version};

/// Says that a request carried as HTTP/2 between sidecars was HTTP/1.1
/// when the app sent it, so that the far side restores it.
pub const ORIG_PROTO: &str = "remora-orig-proto";
/// The one value of [`ORIG_PROTO`].
pub const ORIG_PROTO_HTTP1: &str = "HTTP/1.1";

/// The request head of one try upstream (or of the hop to the app), in
/// the version spoken there. The URI is the caller's to set: it names the
/// endpoint the head goes to.
pub fn attempt_head(method: &Method, headers: HeaderMap, http2: bool) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
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
        let head = attempt_head(&Method::PUT, headers.clone(), true);
        assert_eq!(
            (head.method, head.version, head.headers),
            (Method::PUT, Version::HTTP_2, headers)
        );
        assert_eq!(
            attempt_head(&Method::GET, HeaderMap::new(), false).version,
            Version::HTTP_11
        );
    }
}
