//! What the Kubernetes source keeps of the objects it watches (only the
//! fields the mapping reads) and the mapping itself: Services, their
//! EndpointSlices and the Pods behind them become each mesh service's
//! endpoints.
//!
//! The mapping, as docs/kubernetes.md tells it:
//! - every Service (but `ExternalName` ones) in a watched namespace is the
//!   mesh service of its name; a name used in two namespaces is one mesh
//!   service with the endpoints of both;
//! - its endpoints are the ready addresses of the EndpointSlices labelled
//!   `kubernetes.io/service-name: NAME`;
//! - an address whose pod has a sidecar (a container port named
//!   `remora-inbound`) is dialled at that port, over mutual TLS, and must
//!   prove the identity of the pod's service account; any other address is
//!   unmeshed, dialled in plaintext at the Service's first TCP port;
//! - an address of a pod not yet seen waits for it, so that it is never
//!   served as unmeshed for the moment its pod takes to arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use remora_api::load::is_valid_service_name;
use remora_api::SpiffeId;

use crate::state::Discovered;

/// The label by which an EndpointSlice names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The sidecar's container port, as `remora-control inject` names it: a
/// pod with it is meshed, and callers dial its number.
pub const INBOUND_PORT_NAME: &str = "remora-inbound";
/// A pod that names no service account runs as this one.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// An object's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn of<K: kube::Resource>(object: &K) -> ObjectKey {
        ObjectKey {
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Service: that it is a mesh service, and which port unmeshed
/// addresses are dialled at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSummary {
    /// The name of its first TCP port (`None`: unnamed, as a Service with
    /// one port may leave it), or no port at all.
    pub first_port: Option<Option<String>>,
    /// Its ClusterIPs at its first TCP port, the one the mesh serves; none
    /// for a headless Service.
    pub virtual_addresses: Vec<SocketAddr>,
}

impl ServiceSummary {
    /// `None` for an `ExternalName` Service, which has no endpoints to
    /// balance over: callers reach it as DNS says.
    pub fn of(service: &Service) -> Option<ServiceSummary> {
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return None;
        }
        let first = spec
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| is_tcp(p.protocol.as_deref())));
        let first_port = first.map(|p| named(p.name.as_deref()));
        let port_number = first.and_then(|p| u16::try_from(p.port).ok());
        // `clusterIPs` holds `clusterIP` first; `None` marks a headless one.
        let virtual_addresses = spec
            .and_then(|s| {
                s.cluster_ips
                    .clone()
                    .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| Some(SocketAddr::new(ip.parse().ok()?, port_number?)))
            .collect();
        Some(ServiceSummary {
            first_port,
            virtual_addresses,
        })
    }
}

/// An EndpointSlice of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSummary {
    /// The Service it belongs to, in its own namespace.
    pub service: String,
    /// Its TCP ports: name (`None` when unnamed) and number.
    pub ports: Vec<(Option<String>, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    /// The pod behind it, when its `targetRef` is one.
    pub pod: Option<ObjectKey>,
}

impl SliceSummary {
    /// `None` for a slice that names no Service.
    pub fn of(slice: &EndpointSlice) -> Option<SliceSummary> {
        let service = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
        let namespace = slice.namespace().unwrap_or_default();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| is_tcp(p.protocol.as_deref()))
            .filter_map(|p| {
                let number = u16::try_from(p.port?).ok().filter(|n| *n != 0)?;
                Some((named(p.name.as_deref()), number))
            })
            .collect();
        // FQDN slices name hosts, not addresses: nothing to dial directly.
        let by_address = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
        let endpoints = slice
            .endpoints
            .iter()
            .filter(|_| by_address)
            .map(|e| SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                // Kubernetes: an unknown readiness is to be taken as ready.
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some(ObjectKey {
                            namespace: r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                            name: r.name.clone()?,
                        })
                    }),
            })
            .collect();
        Some(SliceSummary {
            service,
            ports,
            endpoints,
        })
    }

    /// The port of the Service's `first_port` in this slice, else its first.
    fn port(&self, first_port: Option<&Option<String>>) -> Option<u16> {
        first_port
            .and_then(|name| self.ports.iter().find(|(n, _)| n == name))
            .or_else(|| self.ports.first())
            .map(|(_, number)| *number)
    }
}

/// A Pod: who it runs as, its labels, and its sidecar's inbound port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSummary {
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// The `remora-inbound` container port; `None`: no sidecar.
    pub inbound_port: Option<u16>,
}

impl PodSummary {
    pub fn of(pod: &Pod) -> Option<PodSummary> {
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string());
        // Native sidecars are init containers.
        let containers = spec.into_iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        });
        let inbound_port = containers
            .flat_map(|c: &Container| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(INBOUND_PORT_NAME) && is_tcp(p.protocol.as_deref()))
            .and_then(|p| u16::try_from(p.container_port).ok());
        Some(PodSummary {
            service_account,
            labels: pod.labels().clone(),
            inbound_port,
        })
    }
}

/// The objects of one kind, by namespace and name; ordered, so that every
/// replica maps them in the same order.
#[derive(Debug)]
pub struct Table<T> {
    items: BTreeMap<ObjectKey, T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
        }
    }
}

impl<T> Table<T> {
    /// An object added or changed; `None`: one of no interest (any more).
    pub fn apply(&mut self, key: ObjectKey, item: Option<T>) {
        match item {
            Some(item) => {
                self.items.insert(key, item);
            }
            None => {
                self.items.remove(&key);
            }
        }
    }

    pub fn delete(&mut self, key: &ObjectKey) {
        self.items.remove(key);
    }

