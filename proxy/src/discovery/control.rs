//! The control-plane source: long-poll views from `remora-control`
//! (docs/protocol.md), assembled into the same [`MeshView`] the file source
//! publishes. One HTTP/2 connection carries every poll and the
//! registration. Services are watched lazily, on the app's first call to
//! them. While the control plane is away the last views keep serving
//! (fail-static) and the connection is retried with backoff and jitter.
//! With `https://`, that connection is mutual TLS with this proxy's
//! certificate, made once it has one; asking for a certificate takes a
//! connection of its own, without one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use remora_api::load::is_valid_service_name;
use remora_api::protocol::{InboundView, OutboundView, Registration};
use remora_api::{Mesh, SpiffeId, DEFAULT_TRUST_DOMAIN};
use remora_certs::leaf::CredentialStore;
use remora_certs::verify::{self, TrustAnchors};
use rustls::pki_types::ServerName;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::{MeshView, OnDemand, Presence, ViewStatus};
use crate::metrics::{ControlMetrics, ResourceLabels};

/// How long the control plane may hold a poll when nothing changes.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// How much longer than its `wait` a poll may take before it is given up.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// The limit on a registration or deregistration exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a control plane that vanished without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A view larger than this is refused rather than buffered.
const MAX_VIEW_BYTES: usize = 16 << 20;
/// An app calling ever new names must not grow the watches without bound.
const MAX_WATCHED_SERVICES: usize = 1024;
const APP_PROBE_INTERVAL: Duration = Duration::from_millis(200);
const APP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the connection, under TLS, looks for this proxy's first
/// certificate.
const CREDENTIALS_POLL: Duration = Duration::from_millis(50);

/// The proxy's side of the control-plane protocol. Cheap to clone.
#[derive(Clone)]
pub struct ControlClient(Arc<Shared>);

struct Shared {
    /// `http://host:port` or `https://host:port`, prefixed to every
    /// request's path.
    base: String,
    /// How to reach the control plane over TLS, for an `https://` URL.
    tls: Option<ControlTls>,
    connection: watch::Receiver<Option<SendRequest<Full<Bytes>>>>,
    state: Mutex<State>,
    published: watch::Sender<Arc<MeshView>>,
    readiness: watch::Sender<Readiness>,
    metrics: ControlMetrics,
    service: String,
}

#[derive(Clone, Copy, Default)]
struct Readiness {
    inbound: bool,
    registered: bool,
}

struct State {
    outbound: BTreeMap<String, Watched>,
    inbound: Option<InboundView>,
    inbound_status: ViewStatus,
    /// The published view's version: bumped whenever the mesh changes.
    version: u64,
    last_error: Option<String>,
}

struct Watched {
    view: Option<OutboundView>,
    status: ViewStatus,
    presence: watch::Sender<Presence>,
}

#[derive(Clone)]
enum Resource {
    Outbound(String),
    Inbound(String),
}

impl Resource {
    fn kind(&self) -> &'static str {
        match self {
            Resource::Outbound(_) => "outbound",
            Resource::Inbound(_) => "inbound",
        }
    }

    fn path(&self) -> String {
        match self {
            Resource::Outbound(s) | Resource::Inbound(s) => format!("/v1/{}/{s}", self.kind()),
        }
    }
}

enum Answer {
    View(Bytes),
    Unchanged,
    Unknown,
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
            state: Mutex::new(State {
                outbound: BTreeMap::new(),
                inbound: None,
                inbound_status: ViewStatus::new(&inbound),
                version: 0,
                last_error: None,
            }),
            published,
            readiness: watch::channel(Readiness::default()).0,
            metrics,
            service: service.to_string(),
        });
        tokio::spawn(maintain_connection(
            shared.clone(),
            authority.to_string(),
            connection_tx,
        ));
        tokio::spawn(poll(shared.clone(), inbound));
        Ok((ControlClient(shared), view))
    }

    /// Asks the control plane to sign `csr_pem` for the identity `token`
    /// grants: its status and body (the chain, or why not).
    pub async fn request_certificate(
        &self,
        token: &str,
        csr_pem: &str,
    ) -> Result<(StatusCode, Bytes), String> {
        let uri = format!("{}/v1/certificate", self.0.base);
        let body = Bytes::from(csr_pem.to_string());
        let Some(tls) = &self.0.tls else {
            return self
                .0
                .exchange_with(
                    Method::POST,
                    &uri,
                    Some("application/pkcs10"),
                    Some(token),
                    body,
                    REQUEST_TIMEOUT,
                )
                .await;
        };
        // A connection of its own, without a client certificate: this is
        // how a proxy gets its first one.
        let authority = self.0.base.trim_start_matches("https://");
        let (mut sender, connection) = connect(authority, Some((&tls.bootstrap, &tls.server_name)))
            .await
            .map_err(|e| format!("{uri}: {e:#}"))?;
        tokio::spawn(connection);
        let request = Request::post(&uri)
            .header(http::header::CONTENT_TYPE, "application/pkcs10")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(body))
            .map_err(|e| format!("{uri}: {e}"))?;
        send_on(&mut sender, request, REQUEST_TIMEOUT).await
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
        let path = format!("/v1/registrations/{}/{instance}", self.0.service);
        let task = tokio::spawn(keep_registered(
            self.0.clone(),
            path.clone(),
            registration,
            app,
        ));
        Registrar {
            shared: self.0.clone(),
            path,
            task,
        }
    }
}

