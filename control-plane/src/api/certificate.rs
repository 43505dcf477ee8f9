//! `POST /v1/certificate`: a proxy's CSR, signed for the identity its
//! bearer token grants (see `ca`): `401` for a token that grants none,
//! `503` when Kubernetes could not be asked about it.

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use remora_server::{full, Body};

use super::{error, read_body, Api};
use crate::ca::Refusal;

/// A P-256 CSR is a few hundred bytes.
const MAX_CSR_BYTES: usize = 16 * 1024;
/// The media type of a PEM chain (RFC 8555).
const PEM_CHAIN: &str = "application/pem-certificate-chain";

pub async fn issue(api: &Api, req: Request<Incoming>) -> Response<Body> {
    let Some(authority) = &api.authority else {
        return error(
            StatusCode::NOT_FOUND,
            "identity is off (--insecure): this control plane issues no certificates",
        );
    };
    let bearer = match bearer_token(&req) {
        Ok(token) => token,
        Err(reason) => return error(StatusCode::UNAUTHORIZED, reason),
    };
    let body = match read_body(req, MAX_CSR_BYTES).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let Ok(csr) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body is not a PEM CSR: it is not text",
        );
    };
    let signed = match authority.identify(bearer.as_deref()).await {
        Ok(identity) => authority
            .sign(&identity, csr)
            .map(|chain| (identity, chain)),
        Err(refusal) => Err(refusal),
    };
    match signed {
        Ok((identity, chain)) => {
            tracing::info!(%identity, "certificate issued");
            let mut r = Response::new(full(chain));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PEM_CHAIN));
            r
        }
        Err(Refusal::Unauthorized(reason)) => {
            tracing::info!(%reason, "certificate refused");
            let mut r = error(StatusCode::UNAUTHORIZED, reason);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Err(Refusal::BadRequest(reason)) => error(StatusCode::BAD_REQUEST, reason),
        Err(Refusal::Unavailable(reason)) => {
            tracing::warn!(%reason, "certificate not issued: its token cannot be checked now");
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, reason);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// The token of `Authorization: Bearer TOKEN`, `None` when there is no
/// such header, or why the header is not one.
fn bearer_token<B>(req: &Request<B>) -> Result<Option<String>, String> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text".to_string())?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim().to_string()))
        }
        _ => Err("the Authorization header must be `Bearer TOKEN`".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.headers_mut()
                .insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        r
    }

    #[test]
    fn the_bearer_token_is_read_from_authorization() {
        assert_eq!(bearer_token(&with(None)), Ok(None));
        assert_eq!(
            bearer_token(&with(Some("Bearer abc"))),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            bearer_token(&with(Some("bearer  abc "))),
            Ok(Some("abc".into()))
        );
        assert!(bearer_token(&with(Some("Basic abc"))).is_err());
        assert!(bearer_token(&with(Some("Bearer "))).is_err());
    }
}
