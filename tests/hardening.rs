//! The listeners of both binaries against clients that hold what they can
//! for free: connections that never send a request, floods of them under a
//! low open-files limit, idle and stalled connections, requests that name
//! two authorities, and HTTP/2 readers that never open their window.
//! (Oversized headers, smuggling, slow heads and malformed bytes are in
//! `inbound.rs`.)

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use remora_e2e::client::channel_body;
use remora_e2e::identity::grant_tokens;
use remora_e2e::upstream::text;
use remora_e2e::{Client, ControlPlane, Proxy, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How long an exchange may take before the test calls it a hang.
const NO_HANG: Duration = Duration::from_secs(10);

fn mesh(service: &str, upstream: &Upstream) -> String {
    format!(
        "services:\n  {service}:\n    endpoints: [ {{ address: {} }} ]\n",
        upstream.addr
    )
}

/// A proxy whose app is `app`, which is also the one endpoint of `orders`.
async fn orders_is_the_app(app: &Upstream, extra: &[&str]) -> Proxy {
    Proxy::start_with(&mesh("orders", app), app.addr, extra).await
}

/// Reads until the peer closes the connection (or resets it); how long that
/// took, and what was read.
async fn time_to_close(s: &mut TcpStream, limit: Duration) -> (Duration, String) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after {limit:?}; read so far: {out:?}"),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

/// Writes `bytes` on a new connection to `addr` and reads until the
/// proxy closes it: how long that took, and what it answered.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (Duration, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The proxy may refuse and close before it has read everything.
    let _ = s.write_all(bytes).await;
    time_to_close(&mut s, NO_HANG).await
}

/// The first bytes of a TLS ClientHello, and no more.
const HALF_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
/// Half of the HTTP/2 connection preface.
const HALF_PREFACE: &[u8] = b"PRI * HT";

#[tokio::test]
async fn connections_without_a_request_are_cut_on_every_listener_of_both_binaries() {
    let app = Upstream::named("app").await;
    let proxy = orders_is_the_app(&app, &["--header-read-timeout", "1s"]).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = grant_tokens(dir.path(), &[("orders", "t")]);
    let control = ControlPlane::start_with(
        "services: {}\n",
        &["--tokens", &tokens, "--header-read-timeout", "1s"],
    )
    .await;
    let listeners = [
        ("proxy outbound", proxy.outbound),
        ("proxy inbound", proxy.inbound),
        ("proxy admin", proxy.admin),
        ("control plane API (TLS)", control.api),
        ("control plane admin", control.admin),
    ];
    let openings: [(&str, &[u8]); 4] = [
        ("nothing", b""),
        ("half an HTTP/2 preface", HALF_PREFACE),
        ("half a TLS ClientHello", HALF_CLIENT_HELLO),
        (
            "a head a byte at a time",
            b"GET / HTTP/1.1\r\nHost: orders\r\nx-slow: ",
        ),
    ];
    let mut attempts = JoinSet::new();
    for (listener, addr) in listeners {
        for (opening, bytes) in openings {
            attempts.spawn(async move {
                let connected = Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                if opening.starts_with("a head") {
                    // A byte every 100ms, none of them ending the head; the
                    // trickle stops when the proxy has closed.
                    for b in bytes {
                        let mut closed = [0u8; 1];
                        let read =
                            tokio::time::timeout(Duration::from_millis(100), s.read(&mut closed));
                        if let Ok(Ok(0) | Err(_)) = read.await {
                            return (listener, opening, connected.elapsed());
                        }
                        if s.write_all(&[*b]).await.is_err() {
                            break;
                        }
                    }
                } else {
                    s.write_all(bytes).await.unwrap();
                }
                time_to_close(&mut s, NO_HANG).await;
                (listener, opening, connected.elapsed())
            });
        }
    }
    while let Some(done) = attempts.join_next().await {
        let (listener, opening, took) = done.unwrap();
        // The limit is 1s from accept, whatever trickles in; bytes that
        // are no request at all may be refused sooner.
        assert!(
            took < Duration::from_secs(3),
            "{listener}, {opening}: closed after {took:?}"
        );
        println!("{listener}, {opening}: closed after {took:?}");
    }
}

