//! Balancing: picking an endpoint from a backend (`Backend::pick`, which
//! is `Balancer::pick` over the backend's endpoints) with each balancer
//! over 3, 10 and 100 endpoints, and picking again for a retry that must
//! avoid the endpoint that just failed.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use remora_benches::{balanced_mesh, balanced_service, compile, BALANCERS};
use remora_proxy::http::client::{ClientSettings, Clients};
use remora_proxy::outbound::balance::{Balancer, Endpoint};
use remora_proxy::outbound::snapshot::{Backend, Snapshot};

const ENDPOINT_COUNTS: [usize; 3] = [3, 10, 100];

/// What a `ring-hash` service hashes: the value of its `hash_on` header.
const HASH_KEY: &[u8] = b"user-4711";

fn backend<'a>(snapshot: &'a Snapshot, balancer: &str, endpoints: usize) -> &'a Backend {
    let name = balanced_service(balancer, endpoints);
    snapshot.services[&name].routes[0]
        .backends()
        .next()
        .unwrap_or_else(|| panic!("{name} has no backend"))
}

/// The key a request carries: only `ring-hash` reads one.
fn hash_key(balancer: &str) -> Option<&'static [u8]> {
    (balancer == "ring-hash").then_some(HASH_KEY)
}

fn pick(c: &mut Criterion) {
    let snapshot = compile(&balanced_mesh(&ENDPOINT_COUNTS));
    for (_, balancer) in BALANCERS {
        let mut group = c.benchmark_group(format!("pick/{balancer}"));
        for n in ENDPOINT_COUNTS {
            let backend = backend(&snapshot, balancer, n);
            let key = hash_key(balancer);
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| backend.pick(black_box(key), None))
            });
        }
        group.finish();
    }
}

/// A retry's pick: the endpoint the first try went to is avoided. For
/// `ring-hash` that is the key's own endpoint, so the ring is walked on.
fn pick_avoiding(c: &mut Criterion) {
    let snapshot = compile(&balanced_mesh(&ENDPOINT_COUNTS));
    for (_, balancer) in BALANCERS {
        let mut group = c.benchmark_group(format!("pick-avoiding/{balancer}"));
        for n in ENDPOINT_COUNTS {
            let backend = backend(&snapshot, balancer, n);
            let key = hash_key(balancer);
            let Some(failed) = backend.pick(key, None) else {
                panic!("{balancer} over {n} endpoints picked none");
            };
            let retried = backend.pick(key, Some(&failed));
            assert!(
                retried.is_some_and(|e| !Arc::ptr_eq(&e, &failed)),
                "{balancer} over {n} endpoints picked the endpoint to avoid"
            );
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| backend.pick(black_box(key), Some(black_box(&failed))))
            });
        }
        group.finish();
    }
}

/// `Balancer::pick` on its own, over endpoints made directly: what the
/// backend adds on top of it is one indirection, so the two should agree.
fn balancer_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer-pick");
    let n = 10;
    let endpoints: Vec<Arc<Endpoint>> = (0..n)
        .map(|i| {
            let address = std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080));
            let settings = ClientSettings::default();
            let endpoint = Endpoint::new(
                &Clients::default(),
                settings,
                address,
                Default::default(),
                None,
            );
            Arc::new(endpoint)
        })
        .collect();
    for (kind, balancer) in BALANCERS {
        let b = Balancer::new(kind, &endpoints);
        let key = hash_key(balancer);
        group.bench_with_input(BenchmarkId::new(balancer, n), &n, |bench, _| {
            bench.iter(|| b.pick(black_box(&endpoints), black_box(key), None))
        });
    }
    group.finish();
}

criterion_group!(benches, pick, pick_avoiding, balancer_pick);
criterion_main!(benches);
