//! Opaque TCP through the real binaries: a `protocol: tcp` service reached
//! through the caller sidecar's `--tcp-listen` port and carried over
//! mutual TLS to the callee's sidecar, with real `redis-server` and
//! `redis-cli` (the client speaks first) and a server that greets first
//! (as SMTP and FTP do); `allow` enforced on streams; half-close both
//! ways; the idle timeout; connect failures taken to another endpoint;
//! and the inbound telling HTTP from other protocols.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use remora_e2e::identity::spiffe;
use remora_e2e::redis::{self, Redis};
use remora_e2e::sidecars::{Args, Sidecars};
use remora_e2e::upstream::dead_address;
use remora_e2e::{metric_value, Client, Proxy, Upstream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A control plane with identities, the sidecar of `cache` (a tcp
/// service) in front of `app`, and a caller's sidecar for each of
/// `callers` with `cache` on a `--tcp-listen` port; `extra` flags for all.
async fn mesh(inbound: &str, app: SocketAddr, callers: &[&str], extra: &[&str]) -> Sidecars {
    let mesh = format!(
        "services:
  cache:
    protocol: tcp
    identity: cache
    inbound: {inbound}
  client:
    identity: client
  intruder:
    identity: intruder
"
    );
    let args = Args {
        all: extra,
        callers: &["--tcp-listen", "cache=127.0.0.1:0"],
    };
    Sidecars::start(&mesh, "cache", app, callers, args).await
}

#[tokio::test]
async fn redis_is_reached_over_mutual_tls_and_counted() {
    let (Some(server), Some(cli)) = (Redis::start().await, redis::cli()) else {
        return;
    };
    let m = mesh("{ allow: [client] }", server.addr, &["client"], &[]).await;
    let caller = m.caller();
    let port = caller.tcp_listener("cache").await;

    assert_eq!(
        redis::run(&cli, port, &["SET", "greeting", "hello"], None).await,
        Ok("OK".into())
    );
    assert_eq!(
        redis::run(&cli, port, &["GET", "greeting"], None).await,
        Ok("hello".into())
    );
    // 1 MiB each way, through both sidecars.
    let big: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(
        redis::run(&cli, port, &["-x", "SET", "big"], Some(&big)).await,
        Ok("OK".into())
    );
    let got = redis::run(&cli, port, &["GET", "big"], None).await.unwrap();
    assert_eq!(got.as_bytes(), &big[..], "the 1 MiB value came back intact");

    let (cache, client) = (spiffe("cache"), spiffe("client"));
    let out = caller.metrics().await;
    let outbound = format!("direction=\"outbound\",service=\"cache\",peer=\"{cache}\"");
    assert_eq!(
        metric_value(&out, &format!("remora_tcp_connections_total{{{outbound}}}")),
        4.0,
        "{out}"
    );
    let read = format!("remora_bytes_total{{direction=\"outbound\",rw=\"read\",service=\"cache\",peer=\"{cache}\"}}");
    assert!(metric_value(&out, &read) > (1 << 20) as f64, "{out}");
    let written = format!("remora_bytes_total{{direction=\"outbound\",rw=\"write\",service=\"cache\",peer=\"{cache}\"}}");
    assert!(metric_value(&out, &written) > (1 << 20) as f64, "{out}");

    let inbound = format!("direction=\"inbound\",service=\"cache\",peer=\"{client}\"");
    let callee = &m.callee;
    remora_e2e::eventually(Duration::from_secs(5), "the streams to close", || async {
        let metrics = callee.metrics().await;
        metric_value(
            &metrics,
            &format!("remora_tcp_connections_total{{{inbound}}}"),
        ) == 4.0
            && metric_value(
                &metrics,
                &format!("remora_tcp_connections_open{{{inbound}}}"),
            ) == 0.0
    })
    .await;
    let metrics = callee.metrics().await;
    // The streams are not the listener's HTTP connections.
    assert_eq!(
        metric_value(
            &metrics,
            "remora_connections_total{direction=\"inbound\",tls=\"true\"}"
        ),
        0.0,
        "{metrics}"
    );
    if remora_e2e::promtool::have_promtool() {
        remora_e2e::promtool::promtool_check(&metrics).unwrap();
    }

    // One access-log line a stream, on both sides, with what it carried.
    let streams = |proxy: &Proxy| -> Vec<serde_json::Value> {
        proxy
            .access_log()
            .into_iter()
            .filter(|l| l["message"] == "stream")
            .collect()
    };
    let (out, into) = (streams(caller), streams(callee));
    assert_eq!((out.len(), into.len()), (4, 4), "{out:#?}\n{into:#?}");
    for (line, direction, peer) in out
        .iter()
        .map(|l| (l, "outbound", cache.as_str()))
        .chain(into.iter().map(|l| (l, "inbound", client.as_str())))
    {
        assert_eq!(line["direction"], direction, "{line}");
        assert_eq!(line["service"], "cache", "{line}");
        assert_eq!(line["peer"], peer, "{line}");
        assert_eq!(line["ended"], "closed", "{line}");
    }
    let sent_big = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .any(|l| l["bytes_read"].as_u64().unwrap_or(0) > 1 << 20)
    };
    assert!(sent_big(&out) && sent_big(&into), "{out:#?}\n{into:#?}");
    assert_eq!(into[0]["endpoint"], server.addr.to_string());
}

#[tokio::test]
async fn a_caller_outside_allow_gets_no_stream() {
    let (Some(server), Some(cli)) = (Redis::start().await, redis::cli()) else {
        return;
    };
    let m = mesh(
        "{ allow: [client] }",
        server.addr,
        &["client", "intruder"],
        &[],
    )
    .await;
    let intruder = m.callers[1].tcp_listener("cache").await;
    let refused = redis::run(&cli, intruder, &["PING"], None).await;
    assert!(refused.is_err(), "{refused:?}");
    let client = m.caller().tcp_listener("cache").await;
    assert_eq!(
        redis::run(&cli, client, &["PING"], None).await,
        Ok("PONG".into())
    );
    let metrics = m.callee.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            &format!("remora_authz_denied_total{{direction=\"inbound\",service=\"cache\",route=\"inbound\",peer=\"{}\"}}", spiffe("intruder"))
        ),
        1.0,
        "{metrics}"
    );
}

