//! The types of `mesh.yaml`: the whole mesh's desired state. Every setting
//! has a named default; unknown keys are rejected by serde.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::duration::HumanDuration;

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::from_secs(1);
/// Shorter than the 5s keep-alive of Node.js and Apache, so the pool lets
/// go of a connection before the server closes it under a new request.
pub const DEFAULT_IDLE_TIMEOUT: HumanDuration = HumanDuration::from_secs(4);
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
pub const DEFAULT_BACKOFF_BASE: HumanDuration = HumanDuration::from_millis(25);
pub const DEFAULT_BACKOFF_MAX: HumanDuration = HumanDuration::from_millis(250);
/// Failure accrual as Linkerd does it: seven failures in a row eject an
/// endpoint for a second at first, doubling up to a minute.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 7;
pub const DEFAULT_BASE_EJECTION: HumanDuration = HumanDuration::from_secs(1);
pub const DEFAULT_MAX_EJECTION: HumanDuration = HumanDuration::from_secs(60);
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
pub const DEFAULT_HEALTH_INTERVAL: HumanDuration = HumanDuration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: HumanDuration = HumanDuration::from_secs(1);
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
pub const DEFAULT_HEALTHY_AFTER: u32 = 2;
pub const DEFAULT_SPLIT_WEIGHT: u32 = 1;

/// The whole of `mesh.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
}

impl Default for Mesh {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            services: BTreeMap::new(),
        }
    }
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 to unmeshed endpoints, whatever the caller spoke.
    #[default]
    Http,
    /// HTTP/2 with prior knowledge (h2c) to unmeshed endpoints.
    Http2,
    /// HTTP/2 to the endpoints; gRPC status codes drive retries.
    Grpc,
    /// An opaque byte stream; no HTTP feature applies.
    Tcp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Power of two random choices over peak-EWMA latency.
    #[default]
    P2cEwma,
    RoundRobin,
    LeastRequest,
    /// Consistent hashing on `hash_on`, so one key keeps reaching one endpoint.
    RingHash,
}

/// One service of the mesh: where it is and how callers treat it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Bounds the whole request until its response headers, retries
    /// included; `0s` is no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How long a pooled connection to an endpoint may sit unused.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundPolicy>,
}

impl Protocol {
    pub fn is_default(&self) -> bool {
        *self == Protocol::default()
    }

    /// Whether the endpoints themselves speak HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// Every setting at its default, as the file's `NAME: {}` says: what a
/// service that only registrations name gets.
impl Default for Service {
    fn default() -> Self {
        Self {
            protocol: Protocol::default(),
            identity: None,
            endpoints: Vec::new(),
            load_balancer: LoadBalancer::default(),
            hash_on: None,
            timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            retry: None,
            circuit_breaker: CircuitBreaker::default(),
            health_check: None,
            routes: Vec::new(),
            inbound: None,
        }
    }
}

/// A request timeout as it applies: `0s` is none, as in Envoy, for
/// streams that live as long as they like (gRPC streams, long polls).
pub fn effective_timeout(timeout: Option<HumanDuration>) -> Option<HumanDuration> {
    timeout.filter(|t| !t.get().is_zero())
}

fn default_connect_timeout() -> HumanDuration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_idle_timeout() -> HumanDuration {
    DEFAULT_IDLE_TIMEOUT
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// For a meshed endpoint (a sidecar's inbound), the port of the app
    /// behind it, which is all its sidecar serves: a transparent caller
    /// that dials the endpoint's IP at another port goes around the
    /// sidecar, as it would to any other port of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<std::num::NonZeroU16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    pub header: HeaderName,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Extra tries after the first.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<HumanDuration>,
    #[serde(default = "default_budget_percent", deserialize_with = "percent")]
    pub budget_percent: f64,
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Retry methods that are not idempotent too (POST, PATCH); off by
    /// default because the first try may have had its effect.
    #[serde(default)]
    pub non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            on: default_retry_on(),
            per_try_timeout: None,
            budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            backoff: Backoff::default(),
            non_idempotent: false,
        }
    }
}

fn default_retry_attempts() -> u32 {
    DEFAULT_RETRY_ATTEMPTS
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]
}
fn default_budget_percent() -> f64 {
    DEFAULT_RETRY_BUDGET_PERCENT
}
fn default_min_retries_per_second() -> u32 {
    DEFAULT_MIN_RETRIES_PER_SECOND
}

