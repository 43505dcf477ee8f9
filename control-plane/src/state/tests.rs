//! The merged state: versions move only with content, a change wakes
//! exactly the watchers of what it changed, registrations expire.

use std::time::Duration;

use remora_api::protocol::{InboundView, OutboundView};

use super::*;

const FIRST_VERSION: u64 = 1_764_070_000_000;

fn mesh(text: &str) -> Arc<Mesh> {
    Arc::new(remora_api::parse_mesh("mesh.yaml", text).unwrap())
}

fn state(text: &str) -> State {
    let s = State::new(FIRST_VERSION, Gauge::default(), Quotas::default());
    s.set_mesh(mesh(text));
    s
}

/// Registers as one sidecar would, under the default quotas.
fn register(s: &State, service: &str, instance: &str, reg: &Registration, now: Instant) -> Put {
    let sidecar = Registrant::Address(std::net::Ipv4Addr::LOCALHOST.into());
    s.register(&sidecar, service, instance, reg, now).unwrap()
}

fn reg(address: &str, ttl_seconds: u64) -> Registration {
    Registration {
        address: address.parse().unwrap(),
        labels: [("version".to_string(), "v2".to_string())].into(),
        app_port: None,
        ttl_seconds,
    }
}

fn outbound(s: &State, name: &str) -> OutboundView {
    let p = s.current(Kind::Outbound, name);
    serde_json::from_slice(p.body.as_ref().expect("the service exists")).unwrap()
}

const MESH: &str = "\
services:
  orders:
    identity: orders
    routes:
      - split: [ { weight: 9 }, { service: orders-next, weight: 1 } ]
  orders-next:
    endpoints: [ { address: 127.0.0.1:9101 } ]
  users:
    endpoints: [ { address: 127.0.0.1:9201 } ]
";

#[test]
fn versions_start_at_the_first_and_grow_with_each_change() {
    let s = state(MESH);
    let versions: BTreeSet<u64> = ["orders", "orders-next", "users"]
        .iter()
        .flat_map(|n| [Kind::Outbound, Kind::Inbound].map(|k| s.current(k, n).version))
        .collect();
    assert_eq!(versions.len(), 6, "every view has its own version");
    assert!(versions.iter().all(|v| *v >= FIRST_VERSION), "{versions:?}");
    let before = s.current(Kind::Outbound, "orders-next").version;
    register(
        &s,
        "orders-next",
        "a",
        &reg("127.0.0.1:1", 30),
        Instant::now(),
    );
    assert!(s.current(Kind::Outbound, "orders-next").version > before);
}

#[test]
fn the_outbound_view_holds_the_service_and_its_split_targets_with_their_endpoints() {
    let s = state(MESH);
    register(
        &s,
        "orders",
        "pod-1",
        &reg("127.0.0.1:4143", 30),
        Instant::now(),
    );
    let view = outbound(&s, "orders");
    assert_eq!(view.service, "orders");
    assert_eq!(view.trust_domain, "cluster.local");
    assert_eq!(
        view.services.keys().collect::<Vec<_>>(),
        ["orders", "orders-next"]
    );
    let orders = &view.services["orders"];
    assert_eq!(orders.endpoints.len(), 1);
    // A registered endpoint of a service with an identity carries it.
    assert_eq!(orders.endpoints[0].identity.as_deref(), Some("orders"));
    assert_eq!(orders.endpoints[0].labels["version"], "v2");
    assert_eq!(view.version, s.current(Kind::Outbound, "orders").version);

    // Static endpoints first, then registered ones.
    register(
        &s,
        "orders-next",
        "b",
        &reg("127.0.0.1:2", 30),
        Instant::now(),
    );
    let next = &outbound(&s, "orders").services["orders-next"];
    let addresses: Vec<String> = next
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(addresses, ["127.0.0.1:9101", "127.0.0.1:2"]);
    assert_eq!(next.endpoints[1].identity, None);
}

