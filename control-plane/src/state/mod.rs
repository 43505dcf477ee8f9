//! The merged state: the mesh from the file plus the endpoints that
//! registered and those a discovery source (Kubernetes) found, turned into
//! one view per resource (`outbound/NAME`, `inbound/NAME`).
//! Each resource has a `watch` channel holding its serialized body and
//! version; a change publishes only into the channels of the resources
//! whose content changed, so it wakes exactly their watchers, and each
//! body is serialized once however many watch it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use remora_api::protocol::{
    EndpointHealth, EndpointSource, EndpointStatus, InboundView, OutboundView, Registration,
    ServiceStatus, ServicesListing,
};
use remora_api::{Endpoint, Mesh, Service, SpiffeId};
use tokio::sync::watch;

use self::registrations::Table;
pub use self::registrations::{
    OverQuota, Put, Quotas, Registrant, DEFAULT_MAX_INSTANCES_PER_SERVICE,
    DEFAULT_MAX_SERVICES_PER_IDENTITY,
};

mod registrations;
#[cfg(test)]
mod tests;

/// The two kinds of view a service has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// What callers of the service need: routes, policies, endpoints.
    Outbound,
    /// What the service's own sidecars enforce.
    Inbound,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Outbound => "outbound",
            Kind::Inbound => "inbound",
        }
    }
}

/// What a resource's channel holds: its current body, if the service
/// exists, and when it was published.
#[derive(Clone, Debug)]
pub struct Published {
    /// The view's version; 0 while the service does not exist.
    pub version: u64,
    /// The view as JSON; `None` while the service does not exist.
    pub body: Option<Bytes>,
    /// When this was published, to measure how long its delivery took.
    pub at: Instant,
}

impl Published {
    fn absent() -> Self {
        Self {
            version: 0,
            body: None,
            at: Instant::now(),
        }
    }

    pub fn exists(&self) -> bool {
        self.body.is_some()
    }
}

/// A view as last published, kept to tell whether a recomputed one differs.
#[derive(Debug)]
enum View {
    Outbound(OutboundView),
    Inbound(InboundView),
}

impl View {
    /// Equal but for the version.
    fn same_content(&self, other: &View) -> bool {
        match (self, other) {
            (View::Outbound(a), View::Outbound(b)) => {
                a.service == b.service
                    && a.trust_domain == b.trust_domain
                    && a.services == b.services
                    && a.incomplete == b.incomplete
            }
            (View::Inbound(a), View::Inbound(b)) => {
                a.service == b.service
                    && a.trust_domain == b.trust_domain
                    && a.identity == b.identity
                    && a.policy == b.policy
            }
            _ => false,
        }
    }

    fn set_version(&mut self, version: u64) {
        match self {
            View::Outbound(v) => v.version = version,
            View::Inbound(v) => v.version = version,
        }
    }

    fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            View::Outbound(v) => serde_json::to_vec(v),
            View::Inbound(v) => serde_json::to_vec(v),
        }
    }
}

type Key = (Kind, String);

/// An endpoint a discovery source found for a service (the Kubernetes
/// source: a ready address of its EndpointSlices). Unlike a registration it
/// carries its own identity: each pod has its service account's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub address: SocketAddr,
    /// The identity its certificate must carry; `None`: an unmeshed
    /// endpoint, reached in plaintext.
    pub identity: Option<SpiffeId>,
    pub labels: BTreeMap<String, String>,
    /// What it is, for people: a pod's `NAMESPACE/NAME`.
    pub instance: Option<String>,
    /// A meshed pod's app port, behind its sidecar at `address`.
    pub app_port: Option<NonZeroU16>,
}

struct Resource {
    tx: watch::Sender<Published>,
    /// `None` while the service does not exist.
    view: Option<View>,
}

impl Resource {
    fn absent() -> Self {
        Self {
            tx: watch::channel(Published::absent()).0,
            view: None,
        }
    }
}

