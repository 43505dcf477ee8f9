//! The outbound view compiled from a mesh config: for each service, its
//! routes with matchers, backends with endpoints, balancers and clients,
//! and pre-resolved metric labels. Compiled once per config change and
//! swapped in whole, so a request reads one consistent view.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use remora_api::{
    effective_timeout, CircuitBreaker, Fault, HealthCheck, Mesh, Protocol, RetryPolicy, SpiffeId,
};

use super::balance::{Balancer, Endpoint, EndpointRegistry};
use super::routes::Matcher;
use super::target;
use crate::http::client::{ClientSettings, Clients};
use crate::http::retry::Retry;
use crate::metrics::{Direction, RouteLabels};

/// The route name of a service that declares no routes.
pub const DEFAULT_ROUTE: &str = "default";
/// The route name of requests and streams sent by their original
/// destination (transparent mode).
pub const ORIGINAL_DST_ROUTE: &str = "original-dst";

#[derive(Default)]
pub struct Snapshot {
    pub services: HashMap<String, Arc<Service>>,
}

pub struct Service {
    pub name: Arc<str>,
    /// `protocol: tcp`: reached by opaque streams, through a TCP listener
    /// of its own, never by HTTP requests.
    pub opaque: bool,
    pub routes: Vec<Route>,
    /// Every endpoint of the service, for health checks and gauges.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The app's port behind each meshed endpoint that tells it: all its
    /// sidecar serves, for transparent mode.
    app_ports: HashMap<SocketAddr, NonZeroU16>,
    pub health_check: Option<HealthCheck>,
    pending: Arc<Pending>,
}

pub struct Route {
    pub labels: RouteLabels,
    pub matcher: Matcher,
    backends: Vec<(u32, Backend)>,
    total_weight: u32,
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    /// Resends requests that never reached an endpoint, whatever `retry`.
    pub unsent: Retry,
    pub fault: Option<Fault>,
}

/// Where a share of a route's traffic goes: a subset of one service's endpoints.
pub struct Backend {
    pub service: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    pub hash_header: Option<HeaderName>,
    /// The policy of `breaker`, which feeds on each try's outcome; `None`
    /// when the service turned it off.
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// Requests waiting on a service, bounded by `max_pending_requests`.
pub struct Pending {
    count: AtomicU32,
    max: u32,
}

/// Holds one slot of a service's pending requests.
pub struct PendingSlot(Arc<Pending>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service {
    /// A slot for one more request, or `None` when the service is full.
    pub fn admit(&self) -> Option<PendingSlot> {
        let previous = self.pending.count.fetch_add(1, Ordering::Relaxed);
        let slot = PendingSlot(self.pending.clone());
        (previous < self.pending.max).then_some(slot)
    }

    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(method, path, headers))
    }
}

impl Route {
    /// A backend by weight.
    pub fn pick_backend(&self) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let r = fastrand::u32(..self.total_weight);
        self.backends
            .iter()
            .find(|(cumulative, _)| r < *cumulative)
            .map(|(_, b)| b)
    }

    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().map(|(_, b)| b)
    }
}

impl Backend {
    pub fn pick(
        &self,
        hash_key: Option<&[u8]>,
        avoid: Option<&Arc<Endpoint>>,
    ) -> Option<Arc<Endpoint>> {
        self.balancer.pick(&self.endpoints, hash_key, avoid)
    }
}

/// What compiling needs besides the config: state kept across reloads.
pub struct Compiler<'a> {
    pub endpoints: &'a EndpointRegistry,
    pub clients: &'a Clients,
    pub previous: Option<&'a Snapshot>,
}

