//! Opaque streams out of the app: a `protocol: tcp` service's, through a
//! listener of its own (`--tcp-listen SERVICE=ADDR`) whose every
//! connection is one stream, and those transparent mode intercepts
//! ([`super::transparent`]). The service → an endpoint by its balancer,
//! per connection → connect, on failure to another endpoint (nothing was
//! sent yet) → splice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use remora_server::serve::{
    self as server, Detection, Drain, OpaqueIo, OpaqueStreams, Peer, ServerSettings,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::attempt::feed_breaker;
use super::breaker::Fault;
use super::snapshot::Service;
use super::Outbound;
use crate::access_log::StreamLog;
use crate::metrics::{Direction, RetryLabels, TransportMetrics};
use crate::tcp;

/// Endpoints tried for one stream, at most, before the caller's
/// connection is closed.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Serves `service`'s opaque streams on `listener`.
pub fn serve(
    streams: Arc<TcpStreams>,
    listener: TcpListener,
    settings: ServerSettings,
    transport: &TransportMetrics,
    drain: Drain,
) -> JoinHandle<()> {
    let settings = ServerSettings {
        // Its connections are closed, shed and refused as the outbound's.
        metrics: Some(transport.listener(Direction::Outbound, false)),
        opaque: Some(streams),
        ..settings
    };
    tokio::spawn(server::serve_opaque(listener, settings, drain))
}

/// One `--tcp-listen` service's streams.
pub struct TcpStreams {
    pub outbound: Arc<Outbound>,
    pub service: String,
}

impl OpaqueStreams for TcpStreams {
    fn detection(&self, _peer: &Peer) -> Detection {
        Detection::Opaque(Duration::ZERO)
    }

    fn serve(
        self: Arc<Self>,
        io: OpaqueIo,
        peer: Peer,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let service = match self.outbound.service(&self.service).await {
                Ok(service) if service.opaque => service,
                Ok(_) => {
                    tracing::warn!(service = %self.service, peer = %peer.addr, "stream closed: --tcp-listen names a service whose protocol is not tcp");
                    return;
                }
                Err(e) => {
                    tracing::warn!(service = %self.service, peer = %peer.addr, error = %e, "stream closed");
                    return;
                }
            };
            self.outbound.forward_stream(&service, io, peer).await
        })
    }
}

impl Outbound {
    /// Carries one stream from `peer` to an endpoint of `service`.
    pub async fn forward_stream(&self, service: &Service, downstream: OpaqueIo, peer: Peer) {
        // A service's streams take its one default route: a tcp service has
        // no routes of its own.
        let Some(route) = service.routes.first() else {
            return;
        };
        let Some(backend) = route.pick_backend() else {
            tracing::warn!(service = %service.name, "stream closed: the service has no endpoints");
            return;
        };
        let mut avoid = None;
        for attempt in 0..MAX_CONNECT_ATTEMPTS.min(backend.endpoints.len().max(1)) {
            let Some(endpoint) = backend.pick(None, avoid.as_ref()) else {
                break;
            };
            if attempt > 0 {
                self.metrics
                    .retries
                    .get_or_create(&RetryLabels {
                        route: route.labels.clone(),
                        reason: "connect-failure",
                    })
                    .inc();
            }
            let mut in_flight = endpoint.start();
            let upstream = match endpoint.opaque.connect().await {
                Ok(upstream) => upstream,
                Err(reason) => {
                    tracing::info!(service = %service.name, endpoint = %endpoint.label, %reason, "cannot connect; trying another endpoint");
                    let fault = Some(Fault::Unreachable);
                    feed_breaker(backend, &mut in_flight, fault, &self.metrics);
                    avoid = Some(endpoint);
                    continue;
                }
            };
            feed_breaker(backend, &mut in_flight, None, &self.metrics);
            let log = StreamLog::new(
                Direction::Outbound,
                service.name.clone(),
                endpoint
                    .peer
                    .clone()
                    .filter(|_| endpoint.is_meshed())
                    .unwrap_or_else(|| self.unmeshed.clone()),
                peer.addr,
                endpoint.label.clone(),
            );
            tcp::splice(downstream, upstream, &self.tcp, log).await;
            return;
        }
        tracing::warn!(service = %service.name, peer = %peer.addr, "stream closed: no endpoint could be reached");
    }
}
