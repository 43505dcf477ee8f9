//! Endpoints and the balancers that choose among them. Endpoint state
//! (its pooled client, in-flight count, latency estimate, health, and the
//! circuit breaker's state, whose rules are in `breaker`) lives as long as
//! the endpoint's address and its service's client settings stay in the
//! config, across reloads.
//!
//! p2c-ewma is written here rather than taken from tower's `Balance`:
//! a retry must be able to avoid the endpoint that just failed, and an
//! ejected endpoint must be skipped, and tower picks inside `poll_ready`
//! with no way to say either.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use remora_api::{LoadBalancer, SpiffeId};

use super::breaker::{Breaker, BreakerState};
use crate::http::client::{ClientSettings, Clients, HttpClient};
use crate::http::version::{attempt_head, ORIG_PROTO, ORIG_PROTO_HTTP1};
use crate::tcp::dial::OpaqueDial;

/// The latency assumed for an endpoint before it has answered.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// What a failed try costs an endpoint in the latency estimate, at least:
/// a fast failure must never look like a fast answer. Like a slow answer,
/// it fades over `EWMA_DECAY`.
const FAILURE_PENALTY: Duration = Duration::from_millis(250);
/// How fast old latency samples fade.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Virtual nodes per endpoint on the hash ring.
const RING_REPLICAS: usize = 100;

pub struct Endpoint {
    pub address: SocketAddr,
    /// The address as a metric label, made once.
    pub label: Arc<str>,
    pub labels: BTreeMap<String, String>,
    /// Whom the endpoint must prove to be: a sidecar's inbound, reached
    /// over mutual TLS when this proxy has an identity too.
    pub identity: Option<SpiffeId>,
    /// The identity as the `peer` label of requests to it, made once.
    pub peer: Option<Arc<str>>,
    /// Its pooled connections: over mutual TLS when it has an identity
    /// and this proxy has one too.
    pub client: HttpClient,
    /// Over mutual TLS, a connection of its own for each request that
    /// upgrades (see [`Clients::upgrades`]).
    pub upgrades: Option<HttpClient>,
    /// How to dial it for an opaque stream (a `tcp` service's, or one that
    /// transparent mode intercepted).
    pub opaque: OpaqueDial,
    /// Its service's protocol says it speaks HTTP/2 (`http2`, `grpc`); an
    /// unmeshed endpoint is spoken to in that version, whatever the caller
    /// spoke.
    pub speaks_http2: bool,
    in_flight: AtomicU32,
    ewma: Mutex<Ewma>,
    /// Consecutive failures and ejection, fed by each try's outcome.
    pub breaker: Breaker,
    /// Cleared by failing health checks; endpoints start out healthy.
    healthy: AtomicBool,
    /// Round-robin: whether a failing endpoint gave up its last turn.
    gave_up_turn: AtomicBool,
}

struct Ewma {
    /// Nanoseconds.
    estimate: f64,
    updated: Instant,
}

impl Endpoint {
    /// The endpoint at `address`, reached as `settings` say: over mutual
    /// TLS when it has an `identity` and `clients` one of their own.
    pub fn new(
        clients: &Clients,
        settings: ClientSettings,
        address: SocketAddr,
        labels: BTreeMap<String, String>,
        identity: Option<&SpiffeId>,
    ) -> Self {
        Self {
            address,
            label: address.to_string().into(),
            labels,
            identity: identity.cloned(),
            peer: identity.map(|id| Arc::from(id.as_str())),
            client: clients.to(settings, address, identity),
            upgrades: clients.upgrades(settings, address, identity),
            opaque: clients.opaque(settings, address, identity),
            speaks_http2: settings.http2,
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(Ewma {
                estimate: DEFAULT_RTT.as_nanos() as f64,
                updated: Instant::now(),
            }),
            breaker: Breaker::default(),
            healthy: AtomicBool::new(true),
            gave_up_turn: AtomicBool::new(false),
        }
    }

