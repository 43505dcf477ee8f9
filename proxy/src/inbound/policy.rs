//! The service's own inbound policy, from its `inbound:` block: for now the
//! rate limit, a token bucket per sidecar (GCRA, from `governor`). The mTLS
//! mode and the allow list need identities and take effect with them.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use remora_api::{InboundPolicy, RateLimit};

#[derive(Default)]
pub struct Policy {
    rate_limit: Option<Arc<Limiter>>,
}

struct Limiter {
    config: RateLimit,
    bucket: DefaultDirectRateLimiter,
}

impl Policy {
    /// The policy for the service's `inbound:` block. A limit that did not
    /// change keeps its bucket, so a reload neither refills nor empties it.
    pub fn of(inbound: Option<&InboundPolicy>, previous: &Policy) -> Policy {
        let config = inbound.and_then(|i| i.rate_limit);
        let rate_limit = config.and_then(|config| match &previous.rate_limit {
            Some(p) if p.config == config => Some(p.clone()),
            _ => Limiter::new(config).map(Arc::new),
        });
        Policy { rate_limit }
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
        let p = Policy::of(Some(&limit(1, 3)), &Policy::default());
        assert_eq!((0..5).filter(|_| p.admit()).count(), 3);
    }

    #[test]
    fn an_unchanged_limit_keeps_its_bucket_across_reloads() {
        let p = Policy::of(Some(&limit(1, 2)), &Policy::default());
        assert!(p.admit() && p.admit() && !p.admit());
        let same = Policy::of(Some(&limit(1, 2)), &p);
        assert!(!same.admit(), "a reload must not refill the bucket");
        let changed = Policy::of(Some(&limit(1, 5)), &p);
        assert!(changed.admit(), "a new limit starts with a full bucket");
    }

    #[test]
    fn no_limit_admits_everything() {
        let p = Policy::of(None, &Policy::default());
        assert!((0..100).all(|_| p.admit()));
    }
}
