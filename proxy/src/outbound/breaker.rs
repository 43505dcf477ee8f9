//! Failure accrual, on for every service unless it says `enabled: false`.
//! An endpoint leaves balancing when a connection to it cannot be made, or
//! after `consecutive_failures` failed tries in a row (within the backend's
//! `max_ejected_percent`). It stays out for `base_ejection`, then comes
//! back on probation: one request at a time (its probe) goes to it, and
//! the probe's failure ejects it again for twice as long (up to
//! `max_ejection`), its success restores it in full. Each
//! endpoint holds its [`Breaker`]; each try feeds it (`attempt`), which
//! logs and counts an ejection in `remora_circuit_breaker_ejections_total`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use remora_api::CircuitBreaker;

/// Repeat ejections double at most this many times before `max_ejection`
/// caps them anyway; it keeps the arithmetic from overflowing.
const MAX_DOUBLINGS: u32 = 16;
/// A probe that has reported nothing for this long (its caller gave up
/// and the try was dropped) no longer holds the endpoint's probation: the
/// next request may probe.
const PROBE_LOST: Duration = Duration::from_secs(10);

/// Where an endpoint stands with its breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// In balancing.
    Active,
    /// Out of balancing for this long yet.
    Ejected(Duration),
    /// Back in balancing after an ejection, one request at a time; one
    /// failure sends it out again.
    Probation,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Active => "active",
            BreakerState::Ejected(_) => "ejected",
            BreakerState::Probation => "probation",
        }
    }
}

/// Why a try failed, as far as the breaker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No connection could be made: the endpoint is gone or not listening.
    Unreachable,
    /// A 5xx, a broken connection, or a passed per-try timeout.
    Failed,
}

/// One endpoint's breaker state. It lives with the endpoint, so across
/// config reloads while the endpoint's address stays.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Failures in a row, reset by a success without taking a lock.
    consecutive_failures: AtomicU32,
    /// When the current or last ejection ends, as nanoseconds since
    /// [`epoch`]; 0 = none since the last success. A time in the past means
    /// probation. Read on every pick, so kept outside the lock.
    ejected_until: AtomicU64,
    /// Ejections since the last success, each lasting twice the one before.
    ejections: Mutex<u32>,
    /// The current ejection is for an unreachable endpoint: one that does
    /// not count against `max_ejected_percent`.
    unreachable: AtomicBool,
    /// When the probe of the current probation was sent, as nanoseconds
    /// since [`epoch`]; 0 = none yet.
    probe_sent: AtomicU64,
}

impl Breaker {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > nanos_since_epoch(now)
    }

    /// Whether a request may go to the endpoint now: always when active,
    /// never while ejected, and on probation only when no probe is out.
    /// Without it, every request that picked the endpoint before its probe
    /// failed would wait out the same failure.
    pub fn admits(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = nanos_since_epoch(now);
        if until > now {
            return false;
        }
        let probe = self.probe_sent.load(Ordering::Relaxed);
        probe == 0 || now.saturating_sub(probe) > PROBE_LOST.as_nanos() as u64
    }

    /// A request was sent to the endpoint: on probation, it is the probe.
    pub fn sent(&self, now: Instant) {
        if self.ejected_until.load(Ordering::Relaxed) != 0
            && self.state(now) == BreakerState::Probation
        {
            self.probe_sent
                .store(nanos_since_epoch(now).max(1), Ordering::Relaxed);
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => BreakerState::Active,
            until => match until.checked_sub(nanos_since_epoch(now)) {
                Some(left) if left > 0 => BreakerState::Ejected(Duration::from_nanos(left)),
                _ => BreakerState::Probation,
            },
        }
    }

    /// Ejected for failing, not for being unreachable.
    fn is_ejected_for_failures(&self, now: Instant) -> bool {
        self.is_ejected(now) && !self.unreachable.load(Ordering::Relaxed)
    }

    /// Failures in a row so far: what a balancer charges an endpoint for.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// A success ends a run of failures, and a probation.
    pub fn record_success(&self) {
        // The common case: two loads, and stores only when there is
        // something to reset.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.end_probation(Instant::now());
        }
    }

    /// Restores an endpoint on probation in full. A success while still
    /// ejected (of a try sent before the ejection) does not cut it short.
    fn end_probation(&self, now: Instant) {
        let mut ejections = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_ejected(now) {
            self.ejected_until.store(0, Ordering::Relaxed);
            self.probe_sent.store(0, Ordering::Relaxed);
            *ejections = 0;
        }
    }

    /// Counts a failure at `now`. Returns true when it ejected the endpoint.
    /// With a `policy`, an endpoint not ejected already is ejected when it
    /// is `Unreachable`, or, if the backend `may_eject` one more, when it
    /// is on probation or has failed `consecutive_failures` times in a row.
    pub fn record_failure(
        &self,
        policy: Option<&CircuitBreaker>,
        fault: Fault,
        may_eject: bool,
        now: Instant,
    ) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(policy) = policy else { return false };
        let state = self.state(now);
        let eject = match state {
            BreakerState::Ejected(_) => false,
            // Nothing is served by keeping an address that refuses
            // connections; should every endpoint be out, balancing still
            // falls back to one.
            _ if fault == Fault::Unreachable => true,
            BreakerState::Probation => may_eject,
            BreakerState::Active => may_eject && failures >= policy.consecutive_failures,
        };
        if !eject {
            return false;
        }
        let mut ejections = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_ejected(now) {
            return false; // another failure got here first
        }
        self.unreachable
            .store(fault == Fault::Unreachable, Ordering::Relaxed);
        let factor = 1u32 << (*ejections).min(MAX_DOUBLINGS);
        let lasts = (policy.base_ejection.get() * factor).min(policy.max_ejection.get());
        self.ejected_until
            .store(nanos_since_epoch(now + lasts).max(1), Ordering::Relaxed);
        self.probe_sent.store(0, Ordering::Relaxed);
        *ejections += 1;
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }
}