#[test]
fn versions_do_not_move_when_the_content_does_not() {
    let s = state(MESH);
    let before: Vec<u64> = ["orders", "users"]
        .iter()
        .map(|n| s.current(Kind::Outbound, n).version)
        .collect();
    // The same meaning written differently.
    let changed = s.set_mesh(mesh(&format!(
        "trust_domain: cluster.local\n{MESH}\n# a comment\n"
    )));
    assert_eq!(changed, 0);
    register(&s, "users", "u1", &reg("127.0.0.1:7", 30), Instant::now());
    let after_register = s.current(Kind::Outbound, "users").version;
    assert!(after_register > before[1]);
    // A renewal changes nothing.
    assert_eq!(
        register(&s, "users", "u1", &reg("127.0.0.1:7", 30), Instant::now()),
        Put::Renewed
    );
    assert_eq!(s.current(Kind::Outbound, "users").version, after_register);
    assert_eq!(s.current(Kind::Outbound, "orders").version, before[0]);
}

#[test]
fn a_change_wakes_exactly_the_watchers_of_what_it_changed() {
    let s = state(MESH);
    let mut orders = s.watch(Kind::Outbound, "orders");
    let mut orders_in = s.watch(Kind::Inbound, "orders");
    let mut next = s.watch(Kind::Outbound, "orders-next");
    let mut users = s.watch(Kind::Outbound, "users");
    let mut unknown = s.watch(Kind::Outbound, "billing");

    // An endpoint of orders-next: its own view and that of orders, which
    // splits to it.
    register(
        &s,
        "orders-next",
        "n1",
        &reg("127.0.0.1:5", 30),
        Instant::now(),
    );
    assert!(next.has_changed().unwrap());
    assert!(orders.has_changed().unwrap());
    assert!(!orders_in.has_changed().unwrap());
    assert!(!users.has_changed().unwrap());
    assert!(!unknown.has_changed().unwrap());
    next.borrow_and_update();
    orders.borrow_and_update();

    // A file edit that touches only users' settings.
    s.set_mesh(mesh(
        &MESH.replace("  users:\n", "  users:\n    timeout: 2s\n"),
    ));
    assert!(users.has_changed().unwrap());
    assert!(!orders.has_changed().unwrap());
    assert!(!next.has_changed().unwrap());
    assert!(!orders_in.has_changed().unwrap());
    users.borrow_and_update();

    // An inbound policy change wakes only that inbound view.
    s.set_mesh(mesh(
        &MESH
            .replace(
                "    identity: orders\n",
                "    identity: orders\n    inbound: { mtls: permissive }\n",
            )
            .replace("  users:\n", "  users:\n    timeout: 2s\n"),
    ));
    assert!(orders_in.has_changed().unwrap());
    assert!(!orders.has_changed().unwrap());
    assert!(!users.has_changed().unwrap());
    let view: InboundView =
        serde_json::from_slice(orders_in.borrow_and_update().body.as_ref().unwrap()).unwrap();
    assert_eq!(view.identity.as_deref(), Some("orders"));
    assert_eq!(view.policy.mtls, remora_api::MtlsMode::Permissive);

    // A service that appears wakes those who waited for it.
    register(&s, "billing", "b1", &reg("127.0.0.1:6", 30), Instant::now());
    assert!(unknown.has_changed().unwrap());
    assert!(unknown.borrow_and_update().exists());
    assert!(!users.has_changed().unwrap());
}

