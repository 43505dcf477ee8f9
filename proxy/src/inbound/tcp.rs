//! The inbound's opaque streams: connections that mutual TLS marks as
//! opaque (a caller's sidecar reaching a `tcp` service), and plaintext
//! ones that do not speak HTTP in time (a server-speaks-first protocol
//! says nothing), or every plaintext one where the service is `tcp` or
//! the app's port is declared opaque. Each is authorized like a request
//! (`allow`), then spliced to the app.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use remora_api::Protocol;
use remora_server::serve::{Detection, OpaqueIo, OpaqueStreams, Peer};
use tokio::net::TcpStream;

use super::{Inbound, StreamSettings, APP_CONNECT_TIMEOUT};
use crate::access_log::StreamLog;
use crate::metrics::{Direction, TcpMetrics};
use crate::tcp;

pub(super) struct Streams {
    detect_timeout: Duration,
    /// Declared opaque by its port (`--opaque-ports`).
    opaque_port: bool,
    /// Declared opaque by the service's protocol, as the mesh view says.
    opaque_protocol: AtomicBool,
    metrics: TcpMetrics,
    app: SocketAddr,
}

impl Streams {
    pub(super) fn new(settings: StreamSettings, app: SocketAddr) -> Streams {
        Streams {
            detect_timeout: settings.detect_timeout,
            opaque_port: settings.opaque_ports.contains(&app.port()),
            opaque_protocol: AtomicBool::new(false),
            metrics: settings.metrics,
            app,
        }
    }

    pub(super) fn set_protocol(&self, protocol: Protocol) {
        self.opaque_protocol
            .store(protocol == Protocol::Tcp, Ordering::Relaxed);
    }
}

impl OpaqueStreams for Inbound {
    fn detection(&self, _peer: &Peer) -> Detection {
        let streams = &self.streams;
        match streams.opaque_port || streams.opaque_protocol.load(Ordering::Relaxed) {
            true => Detection::Opaque(streams.detect_timeout),
            false => Detection::Within(streams.detect_timeout),
        }
    }

    fn serve(
        self: Arc<Self>,
        io: OpaqueIo,
        peer: Peer,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.stream(io, peer).await })
    }
}

impl Inbound {
    async fn stream(&self, downstream: OpaqueIo, peer: Peer) {
        let client = peer.addr;
        let caller = self.caller(peer);
        if let Err(denied) = self.authorize(&self.policy.load(), &caller) {
            tracing::info!(service = %self.labels.service, caller = %denied.caller, rule = %denied.rule, "stream refused");
            return;
        }
        let streams = &self.streams;
        let connecting = tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(streams.app));
        let app = match connecting.await {
            Ok(Ok(app)) => app,
            Ok(Err(e)) => {
                tracing::warn!(app = %streams.app, error = %e, "stream closed: the app is unreachable");
                return;
            }
            Err(_) => {
                tracing::warn!(app = %streams.app, "stream closed: connecting to the app timed out");
                return;
            }
        };
        let _ = app.set_nodelay(true);
        let log = StreamLog::new(
            Direction::Inbound,
            self.labels.service.clone(),
            caller.label.clone(),
            client,
            self.app_label.clone(),
        );
        tcp::splice(downstream, Box::new(app), &streams.metrics, log).await;
    }
}