/// Who may register endpoints of a service.
#[derive(Debug, PartialEq, Eq)]
pub enum Registrants {
    /// The identity `mesh.yaml` gives the service.
    Declared(SpiffeId),
    /// The service accounts of the pods of a service Kubernetes knows
    /// (none while it has none).
    Pods(BTreeSet<SpiffeId>),
    /// Any identity of the mesh: a service with no identity, outside
    /// Kubernetes.
    Anyone,
}

/// The control plane's whole state, shared by the sources that change it
/// and the API that serves it. The lock is never held across an `.await`.
pub struct State {
    inner: Mutex<Inner>,
}

struct Inner {
    mesh: Arc<Mesh>,
    registrations: Table,
    /// Service → its discovered endpoints, in the order the source gave
    /// them; a service the source knows with no endpoint ready maps to none.
    discovered: BTreeMap<String, Vec<Discovered>>,
    /// Service → the addresses that stand for it as a whole (Kubernetes
    /// Services' ClusterIPs at the port the mesh serves), for the listing.
    virtual_addresses: BTreeMap<String, BTreeSet<SocketAddr>>,
    /// Service → the identities of its pods, for each service Kubernetes
    /// knows: who may register its endpoints.
    pod_identities: BTreeMap<String, BTreeSet<SpiffeId>>,
    resources: HashMap<Key, Resource>,
    /// Service → the services whose outbound views include it (through a
    /// split), so an endpoint change refreshes exactly those.
    dependents: HashMap<String, BTreeSet<String>>,
    next_version: u64,
    registrations_gauge: Gauge,
    /// Bumped once at the end of every change that published a view, after
    /// all of its views: see [`State::changes`].
    changes: watch::Sender<u64>,
    /// Whether the change under way has published a view yet.
    published: bool,
    /// Just started, after a previous process: registrations are still
    /// coming back, so outbound views say they are `incomplete`.
    warming: bool,
}

impl State {
    /// An empty mesh. Versions start at `first_version` (the process's
    /// start time in Unix milliseconds, so they grow across restarts);
    /// registrations are bounded by `quotas`.
    pub fn new(first_version: u64, registrations_gauge: Gauge, quotas: Quotas) -> Self {
        Self {
            inner: Mutex::new(Inner {
                mesh: Arc::default(),
                registrations: Table::new(quotas),
                discovered: BTreeMap::new(),
                virtual_addresses: BTreeMap::new(),
                pod_identities: BTreeMap::new(),
                resources: HashMap::new(),
                dependents: HashMap::new(),
                next_version: first_version,
                registrations_gauge,
                changes: watch::channel(0).0,
                published: false,
                warming: false,
            }),
        }
    }

    /// A receiver told once per change that published views (a file
    /// reload, a new or removed endpoint), when all of that change's views
    /// are published. Who relays views in bulk waits on this rather than on
    /// each view's channel, so a change that touches many views reaches
    /// them together.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.lock().changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state as consistent as
        // the step that panicked did; serving it beats serving nothing.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks outbound views `incomplete` while the sidecars of a previous
    /// process register again; [`State::warmed_up`] ends it.
    pub fn warming_up(&self) {
        let mut inner = self.lock();
        inner.warming = true;
        inner.refresh_all(Kind::Outbound);
        inner.end_change();
    }

    /// Every sidecar had the time to register again: outbound views are
    /// complete, and published anew so that proxies drop what they kept.
    pub fn warmed_up(&self) {
        let mut inner = self.lock();
        inner.warming = false;
        inner.refresh_all(Kind::Outbound);
        inner.end_change();
    }

    /// Replaces the mesh from the file; the number of views that changed.
    pub fn set_mesh(&self, mesh: Arc<Mesh>) -> usize {
        let mut inner = self.lock();
        inner.dependents = dependents(&mesh);
        inner.mesh = mesh;
        let mut names: BTreeSet<String> = inner.mesh.services.keys().cloned().collect();
        names.extend(inner.registrations.service_names());
        names.extend(inner.discovered.keys().cloned());
        names.extend(inner.resources.keys().map(|(_, name)| name.clone()));
        let mut changed = 0;
        for name in &names {
            changed += inner.refresh(Kind::Outbound, name) as usize;
            changed += inner.refresh(Kind::Inbound, name) as usize;
        }
        inner.end_change();
        changed
    }

