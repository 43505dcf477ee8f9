//! Routing through the real proxy: routes in order with the first match
//! winning, every kind of match, weighted splits over label subsets and
//! to other services, route names in metrics, and fault injection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use remora_e2e::client::body;
use remora_e2e::upstream::dead_address;
use remora_e2e::{eventually, metric_value, Client, Proxy, Upstream};

/// Sends `n` GETs for `path` on `host` and counts the answers by body
/// (each upstream answers with its own name).
async fn tally(
    client: &Client,
    proxy: &Proxy,
    host: &str,
    path: &str,
    n: usize,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = client.get_via(proxy.outbound, host, path).await.unwrap();
        assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
        *counts.entry(r.text()).or_default() += 1;
    }
    counts
}

/// One upstream per name: endpoints of `web` labelled `name: NAME`, each
/// answering with its name.
struct Backends {
    yaml: String,
    upstreams: Vec<Upstream>,
}

async fn backends(names: &[&'static str]) -> Backends {
    let mut yaml = String::new();
    let mut upstreams = Vec::new();
    for name in names {
        let u = Upstream::named(name).await;
        yaml.push_str(&format!(
            "      - {{ address: {}, labels: {{ name: {name} }} }}\n",
            u.addr
        ));
        upstreams.push(u);
    }
    Backends { yaml, upstreams }
}

#[tokio::test]
async fn routes_are_tried_in_order_and_the_first_match_wins() {
    let b = backends(&["broad", "narrow"]).await;
    let mesh = |first: &str, second: &str| {
        format!(
            "services:
  web:
    endpoints:
{}    routes:
{first}{second}",
            b.yaml
        )
    };
    // Both routes match /api/v1/users; only the broad one matches /api/x.
    let broad = "      - name: broad
        match: { path_prefix: /api/ }
        split: [ { labels: { name: broad } } ]
";
    let narrow = "      - name: narrow
        match: { path_prefix: /api/v1/ }
        split: [ { labels: { name: narrow } } ]
";
    let proxy = Proxy::start(&mesh(broad, narrow), dead_address().await).await;
    let client = Client::http1();
    let get = |path: &'static str| {
        let client = client.clone();
        let outbound = proxy.outbound;
        async move { client.get_via(outbound, "web", path).await.unwrap().text() }
    };
    assert_eq!(get("/api/v1/users").await, "broad");
    assert_eq!(get("/api/x").await, "broad");
    assert_eq!(b.upstreams[1].hits(), 0, "the later route never ran");

    // The same two routes the other way round: now the narrow one is first.
    proxy.write_config(&mesh(narrow, broad));
    eventually(
        Duration::from_secs(10),
        "the reordered routes to apply",
        || {
            let text = get("/api/v1/users");
            async move { text.await == "narrow" }
        },
    )
    .await;
    assert_eq!(get("/api/x").await, "broad");
}

#[tokio::test]
async fn paths_headers_and_methods_select_routes() {
    let b = backends(&["exact", "prefix", "regex", "header", "method", "rest"]).await;
    let mesh = format!(
        "services:
  web:
    endpoints:
{}    routes:
      - match: {{ path: /exact }}
        split: [ {{ labels: {{ name: exact }} }} ]
      - match: {{ path_prefix: /static/ }}
        split: [ {{ labels: {{ name: prefix }} }} ]
      - match: {{ path_regex: '/users/[0-9]+' }}
        split: [ {{ labels: {{ name: regex }} }} ]
      - match: {{ headers: {{ x-canary: 'yes' }} }}
        split: [ {{ labels: {{ name: header }} }} ]
      - match: {{ methods: [POST, PUT] }}
        split: [ {{ labels: {{ name: method }} }} ]
      - split: [ {{ labels: {{ name: rest }} }} ]
",
        b.yaml
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    let send = |method: &str, path: &str, header: Option<(&str, &str)>| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", proxy.outbound))
            .header("host", "web");
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let req = req.body(body(Bytes::new())).unwrap();
        let client = client.clone();
        async move {
            let r = client.send(req).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        }
    };
    let cases = [
        ("GET", "/exact", None, "exact"),
        // Exact means exact: not a prefix, not with a trailing slash.
        ("GET", "/exact/more", None, "rest"),
        ("GET", "/exact/", None, "rest"),
        ("GET", "/static/app.js", None, "prefix"),
        ("GET", "/staticfile", None, "rest"),
        // The regex is anchored at both ends.
        ("GET", "/users/7", None, "regex"),
        ("GET", "/users/7/x", None, "rest"),
        ("GET", "/v1/users/7", None, "rest"),
        ("GET", "/x", Some(("x-canary", "yes")), "header"),
        ("GET", "/x", Some(("x-canary", "no")), "rest"),
        ("POST", "/x", None, "method"),
        ("DELETE", "/x", None, "rest"),
    ];
    for (method, path, header, want) in cases {
        assert_eq!(
            send(method, path, header).await,
            want,
            "{method} {path} {header:?}"
        );
    }
    // No header at all does not match a header route.
    assert_eq!(send("GET", "/x", None).await, "rest");
    // The query string is not part of the path.
    assert_eq!(send("GET", "/exact?q=1", None).await, "exact");
    assert_eq!(
        send("PUT", "/users/7", None).await,
        "regex",
        "earlier routes win"
    );
}