/// The conditions under which a try is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// The endpoint could not be reached (refused, unreachable, connect timeout).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection broke before a response arrived.
    #[serde(rename = "reset")]
    Reset,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503 and 504 only.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// 409 Conflict.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// A gRPC response whose `grpc-status` is 14 (UNAVAILABLE).
    #[serde(rename = "grpc:unavailable")]
    GrpcUnavailable,
    /// The per-try timeout passed.
    #[serde(rename = "per-try-timeout")]
    PerTryTimeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_backoff_base")]
    pub base: HumanDuration,
    #[serde(default = "default_backoff_max")]
    pub max: HumanDuration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

fn default_backoff_base() -> HumanDuration {
    DEFAULT_BACKOFF_BASE
}
fn default_backoff_max() -> HumanDuration {
    DEFAULT_BACKOFF_MAX
}

/// Failure accrual and the pending-request cap. Every service has it, on,
/// whether or not its file says `circuit_breaker:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// `false` keeps every endpoint in balancing whatever it does.
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_base_ejection")]
    pub base_ejection: HumanDuration,
    #[serde(default = "default_max_ejection")]
    pub max_ejection: HumanDuration,
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
    /// No cap unless set, as in Linkerd and Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
            max_pending_requests: None,
        }
    }
}

fn enabled() -> bool {
    true
}

fn default_consecutive_failures() -> u32 {
    DEFAULT_CONSECUTIVE_FAILURES
}
fn default_base_ejection() -> HumanDuration {
    DEFAULT_BASE_EJECTION
}
fn default_max_ejected_percent() -> u32 {
    DEFAULT_MAX_EJECTED_PERCENT
}
fn default_max_ejection() -> HumanDuration {
    DEFAULT_MAX_EJECTION
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

fn default_health_interval() -> HumanDuration {
    DEFAULT_HEALTH_INTERVAL
}
fn default_health_timeout() -> HumanDuration {
    DEFAULT_HEALTH_TIMEOUT
}
fn default_unhealthy_after() -> u32 {
    DEFAULT_UNHEALTHY_AFTER
}
fn default_healthy_after() -> u32 {
    DEFAULT_HEALTHY_AFTER
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Names the route in metrics and logs; defaults to `route-N` (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Where matching requests go; empty = all of the service's endpoints.
    #[serde(default)]
    pub split: Vec<Split>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Replaces the service's retry policy for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// Every condition given must hold; an empty match matches everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<PathRegex>,
    /// Header name → exact value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderName, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
}

/// One backend of a route: a subset of the service's endpoints chosen by
/// labels, or another service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default = "default_split_weight")]
    pub weight: u32,
}

fn default_split_weight() -> u32 {
    DEFAULT_SPLIT_WEIGHT
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(deserialize_with = "percent")]
    pub percent: f64,
    pub duration: HumanDuration,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(deserialize_with = "percent")]
    pub percent: f64,
    pub status: StatusCode,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPolicy {
    #[serde(default)]
    pub mtls: MtlsMode,
    /// Identities that may call; absent = any meshed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    #[default]
    Strict,
    Permissive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A percentage in 0..=100.
fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let p = f64::deserialize(d)?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(de::Error::custom(format!(
            "percent must be within 0 and 100, not {p}"
        )))
    }
}

/// A lowercase HTTP header name, checked when read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for HeaderName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if s.is_empty() || !s.chars().all(is_token) {
            return Err(format!("{s:?} is not a valid HTTP header name"));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// An HTTP method token, upper case as written on the wire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Method(String);

impl Method {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_uppercase() || c == '-') {
            return Err(de::Error::custom(format!(
                "{s:?} is not an HTTP method; write it in upper case, like GET"
            )));
        }
        Ok(Self(s))
    }
}

/// An HTTP status code in 100..=599.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StatusCode(u16);

impl StatusCode {
    pub fn get(self) -> u16 {
        self.0
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(d)?;
        if (100..=599).contains(&code) {
            Ok(Self(code))
        } else {
            Err(de::Error::custom(format!(
                "{code} is not an HTTP status code (100..=599)"
            )))
        }
    }
}

/// A path regex, matched against the whole path (it is anchored at both ends).
#[derive(Clone, Debug)]
pub struct PathRegex {
    source: String,
    anchored: regex::Regex,
}

impl PathRegex {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let anchored = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Self {
            source: source.to_string(),
            anchored,
        })
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.anchored.is_match(path)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Display for PathRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for PathRegex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for PathRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PathRegex::new(&s).map_err(|e| de::Error::custom(format!("invalid path_regex: {e}")))
    }
}