    /// Registers or renews an endpoint for `registrant`; what the `PUT`
    /// did, or the quota a new endpoint would pass.
    pub fn register(
        &self,
        registrant: &Registrant,
        service: &str,
        instance: &str,
        reg: &Registration,
        now: Instant,
    ) -> Result<Put, OverQuota> {
        let mut inner = self.lock();
        let put = inner
            .registrations
            .put(registrant, service, instance, reg, now)?;
        inner.count_registrations();
        if put != Put::Renewed {
            inner.endpoints_changed(service);
            inner.end_change();
        }
        Ok(put)
    }

    /// Replaces the addresses that stand for services as a whole: only the
    /// listing shows them, so no view changes.
    pub fn set_virtual_addresses(&self, addresses: BTreeMap<String, BTreeSet<SocketAddr>>) {
        self.lock().virtual_addresses = addresses;
    }

    /// Replaces the identities of each Kubernetes service's pods: only the
    /// checks of registrations read them.
    pub fn set_pod_identities(&self, pod_identities: BTreeMap<String, BTreeSet<SpiffeId>>) {
        self.lock().pod_identities = pod_identities;
    }

    /// Replaces everything the discovery source found: each service it
    /// knows, with its endpoints (none when none is ready). Only the views
    /// of the services whose endpoints changed are published; the number
    /// of such services.
    pub fn set_discovered(&self, services: BTreeMap<String, Vec<Discovered>>) -> usize {
        let mut inner = self.lock();
        let changed: Vec<String> = services
            .iter()
            .filter(|(name, endpoints)| inner.discovered.get(*name) != Some(*endpoints))
            .map(|(name, _)| name.clone())
            .chain(
                inner
                    .discovered
                    .keys()
                    .filter(|name| !services.contains_key(*name))
                    .cloned(),
            )
            .collect();
        inner.discovered = services;
        for name in &changed {
            inner.endpoints_changed(name);
        }
        inner.end_change();
        changed.len()
    }

    /// Removes an endpoint; whether it was registered.
    pub fn deregister(&self, service: &str, instance: &str) -> bool {
        let mut inner = self.lock();
        let removed = inner.registrations.remove(service, instance);
        if removed {
            inner.count_registrations();
            inner.endpoints_changed(service);
            inner.end_change();
        }
        removed
    }

    /// Removes the registrations expired by `now`; which they were.
    pub fn expire(&self, now: Instant) -> Vec<(String, String)> {
        let mut inner = self.lock();
        let expired = inner.registrations.expire(now);
        if !expired.is_empty() {
            inner.count_registrations();
            let services: BTreeSet<&str> = expired.iter().map(|(s, _)| s.as_str()).collect();
            for service in services {
                inner.endpoints_changed(service);
            }
            inner.end_change();
        }
        expired
    }

    /// A receiver of `kind/service`, its current value marked seen. A
    /// service that does not exist gets a channel too, so that its watchers
    /// wake when it appears.
    pub fn watch(&self, kind: Kind, service: &str) -> watch::Receiver<Published> {
        let mut inner = self.lock();
        let key = (kind, service.to_string());
        inner
            .resources
            .entry(key)
            .or_insert_with(Resource::absent)
            .tx
            .subscribe()
    }

    /// Who may register endpoints of `service`: the identity `mesh.yaml`
    /// gives it; else, for a service Kubernetes knows, its pods' service
    /// accounts; else any identity of the mesh.
    pub fn registrants(&self, service: &str) -> Registrants {
        let inner = self.lock();
        let declared = inner.mesh.services.get(service).and_then(|s| {
            let name = s.identity.as_deref()?;
            SpiffeId::resolve(name, &inner.mesh.trust_domain).ok()
        });
        match (declared, inner.pod_identities.get(service)) {
            (Some(identity), _) => Registrants::Declared(identity),
            (None, Some(pods)) => Registrants::Pods(pods.clone()),
            (None, None) => Registrants::Anyone,
        }
    }