/// A server that speaks first, as SMTP does: a greeting on connect, then
/// `250 LINE` for each line, until `QUIT`.
async fn greeter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                write.write_all(b"220 greeter ready\r\n").await.unwrap();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    }
                    let _ = write.write_all(format!("250 {line}\r\n").as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// Talks to a [`greeter`] through `addr`, saying nothing until greeted;
/// how long the greeting took.
async fn converse(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let socket = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = tokio::time::timeout(Duration::from_secs(8), lines.next_line())
        .await
        .expect("the greeting within 8s")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(greeting.as_deref(), Some("220 greeter ready"));
    write.write_all(b"HELO remora\r\n").await.unwrap();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("250 HELO remora")
    );
    write.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("221 bye"));
    assert_eq!(lines.next_line().await.unwrap(), None, "closed after QUIT");
    waited
}

#[tokio::test]
async fn a_server_that_speaks_first_is_reached_over_mutual_tls() {
    let app = greeter().await;
    let m = mesh("{ allow: [client] }", app, &["client"], &[]).await;
    // The callee's sidecar knows a tcp stream by its ALPN: no wait.
    converse(m.caller().tcp_listener("cache").await).await;
}

#[tokio::test]
async fn half_closed_streams_still_carry_the_other_way() {
    // The server reads to the end of what it is sent, then answers and
    // closes; and it writes first and closes its half, then still reads.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let heard = heard_tx.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                socket.read_exact(&mut first).await.unwrap();
                if first[0] == b'U' {
                    // An upload: all of it, then the answer.
                    let mut rest = Vec::new();
                    socket.read_to_end(&mut rest).await.unwrap();
                    let answer = format!("got {} bytes", rest.len() + 1);
                    socket.write_all(answer.as_bytes()).await.unwrap();
                } else {
                    // Say it all and close this half; then listen.
                    socket.write_all(b"all I have to say").await.unwrap();
                    socket.shutdown().await.unwrap();
                    let mut rest = Vec::new();
                    socket.read_to_end(&mut rest).await.unwrap();
                    heard.send(String::from_utf8(rest).unwrap()).unwrap();
                }
            });
        }
    });
    let m = mesh("{ allow: [client] }", app, &["client"], &[]).await;
    let port = m.caller().tcp_listener("cache").await;

    // The caller closes its half first and still hears the answer.
    let mut upload = TcpStream::connect(port).await.unwrap();
    let body = vec![b'U'; 300_000];
    upload.write_all(&body).await.unwrap();
    upload.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), upload.read_to_string(&mut answer))
        .await
        .expect("the answer after the upload")
        .unwrap();
    assert_eq!(answer, "got 300000 bytes");

    // The server closes its half first and still hears the caller.
    let mut talk = TcpStream::connect(port).await.unwrap();
    talk.write_all(b"L").await.unwrap();
    let mut said = String::new();
    tokio::time::timeout(Duration::from_secs(10), talk.read_to_string(&mut said))
        .await
        .expect("the server's half to end")
        .unwrap();
    assert_eq!(said, "all I have to say");
    talk.write_all(b"and I still listen").await.unwrap();
    talk.shutdown().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("the server to hear the rest")
        .unwrap();
    assert_eq!(heard, "and I still listen");
}

