//! The whole of `mesh.yaml` through the public entry points: parsing,
//! defaults, and every kind of problem with its location.

use super::*;

/// The example of the design document, less the split to a service it
/// does not define, plus that service.
pub(crate) const FULL: &str = r#"
trust_domain: cluster.local
services:
  orders-next:
    endpoints: [ { address: 127.0.0.1:9101 } ]
  orders:
    protocol: http
    identity: orders
    endpoints:
      - address: 127.0.0.1:9001
        labels: { version: v1 }
      - address: 127.0.0.1:4243
        identity: orders
        labels: { version: v2 }
    load_balancer: p2c-ewma
    timeout: 5s
    connect_timeout: 1s
    retry:
      attempts: 2
      on: [connect-failure, reset, 5xx, gateway-error, retriable-4xx, "grpc:unavailable"]
      per_try_timeout: 1s
      budget_percent: 20
      min_retries_per_second: 10
      backoff: { base: 25ms, max: 250ms }
    circuit_breaker:
      consecutive_failures: 5
      base_ejection: 10s
      max_ejected_percent: 50
      max_pending_requests: 1024
    health_check: { path: /healthz, interval: 5s, timeout: 1s, unhealthy_after: 3, healthy_after: 2 }
    routes:
      - name: canary
        match: { path_prefix: /api/, headers: { x-canary: "1" }, methods: [GET, HEAD] }
        split: [ { labels: { version: v2 }, weight: 100 } ]
        timeout: 1s
      - name: default
        split:
          - { labels: { version: v1 }, weight: 90 }
          - { service: orders-next, weight: 10 }
        fault: { delay: { percent: 5, duration: 100ms }, abort: { percent: 1, status: 503 } }
    inbound:
      mtls: strict
      allow: [frontend, checkout]
      rate_limit: { requests_per_second: 1000, burst: 2000 }
"#;

