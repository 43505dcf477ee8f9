//! The app's kubelet probes, answered through the admin listener. In
//! transparent mode a probe of the app's port would meet the inbound,
//! which takes no plaintext (an `HTTP` probe), takes a TLS handshake for
//! mutual TLS (an `HTTPS` or gRPC probe), or accepts the connection
//! itself, app or not (a `tcpSocket` probe). `inject` points each at
//! `/app-probe/TARGET` on the admin port instead, and this asks the app on
//! loopback as the kubelet would have: only the targets the proxy was
//! given (`--app-probes`), so that the admin port opens nothing else of
//! the app's.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_api::probe::ProbeTarget;
use remora_server::admin::text;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::http::client::{ClientSettings, Clients, HttpClient};
use crate::http::{empty, Body};

/// The admin path a forwarded probe takes, before its target.
pub const PREFIX: &str = "/app-probe/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The kubelet gives up sooner (a probe's `timeoutSeconds`, 1s unless
/// set); this bounds only what is left behind.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// gRPC's health service, as the kubelet's `grpc` probe calls it.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.status` of a service that serves.
const GRPC_SERVING: u64 = 1;

/// Where the app takes `target`: on loopback.
fn on_loopback(target: &ProbeTarget) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, target.port()))
}

/// The targets the admin listener forwards; a plain HTTP one with a
/// client of its port, the others dialled for each probe.
#[derive(Default)]
pub struct AppProbes {
    targets: HashMap<ProbeTarget, Option<HttpClient>>,
    tls: Option<TlsConnector>,
}

impl AppProbes {
    pub fn new(targets: &[ProbeTarget]) -> AppProbes {
        let settings = ClientSettings {
            connect_timeout: CONNECT_TIMEOUT,
            ..ClientSettings::default()
        };
        let clients = Clients::default();
        let targets: HashMap<ProbeTarget, Option<HttpClient>> = targets
            .iter()
            .map(|t| {
                let client = match t {
                    ProbeTarget::Http { tls: false, .. } => {
                        Some(clients.to(settings, on_loopback(t), None))
                    }
                    _ => None,
                };
                (t.clone(), client)
            })
            .collect();
        let tls = targets
            .keys()
            .any(|t| matches!(t, ProbeTarget::Http { tls: true, .. }))
            .then(|| TlsConnector::from(Arc::new(remora_certs::verify::probe_client_config())));
        AppProbes { targets, tls }
    }

    /// The app's answer to the probe `target` (what follows [`PREFIX`]),
    /// asked with the kubelet's `headers` where it is HTTP: its status,
    /// or `503` when it fails or cannot be had, or `404` for a target not
    /// given.
    pub async fn forward(&self, target: &str, headers: &HeaderMap) -> Response<Body> {
        let known = target
            .parse::<ProbeTarget>()
            .ok()
            .and_then(|t| self.targets.get_key_value(&t));
        let Some((target, client)) = known else {
            return text(
                StatusCode::NOT_FOUND,
                format!("{PREFIX}{target} is not a probe of this pod's app\n"),
            );
        };
        let app = on_loopback(target);
        let asked = tokio::time::timeout(ANSWER_TIMEOUT, self.ask(target, client, headers));
        match asked.await {
            Ok(Ok((status, what))) => text(status, format!("{what}\n")),
            Ok(Err(why)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the app at {app} did not answer: {why}\n"),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the app at {app} did not answer within {ANSWER_TIMEOUT:?}\n"),
            ),
        }
    }

    async fn ask(
        &self,
        target: &ProbeTarget,
        client: &Option<HttpClient>,
        headers: &HeaderMap,
    ) -> Result<(StatusCode, String), String> {
        let app = on_loopback(target);
        match (target, client) {
            (ProbeTarget::Http { path, .. }, Some(client)) => {
                let request = http_get(app, path, headers)?.map(|_| empty());
                let answer = client.request(request).await.map_err(|e| e.to_string())?;
                Ok(answered(answer.status()))
            }
            (ProbeTarget::Http { path, .. }, None) => {
                let tls = self.tls.as_ref().ok_or("no TLS client")?;
                let tcp = connect(app).await?;
                let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
                let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                let mut request = http_get(app, path, headers)?.map(|_| Empty::<Bytes>::new());
                // On a connection of its own: the origin form.
                *request.uri_mut() = path.parse().map_err(|e| format!("{path}: {e}"))?;
                let answer = sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(answered(answer.status()))
            }
            (ProbeTarget::Tcp { .. }, _) => {
                connect(app).await?;
                Ok((
                    StatusCode::OK,
                    format!("the app's port {} takes connections", app.port()),
                ))
            }
            (ProbeTarget::Grpc { service, .. }, _) => grpc_health(app, service).await,
        }
    }
}

