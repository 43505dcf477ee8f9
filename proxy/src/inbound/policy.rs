//! The service's own inbound policy, from its `inbound:` block: whether
//! plaintext callers are served (`mtls`), who may call (`allow`), and the
//! rate limit, a token bucket per sidecar (GCRA, from `governor`).

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use remora_api::{InboundPolicy, MtlsMode, RateLimit, SpiffeId};

#[derive(Default)]
pub struct Policy {
    mtls: MtlsMode,
    /// The identities that may call, resolved; `None`: any.
    allow: Option<Vec<SpiffeId>>,
    /// The allow list as the config writes it, for the refusal's message.
    allow_text: String,
    rate_limit: Option<Arc<Limiter>>,
}

/// Why a caller is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Denied {
    /// The caller's identity, or `an unauthenticated caller`.
    pub caller: String,
    /// The rule that refused it.
    pub rule: String,
}

struct Limiter {
    config: RateLimit,
    bucket: DefaultDirectRateLimiter,
}

impl Policy {
    /// The policy for the service's `inbound:` block. A limit that did not
    /// change keeps its bucket, so a reload neither refills nor empties it.
    /// Identities in the allow list are resolved in `trust_domain`.
    pub fn of(inbound: Option<&InboundPolicy>, trust_domain: &str, previous: &Policy) -> Policy {
        let config = inbound.and_then(|i| i.rate_limit);
        let rate_limit = config.and_then(|config| match &previous.rate_limit {
            Some(p) if p.config == config => Some(p.clone()),
            _ => Limiter::new(config).map(Arc::new),
        });
        let allowed = inbound.and_then(|i| i.allow.as_ref());
        Policy {
            mtls: inbound.map(|i| i.mtls).unwrap_or_default(),
            // The config was validated: every name resolves.
            allow: allowed.map(|names| {
                names
                    .iter()
                    .filter_map(|n| SpiffeId::resolve(n, trust_domain).ok())
                    .collect()
            }),
            allow_text: allowed.map(|n| n.join(", ")).unwrap_or_default(),
            rate_limit,
        }
    }

    /// Whether a caller without a certificate is served at all.
    pub fn allows_plaintext(&self) -> bool {
        self.mtls == MtlsMode::Permissive
    }

    /// Whether `caller` (its certificate's identity, if it has one) may
    /// call.
    pub fn authorize(&self, caller: Option<&SpiffeId>) -> Result<(), Denied> {
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        match caller {
            Some(id) if allow.contains(id) => Ok(()),
            _ => Err(Denied {
                caller: caller.map_or_else(
                    || "an unauthenticated caller".to_string(),
                    ToString::to_string,
                ),
                rule: if allow.is_empty() {
                    "inbound.allow is empty: no one may".to_string()
                } else {
                    format!("inbound.allow is [{}]", self.allow_text)
                },
            }),
        }
    }

    /// Takes a token; false when the bucket is empty.
    pub fn admit(&self) -> bool {
        self.rate_limit
            .as_ref()
            .is_none_or(|l| l.bucket.check().is_ok())
    }
}

impl Limiter {
    fn new(config: RateLimit) -> Option<Self> {
        let rate = NonZeroU32::new(config.requests_per_second)?;
        let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            config,
            bucket: RateLimiter::direct(quota),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: u32, burst: u32) -> InboundPolicy {
        InboundPolicy {
            rate_limit: Some(RateLimit {
                requests_per_second: rps,
                burst: Some(burst),
            }),
            ..InboundPolicy::default()
        }
    }

    #[test]
    fn the_burst_passes_and_then_the_bucket_is_empty() {
        let p = Policy::of(Some(&limit(1, 3)), "cluster.local", &Policy::default());
        assert_eq!((0..5).filter(|_| p.admit()).count(), 3);
    }

    #[test]
    fn an_unchanged_limit_keeps_its_bucket_across_reloads() {
        let p = Policy::of(Some(&limit(1, 2)), "cluster.local", &Policy::default());
        assert!(p.admit() && p.admit() && !p.admit());
        let same = Policy::of(Some(&limit(1, 2)), "cluster.local", &p);
        assert!(!same.admit(), "a reload must not refill the bucket");
        let changed = Policy::of(Some(&limit(1, 5)), "cluster.local", &p);
        assert!(changed.admit(), "a new limit starts with a full bucket");
    }

    #[test]
    fn the_allow_list_admits_only_whom_it_names() {
        let inbound = InboundPolicy {
            allow: Some(vec![
                "frontend".into(),
                "spiffe://cluster.local/job/batch".into(),
            ]),
            ..InboundPolicy::default()
        };
        let p = Policy::of(Some(&inbound), "cluster.local", &Policy::default());
        let id = |n: &str| SpiffeId::resolve(n, "cluster.local").unwrap();
        assert_eq!(p.authorize(Some(&id("frontend"))), Ok(()));
        assert_eq!(
            p.authorize(Some(&id("spiffe://cluster.local/job/batch"))),
            Ok(())
        );
        let denied = p.authorize(Some(&id("intruder"))).unwrap_err();
        assert_eq!(
            denied.caller,
            "spiffe://cluster.local/ns/default/sa/intruder"
        );
        assert_eq!(
            denied.rule,
            "inbound.allow is [frontend, spiffe://cluster.local/job/batch]"
        );
        assert_eq!(
            p.authorize(None).unwrap_err().caller,
            "an unauthenticated caller"
        );
        // No list: anyone the handshake let in.
        let open = Policy::of(None, "cluster.local", &Policy::default());
        assert!(open.authorize(None).is_ok() && !open.allows_plaintext());
        let empty = InboundPolicy {
            allow: Some(vec![]),
            ..InboundPolicy::default()
        };
        let closed = Policy::of(Some(&empty), "cluster.local", &Policy::default());
        assert!(closed
            .authorize(Some(&id("frontend")))
            .unwrap_err()
            .rule
            .contains("empty"));
    }

    #[test]
    fn no_limit_admits_everything() {
        let p = Policy::of(None, "cluster.local", &Policy::default());
        assert!((0..100).all(|_| p.admit()));
    }
}
