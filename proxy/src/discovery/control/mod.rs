//! The control-plane source: long-poll views from `remora-control`
//! (docs/protocol.md), assembled into the same [`MeshView`] the file source
//! publishes. One HTTP/2 connection carries every poll and the
//! registration. Services are watched lazily, on the app's first call to
//! them. While the control plane is away the last views keep serving
//! (fail-static) and the connection is retried with backoff and jitter.
//! With `https://`, that connection is mutual TLS with this proxy's
//! certificate, made once it has one; asking for a certificate takes a
//! connection of its own, without one.
//!
//! This file is the front: [`ControlClient`] and the state its tasks
//! share. The one connection is in `connection`, the polls and the mesh
//! they assemble in `views`, the registration in `registration`, asking
//! for a certificate in `certificates`.

mod certificates;
mod connection;
mod error;
mod registration;
mod views;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, StatusCode, Uri};
use remora_api::protocol::{Registration, ServicesListing};
use remora_api::SpiffeId;
use remora_certs::leaf::CredentialStore;
use remora_certs::verify::TrustAnchors;
use remora_server::Backoff;
use tokio::sync::watch;

use super::{MeshView, OnDemand, Presence};
use crate::metrics::ControlMetrics;
use connection::{ControlTls, Sender};
use views::{Resource, State};

pub use error::{ConnectError, ControlError};
pub use registration::Registrar;

/// The limit on a registration, deregistration or certificate exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The ceiling between tries to reconnect, lower than [`BACKOFF_MAX`]: a
/// try is one TCP connect, cheap for a control plane that is down, and a
/// control plane that comes back must hear from its proxies at once, for
/// they re-register on reconnecting and every change waits on it.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How the proxy waits before asking the control plane again once it
/// answered badly or not in time: polling, registering, asking for a
/// certificate.
pub(crate) fn backoff() -> Backoff {
    Backoff::new(BACKOFF_BASE, BACKOFF_MAX)
}

/// How the proxy waits before trying to reconnect to the control plane.
/// Full jitter still spreads a fleet's tries over the whole wait, so
/// proxies do not come back in lockstep.
fn reconnect_backoff() -> Backoff {
    Backoff::new(BACKOFF_BASE, RECONNECT_BACKOFF_MAX)
}

/// The proxy's side of the control-plane protocol. Cheap to clone.
#[derive(Clone)]
pub struct ControlClient(Arc<Shared>);

/// What the connection, the polls and the registration share.
struct Shared {
    /// `http://host:port` or `https://host:port`, prefixed to every
    /// request's path.
    base: String,
    /// How to reach the control plane over TLS, for an `https://` URL.
    tls: Option<ControlTls>,
    /// The live connection; `None` while it is being remade.
    connection: watch::Receiver<Option<Sender>>,
    state: Mutex<State>,
    published: watch::Sender<Arc<MeshView>>,
    readiness: watch::Sender<Readiness>,
    metrics: ControlMetrics,
    service: String,
}

/// What `/ready` waits for, as it arrives.
#[derive(Clone, Copy, Default)]
struct Readiness {
    inbound: bool,
    registered: bool,
}

