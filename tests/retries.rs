//! Timeouts and retries through the real proxy: the request's timeout over
//! all its tries, per-try and connect timeouts, each retry condition, the
//! methods and bodies that may be sent again, the endpoint a retry avoids,
//! the retry budget and the backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use remora_e2e::client::{body, Body as ClientBody};
use remora_e2e::upstream::{
    closes_kept_alive_connections, dead_address, read_head, status, text, Body,
};
use remora_e2e::{metric_value, Client, Proxy, Reply, Upstream};
use socket2::{Domain, Socket, Type};

/// One try: the endpoint that got it and the body it carried.
type Try = (&'static str, Bytes);

/// Every try of each request (by its `x-key` header), in order.
#[derive(Clone, Default)]
struct Tries(Arc<Mutex<HashMap<String, Vec<Try>>>>);

impl Tries {
    fn of(&self, key: &str) -> Vec<Try> {
        self.0.lock().unwrap().get(key).cloned().unwrap_or_default()
    }
}

/// An endpoint named `name` that reads the whole body, then fails the
/// first try of each key as its `x-fail` header says (`grpc`: a 200 with
/// `grpc-status: 14`; otherwise the status code) and answers any later
/// try `200 ok`. With `x-early: 1` the first try fails at once and its
/// body is read on in the background (and not recorded).
async fn fails_first_try(name: &'static str, tries: &Tries) -> Upstream {
    let tries = tries.clone();
    Upstream::start(move |req: Request<Incoming>| {
        let tries = tries.clone();
        async move {
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let (key, fail, early) = (header("x-key"), header("x-fail"), header("x-early"));
            let first = !tries.0.lock().unwrap().contains_key(&key);
            let body = if first && early == "1" {
                tokio::spawn(req.into_body().collect());
                Bytes::new()
            } else {
                req.into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default()
            };
            tries
                .0
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push((name, body));
            failure(first, &fail)
        }
    })
    .await
}

fn failure(first: bool, fail: &str) -> Response<Body> {
    match fail {
        _ if !first => text("ok"),
        "grpc" => {
            let mut r = text("failed");
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("14"));
            r
        }
        code => status(code.parse().expect("x-fail: a status or grpc"), "failed"),
    }
}

/// An endpoint that answers every request with `code`.
async fn always(code: u16) -> Upstream {
    Upstream::start(move |_req| async move { status(code, "failed") }).await
}

/// An endpoint that answers after `delay`.
async fn slow(delay: Duration) -> Upstream {
    Upstream::start(move |_req| async move {
        tokio::time::sleep(delay).await;
        text("slow")
    })
    .await
}

async fn send(
    client: &Client,
    method: &str,
    url: &str,
    (key, fail): (&str, &str),
    payload: ClientBody,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("x-key", key)
        .header("x-fail", fail)
        .body(payload)
        .unwrap();
    client.send(req).await.unwrap()
}

/// The start of a metric's series for `service`'s default route; a label
/// the metric adds (`reason`) follows with `,`.
fn on_route(metric: &str, service: &str) -> String {
    format!("{metric}{{direction=\"outbound\",service=\"{service}\",route=\"default\"")
}

fn retries(metrics: &str, service: &str, reason: &str) -> f64 {
    let prefix = format!(
        "{},reason=\"{reason}\"}}",
        on_route("remora_retries_total", service)
    );
    metric_value(metrics, &prefix)
}

/// An address whose TCP handshakes never complete: a listener that never
/// accepts, with its accept queue (backlog 0) already full, so the kernel
/// drops further SYNs and a connect hangs until its own timeout. The
/// sockets returned must live as long as the address is used.
async fn unanswered_address() -> (SocketAddr, Vec<Socket>) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![listener];
    for _ in 0..3 {
        let filler = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        filler.set_nonblocking(true).unwrap();
        // Done or in progress: the first takes the only place in the
        // queue, the others hang in SYN-SENT.
        let _ = filler.connect(&addr.into());
        held.push(filler);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    assert!(
        probe.is_err(),
        "a connect to a full accept queue completed ({probe:?}): this kernel answers SYNs it cannot queue"
    );
    (addr, held)
}

