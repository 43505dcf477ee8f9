//! The one HTTP/2 connection to the control plane (optionally mutual TLS):
//! made, kept up and remade with backoff, and every exchange on it, which
//! waits for it while it is down.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use remora_api::SpiffeId;
use remora_certs::leaf::CredentialStore;
use remora_certs::verify::{self, TrustAnchors};
use rustls::pki_types::ServerName;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::error::{ConnectError, ControlError};
use super::{reconnect_backoff, Shared};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a control plane that vanished without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A view larger than this is refused rather than buffered.
const MAX_VIEW_BYTES: usize = 16 << 20;
/// How often the connection, under TLS, looks for this proxy's first
/// certificate.
const CREDENTIALS_POLL: Duration = Duration::from_millis(50);

/// Sends requests on a connection to the control plane.
pub(super) type Sender = SendRequest<Full<Bytes>>;

/// A connection to the control plane: TCP, or TLS with `tls` over it.
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Drives a connection; it must be polled (spawned) for its sender to work.
pub(super) type Connection =
    hyper::client::conn::http2::Connection<TokioIo<Box<dyn Io>>, Full<Bytes>, TokioExecutor>;

/// TLS to the control plane, which must prove its identity
/// (`--control-identity`).
pub(super) struct ControlTls {
    /// With this proxy's certificate: the shared connection.
    mesh: TlsConnector,
    /// Without one: asking for a certificate.
    pub(super) bootstrap: TlsConnector,
    /// Sent as SNI, made from the identity expected, as to other sidecars.
    pub(super) server_name: ServerName<'static>,
    store: Arc<CredentialStore>,
}

impl ControlTls {
    pub(super) fn new(
        anchors: &TrustAnchors,
        store: Arc<CredentialStore>,
        expected: SpiffeId,
    ) -> ControlTls {
        let server_name = verify::server_name(&expected);
        let config = |store| {
            TlsConnector::from(Arc::new(verify::client_config(
                anchors,
                expected.clone(),
                store,
            )))
        };
        ControlTls {
            mesh: config(store.clone()),
            bootstrap: config(Arc::new(CredentialStore::default())),
            server_name,
            store,
        }
    }
}

/// Keeps one HTTP/2 connection to the control plane up, reconnecting with
/// backoff whenever it ends (capped low: a restarted control plane is
/// reconnected to within half a second).
pub(super) async fn maintain(
    shared: Arc<Shared>,
    authority: String,
    senders: watch::Sender<Option<Sender>>,
) {
    let mut backoff = reconnect_backoff();
    loop {
        if let Some(tls) = &shared.tls {
            // Every request on this connection needs this proxy's
            // certificate: connect once there is one.
            while tls.store.get().is_none() {
                tokio::time::sleep(CREDENTIALS_POLL).await;
            }
        }
        let tls = shared.tls.as_ref().map(|t| (&t.mesh, &t.server_name));
        match connect(&authority, tls).await {
            Ok((sender, connection)) => {
                tracing::info!(control_plane = %shared.base, "connected to the control plane");
                backoff.reset();
                senders.send_replace(Some(sender));
                let ended = connection.await;
                senders.send_replace(None);
                shared.failed(
                    "outbound",
                    ControlError::Lost {
                        control_plane: shared.base.clone(),
                        source: ended.err(),
                    },
                );
            }
            Err(e) => shared.failed(
                "outbound",
                ControlError::Unreachable {
                    control_plane: shared.base.clone(),
                    source: e,
                },
            ),
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}

/// A new connection to `authority`, over TLS with `tls` if given.
pub(super) async fn connect(
    authority: &str,
    tls: Option<(&TlsConnector, &ServerName<'static>)>,
) -> Result<(Sender, Connection), ConnectError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
        .map_err(ConnectError::Tcp)?;
    stream.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let stream: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some((tls, name)) => Box::new(
            tls.connect(name.clone(), stream)
                .await
                .map_err(ConnectError::Tls)?,
        ),
    };
    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Http2)
}

/// A request to the control plane, with the body's content type and a
/// bearer token if given.
pub(super) fn request(
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    bearer: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ControlError> {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(content_type) = content_type {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    if let Some(token) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request
        .body(Full::new(body))
        .map_err(|source| ControlError::Request {
            uri: uri.to_string(),
            source,
        })
}

/// One request on `sender`'s connection, the whole exchange, body
/// included, within `limit`.
pub(super) async fn send_on(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    limit: Duration,
) -> Result<(StatusCode, Bytes), ControlError> {
    let uri = request.uri().to_string();
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|source| ControlError::Exchange {
                uri: uri.clone(),
                source,
            })?;
        let response =
            sender
                .send_request(request)
                .await
                .map_err(|source| ControlError::Exchange {
                    uri: uri.clone(),
                    source,
                })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_VIEW_BYTES)
            .collect()
            .await
            .map_err(|source| ControlError::Read {
                uri: uri.clone(),
                source,
            })?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(ControlError::Timeout { uri, limit }),
    }
}

/// Resolves when a new connection to the control plane is up.
pub(super) async fn reconnected(connection: &mut watch::Receiver<Option<Sender>>) {
    loop {
        if connection.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if connection.borrow_and_update().is_some() {
            return;
        }
    }
}

impl Shared {
    /// One request over the shared connection, waiting for the connection
    /// if it is down; the whole exchange, body included, within `limit`.
    pub(super) async fn exchange(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), ControlError> {
        let json = (!body.is_empty()).then_some("application/json");
        self.exchange_with(method, uri, json, None, body, limit)
            .await
    }

    /// As [`Shared::exchange`], with the body's content type and a bearer
    /// token given.
    pub(super) async fn exchange_with(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        bearer: Option<&str>,
        body: Bytes,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), ControlError> {
        let mut sender = self.connected().await;
        let request = request(method, uri, content_type, bearer, body)?;
        send_on(&mut sender, request, limit).await
    }

    /// The live connection, once there is one.
    async fn connected(&self) -> Sender {
        let mut connection = self.connection.clone();
        loop {
            if let Some(sender) = connection.borrow_and_update().clone() {
                if !sender.is_closed() {
                    return sender;
                }
            }
            if connection.changed().await.is_err() {
                // The connection task never ends while the proxy runs.
                std::future::pending::<()>().await;
            }
        }
    }
}