impl ControlClient {
    /// Connects to the control plane at `url` and watches `service`'s own
    /// inbound view. The returned channel carries the assembled mesh.
    /// With `identity` (anchors and this proxy's credentials), an
    /// `https://` URL is reached over mutual TLS, the control plane's
    /// certificate checked for its identity.
    pub fn start(
        url: &Uri,
        service: &str,
        metrics: ControlMetrics,
        identity: Option<(&TrustAnchors, Arc<CredentialStore>, SpiffeId)>,
    ) -> anyhow::Result<(ControlClient, watch::Receiver<Arc<MeshView>>)> {
        let (scheme, authority) = match (url.scheme_str(), url.authority()) {
            (Some(scheme @ ("http" | "https")), Some(authority)) => (scheme, authority.clone()),
            _ => anyhow::bail!(
                "--control-url {url}: give an http:// or https:// URL with a host, like https://remora-control:8086"
            ),
        };
        if authority.port_u16().is_none() {
            anyhow::bail!("--control-url {url}: name the port, like https://remora-control:8086");
        }
        let tls = match (scheme, identity) {
            ("https", Some((anchors, store, expected))) => {
                Some(ControlTls::new(anchors, store, expected))
            }
            ("https", None) => anyhow::bail!(
                "--control-url {url}: https needs --token-file and --trust-anchors, for this proxy's certificate and to check the control plane's"
            ),
            _ => None,
        };
        let base = format!("{scheme}://{authority}");
        let (connection_tx, connection) = watch::channel(None);
        let (published, view) = watch::channel(Arc::new(MeshView {
            source: base.clone(),
            ..MeshView::default()
        }));
        let inbound = Resource::Inbound(service.to_string());
        let shared = Arc::new(Shared {
            base,
            tls,
            connection,
            state: Mutex::new(State::new(&inbound)),
            published,
            readiness: watch::channel(Readiness::default()).0,
            metrics,
            service: service.to_string(),
        });
        tokio::spawn(connection::maintain(
            shared.clone(),
            authority.to_string(),
            connection_tx,
        ));
        tokio::spawn(views::poll(shared.clone(), inbound));
        Ok((ControlClient(shared), view))
    }

    /// Asks the control plane to sign `csr_pem` for the identity `token`
    /// grants: its status and body (the chain, or why not).
    pub async fn request_certificate(
        &self,
        token: &str,
        csr_pem: &str,
    ) -> Result<(StatusCode, Bytes), ControlError> {
        certificates::request_certificate(&self.0, token, csr_pem).await
    }

    /// Resolves once the proxy has its inbound view and is registered:
    /// what `/ready` waits for.
    pub async fn ready(&self) {
        let mut readiness = self.0.readiness.subscribe();
        let _ = readiness.wait_for(|r| r.inbound && r.registered).await;
    }

    /// Registers this instance once the app at `app` accepts connections,
    /// renews it at a third of its TTL (and at once after a reconnection,
    /// so a restarted control plane learns of it quickly), until
    /// [`Registrar::deregister`].
    pub fn register(
        &self,
        instance: &str,
        registration: Registration,
        app: SocketAddr,
    ) -> Registrar {
        Registrar::start(self.0.clone(), instance, registration, app)
    }
}

/// Watches a service's outbound view, from the app's first call to it.
impl OnDemand for ControlClient {
    fn watch(&self, service: &str) -> Option<watch::Receiver<Presence>> {
        Shared::watch_outbound(&self.0, service)
    }

    /// `GET /v1/services`.
    fn listing(&self) -> BoxFuture<'_, Option<ServicesListing>> {
        Box::pin(async move {
            let listed = self
                .0
                .exchange(Method::GET, "/v1/services", Bytes::new(), REQUEST_TIMEOUT)
                .await;
            match listed {
                Ok((StatusCode::OK, body)) => serde_json::from_slice(&body).ok(),
                Ok((status, _)) => {
                    tracing::warn!(%status, "GET /v1/services");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "GET /v1/services");
                    None
                }
            }
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut b = backoff();
        for _ in 0..20 {
            assert!(b.failed() <= BACKOFF_MAX);
        }
        b.reset();
        assert!(b.failed() <= BACKOFF_BASE);
    }

    #[test]
    fn reconnecting_never_waits_long_and_stays_spread() {
        let mut b = reconnect_backoff();
        let waits: Vec<Duration> = (0..200).map(|_| b.failed()).collect();
        assert!(
            waits.iter().all(|w| *w <= RECONNECT_BACKOFF_MAX),
            "{waits:?}"
        );
        // Full jitter: a fleet's tries at the ceiling are not in lockstep.
        let distinct: std::collections::HashSet<_> = waits[20..].iter().collect();
        assert!(distinct.len() > 100, "{distinct:?}");
    }
}