#[tokio::test]
async fn a_timeout_answers_504_and_is_counted() {
    let late = slow(Duration::from_secs(30)).await;
    let mesh = format!(
        "services:\n  late:\n    timeout: 300ms\n    endpoints: [ {{ address: {} }} ]\n",
        late.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let started = Instant::now();
    let r = Client::via(proxy.outbound, false)
        .get("http://late/")
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.header("remora-error"), Some("timeout"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(&metrics, &on_route("remora_timeouts_total", "late")),
        1.0,
        "{metrics}"
    );
    assert_eq!(late.hits(), 1);
}

#[tokio::test]
async fn the_timeout_bounds_all_tries_together() {
    // Four tries of up to 300ms each would take 1.2s; the request has
    // 500ms, room for a second try but not a third.
    let late = slow(Duration::from_secs(30)).await;
    let mesh = format!(
        "services:
  late:
    timeout: 500ms
    retry: {{ attempts: 3, on: [per-try-timeout], per_try_timeout: 300ms }}
    endpoints: [ {{ address: {} }} ]
",
        late.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let started = Instant::now();
    let r = Client::via(proxy.outbound, false)
        .get("http://late/")
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.header("remora-error"), Some("timeout"));
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(late.hits() <= 2, "no try after the request's time ran out");
}

#[tokio::test]
async fn a_route_timeout_shorter_than_the_per_try_timeout_ends_the_try() {
    // The file is good (its longer per-try timeout is only noted): the
    // proxy starts and serves, and the route's 300ms ends the try long
    // before the service's 5s per-try timeout could.
    let late = Upstream::start(|req: Request<Incoming>| async move {
        if req.uri().path() != "/fast" {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        text("answered")
    })
    .await;
    let mesh = format!(
        "services:
  late:
    retry: {{ attempts: 2, on: [per-try-timeout], per_try_timeout: 5s }}
    endpoints: [ {{ address: {} }} ]
    routes:
      - name: short
        timeout: 300ms
",
        late.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    let r = client.get("http://late/fast").await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "answered"));

    let started = Instant::now();
    let r = client.get("http://late/slow").await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.header("remora-error"), Some("timeout"));
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(2)).contains(&took),
        "took {took:?}"
    );
    assert_eq!(late.hits(), 2, "one try for each request, no retry");

    let metrics = proxy.metrics().await;
    let route = "{direction=\"outbound\",service=\"late\",route=\"short\"";
    assert_eq!(
        metric_value(&metrics, &format!("remora_timeouts_total{route}")),
        1.0,
        "counted once, by the route: {metrics}"
    );
    assert_eq!(
        metric_value(&metrics, &format!("remora_retries_total{route}")),
        0.0,
        "{metrics}"
    );
    let logs = proxy.logs();
    assert!(
        logs.iter().any(|l| l.contains("WARN")
            && l.contains(
                "services.late.routes[0].timeout: 300ms is shorter than the per_try_timeout of 5s"
            )),
        "the note is logged: {logs:?}"
    );
}

