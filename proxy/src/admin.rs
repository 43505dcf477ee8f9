//! The admin server: `/metrics`, `/ready`, `/live`, `/config`,
//! `PUT /log-level` and `POST /shutdown` (loopback callers only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::{watch, Notify};

use crate::discovery::MeshView;
use crate::http::{full, Body};
use crate::identity::Identity;
use crate::metrics::{encode_openmetrics, to_prometheus_text, Metrics};
use crate::telemetry::LogLevel;
use prometheus_client::registry::Registry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A log-level body is a filter string; anything longer is a mistake.
const MAX_LOG_LEVEL_BYTES: usize = 4096;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub view: watch::Receiver<Arc<MeshView>>,
    pub log_level: LogLevel,
    pub shutdown: Arc<Notify>,
    pub listeners: serde_json::Value,
    /// `None` without `--token-file`.
    pub identity: Option<Arc<Identity>>,
}

impl Admin {
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let response = match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => metrics_response(&self.metrics.registry, &req),
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/config") => self.config(),
            (&Method::GET, "/log-level") => {
                text(StatusCode::OK, format!("{}\n", self.log_level.current()))
            }
            (&Method::PUT, "/log-level") => self.set_log_level(req).await,
            (&Method::POST, "/shutdown") => {
                if peer.ip().is_loopback() {
                    self.shutdown.notify_one();
                    text(StatusCode::OK, "shutting down\n")
                } else {
                    text(
                        StatusCode::FORBIDDEN,
                        "shutdown is accepted from loopback only\n",
                    )
                }
            }
            (_, "/metrics" | "/live" | "/ready" | "/config" | "/log-level" | "/shutdown") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live, /config, /log-level\n",
            ),
        };
        Ok(response)
    }

    fn config(&self) -> Response<Body> {
        let view = self.view.borrow().clone();
        let age = view
            .loaded_at
            .elapsed()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut body = serde_json::json!({
            "listeners": self.listeners,
            "source": view.source,
            "version": view.version,
            "age_seconds": age,
            "last_error": view.last_error,
            "mesh": view.mesh,
        });
        if let Some(identity) = &self.identity {
            body["identity"] = identity.status();
        }
        if !view.views.is_empty() {
            body["views"] = serde_json::json!(view.views);
            body["inbound"] = serde_json::json!(view.inbound);
        }
        let mut r = Response::new(full(serde_json::to_vec_pretty(&body).unwrap_or_default()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }

    async fn set_log_level(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), MAX_LOG_LEVEL_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}\n"),
                )
            }
        };
        let Ok(directives) = std::str::from_utf8(&body) else {
            return text(
                StatusCode::BAD_REQUEST,
                "the body must be UTF-8 text such as `info` or `remora=debug`\n",
            );
        };
        match self.log_level.set(directives.trim()) {
            Ok(()) => {
                tracing::info!(level = directives.trim(), "log level changed");
                text(StatusCode::OK, format!("{}\n", directives.trim()))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
}

/// `GET /metrics` of an admin port (the proxy's and the control plane's):
/// OpenMetrics when the scraper's `Accept` asks for it, else the classic
/// Prometheus text.
pub fn metrics_response<B>(registry: &Registry, req: &Request<B>) -> Response<Body> {
    let wants_openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let openmetrics = encode_openmetrics(registry);
    let (body, content_type) = if wants_openmetrics {
        (openmetrics, OPENMETRICS)
    } else {
        (to_prometheus_text(&openmetrics), PROMETHEUS_TEXT)
    };
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A plain-text answer of an admin port.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
