//! Support for the end-to-end tests: start the real `remora-proxy` on
//! ephemeral loopback ports, real upstream servers, and real clients.
//! Every test owns its processes and servers; dropping them ends them.

pub mod client;
pub mod control;
pub mod fake_kube;
pub mod identity;
pub mod kubernetes;
pub mod mesh_client;
pub mod nginx;
pub mod process;
pub mod promtool;
pub mod proxy;
pub mod python;
pub mod redis;
pub mod sidecars;
pub mod tools;
pub mod upstream;

pub use client::{Client, Reply};
pub use control::ControlPlane;
pub use proxy::Proxy;
pub use upstream::Upstream;

use std::time::{Duration, Instant};

/// Polls `check` until it holds or `limit` passes; panics with `what`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of a metric series whose line starts with `prefix`
/// (name and labels), summed across matching lines.
pub fn metric_value(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of the `remora_requests_total` series whose labels include
/// every one of `labels` (`name="value"`).
pub fn requests(metrics: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("remora_requests_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `orders` with one static endpoint labelled v1 and one v2, and a single
/// route sending everything to `version`.
pub fn split_mesh(v1: std::net::SocketAddr, v2: std::net::SocketAddr, version: &str) -> String {
    format!(
        "services:
  orders:
    endpoints:
      - {{ address: {v1}, labels: {{ version: v1 }} }}
      - {{ address: {v2}, labels: {{ version: v2 }} }}
    routes:
      - name: all
        split: [ {{ labels: {{ version: {version} }} }} ]
"
    )
}

/// Sends requests back to back to `http://orders/` through `client` (the
/// endpoints answer `v1` or `v2`), calls `change` after a few, and checks
/// that every request succeeds and that once `v2` answers `v1` never does
/// again: the new config replaced the old one whole. Returns how long after
/// `change` the first `v2` came; panics if that took `limit` or more.
pub async fn switch_without_failures(
    client: &Client,
    limit: Duration,
    change: impl FnOnce(),
) -> Duration {
    const BEFORE: usize = 20;
    const AFTER: usize = 50;
    let mut change = Some(change);
    let (mut written_at, mut switched_at) = (None, None);
    let mut after_switch = 0;
    for i in 0..50_000 {
        if i == BEFORE {
            (change.take().expect("changed once"))();
            written_at = Some(Instant::now());
        }
        let r = client
            .get("http://orders/")
            .await
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        match (r.text().as_str(), switched_at) {
            ("v1", None) => {}
            ("v2", None) if written_at.is_some() => switched_at = Some(Instant::now()),
            ("v2", Some(_)) => after_switch += 1,
            (body, _) => panic!("request {i} answered {body:?} (switched: {switched_at:?})"),
        }
        if after_switch == AFTER {
            break;
        }
        if let (Some(t), None) = (written_at, switched_at) {
            assert!(
                t.elapsed() < limit,
                "the new route was not live {limit:?} after the change"
            );
        }
    }
    assert_eq!(after_switch, AFTER, "the loop ran out before the switch");
    switched_at.expect("switched") - written_at.expect("changed")
}