#[tokio::test]
async fn a_stream_idle_past_the_timeout_is_cut() {
    let app = greeter().await;
    let m = mesh(
        "{ allow: [client] }",
        app,
        &["client"],
        &["--idle-timeout", "1s"],
    )
    .await;
    let started = Instant::now();
    let mut socket = TcpStream::connect(m.caller().tcp_listener("cache").await)
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut seen))
        .await
        .expect("the idle stream to be cut")
        .unwrap();
    assert_eq!(seen, b"220 greeter ready\r\n");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Either sidecar may be first to cut it.
    let (caller, callee) = (m.caller().metrics().await, m.callee.metrics().await);
    let cut = metric_value(
        &caller,
        "remora_connections_closed_total{direction=\"outbound\",reason=\"idle\"}",
    ) + metric_value(
        &callee,
        "remora_connections_closed_total{direction=\"inbound\",reason=\"idle\"}",
    );
    assert!(cut >= 1.0, "{caller}\n{callee}");
    // And its access-log line says so.
    remora_e2e::eventually(
        Duration::from_secs(5),
        "a line for the cut stream",
        || async {
            m.caller()
                .access_log()
                .iter()
                .chain(m.callee.access_log().iter())
                .any(|l| l["message"] == "stream" && l["ended"] == "cut")
        },
    )
    .await;
}

/// An echo server that prefixes what it echoes with its name.
async fn named_echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if socket.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One line through `addr`: what came back.
async fn echo_once(addr: SocketAddr) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"ping").await.unwrap();
    socket.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    answer
}