    /// What `kind/service` holds now.
    pub fn current(&self, kind: Kind, service: &str) -> Published {
        let inner = self.lock();
        inner
            .resources
            .get(&(kind, service.to_string()))
            .map_or_else(Published::absent, |r| r.tx.borrow().clone())
    }

    /// Drops the channels of services that do not exist and that nobody
    /// watches any more.
    pub fn prune_unwatched(&self) {
        let mut inner = self.lock();
        inner
            .resources
            .retain(|_, r| r.view.is_some() || r.tx.receiver_count() > 0);
    }

    /// Every service with its outbound version and endpoints.
    pub fn listing(&self, now: Instant) -> ServicesListing {
        let inner = self.lock();
        let mut names: BTreeSet<&str> = inner.mesh.services.keys().map(String::as_str).collect();
        names.extend(inner.registrations.services());
        names.extend(inner.discovered.keys().map(String::as_str));
        let services = names
            .into_iter()
            .map(|name| {
                let from_file = inner.mesh.services.get(name);
                let identity = from_file.and_then(|s| s.identity.clone());
                let mut endpoints: Vec<EndpointStatus> = from_file
                    .map(|s| s.endpoints.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|e| EndpointStatus {
                        address: e.address,
                        identity: e.identity.clone(),
                        labels: e.labels.clone(),
                        app_port: e.app_port,
                        source: EndpointSource::File,
                        instance: None,
                        health: EndpointHealth::Static,
                        expires_in_seconds: None,
                    })
                    .collect();
                for d in inner.discovered.get(name).into_iter().flatten() {
                    endpoints.push(EndpointStatus {
                        address: d.address,
                        identity: d.identity.as_ref().map(|id| id.as_str().to_string()),
                        labels: d.labels.clone(),
                        app_port: d.app_port,
                        source: EndpointSource::Kubernetes,
                        instance: d.instance.clone(),
                        health: EndpointHealth::Ready,
                        expires_in_seconds: None,
                    });
                }
                for (instance, r) in inner.registrations.of(name).into_iter().flatten() {
                    endpoints.push(EndpointStatus {
                        address: r.address,
                        identity: identity.clone(),
                        labels: r.labels.clone(),
                        app_port: r.app_port,
                        source: EndpointSource::Registration,
                        instance: Some(instance.clone()),
                        health: EndpointHealth::Alive,
                        expires_in_seconds: Some(
                            r.expires_at.saturating_duration_since(now).as_secs_f64(),
                        ),
                    });
                }
                let version = inner
                    .resources
                    .get(&(Kind::Outbound, name.to_string()))
                    .map_or(0, |r| r.tx.borrow().version);
                let status = ServiceStatus {
                    version,
                    in_config: from_file.is_some(),
                    endpoints,
                    virtual_addresses: inner
                        .virtual_addresses
                        .get(name)
                        .map(|addresses| addresses.iter().copied().collect())
                        .unwrap_or_default(),
                };
                (name.to_string(), status)
            })
            .collect();
        ServicesListing { services }
    }
}

