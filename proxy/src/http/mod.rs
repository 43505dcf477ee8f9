//! HTTP building blocks shared by both directions: the body type, errors as
//! responses, header hygiene, replayable bodies, retries, the server and the
//! upstream clients. One concern per file.

pub mod client;
pub mod errors;
pub mod headers;
pub mod replay;
pub mod retry;
pub mod server;
pub mod smuggling;
pub mod upgrade;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type that flows through the proxy in both directions.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The caller's request body, its errors marked as the caller's so that a
/// failed send is not blamed on the endpoint.
pub fn from_caller(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(errors::CallerBodyError(e)) as BoxError)
        .boxed_unsync()
}

/// Boxes any body whose errors can be boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
