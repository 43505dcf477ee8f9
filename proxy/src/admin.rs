//! The admin server: `/metrics`, `/ready`, `/live`, `/config`,
//! `PUT /log-level`, `POST /shutdown` (loopback callers only), and the
//! app's probes under `/app-probe/` ([`crate::app_probes`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use remora_server::admin::{metrics, text};
use remora_server::logs::LogLevel;
use tokio::sync::{watch, Notify};

use crate::app_probes::{self, AppProbes};
use crate::discovery::MeshView;
use crate::http::{full, Body};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::outbound::Outbound;

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
    /// For the state of each endpoint the app's calls are balanced over.
    pub outbound: Arc<Outbound>,
    /// The app's probes the kubelet sends here (transparent mode).
    pub app_probes: AppProbes,
}

impl Admin {
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let response = match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => metrics(&self.metrics.registry, &req),
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
            (&Method::GET, path) if path.starts_with(app_probes::PREFIX) => {
                let target = req
                    .uri()
                    .path_and_query()
                    .map_or(path, |p| p.as_str())
                    .trim_start_matches(app_probes::PREFIX);
                self.app_probes.forward(target, req.headers()).await
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
            "endpoints": self.outbound.snapshot().endpoint_status(),
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
