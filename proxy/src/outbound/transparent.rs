//! Transparent mode's outbound: the app's connections that iptables
//! redirected to the outbound listener (`remora-proxy init`), each with
//! its original destination. One that speaks HTTP is served as any
//! request, its authority first: a mesh service it names is routed as
//! always. Otherwise, and for a connection that does not speak HTTP, the
//! original destination decides: an endpoint of the mesh at that IP is
//! reached through its sidecar over mutual TLS, anything else as it is.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use remora_server::serve::{Detection, OpaqueIo, OpaqueStreams, Peer};

use super::balance::Endpoint;
use super::snapshot::Service;
use super::tcp::Streams;
use super::Outbound;
use crate::http::client::ClientSettings;

/// The service name of destinations outside the mesh, in metrics.
const PASSTHROUGH: &str = "passthrough";
/// Destinations remembered at most; past it they are forgotten together.
const MAX_DESTINATIONS: usize = 4096;

/// The outbound listener's streams in transparent mode.
pub struct Intercepted {
    pub outbound: Arc<Outbound>,
    /// How long an intercepted connection's first bytes may take to show
    /// that it speaks HTTP.
    pub detect_timeout: Duration,
    pub streams: Streams,
}

impl OpaqueStreams for Intercepted {
    /// Only an intercepted connection is detected: one the app made to
    /// the listener itself speaks HTTP.
    fn detection(&self, peer: &Peer) -> Detection {
        match peer.original_dst {
            Some(_) => Detection::Within(self.detect_timeout),
            None => Detection::Http,
        }
    }

    fn serve(
        self: Arc<Self>,
        io: OpaqueIo,
        peer: Peer,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let Some(destination) = peer.original_dst else {
                return;
            };
            let service = self.outbound.destination(destination).await;
            self.streams
                .forward(&self.outbound, &service, io, peer)
                .await
        })
    }
}

impl Outbound {
    pub(super) fn destinations(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Service>>> {
        self.destinations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where traffic to `destination` goes: a service of one endpoint,
    /// the mesh's endpoint at its IP (asked of the control plane, and
    /// watched, on first sight), reached over mutual TLS when it is meshed;
    /// else `destination` itself, unmeshed.
    pub(super) async fn destination(&self, destination: SocketAddr) -> Arc<Service> {
        if let Some(known) = self.destinations().get(&destination) {
            return known.clone();
        }
        let ip = destination.ip();
        if self.snapshot.load().endpoint_at(ip).is_none() {
            self.discover_at(ip).await;
        }
        let service = match self.snapshot.load().endpoint_at(ip) {
            Some((service, endpoint)) => {
                Service::to_one(&service.name, endpoint.clone(), service.opaque)
            }
            None => {
                let endpoint = Endpoint::new(
                    &self.clients,
                    ClientSettings::default(),
                    destination,
                    Default::default(),
                    None,
                );
                Service::to_one(PASSTHROUGH, Arc::new(endpoint), false)
            }
        };
        let service = Arc::new(service);
        let mut destinations = self.destinations();
        if destinations.len() >= MAX_DESTINATIONS {
            destinations.clear();
        }
        destinations.insert(destination, service.clone());
        service
    }

    /// Asks the control plane which service has an endpoint at `ip`, and
    /// waits for that service's view.
    async fn discover_at(&self, ip: IpAddr) {
        let Some(discovery) = &self.discovery else {
            return;
        };
        let looked_up = tokio::time::timeout(discovery.timeout, discovery.client.service_at(ip));
        if let Ok(Some(service)) = looked_up.await {
            if let Err(e) = self.discover(&service).await {
                tracing::info!(%ip, %service, error = %e, "the service of an intercepted destination");
            }
        }
    }
}
