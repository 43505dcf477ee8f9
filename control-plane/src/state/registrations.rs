//! The registration table inside the state: each service's registered
//! instances with their addresses, labels and expiry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use remora_api::protocol::Registration;

/// One registered endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub ttl: Duration,
    pub expires_at: Instant,
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
    count: usize,
    /// No registration expires before this; a sweep before it has nothing
    /// to do.
    next_expiry: Option<Instant>,
}

impl Table {
    /// Registers or renews `instance` of `service`.
    pub fn put(&mut self, service: &str, instance: &str, reg: &Registration, now: Instant) -> Put {
        let ttl = Duration::from_secs(reg.ttl_seconds);
        let expires_at = now + ttl;
        self.next_expiry = Some(self.next_expiry.map_or(expires_at, |t| t.min(expires_at)));
        let instances = self.services.entry(service.to_string()).or_default();
        let fresh = Registered {
            address: reg.address,
            labels: reg.labels.clone(),
            ttl,
            expires_at,
        };
        match instances.insert(instance.to_string(), fresh) {
            None => {
                self.count += 1;
                Put::New
            }
            Some(old) if old.address == reg.address && old.labels == reg.labels => Put::Renewed,
            Some(_) => Put::Changed,
        }
    }

    /// Removes `instance` of `service`; whether it was there.
    pub fn remove(&mut self, service: &str, instance: &str) -> bool {
        let Some(instances) = self.services.get_mut(service) else {
            return false;
        };
        let removed = instances.remove(instance).is_some();
        if instances.is_empty() {
            self.services.remove(service);
        }
        if removed {
            self.count -= 1;
        }
        removed
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(address: &str, version: &str, ttl_seconds: u64) -> Registration {
        Registration {
            address: address.parse().unwrap(),
            labels: [("version".to_string(), version.to_string())].into(),
            ttl_seconds,
        }
    }

    #[test]
    fn a_put_says_whether_anything_but_the_lifetime_changed() {
        let mut t = Table::default();
        let now = Instant::now();
        assert_eq!(
            t.put("a", "i1", &reg("127.0.0.1:1", "v1", 30), now),
            Put::New
        );
        assert_eq!(
            t.put("a", "i1", &reg("127.0.0.1:1", "v1", 30), now),
            Put::Renewed
        );
        assert_eq!(
            t.put("a", "i1", &reg("127.0.0.1:1", "v2", 30), now),
            Put::Changed
        );
        assert_eq!(
            t.put("a", "i1", &reg("127.0.0.1:2", "v2", 30), now),
            Put::Changed
        );
        assert_eq!(
            t.put("a", "i2", &reg("127.0.0.1:3", "v2", 30), now),
            Put::New
        );
        assert_eq!(t.len(), 2);
        assert!(t.remove("a", "i1"));
        assert!(!t.remove("a", "i1"));
        assert!(t.remove("a", "i2"));
        assert_eq!(t.len(), 0);
        assert_eq!(t.services().count(), 0);
    }

    #[test]
    fn registrations_expire_after_their_ttl_unless_renewed() {
        let mut t = Table::default();
        let start = Instant::now();
        t.put("a", "short", &reg("127.0.0.1:1", "v1", 1), start);
        t.put("a", "long", &reg("127.0.0.1:2", "v1", 10), start);
        t.put("b", "renewed", &reg("127.0.0.1:3", "v1", 1), start);
        assert!(t.expire(start).is_empty());
        t.put(
            "b",
            "renewed",
            &reg("127.0.0.1:3", "v1", 1),
            start + Duration::from_millis(900),
        );
        let expired = t.expire(start + Duration::from_secs(1));
        assert_eq!(expired, vec![("a".to_string(), "short".to_string())]);
        assert_eq!(t.len(), 2);
        let expired = t.expire(start + Duration::from_secs(2));
        assert_eq!(expired, vec![("b".to_string(), "renewed".to_string())]);
        assert_eq!(t.service_names(), BTreeSet::from(["a".to_string()]));
        assert!(t.expire(start + Duration::from_secs(5)).is_empty());
        assert_eq!(t.expire(start + Duration::from_secs(10)).len(), 1);
        assert_eq!(t.len(), 0);
    }
}
