//! The views: each resource polled for as long as the proxy runs, each
//! new view taken in, the mesh assembled from them all and published as a
//! [`MeshView`], with what became of the latest exchange (`last_error`,
//! the `connected` gauges).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use remora_api::load::is_valid_service_name;
use remora_api::protocol::{InboundView, OutboundView};
use remora_api::{Mesh, DEFAULT_TRUST_DOMAIN};
use tokio::sync::watch;

use super::error::{body_text, ControlError};
use super::{backoff, Shared};
use crate::discovery::{MeshView, Presence, ViewStatus};
use crate::metrics::ResourceLabels;

/// How long the control plane may hold a poll when nothing changes.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// How much longer than its `wait` a poll may take before it is given up.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// An app calling ever new names must not grow the watches without bound.
const MAX_WATCHED_SERVICES: usize = 1024;

/// Every view received so far, and what is published of them.
pub(super) struct State {
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

/// A view the control plane serves.
#[derive(Clone)]
pub(super) enum Resource {
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

impl State {
    /// Nothing received yet; `inbound` is the own service's view.
    pub(super) fn new(inbound: &Resource) -> State {
        State {
            outbound: BTreeMap::new(),
            inbound: None,
            inbound_status: ViewStatus::new(inbound),
            version: 0,
            last_error: None,
        }
    }
}

/// Follows one resource for as long as the proxy runs: first asks with
/// `wait=0s` (so a caller waiting on it learns at once whether the service
/// exists), then long-polls.
pub(super) async fn poll(shared: Arc<Shared>, resource: Resource) {
    let kind = resource.kind();
    let updates = shared
        .metrics
        .updates
        .get_or_create_owned(&ResourceLabels { resource: kind });
    let (mut version, mut wait) = (0, Duration::ZERO);
    let mut backoff = backoff();
    loop {
        let answer = shared.fetch(&resource, version, wait).await;
        let result = match answer {
            Ok(Answer::View(body)) => shared
                .accept(&resource, &body)
                .map(|v| {
                    version = v;
                    updates.inc();
                })
                .map_err(|source| ControlError::BadView {
                    path: resource.path(),
                    source,
                }),
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
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

impl Shared {
    /// Starts polling `service`'s outbound view unless it is watched
    /// already. `None` when the name cannot be a service or no more can be
    /// watched.
    pub(super) fn watch_outbound(
        this: &Arc<Shared>,
        service: &str,
    ) -> Option<watch::Receiver<Presence>> {
        let mut state = this.lock();
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
        tokio::spawn(poll(this.clone(), resource));
        Some(rx)
    }

    async fn fetch(
        &self,
        resource: &Resource,
        version: u64,
        wait: Duration,
    ) -> Result<Answer, ControlError> {
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
            status => Err(ControlError::Refused {
                uri,
                status,
                body: body_text(&body),
            }),
        }
    }

    /// Takes a new view in; returns its version.
    fn accept(&self, resource: &Resource, body: &[u8]) -> Result<u64, serde_json::Error> {
        let mut state = self.lock();
        let version = match resource {
            Resource::Outbound(service) => {
                let mut view: OutboundView = serde_json::from_slice(body)?;
                let version = view.version;
                if let Some(watched) = state.outbound.get_mut(service) {
                    watched.status.received(version);
                    if view.incomplete {
                        keep_endpoints(&mut view, watched.view.as_ref());
                    }
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
    pub(super) fn succeeded(&self, kind: &'static str) {
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
    pub(super) fn failed(&self, kind: &'static str, error: ControlError) {
        self.metrics
            .connected
            .get_or_create(&ResourceLabels { resource: kind })
            .set(0);
        let error = error.to_string();
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
            inbound_protocol: Some(
                state
                    .inbound
                    .as_ref()
                    .map(|v| v.protocol)
                    .unwrap_or_default(),
            ),
            views,
        }));
    }
}

/// A view from a control plane that restarted moments ago lacks the
/// endpoints whose sidecars have not registered with it again yet: until
/// a complete view comes, those the `previous` view had are kept.
fn keep_endpoints(view: &mut OutboundView, previous: Option<&OutboundView>) {
    let Some(previous) = previous else { return };
    for (name, service) in &mut view.services {
        let Some(before) = previous.services.get(name) else {
            continue;
        };
        for endpoint in &before.endpoints {
            if !service
                .endpoints
                .iter()
                .any(|e| e.address == endpoint.address)
            {
                service.endpoints.push(endpoint.clone());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            incomplete: false,
        }
    }

    fn with_endpoints(mut view: OutboundView, ports: &[u16]) -> OutboundView {
        let service = view.services.get_mut(&view.service).unwrap();
        service.endpoints = ports
            .iter()
            .map(|p| remora_api::Endpoint {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], *p)),
                identity: None,
                labels: Default::default(),
                app_port: None,
            })
            .collect();
        view
    }

    #[test]
    fn an_incomplete_view_keeps_the_endpoints_it_lacks() {
        let before = with_endpoints(view("a", 1, 1, &[]), &[1, 2]);
        let mut after = with_endpoints(view("a", 2, 5, &[]), &[2, 3]);
        after.incomplete = true;
        keep_endpoints(&mut after, Some(&before));
        let ports: Vec<u16> = after.services["a"]
            .endpoints
            .iter()
            .map(|e| e.address.port())
            .collect();
        assert_eq!(ports, [2, 3, 1]);
        assert_eq!(
            after.services["a"].timeout.map(Duration::from),
            Some(Duration::from_secs(5)),
            "the rest of the view is the new one's"
        );
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