#[tokio::test]
async fn a_slow_try_is_abandoned_for_another_endpoint() {
    let late = slow(Duration::from_secs(30)).await;
    let fast = Upstream::named("fast").await;
    let mesh = format!(
        "services:
  pair:
    load_balancer: round-robin
    retry: {{ attempts: 1, on: [per-try-timeout], per_try_timeout: 200ms }}
    endpoints: [ {{ address: {} }}, {{ address: {} }} ]
",
        late.addr, fast.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    // In turn, so the slow endpoint is tried first at least every other time.
    for i in 0..4 {
        let started = Instant::now();
        let r = client.get(&format!("http://pair/{i}")).await.unwrap();
        let took = started.elapsed();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "fast"));
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    assert!(late.hits() >= 1, "the slow endpoint was never tried");
    assert_eq!(fast.hits(), 4);
    let metrics = proxy.metrics().await;
    assert_eq!(
        retries(&metrics, "pair", "per-try-timeout"),
        late.hits() as f64,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connect_timeout_fails_fast_as_a_connect_failure() {
    // The breaker is off: the two services share the stuck endpoint (and
    // so its breaker), which would otherwise be out after its first
    // connect failure.
    let (stuck, _held) = unanswered_address().await;
    let live = Upstream::named("live").await;
    let mesh = format!(
        "services:
  stuck:
    connect_timeout: 200ms
    circuit_breaker: {{ enabled: false }}
    endpoints: [ {{ address: {stuck} }} ]
  either:
    connect_timeout: 200ms
    load_balancer: round-robin
    retry: {{ on: [connect-failure] }}
    circuit_breaker: {{ enabled: false }}
    endpoints: [ {{ address: {stuck} }}, {{ address: {} }} ]
",
        live.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    let started = Instant::now();
    let r = client.get("http://stuck/").await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("remora-error"), Some("upstream-refused"));
    assert!(r.text().contains("timed out"), "{}", r.text());
    // A connect timeout is a connect failure to the retry conditions.
    for i in 0..4 {
        let r = client.get(&format!("http://either/{i}")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "live"));
    }
    let metrics = proxy.metrics().await;
    assert!(
        retries(&metrics, "either", "connect-failure") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn connect_failures_are_retried_on_a_live_endpoint() {
    let dead = dead_address().await;
    let live = Upstream::named("live").await;
    let mesh = format!(
        "services:
  pair:
    load_balancer: round-robin
    retry: {{ on: [connect-failure] }}
    circuit_breaker: {{ enabled: false }}
    endpoints: [ {{ address: {dead} }}, {{ address: {} }} ]
",
        live.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    let mut counted = 0.0;
    for round in 0..2 {
        for i in 0..4 {
            let r = client
                .get(&format!("http://pair/{round}/{i}"))
                .await
                .unwrap();
            assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "live"));
        }
        let metrics = proxy.metrics().await;
        let now = retries(&metrics, "pair", "connect-failure");
        assert!(
            now > counted,
            "round {round}: {now} after {counted}\n{metrics}"
        );
        counted = now;
    }
    assert_eq!(live.hits(), 8);
}

#[tokio::test]
async fn each_condition_retries_only_what_it_names() {
    let tries = Tries::default();
    let up = fails_first_try("up", &tries).await;
    let mut mesh = String::from("services:\n");
    for (service, on) in [
        ("any5xx", "5xx"),
        ("gateway", "gateway-error"),
        ("conflict", "retriable-4xx"),
        ("grpc", "\"grpc:unavailable\""),
    ] {
        mesh += &format!(
            "  {service}:\n    retry: {{ attempts: 1, on: [{on}] }}\n    endpoints: [ {{ address: {} }} ]\n",
            up.addr
        );
    }
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    // (service, the first try's failure, whether it is retried)
    let cases = [
        ("any5xx", "500", true),
        ("any5xx", "502", true),
        ("any5xx", "503", true),
        ("any5xx", "409", false),
        ("any5xx", "grpc", false),
        ("gateway", "500", false),
        ("gateway", "502", true),
        ("gateway", "503", true),
        ("gateway", "504", true),
        ("gateway", "409", false),
        ("conflict", "409", true),
        ("conflict", "503", false),
        ("conflict", "grpc", false),
        ("grpc", "grpc", true),
        ("grpc", "503", false),
        ("grpc", "409", false),
    ];
    for (service, fail, retried) in cases {
        let key = format!("{service}-{fail}");
        let url = format!("http://{service}/");
        let r = send(&client, "GET", &url, (&key, fail), body(Bytes::new())).await;
        let tries = tries.of(&key).len();
        if retried {
            assert_eq!((r.status.as_u16(), tries), (200, 2), "{key}: {r:?}");
            assert_eq!(r.text(), "ok", "{key}");
        } else {
            let expected = if fail == "grpc" {
                200
            } else {
                fail.parse().unwrap()
            };
            assert_eq!((r.status.as_u16(), tries), (expected, 1), "{key}: {r:?}");
            assert_eq!(r.text(), "failed", "{key}");
        }
    }
    let metrics = proxy.metrics().await;
    for (service, reason, count) in [
        ("any5xx", "5xx", 3.0),
        ("gateway", "5xx", 3.0),
        ("conflict", "retriable-4xx", 1.0),
        ("grpc", "grpc:unavailable", 1.0),
    ] {
        assert_eq!(
            retries(&metrics, service, reason),
            count,
            "{service}\n{metrics}"
        );
    }
}

#[tokio::test]
async fn post_is_retried_only_when_non_idempotent_is_set() {
    let tries = Tries::default();
    let up = fails_first_try("up", &tries).await;
    let mesh = format!(
        "services:
  plain:
    retry: {{ attempts: 1, on: [5xx] }}
    endpoints: [ {{ address: {0} }} ]
  opted:
    retry: {{ attempts: 1, on: [5xx], non_idempotent: true }}
    endpoints: [ {{ address: {0} }} ]
",
        up.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);

    let r = send(
        &client,
        "POST",
        "http://plain/orders",
        ("post", "503"),
        body("order"),
    )
    .await;
    assert_eq!((r.status.as_u16(), tries.of("post").len()), (503, 1));
    // The same policy retries an idempotent method.
    let r = send(
        &client,
        "PUT",
        "http://plain/orders",
        ("put", "503"),
        body("order"),
    )
    .await;
    assert_eq!((r.status.as_u16(), tries.of("put").len()), (200, 2));

    let r = send(
        &client,
        "POST",
        "http://opted/orders",
        ("opted", "503"),
        body("order"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let sent: Vec<_> = tries.of("opted").into_iter().map(|(_, b)| b).collect();
    assert_eq!(sent, ["order", "order"]);
}

/// `len` bytes that do not repeat in step with any chunk size.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn chunked(data: &[u8], chunk: usize) -> ClientBody {
    let frames: Vec<Result<_, Box<dyn std::error::Error + Send + Sync>>> = data
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// Two endpoints that fail each key's first try, and a service over both
/// that retries any 5xx once (after `backoff`).
async fn replay_setup(tries: &Tries, backoff: &str) -> (Upstream, Upstream, Proxy) {
    let a = fails_first_try("a", tries).await;
    let b = fails_first_try("b", tries).await;
    let mesh = format!(
        "services:
  store:
    load_balancer: least-request
    retry: {{ attempts: 1, on: [5xx], backoff: {backoff} }}
    endpoints: [ {{ address: {} }}, {{ address: {} }} ]
",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    (a, b, proxy)
}

fn assert_same_bytes(got: &[u8], sent: &[u8], what: &str) {
    assert_eq!(got.len(), sent.len(), "{what}: length");
    if let Some(at) = got.iter().zip(sent).position(|(g, s)| g != s) {
        panic!("{what}: the bytes differ from byte {at} on");
    }
}

#[tokio::test]
async fn a_body_up_to_64_kib_is_replayed_whole() {
    let tries = Tries::default();
    let (_a, _b, proxy) = replay_setup(&tries, "{ base: 25ms, max: 25ms }").await;
    let client = Client::via(proxy.outbound, false);
    let data = payload(64 * 1024);
    for (key, request_body) in [
        ("sized", body(data.clone())),
        ("chunked", chunked(&data, 4096)),
    ] {
        let r = send(
            &client,
            "PUT",
            "http://store/blob",
            (key, "503"),
            request_body,
        )
        .await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"), "{key}");
        let seen = tries.of(key);
        assert_eq!(seen.len(), 2, "{key}");
        assert_ne!(
            seen[0].0, seen[1].0,
            "{key}: the retry went to the other endpoint"
        );
        for (endpoint, got) in &seen {
            assert_same_bytes(got, &data, &format!("{key} at {endpoint}"));
        }
    }
}

#[tokio::test]
async fn a_body_over_64_kib_is_not_retried() {
    let tries = Tries::default();
    let (_a, _b, proxy) = replay_setup(&tries, "{ base: 25ms, max: 25ms }").await;
    let client = Client::via(proxy.outbound, false);
    let data = payload(100 * 1024);
    for (key, request_body) in [
        ("sized", body(data.clone())),
        ("chunked", chunked(&data, 4096)),
    ] {
        let r = send(
            &client,
            "PUT",
            "http://store/blob",
            (key, "503"),
            request_body,
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (503, "failed"),
            "{key}"
        );
        let seen = tries.of(key);
        assert_eq!(seen.len(), 1, "{key}");
        assert_same_bytes(&seen[0].1, &data, key);
    }
    let metrics = proxy.metrics().await;
    assert_eq!(retries(&metrics, "store", "5xx"), 0.0, "{metrics}");
}

#[tokio::test]
async fn a_retry_goes_on_reading_the_body_past_what_it_kept() {
    // The first try fails before its endpoint reads the body; the rest of
    // the body, 100 KiB more, is sent while the retry waits out its
    // backoff. The abandoned try must not read it on past the cap, which
    // would leave the retry with nothing to send.
    let tries = Tries::default();
    let (_a, _b, proxy) = replay_setup(&tries, "{ base: 1s, max: 1s }").await;
    let data = payload(101 * 1024);
    let (tx, frames) = remora_e2e::client::channel_body(4);
    let req = Request::put("http://store/late")
        .header("x-key", "late")
        .header("x-fail", "503")
        .header("x-early", "1")
        .body(frames)
        .unwrap();
    let client = Client::via(proxy.outbound, false);
    let reply = tokio::spawn(async move { client.send(req).await });
    let (head, rest) = data.split_at(1024);
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(head))))
        .await
        .unwrap();
    remora_e2e::eventually(Duration::from_secs(10), "a retry to be decided", || {
        let proxy = &proxy;
        async move { retries(&proxy.metrics().await, "store", "5xx") == 1.0 }
    })
    .await;
    for chunk in rest.chunks(4096) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .await
            .unwrap();
    }
    drop(tx);
    let r = reply.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    let seen = tries.of("late");
    assert_eq!(seen.len(), 2);
    assert_same_bytes(&seen[1].1, &data, "the retry's body");
}

#[tokio::test]
async fn a_retry_avoids_the_endpoint_that_just_failed() {
    // Ring-hash sends each key to one endpoint: without avoidance, every
    // retry of a key the failing endpoint owns would go back to it.
    let failing = always(503).await;
    let working = Upstream::named("working").await;
    let mesh = format!(
        "services:
  pair:
    load_balancer: ring-hash
    hash_on: {{ header: x-user }}
    retry: {{ attempts: 1, on: [5xx] }}
    circuit_breaker: {{ enabled: false }}
    endpoints: [ {{ address: {} }}, {{ address: {} }} ]
",
        failing.addr, working.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    let mut sent = 0;
    while failing.hits() < 10 && sent < 300 {
        let req = Request::get(format!("http://pair/{sent}"))
            .header("x-user", format!("user-{sent}"))
            .body(body(Bytes::new()))
            .unwrap();
        let r = client.send(req).await.unwrap();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "working"));
        sent += 1;
    }
    assert!(
        failing.hits() >= 10,
        "{} first tries of {sent} hit the failing endpoint",
        failing.hits()
    );
    assert_eq!(
        working.hits(),
        sent,
        "each request ended at the working one, once"
    );
}

