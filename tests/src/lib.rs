//! Support for the end-to-end tests: start the real `remora-proxy` on
//! ephemeral loopback ports, real upstream servers, and real clients.
//! Every test owns its processes and servers; dropping them ends them.

pub mod client;
pub mod process;
pub mod proxy;
pub mod upstream;

pub use client::{Client, Reply};
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