#[tokio::test]
async fn a_kept_alive_connection_outlives_the_header_read_timeout_but_not_a_slow_head() {
    let app = Upstream::named("app").await;
    let proxy = orders_is_the_app(&app, &["--header-read-timeout", "1s"]).await;
    let request = b"GET /again HTTP/1.1\r\nHost: orders\r\n\r\n";
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    let mut buf = [0u8; 1024];
    s.write_all(request).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Idle for twice the header read timeout: a client's pool may keep a
    // connection that long, and its next request must not meet a close.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.write_all(request).await.unwrap();
    let n = tokio::time::timeout(NO_HANG, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A head begun and never finished has the header read timeout.
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: ord")
        .await
        .unwrap();
    let (took, _) = time_to_close(&mut s, NO_HANG).await;
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
        "a slow head closed after {took:?}"
    );
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn a_flood_of_silent_connections_does_not_lock_out_real_clients() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raising the open files limit");
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    // 256 open files, as the issue found them: 300 silent connections on
    // each traffic listener locked every client out. The header read
    // timeout is long, so that only the cap can make room. The inbound
    // takes plaintext, so its silent connections become streams to the app
    // after the detect timeout: those must be shed as well.
    let proxy = Proxy::start_with_open_files(
        &mesh("orders", &orders),
        app.addr,
        &["--header-read-timeout", "60s", "--detect-timeout", "100ms"],
        256,
    )
    .await;
    let mut silent = Vec::new();
    for addr in [proxy.outbound, proxy.inbound] {
        for _ in 0..300 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
    }
    // Accepted, and the oldest shed as the newest arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (listener, addr) in [("outbound", proxy.outbound), ("inbound", proxy.inbound)] {
        let client = Client::via(addr, false);
        for i in 0..5 {
            let reply = tokio::time::timeout(NO_HANG, client.get("http://orders/real"))
                .await
                .unwrap_or_else(|_| panic!("{listener}: request {i} locked out"))
                .unwrap_or_else(|e| panic!("{listener}: request {i}: {e}"));
            assert_eq!(reply.status, 200, "{listener}: {}", reply.text());
        }
    }
    assert_eq!(orders.hits(), 5);
    assert_eq!(app.hits(), 5);

    // The flood itself was shed: most of it reads its end.
    let mut closed = 0;
    for s in &mut silent {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 400,
        "only {closed} of 600 silent connections shed"
    );
    let metrics = proxy.metrics().await;
    for direction in ["outbound", "inbound"] {
        let series =
            format!("remora_connections_closed_total{{direction=\"{direction}\",reason=\"shed\"}}");
        let shed = remora_e2e::metric_value(&metrics, &series);
        assert!(shed >= 200.0, "{direction}: {shed} shed\n{metrics}");
    }

    // Nothing shed is still counted open once the rest have gone.
    drop(silent);
    remora_e2e::eventually(
        NO_HANG,
        "every connection and stream counted closed",
        || async {
            let metrics = proxy.metrics().await;
            remora_e2e::metric_value(&metrics, "remora_connections_open{")
                + remora_e2e::metric_value(&metrics, "remora_tcp_connections_open{")
                == 0.0
        },
    )
    .await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_stalled_requests_cut() {
    let app = Upstream::named("app").await;
    // Answers its head at once, then one chunk of the body, then nothing.
    let stuck = Upstream::start(|_req| async move {
        let (tx, body) = channel_body::<hyper::Error>(1);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"part"))))
                .await;
            // Held open, never finished.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        http::Response::new(body)
    })
    .await;
    let mesh = format!(
        "services:\n  orders:\n    endpoints: [ {{ address: {} }} ]\n  stuck:\n    endpoints: [ {{ address: {} }} ]\n",
        app.addr, stuck.addr
    );
    let proxy = Proxy::start_with(
        &mesh,
        app.addr,
        &["--idle-timeout", "1s", "--stream-idle-timeout", "1s"],
    )
    .await;

    // Kept alive after a response, then idle: closed after about 1s.
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let (took, _) = time_to_close(&mut s, NO_HANG).await;
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&took),
        "an idle connection closed after {took:?}"
    );
    let idle = remora_e2e::metric_value(
        &proxy.metrics().await,
        "remora_connections_closed_total{direction=\"outbound\",reason=\"idle\"}",
    );
    assert_eq!(idle, 1.0);

    // A request body that stops halfway: cut, on both listeners.
    for (listener, addr) in [("outbound", proxy.outbound), ("inbound", proxy.inbound)] {
        let (took, out) = exchange(
            addr,
            b"POST /upload HTTP/1.1\r\nHost: orders\r\nContent-Length: 1000\r\n\r\nten bytes.",
        )
        .await;
        assert!(
            took < Duration::from_secs(4),
            "{listener}: a stalled upload held for {took:?}: {out}"
        );
    }

    // The same over HTTP/2, where the stream is cut and its connection
    // stays: an upload that stops halfway is answered, not held.
    let client = Client::via(proxy.outbound, true);
    let (tx, upload) = channel_body(1);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
        b"ten bytes.",
    ))))
    .await
    .unwrap();
    let req = Request::post("http://orders/upload").body(upload).unwrap();
    let started = Instant::now();
    let reply = tokio::time::timeout(NO_HANG, client.send(req)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an HTTP/2 upload stalled for {:?}: {reply:?}",
        started.elapsed()
    );
    drop(tx);

    // A response body that stops halfway: the caller's read fails, over
    // either protocol.
    for http2 in [false, true] {
        let client = Client::via(proxy.outbound, http2);
        let req = Request::get("http://stuck/stream")
            .body(remora_e2e::client::body(""))
            .unwrap();
        let started = Instant::now();
        let response = tokio::time::timeout(NO_HANG, client.send_streaming(req))
            .await
            .expect("the head arrives")
            .expect("the head arrives");
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(NO_HANG, response.into_body().collect()).await;
        assert!(
            matches!(body, Ok(Err(_))),
            "http2={http2}: a stalled response body must fail, not {body:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4), "http2={http2}");
    }
}