#[tokio::test]
async fn the_retry_budget_bounds_retries() {
    let a = always(503).await;
    let b = always(503).await;
    let mesh = format!(
        "services:
  down:
    retry: {{ attempts: 2, on: [5xx], budget_percent: 0, min_retries_per_second: 1 }}
    endpoints: [ {{ address: {} }}, {{ address: {} }} ]
",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    const BURST: usize = 60;
    let replies = futures_util::future::join_all((0..BURST).map(|i| {
        let client = client.clone();
        async move { client.get(&format!("http://down/{i}")).await.unwrap() }
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 503));
    let metrics = proxy.metrics().await;
    let sent_again = retries(&metrics, "down", "5xx");
    let refused = metric_value(
        &metrics,
        &on_route("remora_retry_budget_exhausted_total", "down"),
    );
    // 1 retry/s over the 10s window: about 10, where 120 were asked for.
    assert!(sent_again <= 20.0, "{sent_again} retries\n{metrics}");
    assert!(refused > 0.0, "{metrics}");
    assert_eq!(a.hits() + b.hits(), BURST + sent_again as usize);
}

#[tokio::test]
async fn backoff_waits_at_most_its_ceiling() {
    let failing = always(503).await;
    let working = Upstream::named("working").await;
    let mesh = format!(
        "services:
  pair:
    load_balancer: round-robin
    retry: {{ attempts: 1, on: [5xx], backoff: {{ base: 200ms, max: 200ms }} }}
    circuit_breaker: {{ enabled: false }}
    endpoints: [ {{ address: {} }}, {{ address: {} }} ]
",
        failing.addr, working.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    let (mut sent, mut retried) = (0, 0);
    while retried < 5 && sent < 200 {
        let before = failing.hits();
        let started = Instant::now();
        let r = client.get(&format!("http://pair/{sent}")).await.unwrap();
        sent += 1;
        let took = started.elapsed();
        assert_eq!(r.status, 200);
        if failing.hits() > before {
            retried += 1;
            // At most 200ms of backoff, with generous room for the tries.
            assert!(
                took < Duration::from_secs(1),
                "a retried request took {took:?}"
            );
        }
    }
    assert_eq!(retried, 5);
}

/// An endpoint that answers `200` with half of its promised body and then
/// drops the connection; counts the requests it saw.
async fn breaks_mid_body() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly half of it";
                let _ = stream.write_all(partial).await;
                let _ = stream.flush().await;
                // Dropping the stream closes it mid-body.
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_response_that_broke_after_its_headers_is_not_retried() {
    let (addr, seen) = breaks_mid_body().await;
    let mesh = format!(
        "services:
  flaky:
    endpoints: [ {{ address: {addr} }} ]
    retry: {{ attempts: 2, on: [reset, connect-failure, 5xx], backoff: {{ base: 1ms, max: 1ms }} }}
"
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let response = Client::via(proxy.outbound, false)
        .send_streaming(
            Request::get("http://flaky/")
                .body(body(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    // The headers reached the client, so the request is the client's now:
    // its body fails, and nothing is sent again behind its back.
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .unwrap();
    assert!(
        collected.is_err(),
        "a body cut short must not look complete"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the endpoint saw one try"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(&m, &on_route("remora_retries_total", "flaky")),
        0.0,
        "{m}"
    );
}

/// Answers `NAME:BODY`, the request's body read whole.
async fn echoes(name: &'static str) -> Upstream {
    Upstream::start(move |req: Request<Incoming>| async move {
        let got = req.into_body().collect().await.unwrap().to_bytes();
        text(format!("{name}:{}", String::from_utf8_lossy(&got)))
    })
    .await
}

#[tokio::test]
async fn a_request_that_never_reached_its_endpoint_goes_to_another_whatever_the_policy() {
    // No retry policy at all, and one instance of three gone: connections
    // to it are refused. Round-robin sends it every third request (p2c
    // might never pick it once the others have answered fast), and with
    // the circuit breaker off it is never taken out of balancing.
    let (a, b, dead) = (echoes("a").await, echoes("b").await, dead_address().await);
    let mesh = format!(
        "services:\n  trio:\n    load_balancer: round-robin\n    circuit_breaker: {{ enabled: false }}\n    endpoints: [ {{ address: {} }}, {{ address: {} }}, {{ address: {dead} }} ]\n",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    for i in 0..150 {
        let r = client.get(&format!("http://trio/get/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "GET {i}: {}", r.text());
        assert!(["a:", "b:"].contains(&r.text().as_str()), "{}", r.text());
    }
    // Even a POST, with its body: it never reached the dead instance.
    for i in 0..30 {
        let order = format!("order-{i}");
        let req = Request::post("http://trio/orders")
            .body(body(order.clone()))
            .unwrap();
        let r = client.send(req).await.unwrap();
        assert_eq!(r.status, 200, "POST {i}: {}", r.text());
        assert!(r.text().ends_with(&format!(":{order}")), "{}", r.text());
    }
    assert_eq!(a.hits() + b.hits(), 180, "each request answered once");
    let metrics = proxy.metrics().await;
    assert!(
        retries(&metrics, "trio", "connect-failure") >= 30.0,
        "the dead instance's turns were resent, and counted\n{metrics}"
    );
}

#[tokio::test]
async fn a_request_no_endpoint_can_take_is_resent_a_bounded_number_of_times() {
    let dead = dead_address().await;
    let mesh = format!("services:\n  gone:\n    endpoints: [ {{ address: {dead} }} ]\n");
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    let r = client.get("http://gone/").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("remora-error"), Some("upstream-refused"));
    let metrics = proxy.metrics().await;
    assert_eq!(
        retries(&metrics, "gone", "connect-failure"),
        3.0,
        "three resends, then the caller is told\n{metrics}"
    );
}

/// An h2c endpoint that turns every stream away unprocessed
/// (`RST_STREAM(REFUSED_STREAM)`), as an HTTP/2 server at its stream
/// limit does; counts the streams it refused.
async fn refuses_every_stream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, refused)
}

/// A proxy in front of an h2c service of two endpoints: `other`, then an
/// echoing one. No retry policy; round-robin and no breaker, so that
/// `other` keeps its turns.
async fn h2c_pair(other: SocketAddr) -> (Proxy, Upstream) {
    let good = echoes("good").await;
    let mesh = format!(
        "services:
  h2:
    protocol: http2
    load_balancer: round-robin
    circuit_breaker: {{ enabled: false }}
    endpoints: [ {{ address: {other} }}, {{ address: {} }} ]
",
        good.addr
    );
    (Proxy::start(&mesh, dead_address().await).await, good)
}

/// POSTs order `i` to `h2` and asserts that the echoing endpoint took it.
async fn post_order(client: &Client, i: usize) {
    let req = Request::post("http://h2/orders")
        .body(body(format!("order-{i}")))
        .unwrap();
    let r = client.send(req).await.unwrap();
    assert_eq!(r.status, 200, "POST {i}: {}", r.text());
    assert_eq!(r.text(), format!("good:order-{i}"));
}

#[tokio::test]
async fn a_refused_stream_goes_to_another_endpoint_whatever_the_method_or_policy() {
    let (refusing, refused) = refuses_every_stream().await;
    let (proxy, _good) = h2c_pair(refusing).await;
    let client = Client::via(proxy.outbound, false);
    for i in 0..10 {
        let r = client.get(&format!("http://h2/{i}")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "good:"));
        post_order(&client, i).await;
    }
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        refused >= 5,
        "the refusing endpoint had its turns: {refused}"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        retries(&metrics, "h2", "refused-stream"),
        refused as f64,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_get_on_a_pooled_connection_the_server_closed_is_resent_a_post_is_not() {
    let addr = closes_kept_alive_connections().await;
    let mesh = format!("services:\n  stale:\n    endpoints: [ {{ address: {addr} }} ]\n");
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    for i in 0..6 {
        let r = client.get(&format!("http://stale/{i}")).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "fresh"),
            "GET {i}"
        );
    }
    let metrics = proxy.metrics().await;
    assert!(retries(&metrics, "stale", "reset") >= 3.0, "{metrics}");
    // A POST may have had its effect: the caller is told instead.
    let mut posts = Vec::new();
    for i in 0..2 {
        let req = Request::post("http://stale/orders")
            .body(body(format!("{i}")))
            .unwrap();
        posts.push(client.send(req).await.unwrap());
    }
    let failed: Vec<_> = posts.iter().filter(|r| r.status != 200).collect();
    assert_eq!(failed.len(), 1, "one of two POSTs met a reused connection");
    assert_eq!(failed[0].header("remora-error"), Some("upstream-reset"));
}

/// An h2c endpoint that answers each connection's first request with a
/// graceful `GOAWAY` that takes no stream (last stream id 0, `NO_ERROR`),
/// as a server that starts shutting down as a request arrives does; counts
/// the requests it turned away. Written frame by frame, since an HTTP/2
/// library counts the stream it read as taken.
async fn goes_away() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 4;
    const HEADERS: u8 = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let turned_away = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = turned_away.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if socket.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Our (empty) settings.
                let _ = socket.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await;
                loop {
                    let mut header = [0u8; 9];
                    if socket.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let mut payload = vec![0u8; len];
                    if socket.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    match header[3] {
                        SETTINGS if header[4] & 1 == 0 => {
                            let _ = socket.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0]).await;
                        }
                        HEADERS => {
                            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            // GOAWAY: last stream id 0, NO_ERROR.
                            let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                            let _ = socket.write_all(&goaway).await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, turned_away)
}

#[tokio::test]
async fn a_request_a_graceful_goaway_did_not_take_goes_to_another_endpoint() {
    let (leaving, turned_away) = goes_away().await;
    let (proxy, _good) = h2c_pair(leaving).await;
    let client = Client::via(proxy.outbound, false);
    for i in 0..6 {
        post_order(&client, i).await;
    }
    let turned_away = turned_away.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        turned_away >= 3,
        "the leaving endpoint had its turns: {turned_away}"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        retries(&metrics, "h2", "refused-stream"),
        turned_away as f64,
        "{metrics}"
    );
}

/// An HTTP/1.1 endpoint that reads each request's head and then resets
/// the connection unanswered, as an endpoint killed mid-request does;
/// counts the requests it took.
async fn resets_mid_request() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if !read_head(&mut socket).await {
                    return;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Closed with a RST rather than a FIN.
                let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
            });
        }
    });
    (addr, taken)
}

#[tokio::test]
async fn a_get_whose_endpoint_resets_mid_request_goes_to_another_a_post_does_not() {
    let (resets, taken) = resets_mid_request().await;
    let live = Upstream::named("live").await;
    let mesh = format!(
        "services:\n  orders:\n    load_balancer: round-robin\n    circuit_breaker: {{ enabled: false }}\n    endpoints: [ {{ address: {resets} }}, {{ address: {} }} ]\n",
        live.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    for i in 0..6 {
        let r = client.get(&format!("http://orders/{i}")).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "live"),
            "GET {i}"
        );
    }
    assert!(taken.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    let metrics = proxy.metrics().await;
    assert!(retries(&metrics, "orders", "reset") >= 3.0, "{metrics}");
    // A POST may have had its effect: the caller is told instead.
    let mut failed = 0;
    for i in 0..4 {
        let req = Request::post("http://orders/orders")
            .body(body(format!("{i}")))
            .unwrap();
        let r = client.send(req).await.unwrap();
        if r.status != 200 {
            assert_eq!(r.header("remora-error"), Some("upstream-reset"));
            failed += 1;
        }
    }
    assert!(failed >= 1, "no POST met the endpoint that resets");
}