fn problems(text: &str) -> Vec<String> {
    parse_mesh("mesh.yaml", text)
        .unwrap_err()
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn the_documented_example_parses_with_every_field() {
    let mesh = parse_mesh("mesh.yaml", FULL).unwrap();
    let orders = &mesh.services["orders"];
    assert_eq!(orders.endpoints.len(), 2);
    assert_eq!(orders.timeout, Some(HumanDuration::from_secs(5)));
    let retry = orders.retry.as_ref().unwrap();
    assert_eq!(retry.on.len(), 6);
    assert_eq!(orders.routes[0].matches.methods.len(), 2);
    assert!(orders.routes[0]
        .matches
        .headers
        .contains_key(&"x-canary".parse().unwrap()));
    assert_eq!(
        orders.routes[1].fault.unwrap().abort.unwrap().status.get(),
        503
    );
    assert_eq!(
        orders.inbound.as_ref().unwrap().rate_limit.unwrap().burst,
        Some(2000)
    );
}

#[test]
fn defaults_fill_what_is_left_out() {
    let mesh = parse_mesh("m", "services:\n  a:\n    retry: {}\n").unwrap();
    let a = &mesh.services["a"];
    assert_eq!(mesh.trust_domain, DEFAULT_TRUST_DOMAIN);
    assert_eq!(a.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(a.load_balancer, LoadBalancer::P2cEwma);
    assert_eq!(a.retry.as_ref().unwrap(), &RetryPolicy::default());
    assert!(
        a.circuit_breaker.enabled,
        "failure accrual is on by default"
    );
    assert_eq!(a.circuit_breaker.consecutive_failures, 7);
    assert_eq!(a.circuit_breaker.max_pending_requests, None);
}

#[test]
fn static_endpoint_labels_follow_the_kubernetes_rules() {
    let ok = "services:\n  a:\n    endpoints:\n      - { address: 127.0.0.1:1, labels: { app.kubernetes.io/version: v1, tier: \"\" } }\n";
    parse_mesh("m", ok).unwrap();
    let bad = "services:\n  a:\n    endpoints:\n      - { address: 127.0.0.1:1 }\n      - { address: 127.0.0.1:2, labels: { version: \"v 1\" } }\n";
    let p = problems(bad);
    assert!(p[0].contains("services.a.endpoints[1].labels"), "{p:?}");
    assert!(p[0].contains("\"version\"=\"v 1\""), "{p:?}");
}

#[test]
fn the_circuit_breaker_turns_off_and_its_ejections_must_fit_their_ceiling() {
    let text = "services:\n  a:\n    circuit_breaker: { enabled: false }\n";
    let mesh = parse_mesh("m", text).unwrap();
    assert!(!mesh.services["a"].circuit_breaker.enabled);
    let text = "services:\n  a:\n    circuit_breaker: { base_ejection: 2m, max_ejection: 1m }\n";
    let p = problems(text);
    assert!(p[0].contains("circuit_breaker.base_ejection"), "{p:?}");
    assert!(p[0].contains("longer than max_ejection"), "{p:?}");
}

#[test]
fn a_mesh_with_no_services_says_so() {
    for text in [
        "services: {}\n",
        "---\ntrust_domain: example.org\nservices: {}\n",
    ] {
        let mesh = parse_mesh("m", text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(mesh.services.is_empty(), "{text:?}");
    }
    assert!(parse_mesh("m", load::EMPTY_MESH)
        .unwrap()
        .services
        .is_empty());
}

#[test]
fn a_file_that_does_not_say_what_services_it_has_is_refused() {
    let no_mesh = "mesh.yaml: the file holds no mesh: it is empty or only comments; a mesh with no services says so: `services: {}`";
    for text in [
        "",
        "\n\n",
        "# services:\n#   orders: {}\n",
        "---\n",
        "null\n",
    ] {
        assert_eq!(problems(text), [no_mesh], "{text:?}");
    }
    assert_eq!(
        problems("trust_domain: example.org\n"),
        ["mesh.yaml: services: not given; a mesh with no services says so: `services: {}`"]
    );
    assert_eq!(
        problems("trust_domain: example.org\nservices:\n# orders: {}\n"),
        ["mesh.yaml:2:1: services: has nothing under it; a mesh with no services says so: `services: {}`"]
    );
    assert_eq!(problems("{}"), problems("trust_domain: example.org\n"));
    // Other shapes are serde's to describe.
    let p = problems("services: []\n");
    assert!(
        p[0].contains("invalid type: sequence, expected a map"),
        "{p:?}"
    );
}

#[test]
fn an_unknown_key_is_named_with_its_position() {
    let p = problems("services:\n  a:\n    timeuot: 1s\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("mesh.yaml:3:5: services.a: unknown field `timeuot`"),
        "{p:?}"
    );
}

#[test]
fn a_bad_value_is_named_with_its_position() {
    let p = problems("services:\n  a:\n    timeout: soon\n");
    assert!(p[0].starts_with("mesh.yaml:3:"), "{p:?}");
    assert!(p[0].contains("services.a.timeout"), "{p:?}");
    assert!(p[0].contains("invalid duration"), "{p:?}");

    let p = problems("services:\n  a:\n    endpoints: [ { address: nowhere } ]\n");
    assert!(p[0].contains("services.a.endpoints[0].address"), "{p:?}");

    let p = problems("services:\n  a:\n    load_balancer: random\n");
    assert!(p[0].contains("unknown variant `random`"), "{p:?}");
}

#[test]
fn checks_across_the_file_point_at_the_key() {
    let text = "services:\n  a:\n    routes:\n      - split:\n          - service: b\n";
    let p = problems(text);
    assert_eq!(p, vec!["mesh.yaml:5:13: services.a.routes[0].split[0].service: no service named \"b\" in this mesh"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "services:\n  a:\n    load_balancer: ring-hash\n    routes:\n      - name: x\n      - name: x\n        split: [ { weight: 0 } ]\n";
    let p = problems(text);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].contains("ring-hash needs hash_on"));
    assert!(p[1].contains("used twice"));
    assert!(p[2].contains("add up to zero"));
}

#[test]
fn split_weights_must_add_up_to_a_u32() {
    let text =
        "services:\n  a:\n    routes:\n      - split: [ { weight: 4294967295 }, { weight: 1 } ]\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("services.a.routes[0].split"), "{p:?}");
    assert!(p[0].contains("add up to 4294967296"), "{p:?}");
}

#[test]
fn a_header_value_no_request_can_carry_is_refused() {
    let text = "services:\n  a:\n    routes:\n      - match: { headers: { x-a: \"1\\n\", x-b: \"\\t1\" } }\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains(
            "services.a.routes[0].match.headers.x-a: a header value cannot hold control characters"
        ),
        "{p:?}"
    );
}

#[test]
fn path_regex_is_anchored_and_round_trips() {
    let mesh = parse_mesh(
        "m",
        "services:\n  a:\n    routes:\n      - match: { path_regex: '/users/[0-9]+' }\n",
    )
    .unwrap();
    let re = mesh.services["a"].routes[0]
        .matches
        .path_regex
        .as_ref()
        .unwrap();
    assert!(re.is_match("/users/42"));
    assert!(!re.is_match("/users/42/orders"));
    let json = serde_json::to_string(&mesh).unwrap();
    let back: Mesh = serde_json::from_str(&json).unwrap();
    assert_eq!(back, mesh);
}

#[test]
fn a_service_given_twice_is_named_at_its_second_place() {
    let text = "services:\n  a:\n    timeout: 1s\n  b: {}\n  a:\n    timeout: 2s\n";
    let p = problems(text);
    assert_eq!(
        p,
        vec!["mesh.yaml:5:3: services.a: given twice in one map (first at 2:3); the second would silently replace the first"]
    );
}

#[test]
fn a_label_given_twice_is_a_problem_too() {
    let text = "services:\n  a:\n    endpoints:\n      - address: 127.0.0.1:1\n        labels: { version: v1, version: v2 }\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("mesh.yaml:5:32: services.a.endpoints[0].labels.version: given twice"),
        "{p:?}"
    );
}

