//! The admin server and telemetry: `/metrics` (checked by Prometheus' own
//! `promtool`), health, `/config`, the run-time log level, the access log,
//! request ids and trace context, and `POST /shutdown`.

use std::time::Duration;

use http::Request;
use remora_e2e::client::body;
use remora_e2e::promtool::{have_promtool, promtool_check};
use remora_e2e::upstream::dead_address;
use remora_e2e::{eventually, Client, Proxy, Upstream};

fn mesh(service: &str, upstream: &Upstream) -> String {
    format!(
        "services:\n  {service}:\n    endpoints: [ {{ address: {} }} ]\n",
        upstream.addr
    )
}

/// A proxy with `orders` in its mesh and an app behind its inbound side,
/// after one request each way.
async fn proxy_with_traffic() -> (Proxy, Upstream, Upstream) {
    let orders = Upstream::named("orders").await;
    let app = Upstream::named("app").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    let out = Client::http1()
        .get_via(proxy.outbound, "orders", "/out")
        .await
        .unwrap();
    assert_eq!(out.status, 200);
    let inb = Client::http1()
        .get_via(proxy.inbound, "app", "/in")
        .await
        .unwrap();
    assert_eq!(inb.status, 200);
    (proxy, orders, app)
}

fn has_series(metrics: &str, name: &str, labels: &[&str]) -> bool {
    metrics.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            && labels.iter().all(|label| l.contains(label))
    })
}

