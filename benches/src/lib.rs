//! Fixtures shared by the benchmarks: meshes written as `mesh.yaml` text,
//! compiled by the proxy's own compiler, so a benchmark times exactly the
//! structures a running proxy reads on each request.

use std::fmt::Write as _;

use remora_api::LoadBalancer;
use remora_proxy::http::client::Clients;
use remora_proxy::outbound::balance::EndpointRegistry;
use remora_proxy::outbound::snapshot::{Compiler, Snapshot};

/// The service whose routes the routing benchmark matches against.
pub const ROUTED_SERVICE: &str = "orders";

/// Ten routes mixing every matcher a route can have: exact and prefix
/// paths, regexes, headers and methods. Only the last route is open to
/// every path, and it needs a header, so a request can miss them all.
pub const ROUTED_MESH: &str = r#"
services:
  orders:
    endpoints:
      - { address: 127.0.0.1:9001, labels: { version: v1 } }
      - { address: 127.0.0.1:9002, labels: { version: v1 } }
      - { address: 127.0.0.1:9003, labels: { version: v2 } }
    timeout: 5s
    retry: {}
    routes:
      - name: canary
        match: { path_prefix: /api/, headers: { x-canary: "1" }, methods: [GET, HEAD] }
        split: [ { labels: { version: v2 }, weight: 100 } ]
      - name: create-order
        match: { path: /orders, methods: [POST] }
      - name: order-by-id
        match: { path_regex: '/orders/[0-9]+' }
      - name: order-items
        match: { path_regex: '/orders/[0-9]+/items(/[0-9]+)?' }
      - name: search
        match: { path_prefix: /search/, methods: [GET] }
      - name: admin
        match: { path_prefix: /admin/, headers: { x-role: admin } }
      - name: health
        match: { path: /healthz }
      - name: grpc-orders
        match: { path_prefix: /orders.v1.Orders/, methods: [POST] }
      - name: static
        match: { path_prefix: /static/, methods: [GET, HEAD] }
      - name: tenant
        match: { path_prefix: /, headers: { x-tenant: acme } }
        split:
          - { labels: { version: v1 }, weight: 90 }
          - { labels: { version: v2 }, weight: 10 }
"#;

/// A mesh of `ROUTED_MESH` plus `others` more services, so that looking
/// a service up searches a table of realistic size.
pub fn routed_mesh(others: usize) -> String {
    let mut yaml = ROUTED_MESH.to_string();
    for i in 0..others {
        let port = 10_000 + i;
        let _ = write!(
            yaml,
            "  service-{i}:\n    endpoints: [ {{ address: 127.0.0.1:{port} }} ]\n"
        );
    }
    yaml
}

/// Every balancer, with its name in `mesh.yaml`.
pub const BALANCERS: [(LoadBalancer, &str); 4] = [
    (LoadBalancer::P2cEwma, "p2c-ewma"),
    (LoadBalancer::RoundRobin, "round-robin"),
    (LoadBalancer::LeastRequest, "least-request"),
    (LoadBalancer::RingHash, "ring-hash"),
];

/// The header `ring-hash` services hash on.
pub const HASH_HEADER: &str = "x-user-id";

/// The name of the service that balances over `endpoints` endpoints with `balancer`.
pub fn balanced_service(balancer: &str, endpoints: usize) -> String {
    format!("{balancer}-{endpoints}")
}

/// One service per balancer and endpoint count, each with no routes (so
/// one default route with one backend holding all its endpoints).
pub fn balanced_mesh(counts: &[usize]) -> String {
    let mut yaml = String::from("services:\n");
    for (_, balancer) in BALANCERS {
        for &n in counts {
            let _ = writeln!(yaml, "  {}:", balanced_service(balancer, n));
            let _ = writeln!(yaml, "    load_balancer: {balancer}");
            if balancer == "ring-hash" {
                let _ = writeln!(yaml, "    hash_on: {{ header: {HASH_HEADER} }}");
            }
            yaml.push_str("    endpoints:\n");
            for i in 0..n {
                // Distinct addresses across hosts and ports, as a real
                // service's pods would have.
                let _ = writeln!(
                    yaml,
                    "      - {{ address: 10.0.{}.{}:8080 }}",
                    i / 250,
                    i % 250 + 1
                );
            }
        }
    }
    yaml
}

/// The name of the push benchmark's `i`th service.
pub fn pushed_service(i: usize) -> String {
    format!("svc-{i}")
}

/// The push benchmark's mesh: `services` services, each with a static
/// endpoint and one route whose timeout is `timeout_ms`, so that changing
/// that number changes every service's outbound view.
pub fn pushed_mesh(services: usize, timeout_ms: u64) -> String {
    let mut yaml = String::from("services:\n");
    for i in 0..services {
        let _ = writeln!(yaml, "  {}:", pushed_service(i));
        let _ = writeln!(
            yaml,
            "    endpoints: [ {{ address: 10.1.{}.{}:8080 }} ]",
            i / 250,
            i % 250 + 1
        );
        let _ = writeln!(yaml, "    routes:");
        let _ = writeln!(yaml, "      - {{ name: default, timeout: {timeout_ms}ms }}");
    }
    yaml
}

/// Compiles `yaml` as the proxy does on each config change.
///
/// # Panics
///
/// When `yaml` is not a valid mesh: the fixtures are fixed text, so that
/// is a bug in the benchmark, and the problems are printed.
pub fn compile(yaml: &str) -> Snapshot {
    let mesh = remora_api::parse_mesh("bench.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let (endpoints, clients) = (EndpointRegistry::default(), Clients::default());
    Compiler {
        endpoints: &endpoints,
        clients: &clients,
        previous: None,
    }
    .compile(&mesh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixtures_are_valid_meshes() {
        let routed = compile(&routed_mesh(20));
        assert_eq!(routed.services[ROUTED_SERVICE].routes.len(), 10);
        assert_eq!(routed.services.len(), 21);
        let balanced = compile(&balanced_mesh(&[3, 100]));
        assert_eq!(balanced.services.len(), 8);
        let backend = balanced.services[&balanced_service("ring-hash", 100)].routes[0]
            .backends()
            .next()
            .map(|b| b.endpoints.len());
        assert_eq!(backend, Some(100));
    }

    #[test]
    fn the_push_mesh_sets_every_route_timeout() {
        let mesh = remora_api::parse_mesh("push.yaml", &pushed_mesh(10, 1234))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mesh.services.len(), 10);
        for service in mesh.services.values() {
            assert_eq!(
                service.routes[0].timeout,
                Some(remora_api::HumanDuration::from_millis(1234))
            );
        }
        assert_eq!(compile(&pushed_mesh(3, 1)).services.len(), 3);
    }
}