#[tokio::test]
async fn a_request_names_one_authority_and_the_app_receives_it() {
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    for (listener, addr) in [("outbound", proxy.outbound), ("inbound", proxy.inbound)] {
        // Two Host headers: refused (RFC 9112 §3.2).
        let (_, out) = exchange(
            addr,
            b"GET /two HTTP/1.1\r\nHost: orders\r\nHost: evil\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 400") && out.contains("remora-error: bad-request"),
            "{listener}: {out}"
        );

        // An absolute URI outranks Host, which the next hop receives
        // replaced.
        let (_, out) = exchange(
            addr,
            b"GET http://orders/absolute HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{listener}: {out}");

        // HTTP/2: a `host` that contradicts `:authority` is refused.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let req = Request::get("http://orders/contradicted")
            .header("host", "evil")
            .body(())
            .unwrap();
        let (response, _) = h2.send_request(req, true).unwrap();
        let response = tokio::time::timeout(NO_HANG, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 400, "{listener}");
        assert_eq!(response.headers()["remora-error"], "bad-request");
    }
    for upstream in [&orders, &app] {
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1, "only the absolute-form request arrives");
        assert_eq!(seen[0].path, "/absolute");
        assert_eq!(seen[0].headers["host"], "orders");
    }
}

#[tokio::test]
async fn an_http2_reader_that_never_opens_its_window_stalls_only_itself() {
    const BIG: usize = 4 << 20;
    let orders = Upstream::start(|_req| async move { text(vec![b'x'; BIG]) }).await;
    // One HTTP/2 connection to the endpoint carries every caller's streams.
    let mesh = format!(
        "services:\n  orders:\n    protocol: http2\n    endpoints: [ {{ address: {} }} ]\n",
        orders.addr
    );
    let proxy = Proxy::start(&mesh, orders.addr).await;

    // Three streams for large responses, with a window of zero that is
    // never opened.
    let tcp = TcpStream::connect(proxy.outbound).await.unwrap();
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut stalled = Vec::new();
    for i in 0..3 {
        let mut h2 = h2.clone().ready().await.unwrap();
        let req = Request::get(format!("http://orders/stalled-{i}"))
            .body(())
            .unwrap();
        let (response, _) = h2.send_request(req, true).unwrap();
        let response = tokio::time::timeout(NO_HANG, response)
            .await
            .unwrap()
            .unwrap();
        // Head in hand, body never read.
        stalled.push(response);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Beside them, normal clients read whole large responses.
    for http2 in [false, true] {
        let client = Client::via(proxy.outbound, http2);
        let reply = tokio::time::timeout(NO_HANG, client.get("http://orders/normal"))
            .await
            .unwrap_or_else(|_| panic!("http2={http2}: stalled behind the zero-window reader"))
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), BIG);
    }
    drop(stalled);
}

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame, as written on the wire.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with a prefix of `bits` bits, its first byte or'ed
/// with `first`.
fn hpack_int(first: u8, bits: u32, value: usize) -> Vec<u8> {
    let max = (1usize << bits) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut out = vec![first | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// A header field as an HPACK literal without indexing, not Huffman-coded.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(hpack_int(0, 7, name.len()));
    out.extend_from_slice(name.as_bytes());
    out.extend(hpack_int(0, 7, value.len()));
    out.extend_from_slice(value.as_bytes());
    out
}

/// The header block of `GET path` for `orders`.
fn get_block(path: &str) -> Vec<u8> {
    [
        literal(":method", "GET"),
        literal(":scheme", "http"),
        literal(":path", path),
        literal(":authority", "orders"),
    ]
    .concat()
}

/// Writes `frames` on a new HTTP/2 connection to `addr`, reading all the
/// while; whether the proxy ended the connection (closed it, or sent
/// GOAWAY) by `wait` after the last frame, and how much had been written
/// by then.
async fn flood(
    addr: std::net::SocketAddr,
    frames: impl Iterator<Item = Vec<u8>>,
    wait: Duration,
) -> (bool, usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = s.into_split();
    // Reads the proxy's frames until it closes the connection or sends
    // GOAWAY.
    let ended = tokio::spawn(async move {
        let mut header = [0u8; 9];
        loop {
            if reader.read_exact(&mut header).await.is_err() {
                return true;
            }
            if header[3] == GOAWAY {
                return true;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                return true;
            }
        }
    });
    let mut written = 0;
    let mut ended = std::pin::pin!(ended);
    let _ = writer.write_all(PREFACE).await;
    let _ = writer.write_all(&frame(SETTINGS, 0, 0, &[])).await;
    for f in frames {
        tokio::select! {
            biased;
            done = &mut ended => return (done.unwrap_or(false), written),
            sent = writer.write_all(&f) => {
                if sent.is_err() {
                    break;
                }
                written += f.len();
            }
        }
    }
    let done = tokio::time::timeout(wait, ended).await;
    (done.is_ok_and(|r| r.unwrap_or(false)), written)
}

#[tokio::test]
async fn http2_floods_end_the_attacking_connection_and_spare_everyone_else() {
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    let served = |addr| async move {
        let reply = tokio::time::timeout(NO_HANG, Client::via(addr, true).get("http://orders/ok"))
            .await
            .expect("a normal client is served")
            .unwrap();
        assert_eq!(reply.status, 200);
    };
    for (listener, addr) in [("outbound", proxy.outbound), ("inbound", proxy.inbound)] {
        // A header list that never ends: HEADERS, then CONTINUATION after
        // CONTINUATION (16 KiB each), up to 64 MiB.
        let filler = literal("x-flood", &"a".repeat(16_000));
        let continuation = std::iter::once(frame(HEADERS, 0, 1, &get_block("/flood")))
            .chain(std::iter::repeat_with(|| frame(CONTINUATION, 0, 1, &filler)).take(4096));
        let (ended, written) = flood(addr, continuation, NO_HANG).await;
        println!("{listener}: CONTINUATION flood ended={ended} after {written} bytes");
        assert!(ended, "{listener}: a CONTINUATION flood was read for ever");
        assert!(
            written < 8 << 20,
            "{listener}: {written} bytes of header list read"
        );
        served(addr).await;

        // Rapid reset: a stream opened and cancelled at once, 20,000 times.
        let hits_before = orders.hits() + app.hits();
        let rapid_reset = (0..20_000u32).flat_map(|i| {
            let stream = 2 * i + 1;
            [
                frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    stream,
                    &get_block("/reset"),
                ),
                frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()),
            ]
        });
        let (ended, written) = flood(addr, rapid_reset, NO_HANG).await;
        let reached = orders.hits() + app.hits() - hits_before;
        println!("{listener}: rapid reset ended={ended} after {written} bytes, {reached} reached");
        assert!(ended, "{listener}: rapid reset was taken for ever");
        assert!(
            reached < 2_000,
            "{listener}: {reached} reset streams reached the app"
        );
        served(addr).await;

        // A SETTINGS flood: each is acknowledged, on the attacker's own
        // connection, while everyone else is served.
        let settings = std::iter::repeat_with(|| frame(SETTINGS, 0, 0, &[])).take(200_000);
        let (ended, written) = flood(addr, settings, Duration::from_millis(200)).await;
        println!("{listener}: SETTINGS flood ended={ended} after {written} bytes");
        served(addr).await;

        // 1 MiB of headers in one list: refused, the connection ended or
        // the stream reset, and the proxy goes on.
        let big = literal("x-big", &"b".repeat(1 << 20));
        let mut block = get_block("/big");
        block.extend_from_slice(&big);
        let mut frames = Vec::new();
        let mut chunks = block.chunks(16_384).peekable();
        let first = chunks.next().unwrap();
        let flags = if chunks.peek().is_none() {
            END_HEADERS | END_STREAM
        } else {
            END_STREAM
        };
        frames.push(frame(HEADERS, flags, 1, first));
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            frames.push(frame(
                CONTINUATION,
                if last { END_HEADERS } else { 0 },
                1,
                chunk,
            ));
        }
        let (ended, written) = flood(addr, frames.into_iter(), NO_HANG).await;
        println!("{listener}: 1 MiB header list ended={ended} after {written} bytes");
        served(addr).await;
        assert!(
            orders
                .seen()
                .iter()
                .chain(app.seen().iter())
                .all(|s| s.path != "/big" && s.path != "/flood"),
            "{listener}: a refused header list reached the app"
        );
    }
}

