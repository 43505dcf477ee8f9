//! Pooled connections to endpoints. One hyper client per distinct
//! (connect timeout, idle timeout, protocol) shares its pool across every
//! service that asks for the same settings; the pool is keyed by endpoint.
//! A meshed endpoint (one with an identity) gets a client of its own per
//! identity, which speaks HTTP/2 over mutual TLS and checks that identity.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use remora_certs::SpiffeId;

use super::tls::MeshConnector;
use super::Body;
use crate::identity::Identity;

/// A client of plain HTTP, or of HTTP/2 over mutual TLS to one identity.
#[derive(Clone)]
pub enum HttpClient {
    Plain(Client<HttpConnector, Body>),
    Mesh(Client<MeshConnector, Body>),
}

impl HttpClient {
    pub fn request(&self, req: http::Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            HttpClient::Plain(c) => c.request(req),
            HttpClient::Mesh(c) => c.request(req),
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// HTTP/2 with prior knowledge, multiplexed on one connection.
    pub http2: bool,
}

/// The registry of upstream clients. Looked up when a config is compiled,
/// never per request.
#[derive(Default)]
pub struct Clients {
    clients: Mutex<HashMap<ClientSettings, HttpClient>>,
    mesh: Mutex<HashMap<(ClientSettings, SpiffeId), HttpClient>>,
    /// This proxy's identity; without one, meshed endpoints are reached
    /// in plaintext like any other.
    identity: Option<Arc<Identity>>,
}

impl Clients {
    pub fn new(identity: Option<Arc<Identity>>) -> Clients {
        Clients {
            identity,
            ..Clients::default()
        }
    }

    pub fn get(&self, settings: ClientSettings) -> HttpClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(settings)
            .or_insert_with(|| HttpClient::Plain(builder(settings, false).build(tcp(settings))))
            .clone()
    }

    /// The client that reaches endpoints proving `identity` over mutual
    /// TLS, when this proxy has an identity of its own to prove.
    pub fn mesh(&self, settings: ClientSettings, identity: &SpiffeId) -> Option<HttpClient> {
        let own = self.identity.as_ref()?;
        let mut clients = self.mesh.lock().unwrap_or_else(|e| e.into_inner());
        let client = clients
            .entry((settings, identity.clone()))
            .or_insert_with(|| {
                let connector = MeshConnector::new(
                    tcp(settings),
                    &own.anchors,
                    own.store.clone(),
                    identity.clone(),
                );
                HttpClient::Mesh(builder(settings, true).build(connector))
            });
        Some(client.clone())
    }
}

fn tcp(s: ClientSettings) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(s.connect_timeout));
    connector.enforce_http(true);
    connector
}

fn builder(s: ClientSettings, http2: bool) -> hyper_util::client::legacy::Builder {
    let http2 = http2 || s.http2;
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(s.idle_timeout)
        .http2_only(http2)
        .http2_keep_alive_interval(if http2 {
            Some(Duration::from_secs(20))
        } else {
            None
        })
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .set_host(false);
    builder
}

/// How a request that got no response failed.
#[derive(Debug)]
pub enum SendFailure {
    /// No connection could be made; nothing reached the endpoint.
    Connect(String),
    /// The connection broke before a response arrived.
    Reset(String),
    /// The caller's request body failed while it was being sent.
    CallerBody(String),
}

pub fn classify(err: &hyper_util::client::legacy::Error) -> SendFailure {
    let mut reason = String::new();
    let mut caller = false;
    let mut timed_out = false;
    let mut source = err.source();
    while let Some(s) = source {
        reason = s.to_string();
        caller |= s.is::<super::errors::CallerBodyError>();
        timed_out |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        source = s.source();
    }
    if reason.is_empty() {
        reason = err.to_string();
    }
    if caller {
        SendFailure::CallerBody(reason)
    } else if err.is_connect() {
        // hyper-util reports `connect_timeout` as "deadline has elapsed".
        if timed_out {
            reason = "the connection timed out".to_string();
        }
        SendFailure::Connect(reason)
    } else {
        SendFailure::Reset(reason)
    }
}