impl Compiler<'_> {
    pub fn compile(&self, mesh: &Mesh) -> Snapshot {
        let mut services = HashMap::new();
        for name in mesh.services.keys() {
            let previous = self.previous.and_then(|p| p.services.get(name));
            services.insert(name.clone(), Arc::new(self.service(mesh, name, previous)));
        }
        let snapshot = Snapshot { services };
        self.endpoints.retain_used();
        snapshot
    }

    fn service(&self, mesh: &Mesh, name: &str, previous: Option<&Arc<Service>>) -> Service {
        let svc = &mesh.services[name];
        let max_pending = svc.circuit_breaker.max_pending_requests.unwrap_or(u32::MAX);
        let pending = match previous {
            Some(p) if p.pending.max == max_pending => p.pending.clone(),
            _ => Arc::new(Pending {
                count: AtomicU32::new(0),
                max: max_pending,
            }),
        };
        let previous_route = |route: &str| {
            previous.and_then(|p| p.routes.iter().find(|r| &*r.labels.route == route))
        };
        let retry_of = |route: &str, policy: Option<&RetryPolicy>| {
            let old = previous_route(route).and_then(|r| r.retry.as_ref());
            Some(Retry::reuse_or_new(policy?, old))
        };
        let unsent_of = |route: &str| Retry::unsent(previous_route(route).map(|r| &r.unsent));
        let routes = if svc.routes.is_empty() {
            let backends = vec![(1, self.backend(mesh, name, None))];
            vec![Route {
                labels: RouteLabels::new(Direction::Outbound, name, DEFAULT_ROUTE),
                matcher: Matcher::any(),
                backends,
                total_weight: 1,
                timeout: effective_timeout(svc.timeout).map(Into::into),
                retry: retry_of(DEFAULT_ROUTE, svc.retry.as_ref()),
                unsent: unsent_of(DEFAULT_ROUTE),
                fault: None,
            }]
        } else {
            svc.routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let route_name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
                    let mut total = 0;
                    let backends: Vec<(u32, Backend)> = if r.split.is_empty() {
                        total = 1;
                        vec![(1, self.backend(mesh, name, None))]
                    } else {
                        r.split
                            .iter()
                            .filter(|s| s.weight > 0)
                            .map(|s| {
                                total += s.weight;
                                let target = s.service.as_deref().unwrap_or(name);
                                (total, self.backend(mesh, target, Some(&s.labels)))
                            })
                            .collect()
                    };
                    Route {
                        labels: RouteLabels::new(Direction::Outbound, name, &route_name),
                        matcher: Matcher::compile(&r.matches),
                        backends,
                        total_weight: total,
                        timeout: effective_timeout(r.timeout.or(svc.timeout)).map(Into::into),
                        retry: retry_of(&route_name, r.retry.as_ref().or(svc.retry.as_ref())),
                        unsent: unsent_of(&route_name),
                        fault: r.fault,
                    }
                })
                .collect()
        };
        let endpoints = svc
            .endpoints
            .iter()
            .map(|e| self.endpoint(mesh, svc, e))
            .collect();
        let app_ports = svc
            .endpoints
            .iter()
            .filter_map(|e| Some((e.address, e.app_port?)))
            .collect();
        Service {
            name: name.into(),
            opaque: svc.protocol == Protocol::Tcp,
            routes,
            endpoints,
            app_ports,
            health_check: svc.health_check.clone(),
            pending,
        }
    }

    /// The endpoints of `service` whose labels include all of `labels`.
    fn backend(
        &self,
        mesh: &Mesh,
        service: &str,
        labels: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Backend {
        let svc = &mesh.services[service];
        let endpoints: Vec<Arc<Endpoint>> = svc
            .endpoints
            .iter()
            .filter(|e| {
                labels.is_none_or(|want| want.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            })
            .map(|e| self.endpoint(mesh, svc, e))
            .collect();
        Backend {
            service: service.into(),
            balancer: Balancer::new(svc.load_balancer, &endpoints),
            endpoints,
            hash_header: svc
                .hash_on
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.header.as_str().as_bytes()).ok()),
            circuit_breaker: Some(svc.circuit_breaker).filter(|cb| cb.enabled),
        }
    }

    /// The state of one of `svc`'s endpoints, with its clients as the
    /// service's settings say, kept from the previous config if it had it.
    fn endpoint(
        &self,
        mesh: &Mesh,
        svc: &remora_api::Service,
        e: &remora_api::Endpoint,
    ) -> Arc<Endpoint> {
        let settings = ClientSettings {
            connect_timeout: svc.connect_timeout.into(),
            idle_timeout: svc.idle_timeout.into(),
            http2: svc.protocol.is_http2(),
        };
        let identity = identity(mesh, e);
        self.endpoints.get(
            self.clients,
            settings,
            e.address,
            &e.labels,
            identity.as_ref(),
        )
    }
}

/// The identity an endpoint must prove, resolved in the mesh's trust
/// domain (the config was validated, so it resolves).
fn identity(mesh: &Mesh, endpoint: &remora_api::Endpoint) -> Option<SpiffeId> {
    let name = endpoint.identity.as_deref()?;
    SpiffeId::resolve(name, &mesh.trust_domain).ok()
}