/// Whether one more of a backend's endpoints, whose `breakers` these
/// are, may be ejected for failures without passing `max_ejected_percent`;
/// never without a policy. Endpoints out because they cannot be reached
/// do not count: the limit keeps answering endpoints in balancing.
pub fn may_eject<'a>(
    policy: Option<&CircuitBreaker>,
    breakers: impl ExactSizeIterator<Item = &'a Breaker>,
    now: Instant,
) -> bool {
    let Some(policy) = policy else {
        return false;
    };
    let total = breakers.len();
    let ejected = breakers.filter(|b| b.is_ejected_for_failures(now)).count();
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
    const MAX: Duration = Duration::from_secs(300);

    fn policy(consecutive_failures: u32) -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures,
            base_ejection: HumanDuration(BASE),
            max_ejection: HumanDuration(MAX),
            max_ejected_percent: 50,
            ..CircuitBreaker::default()
        }
    }

    /// Fails `n` times at `now`; whether the last failure ejected.
    fn fail(b: &Breaker, p: &CircuitBreaker, n: u32, now: Instant) -> bool {
        (0..n).fold(false, |_, _| {
            b.record_failure(Some(p), Fault::Failed, true, now)
        })
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
    fn each_repeat_ejection_lasts_twice_as_long_up_to_the_max() {
        let (b, p) = (Breaker::default(), policy(3));
        let mut now = Instant::now();
        assert!(fail(&b, &p, 3, now));
        for doubling in 0..8 {
            let lasts = (BASE * (1 << doubling)).min(MAX);
            assert_eq!(
                b.state(now),
                BreakerState::Ejected(lasts),
                "ejection {doubling}"
            );
            // An ejected endpoint is not ejected again.
            assert!(!fail(&b, &p, 5, now));
            now += lasts;
            assert_eq!(b.state(now), BreakerState::Probation);
            // On probation, one failure is enough.
            assert!(fail(&b, &p, 1, now), "ejection {}", doubling + 1);
        }
    }

    #[test]
    fn on_probation_one_probe_at_a_time_is_admitted() {
        let (b, p) = (Breaker::default(), policy(1));
        let mut now = Instant::now();
        assert!(b.admits(now));
        b.sent(now); // active: no probe
        assert!(b.admits(now));
        assert!(fail(&b, &p, 1, now));
        assert!(!b.admits(now), "ejected");
        now += BASE;
        assert!(b.admits(now), "on probation, the first request probes");
        b.sent(now);
        assert!(!b.admits(now), "no second request while the probe is out");
        // The probe fails: out again, and the next probation probes anew.
        assert!(fail(&b, &p, 1, now));
        now += 2 * BASE;
        assert!(b.admits(now));
        b.sent(now);
        // A probe that never reports stops holding the endpoint.
        assert!(b.admits(now + PROBE_LOST + Duration::from_millis(1)));
        // Its success restores the endpoint: every request is admitted.
        b.record_success();
        b.end_probation(now);
        b.sent(now);
        assert!(b.admits(now));
    }

    #[test]
    fn a_success_on_probation_restores_the_endpoint_in_full() {
        let (b, p) = (Breaker::default(), policy(2));
        let mut now = Instant::now();
        assert!(fail(&b, &p, 2, now));
        now += BASE;
        assert!(fail(&b, &p, 1, now));
        now += 2 * BASE;
        assert_eq!(b.state(now), BreakerState::Probation);
        b.record_success();
        b.end_probation(now); // as record_success does, at the test's time
        assert_eq!(b.state(now), BreakerState::Active);
        assert!(!fail(&b, &p, 1, now), "no longer on probation");
        assert!(fail(&b, &p, 1, now));
        assert_eq!(
            b.state(now),
            BreakerState::Ejected(BASE),
            "back to the base ejection"
        );
    }

    #[test]
    fn an_unreachable_endpoint_is_ejected_at_once() {
        let (b, p, now) = (Breaker::default(), policy(7), Instant::now());
        assert!(b.record_failure(Some(&p), Fault::Unreachable, false, now));
        assert_eq!(b.state(now), BreakerState::Ejected(BASE));
    }

    #[test]
    fn no_ejection_without_a_policy_or_when_the_backend_may_not() {
        let (b, now) = (Breaker::default(), Instant::now());
        for _ in 0..10 {
            assert!(!b.record_failure(None, Fault::Unreachable, true, now));
            assert!(!b.record_failure(Some(&policy(1)), Fault::Failed, false, now));
        }
        assert!(!b.is_ejected(now));
        assert_eq!(b.consecutive_failures(), 20);
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
        // An unreachable endpoint is out whatever the limit, and does not
        // count against it.
        let (p, now) = (policy(1), now + BASE);
        assert!(breakers[2].record_failure(Some(&p), Fault::Unreachable, false, now));
        assert!(breakers[3].record_failure(Some(&p), Fault::Unreachable, false, now));
        assert!(may_eject(Some(&p), breakers.iter(), now));
    }
}