/// Watches a service's outbound view, from the app's first call to it.
impl OnDemand for ControlClient {
    fn watch(&self, service: &str) -> Option<watch::Receiver<Presence>> {
        let mut state = self.0.lock();
        if let Some(watched) = state.outbound.get(service) {
            return Some(watched.presence.subscribe());
        }
        if !is_valid_service_name(service) || state.outbound.len() >= MAX_WATCHED_SERVICES {
            return None;
        }
        let resource = Resource::Outbound(service.to_string());
        let (presence, rx) = watch::channel(Presence::Pending);
        state.outbound.insert(
            service.to_string(),
            Watched {
                view: None,
                status: ViewStatus::new(&resource),
                presence,
            },
        );
        tracing::debug!(service, "watching a service's outbound view");
        tokio::spawn(poll(self.0.clone(), resource));
        Some(rx)
    }
}

/// A registration kept alive in the background.
pub struct Registrar {
    shared: Arc<Shared>,
    path: String,
    task: JoinHandle<()>,
}

impl Registrar {
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One request over the shared connection, waiting for the connection
    /// if it is down; the whole exchange, body included, within `limit`.
    async fn exchange(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let json = (!body.is_empty()).then_some("application/json");
        self.exchange_with(method, uri, json, None, body, limit)
            .await
    }

    /// As [`Shared::exchange`], with the body's content type and a bearer
    /// token given.
    async fn exchange_with(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        bearer: Option<&str>,
        body: Bytes,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut sender = self.connected().await;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("{uri}: {e}"))?;
        send_on(&mut sender, request, limit).await
    }

    /// The live connection, once there is one.
    async fn connected(&self) -> SendRequest<Full<Bytes>> {
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

    async fn fetch(
        &self,
        resource: &Resource,
        version: u64,
        wait: Duration,
    ) -> Result<Answer, String> {
        let uri = format!(
            "{}{}?version={version}&wait={}ms",
            self.base,
            resource.path(),
            wait.as_millis()
        );
        let (status, body) = self
            .exchange(Method::GET, &uri, Bytes::new(), wait + POLL_SLACK)
            .await?;
        match status {
            StatusCode::OK => Ok(Answer::View(body)),
            StatusCode::NOT_MODIFIED => Ok(Answer::Unchanged),
            StatusCode::NOT_FOUND => Ok(Answer::Unknown),
            status => Err(format!(
                "{uri}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )),
        }
    }

    /// Takes a new view in; returns its version.
    fn accept(&self, resource: &Resource, body: &[u8]) -> Result<u64, serde_json::Error> {
        let mut state = self.lock();
        let version = match resource {
            Resource::Outbound(service) => {
                let view: OutboundView = serde_json::from_slice(body)?;
                let version = view.version;
                if let Some(watched) = state.outbound.get_mut(service) {
                    watched.status.received(version);
                    watched.view = Some(view);
                    watched.presence.send_replace(Presence::Known);
                }
                version
            }
            Resource::Inbound(_) => {
                let view: InboundView = serde_json::from_slice(body)?;
                let version = view.version;
                state.inbound_status.received(version);
                state.inbound = Some(view);
                self.readiness.send_modify(|r| r.inbound = true);
                version
            }
        };
        state.last_error = None;
        self.publish(&mut state, true);
        Ok(version)
    }

    /// The control plane knows no such service (yet).
    fn unknown(&self, resource: &Resource) {
        let mut state = self.lock();
        let changed = match resource {
            Resource::Outbound(service) => match state.outbound.get_mut(service) {
                Some(watched) => {
                    watched.status.unknown = true;
                    watched.presence.send_replace(Presence::Unknown);
                    watched.view.take().is_some()
                }
                None => false,
            },
            Resource::Inbound(_) => {
                // A service not yet registered anywhere: its sidecar runs
                // with the default policy until the control plane has one.
                state.inbound_status.unknown = true;
                self.readiness.send_modify(|r| r.inbound = true);
                state.inbound.take().is_some()
            }
        };
        self.publish(&mut state, changed);
    }

    /// Records a successful exchange; the control plane is reachable
    /// again, so a standing error is cleared.
    fn succeeded(&self, kind: &'static str) {
        self.metrics
            .connected
            .get_or_create(&ResourceLabels { resource: kind })
            .set(1);
        let mut state = self.lock();
        if state.last_error.take().is_some() {
            tracing::info!(control_plane = %self.base, "the control plane answers again");
            self.publish(&mut state, false);
        }
    }

    /// Records a failed exchange: logged, shown in `/config`, and the
    /// `connected` gauge of its kind drops to 0.
    fn failed(&self, kind: &'static str, error: String) {
        self.metrics
            .connected
            .get_or_create(&ResourceLabels { resource: kind })
            .set(0);
        let mut state = self.lock();
        if state.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(error = %error, "control plane unreachable; serving the last views");
            state.last_error = Some(error);
            self.publish(&mut state, false);
        }
    }

    /// Assembles the mesh from every view and publishes it. Each service
    /// is taken from the newest view that holds it (versions come from one
    /// counter, so newer is larger).
    fn publish(&self, state: &mut State, mesh_changed: bool) {
        let previous = self.published.borrow().clone();
        let (mesh, loaded_at) = if mesh_changed {
            state.version += 1;
            (Arc::new(assemble(state)), SystemTime::now())
        } else {
            (previous.mesh.clone(), previous.loaded_at)
        };
        let mut views = vec![state.inbound_status.clone()];
        views.extend(state.outbound.values().map(|w| w.status.clone()));
        self.published.send_replace(Arc::new(MeshView {
            source: self.base.clone(),
            version: state.version,
            loaded_at,
            last_error: state.last_error.clone(),
            mesh,
            inbound: Some(
                state
                    .inbound
                    .as_ref()
                    .map(|v| v.policy.clone())
                    .unwrap_or_default(),
            ),
            views,
        }));
    }
}

fn assemble(state: &State) -> Mesh {
    let mut services = BTreeMap::new();
    let mut taken_from: BTreeMap<&str, u64> = BTreeMap::new();
    let mut trust_domain = state.inbound.as_ref().map(|v| v.trust_domain.clone());
    for view in state.outbound.values().filter_map(|w| w.view.as_ref()) {
        trust_domain.get_or_insert_with(|| view.trust_domain.clone());
        for (name, service) in &view.services {
            if taken_from
                .get(name.as_str())
                .is_some_and(|&v| v >= view.version)
            {
                continue;
            }
            taken_from.insert(name, view.version);
            services.insert(name.clone(), service.clone());
        }
    }
    Mesh {
        trust_domain: trust_domain.unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string()),
        services,
    }
}

