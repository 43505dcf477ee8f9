//! When a failed try is sent again: the conditions of the route's policy,
//! idempotency, a retry budget (tower's token bucket over a sliding window)
//! so retries cannot multiply an outage, and exponential backoff with full
//! jitter so retries from many callers do not arrive in step.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use remora_api::{RetryOn, RetryPolicy};
use remora_server::Backoff;
use tower::retry::budget::{Budget, TpsBudget};

/// How long a deposit counts toward the budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// How many times a request that never reached its endpoint (a connect
/// failure) is sent on to another, whatever the route's retry policy.
pub const UNSENT_RESENDS: u32 = 3;

/// A compiled retry policy, with the budget it shares across requests.
#[derive(Clone)]
pub struct Retry {
    pub attempts: u32,
    on: Vec<RetryOn>,
    pub per_try_timeout: Option<Duration>,
    backoff: Backoff,
    non_idempotent: bool,
    budget: Arc<TpsBudget>,
    policy: RetryPolicy,
}

/// Why a try failed, as the retry conditions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    ConnectFailure,
    /// The endpoint turned the request away unprocessed (HTTP/2).
    Refused,
    Reset,
    PerTryTimeout,
    Status(StatusCode),
    GrpcUnavailable,
}

impl Failure {
    /// The `reason` label of `remora_retries_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::ConnectFailure => "connect-failure",
            Failure::Refused => "refused-stream",
            Failure::Reset => "reset",
            Failure::PerTryTimeout => "per-try-timeout",
            Failure::Status(s) if s.is_server_error() => "5xx",
            Failure::Status(_) => "retriable-4xx",
            Failure::GrpcUnavailable => "grpc:unavailable",
        }
    }

    /// What a response tells about its try, before any policy.
    pub fn of_response(status: StatusCode, headers: &HeaderMap) -> Option<Failure> {
        if headers.get("grpc-status").is_some_and(|v| v == "14") {
            return Some(Failure::GrpcUnavailable);
        }
        if status.is_server_error() || status == StatusCode::CONFLICT {
            return Some(Failure::Status(status));
        }
        None
    }
}

impl Retry {
    pub fn new(policy: &RetryPolicy) -> Self {
        let budget = TpsBudget::new(
            BUDGET_WINDOW,
            policy.min_retries_per_second,
            (policy.budget_percent / 100.0) as f32,
        );
        Self::with_budget(policy, Arc::new(budget))
    }

    fn with_budget(policy: &RetryPolicy, budget: Arc<TpsBudget>) -> Self {
        Self {
            attempts: policy.attempts,
            on: policy.on.clone(),
            per_try_timeout: policy.per_try_timeout.map(Into::into),
            backoff: Backoff::new(policy.backoff.base.into(), policy.backoff.max.into()),
            non_idempotent: policy.non_idempotent,
            budget,
            policy: policy.clone(),
        }
    }

    /// Resending a request that never reached its endpoint: it had no
    /// effect anywhere, so any method may go again, at once, to another
    /// endpoint, up to [`UNSENT_RESENDS`] times and within a budget of the
    /// default size (a fifth of the requests, at least 10 a second), which
    /// every route has whatever its own policy.
    pub fn unsent(previous: Option<&Retry>) -> Self {
        let policy = RetryPolicy {
            attempts: UNSENT_RESENDS,
            on: vec![RetryOn::ConnectFailure],
            non_idempotent: true,
            ..RetryPolicy::default()
        };
        Self::reuse_or_new(&policy, previous)
    }

    /// The same policy keeps its budget across config reloads; a changed
    /// one starts afresh.
    pub fn reuse_or_new(policy: &RetryPolicy, previous: Option<&Retry>) -> Self {
        match previous {
            Some(p) if &p.policy == policy => p.clone(),
            _ => Self::new(policy),
        }
    }

    pub fn allows_method(&self, method: &Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// Whether the policy names this failure.
    pub fn covers(&self, failure: Failure) -> bool {
        self.on.iter().any(|on| match (on, failure) {
            (RetryOn::ConnectFailure, Failure::ConnectFailure | Failure::Refused) => true,
            (RetryOn::Reset, Failure::Reset) => true,
            // The caller of a try that timed out would get a 504, as Envoy
            // counts it too.
            (
                RetryOn::PerTryTimeout | RetryOn::GatewayError | RetryOn::Status5xx,
                Failure::PerTryTimeout,
            ) => true,
            (RetryOn::Status5xx, Failure::Status(s)) => s.is_server_error(),
            (RetryOn::GatewayError, Failure::Status(s)) => {
                matches!(s.as_u16(), 502..=504)
            }
            (RetryOn::Retriable4xx, Failure::Status(s)) => s == StatusCode::CONFLICT,
            (RetryOn::GrpcUnavailable, Failure::GrpcUnavailable) => true,
            _ => false,
        })
    }

    /// Each original request earns the budget a fraction of a retry.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// The wait before retry number `retry` (from 0).
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff.delay(retry)
    }
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: Vec<RetryOn>) -> RetryPolicy {
        RetryPolicy {
            on,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn conditions_match_their_failures_only() {
        let r = Retry::new(&policy(vec![
            RetryOn::GatewayError,
            RetryOn::ConnectFailure,
        ]));
        assert!(r.covers(Failure::Status(StatusCode::BAD_GATEWAY)));
        assert!(r.covers(Failure::ConnectFailure));
        assert!(!r.covers(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(!r.covers(Failure::Reset));
        assert!(r.covers(Failure::PerTryTimeout), "a 504 of the proxy's");
        assert!(
            r.covers(Failure::Refused),
            "never processed, like a connect failure"
        );
        let r = Retry::new(&policy(vec![RetryOn::Retriable4xx]));
        assert!(!r.covers(Failure::PerTryTimeout));
        let r = Retry::new(&policy(vec![RetryOn::Status5xx, RetryOn::Retriable4xx]));
        assert!(r.covers(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(r.covers(Failure::Status(StatusCode::CONFLICT)));
    }

    #[test]
    fn grpc_unavailable_is_read_from_the_headers() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            Failure::of_response(StatusCode::OK, &h),
            Some(Failure::GrpcUnavailable)
        );
        assert_eq!(
            Failure::of_response(StatusCode::OK, &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn only_idempotent_methods_unless_opted_in() {
        let r = Retry::new(&RetryPolicy::default());
        assert!(r.allows_method(&Method::GET) && r.allows_method(&Method::PUT));
        assert!(!r.allows_method(&Method::POST));
        let r = Retry::new(&RetryPolicy {
            non_idempotent: true,
            ..RetryPolicy::default()
        });
        assert!(r.allows_method(&Method::POST));
    }

    #[test]
    fn backoff_stays_under_its_growing_ceiling() {
        let r = Retry::new(&RetryPolicy::default());
        for retry in 0..20 {
            let ceiling =
                Duration::from_millis(25 * (1u64 << retry.min(20))).min(Duration::from_millis(250));
            assert!(r.backoff(retry) <= ceiling);
        }
    }

    #[test]
    fn the_budget_runs_out_and_is_kept_across_reloads() {
        let p = RetryPolicy {
            min_retries_per_second: 1,
            budget_percent: 0.0,
            ..RetryPolicy::default()
        };
        let r = Retry::new(&p);
        let mut granted = 0;
        for _ in 0..100 {
            granted += r.withdraw() as u32;
        }
        assert!(granted < 100, "a budget of 1/s for 10s granted {granted}");
        let again = Retry::reuse_or_new(&p, Some(&r));
        assert!(!again.withdraw());
    }
}
