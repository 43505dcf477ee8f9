//! Mutual TLS to a meshed endpoint: the connector that dials it (TLS 1.3,
//! ALPN `h2`, the endpoint's identity checked), reading this proxy's
//! credentials from its [`CredentialStore`], so that a renewal applies to
//! the next handshake; a connection keeps its own. The accepting side is
//! `remora_server::tls`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use remora_certs::leaf::CredentialStore;
use remora_certs::verify::{self, TrustAnchors};
use remora_certs::SpiffeId;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::Service;

use super::client::Dial;

/// Dials a meshed endpoint: TCP, then TLS with this proxy's credentials,
/// requiring the server to be `expected`, and asking by ALPN for HTTP/2
/// (requests) or HTTP/1.1 (a request that upgrades its connection).
#[derive(Clone)]
pub struct MeshConnector {
    tcp: Dial,
    tls: TlsConnector,
    /// Sent as SNI; mesh certificates name no host, so it only tells the
    /// server which identity the client expects.
    server_name: ServerName<'static>,
}

impl MeshConnector {
    pub fn new(
        tcp: Dial,
        anchors: &TrustAnchors,
        store: Arc<CredentialStore>,
        expected: SpiffeId,
        alpn: &[u8],
    ) -> MeshConnector {
        let server_name = verify::server_name(&expected);
        let mut config = verify::client_config(anchors, expected, store);
        config.alpn_protocols = vec![alpn.to_vec()];
        MeshConnector {
            tcp,
            tls: TlsConnector::from(Arc::new(config)),
            server_name,
        }
    }
}

impl Service<http::Uri> for MeshConnector {
    type Response = TokioIo<MeshStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let (tls, name) = (self.tls.clone(), self.server_name.clone());
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let stream = tls.connect(name, tcp).await.map_err(|e| {
                // A refused certificate is a failure to connect, which a
                // retry to another endpoint may get past.
                io::Error::new(io::ErrorKind::ConnectionRefused, format!("mTLS: {e}"))
            })?;
            Ok(TokioIo::new(MeshStream(Box::new(stream))))
        })
    }
}

/// A TLS connection to a meshed endpoint.
pub struct MeshStream(Box<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.get_ref().1.alpn_protocol() == Some(verify::ALPN_H2) {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