impl ViewStatus {
    fn new(resource: &Resource) -> Self {
        let name = match resource {
            Resource::Outbound(s) | Resource::Inbound(s) => s,
        };
        ViewStatus {
            resource: format!("{}/{name}", resource.kind()),
            version: 0,
            received_at: None,
            unknown: false,
        }
    }

    fn received(&mut self, version: u64) {
        self.version = version;
        self.received_at = Some(SystemTime::now());
        self.unknown = false;
    }
}

/// Follows one resource for as long as the proxy runs: first asks with
/// `wait=0s` (so a caller waiting on it learns at once whether the service
/// exists), then long-polls.
async fn poll(shared: Arc<Shared>, resource: Resource) {
    let kind = resource.kind();
    let updates = shared
        .metrics
        .updates
        .get_or_create_owned(&ResourceLabels { resource: kind });
    let (mut version, mut wait) = (0, Duration::ZERO);
    let mut backoff = Backoff::default();
    loop {
        let answer = shared.fetch(&resource, version, wait).await;
        let result = match answer {
            Ok(Answer::View(body)) => shared
                .accept(&resource, &body)
                .map(|v| {
                    version = v;
                    updates.inc();
                })
                .map_err(|e| format!("{}: a view that does not parse: {e}", resource.path())),
            Ok(Answer::Unchanged) => Ok(()),
            Ok(Answer::Unknown) => {
                shared.unknown(&resource);
                Ok(())
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                shared.succeeded(kind);
                backoff.reset();
                wait = POLL_WAIT;
            }
            Err(e) => {
                shared.failed(kind, e);
                tokio::time::sleep(backoff.next()).await;
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
    let mut backoff = Backoff::default();
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
                let reason = String::from_utf8_lossy(&answer);
                shared.failed(
                    "registration",
                    format!("{uri}: registration refused: {status}: {}", reason.trim()),
                );
                tokio::time::sleep(backoff.next()).await;
            }
            Err(e) => {
                shared.failed("registration", e);
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Resolves when a new connection to the control plane is up.
async fn reconnected(connection: &mut watch::Receiver<Option<SendRequest<Full<Bytes>>>>) {
    loop {
        if connection.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if connection.borrow_and_update().is_some() {
            return;
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

/// Keeps one HTTP/2 connection to the control plane up, reconnecting with
/// backoff whenever it ends.
async fn maintain_connection(
    shared: Arc<Shared>,
    authority: String,
    senders: watch::Sender<Option<SendRequest<Full<Bytes>>>>,
) {
    let mut backoff = Backoff::default();
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
                let why = match ended {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                };
                shared.failed(
                    "outbound",
                    format!(
                        "the connection to the control plane at {} ended: {why}",
                        shared.base
                    ),
                );
            }
            Err(e) => shared.failed(
                "outbound",
                format!(
                    "cannot connect to the control plane at {}: {e:#}",
                    shared.base
                ),
            ),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// One request on `sender`'s connection, the whole exchange, body
/// included, within `limit`.
async fn send_on(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    limit: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let uri = request.uri().to_string();
    let exchange = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_VIEW_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("{uri}: {e}")),
        Err(_) => Err(format!("{uri}: no answer within {limit:?}")),
    }
}

/// A connection to the control plane: TCP, or TLS with `tls` over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

type Connection =
    hyper::client::conn::http2::Connection<TokioIo<Box<dyn Io>>, Full<Bytes>, TokioExecutor>;

async fn connect(
    authority: &str,
    tls: Option<(&TlsConnector, &ServerName<'static>)>,
) -> anyhow::Result<(SendRequest<Full<Bytes>>, Connection)> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}"))??;
    stream.set_nodelay(true)?;
    let stream: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some((tls, name)) => Box::new(
            tls.connect(name.clone(), stream)
                .await
                .context("the TLS handshake with the control plane failed")?,
        ),
    };
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .context("the HTTP/2 handshake failed")?;
    Ok((sender, connection))
}

/// TLS to the control plane, which must prove its identity
/// (`--control-identity`).
struct ControlTls {
    /// With this proxy's certificate: the shared connection.
    mesh: TlsConnector,
    /// Without one: asking for a certificate.
    bootstrap: TlsConnector,
    /// Sent as SNI, made from the identity expected, as to other sidecars.
    server_name: ServerName<'static>,
    store: Arc<CredentialStore>,
}

impl ControlTls {
    fn new(anchors: &TrustAnchors, store: Arc<CredentialStore>, expected: SpiffeId) -> ControlTls {
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

/// Exponential backoff with full jitter: each wait is uniform in
/// [0, base·2ⁿ], capped, so a fleet of proxies does not reconnect in step.
#[derive(Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures += 1;
        ceiling.mul_f64(fastrand::f64())
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut b = Backoff::default();
        for _ in 0..20 {
            assert!(b.next() <= BACKOFF_MAX);
        }
        assert_eq!(b.failures, 20);
        b.reset();
        assert!(b.next() <= BACKOFF_BASE);
    }

    fn view(service: &str, version: u64, timeout_secs: u64, also: &[&str]) -> OutboundView {
        let mut names = vec![service];
        names.extend_from_slice(also);
        let yaml: String = names
            .iter()
            .map(|n| format!("  {n}: {{ timeout: {timeout_secs}s }}\n"))
            .collect();
        let mesh = remora_api::parse_mesh("t", &format!("services:\n{yaml}")).unwrap();
        OutboundView {
            service: service.into(),
            version,
            trust_domain: "example.org".into(),
            services: mesh.services,
        }
    }

    fn state_with(views: Vec<OutboundView>) -> State {
        let outbound = views
            .into_iter()
            .map(|v| {
                let resource = Resource::Outbound(v.service.clone());
                (
                    v.service.clone(),
                    Watched {
                        status: ViewStatus::new(&resource),
                        view: Some(v),
                        presence: watch::channel(Presence::Known).0,
                    },
                )
            })
            .collect();
        State {
            outbound,
            inbound: None,
            inbound_status: ViewStatus::new(&Resource::Inbound("me".into())),
            version: 0,
            last_error: None,
        }
    }

    #[test]
    fn a_service_in_two_views_is_taken_from_the_newer() {
        // `orders` splits to `orders-next`, which is also watched itself.
        let state = state_with(vec![
            view("orders", 10, 1, &["orders-next"]),
            view("orders-next", 20, 2, &[]),
        ]);
        let mesh = assemble(&state);
        assert_eq!(mesh.trust_domain, "example.org");
        let timeout = |name: &str| mesh.services[name].timeout.map(Duration::from);
        assert_eq!(timeout("orders"), Some(Duration::from_secs(1)));
        assert_eq!(timeout("orders-next"), Some(Duration::from_secs(2)));
    }
}
