//! WebSocket through the proxies, with Python's `websockets` at both ends
//! (`tests/python/ws_*.py`): the client asks its sidecar's outbound for
//! `ws://chat/...`, the server is the app behind `chat`. Text, binary and
//! 1 MiB messages come back intact and both ends see the clean close,
//! through two sidecars over mutual TLS and to an unmeshed endpoint; the
//! callee's allow list refuses the handshake of a caller it does not name.

use std::path::PathBuf;
use std::time::Duration;

use remora_e2e::identity::spiffe;
use remora_e2e::python::{self, Script};
use remora_e2e::requests;
use remora_e2e::sidecars::{Args, Sidecars};
use remora_e2e::upstream::dead_address;
use remora_e2e::Proxy;

/// How long one client script may take, whatever it does.
const CALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the server may take to say a connection opened or closed.
const EVENT_LIMIT: Duration = Duration::from_secs(10);

/// `chat` speaks HTTP/1.1 (the default protocol) and has an identity, as
/// does `client`, the caller.
const MESH: &str = "services:
  chat:
    identity: chat
  client:
    identity: client
";

/// The websockets server, which prints a line as each connection opens
/// and closes.
struct Server {
    python: PathBuf,
    script: Script,
    addr: std::net::SocketAddr,
}

/// `None` (the test skipped) without Python's websockets.
async fn server() -> Option<Server> {
    let python = python::python()?;
    let (script, addr) = Script::serving(&python, "ws_echo_server.py", &[]).await;
    Some(Server {
        python,
        script,
        addr,
    })
}

impl Server {
    /// `ws_client.py` through `outbound` to `ws://chat/room`: its result.
    async fn converse(&self, outbound: std::net::SocketAddr) -> serde_json::Value {
        let outbound = outbound.to_string();
        python::run(
            &self.python,
            "ws_client.py",
            &[&outbound, "chat", "/room"],
            CALL_LIMIT,
        )
        .await
    }

    /// The next connection event the server printed.
    async fn event(&mut self) -> serde_json::Value {
        self.script.next(EVENT_LIMIT).await
    }
}

/// Checks what the client saw of a whole conversation: the upgrade, each
/// message echoed, the server's close of 1000 in answer to its own.
fn assert_conversed(r: &serde_json::Value) {
    assert_eq!(r["status"], 101, "the handshake: {r}");
    for message in ["text", "binary", "large"] {
        assert_eq!(
            r[message], true,
            "the {message} message came back otherwise: {r}"
        );
    }
    assert_eq!(r["close_code"], 1000, "{r}");
}

/// Checks the server saw the connection open for `ws://chat/room` from
/// `peer` (`None`: no identity header) and close with 1000.
async fn assert_served(server: &mut Server, peer: Option<&str>) {
    let open = server.event().await;
    assert_eq!(open["event"], "open", "{open}");
    assert_eq!(
        (open["host"].as_str(), open["path"].as_str()),
        (Some("chat"), Some("/room")),
        "{open}"
    );
    assert_eq!(open["peer"].as_str(), peer, "{open}");
    let closed = server.event().await;
    assert_eq!(
        (closed["event"].as_str(), closed["code"].as_u64()),
        (Some("closed"), Some(1000)),
        "{closed}"
    );
}

#[tokio::test]
async fn websocket_messages_and_the_close_cross_two_sidecars_over_mutual_tls() {
    let Some(mut server) = server().await else {
        return;
    };
    let m: Sidecars =
        Sidecars::start(MESH, "chat", server.addr, &["client"], Args::default()).await;

    let r = server.converse(m.caller().outbound).await;
    assert_conversed(&r);
    assert_served(&mut server, Some(&spiffe("client"))).await;

    // The upgrade is counted at both ends as the 101 it was, over mutual
    // TLS between the two identities.
    let outbound = m.caller().metrics().await;
    let upgraded = [
        "direction=\"outbound\"",
        "service=\"chat\"",
        "status_code=\"101\"",
        "tls=\"true\"",
        &format!("peer=\"{}\"", spiffe("chat")),
    ];
    assert_eq!(requests(&outbound, &upgraded), 1.0, "{outbound}");
    let inbound = m.callee.metrics().await;
    let served = [
        "direction=\"inbound\"",
        "service=\"chat\"",
        "status_code=\"101\"",
        "tls=\"true\"",
        &format!("peer=\"{}\"", spiffe("client")),
    ];
    assert_eq!(requests(&inbound, &served), 1.0, "{inbound}");
}

#[tokio::test]
async fn the_callee_allow_list_refuses_the_websocket_handshake_with_403() {
    let Some(server) = server().await else { return };
    let mesh = MESH.replace(
        "identity: chat\n",
        "identity: chat\n    inbound: { allow: [someone-else] }\n",
    );
    let m = Sidecars::start(&mesh, "chat", server.addr, &["client"], Args::default()).await;

    let r = server.converse(m.caller().outbound).await;
    assert_eq!(r["status"], 403, "{r}");
    assert_eq!(r["remora_error"], "forbidden", "{r}");
    let body = r["body"].as_str().unwrap_or_default();
    assert!(
        body.contains(&format!("{} may not call chat", spiffe("client"))),
        "{r}"
    );
}

#[tokio::test]
async fn websocket_reaches_an_unmeshed_endpoint() {
    let Some(mut server) = server().await else {
        return;
    };
    let mesh = format!(
        "services:\n  chat:\n    endpoints: [ {{ address: {} }} ]\n",
        server.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;

    let r = server.converse(proxy.outbound).await;
    assert_conversed(&r);
    assert_served(&mut server, None).await;
    let metrics = proxy.metrics().await;
    let upgraded = [
        "direction=\"outbound\"",
        "service=\"chat\"",
        "status_code=\"101\"",
        "tls=\"false\"",
    ];
    assert_eq!(requests(&metrics, &upgraded), 1.0, "{metrics}");
}
