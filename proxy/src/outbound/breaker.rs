//! The circuit breaker: `consecutive_failures` failed tries in a row eject
//! an endpoint from balancing for `base_ejection`, each repeat ejection
//! twice as long as the one before, and never more than a backend's
//! `max_ejected_percent` of endpoints at once. Each endpoint holds its
//! [`Breaker`]; each try feeds it (`attempt`), which logs and counts an
//! ejection in `remora_circuit_breaker_ejections_total`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use remora_api::CircuitBreaker;

/// Repeat ejections double up to this many times (64 × `base_ejection`).
const MAX_DOUBLINGS: u32 = 6;

/// One endpoint's breaker state. It lives with the endpoint, so across
/// config reloads while the endpoint's address stays.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Failures in a row, reset by a success without taking a lock.
    consecutive_failures: AtomicU32,
    /// When the current ejection ends, as nanoseconds since [`epoch`]; 0 = none.
    /// Read on every pick, so kept outside the lock.
    ejected_until: AtomicU64,
    /// Ejections so far, each lasting twice the one before.
    ejections: Mutex<u32>,
}

impl Breaker {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > nanos_since_epoch(now)
    }

    /// A success ends a run of failures.
    pub fn record_success(&self) {
        // The common case: a store, and only when there is something to reset.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure at `now`. Returns true when it ejected the endpoint:
    /// there is a `policy`, enough failures in a row, the endpoint is not
    /// ejected already, and the backend `may_eject` one more.
    pub fn record_failure(
        &self,
        policy: Option<&CircuitBreaker>,
        may_eject: bool,
        now: Instant,
    ) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(policy) = policy else { return false };
        if self.is_ejected(now) || !may_eject || failures < policy.consecutive_failures {
            return false;
        }
        let mut ejections = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_ejected(now) {
            return false; // another failure got here first
        }
        // Each repeat ejection lasts twice as long as the one before.
        let factor = 1u32 << (*ejections).min(MAX_DOUBLINGS);
        let until = now + policy.base_ejection.get() * factor;
        self.ejected_until
            .store(nanos_since_epoch(until).max(1), Ordering::Relaxed);
        *ejections += 1;
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }
}

/// Whether one more of a backend's endpoints, whose `breakers` these
/// are, may be ejected without passing `max_ejected_percent`; never
/// without a policy.
pub fn may_eject<'a>(
    policy: Option<&CircuitBreaker>,
    breakers: impl ExactSizeIterator<Item = &'a Breaker>,
    now: Instant,
) -> bool {
    let Some(policy) = policy else {
        return false;
    };
    let total = breakers.len();
    let ejected = breakers.filter(|b| b.is_ejected(now)).count();
    (ejected + 1) * 100 <= total * policy.max_ejected_percent as usize
}

/// The instant ejection deadlines count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch())
        .as_nanos()
        .min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use remora_api::HumanDuration;

    use super::*;

    const BASE: Duration = Duration::from_secs(10);

    fn policy(consecutive_failures: u32) -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures,
            base_ejection: HumanDuration(BASE),
            max_ejected_percent: 50,
            ..CircuitBreaker::default()
        }
    }

    /// Fails `n` times at `now`; whether the last failure ejected.
    fn fail(b: &Breaker, p: &CircuitBreaker, n: u32, now: Instant) -> bool {
        (0..n).fold(false, |_, _| b.record_failure(Some(p), true, now))
    }

    #[test]
    fn a_success_resets_the_run_of_failures() {
        let (b, p, now) = (Breaker::default(), policy(3), Instant::now());
        assert!(!fail(&b, &p, 2, now));
        b.record_success();
        assert!(!fail(&b, &p, 2, now));
        assert!(!b.is_ejected(now));
        assert!(fail(&b, &p, 1, now));
        assert!(b.is_ejected(now));
    }

    #[test]
    fn each_repeat_ejection_lasts_twice_as_long() {
        let (b, p) = (Breaker::default(), policy(1));
        let mut now = Instant::now();
        for doubling in 0..=MAX_DOUBLINGS + 1 {
            let lasts = BASE * (1 << doubling.min(MAX_DOUBLINGS));
            assert!(fail(&b, &p, 1, now), "ejection {doubling}");
            // An ejected endpoint is not ejected again.
            assert!(!fail(&b, &p, 1, now));
            assert!(b.is_ejected(now + lasts - Duration::from_millis(1)));
            now += lasts;
            assert!(!b.is_ejected(now), "ejection {doubling} is over");
        }
    }

    #[test]
    fn no_ejection_without_a_policy_or_when_the_backend_may_not() {
        let (b, now) = (Breaker::default(), Instant::now());
        for _ in 0..10 {
            assert!(!b.record_failure(None, true, now));
            assert!(!b.record_failure(Some(&policy(1)), false, now));
        }
        assert!(!b.is_ejected(now));
    }

    #[test]
    fn at_most_max_ejected_percent_of_a_backend() {
        let breakers: Vec<Breaker> = (0..4).map(|_| Breaker::default()).collect();
        let (p, now) = (policy(1), Instant::now());
        assert!(!may_eject(None, breakers.iter(), now));
        for b in &breakers[..2] {
            assert!(may_eject(Some(&p), breakers.iter(), now));
            assert!(fail(b, &p, 1, now));
        }
        assert!(
            !may_eject(Some(&p), breakers.iter(), now),
            "half are ejected"
        );
        assert!(may_eject(Some(&p), breakers.iter(), now + BASE));
    }
}