#[tokio::test]
async fn streams_are_balanced_per_connection_and_a_dead_endpoint_costs_none() {
    let (a, b, dead) = (
        named_echo("a").await,
        named_echo("b").await,
        dead_address().await,
    );
    let mesh = format!(
        "services:
  echo:
    protocol: tcp
    load_balancer: round-robin
    endpoints: [ {{ address: {a} }}, {{ address: {dead} }}, {{ address: {b} }} ]
"
    );
    let proxy = Proxy::start_with(
        &mesh,
        dead_address().await,
        &["--tcp-listen", "echo=127.0.0.1:0"],
    )
    .await;
    let port = proxy.tcp_listener("echo").await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(echo_once(port).await);
    }
    let from = |name: &str| {
        answers
            .iter()
            .filter(|a| **a == format!("{name}:ping"))
            .count()
    };
    assert_eq!(from("a") + from("b"), 20, "{answers:?}");
    assert!(from("a") >= 5 && from("b") >= 5, "{answers:?}");
    let metrics = proxy.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "remora_retries_total{direction=\"outbound\",service=\"echo\",route=\"default\",reason=\"connect-failure\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "remora_tcp_connections_total{direction=\"outbound\",service=\"echo\",peer=\"unmeshed\"}"
        ),
        20.0,
        "{metrics}"
    );

    // An HTTP request to a tcp service is the app's mistake, said plainly.
    let r = Client::http1()
        .get_via(proxy.outbound, "echo", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("remora-error"), Some("tcp-service"));
}

#[tokio::test]
async fn the_inbound_passes_what_is_not_http_to_the_app() {
    let (Some(server), Some(cli)) = (Redis::start().await, redis::cli()) else {
        return;
    };
    // No identity: the inbound is plaintext, as `permissive` allows. A
    // long detect timeout, so that waiting it out cannot pass for a busy
    // machine's slowness.
    let redis_app =
        Proxy::start_with("services: {}\n", server.addr, &["--detect-timeout", "10s"]).await;
    // A client that speaks first and is not HTTP: passed at once.
    let started = Instant::now();
    assert_eq!(
        redis::run(&cli, redis_app.inbound, &["PING"], None).await,
        Ok("PONG".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "RESP is told from HTTP by its first bytes, without waiting out the detect timeout"
    );
    // An inline command whose first word looks like a method is not HTTP.
    assert_eq!(
        redis::run(&cli, redis_app.inbound, &["SET", "k", "v"], None).await,
        Ok("OK".into())
    );

    // A server that speaks first: its client waits in silence, and is
    // passed through once the detect timeout (here 300ms) passes.
    let greeter_app = Proxy::start_with(
        "services: {}\n",
        greeter().await,
        &["--detect-timeout", "300ms"],
    )
    .await;
    let waited = converse(greeter_app.inbound).await;
    assert!(waited >= Duration::from_millis(300), "{waited:?}");

    // The app's port declared opaque: even bytes that look like HTTP pass
    // as they are.
    let echo = named_echo("raw").await;
    let opaque = Proxy::start_with(
        "services: {}\n",
        echo,
        &["--opaque-ports", &echo.port().to_string()],
    )
    .await;
    let mut socket = TcpStream::connect(opaque.inbound).await.unwrap();
    socket.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 22];
    socket.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, b"raw:GET / HTTP/1.1\r\n\r\n");
    let metrics = opaque.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "remora_tcp_connections_total{direction=\"inbound\",service=\"app\",peer=\"unmeshed\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_silent_connection_taken_for_a_stream_is_still_cut() {
    // An HTTP app greets no one: a connection that never speaks is passed
    // to it after the detect timeout, and cut at the header read timeout
    // as a silent HTTP connection would be.
    let app = Upstream::named("app").await;
    let proxy = Proxy::start_with(
        "services: {}\n",
        app.addr,
        &["--detect-timeout", "200ms", "--header-read-timeout", "1s"],
    )
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(proxy.inbound).await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), silent.read_to_end(&mut seen))
        .await
        .expect("the silent connection to be cut")
        .unwrap();
    assert!(seen.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "remora_connections_closed_total{direction=\"inbound\",reason=\"header-timeout\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_permissive_tcp_service_greets_plaintext_callers_after_the_detect_timeout() {
    // The sidecar has an identity, so it looks for a TLS handshake first:
    // for the detect timeout (here 300ms), not the first-request limit.
    let app = greeter().await;
    let m = mesh(
        "{ mtls: permissive }",
        app,
        &["client"],
        &["--detect-timeout", "300ms"],
    )
    .await;
    let waited = converse(m.callee.inbound).await;
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}