fn answered(status: StatusCode) -> (StatusCode, String) {
    (status, format!("the app answered {status}"))
}

async fn connect(app: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(app)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    }
}

/// Headers of the kubelet's request that are its own connection's, not
/// the probe's.
const NOT_FORWARDED: [HeaderName; 6] = [
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
];

/// The probe's `GET` of `path` at `app`, with the kubelet's headers (its
/// `User-Agent`, and the probe's `httpHeaders`).
fn http_get(app: SocketAddr, path: &str, headers: &HeaderMap) -> Result<Request<()>, String> {
    let authority = app.to_string();
    let mut request = Request::get(format!("http://{authority}{path}"))
        .body(())
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        if !NOT_FORWARDED.contains(name) {
            request.headers_mut().append(name, value.clone());
        }
    }
    if let Ok(host) = HeaderValue::from_str(&authority) {
        request.headers_mut().insert(header::HOST, host);
    }
    Ok(request)
}

/// gRPC's health check of `service` at `app`, in HTTP/2 with prior
/// knowledge: `200` when it answers `SERVING`.
async fn grpc_health(app: SocketAddr, service: &str) -> Result<(StatusCode, String), String> {
    let tcp = connect(app).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{app}{GRPC_HEALTH_CHECK}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(health_check_request(service)))
        .map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if answer.status() != StatusCode::OK {
        return Err(format!("HTTP status {}", answer.status()));
    }
    let head = answer.headers().clone();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| head.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if grpc_status != "0" {
        let message = trailers
            .get("grpc-message")
            .or_else(|| head.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(format!("grpc-status {grpc_status:?} {message}"));
    }
    match serving_status(&body.to_bytes()) {
        Some(GRPC_SERVING) => Ok((StatusCode::OK, "the app is SERVING".to_string())),
        other => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the app is not serving (status {})", other.unwrap_or(0)),
        )),
    }
}

/// A `HealthCheckRequest { service }` in one gRPC message: the frame
/// header (not compressed, its length), then field 1, a string.
fn health_check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// `HealthCheckResponse.status` (field 1, a varint) of one gRPC message;
/// `None` when the message is not one. An absent field is 0, `UNKNOWN`.
fn serving_status(framed: &[u8]) -> Option<u64> {
    let message = framed.get(5..)?;
    let mut at = 0;
    while at < message.len() {
        let (key, next) = varint(message, at)?;
        at = next;
        match (key >> 3, key & 7) {
            (1, 0) => return varint(message, at).map(|(value, _)| value),
            // Any other field: skipped by its wire type.
            (_, 0) => at = varint(message, at)?.1,
            (_, 2) => {
                let (length, next) = varint(message, at)?;
                at = next.checked_add(usize::try_from(length).ok()?)?;
            }
            (_, 1) => at += 8,
            (_, 5) => at += 4,
            _ => return None,
        }
    }
    Some(0)
}

fn varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_check_is_one_grpc_message_and_its_answer_is_read() {
        assert_eq!(&health_check_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &health_check_request("a.B")[..],
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 2, 0x08, 1]),
            Some(GRPC_SERVING)
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        // Nothing set: UNKNOWN. An unknown field before it is skipped.
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 1]),
            Some(1)
        );
        assert_eq!(serving_status(&[0, 0]), None);
        assert_eq!(serving_status(&[0, 0, 0, 0, 1, 0x08]), None);
    }
}