#[tokio::test]
async fn obs_fold_and_nul_bytes_in_headers_are_refused() {
    let app = Upstream::named("app").await;
    let orders = Upstream::named("orders").await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    let heads: [&[u8]; 3] = [
        b"GET /folded HTTP/1.1\r\nHost: orders\r\nX-A: a\r\n folded\r\nConnection: close\r\n\r\n",
        b"GET /nul HTTP/1.1\r\nHost: orders\r\nX-A: a\0b\r\nConnection: close\r\n\r\n",
        b"GET /nul-name HTTP/1.1\r\nHost: orders\r\nX-\0A: a\r\nConnection: close\r\n\r\n",
    ];
    for (listener, addr) in [("outbound", proxy.outbound), ("inbound", proxy.inbound)] {
        for head in heads {
            let (_, out) = exchange(addr, head).await;
            assert!(
                out.is_empty() || out.starts_with("HTTP/1.1 400"),
                "{listener}, {:?}: {out}",
                String::from_utf8_lossy(head).lines().next()
            );
        }
    }
    assert_eq!(
        orders.hits() + app.hits(),
        0,
        "no such request reaches anyone"
    );
}

/// The proxy's peak resident memory so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_100_mb_body_streams_through_in_constant_memory() {
    const MIB: usize = 1 << 20;
    let app = Upstream::named("app").await;
    // Drains the body and says how much it read.
    let orders = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let mut body = req.into_body();
        let mut read = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                read += data.len();
            }
        }
        text(read.to_string())
    })
    .await;
    let proxy = Proxy::start(&mesh("orders", &orders), app.addr).await;
    // Warm: the connections and buffers of an ordinary request.
    let client = Client::via(proxy.outbound, false);
    client.get("http://orders/warm").await.unwrap();
    let before = peak_rss_kib(proxy.pid());
    let chunk = Bytes::from(vec![b'x'; MIB]);
    let frames = (0..100).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(chunk.clone()))
    });
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )));
    let req = Request::post("http://orders/upload").body(body).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(60), client.send(req))
        .await
        .expect("100 MB within a minute")
        .unwrap();
    assert_eq!(reply.text(), (100 * MIB).to_string());
    let grew = peak_rss_kib(proxy.pid()).saturating_sub(before);
    assert!(
        grew < 16 * 1024,
        "the proxy's peak RSS grew by {grew} KiB for a 100 MB body"
    );
}
