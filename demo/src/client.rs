//! The demo's one HTTP client: the shop's calls through its sidecar, the
//! traffic sent to the gateway, and the scrapes of the proxies' admin ports.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Loopback connects are instant; a second means the listener is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Below the 10s a sidecar keeps an idle HTTP/1 connection open, so the
/// pool lets go of a connection before the sidecar closes it under a request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// The shop's answers and a proxy's `/metrics` are a few KiB.
const MAX_BODY: usize = 1 << 20;

pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// A whole response: its status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request to `service` through the listener at `via` (a sidecar's
/// outbound or inbound), the way an app uses the mesh in explicit mode:
/// the service's name is the `Host`. `headers` are copied onto the request.
pub fn request(
    method: Method,
    via: SocketAddr,
    service: &str,
    path: &str,
    headers: &HeaderMap,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{via}{path}"))
        .header(http::header::HOST, service);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let body = match body {
        Some(json) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    request
        .body(Full::new(body))
        .with_context(|| format!("building a request for {service}{path}"))
}

/// `GET url`, for the admin endpoints of the proxies and the control plane.
pub async fn get(client: &Client, url: &str, timeout: Duration) -> anyhow::Result<Reply> {
    let request = Request::get(url)
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("building a request for {url}"))?;
    send(client, request, timeout)
        .await
        .with_context(|| format!("GET {url}"))
}

/// Sends `request` and reads the whole response, all within `timeout`.
pub async fn send(
    client: &Client,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let exchange = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response body: {e}"))?
            .to_bytes();
        anyhow::Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}
