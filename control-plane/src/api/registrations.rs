//! `PUT` and `DELETE /v1/registrations/{service}/{instance}`: endpoints
//! announcing themselves, renewing, and leaving.

use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use remora_api::load::is_valid_service_name;
use remora_api::protocol::{is_valid_instance_name, Registration, MAX_REGISTRATION_TTL_SECONDS};
use remora_server::Body;
use serde::Serialize;

use super::{error, json, read_body, Api};
use crate::state::Put;

/// A registration is a few hundred bytes; anything near this is a mistake.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The answer to a `PUT`: the registration as it now stands.
#[derive(Serialize)]
struct Registered<'a> {
    service: &'a str,
    instance: &'a str,
    #[serde(flatten)]
    registration: &'a Registration,
}

/// The answer to a `DELETE` of a registration that existed.
#[derive(Serialize)]
struct Deregistered<'a> {
    service: &'a str,
    instance: &'a str,
}

/// Why the names in the path are not acceptable, if they are not.
fn bad_names(service: &str, instance: &str) -> Option<String> {
    if !is_valid_service_name(service) {
        return Some(format!(
            "{service:?} is not a valid service name (lowercase letters, digits and '-', at most 63)"
        ));
    }
    if !is_valid_instance_name(instance) {
        return Some(format!(
            "{instance:?} is not a valid instance name (letters, digits, '-', '.' and '_', at most 253)"
        ));
    }
    None
}

pub async fn put(
    api: &Api,
    service: &str,
    instance: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if let Some(e) = bad_names(service, instance) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let body = match read_body(req, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let reg: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a registration ({{\"address\": \"IP:PORT\", \"labels\": {{...}}, \"ttl_seconds\": N}}): {e}"),
            )
        }
    };
    if !(1..=MAX_REGISTRATION_TTL_SECONDS).contains(&reg.ttl_seconds) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "ttl_seconds must be within 1 and {MAX_REGISTRATION_TTL_SECONDS}, not {}",
                reg.ttl_seconds
            ),
        );
    }
    match api.state.register(service, instance, &reg, Instant::now()) {
        Put::New => {
            tracing::info!(%service, %instance, address = %reg.address, ttl_seconds = reg.ttl_seconds, "registered")
        }
        Put::Changed => {
            tracing::info!(%service, %instance, address = %reg.address, "registration changed")
        }
        Put::Renewed => tracing::debug!(%service, %instance, "registration renewed"),
    }
    let echo = Registered {
        service,
        instance,
        registration: &reg,
    };
    json(
        StatusCode::OK,
        serde_json::to_vec(&echo).unwrap_or_default(),
    )
}

pub fn delete(api: &Api, service: &str, instance: &str) -> Response<Body> {
    if let Some(e) = bad_names(service, instance) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if api.state.deregister(service, instance) {
        tracing::info!(%service, %instance, "deregistered");
        let body = Deregistered { service, instance };
        json(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no registration of {service:?} by instance {instance:?}"),
        )
    }
}
