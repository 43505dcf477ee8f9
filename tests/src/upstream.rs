//! Real HTTP servers (HTTP/1.1 and HTTP/2) standing in for the services
//! behind the proxy. Each records what it was sent.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub type Body = BoxBody<Bytes, hyper::Error>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// What an upstream was sent.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub version: Version,
    /// HTTP/2's `:authority`, or HTTP/1.1's `Host`.
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub peer: SocketAddr,
}

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

pub fn text(body: impl Into<Bytes>) -> Response<Body> {
    Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    )
}

pub fn status(code: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = text(body);
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
    r
}

impl Upstream {
    /// Answers every request `200` with `name` as the body.
    pub async fn named(name: &'static str) -> Upstream {
        Self::start(move |_req| async move { text(name) }).await
    }

    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    /// Serves on an address chosen by the caller (to bring an endpoint back).
    pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            // Held by this task, so that stopping it ends every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let handler = handler.clone();
                let record = record.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        record.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            path: req.uri().path().to_string(),
                            version: req.version(),
                            authority: req.uri().authority().map(|a| a.to_string()).or_else(|| {
                                let host = req.headers().get(http::header::HOST)?;
                                host.to_str().ok().map(str::to_string)
                            }),
                            headers: req.headers().clone(),
                            peer,
                        });
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream was sent a request")
    }

    /// Stops accepting and drops the listener (open connections end too).
    pub fn stop(self) {}
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on: connecting to it is refused.
pub async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Reads an HTTP/1.1 request head from `socket`, written raw by a test's
/// endpoint; false when the connection ends first.
pub async fn read_head(socket: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An HTTP/1.1 endpoint that answers the first request of each connection
/// (keeping it alive) and closes the connection, unanswered, when the next
/// request arrives on it: a server timing out an idle kept-alive
/// connection just as the proxy reuses it.
pub async fn closes_kept_alive_connections() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The first request's head.
                if !read_head(&mut socket).await {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh";
                if socket.write_all(answer).await.is_err() {
                    return;
                }
                // The next one is met with a close.
                let _ = socket.read(&mut [0u8; 4096]).await;
            });
        }
    });
    addr
}