#[tokio::test]
async fn metrics_carry_the_contract_names_and_pass_promtool() {
    let (proxy, _orders, _app) = proxy_with_traffic().await;
    let r = Client::http1()
        .get(&proxy.admin_url("/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    let metrics = r.text();
    let expected: [(&str, &[&str]); 12] = [
        (
            "remora_requests_total",
            &[
                "direction=\"outbound\"",
                "service=\"orders\"",
                "route=\"default\"",
                "status_code=\"200\"",
                "classification=\"success\"",
                "tls=\"false\"",
                "peer=\"unmeshed\"",
            ],
        ),
        (
            "remora_requests_total",
            &[
                "direction=\"inbound\"",
                "service=\"app\"",
                "route=\"inbound\"",
                "status_code=\"200\"",
                "classification=\"success\"",
                "peer=\"unmeshed\"",
            ],
        ),
        (
            "remora_request_duration_seconds_bucket",
            &[
                "direction=\"outbound\"",
                "service=\"orders\"",
                "route=\"default\"",
                "classification=\"success\"",
                "le=\"+Inf\"",
            ],
        ),
        (
            "remora_request_duration_seconds_count",
            &["direction=\"inbound\"", "classification=\"success\""],
        ),
        (
            "remora_request_duration_seconds_sum",
            &["direction=\"outbound\""],
        ),
        (
            "remora_connections_open",
            &["direction=\"inbound\"", "tls=\"false\""],
        ),
        (
            "remora_connections_total",
            &["direction=\"outbound\"", "tls=\"false\""],
        ),
        (
            "remora_bytes_total",
            &["direction=\"outbound\"", "rw=\"read\""],
        ),
        (
            "remora_bytes_total",
            &["direction=\"inbound\"", "rw=\"write\""],
        ),
        ("process_resident_memory_bytes", &[]),
        ("process_cpu_seconds_total", &[]),
        ("process_open_fds", &[]),
    ];
    for (name, labels) in expected {
        assert!(
            has_series(&metrics, name, labels),
            "no {name} with {labels:?} in:\n{metrics}"
        );
    }
    let count = |prefix: &str| remora_e2e::metric_value(&metrics, prefix);
    assert_eq!(
        count("remora_requests_total{direction=\"outbound\",service=\"orders\""),
        1.0
    );
    assert_eq!(
        count("remora_request_duration_seconds_count{direction=\"inbound\""),
        1.0
    );
    assert!(count("remora_connections_total{direction=\"inbound\"") >= 1.0);
    assert!(count("remora_bytes_total{direction=\"outbound\",rw=\"read\"") > 0.0);
    assert!(count("process_resident_memory_bytes") > 0.0);
    assert!(count("process_open_fds") > 0.0);
    assert!(!metrics.contains("# EOF"), "# EOF is OpenMetrics only");
    if have_promtool() {
        if let Err(complaint) = promtool_check(&metrics) {
            panic!("promtool check metrics failed:\n{complaint}\nthe exposition:\n{metrics}");
        }
    }
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    // The check above can fail: promtool does find problems.
    let broken = "# HELP bad_total A counter.\n# TYPE bad_total counter\nbad_total{x=\"1\" 1\n";
    if have_promtool() {
        assert!(promtool_check(broken).is_err());
    }
}

#[tokio::test]
async fn openmetrics_is_served_when_asked_for() {
    let (proxy, _orders, _app) = proxy_with_traffic().await;
    let req = Request::get(proxy.admin_url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
        )
        .body(body(""))
        .unwrap();
    let r = Client::http1().send(req).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE remora_requests counter"), "{text}");
    assert!(
        text.contains("remora_requests_total{direction=\"outbound\""),
        "{text}"
    );
}

#[tokio::test]
async fn health_endpoints_and_wrong_requests() {
    let proxy = Proxy::start("services: {}\n", dead_address().await).await;
    let client = Client::http1();
    for (path, status) in [("/ready", 200), ("/live", 200), ("/nope", 404)] {
        let r = client.get(&proxy.admin_url(path)).await.unwrap();
        assert_eq!(r.status, status, "GET {path}: {}", r.text());
    }
    for (method, path) in [
        ("POST", "/metrics"),
        ("DELETE", "/ready"),
        ("PUT", "/live"),
        ("GET", "/shutdown"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(proxy.admin_url(path))
            .body(body(""))
            .unwrap();
        let r = client.send(req).await.unwrap();
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
    }
    // The wrong method on /shutdown did not shut anything down.
    let r = client.get(&proxy.admin_url("/ready")).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn config_shows_listeners_version_age_and_the_mesh() {
    let orders = Upstream::named("orders").await;
    let app = Upstream::named("app").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    let r = Client::http1()
        .get(&proxy.admin_url("/config"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let config: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let listeners = &config["listeners"];
    for (name, addr) in [
        ("outbound", proxy.outbound),
        ("inbound", proxy.inbound),
        ("admin", proxy.admin),
        ("app", app.addr),
    ] {
        assert_eq!(
            listeners[name].as_str(),
            Some(addr.to_string().as_str()),
            "{config:#}"
        );
    }
    assert!(config["version"].is_u64(), "{config:#}");
    assert!(
        config["age_seconds"].as_f64().is_some_and(|a| a >= 0.0),
        "{config:#}"
    );
    let endpoints = &config["mesh"]["services"]["orders"]["endpoints"];
    assert_eq!(
        endpoints[0]["address"].as_str(),
        Some(orders.addr.to_string().as_str()),
        "{config:#}"
    );
}

/// Access-log lines for the request with this id.
fn access_lines(proxy: &Proxy, request_id: &str) -> Vec<serde_json::Value> {
    proxy
        .access_log()
        .into_iter()
        .filter(|l| l["request_id"] == request_id)
        .collect()
}

async fn get_with_id(proxy: &Proxy, id: &str) {
    let req = Request::get(format!("http://{}/x", proxy.outbound))
        .header("host", "orders")
        .header("x-request-id", id)
        .body(body(""))
        .unwrap();
    let r = Client::http1().send(req).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_log_level_changes_at_run_time() {
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), dead_address().await).await;
    let client = Client::http1();
    let url = proxy.admin_url("/log-level");
    let put = |level: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let req = Request::put(url).body(body(level)).unwrap();
            client.send(req).await.unwrap()
        }
    };
    let current = client.get(&url).await.unwrap();
    assert_eq!(
        (current.status.as_u16(), current.text().trim()),
        (200, "info")
    );

    get_with_id(&proxy, "before").await;
    eventually(Duration::from_secs(5), "an access-log line", || async {
        access_lines(&proxy, "before").len() == 1
    })
    .await;

    let r = put("info,remora::access=off").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let current = client.get(&url).await.unwrap();
    let filter = current.text();
    assert!(
        filter.contains("remora::access=off") && filter.contains("info"),
        "{filter}"
    );
    get_with_id(&proxy, "while-off").await;

    // Turned back on, the next request is logged; the one in between,
    // logged in order before it had it been logged at all, is not there.
    assert_eq!(put("info").await.status, 200);
    get_with_id(&proxy, "after").await;
    eventually(
        Duration::from_secs(5),
        "the access log to resume",
        || async { access_lines(&proxy, "after").len() == 1 },
    )
    .await;
    assert!(access_lines(&proxy, "while-off").is_empty());

    let r = put("remora=loudest").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("remora=loudest"), "{}", r.text());
    let current = client.get(&url).await.unwrap();
    assert_eq!(
        current.text().trim(),
        "info",
        "a bad filter changes nothing"
    );
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request() {
    let (proxy, orders, app) = proxy_with_traffic().await;
    let req = Request::post(format!("http://{}/orders/7?full=1", proxy.outbound))
        .header("host", "orders:80")
        .header("x-request-id", "out-1")
        .body(body("x"))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.unwrap().status, 200);
    let req = Request::get(format!("http://{}/inside", proxy.inbound))
        .header("host", "app")
        .header("x-request-id", "in-1")
        .body(body(""))
        .unwrap();
    assert_eq!(Client::http1().send(req).await.unwrap().status, 200);
    eventually(Duration::from_secs(5), "both access-log lines", || async {
        !access_lines(&proxy, "out-1").is_empty() && !access_lines(&proxy, "in-1").is_empty()
    })
    .await;

    let out = access_lines(&proxy, "out-1");
    assert_eq!(out.len(), 1, "{out:?}");
    let line = &out[0];
    for (field, value) in [
        ("direction", "outbound"),
        ("service", "orders"),
        ("route", "default"),
        ("method", "POST"),
        ("authority", "orders:80"),
        ("path", "/orders/7"),
        ("endpoint", &orders.addr.to_string()),
    ] {
        assert_eq!(line[field].as_str(), Some(value), "{field} in {line}");
    }
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["retries"], 0, "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");

    let inb = access_lines(&proxy, "in-1");
    assert_eq!(inb.len(), 1, "{inb:?}");
    let line = &inb[0];
    for (field, value) in [
        ("direction", "inbound"),
        ("service", "app"),
        ("route", "inbound"),
        ("method", "GET"),
        ("authority", "app"),
        ("path", "/inside"),
        ("endpoint", &app.addr.to_string()),
    ] {
        assert_eq!(line[field].as_str(), Some(value), "{field} in {line}");
    }
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["retries"], 0, "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

#[tokio::test]
async fn request_ids_and_trace_context_are_created_or_kept() {
    let (proxy, orders, app) = proxy_with_traffic().await;
    for (direction, listener, upstream, host) in [
        ("outbound", proxy.outbound, &orders, "orders"),
        ("inbound", proxy.inbound, &app, "app"),
    ] {
        // None sent: both are made, and the access log names the same id.
        let r = Client::http1()
            .get_via(listener, host, "/fresh")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let seen = upstream.last();
        let id = seen.headers["x-request-id"].to_str().unwrap().to_string();
        assert!(is_uuid(&id), "{direction}: x-request-id {id}");
        let trace = seen.headers["traceparent"].to_str().unwrap();
        assert!(is_traceparent(trace), "{direction}: traceparent {trace}");
        eventually(Duration::from_secs(5), "the access-log line", || async {
            access_lines(&proxy, &id).len() == 1
        })
        .await;
        assert_eq!(access_lines(&proxy, &id)[0]["direction"], direction);

        // Both sent: passed on unchanged.
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let req = Request::get(format!("http://{listener}/kept"))
            .header("host", host)
            .header("x-request-id", "caller-chose-this")
            .header("traceparent", trace)
            .body(body(""))
            .unwrap();
        assert_eq!(Client::http1().send(req).await.unwrap().status, 200);
        let seen = upstream.last();
        assert_eq!(seen.path, "/kept");
        assert_eq!(seen.headers["x-request-id"], "caller-chose-this");
        assert_eq!(seen.headers["traceparent"], trace);
    }
    // Each request without an id got its own: two from proxy_with_traffic
    // and one per direction above.
    let made: Vec<String> = orders
        .seen()
        .iter()
        .chain(app.seen().iter())
        .map(|s| s.headers["x-request-id"].to_str().unwrap().to_string())
        .filter(|id| id != "caller-chose-this")
        .collect();
    let unique: std::collections::HashSet<&String> = made.iter().collect();
    assert_eq!((made.len(), unique.len()), (4, 4), "{made:?}");
}

#[tokio::test]
async fn post_shutdown_from_loopback_exits_cleanly() {
    let mut proxy = Proxy::start("services: {}\n", dead_address().await).await;
    let req = Request::post(proxy.admin_url("/shutdown"))
        .body(body(""))
        .unwrap();
    let r = Client::http1().send(req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_apps_probes_are_forwarded_and_nothing_else() {
    let app = Upstream::start(|req| async move {
        match req.uri().path() {
            "/healthz" => remora_e2e::upstream::text("ok"),
            _ => remora_e2e::upstream::status(500, "sick"),
        }
    })
    .await;
    let port = app.addr.port();
    let probes = format!("{port}/healthz?full=1,{port}/sick");
    let proxy = Proxy::start_with("services: {}\n", app.addr, &["--app-probes", &probes]).await;
    let client = Client::http1();
    let probe = |path: String| {
        let (client, url) = (client.clone(), proxy.admin_url(&path));
        async move { client.get(&url).await.unwrap() }
    };
    let r = probe(format!("/app-probe/{port}/healthz?full=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/healthz");
    assert_eq!(probe(format!("/app-probe/{port}/sick")).await.status, 500);
    // Not a probe the proxy was given: the app is not asked.
    for other in [
        format!("/app-probe/{port}/healthz"),
        format!("/app-probe/{port}/admin"),
        "/app-probe/22/".to_string(),
    ] {
        assert_eq!(probe(other.clone()).await.status, 404, "{other}");
    }
    assert_eq!(app.seen().len(), 2);
    // An app that is down fails its probe.
    drop(app);
    assert_eq!(
        probe(format!("/app-probe/{port}/healthz?full=1"))
            .await
            .status,
        503
    );
}

/// The kubelet's other probes, of real servers: gRPC's health service
/// (grpcio), HTTPS with a certificate no one trusts (Python's), and TCP.
#[tokio::test]
async fn grpc_https_and_tcp_probes_are_asked_as_the_kubelet_asks() {
    let Some(python) = remora_e2e::python::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("app.crt"), dir.path().join("app.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (mut app, grpc) = remora_e2e::python::Script::serving(
        &python,
        "probe_targets.py",
        &[cert.to_str().unwrap(), key.to_str().unwrap()],
    )
    .await;
    let https = app.next(Duration::from_secs(5)).await["https_port"]
        .as_u64()
        .unwrap();
    let closed = dead_address().await.port();
    let grpc = grpc.port();
    let probes = [
        format!("grpc:{grpc}"),
        format!("grpc:{grpc}/shop.Orders"),
        format!("grpc:{grpc}/shop.Sick"),
        format!("grpc:{grpc}/shop.Unknown"),
        format!("https:{https}/healthz"),
        format!("https:{https}/other"),
        format!("tcp:{grpc}"),
        format!("tcp:{closed}"),
    ];
    let proxy = Proxy::start_with(
        "services: {}\n",
        dead_address().await,
        &["--app-probes", &probes.join(",")],
    )
    .await;
    let client = Client::http1();
    let probe = |target: &str, header: Option<&str>| {
        let mut req = Request::get(proxy.admin_url(&format!("/app-probe/{target}")));
        if let Some(value) = header {
            req = req.header("x-probe", value);
        }
        let (client, req) = (client.clone(), req.body(body("")).unwrap());
        async move { client.send(req).await.unwrap() }
    };
    for (target, status) in [
        (format!("grpc:{grpc}"), 200),
        (format!("grpc:{grpc}/shop.Orders"), 200),
        (format!("grpc:{grpc}/shop.Sick"), 503),
        (format!("grpc:{grpc}/shop.Unknown"), 503),
        (format!("https:{https}/other"), 500),
        (format!("tcp:{grpc}"), 200),
        (format!("tcp:{closed}"), 503),
        // Not given: never asked.
        (format!("grpc:{grpc}/shop.Other"), 404),
        (format!("tcp:{https}"), 404),
    ] {
        let r = probe(&target, None).await;
        assert_eq!(r.status, status, "{target}: {}", r.text());
    }
    // The probe's headers (its httpHeaders, which the kubelet sends to the
    // admin port) reach the app.
    let healthz = format!("https:{https}/healthz");
    assert_eq!(probe(&healthz, None).await.status, 403);
    let r = probe(&healthz, Some("from-the-kubelet")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "the app answered 200 OK\n");
    drop(app);
}