impl Snapshot {
    /// Each service's endpoints and where they stand, for `/config`.
    pub fn endpoint_status(&self) -> serde_json::Value {
        let now = std::time::Instant::now();
        let services: BTreeMap<&str, Vec<serde_json::Value>> = self
            .services
            .iter()
            .map(|(name, s)| {
                (
                    name.as_str(),
                    s.endpoints.iter().map(|e| e.status(now)).collect(),
                )
            })
            .collect();
        serde_json::json!(services)
    }

    /// The service `authority` names, in any of its Kubernetes forms.
    pub fn lookup(&self, authority: &str) -> Option<&Arc<Service>> {
        self.services.get(target::mesh_service(authority)?)
    }

    /// A service with an endpoint at `ip` (on any port: a meshed endpoint
    /// is its sidecar's inbound), and that endpoint.
    pub fn endpoint_at(&self, ip: std::net::IpAddr) -> Option<(&Arc<Service>, &Arc<Endpoint>)> {
        self.services.values().find_map(|service| {
            let endpoint = service.endpoints.iter().find(|e| e.address.ip() == ip)?;
            Some((service, endpoint))
        })
    }

    /// The mesh endpoint that serves `destination`, a pod's IP and port: an
    /// endpoint at that IP whose app is at that port, or that does not
    /// say where its app is. Another port of a meshed pod is not its
    /// sidecar's to serve.
    pub fn endpoint_serving(
        &self,
        destination: SocketAddr,
    ) -> Option<(&Arc<Service>, &Arc<Endpoint>)> {
        let (service, endpoint) = self.endpoint_at(destination.ip())?;
        match service.app_ports.get(&endpoint.address) {
            Some(app) if app.get() != destination.port() => None,
            _ => Some((service, endpoint)),
        }
    }
}

