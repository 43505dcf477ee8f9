//! Transparent mode's outbound: the app's connections that iptables
//! redirected to the outbound listener (`remora-proxy init`), each with
//! its original destination. One that speaks HTTP is served as any
//! request, its authority first: a mesh service it names is routed as
//! always. Otherwise, and for a connection that does not speak HTTP, the
//! original destination decides: a service's virtual address (a
//! ClusterIP and port) is that service; an endpoint of the mesh at that
//! IP, at its app's port, is reached through its sidecar over mutual TLS;
//! anything else as it is (another port of a meshed pod, too: its
//! sidecar serves only its app's).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_api::protocol::ServicesListing;
use remora_server::serve::{Detection, OpaqueIo, OpaqueStreams, Peer};

use super::balance::Endpoint;
use super::snapshot::Service;
use super::{target, Outbound};
use crate::http::client::ClientSettings;

/// The service name of destinations outside the mesh, in metrics.
const PASSTHROUGH: &str = "passthrough";
/// Destinations remembered at most; past it they are forgotten together.
const MAX_DESTINATIONS: usize = 4096;
/// How long a name the control plane did not list is taken for one
/// outside the mesh without asking again.
const UNLISTED_FOR: Duration = Duration::from_secs(10);

/// The outbound listener's streams in transparent mode.
pub struct Intercepted {
    pub outbound: Arc<Outbound>,
    /// How long an intercepted connection's first bytes may take to show
    /// that it speaks HTTP.
    pub detect_timeout: Duration,
}

impl OpaqueStreams for Intercepted {
    /// Only an intercepted connection is detected: one the app made to
    /// the listener itself speaks HTTP. One to a `tcp` service's endpoint
    /// (as far as this proxy knows already) is a stream, whatever it says.
    fn detection(&self, peer: &Peer) -> Detection {
        let Some(destination) = peer.original_dst else {
            return Detection::Http;
        };
        let outbound = &self.outbound;
        let known = outbound.virtual_service(destination);
        let known = known.or_else(|| outbound.destinations().get(&destination).cloned());
        let known_opaque = match known {
            Some(service) => service.opaque,
            None => outbound
                .snapshot
                .load()
                .endpoint_serving(destination)
                .is_some_and(|(service, _)| service.opaque),
        };
        match known_opaque {
            true => Detection::Opaque(Duration::ZERO),
            false => Detection::Within(self.detect_timeout),
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
            self.outbound.forward_stream(&service, io, peer).await
        })
    }
}

impl Outbound {
    pub(super) fn destinations(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Service>>> {
        self.destinations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The service an intercepted request goes to: the mesh service its
    /// `authority` names, else by where it was going
    /// ([`Outbound::destination`]). A name is looked up in the control
    /// plane's listing before it is watched, so that a name outside the
    /// mesh (`example.com`) goes its way at once instead of waiting for a
    /// view that never comes. A name the listing lacked is not asked about
    /// again for [`UNLISTED_FOR`]: each request to it would cost a listing.
    pub(super) async fn intercepted(
        &self,
        authority: &str,
        destination: SocketAddr,
    ) -> Arc<Service> {
        if let Some(service) = self.snapshot.load().lookup(authority) {
            return service.clone();
        }
        if let Some(name) = target::mesh_service(authority).filter(|n| !self.recently_unlisted(n)) {
            match self.listing().await {
                Some(listing) if listing.services.contains_key(name) => {
                    if let Ok(service) = self.discover(authority).await {
                        return service;
                    }
                }
                Some(_) => {
                    let mut unlisted = self.unlisted();
                    if unlisted.len() >= MAX_DESTINATIONS {
                        unlisted.clear();
                    }
                    unlisted.insert(name.to_string(), Instant::now());
                }
                None => {}
            }
        }
        self.destination(destination).await
    }

    fn recently_unlisted(&self, name: &str) -> bool {
        self.unlisted()
            .get(name)
            .is_some_and(|at| at.elapsed() < UNLISTED_FOR)
    }

    fn unlisted(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.unlisted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where traffic to `destination` goes: the service whose virtual
    /// address it is (a Kubernetes Service's ClusterIP and port), balanced
    /// as any call to it; or a service of one endpoint, the mesh's
    /// endpoint at its IP, reached over mutual TLS when it is meshed, if
    /// its app is at that port (either found in the control plane's
    /// listing, and watched, on first sight); else `destination` itself,
    /// unmeshed.
    pub(super) async fn destination(&self, destination: SocketAddr) -> Arc<Service> {
        if let Some(service) = self.virtual_service(destination) {
            return service;
        }
        if let Some(known) = self.destinations().get(&destination) {
            return known.clone();
        }
        if self.snapshot.load().endpoint_at(destination.ip()).is_none() {
            if let Some(service) = self.discover_at(destination).await {
                let mut virtual_addresses = self.virtual_addresses();
                if virtual_addresses.len() >= MAX_DESTINATIONS {
                    virtual_addresses.clear();
                }
                virtual_addresses.insert(destination, service);
            }
            if let Some(service) = self.virtual_service(destination) {
                return service;
            }
        }
        let service = match self.snapshot.load().endpoint_serving(destination) {
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

    /// The service whose virtual address `destination` is known to be, as
    /// the snapshot has it now.
    fn virtual_service(&self, destination: SocketAddr) -> Option<Arc<Service>> {
        let name = self.virtual_addresses().get(&destination)?.clone();
        self.snapshot.load().services.get(&name).cloned()
    }

    fn virtual_addresses(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, String>> {
        self.virtual_addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the service whose virtual address `destination` is, or
    /// that has an endpoint at its IP, if the control plane lists one, and
    /// waits for its view; the service's name when `destination` is its
    /// virtual address.
    async fn discover_at(&self, destination: SocketAddr) -> Option<String> {
        let listing = self.listing().await?;
        let virtual_of = listing
            .services
            .iter()
            .find(|(_, s)| s.virtual_addresses.contains(&destination))
            .map(|(name, _)| name.clone());
        let ip = destination.ip();
        let service = virtual_of.clone().or_else(|| {
            listing
                .services
                .into_iter()
                .find(|(_, s)| s.endpoints.iter().any(|e| e.address.ip() == ip))
                .map(|(name, _)| name)
        })?;
        if let Err(e) = self.discover(&service).await {
            tracing::info!(%ip, %service, error = %e, "the service of an intercepted destination");
        }
        virtual_of
    }

    /// The control plane's listing of every service, within the discovery
    /// timeout; `None` standalone, where the snapshot is the whole mesh.
    async fn listing(&self) -> Option<ServicesListing> {
        let discovery = self.discovery.as_ref()?;
        tokio::time::timeout(discovery.timeout, discovery.client.listing())
            .await
            .ok()
            .flatten()
    }
}