#[tokio::test]
async fn a_request_no_route_matches_is_answered_404_no_route() {
    let orders = Upstream::named("orders").await;
    let mesh = format!(
        "services:
  orders:
    endpoints: [ {{ address: {} }} ]
    routes:
      - match: {{ path_prefix: /api/ }}
      - match: {{ methods: [POST], headers: {{ x-admin: 'true' }} }}
",
        orders.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    for path in ["/", "/apix", "/other/api/"] {
        let r = client
            .get_via(proxy.outbound, "orders", path)
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("remora-error"), Some("no-route"), "{path}");
        assert!(
            r.text().contains("orders"),
            "the body names the service: {}",
            r.text()
        );
    }
    // A POST without the header matches neither route either.
    let r = client
        .send(
            Request::post(format!("http://{}/x", proxy.outbound))
                .header("host", "orders")
                .body(body("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("remora-error"), Some("no-route"));
    assert_eq!(orders.hits(), 0, "nothing reached the upstream");
    let r = client
        .get_via(proxy.outbound, "orders", "/api/ok")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(orders.hits(), 1);
}

#[tokio::test]
async fn weighted_splits_share_traffic_over_label_subsets_and_services() {
    let v1 = Upstream::named("v1").await;
    let v1b = Upstream::named("v1").await;
    let v2 = Upstream::named("v2").await;
    let next = Upstream::named("next").await;
    let mesh = format!(
        "services:
  web:
    load_balancer: round-robin
    endpoints:
      - {{ address: {}, labels: {{ version: v1 }} }}
      - {{ address: {}, labels: {{ version: v1, zone: b }} }}
      - {{ address: {}, labels: {{ version: v2 }} }}
    routes:
      - match: {{ path_prefix: /moved/ }}
        split: [ {{ service: web-next }} ]
      - match: {{ path_prefix: /half/ }}
        split:
          - {{ labels: {{ version: v2 }}, weight: 1 }}
          - {{ service: web-next, weight: 1 }}
      - split:
          - {{ labels: {{ version: v1 }}, weight: 80 }}
          - {{ labels: {{ version: v2 }}, weight: 20 }}
  web-next:
    endpoints: [ {{ address: {} }} ]
",
        v1.addr, v1b.addr, v2.addr, next.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();

    // 80/20 over 400 requests: 320 expected, σ = 8; ±64 allowed.
    let counts = tally(&client, &proxy, "web", "/", 400).await;
    let to_v1 = counts.get("v1").copied().unwrap_or(0);
    let to_v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(to_v1 + to_v2, 400, "{counts:?}");
    assert!((256..=384).contains(&to_v1), "80% of 400 to v1: {counts:?}");
    // A label subset holds every endpoint carrying the labels, even with
    // more; round-robin shows both in use.
    assert!(v1.hits() > 0 && v1b.hits() > 0, "both v1 endpoints served");
    assert_eq!(next.hits(), 0);

    // All of a route to another service.
    let counts = tally(&client, &proxy, "web", "/moved/x", 20).await;
    assert_eq!(counts.get("next"), Some(&20), "{counts:?}");
    let seen = next.last();
    assert_eq!(seen.path, "/moved/x");

    // Half to a subset, half to another service.
    let counts = tally(&client, &proxy, "web", "/half/x", 100).await;
    let to_next = counts.get("next").copied().unwrap_or(0);
    assert_eq!(
        to_next + counts.get("v2").copied().unwrap_or(0),
        100,
        "{counts:?}"
    );
    assert!((20..=80).contains(&to_next), "50% to web-next: {counts:?}");
}

#[tokio::test]
async fn route_names_label_request_metrics() {
    let web = Upstream::named("web").await;
    let mesh = format!(
        "services:
  web:
    endpoints: [ {{ address: {} }} ]
    routes:
      - name: health
        match: {{ path: /healthz }}
      - match: {{ path_prefix: /api/ }}
      - name: catch-all
  plain:
    endpoints: [ {{ address: {} }} ]
",
        web.addr, web.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    for (path, n) in [("/healthz", 2), ("/api/a", 3), ("/other", 4)] {
        tally(&client, &proxy, "web", path, n).await;
    }
    tally(&client, &proxy, "plain", "/", 5).await;
    let metrics = proxy.metrics().await;
    let series = |service: &str, route: &str| {
        format!(
            "remora_requests_total{{direction=\"outbound\",service=\"{service}\",route=\"{route}\",status_code=\"200\",classification=\"success\""
        )
    };
    for (service, route, n) in [
        ("web", "health", 2.0),
        // Unnamed routes are route-N, counted from 0 in the service's list.
        ("web", "route-1", 3.0),
        ("web", "catch-all", 4.0),
        // A service with no routes has one, named default.
        ("plain", "default", 5.0),
    ] {
        assert_eq!(
            metric_value(&metrics, &series(service, route)),
            n,
            "{service}/{route} in:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("route=\"route-0\"") && !metrics.contains("route=\"route-2\""),
        "named routes keep their names:\n{metrics}"
    );
    // Durations carry the same route label.
    assert!(
        metrics.contains(
            "remora_request_duration_seconds_count{direction=\"outbound\",service=\"web\",route=\"route-1\",classification=\"success\"} 3"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn faults_abort_with_the_configured_status_and_delay_requests() {
    let web = Upstream::named("web").await;
    let mesh = format!(
        "services:
  web:
    endpoints: [ {{ address: {} }} ]
    routes:
      - name: broken
        match: {{ path_prefix: /broken/ }}
        fault: {{ abort: {{ percent: 100, status: 418 }} }}
      - name: slow
        match: {{ path_prefix: /slow/ }}
        fault: {{ delay: {{ percent: 100, duration: 400ms }} }}
      - name: never
        match: {{ path_prefix: /never/ }}
        fault: {{ abort: {{ percent: 0, status: 500 }}, delay: {{ percent: 0, duration: 10s }} }}
",
        web.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    for i in 0..10 {
        let r = client
            .get_via(proxy.outbound, "web", &format!("/broken/{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 418);
        assert_eq!(r.header("remora-error"), Some("fault-injected"));
    }
    assert_eq!(web.hits(), 0, "an aborted request never leaves the proxy");

    for _ in 0..3 {
        let started = Instant::now();
        let r = client
            .get_via(proxy.outbound, "web", "/slow/x")
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "web"));
        assert!(
            took >= Duration::from_millis(400),
            "a 400ms delay took {took:?}"
        );
    }
    assert_eq!(web.hits(), 3, "a delayed request is still sent");

    // 0% injects nothing: one 10s delay would break the time limit.
    let started = Instant::now();
    for _ in 0..5 {
        let r = client
            .get_via(proxy.outbound, "web", "/never/x")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no delay at 0%"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "remora_requests_total{direction=\"outbound\",service=\"web\",route=\"broken\",status_code=\"418\""
        ),
        10.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn split_weights_too_large_to_add_up_are_rejected_and_the_last_good_split_kept() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let mesh = |weight_a: u64, weight_b: u64| {
        format!(
            "services:
  web:
    endpoints:
      - {{ address: {}, labels: {{ name: a }} }}
      - {{ address: {}, labels: {{ name: b }} }}
    routes:
      - split:
          - {{ labels: {{ name: a }}, weight: {weight_a} }}
          - {{ labels: {{ name: b }}, weight: {weight_b} }}
",
            a.addr, b.addr
        )
    };
    let proxy = Proxy::start(&mesh(1, 0), dead_address().await).await;
    let client = Client::http1();
    let config = || async {
        let r = client.get(&proxy.admin_url("/config")).await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
    };
    let version = config().await["version"].clone();

    proxy.write_config(&mesh(3_000_000_000, 3_000_000_000));
    eventually(
        Duration::from_secs(10),
        "the edit to be rejected",
        || async {
            config().await["last_error"].as_str().is_some_and(|e| {
                e.contains("routes[0].split") && e.contains("add up to 6000000000")
            })
        },
    )
    .await;
    assert_eq!(
        config().await["version"],
        version,
        "the last good config stays"
    );
    assert_eq!(
        tally(&client, &proxy, "web", "/", 10).await.get("a"),
        Some(&10)
    );

    // The proxy still takes the next good edit.
    proxy.write_config(&mesh(0, 1));
    eventually(
        Duration::from_secs(10),
        "the next good edit to apply",
        || async {
            client
                .get_via(proxy.outbound, "web", "/")
                .await
                .unwrap()
                .text()
                == "b"
        },
    )
    .await;
}
