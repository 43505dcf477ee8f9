//! Exponential backoff with full jitter, the one of the workspace: each
//! wait is uniform in [0, min(max, base·2ⁿ)], so that a fleet of proxies
//! reconnecting, or many callers retrying, do not arrive in step.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// Counts one more failure; how long to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        let wait = self.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// After a success: the next failure waits as little as the first.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait after the `n`th failure in a row (from 0), for a caller
    /// that counts failures itself.
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_ceiling_and_resets() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(base, max);
        for n in 0..40 {
            let ceiling = base.saturating_mul(1 << n.min(20)).min(max);
            assert!(b.failed() <= ceiling, "failure {n}");
        }
        b.reset();
        assert!(b.failed() <= base);
    }

    #[test]
    fn waits_are_spread_not_fixed() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let waits: std::collections::HashSet<Duration> = (0..20).map(|_| b.delay(0)).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }
}
