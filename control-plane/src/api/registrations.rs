//! `PUT` and `DELETE /v1/registrations/{service}/{instance}`: endpoints
//! announcing themselves, renewing, and leaving; what a registration may
//! carry (an address that can be dialled, Kubernetes labels) and how much
//! one registrant may register (the quotas).

use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use remora_api::labels::check_labels;
use remora_api::load::is_valid_service_name;
use remora_api::protocol::{is_valid_instance_name, Registration, MAX_REGISTRATION_TTL_SECONDS};
use remora_server::serve::Peer;
use remora_server::Body;
use serde::Serialize;

use super::{error, json, read_body, Api};
use crate::state::{OverQuota, Put, Registrant};

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

/// The answer to a `PUT` past a quota: `error` says it in words, the rest
/// for tools.
#[derive(Serialize)]
struct QuotaExceeded {
    error: String,
    /// Which quota: `instances-per-service` or `services-per-identity`.
    quota: &'static str,
    /// Its value, reached.
    limit: usize,
    /// The flag of `remora-control serve` that sets it.
    flag: &'static str,
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

/// Who is registering: the identity of the caller's certificate, or, with
/// identity off, the address it connects from (an IPv4 caller on a
/// dual-stack listener counts by its IPv4 address).
fn registrant(peer: &Peer) -> Registrant {
    match &peer.identity {
        Some(identity) => Registrant::Identity(identity.clone()),
        None => Registrant::Address(peer.addr.ip().to_canonical()),
    }
}

/// What the `403` of a `PUT` past a quota says. Kubernetes answers a
/// quota the same way (`403 exceeded quota`): unlike a rate limit
/// (`429`), waiting alone does not help; an instance must leave or the
/// quota be raised.
fn quota_exceeded(e: &OverQuota) -> QuotaExceeded {
    let (quota, flag, env) = match e {
        OverQuota::InstancesPerService { .. } => (
            "instances-per-service",
            "--max-instances-per-service",
            "REMORA_MAX_INSTANCES_PER_SERVICE",
        ),
        OverQuota::ServicesPerRegistrant { .. } => (
            "services-per-identity",
            "--max-services-per-identity",
            "REMORA_MAX_SERVICES_PER_IDENTITY",
        ),
    };
    QuotaExceeded {
        error: format!(
            "{e} ({flag}); raise the control plane's {flag} (or {env}), or wait until some leave. Renewals of registered instances are always taken"
        ),
        quota,
        limit: e.limit(),
        flag,
    }
}

pub async fn put(
    api: &Api,
    service: &str,
    instance: &str,
    req: Request<Incoming>,
    peer: &Peer,
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
                format!("the body is not a registration ({{\"address\": \"IP:PORT\", \"labels\": {{...}}, \"app_port\": PORT, \"ttl_seconds\": N}}): {e}"),
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
    if let Some(why) = remora_api::protocol::undialable(reg.address) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    if let Err(e) = check_labels(&reg.labels) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let registrant = registrant(peer);
    match api
        .state
        .register(&registrant, service, instance, &reg, Instant::now())
    {
        Ok(Put::New) => {
            tracing::info!(%service, %instance, address = %reg.address, ttl_seconds = reg.ttl_seconds, %registrant, "registered")
        }
        Ok(Put::Changed) => {
            tracing::info!(%service, %instance, address = %reg.address, "registration changed")
        }
        Ok(Put::Renewed) => tracing::debug!(%service, %instance, "registration renewed"),
        Err(e) => {
            tracing::warn!(%service, %instance, %registrant, error = %e, "registration refused: over quota");
            let body = serde_json::to_vec(&quota_exceeded(&e)).unwrap_or_default();
            return json(StatusCode::FORBIDDEN, body);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_count_by_identity_or_else_by_address() {
        let id = remora_api::SpiffeId::resolve("orders", "cluster.local").unwrap();
        let peer = |addr: &str, identity: Option<remora_api::SpiffeId>| Peer {
            addr: addr.parse().unwrap(),
            identity,
            original_dst: None,
        };
        assert_eq!(
            registrant(&peer("10.0.0.7:50000", Some(id.clone()))),
            Registrant::Identity(id)
        );
        // Another port of the same address is the same caller, and so is
        // an IPv4 caller on a dual-stack listener.
        let v4 = Registrant::Address("10.0.0.7".parse().unwrap());
        assert_eq!(registrant(&peer("10.0.0.7:50001", None)), v4);
        assert_eq!(registrant(&peer("[::ffff:10.0.0.7]:50002", None)), v4);
    }

    #[test]
    fn a_quota_answer_names_the_limit_its_value_and_its_flag() {
        let answer = |e: &OverQuota| serde_json::to_value(quota_exceeded(e)).unwrap();
        let e = OverQuota::InstancesPerService {
            service: "orders".to_string(),
            limit: 1000,
        };
        assert_eq!(
            answer(&e),
            serde_json::json!({
                "error": "orders already has 1000 registered instances, the most allowed (--max-instances-per-service); raise the control plane's --max-instances-per-service (or REMORA_MAX_INSTANCES_PER_SERVICE), or wait until some leave. Renewals of registered instances are always taken",
                "quota": "instances-per-service",
                "limit": 1000,
                "flag": "--max-instances-per-service",
            })
        );
        let e = OverQuota::ServicesPerRegistrant {
            registrant: Registrant::Address("10.0.0.7".parse().unwrap()),
            limit: 100,
        };
        let a = answer(&e);
        assert_eq!(
            (&a["quota"], &a["limit"], &a["flag"]),
            (
                &serde_json::json!("services-per-identity"),
                &serde_json::json!(100),
                &serde_json::json!("--max-services-per-identity")
            )
        );
        assert!(
            a["error"].as_str().unwrap().starts_with(
                "the caller at 10.0.0.7 already has instances of 100 services registered, the most allowed (--max-services-per-identity); raise the control plane's --max-services-per-identity (or REMORA_MAX_SERVICES_PER_IDENTITY)"
            ),
            "{a}"
        );
    }
}
