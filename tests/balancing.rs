//! Load balancing through the real proxy: each balancer's choice, pooled
//! upstream connections and their idle timeout, gRPC spoken in HTTP/2,
//! and the circuit breaker ejecting a failing endpoint.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use remora_e2e::client::body;
use remora_e2e::upstream::{dead_address, status, text};
use remora_e2e::{eventually, metric_value, Client, Proxy, Upstream};
use tokio::sync::watch;

fn service(name: &str, settings: &str, upstreams: &[&Upstream]) -> String {
    let endpoints: Vec<String> = upstreams
        .iter()
        .map(|u| format!("{{ address: {} }}", u.addr))
        .collect();
    format!(
        "  {name}:\n{settings}    endpoints: [ {} ]\n",
        endpoints.join(", ")
    )
}

/// Sends `n` GETs to `host` and counts the answers by body.
async fn tally(client: &Client, proxy: &Proxy, host: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let r = client
            .get_via(proxy.outbound, host, &format!("/{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *counts.entry(r.text()).or_default() += 1;
    }
    counts
}

/// An upstream that holds each request until `gate` opens.
async fn gated(name: &'static str, gate: &watch::Sender<bool>) -> Upstream {
    let gate = gate.subscribe();
    Upstream::start(move |_req| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            text(name)
        }
    })
    .await
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (
        Upstream::named("a").await,
        Upstream::named("b").await,
        Upstream::named("c").await,
    );
    let mesh = format!(
        "services:\n{}",
        service("web", "    load_balancer: round-robin\n", &[&a, &b, &c])
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let counts = tally(&Client::http1(), &proxy, "web", 300).await;
    for name in ["a", "b", "c"] {
        assert_eq!(counts.get(name), Some(&100), "{counts:?}");
    }
}

#[tokio::test]
async fn p2c_ewma_sends_most_traffic_away_from_a_slow_endpoint() {
    let slow = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text("slow")
    })
    .await;
    let fast = Upstream::named("fast").await;
    // No load_balancer: p2c-ewma is the default.
    let mesh = format!("services:\n{}", service("web", "", &[&slow, &fast]));
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    // Eight callers at once, 25 requests each.
    let workers = (0..8).map(|_| tally(&client, &proxy, "web", 25));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for c in futures_util::future::join_all(workers).await {
        for (k, v) in c {
            *counts.entry(k).or_default() += v;
        }
    }
    let to_fast = counts.get("fast").copied().unwrap_or(0);
    assert_eq!(to_fast + counts.get("slow").copied().unwrap_or(0), 200);
    // Blind alternation would give each half.
    assert!(to_fast >= 160, "the fast endpoint served {counts:?}");
}

