//! A caller that speaks the mesh's mutual TLS itself: a certificate for an
//! identity of the test's choosing, a TLS 1.3 connection with ALPN `h2`
//! that checks the server's identity, and HTTP/2 over it. It plays the
//! other sidecar, or an intruder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_certs::authority::{Issuer, Validity};
use remora_certs::leaf::{CredentialStore, Credentials};
use remora_certs::verify::{self, TrustAnchors};
use remora_certs::SpiffeId;

use crate::Reply;

/// Credentials for `identity` signed by `issuer`, valid for a day.
pub fn credentials(issuer: &Issuer, identity: &str) -> Arc<CredentialStore> {
    let id = SpiffeId::resolve(identity, "cluster.local").expect("an identity");
    let (chain, key) = issuer
        .issue(
            &id,
            Validity::starting(SystemTime::now(), Duration::from_secs(86400)),
        )
        .expect("a certificate");
    let store = Arc::new(CredentialStore::default());
    store.set(Credentials::from_pem(&chain, &key).expect("credentials"));
    store
}

/// An HTTP/2 connection to `addr` over mutual TLS, as `own`, expecting
/// the server to be `server`; the error says where it failed.
pub async fn connect(
    addr: SocketAddr,
    anchors: &TrustAnchors,
    own: Arc<CredentialStore>,
    server: &str,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let expected = SpiffeId::resolve(server, "cluster.local").map_err(|e| e.to_string())?;
    let config = verify::client_config(anchors, expected, own);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("mesh.test").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET of `path` on `sender`'s connection.
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = Request::get(format!("http://mesh{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    request(sender, req.body(Bytes::new()).unwrap()).await
}

/// Any request on `sender`'s connection.
pub async fn request(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Bytes>,
) -> Result<Reply, String> {
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.map(Full::new)),
    )
    .await
    .map_err(|_| "no response within 10s".to_string())?
    .map_err(|e| format!("request: {e}"))?;
    Reply::read(response).await
}

/// One GET of `path` to `addr` on a new mutual-TLS connection.
pub async fn get(
    addr: SocketAddr,
    anchors: &TrustAnchors,
    own: Arc<CredentialStore>,
    server: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut sender = connect(addr, anchors, own, server).await?;
    send(&mut sender, path, headers).await
}
