//! Which service a request is for: the authority it targets (absolute
//! URI, HTTP/2 `:authority`, or `Host`) and the mesh service that
//! authority names in any of its Kubernetes forms.

use http::uri::Authority;
use http::Request;

use crate::http::errors::ProxyError;

/// The authority the request is for, lower-cased: the absolute-form URI's
/// (as `http_proxy` clients send), the HTTP/2 `:authority`, or `Host`
/// when that is a valid authority; an error when it names two.
pub fn authority<B>(req: &Request<B>) -> Result<Option<Authority>, ProxyError> {
    crate::http::request_authority(req.uri(), req.version(), req.headers())
}

/// The service an authority names: `orders`, `orders:80`,
/// `orders.default`, `orders.default.svc` or
/// `orders.default.svc.cluster.local` all name `orders`.
pub fn service_name(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        // Not an IPv6 literal's colon.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// The mesh service an authority could name, if any: the host when it has
/// no dots, else `name` of `name.namespace[.svc[.cluster-domain]]`; never
/// an IP address.
pub fn mesh_service(authority: &str) -> Option<&str> {
    let host = service_name(authority);
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let Some((name, rest)) = host.split_once('.') else {
        return Some(host);
    };
    let mut parts = rest.split('.');
    let _namespace = parts.next()?;
    match parts.next() {
        None | Some("svc") => Some(name),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut req = Request::builder().uri(uri);
        if let Some(host) = host {
            req = req.header(http::header::HOST, host);
        }
        req.body(()).unwrap()
    }

    fn named(req: &Request<()>) -> Option<String> {
        authority(req).unwrap().map(|a| a.to_string())
    }

    #[test]
    fn the_absolute_uri_wins_over_host_and_both_are_lower_cased() {
        let req = request("http://Orders:8080/x", Some("payments"));
        assert_eq!(named(&req).unwrap(), "orders:8080");
        let req = request("/x", Some("Payments.Default"));
        assert_eq!(named(&req).unwrap(), "payments.default");
    }

    #[test]
    fn no_authority_without_an_absolute_uri_or_a_host() {
        assert_eq!(named(&request("/x", None)), None);
        assert_eq!(named(&request("/x", Some(""))), None);
    }

    #[test]
    fn a_request_that_names_two_authorities_is_refused() {
        let mut two_hosts = request("/x", Some("orders"));
        two_hosts
            .headers_mut()
            .append(http::header::HOST, "evil".parse().unwrap());
        assert!(authority(&two_hosts).is_err());
        // HTTP/2: `Host` may repeat `:authority`, never contradict it.
        let mut h2 = request("http://orders/x", Some("evil"));
        *h2.version_mut() = http::Version::HTTP_2;
        assert!(authority(&h2).is_err());
        h2.headers_mut()
            .insert(http::header::HOST, "Orders".parse().unwrap());
        assert_eq!(named(&h2).unwrap(), "orders");
    }

    #[test]
    fn service_names_drop_the_port_and_the_trailing_dot() {
        assert_eq!(service_name("orders"), "orders");
        assert_eq!(service_name("orders:80"), "orders");
        assert_eq!(
            service_name("orders.default.svc.cluster.local."),
            "orders.default.svc.cluster.local"
        );
        // An IPv6 literal's last group is not a port.
        assert_eq!(service_name("::1"), "::1");
        assert_eq!(service_name("orders:http"), "orders:http");
    }

    #[test]
    fn mesh_services_in_every_kubernetes_form() {
        for a in [
            "orders",
            "orders:80",
            "orders.default",
            "orders.default.svc",
            "orders.default.svc.cluster.local",
            "orders.default.svc.cluster.local.",
        ] {
            assert_eq!(mesh_service(a), Some("orders"), "{a}");
        }
        assert_eq!(mesh_service("orders.default.other.x"), None);
        for address in ["10.77.0.2:8080", "10.77.0.2", "[::1]:80", "[fd00::2]"] {
            assert_eq!(mesh_service(address), None, "{address}");
        }
        assert_eq!(mesh_service("orders."), Some("orders"));
    }
}
