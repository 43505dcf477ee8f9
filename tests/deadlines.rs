//! Deadlines that travel, through the real proxy: `grpc-timeout` and
//! `remora-deadline` bound a request, the time left reaches the next hop,
//! a request already too late is refused without calling anyone, and no
//! retry starts that could not finish in time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use remora_e2e::client::body;
use remora_e2e::upstream::{dead_address, status, text};
use remora_e2e::{metric_value, Client, Proxy, Upstream};

/// An endpoint that answers `200` after `delay`.
async fn answers_after(delay: Duration) -> Upstream {
    Upstream::start(move |_req| async move {
        tokio::time::sleep(delay).await;
        text("late")
    })
    .await
}

fn one_endpoint(service: &str, settings: &str, upstream: &Upstream) -> String {
    format!(
        "services:\n  {service}:\n{settings}    endpoints: [ {{ address: {} }} ]\n",
        upstream.addr
    )
}

/// A GET to `url` through `client` with `headers`.
async fn get(client: &Client, url: &str, headers: &[(&str, &str)]) -> remora_e2e::Reply {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client
        .send(req.body(body(Bytes::new())).unwrap())
        .await
        .unwrap()
}

/// A header's value as the endpoint last saw it, in milliseconds or in
/// gRPC's `NNNm` form.
fn millis_seen(upstream: &Upstream, name: &str) -> u64 {
    let seen = upstream.last();
    let value = seen.headers[name].to_str().unwrap();
    value.trim_end_matches('m').parse().unwrap()
}

#[tokio::test]
async fn a_request_whose_deadline_has_passed_is_answered_504_without_calling_anyone() {
    let orders = Upstream::named("orders").await;
    let app = Upstream::named("app").await;
    let proxy = Proxy::start(&one_endpoint("orders", "", &orders), app.addr).await;
    let outbound = Client::via(proxy.outbound, false);
    let inbound = Client::via(proxy.inbound, false);
    for expired in [("remora-deadline", "0"), ("grpc-timeout", "0m")] {
        for (client, listener) in [(&outbound, "outbound"), (&inbound, "inbound")] {
            let r = get(client, "http://orders/", &[expired]).await;
            assert_eq!(r.status, 504, "{listener} {expired:?}: {}", r.text());
            assert_eq!(r.header("remora-error"), Some("deadline-exceeded"));
        }
    }
    assert_eq!(
        orders.hits() + app.hits(),
        0,
        "neither endpoint nor app was called"
    );
    let metrics = proxy.metrics().await;
    let outbound_timeouts = metric_value(
        &metrics,
        "remora_timeouts_total{direction=\"outbound\",service=\"orders\",route=\"default\"}",
    );
    assert_eq!(outbound_timeouts, 2.0, "{metrics}");
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_request_on_both_listeners() {
    let slow = answers_after(Duration::from_secs(2)).await;
    let proxy = Proxy::start(&one_endpoint("orders", "", &slow), slow.addr).await;
    for (listener, addr) in [("outbound", proxy.outbound), ("inbound", proxy.inbound)] {
        let client = Client::via(addr, false);
        for header in [("remora-deadline", "300"), ("grpc-timeout", "300m")] {
            let started = Instant::now();
            let r = get(&client, "http://orders/", &[header]).await;
            let took = started.elapsed();
            assert_eq!(r.status, 504, "{listener} {header:?}: {}", r.text());
            assert_eq!(r.header("remora-error"), Some("timeout"));
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
                "{listener} {header:?}: {took:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_time_left_reaches_the_next_hop() {
    let orders = Upstream::named("orders").await;
    let mesh = one_endpoint("orders", "    timeout: 1s\n", &orders);
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    // The route's timeout alone is a deadline too.
    let r = get(&client, "http://orders/", &[]).await;
    assert_eq!(r.status, 200);
    let left = millis_seen(&orders, "remora-deadline");
    assert!((900..=1000).contains(&left), "{left}");
    assert!(orders.last().headers.get("grpc-timeout").is_none());
    // The caller's, when shorter; gRPC's header rewritten in kind.
    let r = get(&client, "http://orders/", &[("grpc-timeout", "400m")]).await;
    assert_eq!(r.status, 200);
    for header in ["remora-deadline", "grpc-timeout"] {
        let left = millis_seen(&orders, header);
        assert!((300..=400).contains(&left), "{header}: {left}");
    }
    // The route's, when the caller's is longer.
    let r = get(&client, "http://orders/", &[("remora-deadline", "60000")]).await;
    assert_eq!(r.status, 200);
    let left = millis_seen(&orders, "remora-deadline");
    assert!((900..=1000).contains(&left), "{left}");
}

#[tokio::test]
async fn no_retry_starts_that_could_not_finish_in_time() {
    // Each try fails after 300ms; the retry policy would try again.
    let failing = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        status(503, "failed")
    })
    .await;
    let settings = "    retry: { attempts: 2, on: [5xx], backoff: { base: 1ms, max: 1ms } }
    circuit_breaker: { enabled: false }
";
    let proxy = Proxy::start(
        &one_endpoint("orders", settings, &failing),
        dead_address().await,
    )
    .await;
    let client = Client::via(proxy.outbound, false);
    // 500ms left: after one try, 200ms remain, too few for another like it.
    let started = Instant::now();
    let r = get(&client, "http://orders/", &[("remora-deadline", "500")]).await;
    assert_eq!(
        r.status,
        503,
        "the endpoint's answer, not a 504: {}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_millis(480),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failing.hits(), 1);
    // With time for them, the retries happen.
    let r = get(&client, "http://orders/", &[("remora-deadline", "5000")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(failing.hits(), 4, "one try and two retries");
}
