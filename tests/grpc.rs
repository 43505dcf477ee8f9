//! gRPC streaming through two sidecars over mutual TLS, with grpcio at
//! both ends (`tests/python/grpc_*.py`): the client dials its sidecar's
//! outbound in plaintext HTTP/2 with the authority `echo`, the server is
//! the app behind `echo`'s sidecar. Server, client and bidirectional
//! streams arrive whole; a route's `timeout: 0s` lets a stream outlive the
//! service's timeout; a reader that stops reading holds the server back
//! without the proxies buffering what it would have sent.

use std::path::PathBuf;
use std::time::Duration;

use remora_e2e::identity::spiffe;
use remora_e2e::python::{self, Script};
use remora_e2e::requests;
use remora_e2e::sidecars::{Args, Sidecars};
use remora_e2e::Proxy;

/// How long one client script may take, whatever it does.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// `echo` speaks gRPC and has an identity, as does `client`, the caller.
const MESH: &str = "services:
  echo:
    identity: echo
    protocol: grpc
  client:
    identity: client
";

/// The grpcio server behind `echo`'s sidecar, and the caller's sidecar
/// whose outbound the grpcio client dials.
struct Echo {
    python: PathBuf,
    sidecars: Sidecars,
    /// The server itself, for what the client asks it directly.
    server: String,
    _script: Script,
}

/// [`Echo`] on `mesh`; `None` (the test skipped) without Python's grpcio.
async fn echo(mesh: &str) -> Option<Echo> {
    let python = python::python()?;
    let (script, server) = Script::serving(&python, "grpc_echo_server.py", &[]).await;
    let sidecars = Sidecars::start(mesh, "echo", server, &["client"], Args::default()).await;
    Some(Echo {
        python,
        sidecars,
        server: server.to_string(),
        _script: script,
    })
}

impl Echo {
    fn outbound(&self) -> String {
        self.sidecars.caller().outbound.to_string()
    }

