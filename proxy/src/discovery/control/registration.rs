//! This instance's registration: made once its app accepts connections,
//! renewed at a third of its TTL and at once after a reconnection, and
//! withdrawn on the way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use remora_api::protocol::Registration;
use tokio::task::JoinHandle;

use super::connection::reconnected;
use super::error::{body_text, ControlError};
use super::{backoff, Shared, REQUEST_TIMEOUT};
use crate::metrics::ResourceLabels;

const APP_PROBE_INTERVAL: Duration = Duration::from_millis(200);
const APP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A registration kept alive in the background.
pub struct Registrar {
    shared: Arc<Shared>,
    path: String,
    task: JoinHandle<()>,
}

impl Registrar {
    /// Starts keeping `instance` of the proxy's service registered.
    pub(super) fn start(
        shared: Arc<Shared>,
        instance: &str,
        registration: Registration,
        app: SocketAddr,
    ) -> Registrar {
        let path = format!("/v1/registrations/{}/{instance}", shared.service);
        let task = tokio::spawn(keep_registered(
            shared.clone(),
            path.clone(),
            registration,
            app,
        ));
        Registrar { shared, path, task }
    }

    /// Stops renewing and tells the control plane this instance is leaving,
    /// so callers stop picking it before it stops accepting.
    pub async fn deregister(self) {
        self.task.abort();
        let uri = format!("{}{}", self.shared.base, self.path);
        match self
            .shared
            .exchange(Method::DELETE, &uri, Bytes::new(), REQUEST_TIMEOUT)
            .await
        {
            Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                tracing::info!(path = %self.path, "deregistered from the control plane")
            }
            Ok((status, body)) => {
                tracing::warn!(path = %self.path, %status, body = %String::from_utf8_lossy(&body), "the control plane refused the deregistration")
            }
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "could not deregister; the registration will expire")
            }
        }
    }
}

async fn keep_registered(
    shared: Arc<Shared>,
    path: String,
    registration: Registration,
    app: SocketAddr,
) {
    wait_for_app(app).await;
    let uri = format!("{}{path}", shared.base);
    let body = Bytes::from(serde_json::to_vec(&registration).unwrap_or_default());
    let renew_every = Duration::from_secs(registration.ttl_seconds.max(1)) / 3;
    let updates = shared.metrics.updates.get_or_create_owned(&ResourceLabels {
        resource: "registration",
    });
    let mut connection = shared.connection.clone();
    let mut backoff = backoff();
    let mut registered = false;
    loop {
        match shared
            .exchange(Method::PUT, &uri, body.clone(), REQUEST_TIMEOUT)
            .await
        {
            Ok((status, _)) if status.is_success() => {
                if !registered {
                    tracing::info!(path, address = %registration.address, "registered with the control plane");
                    registered = true;
                }
                updates.inc();
                shared.succeeded("registration");
                shared.readiness.send_modify(|r| r.registered = true);
                backoff.reset();
                connection.borrow_and_update();
                tokio::select! {
                    _ = tokio::time::sleep(renew_every) => {}
                    _ = reconnected(&mut connection) => {}
                }
            }
            Ok((status, answer)) => {
                shared.failed(
                    "registration",
                    ControlError::RegistrationRefused {
                        uri: uri.clone(),
                        status,
                        body: body_text(&answer),
                    },
                );
                tokio::time::sleep(backoff.failed()).await;
            }
            Err(e) => {
                shared.failed("registration", e);
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

/// An instance is registered only once its app accepts connections, so
/// callers are not sent to a sidecar whose app is still starting.
async fn wait_for_app(app: SocketAddr) {
    let mut logged = false;
    loop {
        let attempt = tokio::time::timeout(APP_PROBE_TIMEOUT, tokio::net::TcpStream::connect(app));
        if let Ok(Ok(_)) = attempt.await {
            return;
        }
        if !logged {
            tracing::info!(app = %app, "waiting for the app to accept connections before registering");
            logged = true;
        }
        tokio::time::sleep(APP_PROBE_INTERVAL).await;
    }
}