#[test]
fn split_labels_must_select_a_static_endpoint() {
    let text = "\
services:
  a:
    endpoints:
      - { address: 127.0.0.1:1, labels: { version: v1 } }
    routes:
      - split:
          - { labels: { version: v1 }, weight: 1 }
          - { labels: { version: v3 }, weight: 1 }
          - { service: b, labels: { version: v9 } }
  b:
    endpoints: [ { address: 127.0.0.1:2 } ]
";
    let p = problems(text);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].starts_with("mesh.yaml:8:15: services.a.routes[0].split[1].labels: no static endpoint of \"a\" has the labels version=v3"),
        "{p:?}"
    );
    assert!(
        p[0].contains("registered at run time are not considered"),
        "{p:?}"
    );
    assert!(
        p[1].contains("services.a.routes[0].split[2].labels: no static endpoint of \"b\""),
        "{p:?}"
    );
}

#[test]
fn split_labels_of_a_service_without_static_endpoints_are_not_checked() {
    // Its endpoints come from registrations, which the file cannot know.
    let text = "services:\n  a:\n    routes:\n      - split: [ { labels: { version: v2 } } ]\n";
    assert!(parse_mesh("mesh.yaml", text).is_ok());
}

#[test]
fn a_split_to_the_service_itself_is_a_problem() {
    let text = "services:\n  a:\n    routes:\n      - split: [ { service: a } ]\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("mesh.yaml:4:20: services.a.routes[0].split[0].service: \"a\" is this route's own service"),
        "{p:?}"
    );
}

/// The notes on a file that must parse, each shown as it is printed.
fn notes(text: &str) -> Vec<String> {
    parse_mesh_with_notes("mesh.yaml", text)
        .unwrap_or_else(|e| panic!("refused: {e}"))
        .notes
        .iter()
        .map(|n| n.to_string())
        .collect()
}

