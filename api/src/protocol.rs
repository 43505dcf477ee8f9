//! The control-plane protocol: the JSON bodies of `remora-control`'s HTTP
//! API (docs/protocol.md), shared by the control plane that serves them and
//! the proxies that read them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mesh::{InboundPolicy, Protocol, Service};

/// The response header that carries a view's version (also in its body).
pub const VERSION_HEADER: &str = "remora-version";
/// How long a long-poll is held when the request names no `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait` a long-poll may ask for; longer asks are cut to it.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// A registration's lifetime when the request names none.
pub const DEFAULT_REGISTRATION_TTL_SECONDS: u64 = 30;
/// The longest a registration may live without renewal.
pub const MAX_REGISTRATION_TTL_SECONDS: u64 = 3600;

/// `GET /v1/outbound/{service}`: all a caller needs to send requests to
/// `service`: its routes and policies, and, for the service and every
/// service its routes split to, the endpoints from the file and from
/// registrations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundView {
    pub service: String,
    pub version: u64,
    pub trust_domain: String,
    /// `service` itself and each service named by one of its splits.
    pub services: BTreeMap<String, Service>,
    /// The control plane started moments ago and may not yet know every
    /// registered endpoint (registrations live in its memory only): a
    /// proxy keeps the endpoints it had that this view lacks, until a
    /// view without this flag comes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// `GET /v1/inbound/{service}`: the policy `service`'s own sidecars enforce
/// on calls to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundView {
    pub service: String,
    pub version: u64,
    pub trust_domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// What the service speaks: a `tcp` service's sidecars take every
    /// connection as an opaque stream, with no HTTP detection.
    #[serde(default, skip_serializing_if = "Protocol::is_default")]
    pub protocol: Protocol,
    pub policy: InboundPolicy,
}

/// `PUT /v1/registrations/{service}/{instance}`: an endpoint announcing
/// itself; it lives `ttl_seconds` unless renewed by another `PUT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub address: SocketAddr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The port of the app behind `address`, a sidecar's inbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<std::num::NonZeroU16>,
    #[serde(default = "default_registration_ttl")]
    pub ttl_seconds: u64,
}

fn default_registration_ttl() -> u64 {
    DEFAULT_REGISTRATION_TTL_SECONDS
}

/// `GET /v1/services`: every service the control plane knows, for people
/// and tools.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesListing {
    pub services: BTreeMap<String, ServiceStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStatus {
    /// The version of the service's outbound view.
    pub version: u64,
    /// Whether mesh.yaml names the service (else only registrations or
    /// Kubernetes do).
    pub in_config: bool,
    pub endpoints: Vec<EndpointStatus>,
    /// The addresses that stand for the whole service rather than one
    /// endpoint (a Kubernetes Service's ClusterIPs, at the port of the
    /// Service that the mesh serves): a connection that transparent mode
    /// intercepts on its way to one is for the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_addresses: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointStatus {
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<std::num::NonZeroU16>,
    pub source: EndpointSource,
    /// The registering instance, or for an endpoint from Kubernetes its
    /// pod (`NAMESPACE/NAME`); absent for endpoints from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub health: EndpointHealth,
    /// Seconds until a registration expires without renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointSource {
    File,
    Registration,
    /// An EndpointSlice of the service's Kubernetes Service.
    Kubernetes,
}

/// What the control plane knows of an endpoint's health. It probes
/// nothing itself: a registration is alive while it is renewed, and the
/// sidecars' own health checks and circuit breakers judge the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealth {
    /// Listed in the file; not judged by the control plane.
    Static,
    /// Registered and renewed within its TTL.
    Alive,
    /// Ready, as its EndpointSlice says (its pod's readiness): only ready
    /// endpoints of Kubernetes are served.
    Ready,
}

/// An error body of the API: what was wrong, for people and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Why other sidecars could not dial `address`, if they could not.
/// Loopback is taken: sidecars on one host (and tests) use it.
pub fn undialable(address: SocketAddr) -> Option<String> {
    let ip = address.ip().to_canonical();
    let why = if ip.is_unspecified() {
        format!("{ip} is the unspecified address, which a server listens on but no one dials; register the pod's own address (the proxy's --advertise or --pod-ip)")
    } else if ip == std::net::IpAddr::from(std::net::Ipv4Addr::BROADCAST) {
        format!("{ip} is the broadcast address")
    } else if ip.is_multicast() {
        format!("{ip} is a multicast address")
    } else if address.port() == 0 {
        "port 0 names no port".to_string()
    } else {
        return None;
    };
    Some(format!("the address {address} cannot be dialled: {why}"))
}

/// Instance names appear in URL paths and in `/v1/services`: a DNS-like
/// token (pod names, host names, `10.0.0.7-4143`).
pub fn is_valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_no_one_can_dial_are_refused_with_the_reason() {
        for (address, why) in [
            ("0.0.0.0:4143", "unspecified"),
            ("[::]:4143", "unspecified"),
            ("[::ffff:0.0.0.0]:4143", "unspecified"),
            ("127.0.0.1:0", "port 0"),
            ("10.0.0.7:0", "port 0"),
            ("255.255.255.255:80", "broadcast"),
            ("224.0.0.1:80", "multicast"),
            ("239.255.255.250:1900", "multicast"),
            ("[ff02::1]:80", "multicast"),
        ] {
            let address: SocketAddr = address.parse().unwrap();
            let e = undialable(address).unwrap_or_else(|| panic!("{address} was taken"));
            assert!(
                e.starts_with(&format!("the address {address} cannot be dialled: ")),
                "{e}"
            );
            assert!(e.contains(why), "{address}: {e}");
        }
        for address in [
            "127.0.0.1:4143",
            "[::1]:4143",
            "10.0.0.7:4143",
            "192.168.1.255:80",
            "[fd00::7]:4143",
        ] {
            assert_eq!(undialable(address.parse().unwrap()), None, "{address}");
        }
    }
}
