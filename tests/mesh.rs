//! Proxies and the control plane together, all real processes: lazy
//! discovery on the app's first call, live route changes, registration
//! and expiry, inbound policy from the control plane, fail-static through
//! a control-plane restart, one shared connection, many proxies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_e2e::upstream::dead_address;
use remora_e2e::{
    eventually, metric_value, split_mesh, switch_without_failures, Client, ControlPlane, Proxy,
    Upstream,
};

/// Config changes are meant to be live within a second; this bound is for
/// slow machines running tests in parallel, not a measure (the figure is
/// printed).
const PUSH_LIMIT: Duration = Duration::from_secs(2);

async fn config_json(proxy: &Proxy) -> serde_json::Value {
    let r = Client::http1()
        .get(&proxy.admin_url("/config"))
        .await
        .expect("GET /config");
    serde_json::from_slice(&r.body).expect("/config is JSON")
}

async fn services(control: &ControlPlane) -> serde_json::Value {
    let r = Client::http1()
        .get(&format!("{}/v1/services", control.url()))
        .await
        .expect("GET /v1/services");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("/v1/services is JSON")
}

/// The addresses registered for `service`, sorted.
async fn registered(control: &ControlPlane, service: &str) -> Vec<String> {
    let listing = services(control).await;
    let mut addresses: Vec<String> = listing["services"][service]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["source"] == "registration")
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect();
    addresses.sort();
    addresses
}

#[tokio::test]
async fn the_first_call_to_a_service_waits_for_its_view_and_later_calls_use_it() {
    let orders = Upstream::named("orders").await;
    let control = ControlPlane::start(&format!(
        "services:\n  orders:\n    endpoints: [ {{ address: {} }} ]\n",
        orders.addr
    ))
    .await;
    let web = Upstream::named("web").await;
    let proxy = Proxy::controlled(&control.url(), "web", web.addr, &[]).await;
    let before = config_json(&proxy).await;
    assert!(
        before["mesh"]["services"].as_object().unwrap().is_empty(),
        "nothing is watched before the app calls: {before}"
    );

    let client = Client::http1();
    for i in 0..5 {
        let r = client
            .get_via(proxy.outbound, "orders", "/")
            .await
            .expect("a response");
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "orders"),
            "call {i}"
        );
    }
    assert_eq!(orders.hits(), 5);

    let config = config_json(&proxy).await;
    let view = config["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["resource"] == "outbound/orders")
        .unwrap_or_else(|| panic!("no outbound/orders view in {config}"));
    assert!(view["version"].as_u64().unwrap() > 0, "{view}");
    assert!(view["age_seconds"].as_f64().unwrap() >= 0.0, "{view}");
    assert!(config["views"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["resource"] == "inbound/web"));
    let metrics = proxy.metrics().await;
    let updates = "remora_control_updates_total{resource=\"outbound\"}";
    assert!(metric_value(&metrics, updates) >= 1.0, "{metrics}");
    let connected = "remora_control_connected{resource=\"outbound\"}";
    assert_eq!(metric_value(&metrics, connected), 1.0, "{metrics}");
}

