//! The Kubernetes source (`--kubernetes`): Services, EndpointSlices and
//! Pods watched through the API server (kube's watcher: list, then watch
//! from the list's resourceVersion, listing again after a `410 Gone`),
//! mapped into each mesh service's endpoints (see [`index`]) and given to
//! the state. Every replica of the control plane watches the same objects,
//! so every replica serves the same endpoints.
//!
//! One task per kind and namespace keeps the [`Index`] current; one more
//! maps it and publishes, after every batch of changes, once each kind
//! has been listed: until then the control plane is not ready.

pub mod index;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::NamespaceResourceScope;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::Api;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use self::index::{Index, ObjectKey, PodSummary, ServiceSummary, SliceSummary, Table};
use crate::metrics::{KubernetesEventLabels, KubernetesKindLabels, KubernetesMetrics};
use crate::state::State;

/// A kind the source watches: how an object is summarized, and where.
trait Watched:
    kube::Resource<Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + 'static
{
    type Summary: Send + 'static;
    /// The resource's plural, for logs.
    const PLURAL: &'static str;
    fn summarize(&self) -> Option<Self::Summary>;
    fn table(index: &mut Index) -> &mut Table<Self::Summary>;
}

impl Watched for Service {
    type Summary = ServiceSummary;
    const PLURAL: &'static str = "services";
    fn summarize(&self) -> Option<ServiceSummary> {
        ServiceSummary::of(self)
    }
    fn table(index: &mut Index) -> &mut Table<ServiceSummary> {
        &mut index.services
    }
}

impl Watched for EndpointSlice {
    type Summary = SliceSummary;
    const PLURAL: &'static str = "endpointslices";
    fn summarize(&self) -> Option<SliceSummary> {
        SliceSummary::of(self)
    }
    fn table(index: &mut Index) -> &mut Table<SliceSummary> {
        &mut index.slices
    }
}

impl Watched for Pod {
    type Summary = PodSummary;
    const PLURAL: &'static str = "pods";
    fn summarize(&self) -> Option<PodSummary> {
        PodSummary::of(self)
    }
    fn table(index: &mut Index) -> &mut Table<PodSummary> {
        &mut index.pods
    }
}

/// What the watching tasks share with the publisher.
struct Shared {
    index: Mutex<Watching>,
    /// Told after every change of the index; the publisher coalesces.
    changed: Notify,
    metrics: KubernetesMetrics,
}

