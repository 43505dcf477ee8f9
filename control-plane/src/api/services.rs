//! `GET /v1/services`: every service, its outbound version and endpoints,
//! for people and tools.

use std::time::Instant;

use http::{Response, StatusCode};
use remora_server::Body;

use super::{json, Api};

pub fn list(api: &Api) -> Response<Body> {
    let listing = api.state.listing(Instant::now());
    let mut body = serde_json::to_vec_pretty(&listing).unwrap_or_default();
    body.push(b'\n');
    json(StatusCode::OK, body)
}