#[test]
fn a_registration_only_service_lives_until_its_last_endpoint_leaves() {
    let s = state(MESH);
    assert!(!s.current(Kind::Outbound, "billing").exists());
    let now = Instant::now();
    register(&s, "billing", "b1", &reg("127.0.0.1:1", 30), now);
    register(&s, "billing", "b2", &reg("127.0.0.1:2", 1), now);
    assert_eq!(
        outbound(&s, "billing").services["billing"].endpoints.len(),
        2
    );
    let inbound = s.current(Kind::Inbound, "billing");
    assert!(
        inbound.exists(),
        "a registered service has the default policy"
    );
    assert!(s.listing(now).services.contains_key("billing"));

    let mut watcher = s.watch(Kind::Outbound, "billing");
    // b2 expires after its TTL.
    assert!(s.expire(now + Duration::from_millis(500)).is_empty());
    let expired = s.expire(now + Duration::from_secs(1));
    assert_eq!(expired, vec![("billing".to_string(), "b2".to_string())]);
    assert!(watcher.has_changed().unwrap());
    let view: OutboundView =
        serde_json::from_slice(watcher.borrow_and_update().body.as_ref().unwrap()).unwrap();
    assert_eq!(view.services["billing"].endpoints.len(), 1);

    assert!(s.deregister("billing", "b1"));
    assert!(!s.deregister("billing", "b1"));
    assert!(watcher.has_changed().unwrap());
    assert!(!watcher.borrow_and_update().exists());
    assert!(!s.current(Kind::Inbound, "billing").exists());
    assert!(!s.listing(now).services.contains_key("billing"));
}

#[test]
fn the_listing_tells_each_endpoint_source_and_health() {
    let s = state(MESH);
    let now = Instant::now();
    register(&s, "orders", "pod-1", &reg("127.0.0.1:4143", 30), now);
    let listing = s.listing(now);
    assert_eq!(listing.services.len(), 3);
    let orders = &listing.services["orders"];
    assert!(orders.in_config);
    assert_eq!(orders.version, s.current(Kind::Outbound, "orders").version);
    let e = &orders.endpoints[0];
    assert_eq!(e.source, EndpointSource::Registration);
    assert_eq!(e.health, EndpointHealth::Alive);
    assert_eq!(e.instance.as_deref(), Some("pod-1"));
    assert_eq!(e.expires_in_seconds, Some(30.0));
    let next = &listing.services["orders-next"].endpoints[0];
    assert_eq!(
        (next.source, next.health, next.instance.as_deref()),
        (EndpointSource::File, EndpointHealth::Static, None)
    );
}

#[test]
fn channels_of_unknown_services_go_when_nobody_watches() {
    let s = state(MESH);
    let watcher = s.watch(Kind::Outbound, "nowhere");
    s.prune_unwatched();
    assert_eq!(s.lock().resources.len(), 7);
    drop(watcher);
    s.prune_unwatched();
    assert_eq!(s.lock().resources.len(), 6);
}

#[test]
fn views_are_incomplete_while_warming_up_and_republished_complete_after() {
    let s = State::new(FIRST_VERSION, Gauge::default(), Quotas::default());
    s.warming_up();
    s.set_mesh(mesh(MESH));
    let warm = outbound(&s, "users");
    assert!(warm.incomplete, "registrations may still be coming back");
    let inbound: InboundView =
        serde_json::from_slice(s.current(Kind::Inbound, "users").body.as_ref().unwrap()).unwrap();
    assert_eq!(inbound.service, "users", "inbound views carry no endpoints");
    s.warmed_up();
    let complete = outbound(&s, "users");
    assert!(!complete.incomplete);
    assert!(complete.version > warm.version, "published anew");
    assert_eq!(complete.services, warm.services);
}

fn discovered(address: &str, identity: Option<&str>, pod: &str) -> Discovered {
    Discovered {
        address: address.parse().unwrap(),
        identity: identity.map(|id| id.parse().unwrap()),
        labels: [("app".to_string(), "orders".to_string())].into(),
        instance: Some(format!("shop/{pod}")),
        app_port: None,
    }
}