    /// A complete list of `namespace` (`None`: of every namespace) replaces
    /// what was known of it: what the list lacks was deleted meanwhile.
    pub fn replace(&mut self, namespace: Option<&str>, listed: Vec<(ObjectKey, T)>) {
        self.items
            .retain(|key, _| namespace.is_some_and(|ns| key.namespace != ns));
        self.items.extend(listed);
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&T> {
        self.items.get(key)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Everything the source knows.
#[derive(Debug, Default)]
pub struct Index {
    pub services: Table<ServiceSummary>,
    pub slices: Table<SliceSummary>,
    pub pods: Table<PodSummary>,
}

/// The mesh as Kubernetes shows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mapped {
    /// Each mesh service with its endpoints, ordered by address.
    pub services: BTreeMap<String, Vec<Discovered>>,
    /// Names that Services of more than one namespace share: their
    /// endpoints are served together, which may not be what was meant.
    pub shared_names: BTreeMap<String, BTreeSet<String>>,
    /// Each mesh service's ClusterIPs, at the port the mesh serves.
    pub virtual_addresses: BTreeMap<String, BTreeSet<SocketAddr>>,
    /// Each mesh service's pods' identities, ready or not: who may
    /// register its endpoints.
    pub pod_identities: BTreeMap<String, BTreeSet<SpiffeId>>,
}

impl Index {
    /// Each mesh service and its endpoints, identities in `trust_domain`.
    pub fn map(&self, trust_domain: &str) -> Mapped {
        let mut services: BTreeMap<String, BTreeMap<SocketAddr, Discovered>> = BTreeMap::new();
        let mut namespaces: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut virtual_addresses: BTreeMap<String, BTreeSet<SocketAddr>> = BTreeMap::new();
        let mut pod_identities: BTreeMap<String, BTreeSet<SpiffeId>> = BTreeMap::new();
        for (key, service) in &self.services.items {
            if is_valid_service_name(&key.name) {
                services.entry(key.name.clone()).or_default();
                pod_identities.entry(key.name.clone()).or_default();
                if !service.virtual_addresses.is_empty() {
                    virtual_addresses
                        .entry(key.name.clone())
                        .or_default()
                        .extend(&service.virtual_addresses);
                }
                namespaces
                    .entry(key.name.clone())
                    .or_default()
                    .insert(key.namespace.clone());
            }
        }
        for (key, slice) in &self.slices.items {
            let service_key = ObjectKey {
                namespace: key.namespace.clone(),
                name: slice.service.clone(),
            };
            // A slice before its Service, or of an ExternalName one.
            let Some(service) = self.services.get(&service_key) else {
                continue;
            };
            let Some(endpoints) = services.get_mut(&slice.service) else {
                continue;
            };
            // A pod's sidecar registers before its pod is ready.
            let identities = slice.endpoints.iter().filter_map(|e| {
                let pod = e.pod.as_ref()?;
                self.identity(pod, trust_domain)
            });
            pod_identities
                .entry(slice.service.clone())
                .or_default()
                .extend(identities);
            let app_port = slice.port(service.first_port.as_ref());
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                let Some(found) = self.dialled(endpoint, app_port, trust_domain) else {
                    continue;
                };
                for ip in &endpoint.addresses {
                    let address = SocketAddr::new(*ip, found.port);
                    endpoints.entry(address).or_insert_with(|| Discovered {
                        address,
                        identity: found.identity.clone(),
                        labels: found.labels.clone(),
                        instance: found.instance.clone(),
                        app_port: found.app_port,
                    });
                }
            }
        }
        Mapped {
            services: services
                .into_iter()
                .map(|(name, endpoints)| (name, endpoints.into_values().collect()))
                .collect(),
            shared_names: namespaces
                .into_iter()
                .filter(|(_, namespaces)| namespaces.len() > 1)
                .collect(),
            virtual_addresses,
            pod_identities,
        }
    }

    /// The identity of the pod `key` runs as, once the pod is seen.
    fn identity(&self, key: &ObjectKey, trust_domain: &str) -> Option<SpiffeId> {
        let pod = self.pods.get(key)?;
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            key.namespace, pod.service_account
        )
        .parse()
        .ok()
    }

    /// How an endpoint is dialled, or `None` when it cannot be yet.
    fn dialled(
        &self,
        endpoint: &SliceEndpoint,
        app_port: Option<u16>,
        trust_domain: &str,
    ) -> Option<Dialled> {
        let Some(pod_key) = &endpoint.pod else {
            return Some(Dialled {
                port: app_port?,
                identity: None,
                labels: BTreeMap::new(),
                instance: None,
                app_port: None,
            });
        };
        // Not seen yet: it comes shortly, and with it how to dial it.
        let pod = self.pods.get(pod_key)?;
        let instance = Some(pod_key.to_string());
        match pod.inbound_port {
            Some(port) => {
                let identity = self.identity(pod_key, trust_domain)?;
                Some(Dialled {
                    port,
                    identity: Some(identity),
                    labels: pod.labels.clone(),
                    instance,
                    app_port: app_port.and_then(NonZeroU16::new),
                })
            }
            None => Some(Dialled {
                port: app_port?,
                identity: None,
                labels: pod.labels.clone(),
                instance,
                app_port: None,
            }),
        }
    }
}

struct Dialled {
    port: u16,
    identity: Option<SpiffeId>,
    labels: BTreeMap<String, String>,
    instance: Option<String>,
    /// Behind a sidecar at `port`: the app's, the slice's port.
    app_port: Option<NonZeroU16>,
}

/// Kubernetes' default protocol is TCP.
fn is_tcp(protocol: Option<&str>) -> bool {
    matches!(protocol, None | Some("TCP"))
}

/// A port's name; Kubernetes writes an unnamed one as `""`.
fn named(name: Option<&str>) -> Option<String> {
    name.filter(|n| !n.is_empty()).map(str::to_string)
}