struct Watching {
    index: Index,
    /// Watches (kind × namespace) whose first list is not in yet.
    unlisted: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Watching> {
        // A panic in a step leaves the index as that step left it; the next
        // list puts it right.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the index, then tells the publisher.
    fn change(&self, change: impl FnOnce(&mut Watching)) {
        change(&mut self.lock());
        self.changed.notify_one();
    }
}

/// Starts watching `namespaces` (none: every namespace) and feeding
/// `state`. The receiver turns `true` once every kind has been listed and
/// the endpoints published: the control plane is ready then.
pub fn start(
    client: kube::Client,
    namespaces: &[String],
    trust_domain: &str,
    state: Arc<State>,
    metrics: KubernetesMetrics,
) -> watch::Receiver<bool> {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let shared = Arc::new(Shared {
        index: Mutex::new(Watching {
            index: Index::default(),
            unlisted: 3 * scopes.len(),
        }),
        changed: Notify::new(),
        metrics,
    });
    for scope in &scopes {
        tokio::spawn(follow::<Service>(&client, scope, shared.clone()));
        tokio::spawn(follow::<EndpointSlice>(&client, scope, shared.clone()));
        tokio::spawn(follow::<Pod>(&client, scope, shared.clone()));
    }
    tracing::info!(
        namespaces = %scopes.iter().map(|s| s.as_deref().unwrap_or("*")).collect::<Vec<_>>().join(","),
        "kubernetes: watching services, endpointslices and pods"
    );
    let (synced, synced_rx) = watch::channel(false);
    tokio::spawn(publish(shared, trust_domain.to_string(), state, synced));
    synced_rx
}

/// Keeps the kind `K` of `namespace` (`None`: all) in the index, for as
/// long as the process runs; errors are retried with kube's backoff.
fn follow<K>(
    client: &kube::Client,
    namespace: &Option<String>,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    K: Watched,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let namespace = namespace.clone();
    async move {
        let scope = namespace.as_deref().unwrap_or("*");
        let mut events =
            std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
        let mut listing: Option<Vec<(ObjectKey, K::Summary)>> = None;
        let mut listed_once = false;
        let metrics = &shared.metrics;
        let count = |event| {
            metrics
                .events
                .get_or_create(&KubernetesEventLabels {
                    kind: K::PLURAL,
                    event,
                })
                .inc();
        };
        let objects = metrics
            .objects
            .get_or_create_owned(&KubernetesKindLabels { kind: K::PLURAL });
        let counted = |table: &Table<K::Summary>| {
            objects.set(i64::try_from(table.len()).unwrap_or(i64::MAX));
        };
        while let Some(event) = events.next().await {
            match event {
                // A list is buffered and replaces what was known at its
                // end, so that a relist never serves a half-listed kind.
                Ok(Event::Init) => listing = Some(Vec::new()),
                Ok(Event::InitApply(object)) => {
                    if let (Some(list), Some(summary)) = (&mut listing, object.summarize()) {
                        list.push((ObjectKey::of(&object), summary));
                    }
                }
                Ok(Event::InitDone) => {
                    count("listed");
                    let listed = listing.take().unwrap_or_default();
                    tracing::info!(
                        kind = K::PLURAL,
                        namespace = scope,
                        objects = listed.len(),
                        "kubernetes: listed"
                    );
                    let first = !std::mem::replace(&mut listed_once, true);
                    shared.change(|watching| {
                        let table = K::table(&mut watching.index);
                        table.replace(namespace.as_deref(), listed);
                        counted(table);
                        if first {
                            watching.unlisted -= 1;
                        }
                    });
                }
                Ok(Event::Apply(object)) => {
                    count("applied");
                    let (key, summary) = (ObjectKey::of(&object), object.summarize());
                    shared.change(|watching| {
                        let table = K::table(&mut watching.index);
                        table.apply(key, summary);
                        counted(table);
                    });
                }
                Ok(Event::Delete(object)) => {
                    count("deleted");
                    let key = ObjectKey::of(&object);
                    shared.change(|watching| {
                        let table = K::table(&mut watching.index);
                        table.delete(&key);
                        counted(table);
                    });
                }
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    count("expired");
                    tracing::info!(kind = K::PLURAL, namespace = scope, reason = %status.message, "kubernetes: the watch expired (410 Gone): listing again");
                }
                Err(e) => {
                    count("failed");
                    tracing::warn!(kind = K::PLURAL, namespace = scope, error = %e, "kubernetes: watch failed; retrying with backoff, the last view keeps serving");
                }
            }
        }
    }
}

/// Maps the index and gives the state what changed, after each batch of
/// changes, once every watch has listed.
async fn publish(
    shared: Arc<Shared>,
    trust_domain: String,
    state: Arc<State>,
    synced: watch::Sender<bool>,
) {
    let mut shared_names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    loop {
        shared.changed.notified().await;
        let mapped = {
            let watching = shared.lock();
            if watching.unlisted > 0 {
                continue;
            }
            watching.index.map(&trust_domain)
        };
        for (name, namespaces) in &mapped.shared_names {
            if shared_names.get(name) != Some(namespaces) {
                tracing::warn!(
                    service = %name,
                    namespaces = %namespaces.iter().cloned().collect::<Vec<_>>().join(","),
                    "kubernetes: Services of one name in several namespaces make one mesh service with the endpoints of all"
                );
            }
        }
        shared_names = mapped.shared_names;
        let services = mapped.services.len();
        state.set_virtual_addresses(mapped.virtual_addresses);
        state.set_pod_identities(mapped.pod_identities);
        let changed = state.set_discovered(mapped.services);
        if changed > 0 || !*synced.borrow() {
            tracing::info!(services, changed, "kubernetes: endpoints published");
        }
        synced.send_replace(true);
    }
}
