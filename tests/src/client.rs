//! Real HTTP clients: hyper's, in HTTP/1.1 or HTTP/2 prior knowledge.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

type Connector = tower::util::BoxCloneSyncService<
    http::Uri,
    hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    Box<dyn std::error::Error + Send + Sync>,
>;

#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Body>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// `response`, its body read whole.
    pub async fn read<B>(response: http::Response<B>) -> Result<Reply, String>
    where
        B: hyper::body::Body,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Where a test sends the frames of a [`channel_body`].
pub type FrameSender<E> = tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, E>>;

/// A body whose frames are sent through the returned channel as the test
/// goes; it ends when the sender is dropped.
pub fn channel_body<E: Send + Sync + 'static>(
    buffer: usize,
) -> (FrameSender<E>, BoxBody<Bytes, E>) {
    let (tx, rx) = tokio::sync::mpsc::channel(buffer);
    let frames =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (tx, BodyExt::boxed(http_body_util::StreamBody::new(frames)))
}

pub fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Client {
    pub fn http1() -> Self {
        Self::build(false, None)
    }

    pub fn http2() -> Self {
        Self::build(true, None)
    }

    /// Dials `proxy` whatever the URL names, so `http://orders/x` reaches
    /// the proxy with `orders` as the authority (HTTP/1 `Host`, HTTP/2
    /// `:authority`), as an app configured with the proxy's address does.
    pub fn via(proxy: std::net::SocketAddr, http2: bool) -> Self {
        Self::build(http2, Some(proxy))
    }

    fn build(http2: bool, proxy: Option<std::net::SocketAddr>) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let connector =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |uri: http::Uri| {
                let mut http = http.clone();
                let uri = match proxy {
                    Some(p) => format!("http://{p}").parse().unwrap(),
                    None => uri,
                };
                async move {
                    use tower::Service;
                    http.call(uri)
                        .await
                        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                }
            }));
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        Self { inner }
    }

    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.send(Request::get(url).body(body(Bytes::new())).unwrap())
            .await
    }

    /// A GET through `proxy` to `host` (as `Host`/`:authority`).
    pub async fn get_via(
        &self,
        proxy: std::net::SocketAddr,
        host: &str,
        path: &str,
    ) -> Result<Reply, String> {
        let req = Request::get(format!("http://{proxy}{path}"))
            .header("host", host)
            .body(body(Bytes::new()))
            .unwrap();
        self.send(req).await
    }

    /// Sends and returns the response with its body still streaming.
    pub async fn send_streaming(
        &self,
        req: Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
            .await
            .map_err(|_| "no response within 30s".to_string())?
            .map_err(|e| format!("{e:?}"))
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Reply, String> {
        let response = tokio::time::timeout(Duration::from_secs(30), self.inner.request(req))
            .await
            .map_err(|_| "no response within 30s".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        Reply::read(response).await
    }
}
