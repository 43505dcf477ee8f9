//! The outbound listener: protocols, target services, and the proxy's own
//! errors, driven through the real binary.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use remora_e2e::client::body;
use remora_e2e::upstream::{dead_address, text};
use remora_e2e::{Client, Proxy, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn mesh(service: &str, upstream: &Upstream) -> String {
    format!(
        "services:\n  {service}:\n    endpoints: [ {{ address: {} }} ]\n",
        upstream.addr
    )
}

#[tokio::test]
async fn every_form_of_authority_names_the_service() {
    let orders = Upstream::named("orders").await;
    let app = dead_address().await;
    let proxy = Proxy::start(&mesh("orders", &orders), app).await;
    let client = Client::http1();
    for host in [
        "orders",
        "orders:80",
        "orders.default",
        "orders.default.svc.cluster.local",
        "ORDERS.default.svc",
    ] {
        let r = client.get_via(proxy.outbound, host, "/x").await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "orders"),
            "Host: {host}"
        );
    }
    // Absolute-form, as a client with http_proxy set sends it.
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"GET http://orders.default.svc.cluster.local/abs HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("orders"), "{out}");
    assert_eq!(orders.last().path, "/abs");
    // The upstream sees the name that routed the request (the absolute
    // URI's, which outranks Host), not the endpoint address.
    assert_eq!(
        orders.last().headers["host"],
        "orders.default.svc.cluster.local"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_is_detected_and_the_endpoint_spoken_to_in_its_protocol() {
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), dead_address().await).await;
    let r = Client::via(proxy.outbound, true)
        .get("http://orders/h2")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    // `protocol: http` (the default): the endpoint hears HTTP/1.1.
    assert_eq!(orders.last().version, http::Version::HTTP_11);
    assert_eq!(orders.last().authority.as_deref(), Some("orders"));
    // And HTTP/1.1 on the next connection to the same listener.
    let r = Client::via(proxy.outbound, false)
        .get("http://orders/h1")
        .await
        .unwrap();
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(orders.last().version, http::Version::HTTP_11);
    // `protocol: http2`: h2c to the endpoint, whatever the caller spoke,
    // with the caller's authority as `:authority` and no `host`.
    let mesh = format!(
        "services:\n  orders:\n    protocol: http2\n    endpoints: [ {{ address: {} }} ]\n",
        orders.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    for caller_http2 in [false, true] {
        let r = Client::via(proxy.outbound, caller_http2)
            .get("http://orders/h2c")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let seen = orders.last();
        assert_eq!(seen.version, http::Version::HTTP_2);
        assert_eq!(seen.authority.as_deref(), Some("orders"));
        assert!(seen.headers.get("host").is_none(), "{seen:?}");
    }
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_for_many_requests() {
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), dead_address().await).await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    for i in 0..5 {
        s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: orders\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // The upstream side pooled too: one connection carried all five.
    let peers: std::collections::HashSet<_> = orders.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
}

#[tokio::test]
async fn request_and_response_bodies_stream_without_being_buffered_whole() {
    // The upstream answers as soon as the first chunk arrives and echoes
    // chunks as they come; the client only sends its second chunk after it
    // has read the first echo. Buffering anywhere would deadlock.
    let echo = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().map_err(|e| e);
        hyper::Response::new(body.boxed())
    })
    .await;
    let proxy = Proxy::start(&mesh("echo", &echo), dead_address().await).await;
    let (tx, frames) = remora_e2e::client::channel_body(1);
    let req = Request::post("http://echo/stream").body(frames).unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
        .await
        .unwrap();
    let response = Client::via(proxy.outbound, false)
        .send_streaming(req)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.into_data().unwrap(), "second");
    drop(tx);
    assert!(tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn chunked_bodies_pass_through() {
    let echo = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        text(bytes)
    })
    .await;
    let proxy = Proxy::start(&mesh("echo", &echo), dead_address().await).await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"POST /c HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello world"), "{out}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let echo = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        text(req.into_body().collect().await.unwrap().to_bytes())
    })
    .await;
    let proxy = Proxy::start(&mesh("echo", &echo), dead_address().await).await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"PUT /e HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("a 100 Continue")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"ping").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("200 OK") && out.ends_with("ping"), "{out}");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let mesh = format!("services:\n  chat:\n    endpoints: [ {{ address: {ws_addr} }} ]\n");
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let stream = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://chat/socket", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for word in ["hello", "mesh"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(word))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), word);
    }
}

#[tokio::test]
async fn the_proxys_own_errors_name_their_cause() {
    let dead = dead_address().await;
    let mesh = format!(
        "services:
  empty: {{}}
  down:
    endpoints: [ {{ address: {dead} }} ]
  picky:
    endpoints: [ {{ address: {dead} }} ]
    routes:
      - match: {{ path_prefix: /only/ }}
"
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    let cases = [
        ("nowhere", "/", 404, "unknown-service"),
        ("empty", "/", 503, "no-endpoints"),
        ("down", "/", 502, "upstream-refused"),
        ("picky", "/elsewhere", 404, "no-route"),
    ];
    for (host, path, status, cause) in cases {
        let r = client.get_via(proxy.outbound, host, path).await.unwrap();
        assert_eq!(r.status, status, "{host}{path}: {}", r.text());
        assert_eq!(r.header("remora-error"), Some(cause), "{host}{path}");
        assert!(!r.text().is_empty(), "the body explains the error");
    }
    // No authority at all (HTTP/1.0 without Host).
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 400") && out.contains("remora-error: no-authority"),
        "{out}"
    );
    let _ = body(Bytes::new());
}

#[tokio::test]
async fn several_threads_serve_the_same_traffic() {
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start_with(
        &mesh("orders", &orders),
        dead_address().await,
        &["--threads", "2"],
    )
    .await;
    let calls = (0..16).map(|i| {
        let client = Client::via(proxy.outbound, i % 2 == 0);
        async move { client.get("http://orders/").await.unwrap() }
    });
    for r in futures_util::future::join_all(calls).await {
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "orders"));
    }
    assert_eq!(orders.hits(), 16);
}