#[tokio::test]
async fn least_request_avoids_an_endpoint_with_requests_outstanding() {
    let (release_busy, _) = watch::channel(false);
    let (release_idle, _) = watch::channel(false);
    let busy = gated("busy", &release_busy).await;
    let idle = gated("idle", &release_idle).await;
    let mesh = format!(
        "services:\n{}",
        service("web", "    load_balancer: least-request\n", &[&busy, &idle])
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();

    // Ten held requests, one at a time: each goes to the endpoint with fewer
    // outstanding, so they split evenly.
    let mut held = Vec::new();
    for i in 1..=10 {
        let (client, outbound) = (client.clone(), proxy.outbound);
        held.push(tokio::spawn(async move {
            client.get_via(outbound, "web", "/held").await
        }));
        eventually(Duration::from_secs(10), "the request to arrive", || {
            let arrived = busy.hits() + idle.hits();
            async move { arrived == i }
        })
        .await;
    }
    assert_eq!((busy.hits(), idle.hits()), (5, 5));

    // One endpoint finishes its five; the other still has five outstanding.
    release_idle.send_replace(true);
    eventually(
        Duration::from_secs(10),
        "the idle endpoint's answers",
        || {
            let finished = held.iter().filter(|h| h.is_finished()).count();
            async move { finished == 5 }
        },
    )
    .await;
    let (finished, held): (Vec<_>, Vec<_>) = held.into_iter().partition(|h| h.is_finished());
    let mut answers = Vec::new();
    for h in finished {
        answers.push(h.await.unwrap().unwrap().text());
    }
    assert!(answers.iter().all(|a| a == "idle"), "{answers:?}");

    let counts = tally(&client, &proxy, "web", 40).await;
    assert_eq!(counts.get("idle"), Some(&40), "{counts:?}");
    assert_eq!(busy.hits(), 5);

    release_busy.send_replace(true);
    for h in held {
        let r = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("the held requests finish once released")
            .unwrap()
            .unwrap();
        assert_eq!(r.text(), "busy");
    }
}

#[tokio::test]
async fn ring_hash_keeps_each_key_on_one_endpoint_and_spreads_keys() {
    let (a, b, c) = (
        Upstream::named("a").await,
        Upstream::named("b").await,
        Upstream::named("c").await,
    );
    let settings = "    load_balancer: ring-hash\n    hash_on: { header: x-user-id }\n";
    let mesh = format!("services:\n{}", service("web", settings, &[&a, &b, &c]));
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    let mut used = HashSet::new();
    for user in 0..20 {
        let mut landed = HashSet::new();
        for i in 0..5 {
            let req = Request::get(format!("http://{}/{i}", proxy.outbound))
                .header("host", "web")
                .header("x-user-id", format!("user-{user}"))
                .body(body(Bytes::new()))
                .unwrap();
            let r = client.send(req).await.unwrap();
            assert_eq!(r.status, 200);
            landed.insert(r.text());
        }
        assert_eq!(landed.len(), 1, "user-{user} reached {landed:?}");
        used.extend(landed);
    }
    assert!(used.len() > 1, "twenty keys all reached {used:?}");
    // With no key the request is still served.
    let r = client.get_via(proxy.outbound, "web", "/").await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn upstream_connections_are_pooled_until_idle_too_long() {
    let kept = Upstream::named("kept").await;
    let short = Upstream::named("short").await;
    let mesh = format!(
        "services:\n{}{}",
        service("kept", "", &[&kept]),
        service("short", "    idle_timeout: 300ms\n", &[&short])
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    for host in ["kept", "short"] {
        tally(&client, &proxy, host, 20).await;
    }
    let peers = |u: &Upstream| u.seen().iter().map(|s| s.peer).collect::<HashSet<_>>();
    assert_eq!(peers(&kept).len(), 1, "one connection carried all twenty");
    assert_eq!(peers(&short).len(), 1, "one connection carried all twenty");

    tokio::time::sleep(Duration::from_secs(1)).await;
    for host in ["kept", "short"] {
        tally(&client, &proxy, host, 1).await;
    }
    assert_eq!(
        peers(&kept).len(),
        1,
        "the default idle timeout keeps the connection"
    );
    assert_eq!(
        peers(&short).len(),
        2,
        "after 1s idle, a 300ms idle timeout closed the connection"
    );
}

#[tokio::test]
async fn grpc_services_are_spoken_to_in_http2_whatever_the_caller_speaks() {
    let echo = Upstream::start(|req: Request<Incoming>| async move {
        text(req.into_body().collect().await.unwrap().to_bytes())
    })
    .await;
    let mesh = format!(
        "services:\n{}{}",
        service("greeter", "    protocol: grpc\n", &[&echo]),
        service("plain", "", &[&echo])
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let post = |host: &str| {
        Request::post(format!(
            "http://{}/greeter.Greeter/SayHello",
            proxy.outbound
        ))
        .header("host", host)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body("hello"))
        .unwrap()
    };
    let client = Client::http1();
    let r = client.send(post("greeter")).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
    assert_eq!(
        r.version,
        Version::HTTP_11,
        "the caller is answered in kind"
    );
    assert_eq!(echo.last().version, Version::HTTP_2);
    assert_eq!(echo.last().path, "/greeter.Greeter/SayHello");
    assert_eq!(
        echo.last().headers["te"],
        "trailers",
        "gRPC needs it end to end"
    );
    // An http service is spoken to in the caller's version.
    let r = client.send(post("plain")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(echo.last().version, Version::HTTP_11);
}

#[tokio::test]
async fn the_circuit_breaker_ejects_an_endpoint_that_keeps_failing() {
    let bad = Upstream::start(|_req| async { status(503, "bad") }).await;
    let good = Upstream::named("good").await;
    // Round-robin so the failing endpoint is certain to be tried.
    let settings = "    load_balancer: round-robin
    circuit_breaker: { consecutive_failures: 3, base_ejection: 10s, max_ejected_percent: 50 }
";
    let mesh = format!("services:\n{}", service("flaky", settings, &[&bad, &good]));
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    let mut failures = 0;
    for i in 0..10 {
        let r = client
            .get_via(proxy.outbound, "flaky", &format!("/{i}"))
            .await
            .unwrap();
        if r.status == 503 {
            assert_eq!(r.text(), "bad", "the upstream's own 503 is passed on");
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "ejected after three failures in a row");
    assert_eq!(bad.hits(), 3);
    for i in 0..30 {
        let r = client
            .get_via(proxy.outbound, "flaky", &format!("/after/{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(bad.hits(), 3, "an ejected endpoint gets no traffic");
    let metrics = proxy.metrics().await;
    let ejections = |endpoint: &Upstream| {
        metric_value(
            &metrics,
            &format!(
                "remora_circuit_breaker_ejections_total{{direction=\"outbound\",service=\"flaky\",endpoint=\"{}\"}}",
                endpoint.addr
            ),
        )
    };
    assert_eq!(ejections(&bad), 1.0, "{metrics}");
    assert_eq!(ejections(&good), 0.0, "{metrics}");
}

#[tokio::test]
async fn an_ejected_endpoint_is_tried_again_once_its_ejection_ends() {
    let bad = Upstream::start(|_req| async { status(503, "bad") }).await;
    let good = Upstream::named("good").await;
    let settings = "    load_balancer: round-robin
    circuit_breaker: { consecutive_failures: 2, base_ejection: 300ms }
";
    let mesh = format!("services:\n{}", service("flaky", settings, &[&bad, &good]));
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    let ejections = || async {
        let series = format!(
            "remora_circuit_breaker_ejections_total{{direction=\"outbound\",service=\"flaky\",endpoint=\"{}\"}}",
            bad.addr
        );
        metric_value(&proxy.metrics().await, &series)
    };
    send_until(&client, &proxy, || bad.hits() == 2).await;
    let ejected = Instant::now();
    assert_eq!(
        ejections().await,
        1.0,
        "ejected after two failures in a row"
    );
    // Once the ejection ends it is tried again, on probation...
    send_until(&client, &proxy, || bad.hits() == 3).await;
    let first = ejected.elapsed();
    // ...where one failure ejects it again, for twice as long.
    let ejected = Instant::now();
    assert_eq!(ejections().await, 2.0);
    send_until(&client, &proxy, || bad.hits() == 4).await;
    let second = ejected.elapsed();
    // Lower bounds only (a slow machine only makes them longer), less a
    // little for the time the failing response took to come back.
    assert!(
        first >= Duration::from_millis(250),
        "first ejection {first:?}"
    );
    assert!(
        second >= Duration::from_millis(550),
        "second ejection {second:?}"
    );
}

/// Sends GETs to `flaky` one at a time, whatever they answer, until `done`
/// holds (within ten seconds).
async fn send_until(client: &Client, proxy: &Proxy, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not done within 10s");
        client.get_via(proxy.outbound, "flaky", "/").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The figures of a steady stream of GETs: how many, and which failed.
#[derive(Default)]
struct Stream {
    sent: usize,
    failed: Vec<String>,
}

impl Stream {
    /// Sends `n` GETs to `host`, one every 20 ms.
    async fn send(&mut self, client: &Client, proxy: &Proxy, host: &str, n: usize) {
        for _ in 0..n {
            let path = format!("/{}", self.sent);
            self.sent += 1;
            match client.get_via(proxy.outbound, host, &path).await {
                Ok(r) if r.status == 200 => {}
                Ok(r) => self
                    .failed
                    .push(format!("{path}: {} {}", r.status, r.text())),
                Err(e) => self.failed.push(format!("{path}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `/config` state of `endpoint` of `service`.
async fn endpoint_state(proxy: &Proxy, service: &str, endpoint: std::net::SocketAddr) -> String {
    let config = Client::http1()
        .get(&proxy.admin_url("/config"))
        .await
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(&config.text()).unwrap();
    let endpoints = config["endpoints"][service].as_array().cloned();
    endpoints
        .unwrap_or_default()
        .iter()
        .find(|e| e["address"] == endpoint.to_string())
        .and_then(|e| e["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{endpoint} of {service} in /config: {config}"))
}

#[tokio::test]
async fn with_the_default_config_a_dead_endpoint_costs_no_request() {
    // What a user writes first: endpoints and nothing else (p2c-ewma, no
    // retry, no circuit_breaker). The one that dies was the fastest, so
    // the balancer favours it, as it would a refused connection's
    // microseconds without a failure penalty.
    let answers_in = |name: &'static str, delay: u64| {
        Upstream::start(move |_req| async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            text(name)
        })
    };
    let (a, b, c) = (
        answers_in("a", 40).await,
        answers_in("b", 40).await,
        Upstream::named("c").await,
    );
    let mesh = format!("services:\n{}", service("web", "", &[&a, &b, &c]));
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    let mut stream = Stream::default();
    stream.send(&client, &proxy, "web", 30).await;
    assert!(c.hits() >= 10, "the fastest is favoured: {}", c.hits());
    let dead = c.addr;
    c.stop();
    // Once the proxy has seen its idle connection to `c` close, the next
    // request for `c` meets a refused connect. (One sent on that connection
    // before then is resent too, as an idempotent request whose connection
    // closed unanswered, but that is not this test's subject.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.send(&client, &proxy, "web", 120).await;
    assert!(
        stream.failed.is_empty(),
        "{} of {} failed: {:?}",
        stream.failed.len(),
        stream.sent,
        stream.failed
    );
    assert!(a.hits() + b.hits() >= 120, "{} {}", a.hits(), b.hits());
    let retries = metric_value(
        &proxy.metrics().await,
        "remora_retries_total{direction=\"outbound\",service=\"web\",route=\"default\",reason=\"connect-failure\"}",
    );
    assert!(
        retries <= 10.0,
        "once out, the dead endpoint is rarely tried: {retries}"
    );
    let metrics = proxy.metrics().await;
    let series = format!(
        "remora_circuit_breaker_ejections_total{{direction=\"outbound\",service=\"web\",endpoint=\"{dead}\"}}"
    );
    assert!(metric_value(&metrics, &series) >= 1.0, "{metrics}");
    // Ejected for a second at first, then on probation and ejected again
    // for longer at its next refused connection: mostly out.
    let state = endpoint_state(&proxy, "web", dead).await;
    assert!(
        ["ejected", "probation"].contains(&state.as_str()),
        "{state}"
    );
    assert_eq!(endpoint_state(&proxy, "web", a.addr).await, "active");
}

#[tokio::test]
async fn by_default_an_endpoint_failing_seven_times_in_a_row_is_ejected_unless_turned_off() {
    for (settings, ejected) in [
        ("    load_balancer: round-robin\n", true),
        (
            "    load_balancer: round-robin\n    circuit_breaker: { enabled: false }\n",
            false,
        ),
    ] {
        let bad = Upstream::start(|_req| async { status(500, "bad") }).await;
        let good = Upstream::named("good").await;
        let mesh = format!("services:\n{}", service("flaky", settings, &[&bad, &good]));
        let proxy = Proxy::start(&mesh, dead_address().await).await;
        let client = Client::http1();
        for i in 0..40 {
            client
                .get_via(proxy.outbound, "flaky", &format!("/{i}"))
                .await
                .unwrap();
        }
        let state = endpoint_state(&proxy, "flaky", bad.addr).await;
        if ejected {
            assert_eq!(bad.hits(), 7, "seven failures in a row, then out");
            assert_eq!(state, "ejected");
        } else {
            // Round-robin's penalty: while failing, it gives up every
            // other turn (a third of the requests instead of half).
            assert!((12..=15).contains(&bad.hits()), "{}", bad.hits());
            assert_eq!(state, "active");
        }
    }
}