#[tokio::test]
async fn an_unknown_service_is_404_until_it_appears_in_the_config() {
    let control = ControlPlane::start("services: {}\n").await;
    let web = Upstream::named("web").await;
    let proxy = Proxy::controlled(&control.url(), "web", web.addr, &[]).await;
    let client = Client::http1();
    let started = Instant::now();
    let r = client
        .get_via(proxy.outbound, "billing", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.header("remora-error"), Some("unknown-service"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an unknown service must not wait for the long-poll"
    );

    // The service stays watched: once the config names it, it works.
    let billing = Upstream::named("billing").await;
    control.write_config(&format!(
        "services:\n  billing:\n    endpoints: [ {{ address: {} }} ]\n",
        billing.addr
    ));
    eventually(Duration::from_secs(5), "billing to be served", || {
        let client = client.clone();
        let outbound = proxy.outbound;
        async move {
            client
                .get_via(outbound, "billing", "/")
                .await
                .is_ok_and(|r| r.status == 200 && r.text() == "billing")
        }
    })
    .await;
}

#[tokio::test]
async fn a_call_gives_up_with_discovery_timeout_when_the_control_plane_is_away() {
    let proxy = Proxy::controlled_unready(
        &format!("http://{}", dead_address().await),
        "web",
        dead_address().await,
        &["--discovery-timeout", "300ms"],
    )
    .await;
    let started = Instant::now();
    let r = Client::http1()
        .get_via(proxy.outbound, "orders", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("remora-error"), Some("discovery-timeout"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let ready = Client::http1()
        .get(&proxy.admin_url("/ready"))
        .await
        .unwrap();
    assert_eq!(
        ready.status, 503,
        "no inbound view, no registration: not ready"
    );
    let config = config_json(&proxy).await;
    assert!(
        config["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("control plane")),
        "{config}"
    );
}

#[tokio::test]
async fn a_route_change_in_mesh_yaml_reaches_a_running_proxy_without_a_failed_request() {
    let v1 = Upstream::named("v1").await;
    let v2 = Upstream::named("v2").await;
    let control = ControlPlane::start(&split_mesh(v1.addr, v2.addr, "v1")).await;
    let web = Upstream::named("web").await;
    let proxy = Proxy::controlled(&control.url(), "web", web.addr, &[]).await;
    let client = Client::via(proxy.outbound, false);
    let took = switch_without_failures(&client, PUSH_LIMIT, || {
        control.write_config(&split_mesh(v1.addr, v2.addr, "v2"))
    })
    .await;
    eprintln!("mesh.yaml write to the first request on the new route: {took:?}");
}

#[tokio::test]
async fn the_pod_ip_is_advertised_with_the_inbound_port() {
    let control = ControlPlane::start("services: {}\n").await;
    let app = Upstream::named("a").await;
    let proxy = Proxy::controlled(
        &control.url(),
        "catalog",
        app.addr,
        &["--pod-ip", "127.0.0.3"],
    )
    .await;
    let expected = format!("127.0.0.3:{}", proxy.inbound.port());
    assert_eq!(registered(&control, "catalog").await, [expected]);
}

#[tokio::test]
async fn registered_endpoints_are_called_and_leave_when_they_expire_or_drain() {
    // Round-robin, so every instance is reached in a few calls.
    let control =
        ControlPlane::start("services:\n  catalog: { load_balancer: round-robin }\n").await;
    let app_a = Upstream::named("a").await;
    let app_b = Upstream::named("b").await;
    let ttl = ["--registration-ttl", "2s", "--label", "version=v1"];
    let mut a = Proxy::controlled(&control.url(), "catalog", app_a.addr, &ttl).await;
    let b = Proxy::controlled(&control.url(), "catalog", app_b.addr, &ttl).await;
    let web = Upstream::named("web").await;
    let caller = Proxy::controlled(&control.url(), "web", web.addr, &[]).await;

    let mut both = vec![a.inbound.to_string(), b.inbound.to_string()];
    both.sort();
    assert_eq!(registered(&control, "catalog").await, both);
    let listing = services(&control).await;
    let endpoint = &listing["services"]["catalog"]["endpoints"][0];
    assert_eq!(endpoint["labels"]["version"], "v1", "{listing}");
    assert_eq!(endpoint["health"], "alive", "{listing}");

    // The caller's sidecar reaches both instances through their sidecars.
    let client = Client::http1();
    let mut bodies = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = client
            .get_via(caller.outbound, "catalog", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        bodies.insert(r.text());
    }
    assert_eq!(bodies.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    // A killed instance cannot deregister: its registration expires.
    b.signal("KILL");
    let expected = vec![a.inbound.to_string()];
    eventually(Duration::from_secs(6), "b's registration to expire", || {
        let (control, expected) = (&control, expected.clone());
        async move { registered(control, "catalog").await == expected }
    })
    .await;

    // A draining instance deregisters at once, well before its TTL.
    a.signal("TERM");
    let started = Instant::now();
    eventually(Duration::from_secs(5), "a to deregister", || async {
        registered(&control, "catalog").await.is_empty()
    })
    .await;
    assert!(a.wait_exit(Duration::from_secs(10)).await.success());
    eprintln!("deregistered {:?} after SIGTERM", started.elapsed());
}

#[tokio::test]
async fn the_inbound_rate_limit_comes_from_the_control_plane_and_changes_live() {
    let limited = |rps: u32| {
        format!(
            "services:\n  catalog:\n    inbound: {{ rate_limit: {{ requests_per_second: {rps}, burst: {rps} }} }}\n"
        )
    };
    let control = ControlPlane::start(&limited(1)).await;
    let app = Upstream::named("catalog").await;
    let proxy = Proxy::controlled(&control.url(), "catalog", app.addr, &[]).await;
    let client = Client::http1();
    let url = format!("http://{}/", proxy.inbound);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(client.get(&url).await.unwrap().status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");

    control.write_config(&limited(100_000));
    eventually(Duration::from_secs(5), "the raised limit to apply", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            for _ in 0..20 {
                if client.get(&url).await.map(|r| r.status) != Ok(http::StatusCode::OK) {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

#[tokio::test]
async fn every_watch_and_the_registration_share_one_connection() {
    let upstream = Upstream::named("x").await;
    let mesh: String = ["a", "b", "c"]
        .iter()
        .map(|s| {
            format!(
                "  {s}:\n    endpoints: [ {{ address: {} }} ]\n",
                upstream.addr
            )
        })
        .collect();
    let control = ControlPlane::start(&format!("services:\n{mesh}")).await;
    let proxy = Proxy::controlled(&control.url(), "web", upstream.addr, &[]).await;
    let client = Client::http1();
    for service in ["a", "b", "c"] {
        let r = client.get_via(proxy.outbound, service, "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    // Four long-polls and a registration are in play; one connection
    // carries them all.
    assert_eq!(established_to(control.api), 1);
}

/// Established TCP connections to `server` from this network namespace.
fn established_to(server: SocketAddr) -> usize {
    const ESTABLISHED: &str = "01";
    let port = format!("{:04X}", server.port());
    std::fs::read_to_string("/proc/net/tcp")
        .expect("reading /proc/net/tcp")
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2].ends_with(&format!(":{port}")) && fields[3] == ESTABLISHED
        })
        .count()
}

#[tokio::test]
async fn proxies_keep_serving_through_a_control_plane_restart() {
    // `catalog` is configured in the file and its endpoints registered: a
    // restarted control plane knows the service at once but not its
    // endpoints until they register again.
    const MESH: &str = "services:\n  catalog: { timeout: 5s }\n";
    let control = ControlPlane::start(MESH).await;
    let api = control.api;
    let app = Upstream::named("catalog").await;
    let server = Proxy::controlled(&control.url(), "catalog", app.addr, &[]).await;
    let web = Upstream::named("web").await;
    let caller = Proxy::controlled(&control.url(), "web", web.addr, &[]).await;
    let client = Client::via(caller.outbound, false);
    let r = client.get("http://catalog/").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Steady load through the caller's sidecar for the whole restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (stop, sent, failed, client) =
            (stop.clone(), sent.clone(), failed.clone(), client.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                sent.fetch_add(1, Ordering::Relaxed);
                match client.get("http://catalog/").await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {} {}", r.status, r.text());
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    control.signal("KILL");
    drop(control);
    // Away for a while: both proxies serve from their last views.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let away = config_json(&caller).await;
    assert!(away["last_error"].is_string(), "{away}");
    let metrics = caller.metrics().await;
    assert_eq!(
        metric_value(&metrics, "remora_control_connected{resource=\"outbound\"}"),
        0.0,
        "{metrics}"
    );

    // The grace must outlast the proxies' reconnection backoff (at most
    // 500ms between tries) and their re-registration, as the default of
    // 15s does: a proxy that comes
    // back later than the grace registers too late for the first view.
    let control = ControlPlane::start_on(MESH, api, &["--restart-grace", "6s"]).await;
    // Soft state comes back from re-registration.
    let expected = vec![server.inbound.to_string()];
    eventually(Duration::from_secs(15), "the server to re-register", || {
        let (control, expected) = (&control, expected.clone());
        async move { registered(control, "catalog").await == expected }
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the caller to reconnect",
        || async {
            let metrics = caller.metrics().await;
            metric_value(&metrics, "remora_control_connected{resource=\"outbound\"}") == 1.0
        },
    )
    .await;
    // A change right after the restart, within its grace, reaches the
    // connected proxy like any other: within a second.
    control.write_config("services:\n  catalog: { timeout: 7s }\n");
    let edited = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the edit to reach the caller",
        || async {
            let config = config_json(&caller).await;
            config["mesh"]["services"]["catalog"]["timeout"] == "7s"
        },
    )
    .await;
    let took = edited.elapsed();
    println!("an edit made during the restart grace reached the caller in {took:?}");
    assert!(took < Duration::from_secs(1), "the edit took {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 100, "only {sent} requests were sent");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

#[tokio::test]
async fn many_proxies_share_one_control_plane() {
    const SERVERS: usize = 8;
    const CALLERS: usize = 4;
    let control =
        ControlPlane::start("services:\n  catalog: { load_balancer: round-robin }\n").await;
    let mut apps = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..SERVERS {
        let app = Upstream::start(|_req| async { remora_e2e::upstream::text("ok") }).await;
        servers.push(Proxy::controlled(&control.url(), "catalog", app.addr, &[]).await);
        apps.push(app);
    }
    let mut callers = Vec::new();
    let web = Upstream::named("web").await;
    for _ in 0..CALLERS {
        callers.push(Proxy::controlled(&control.url(), "web", web.addr, &[]).await);
    }
    assert_eq!(registered(&control, "catalog").await.len(), SERVERS);
    let client = Client::http1();
    for caller in &callers {
        for _ in 0..SERVERS * 6 {
            let r = client
                .get_via(caller.outbound, "catalog", "/")
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    // Every caller sees every instance: together they reach all of them.
    let reached = apps.iter().filter(|a| a.hits() > 0).count();
    assert_eq!(
        reached,
        SERVERS,
        "hits: {:?}",
        apps.iter().map(Upstream::hits).collect::<Vec<_>>()
    );
    for caller in &callers {
        let config = config_json(caller).await;
        let endpoints = config["mesh"]["services"]["catalog"]["endpoints"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(endpoints, SERVERS, "{config}");
    }
}