impl Service {
    /// A service of one endpoint, under `name`: where a connection that
    /// transparent mode intercepted goes, by its original destination. No
    /// policy of a route applies; a try that never reached the endpoint is
    /// still resent.
    pub fn to_one(name: &str, endpoint: Arc<Endpoint>, opaque: bool) -> Service {
        let backend = Backend {
            service: name.into(),
            balancer: Balancer::new(remora_api::LoadBalancer::RoundRobin, &[]),
            endpoints: vec![endpoint.clone()],
            hash_header: None,
            circuit_breaker: None,
        };
        Service {
            name: name.into(),
            opaque,
            routes: vec![Route {
                labels: RouteLabels::new(Direction::Outbound, name, ORIGINAL_DST_ROUTE),
                matcher: Matcher::any(),
                backends: vec![(1, backend)],
                total_weight: 1,
                timeout: None,
                retry: None,
                unsent: Retry::unsent(None),
                fault: None,
            }],
            endpoints: vec![endpoint],
            app_ports: HashMap::new(),
            health_check: None,
            pending: Arc::new(Pending {
                count: AtomicU32::new(0),
                max: u32::MAX,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Snapshot {
        let mesh = remora_api::parse_mesh("test", yaml).unwrap();
        let (endpoints, clients) = (EndpointRegistry::default(), Clients::default());
        Compiler {
            endpoints: &endpoints,
            clients: &clients,
            previous: None,
        }
        .compile(&mesh)
    }

    #[tokio::test]
    async fn a_lookup_finds_the_service_an_authority_names() {
        // Every form an authority takes is `target`'s to test.
        let s = compile("services:\n  orders: {}\n");
        for a in ["orders:80", "orders.default.svc.cluster.local"] {
            assert!(s.lookup(a).is_some(), "{a}");
        }
        for a in ["order", "orders.default.other.x", "payments:80"] {
            assert!(s.lookup(a).is_none(), "{a}");
        }
    }

    #[tokio::test]
    async fn splits_pick_backends_by_weight_and_label_subsets() {
        let s = compile(
            "services:
  a:
    endpoints:
      - { address: 127.0.0.1:1, labels: { version: v1 } }
      - { address: 127.0.0.1:2, labels: { version: v2 } }
    routes:
      - split:
          - { labels: { version: v1 }, weight: 3 }
          - { labels: { version: v2 }, weight: 1 }
          - { service: b, weight: 0 }
  b:
    endpoints: [ { address: 127.0.0.1:3 } ]
",
        );
        let route = &s.services["a"].routes[0];
        assert_eq!(route.backends().count(), 2, "a zero weight sends nothing");
        let mut v1 = 0;
        for _ in 0..4000 {
            let b = route.pick_backend().unwrap();
            assert_eq!(b.endpoints.len(), 1);
            if b.endpoints[0].address.port() == 1 {
                v1 += 1;
            }
        }
        assert!((2700..3300).contains(&v1), "{v1} of 4000 to a 75% backend");
    }

    #[tokio::test]
    async fn max_pending_requests_bounds_admission() {
        let s = compile("services:\n  a:\n    circuit_breaker: { max_pending_requests: 2 }\n");
        let svc = &s.services["a"];
        let one = svc.admit().unwrap();
        let _two = svc.admit().unwrap();
        assert!(svc.admit().is_none());
        drop(one);
        assert!(svc.admit().is_some());
    }

    mod properties {
        //! A service's routes are tried in order and the first that
        //! matches takes the request, checked against a model of the
        //! rules docs/config.md gives.

        use proptest::prelude::*;

        use super::*;

        /// A route's match, written from small alphabets so that routes
        /// often overlap.
        #[derive(Clone, Debug)]
        struct Match {
            path: Option<(&'static str, String)>,
            method: Option<&'static str>,
            header: Option<&'static str>,
        }

        impl Match {
            fn yaml(&self) -> String {
                let mut parts = Vec::new();
                if let Some((kind, p)) = &self.path {
                    parts.push(format!("{kind}: '{p}'"));
                }
                if let Some(m) = self.method {
                    parts.push(format!("methods: [{m}]"));
                }
                if let Some(v) = self.header {
                    parts.push(format!("headers: {{ x-a: '{v}' }}"));
                }
                format!("{{ {} }}", parts.join(", "))
            }

            /// The documented rules, written out for this alphabet.
            fn holds(&self, method: &str, path: &str, header: Option<&str>) -> bool {
                let path_ok = match &self.path {
                    None => true,
                    Some(("path", p)) => path == p,
                    Some(("path_prefix", p)) => path.starts_with(p.as_str()),
                    // `/[ab]*` anchored: a slash, then only a and b.
                    Some(_) => path
                        .strip_prefix('/')
                        .is_some_and(|rest| rest.chars().all(|c| c == 'a' || c == 'b')),
                };
                path_ok
                    && self.method.is_none_or(|m| m == method)
                    && self.header.is_none_or(|v| header == Some(v))
            }
        }

        /// Cases per property; `PROPTEST_CASES` in the environment runs
        /// as many as it says.
        fn config() -> ProptestConfig {
            match std::env::var_os("PROPTEST_CASES") {
                Some(_) => ProptestConfig::default(),
                None => ProptestConfig::with_cases(128),
            }
        }

        fn path() -> impl Strategy<Value = String> {
            "/[ab/]{0,4}"
        }

        fn a_match() -> impl Strategy<Value = Match> {
            let path = prop_oneof![
                Just(None),
                path().prop_map(|p| Some(("path", p))),
                path().prop_map(|p| Some(("path_prefix", p))),
                Just(Some(("path_regex", "/[ab]*".to_string()))),
            ];
            let method = prop::option::of(prop::sample::select(vec!["GET", "POST"]));
            let header = prop::option::of(prop::sample::select(vec!["0", "1"]));
            (path, method, header).prop_map(|(path, method, header)| Match {
                path,
                method,
                header,
            })
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn the_first_matching_route_takes_the_request(
                matches in prop::collection::vec(a_match(), 0..5),
                method in prop::sample::select(vec!["GET", "POST"]),
                path in path(),
                header in prop::option::of(prop::sample::select(vec!["0", "1"])),
            ) {
                let routes: String = matches.iter().map(|m| format!("      - match: {}\n", m.yaml())).collect();
                let yaml = if matches.is_empty() {
                    "services:\n  a: {}\n".to_string()
                } else {
                    format!("services:\n  a:\n    routes:\n{routes}")
                };
                let snapshot = compile(&yaml);
                let mut headers = http::HeaderMap::new();
                if let Some(v) = header {
                    headers.insert("x-a", http::HeaderValue::from_static(v));
                }
                let taken = snapshot.services["a"]
                    .route(&method.parse().unwrap(), &path, &headers)
                    .map(|r| r.labels.route.to_string());
                let want = if matches.is_empty() {
                    Some(DEFAULT_ROUTE.to_string())
                } else {
                    matches
                        .iter()
                        .position(|m| m.holds(method, &path, header))
                        .map(|i| format!("route-{i}"))
                };
                prop_assert_eq!(taken, want, "{}", yaml);
            }
        }
    }
}
