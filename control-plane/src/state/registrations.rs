//! The registration table inside the state: each service's registered
//! instances with their addresses, labels, expiry and registrant, and the
//! quotas that bound how much one registrant can add.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroUsize};
use std::time::{Duration, Instant};

use remora_api::protocol::Registration;
use remora_api::SpiffeId;

/// The most instances one service may have registered at once. Every
/// proxy that calls the service receives all of them in its view and
/// balances over them, so this bounds a view's size. Kubernetes stops at
/// the same number: an `Endpoints` object keeps at most 1,000 addresses
/// (it is marked `over-capacity` past them), and a service that needs more
/// is rarely served by one flat list.
pub const DEFAULT_MAX_INSTANCES_PER_SERVICE: NonZeroUsize = NonZeroUsize::new(1000).unwrap();
/// The most services one registrant may have instances of at once. A
/// sidecar registers one service, and an identity is normally one
/// workload's service account, so a fleet needs a handful at most; 100
/// leaves room for a service account shared by many deployments (or, with
/// identity off, for many sidecars behind one address) while stopping a
/// runaway client from inventing services without end.
pub const DEFAULT_MAX_SERVICES_PER_IDENTITY: NonZeroUsize = NonZeroUsize::new(100).unwrap();

/// How much registrants may add. A `PUT` of an instance already registered
/// adds nothing and is never refused by a quota, so renewals go on at the
/// cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Registered instances per service, whoever registered them.
    pub instances_per_service: NonZeroUsize,
    /// Services one registrant has registered instances of.
    pub services_per_registrant: NonZeroUsize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            instances_per_service: DEFAULT_MAX_INSTANCES_PER_SERVICE,
            services_per_registrant: DEFAULT_MAX_SERVICES_PER_IDENTITY,
        }
    }
}

/// Who registered an endpoint, as the quotas count it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Registrant {
    /// The identity of the caller's client certificate.
    Identity(SpiffeId),
    /// With identity off, callers have no identity and are told apart by
    /// the IP address they connect from, as a rate limit keyed on the
    /// remote address would (Envoy's `remote_address`): in Kubernetes, one
    /// pod.
    Address(IpAddr),
}

impl fmt::Display for Registrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registrant::Identity(id) => write!(f, "{id}"),
            Registrant::Address(ip) => write!(f, "the caller at {ip}"),
        }
    }
}

/// A `PUT` refused because it would add more than a quota allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverQuota {
    #[error("{service} already has {limit} registered instances, the most allowed")]
    InstancesPerService { service: String, limit: usize },
    #[error("{registrant} already has instances of {limit} services registered, the most allowed")]
    ServicesPerRegistrant {
        registrant: Registrant,
        limit: usize,
    },
}

impl OverQuota {
    /// The limit that was reached.
    pub fn limit(&self) -> usize {
        match self {
            OverQuota::InstancesPerService { limit, .. }
            | OverQuota::ServicesPerRegistrant { limit, .. } => *limit,
        }
    }
}

/// One registered endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub app_port: Option<NonZeroU16>,
    pub ttl: Duration,
    pub expires_at: Instant,
    /// Who made (or last renewed) it.
    pub registrant: Registrant,
}

/// What a `PUT` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// A new instance.
    New,
    /// The instance's address or labels changed.
    Changed,
    /// Only its lifetime was extended: no view changes.
    Renewed,
}

/// Every live registration, by service, then by instance.
#[derive(Debug, Default)]
pub struct Table {
    services: BTreeMap<String, BTreeMap<String, Registered>>,
    /// Each registrant's services, with how many of their instances it
    /// registered: what the services quota counts.
    registrants: HashMap<Registrant, HashMap<String, usize>>,
    quotas: Quotas,
    count: usize,
    /// No registration expires before this; a sweep before it has nothing
    /// to do.
    next_expiry: Option<Instant>,
}