    /// Whether requests to it go over mutual TLS.
    pub fn is_meshed(&self) -> bool {
        self.client.is_mesh()
    }

    /// Whether requests to it go in HTTP/2: its protocol's, or over
    /// mutual TLS.
    pub fn is_http2(&self) -> bool {
        self.speaks_http2 || self.is_meshed()
    }

    /// The head of a request to this endpoint for `authority` and the path
    /// of `uri`, in the version spoken to it. A meshed endpoint's sidecar
    /// is told when its app speaks HTTP/1.1.
    pub fn request_head(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        authority: &http::uri::Authority,
        headers: http::HeaderMap,
    ) -> http::request::Parts {
        let mut head = attempt_head(method, uri, authority, headers, self.is_http2());
        if self.is_meshed() && !self.speaks_http2 {
            head.headers
                .insert(ORIG_PROTO, HeaderValue::from_static(ORIG_PROTO_HTTP1));
        }
        head
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Outstanding requests, plus the failures in a row as a penalty.
    fn load(&self) -> u32 {
        self.in_flight()
            .saturating_add(self.breaker.consecutive_failures())
    }

    /// Marks a request as sent; the guard marks it done and records its latency.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: Instant::now(),
            sampled: false,
        }
    }

    /// Peak-EWMA cost: the latency estimate, weighted by the requests
    /// already waiting on this endpoint.
    fn cost(&self, now: Instant) -> f64 {
        let estimate = {
            let ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
            decayed(
                ewma.estimate,
                now.saturating_duration_since(ewma.updated),
                DEFAULT_RTT.as_nanos() as f64,
            )
        };
        estimate * (self.in_flight() as f64 + 1.0)
    }

    fn observe(&self, rtt: Duration) {
        let sample = rtt.as_nanos() as f64;
        let mut ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(ewma.updated);
        ewma.estimate = if sample > ewma.estimate {
            // Peak sensitivity: a slow response counts in full at once.
            sample
        } else {
            let w = (-elapsed.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
            ewma.estimate * w + sample * (1.0 - w)
        };
        ewma.updated = now;
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Where the endpoint stands in balancing, for `/config`: health
    /// checks first, then failure accrual.
    pub fn status(&self, now: Instant) -> serde_json::Value {
        let breaker = self.breaker.state(now);
        let state = match self.is_healthy() {
            true => breaker.name(),
            false => "unhealthy",
        };
        let mut status = serde_json::json!({
            "address": self.label,
            "state": state,
            "in_flight": self.in_flight(),
            "consecutive_failures": self.breaker.consecutive_failures(),
        });
        if let BreakerState::Ejected(left) = breaker {
            status["ejected_for_seconds"] = serde_json::json!(left.as_secs_f64());
        }
        if let Some(peer) = &self.peer {
            status["identity"] = serde_json::json!(peer);
        }
        status
    }

    /// Round-robin's failure penalty: an endpoint whose last tries failed
    /// gives up every other turn. It keeps the rest, so that it can get
    /// through, or fail its way to ejection.
    fn gives_up_turn(&self) -> bool {
        self.breaker.consecutive_failures() != 0
            && !self.gave_up_turn.fetch_xor(true, Ordering::Relaxed)
    }

    /// Returns whether the state changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }
}

/// `estimate` decays toward the default while no sample arrives, so an
/// endpoint that was slow once gets traffic again.
fn decayed(estimate: f64, elapsed: Duration, toward: f64) -> f64 {
    let w = (-elapsed.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
    estimate * w + toward * (1.0 - w)
}

/// A request in flight to an endpoint: outstanding until its response
/// body ends (a long stream keeps counting), while its latency is sampled
/// when the response headers arrive.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
    sampled: bool,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// How long since the request was sent.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records the time to the response headers in the latency estimate.
    pub fn headers_received(&mut self) {
        if !self.sampled {
            self.sampled = true;
            self.endpoint.observe(self.started.elapsed());
        }
    }

    /// Records a failed try in the latency estimate, as the time it took
    /// or [`FAILURE_PENALTY`], whichever is longer.
    pub fn failed(&mut self) {
        if !self.sampled {
            self.sampled = true;
            self.endpoint
                .observe(self.started.elapsed().max(FAILURE_PENALTY));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.headers_received();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until
    /// the body is done or dropped.
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B> InFlightBody<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self { inner, in_flight }
    }
}

impl<B: http_body::Body> http_body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An endpoint is the same one across reloads while its address, labels,
/// identity and client settings are.
type EndpointKey = (
    SocketAddr,
    BTreeMap<String, String>,
    Option<SpiffeId>,
    ClientSettings,
);

/// Endpoint state by address, kept across config reloads.
#[derive(Default)]
pub struct EndpointRegistry {
    endpoints: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
}

impl EndpointRegistry {
    pub fn get(
        &self,
        clients: &Clients,
        settings: ClientSettings,
        address: SocketAddr,
        labels: &BTreeMap<String, String>,
        identity: Option<&SpiffeId>,
    ) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((address, labels.clone(), identity.cloned(), settings))
            .or_insert_with(|| {
                let endpoint = Endpoint::new(clients, settings, address, labels.clone(), identity);
                Arc::new(endpoint)
            })
            .clone()
    }

    /// Forgets endpoints no config refers to any more.
    pub fn retain_used(&self) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| Arc::strong_count(e) > 1);
    }
}

