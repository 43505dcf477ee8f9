//! Where the proxy's view of the mesh comes from: a `mesh.yaml` on disk
//! (standalone) or the control plane's long-poll views. Either source
//! publishes whole views into a `watch` channel, so what consumes them
//! cannot tell the two apart.

pub mod control;
pub mod file;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use remora_api::protocol::ServicesListing;
use remora_api::{InboundPolicy, Mesh, Protocol};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use tokio::sync::watch;

pub use file::watch_file;

/// What a source has said of a service watched on demand so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Pending,
    Known,
    Unknown,
}

/// A source that learns of services when the app first calls them (the
/// control plane's), as the outbound sees it.
pub trait OnDemand: Send + Sync {
    /// Starts watching `service` unless it is watched already. `None` when
    /// the name cannot be a service or no more can be watched.
    fn watch(&self, service: &str) -> Option<watch::Receiver<Presence>>;

    /// Every service the source knows, with its endpoints: how transparent
    /// mode tells a service of the mesh, by its name or an endpoint's IP,
    /// from a destination outside it, without waiting on a watch.
    fn listing(&self) -> BoxFuture<'_, Option<ServicesListing>>;
}

/// One good version of the mesh, and what became of the latest attempt to
/// replace it.
#[derive(Clone, Debug, Serialize)]
pub struct MeshView {
    pub source: String,
    pub version: u64,
    #[serde(serialize_with = "unix_seconds")]
    pub loaded_at: SystemTime,
    /// The last rejected edit's problems, until a good edit replaces them.
    pub last_error: Option<String>,
    pub mesh: Arc<Mesh>,
    /// The own service's inbound policy, when the control plane serves it
    /// apart from the services this proxy calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundPolicy>,
    /// The own service's protocol, when the control plane serves it so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_protocol: Option<Protocol>,
    /// Each control-plane view the mesh was assembled from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewStatus>,
}

impl Default for MeshView {
    fn default() -> Self {
        Self {
            source: String::new(),
            version: 0,
            loaded_at: SystemTime::now(),
            last_error: None,
            mesh: Arc::default(),
            inbound: None,
            inbound_protocol: None,
            views: Vec::new(),
        }
    }
}

impl MeshView {
    /// The inbound policy `service`'s sidecar enforces.
    pub fn inbound_policy(&self, service: &str) -> Option<&InboundPolicy> {
        self.inbound.as_ref().or_else(|| {
            self.mesh
                .services
                .get(service)
                .and_then(|s| s.inbound.as_ref())
        })
    }

    /// What `service` (this proxy's own) speaks.
    pub fn inbound_protocol(&self, service: &str) -> Protocol {
        self.inbound_protocol.unwrap_or_else(|| {
            self.mesh
                .services
                .get(service)
                .map(|s| s.protocol)
                .unwrap_or_default()
        })
    }
}

/// One control-plane resource as last received.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewStatus {
    /// `outbound/NAME` or `inbound/NAME`.
    pub resource: String,
    /// The control plane's version; 0 until a first view arrives.
    pub version: u64,
    /// When the current version arrived, if one has.
    pub received_at: Option<SystemTime>,
    /// Whether the control plane said the service does not exist.
    pub unknown: bool,
}

impl Serialize for ViewStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let age = self
            .received_at
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs_f64());
        let mut v = s.serialize_struct("ViewStatus", 4)?;
        v.serialize_field("resource", &self.resource)?;
        v.serialize_field("version", &self.version)?;
        v.serialize_field("age_seconds", &age)?;
        v.serialize_field("unknown", &self.unknown)?;
        v.end()
    }
}

fn unix_seconds<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    s.serialize_f64(secs)
}