impl Table {
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            ..Self::default()
        }
    }

    /// Registers or renews `instance` of `service` for `registrant`;
    /// refused when a new instance would pass a quota.
    pub fn put(
        &mut self,
        registrant: &Registrant,
        service: &str,
        instance: &str,
        reg: &Registration,
        now: Instant,
    ) -> Result<Put, OverQuota> {
        let known = self
            .services
            .get(service)
            .is_some_and(|instances| instances.contains_key(instance));
        if !known {
            self.admit(registrant, service)?;
        }
        let ttl = Duration::from_secs(reg.ttl_seconds);
        let expires_at = now + ttl;
        self.next_expiry = Some(self.next_expiry.map_or(expires_at, |t| t.min(expires_at)));
        let instances = self.services.entry(service.to_string()).or_default();
        let fresh = Registered {
            address: reg.address,
            labels: reg.labels.clone(),
            app_port: reg.app_port,
            ttl,
            expires_at,
            registrant: registrant.clone(),
        };
        let Some(old) = instances.insert(instance.to_string(), fresh) else {
            self.count += 1;
            hold(&mut self.registrants, registrant, service);
            return Ok(Put::New);
        };
        if &old.registrant != registrant {
            // Someone else renews it (with identity off, the sidecar now
            // connects from another address): it counts as theirs now.
            release(&mut self.registrants, &old.registrant, service);
            hold(&mut self.registrants, registrant, service);
        }
        if old.address == reg.address && old.labels == reg.labels && old.app_port == reg.app_port {
            Ok(Put::Renewed)
        } else {
            Ok(Put::Changed)
        }
    }

    /// Whether `registrant` may add an instance to `service`.
    fn admit(&self, registrant: &Registrant, service: &str) -> Result<(), OverQuota> {
        let limit = self.quotas.instances_per_service.get();
        if self.services.get(service).map_or(0, BTreeMap::len) >= limit {
            return Err(OverQuota::InstancesPerService {
                service: service.to_string(),
                limit,
            });
        }
        let limit = self.quotas.services_per_registrant.get();
        let theirs = self.registrants.get(registrant);
        let new_service = !theirs.is_some_and(|services| services.contains_key(service));
        if new_service && theirs.map_or(0, HashMap::len) >= limit {
            return Err(OverQuota::ServicesPerRegistrant {
                registrant: registrant.clone(),
                limit,
            });
        }
        Ok(())
    }

    /// Removes `instance` of `service`; whether it was there.
    pub fn remove(&mut self, service: &str, instance: &str) -> bool {
        let Some(instances) = self.services.get_mut(service) else {
            return false;
        };
        let removed = instances.remove(instance);
        if instances.is_empty() {
            self.services.remove(service);
        }
        let Some(removed) = removed else {
            return false;
        };
        release(&mut self.registrants, &removed.registrant, service);
        self.count -= 1;
        true
    }

    /// Removes every registration that expired by `now`; the services and
    /// instances removed.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        if self.next_expiry.is_none_or(|t| t > now) {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (service, instances) in &mut self.services {
            instances.retain(|instance, r| {
                if r.expires_at <= now {
                    release(&mut self.registrants, &r.registrant, service);
                    expired.push((service.clone(), instance.clone()));
                    false
                } else {
                    next = Some(next.map_or(r.expires_at, |t| t.min(r.expires_at)));
                    true
                }
            });
        }
        self.services.retain(|_, instances| !instances.is_empty());
        self.count -= expired.len();
        self.next_expiry = next;
        expired
    }

    /// The live registrations of `service`, by instance.
    pub fn of(&self, service: &str) -> Option<&BTreeMap<String, Registered>> {
        self.services.get(service)
    }

    /// The services with at least one live registration.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// The names of `services()`, owned.
    pub fn service_names(&self) -> BTreeSet<String> {
        self.services.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.count
    }
}

/// Counts one more instance of `service` as `registrant`'s.
fn hold(
    registrants: &mut HashMap<Registrant, HashMap<String, usize>>,
    registrant: &Registrant,
    service: &str,
) {
    *registrants
        .entry(registrant.clone())
        .or_default()
        .entry(service.to_string())
        .or_default() += 1;
}