    /// `grpc_client.py OUTBOUND ARGS...`, to its end: its result.
    async fn call(&self, args: &[&str]) -> serde_json::Value {
        let outbound = self.outbound();
        let args: Vec<&str> = [outbound.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        python::run(&self.python, "grpc_client.py", &args, CALL_LIMIT).await
    }
}

#[tokio::test]
async fn server_client_and_bidirectional_streams_cross_mutual_tls_intact() {
    let Some(m) = echo(MESH).await else { return };

    let r = m.call(&["server-stream", "200", "1024"]).await;
    assert_eq!(r["code"], "OK", "server streaming: {r}");
    assert_eq!(
        (r["received"].as_u64(), r["intact"].as_bool()),
        (Some(200), Some(true)),
        "{r}"
    );

    let r = m.call(&["client-stream", "200"]).await;
    assert_eq!(r["code"], "OK", "client streaming: {r}");
    assert_eq!(r["answer"]["count"], 200, "{r}");
    assert_eq!(r["answer"]["sum"], r["expected"], "{r}");

    let r = m.call(&["ping-pong", "100", "0", "0"]).await;
    assert_eq!(r["code"], "OK", "bidirectional streaming: {r}");
    assert_eq!(
        (r["matched"].as_u64(), r["extra"].as_u64()),
        (Some(100), Some(0)),
        "{r}"
    );

    // The caller's sidecar counted the three calls as sent over mutual
    // TLS to `echo`'s identity, and the callee's as coming from `client`.
    let (echo, client) = (spiffe("echo"), spiffe("client"));
    let outbound = m.sidecars.caller().metrics().await;
    let sent = requests(
        &outbound,
        &[
            "direction=\"outbound\"",
            "service=\"echo\"",
            "status_code=\"200\"",
            "tls=\"true\"",
            &format!("peer=\"{echo}\""),
        ],
    );
    assert_eq!(sent, 3.0, "{outbound}");
    let inbound = m.sidecars.callee.metrics().await;
    let served = requests(
        &inbound,
        &[
            "direction=\"inbound\"",
            "service=\"echo\"",
            "status_code=\"200\"",
            "tls=\"true\"",
            &format!("peer=\"{client}\""),
        ],
    );
    assert_eq!(served, 3.0, "{inbound}");
}

#[tokio::test]
async fn a_route_timeout_of_0s_lets_a_stream_outlive_the_services_timeout() {
    // The service gives every request 1s to its response headers; the
    // route of the long-lived stream says `timeout: 0s`: no timeout.
    let mesh = "services:
  echo:
    identity: echo
    protocol: grpc
    timeout: 1s
    routes:
      - name: long-lived
        match: { path: /echo.Echo/PingPong }
        timeout: 0s
      - name: default
  client:
    identity: client
";
    let Some(m) = echo(mesh).await else { return };

    // Elsewhere the service's timeout holds: a call answered after 1.5s
    // is cut at 1s, and the proxy says so as gRPC does (the client's own
    // deadline is 30s).
    let r = m.call(&["delay", "1500"]).await;
    assert_eq!(
        (r["code"].as_str(), r["details"].as_str()),
        (Some("DEADLINE_EXCEEDED"), Some("no response within 1s")),
        "the service's 1s timeout did not end a call of 1.5s: {r}"
    );

    // The stream's first answer, and so its response headers, come after
    // 1.5s; then a message each way every 200ms, 3s in all.
    let r = m.call(&["ping-pong", "9", "200", "1500"]).await;
    assert_eq!(r["code"], "OK", "the stream under `timeout: 0s`: {r}");
    assert_eq!(
        (r["matched"].as_u64(), r["extra"].as_u64()),
        (Some(9), Some(0)),
        "{r}"
    );
    let seconds = r["seconds"].as_f64().expect("how long the stream lived");
    assert!(seconds >= 2.9, "the stream lived only {seconds}s: {r}");
}

/// Messages the server would send, each of `MESSAGE_BYTES`: 96 MiB, more
/// than either limit below, so that a hop that buffered what its reader
/// does not take would be seen.
const FLOOD_MESSAGES: u64 = 1536;
const MESSAGE_BYTES: u64 = 64 * 1024;
/// How long the client stops reading.
const PAUSE_MS: &str = "2000";
/// What the server may get ahead of a reader that stopped: the flow
/// control windows of grpcio and of each hop, not the whole stream.
const AHEAD_LIMIT: u64 = 16 * 1024 * 1024;
/// What a proxy's resident memory may grow by meanwhile.
const GROWTH_LIMIT: u64 = 64 * 1024 * 1024;

#[tokio::test]
async fn a_reader_that_stops_holds_the_server_back_without_the_proxies_buffering() {
    let Some(m) = echo(MESH).await else { return };
    // The connections, and the proxies' buffers for them, exist already.
    let r = m
        .call(&["server-stream", "4", &MESSAGE_BYTES.to_string()])
        .await;
    assert_eq!(r["code"], "OK", "{r}");
    let proxies = [
        ("caller", m.sidecars.caller()),
        ("callee", &m.sidecars.callee),
    ];
    let before = proxies.map(|(_, p)| status_kib(p.pid(), "VmRSS"));

    let outbound = m.outbound();
    let (count, size) = (FLOOD_MESSAGES.to_string(), MESSAGE_BYTES.to_string());
    let mut client = Script::start(
        &m.python,
        "grpc_client.py",
        &[&outbound, "flood", &count, &size, PAUSE_MS, &m.server],
    );
    let paused = client.next(CALL_LIMIT).await;
    assert_eq!(paused["paused"], true, "{paused}");
    let flooded = paused["flooded"].as_u64().expect("the server's count");
    eprintln!(
        "the server handed {flooded} messages of {MESSAGE_BYTES} bytes to grpc \
         while the client read {}",
        paused["read"]
    );
    assert!(
        flooded * MESSAGE_BYTES < AHEAD_LIMIT,
        "the server sent {flooded} messages ({} MiB) to a reader that stopped after {}",
        flooded * MESSAGE_BYTES / (1024 * 1024),
        paused["read"]
    );
    assert_grew_less(&proxies, before, "while the reader stopped");

    client.say("go").await;
    let r = client.finish(CALL_LIMIT).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["received"].as_u64(), Some(FLOOD_MESSAGES), "{r}");
    assert_eq!(
        (r["intact"].as_bool(), r["after_the_end"].as_u64()),
        (Some(true), Some(0)),
        "{r}"
    );
    assert_grew_less(&proxies, before, "while the reader took the rest");
}

/// Checks that no proxy's resident memory peaked more than `GROWTH_LIMIT`
/// above what it held `before` (in KiB).
fn assert_grew_less(proxies: &[(&str, &Proxy); 2], before: [u64; 2], when: &str) {
    for ((name, proxy), before) in proxies.iter().zip(before) {
        // The peak since it started: it covers the whole stream so far.
        let peak = status_kib(proxy.pid(), "VmHWM");
        eprintln!("the {name} sidecar {when}: {before} KiB resident before, at most {peak} KiB");
        let grown = peak.saturating_sub(before) * 1024;
        assert!(
            grown < GROWTH_LIMIT,
            "the {name} sidecar grew by {} MiB {when}",
            grown / (1024 * 1024)
        );
    }
}

/// A field of `/proc/PID/status` counted in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}