#[test]
fn a_per_try_timeout_longer_than_the_timeout_is_noted_not_refused() {
    // The service's own retry against its own timeout.
    let text = "services:\n  a:\n    timeout: 1s\n    retry: { per_try_timeout: 2s }\n";
    assert_eq!(
        notes(text),
        vec!["mesh.yaml:4:14: services.a.retry.per_try_timeout: 2s is longer than the service's timeout of 1s, which ends every try first: the per-try timeout never applies"]
    );
    let mesh = parse_mesh("mesh.yaml", text).unwrap();
    assert_eq!(
        mesh.services["a"].retry.as_ref().unwrap().per_try_timeout,
        Some(HumanDuration::from_secs(2)),
        "kept as written"
    );

    // A route's retry against the route's timeout, and against the service's.
    let text = "\
services:
  a:
    timeout: 10s
    routes:
      - timeout: 1s
        retry: { per_try_timeout: 2s }
      - retry: { per_try_timeout: 20s }
";
    let n = notes(text);
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(
        n[0],
        "mesh.yaml:6:18: services.a.routes[0].retry.per_try_timeout: 2s is longer than the route's timeout of 1s, which ends every try first: the per-try timeout never applies"
    );
    assert!(
        n[1].contains("services.a.routes[1].retry.per_try_timeout: 20s is longer than the service's timeout of 10s, which ends every try first"),
        "{n:?}"
    );

    // A route's timeout shorter than the per-try timeout it inherits.
    let text = "\
services:
  a:
    retry: { per_try_timeout: 2s }
    routes:
      - timeout: 1s
";
    let n = notes(text);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].starts_with("mesh.yaml:5:9: services.a.routes[0].timeout: 1s is shorter than the per_try_timeout of 2s"),
        "{n:?}"
    );

    // Equal is fine, and so is a per-try timeout with no overall timeout.
    let text = "services:\n  a:\n    timeout: 1s\n    retry: { per_try_timeout: 1s }\n  b:\n    retry: { per_try_timeout: 9s }\n";
    assert_eq!(notes(text), Vec::<String>::new());
}

#[test]
fn a_refused_file_lists_its_problems_but_not_its_notes() {
    // Only the note rule is relaxed: a real problem beside it still refuses
    // the file, and the error names that problem alone.
    let text =
        "services:\n  a:\n    timeout: 1s\n    retry: { per_try_timeout: 2s, attempts: 11 }\n";
    let e = parse_mesh_with_notes("mesh.yaml", text).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].key, "services.a.retry.attempts");
    assert!(parse_mesh("mesh.yaml", text).is_err());
}

#[test]
fn identities_must_be_spiffe_ids_or_their_short_forms() {
    let text = "trust_domain: Example\nservices:\n  a:\n    identity: A\n    endpoints:\n      - { address: 127.0.0.1:1, identity: \"spiffe://x/\" }\n    inbound: { allow: [frontend, \"b.c.d\"] }\n";
    let p = problems(text);
    assert_eq!(p.len(), 4, "{p:?}");
    assert!(p[0].starts_with("mesh.yaml:1:1: trust_domain: "), "{p:?}");
    assert!(
        p[1].starts_with("mesh.yaml:4:5: services.a.identity: "),
        "{p:?}"
    );
    assert!(
        p[2].contains("services.a.endpoints[0].identity: its path has an empty segment"),
        "{p:?}"
    );
    assert!(
        p[3].contains("services.a.inbound.allow[1]: the namespace \"c.d\""),
        "{p:?}"
    );
    // The same with a good trust domain: the short forms resolve in it.
    let good = "trust_domain: example.org\nservices:\n  a:\n    identity: a.shop\n    inbound: { allow: [frontend, \"spiffe://other/x\"] }\n";
    assert!(parse_mesh("mesh.yaml", good).is_ok());
}

#[test]
fn a_default_service_is_what_an_empty_entry_reads_as() {
    let from_serde: Service = serde_json::from_str("{}").unwrap();
    assert_eq!(Service::default(), from_serde);
    let from_yaml = parse_mesh("t", "services:\n  a: {}\n").unwrap();
    assert_eq!(from_yaml.services["a"], Service::default());
}

#[test]
fn a_tcp_service_takes_no_http_settings_and_a_zero_timeout_is_none() {
    let tcp = "services:\n  cache:\n    protocol: tcp\n    health_check: { path: /healthz }\n    routes: [ { name: a } ]\n";
    let p = problems(tcp);
    assert!(
        p.iter().any(|p| p.contains("services.cache.routes")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("services.cache.health_check") && p.contains("tcp")),
        "{p:?}"
    );
    let mesh = parse_mesh("m", "services:\n  a:\n    timeout: 0s\n").unwrap();
    assert_eq!(effective_timeout(mesh.services["a"].timeout), None);
    assert_eq!(
        effective_timeout(Some(HumanDuration::from_secs(1))),
        Some(HumanDuration::from_secs(1))
    );
}
