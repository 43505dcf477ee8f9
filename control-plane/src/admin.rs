//! The admin listener: `/metrics` (Prometheus text, or OpenMetrics when
//! asked), `/ready` (with the last rejected config edit, if any; with
//! `--kubernetes`, not before the API server's objects are listed) and
//! `/live`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use remora_server::admin::{metrics, text};
use remora_server::mesh_file::LoadedMesh;
use remora_server::Body;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// The mesh file's view, when `--config` names one.
    pub config: Option<watch::Receiver<Arc<LoadedMesh>>>,
    /// Serving; false while shutting down.
    pub ready: Arc<AtomicBool>,
    /// With `--kubernetes`: whether every watched kind has been listed and
    /// its endpoints published. Until then this replica would serve views
    /// that lack them, so it is not ready.
    pub kubernetes_listed: Option<watch::Receiver<bool>>,
}

impl Admin {
    pub fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => metrics(&self.metrics.registry, req),
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => self.ready(),
            (_, "/metrics" | "/live" | "/ready") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live\n",
            ),
        }
    }

    /// Ready while serving, even after a rejected edit: the last good config
    /// still serves, and the body says what was rejected.
    fn ready(&self) -> Response<Body> {
        if !self.ready.load(Ordering::Acquire) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n",
            );
        }
        if self
            .kubernetes_listed
            .as_ref()
            .is_some_and(|l| !*l.borrow())
        {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the Kubernetes API server's services, endpointslices and pods are not listed yet\n",
            );
        }
        let mut body = String::from("ready\n");
        if let Some(config) = &self.config {
            let view = config.borrow();
            if let Some(problems) = &view.last_error {
                let _ = write!(
                    body,
                    "the last edit of {} was rejected; the last good config keeps serving. Its problems:\n{problems}\n",
                    view.source
                );
            }
        }
        text(StatusCode::OK, body)
    }
}