#[test]
fn discovered_endpoints_follow_the_static_ones_and_win_over_registrations() {
    let s = state(MESH);
    let now = Instant::now();
    register(&s, "orders", "pod-1", &reg("10.0.0.1:4143", 30), now);
    register(&s, "orders", "vm-1", &reg("10.0.9.9:4143", 30), now);
    let sa = "spiffe://cluster.local/ns/shop/sa/orders";
    let changed = s.set_discovered(
        [(
            "orders".to_string(),
            vec![
                discovered("10.0.0.1:4143", Some(sa), "orders-1"),
                discovered("10.0.0.2:8080", None, "orders-2"),
            ],
        )]
        .into(),
    );
    assert_eq!(changed, 1);
    let view = outbound(&s, "orders");
    let endpoints: Vec<(String, Option<&str>)> = view.services["orders"]
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.identity.as_deref()))
        .collect();
    assert_eq!(
        endpoints,
        [
            ("10.0.0.1:4143".to_string(), Some(sa)),
            ("10.0.0.2:8080".to_string(), None),
            ("10.0.9.9:4143".to_string(), Some("orders")),
        ],
        "the pod's registration is the same address as its discovered endpoint: one entry, the discovered"
    );
    let listing = s.listing(now);
    let from_kubernetes: Vec<_> = listing.services["orders"]
        .endpoints
        .iter()
        .filter(|e| e.source == EndpointSource::Kubernetes)
        .collect();
    assert_eq!(from_kubernetes.len(), 2);
    assert_eq!(from_kubernetes[0].health, EndpointHealth::Ready);
    assert_eq!(
        from_kubernetes[0].instance.as_deref(),
        Some("shop/orders-1")
    );
    assert_eq!(from_kubernetes[0].identity.as_deref(), Some(sa));
}

#[test]
fn discovery_publishes_only_the_services_it_changed() {
    let s = state(MESH);
    let users = s.current(Kind::Outbound, "users").version;
    let found = |endpoints: Vec<Discovered>| -> BTreeMap<String, Vec<Discovered>> {
        [
            ("users".to_string(), vec![]),
            ("payments".to_string(), endpoints),
        ]
        .into()
    };
    // A service known only to Kubernetes exists, even with no endpoint.
    assert_eq!(s.set_discovered(found(vec![])), 2);
    let payments = s.current(Kind::Outbound, "payments");
    assert!(payments.exists());
    assert!(s.current(Kind::Inbound, "payments").exists());
    assert_eq!(
        s.current(Kind::Outbound, "users").version,
        users,
        "no endpoint of users changed: its view is the same"
    );
    // The same again changes nothing.
    assert_eq!(s.set_discovered(found(vec![])), 0);
    assert_eq!(
        s.current(Kind::Outbound, "payments").version,
        payments.version
    );
    let mut watcher = s.watch(Kind::Outbound, "payments");
    assert_eq!(
        s.set_discovered(found(vec![discovered("10.0.0.7:80", None, "p-1")])),
        1
    );
    assert!(watcher.has_changed().unwrap());
    assert_eq!(
        outbound(&s, "payments").services["payments"]
            .endpoints
            .len(),
        1
    );
    // Gone from Kubernetes, and in neither the file nor registrations: gone.
    assert_eq!(s.set_discovered(BTreeMap::new()), 2);
    assert!(!watcher.borrow_and_update().exists());
    assert!(
        s.current(Kind::Outbound, "users").exists(),
        "users is in the file"
    );
    assert!(!s.listing(Instant::now()).services.contains_key("payments"));
}

#[test]
fn a_services_registrants_are_its_declared_identity_else_its_pods_else_anyone() {
    let s = state(MESH);
    let id = |name: &str| -> SpiffeId {
        format!("spiffe://cluster.local/ns/shop/sa/{name}")
            .parse()
            .unwrap()
    };
    s.set_pod_identities(
        [
            ("orders".to_string(), [id("pods")].into()),
            ("web".to_string(), [id("web")].into()),
            ("scaled-to-zero".to_string(), BTreeSet::new()),
        ]
        .into(),
    );
    assert_eq!(
        s.registrants("orders"),
        Registrants::Declared(
            "spiffe://cluster.local/ns/default/sa/orders"
                .parse()
                .unwrap()
        ),
        "mesh.yaml's identity wins over Kubernetes'"
    );
    assert_eq!(s.registrants("web"), Registrants::Pods([id("web")].into()));
    assert_eq!(
        s.registrants("scaled-to-zero"),
        Registrants::Pods(BTreeSet::new())
    );
    assert_eq!(s.registrants("users"), Registrants::Anyone);
    assert_eq!(s.registrants("elsewhere"), Registrants::Anyone);
}
