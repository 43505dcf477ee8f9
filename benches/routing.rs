//! Routing: finding a request's service by its authority, then its route
//! among ten (`Service::route`, first match wins), as each outbound
//! request does before anything else.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use remora_benches::{compile, routed_mesh, ROUTED_SERVICE};

/// Services in the mesh besides the routed one.
const OTHER_SERVICES: usize = 50;

/// Headers a typical client sends, plus `extra`.
fn headers(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let common = [
        ("host", "orders"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("x-request-id", "0b0c2c0e-6a4f-4b7e-9f43-3d8f9d1f5a11"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    common
        .iter()
        .chain(extra)
        .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect()
}

fn route(c: &mut Criterion) {
    let snapshot = compile(&routed_mesh(OTHER_SERVICES));
    let service = &snapshot.services[ROUTED_SERVICE];
    // (case, method, path, extra headers, the route it must reach)
    let cases: [(&str, Method, &str, HeaderMap, Option<&str>); 4] = [
        (
            "first",
            Method::GET,
            "/api/v1/orders",
            headers(&[("x-canary", "1")]),
            Some("canary"),
        ),
        (
            "middle",
            Method::GET,
            "/search/orders",
            headers(&[]),
            Some("search"),
        ),
        (
            "last",
            Method::GET,
            "/account/settings",
            headers(&[("x-tenant", "acme")]),
            Some("tenant"),
        ),
        ("miss", Method::GET, "/account/settings", headers(&[]), None),
    ];
    let mut group = c.benchmark_group("route");
    for (case, method, path, headers, want) in &cases {
        let got = service
            .route(method, path, headers)
            .map(|r| &*r.labels.route);
        assert_eq!(got, *want, "the {case} case reaches the wrong route");
        group.bench_with_input(BenchmarkId::from_parameter(case), case, |b, _| {
            b.iter(|| {
                service
                    .route(black_box(method), black_box(path), black_box(headers))
                    .is_some()
            })
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let snapshot = compile(&routed_mesh(OTHER_SERVICES));
    let authorities = [
        ("name", "orders", true),
        ("name-port", "orders:80", true),
        ("namespace", "orders.default", true),
        ("svc", "orders.default.svc:8080", true),
        ("fqdn", "orders.default.svc.cluster.local:80", true),
        ("unknown", "payments.default.svc.cluster.local:80", false),
    ];
    let mut group = c.benchmark_group("lookup");
    for (case, authority, known) in authorities {
        assert_eq!(snapshot.lookup(authority).is_some(), known, "{authority}");
        group.bench_with_input(
            BenchmarkId::from_parameter(case),
            authority,
            |b, authority| b.iter(|| snapshot.lookup(black_box(authority)).is_some()),
        );
    }
    group.finish();
}

criterion_group!(benches, route, lookup);
criterion_main!(benches);
