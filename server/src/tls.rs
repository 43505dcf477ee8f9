//! The accepting side of TLS, for any listener: the server's credentials
//! read from a [`CredentialStore`] at each handshake (so a renewal applies
//! to the next one), and the client's chain checked against the anchors.
//! TLS is told from plaintext in [`crate::detect`].

use std::sync::Arc;

use remora_certs::leaf::CredentialStore;
use remora_certs::verify::{self, ClientAuth, TrustAnchors};
use tokio_rustls::TlsAcceptor;

/// How a TLS listener treats a connection that does not start TLS.
pub trait PlaintextPolicy: Send + Sync {
    /// Whether a plaintext connection is served (the service is
    /// `permissive`) or refused (`strict`).
    fn allows_plaintext(&self) -> bool;
}

/// A listener that serves only TLS.
pub struct TlsOnly;

impl PlaintextPolicy for TlsOnly {
    fn allows_plaintext(&self) -> bool {
        false
    }
}

/// A listener's TLS: its own credentials, and every client's chain
/// verified against the anchors.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    /// What becomes of a connection that does not start a handshake.
    pub plaintext: Arc<dyn PlaintextPolicy>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// `client_auth` says whether a client must show a certificate of the
    /// mesh (a sidecar's inbound) or may come without one (the control
    /// plane's API, where a proxy asks for its first); `alpn` lists the
    /// protocols offered.
    pub fn new(
        anchors: &TrustAnchors,
        store: Arc<CredentialStore>,
        client_auth: ClientAuth,
        alpn: &[&[u8]],
        plaintext: Arc<dyn PlaintextPolicy>,
    ) -> Result<ServerTls, remora_certs::Error> {
        let config = verify::server_config(anchors, store, client_auth, alpn)?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            plaintext,
        })
    }
}