/// How one backend chooses an endpoint.
pub enum Balancer {
    P2cEwma,
    RoundRobin(AtomicUsize),
    LeastRequest,
    RingHash(Vec<(u64, usize)>),
}

impl Balancer {
    pub fn new(kind: LoadBalancer, endpoints: &[Arc<Endpoint>]) -> Self {
        match kind {
            LoadBalancer::P2cEwma => Balancer::P2cEwma,
            LoadBalancer::RoundRobin => {
                Balancer::RoundRobin(AtomicUsize::new(fastrand::usize(..=endpoints.len())))
            }
            LoadBalancer::LeastRequest => Balancer::LeastRequest,
            LoadBalancer::RingHash => {
                let mut ring = Vec::with_capacity(endpoints.len() * RING_REPLICAS);
                for (i, e) in endpoints.iter().enumerate() {
                    for replica in 0..RING_REPLICAS {
                        let key = format!("{}#{replica}", e.address);
                        ring.push((xxhash_rust::xxh3::xxh3_64(key.as_bytes()), i));
                    }
                }
                ring.sort_unstable();
                Balancer::RingHash(ring)
            }
        }
    }

    /// Picks an endpoint that is healthy, not ejected and not `avoid`,
    /// falling back to unhealthy or ejected ones and then to `avoid` rather
    /// than failing (when all are down, trying one beats refusing all).
    pub fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        hash_key: Option<&[u8]>,
        avoid: Option<&Arc<Endpoint>>,
    ) -> Option<Arc<Endpoint>> {
        if endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        let usable = |e: &Arc<Endpoint>| {
            avoid.is_none_or(|a| !Arc::ptr_eq(a, e)) && e.is_healthy() && e.breaker.admits(now)
        };
        if let Some(e) = self.pick_where(endpoints, hash_key, &usable) {
            e.breaker.sent(now);
            return Some(e);
        }
        let not_avoided = |e: &Arc<Endpoint>| avoid.is_none_or(|a| !Arc::ptr_eq(a, e));
        self.pick_where(endpoints, hash_key, &not_avoided)
            .or_else(|| self.pick_where(endpoints, hash_key, &|_| true))
    }

    fn pick_where(
        &self,
        endpoints: &[Arc<Endpoint>],
        hash_key: Option<&[u8]>,
        usable: &dyn Fn(&Arc<Endpoint>) -> bool,
    ) -> Option<Arc<Endpoint>> {
        let n = endpoints.len();
        match self {
            Balancer::RoundRobin(next) => {
                let mut turns =
                    (0..2 * n).map(|_| &endpoints[next.fetch_add(1, Ordering::Relaxed) % n]);
                // The first usable endpoint that keeps its turn; a second
                // round finds one, since an endpoint gives up only every
                // other turn.
                turns.find(|e| usable(e) && !e.gives_up_turn()).cloned()
            }
            Balancer::LeastRequest => {
                // Two random choices by outstanding requests (as Envoy's
                // least-request does): near-best without scanning them all.
                // Each failure in a row counts as one more outstanding
                // request, so a fast failure never looks like free capacity.
                self.two_choices(endpoints, usable, |e| e.load() as f64)
            }
            Balancer::P2cEwma => {
                let now = Instant::now();
                self.two_choices(endpoints, usable, |e| e.cost(now))
            }
            Balancer::RingHash(ring) => {
                let Some(key) = hash_key else {
                    return self.two_choices(endpoints, usable, |e| e.load() as f64);
                };
                let h = xxhash_rust::xxh3::xxh3_64(key);
                let start = ring.partition_point(|(point, _)| *point < h);
                (0..ring.len())
                    .map(|i| &endpoints[ring[(start + i) % ring.len()].1])
                    .find(|e| usable(e))
                    .cloned()
            }
        }
    }

    fn two_choices(
        &self,
        endpoints: &[Arc<Endpoint>],
        usable: &dyn Fn(&Arc<Endpoint>) -> bool,
        cost: impl Fn(&Endpoint) -> f64,
    ) -> Option<Arc<Endpoint>> {
        let n = endpoints.len();
        if n == 1 {
            return usable(&endpoints[0]).then(|| endpoints[0].clone());
        }
        // Four random probes first; a scan from a random offset only when
        // they found fewer than two distinct usable endpoints.
        let probes = (0..4).map(|_| fastrand::usize(..n));
        let offset = fastrand::usize(..n);
        let scan = (0..n).map(|i| (offset + i) % n);
        let mut a: Option<&Arc<Endpoint>> = None;
        let mut b: Option<&Arc<Endpoint>> = None;
        for i in probes.chain(scan) {
            let e = &endpoints[i];
            if !usable(e) || a.is_some_and(|a| Arc::ptr_eq(a, e)) {
                continue;
            }
            if a.is_none() {
                a = Some(e);
            } else {
                b = Some(e);
                break;
            }
        }
        match (a, b) {
            (Some(a), Some(b)) => Some(if cost(b) < cost(a) {
                b.clone()
            } else {
                a.clone()
            }),
            (Some(a), None) => Some(a.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use remora_api::CircuitBreaker;

    use super::*;
    use crate::outbound::breaker::Fault;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        let settings = ClientSettings::default();
        (0..n)
            .map(|i| {
                let address = SocketAddr::from(([127, 0, 0, 1], 9000 + i));
                let endpoint = Endpoint::new(
                    &Clients::default(),
                    settings,
                    address,
                    BTreeMap::new(),
                    None,
                );
                Arc::new(endpoint)
            })
            .collect()
    }

    fn counts(
        b: &Balancer,
        eps: &[Arc<Endpoint>],
        n: usize,
        key: Option<&[u8]>,
    ) -> HashMap<u16, usize> {
        let mut c = HashMap::new();
        for _ in 0..n {
            *c.entry(b.pick(eps, key, None).unwrap().address.port())
                .or_default() += 1;
        }
        c
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let eps = endpoints(3);
        let b = Balancer::new(LoadBalancer::RoundRobin, &eps);
        let c = counts(&b, &eps, 300, None);
        assert!(c.values().all(|&v| v == 100), "{c:?}");
    }

    #[test]
    fn p2c_prefers_the_less_loaded_endpoint() {
        let eps = endpoints(2);
        let _busy: Vec<InFlight> = (0..10).map(|_| eps[0].start()).collect();
        let b = Balancer::new(LoadBalancer::P2cEwma, &eps);
        let c = counts(&b, &eps, 100, None);
        assert_eq!(c.get(&9001), Some(&100), "{c:?}");
    }

    #[test]
    fn least_request_prefers_fewer_outstanding() {
        let eps = endpoints(2);
        let _busy = eps[1].start();
        let b = Balancer::new(LoadBalancer::LeastRequest, &eps);
        assert_eq!(counts(&b, &eps, 50, None).get(&9000), Some(&50));
    }

    #[test]
    fn ring_hash_keeps_a_key_on_one_endpoint_and_spreads_keys() {
        let eps = endpoints(4);
        let b = Balancer::new(LoadBalancer::RingHash, &eps);
        assert_eq!(counts(&b, &eps, 50, Some(b"user-1")).len(), 1);
        let mut seen = std::collections::HashSet::new();
        for k in 0..200 {
            seen.insert(
                b.pick(&eps, Some(format!("user-{k}").as_bytes()), None)
                    .unwrap()
                    .address,
            );
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn the_endpoint_to_avoid_is_avoided_while_another_exists() {
        let eps = endpoints(2);
        for kind in [
            LoadBalancer::P2cEwma,
            LoadBalancer::RoundRobin,
            LoadBalancer::LeastRequest,
            LoadBalancer::RingHash,
        ] {
            let b = Balancer::new(kind, &eps);
            for _ in 0..50 {
                assert_eq!(
                    b.pick(&eps, Some(b"k"), Some(&eps[0]))
                        .unwrap()
                        .address
                        .port(),
                    9001,
                    "{kind:?}"
                );
            }
        }
        let one = endpoints(1);
        let b = Balancer::new(LoadBalancer::P2cEwma, &one);
        assert!(
            b.pick(&one, None, Some(&one[0])).is_some(),
            "a lone endpoint is still used"
        );
    }

    #[test]
    fn consecutive_failures_eject_and_ejected_endpoints_are_skipped() {
        let eps = endpoints(2);
        let policy = CircuitBreaker {
            consecutive_failures: 3,
            ..CircuitBreaker::default()
        };
        let now = Instant::now();
        assert!(!eps[0]
            .breaker
            .record_failure(Some(&policy), Fault::Failed, true, now));
        assert!(!eps[0]
            .breaker
            .record_failure(Some(&policy), Fault::Failed, true, now));
        assert!(eps[0]
            .breaker
            .record_failure(Some(&policy), Fault::Failed, true, now));
        assert!(eps[0].breaker.is_ejected(Instant::now()));
        let b = Balancer::new(LoadBalancer::RoundRobin, &eps);
        assert_eq!(counts(&b, &eps, 10, None).get(&9001), Some(&10));
    }

    #[test]
    fn a_fast_failure_does_not_make_an_endpoint_look_fast() {
        let eps = endpoints(2);
        // The first answers in 5ms; the second fails at once.
        eps[0].observe(Duration::from_millis(5));
        eps[1].start().failed();
        for kind in [LoadBalancer::P2cEwma, LoadBalancer::LeastRequest] {
            if kind == LoadBalancer::LeastRequest {
                eps[1]
                    .breaker
                    .record_failure(None, Fault::Failed, true, Instant::now());
            }
            let b = Balancer::new(kind, &eps);
            assert_eq!(counts(&b, &eps, 50, None).get(&9000), Some(&50), "{kind:?}");
        }
    }

    #[test]
    fn round_robin_gives_a_failing_endpoint_every_other_turn() {
        let eps = endpoints(2);
        let b = Balancer::new(LoadBalancer::RoundRobin, &eps);
        eps[0]
            .breaker
            .record_failure(None, Fault::Failed, true, Instant::now());
        let c = counts(&b, &eps, 300, None);
        assert_eq!((c[&9000], c[&9001]), (100, 200), "{c:?}");
        eps[0].breaker.record_success();
        assert_eq!(counts(&b, &eps, 300, None)[&9000], 150);
    }
}