impl Inner {
    /// Recomputes every view of `kind` there is.
    fn refresh_all(&mut self, kind: Kind) {
        let names: Vec<String> = self
            .resources
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, name)| name.clone())
            .collect();
        for name in names {
            self.refresh(kind, &name);
        }
    }

    /// Tells [`State::changes`]'s receivers, if the change published a view.
    fn end_change(&mut self) {
        if std::mem::take(&mut self.published) {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn count_registrations(&self) {
        self.registrations_gauge
            .set(i64::try_from(self.registrations.len()).unwrap_or(i64::MAX));
    }

    /// `service`'s endpoints changed: its own views, and the outbound
    /// views that include it.
    fn endpoints_changed(&mut self, service: &str) {
        self.refresh(Kind::Outbound, service);
        // Its inbound view changes only when the service appears or
        // disappears, which a refresh tells apart cheaply.
        self.refresh(Kind::Inbound, service);
        let dependents: Vec<String> = self
            .dependents
            .get(service)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for name in dependents {
            self.refresh(Kind::Outbound, &name);
        }
    }

    /// The service as the file defines it, or with every default when only
    /// registrations or the discovery source name it; `None` when none does.
    fn settings(&self, name: &str) -> Option<Service> {
        match self.mesh.services.get(name) {
            Some(s) => Some(s.clone()),
            None => (self.registrations.of(name).is_some() || self.discovered.contains_key(name))
                .then(Service::default),
        }
    }

    /// The service as its callers see it: its discovered endpoints, then
    /// its registered ones, after its static ones (an address already
    /// listed is left out: the file's entry wins, then the discovered one,
    /// which every replica of the control plane sees alike), and without
    /// its `inbound` block, which only its own sidecars read, from its
    /// inbound view; so a policy change wakes none of its callers.
    fn for_callers(&self, name: &str) -> Option<Service> {
        let mut service = self.settings(name)?;
        service.inbound = None;
        let mut seen: HashSet<_> = service.endpoints.iter().map(|e| e.address).collect();
        for d in self.discovered.get(name).into_iter().flatten() {
            if seen.insert(d.address) {
                service.endpoints.push(Endpoint {
                    address: d.address,
                    identity: d.identity.as_ref().map(|id| id.as_str().to_string()),
                    labels: d.labels.clone(),
                    app_port: d.app_port,
                });
            }
        }
        if let Some(registered) = self.registrations.of(name) {
            for r in registered.values() {
                if seen.insert(r.address) {
                    service.endpoints.push(Endpoint {
                        address: r.address,
                        identity: service.identity.clone(),
                        labels: r.labels.clone(),
                        app_port: r.app_port,
                    });
                }
            }
        }
        Some(service)
    }

    fn compute(&self, kind: Kind, name: &str) -> Option<View> {
        let trust_domain = self.mesh.trust_domain.clone();
        match kind {
            Kind::Outbound => {
                let own = self.for_callers(name)?;
                let mut services = BTreeMap::new();
                for route in &own.routes {
                    for target in route.split.iter().filter_map(|s| s.service.as_deref()) {
                        if target != name && !services.contains_key(target) {
                            if let Some(svc) = self.for_callers(target) {
                                services.insert(target.to_string(), svc);
                            }
                        }
                    }
                }
                services.insert(name.to_string(), own);
                Some(View::Outbound(OutboundView {
                    service: name.to_string(),
                    version: 0,
                    trust_domain,
                    services,
                    incomplete: self.warming,
                }))
            }
            Kind::Inbound => {
                let svc = self.settings(name)?;
                Some(View::Inbound(InboundView {
                    service: name.to_string(),
                    version: 0,
                    trust_domain,
                    identity: svc.identity,
                    protocol: svc.protocol,
                    policy: svc.inbound.unwrap_or_default(),
                }))
            }
        }
    }

    /// Recomputes `kind/name` and publishes it if its content changed;
    /// whether it did.
    fn refresh(&mut self, kind: Kind, name: &str) -> bool {
        let computed = self.compute(kind, name);
        let key = (kind, name.to_string());
        let unchanged = match (
            self.resources.get(&key).and_then(|r| r.view.as_ref()),
            &computed,
        ) {
            (Some(old), Some(new)) => old.same_content(new),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return false;
        }
        let resource = self.resources.entry(key).or_insert_with(Resource::absent);
        let published = match computed {
            Some(mut view) => {
                let version = self.next_version;
                view.set_version(version);
                let body = match view.to_json() {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        tracing::error!(resource = %format!("{}/{name}", kind.as_str()), error = %e, "cannot serialize a view; keeping the last one");
                        return false;
                    }
                };
                self.next_version += 1;
                resource.view = Some(view);
                Published {
                    version,
                    body: Some(body),
                    at: Instant::now(),
                }
            }
            None => {
                resource.view = None;
                Published::absent()
            }
        };
        resource.tx.send_replace(published);
        self.published = true;
        true
    }
}

/// Service → the services that split traffic to it.
fn dependents(mesh: &Mesh) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (name, svc) in &mesh.services {
        for split in svc.routes.iter().flat_map(|r| &r.split) {
            if let Some(target) = &split.service {
                if target != name {
                    out.entry(target.clone()).or_default().insert(name.clone());
                }
            }
        }
    }
    out
}
