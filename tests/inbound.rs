//! The inbound listener (calls from other services to the local app) and
//! the hardening both listeners share against bad input: oversized headers,
//! request smuggling, slow clients and malformed bytes.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use remora_e2e::client::body;
use remora_e2e::upstream::{closes_kept_alive_connections, dead_address, text};
use remora_e2e::{Client, Proxy, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw exchange may take before the test calls it a hang.
const NO_HANG: Duration = Duration::from_secs(10);

fn mesh(service: &str, upstream: &Upstream) -> String {
    format!(
        "services:\n  {service}:\n    endpoints: [ {{ address: {} }} ]\n",
        upstream.addr
    )
}

/// An app that answers every request with its body, and says it was the app.
async fn echo_app() -> Upstream {
    Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let mut r = text(bytes);
        r.headers_mut()
            .insert("x-from", http::HeaderValue::from_static("app"));
        r
    })
    .await
}

/// Writes `bytes` on a new connection to `addr` and reads until the proxy
/// closes it. A write error is not a failure: the proxy may refuse and close
/// before it has read everything.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    read_until_closed(&mut s).await
}

async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(NO_HANG, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the proxy neither answered nor closed within {NO_HANG:?}; got so far: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response head (and whatever body came with it) from a
/// connection that stays open.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(NO_HANG, async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response");
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn requests_reach_the_app_with_forwarded_for_and_host() {
    let app = echo_app().await;
    let proxy = Proxy::start("services: {}\n", app.addr).await;
    let client = Client::via(proxy.inbound, false);

    let req = Request::post("http://orders.example:8080/place?id=7")
        .header("x-forwarded-for", "10.1.2.3")
        .body(body("one order"))
        .unwrap();
    let r = client.send(req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "one order");
    assert_eq!(r.header("x-from"), Some("app"));
    let seen = app.last();
    assert_eq!(seen.path, "/place");
    assert_eq!(seen.headers["host"], "orders.example:8080");
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");

    // A caller that sent none is named alone.
    let r = client.get("http://orders/second").await.unwrap();
    assert_eq!(r.status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["host"], "orders");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn http2_prior_knowledge_callers_reach_the_app() {
    let app = echo_app().await;
    let proxy = Proxy::start("services: {}\n", app.addr).await;
    let req = Request::put("http://orders/h2")
        .body(body("over h2"))
        .unwrap();
    let r = Client::via(proxy.inbound, true).send(req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.text(), "over h2");
    let seen = app.last();
    assert_eq!(seen.path, "/h2");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    // As `:authority`, with no `host` to disagree with it.
    assert_eq!(seen.authority.as_deref(), Some("orders"), "{seen:?}");
    assert!(seen.headers.get("host").is_none(), "{seen:?}");
}

#[tokio::test]
async fn oversized_headers_get_431_on_both_listeners() {
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    let filler = "a".repeat(14 * 1024);
    for (listener, addr) in [("inbound", proxy.inbound), ("outbound", proxy.outbound)] {
        // Five headers of 14 KiB: 70 KiB in all, none of them alone too big.
        let mut head = String::from("GET /big HTTP/1.1\r\nHost: orders\r\n");
        for i in 0..5 {
            head.push_str(&format!("x-filler-{i}: {filler}\r\n"));
        }
        head.push_str("\r\n");
        let out = exchange(addr, head.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 431"),
            "{listener}: {}",
            out.lines().next().unwrap_or("(closed without a response)")
        );

        // 60 KiB in one header is under the limit and passes.
        let big = "b".repeat(60 * 1024);
        let req = format!(
            "GET /just-under HTTP/1.1\r\nHost: orders\r\nx-big: {big}\r\nConnection: close\r\n\r\n"
        );
        let out = exchange(addr, req.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "{listener}: {}",
            out.lines().next().unwrap_or("(closed without a response)")
        );
    }
    for upstream in [&app, &orders] {
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1, "only the request under the limit arrives");
        assert_eq!(seen[0].path, "/just-under");
        assert_eq!(seen[0].headers["x-big"].len(), 60 * 1024);
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_on_both_listeners() {
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    // The classic smuggle: a front end that trusts Content-Length and a back
    // end that trusts Transfer-Encoding would disagree on where `GET
    // /smuggled` starts.
    let payload = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: orders\r\n\r\n";
    let heads = [
        format!(
            "POST /cl-first HTTP/1.1\r\nHost: orders\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            payload.len()
        ),
        format!(
            "POST /te-first HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        ),
    ];
    for (listener, addr) in [("inbound", proxy.inbound), ("outbound", proxy.outbound)] {
        for head in &heads {
            let out = exchange(addr, format!("{head}{payload}").as_bytes()).await;
            assert!(
                out.starts_with("HTTP/1.1 400") && out.contains("remora-error: bad-request"),
                "{listener}, {}: {out}",
                head.lines().next().unwrap()
            );
        }

        // After a well-formed chunked request on a kept-alive connection,
        // the next request is still seen for what it is.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /fine HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfine\r\n0\r\n\r\n")
            .await
            .unwrap();
        let out = read_response(&mut s).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{listener}: {out}");
        s.write_all(format!("{}{payload}", heads[1]).as_bytes())
            .await
            .unwrap();
        let out = read_until_closed(&mut s).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{listener}, the second request on a connection: {out}"
        );
    }
    for upstream in [&app, &orders] {
        let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
        assert_eq!(paths, ["/fine"], "only the well-formed request arrives");
    }
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_others_are_served() {
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start_with(
        &mesh("orders", &orders),
        app.addr,
        &["--header-read-timeout", "500ms"],
    )
    .await;
    for (listener, addr) in [("inbound", proxy.inbound), ("outbound", proxy.outbound)] {
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slo").await.unwrap();
        // Meanwhile, another connection is served at once.
        let r = Client::http1()
            .get_via(addr, "orders", "/quick")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{listener}");
        // The default limit is 10s; well before that, the stalled
        // connection is answered (408) or closed.
        let cut_off = tokio::time::timeout(Duration::from_secs(5), async {
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match slow.read(&mut buf).await {
                    Ok(0) | Err(_) => return out,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{listener}: a stalled client was still connected after 5s"));
        let out = String::from_utf8_lossy(&cut_off);
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 408"),
            "{listener}: {out}"
        );
    }
    assert!(app.seen().iter().all(|s| s.path == "/quick"));
    assert!(orders.seen().iter().all(|s| s.path == "/quick"));
}

#[tokio::test]
async fn malformed_http_is_refused_and_the_proxy_keeps_serving() {
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    let garbage: [&[u8]; 7] = [
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: orders\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: orders\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: orders\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: orders\r\nContent-Length: twelve\r\n\r\n",
        b"POST /bad-chunk HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbad\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03not really a TLS hello\r\n\r\n",
    ];
    for (listener, addr) in [("inbound", proxy.inbound), ("outbound", proxy.outbound)] {
        for bytes in garbage {
            let out = exchange(addr, bytes).await;
            assert!(
                out.is_empty() || out.starts_with("HTTP/1.1 400"),
                "{listener}, {:?}: {out}",
                String::from_utf8_lossy(bytes)
            );
        }
        // An HTTP/2 preface followed by junk frames: closed (with a GOAWAY).
        exchange(
            addr,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        )
        .await;
        let r = Client::http1()
            .get_via(addr, "orders", "/after")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{listener} still serves after bad input");
    }
    // The bad chunk follows a good head, so that request may have begun
    // upstream before its body failed; nothing else gets through.
    for upstream in [&app, &orders] {
        let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
        assert!(
            paths.iter().all(|p| p == "/after" || p == "/bad-chunk")
                && paths.iter().filter(|p| *p == "/after").count() == 1,
            "{paths:?}"
        );
    }
}

#[tokio::test]
async fn an_app_that_is_down_gives_502_naming_it() {
    let app = dead_address().await;
    let proxy = Proxy::start("services: {}\n", app).await;
    for http2 in [false, true] {
        let r = Client::via(proxy.inbound, http2)
            .get("http://orders/")
            .await
            .unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("remora-error"), Some("app-unreachable"));
        assert!(r.text().contains(&app.to_string()), "{}", r.text());
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        remora_e2e::metric_value(
            &metrics,
            "remora_requests_total{direction=\"inbound\",service=\"app\",route=\"inbound\",status_code=\"502\",classification=\"failure\""
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_services_rate_limit_answers_429_past_its_burst() {
    let app = Upstream::named("app").await;
    let limited = |burst: u32| {
        format!("services:\n  shop:\n    inbound: {{ rate_limit: {{ requests_per_second: 1, burst: {burst} }} }}\n")
    };
    let proxy = Proxy::start_with(&limited(3), app.addr, &["--service", "shop"]).await;
    let client = Client::http1();
    let url = format!("http://{}/", proxy.inbound);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = client.get(&url).await.unwrap();
        if r.status == 429 {
            assert_eq!(r.header("remora-error"), Some("rate-limited"));
        }
        statuses.push(r.status.as_u16());
    }
    // A refill of one token a second may let one more through on a slow run.
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!((3..=4).contains(&passed), "{statuses:?}");
    assert_eq!(app.hits(), passed, "refused requests never reach the app");
    let m = proxy.metrics().await;
    let refused = remora_e2e::metric_value(
        &m,
        "remora_rate_limited_total{direction=\"inbound\",service=\"shop\",route=\"inbound\"}",
    );
    assert_eq!(refused as usize, 6 - passed, "{m}");

    // A reload with a larger burst applies at once.
    proxy.write_config(&limited(50));
    remora_e2e::eventually(Duration::from_secs(5), "the larger limit", || {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).await.is_ok_and(|r| r.status == 200) }
    })
    .await;
}

#[tokio::test]
async fn a_get_on_a_pooled_connection_the_app_closed_is_sent_again() {
    // The app times out each kept-alive connection just as the next
    // request arrives on it.
    let app = closes_kept_alive_connections().await;
    let proxy = Proxy::start("services: {}\n", app).await;
    let client = Client::via(proxy.inbound, false);
    for i in 0..6 {
        let r = client.get(&format!("http://orders/{i}")).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "fresh"),
            "GET {i}"
        );
    }
    // A POST may have had its effect: the caller is told instead.
    let mut failed = 0;
    for i in 0..2 {
        let req = Request::post("http://orders/o")
            .body(body(format!("{i}")))
            .unwrap();
        let r = client.send(req).await.unwrap();
        if r.status != 200 {
            assert_eq!(r.header("remora-error"), Some("app-unreachable"));
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "one of two POSTs met a reused connection");
}
