//! Dialing an endpoint for one opaque stream: plain TCP to an unmeshed
//! endpoint; to a meshed one, mutual TLS whose ALPN says that the stream
//! is opaque, with the endpoint's identity checked as for HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use remora_certs::verify::{self, ALPN_OPAQUE};
use remora_certs::SpiffeId;
use remora_server::serve::OpaqueIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::identity::Identity;

/// Opens a new connection to one endpoint for each opaque stream.
pub struct OpaqueDial {
    address: SocketAddr,
    connect_timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl OpaqueDial {
    /// Over mutual TLS when the endpoint has an identity and this proxy
    /// has one of its own; otherwise plain TCP.
    pub fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        own: Option<&Identity>,
        expected: Option<&SpiffeId>,
    ) -> OpaqueDial {
        let tls = match (own, expected) {
            (Some(own), Some(expected)) => {
                let mut config =
                    verify::client_config(&own.anchors, expected.clone(), own.store.clone());
                config.alpn_protocols = vec![ALPN_OPAQUE.to_vec()];
                Some((
                    TlsConnector::from(Arc::new(config)),
                    verify::server_name(expected),
                ))
            }
            _ => None,
        };
        OpaqueDial {
            address,
            connect_timeout,
            tls,
        }
    }

    /// A connection, or why none could be made (nothing was sent).
    pub async fn connect(&self) -> Result<OpaqueIo, String> {
        let connecting = tokio::time::timeout(self.connect_timeout, async {
            let tcp = TcpStream::connect(self.address)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok::<OpaqueIo, String>(Box::new(tcp)),
                Some((tls, name)) => {
                    let stream = tls
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("mTLS: {e}"))?;
                    Ok(Box::new(stream) as OpaqueIo)
                }
            }
        });
        match connecting.await {
            Ok(connected) => connected,
            Err(_) => Err("the connection timed out".to_string()),
        }
    }
}