/// Counts one instance of `service` fewer as `registrant`'s, forgetting
/// what drops to none.
fn release(
    registrants: &mut HashMap<Registrant, HashMap<String, usize>>,
    registrant: &Registrant,
    service: &str,
) {
    let Some(services) = registrants.get_mut(registrant) else {
        return;
    };
    if let Some(n) = services.get_mut(service) {
        *n -= 1;
        if *n == 0 {
            services.remove(service);
        }
    }
    if services.is_empty() {
        registrants.remove(registrant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(address: &str, version: &str, ttl_seconds: u64) -> Registration {
        Registration {
            address: address.parse().unwrap(),
            labels: [("version".to_string(), version.to_string())].into(),
            app_port: None,
            ttl_seconds,
        }
    }

    fn at(ip: &str) -> Registrant {
        Registrant::Address(ip.parse().unwrap())
    }

    fn quotas(instances_per_service: usize, services_per_registrant: usize) -> Quotas {
        Quotas {
            instances_per_service: NonZeroUsize::new(instances_per_service).unwrap(),
            services_per_registrant: NonZeroUsize::new(services_per_registrant).unwrap(),
        }
    }

    #[test]
    fn a_put_says_whether_anything_but_the_lifetime_changed() {
        let mut t = Table::default();
        let (now, me) = (Instant::now(), at("10.0.0.1"));
        let mut put = |instance, address, version| {
            t.put(&me, "a", instance, &reg(address, version, 30), now)
                .unwrap()
        };
        assert_eq!(put("i1", "127.0.0.1:1", "v1"), Put::New);
        assert_eq!(put("i1", "127.0.0.1:1", "v1"), Put::Renewed);
        assert_eq!(put("i1", "127.0.0.1:1", "v2"), Put::Changed);
        assert_eq!(put("i1", "127.0.0.1:2", "v2"), Put::Changed);
        assert_eq!(put("i2", "127.0.0.1:3", "v2"), Put::New);
        assert_eq!(t.len(), 2);
        assert!(t.remove("a", "i1"));
        assert!(!t.remove("a", "i1"));
        assert!(t.remove("a", "i2"));
        assert_eq!(t.len(), 0);
        assert_eq!(t.services().count(), 0);
        assert!(t.registrants.is_empty());
    }

    #[test]
    fn registrations_expire_after_their_ttl_unless_renewed() {
        let mut t = Table::default();
        let (start, me) = (Instant::now(), at("10.0.0.1"));
        let mut put = |service, instance, address, ttl, now| {
            t.put(&me, service, instance, &reg(address, "v1", ttl), now)
                .unwrap();
        };
        put("a", "short", "127.0.0.1:1", 1, start);
        put("a", "long", "127.0.0.1:2", 10, start);
        put("b", "renewed", "127.0.0.1:3", 1, start);
        put(
            "b",
            "renewed",
            "127.0.0.1:3",
            1,
            start + Duration::from_millis(900),
        );
        assert!(t.expire(start).is_empty());
        let expired = t.expire(start + Duration::from_secs(1));
        assert_eq!(expired, vec![("a".to_string(), "short".to_string())]);
        assert_eq!(t.len(), 2);
        let expired = t.expire(start + Duration::from_secs(2));
        assert_eq!(expired, vec![("b".to_string(), "renewed".to_string())]);
        assert_eq!(t.service_names(), BTreeSet::from(["a".to_string()]));
        assert!(t.expire(start + Duration::from_secs(5)).is_empty());
        assert_eq!(t.expire(start + Duration::from_secs(10)).len(), 1);
        assert_eq!(t.len(), 0);
        assert!(t.registrants.is_empty());
    }

    #[test]
    fn a_service_takes_instances_up_to_its_quota_and_renewals_past_it() {
        let mut t = Table::new(quotas(2, 10));
        let now = Instant::now();
        let (one, two) = (at("10.0.0.1"), at("10.0.0.2"));
        let r = reg("127.0.0.1:1", "v1", 30);
        assert_eq!(t.put(&one, "a", "i1", &r, now), Ok(Put::New));
        assert_eq!(t.put(&two, "a", "i2", &r, now), Ok(Put::New));
        // The quota counts every registrant's instances of the service.
        let full = Err(OverQuota::InstancesPerService {
            service: "a".to_string(),
            limit: 2,
        });
        assert_eq!(t.put(&one, "a", "i3", &r, now), full);
        assert_eq!(t.put(&two, "a", "i3", &r, now), full);
        // At the cap, renewals and changes of what is registered go on,
        // by whoever makes them.
        assert_eq!(t.put(&one, "a", "i1", &r, now), Ok(Put::Renewed));
        let moved = reg("127.0.0.1:9", "v2", 30);
        assert_eq!(t.put(&one, "a", "i2", &moved, now), Ok(Put::Changed));
        // Other services are not held back by this one's.
        assert_eq!(t.put(&one, "b", "i1", &r, now), Ok(Put::New));
        // Room again once one leaves.
        assert!(t.remove("a", "i1"));
        assert_eq!(t.put(&two, "a", "i3", &r, now), Ok(Put::New));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_registrant_has_instances_of_at_most_its_quota_of_services() {
        let mut t = Table::new(quotas(10, 2));
        let now = Instant::now();
        let (one, two) = (at("10.0.0.1"), at("10.0.0.2"));
        let r = reg("127.0.0.1:1", "v1", 1);
        assert_eq!(t.put(&one, "a", "i1", &r, now), Ok(Put::New));
        assert_eq!(t.put(&one, "b", "i1", &r, now), Ok(Put::New));
        let full = Err(OverQuota::ServicesPerRegistrant {
            registrant: one.clone(),
            limit: 2,
        });
        assert_eq!(t.put(&one, "c", "i1", &r, now), full);
        // More instances of its services, renewals, and other registrants
        // are not held back.
        assert_eq!(t.put(&one, "a", "i2", &r, now), Ok(Put::New));
        assert_eq!(t.put(&one, "b", "i1", &r, now), Ok(Put::Renewed));
        assert_eq!(t.put(&two, "c", "i1", &r, now), Ok(Put::New));
        // A service counts until its registrant's last instance of it
        // leaves, by deregistration or expiry.
        assert!(t.remove("a", "i1"));
        assert_eq!(t.put(&one, "c", "i2", &r, now), full);
        assert!(t.remove("a", "i2"));
        assert_eq!(t.put(&one, "c", "i2", &r, now), Ok(Put::New));
        assert_eq!(t.put(&one, "d", "i1", &r, now), full);
        assert_eq!(t.expire(now + Duration::from_secs(1)).len(), 3);
        assert_eq!(t.put(&one, "d", "i1", &r, now), Ok(Put::New));
    }

    #[test]
    fn an_instance_renewed_by_another_registrant_counts_as_theirs() {
        let mut t = Table::new(quotas(10, 1));
        let now = Instant::now();
        let (one, two) = (at("10.0.0.1"), at("10.0.0.2"));
        let r = reg("127.0.0.1:1", "v1", 30);
        assert_eq!(t.put(&one, "a", "i1", &r, now), Ok(Put::New));
        // Never refused: it adds nothing.
        assert_eq!(t.put(&two, "a", "i1", &r, now), Ok(Put::Renewed));
        // `one` holds no service now; `two` holds `a`.
        assert_eq!(t.put(&one, "b", "i1", &r, now), Ok(Put::New));
        assert!(t.put(&two, "b", "i2", &r, now).is_err());
        assert!(t.remove("a", "i1"));
        assert_eq!(t.put(&two, "b", "i2", &r, now), Ok(Put::New));
    }

    #[test]
    fn registrants_read_as_their_identity_or_address() {
        let id = SpiffeId::resolve("orders", "cluster.local").unwrap();
        assert_eq!(
            Registrant::Identity(id).to_string(),
            "spiffe://cluster.local/ns/default/sa/orders"
        );
        assert_eq!(at("10.0.0.7").to_string(), "the caller at 10.0.0.7");
    }
}
