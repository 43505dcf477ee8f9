//! The proxy's one metrics registry and the metric families of the
//! contract (docs/metrics.md). Label sets hold `Arc<str>` names resolved
//! when the config is compiled, so recording a request allocates nothing.

use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use remora_server::metrics::{
    encode_openmetrics, to_prometheus_text, ProcessCollector, ResultLabels,
};
use remora_server::serve::{ClosedConnections, ConnectionMetrics};

/// Latency buckets in seconds: sub-millisecond proxy hops to slow upstreams.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), e)
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

impl Classification {
    /// A response is a failure when the server failed (5xx) or the proxy
    /// could not get one; 4xx are the caller's business and count as success.
    pub fn of_status(status: u16) -> Self {
        if status >= 500 {
            Classification::Failure
        } else {
            Classification::Success
        }
    }
}

impl EncodeLabelValue for Classification {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        let s = match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        };
        EncodeLabelValue::encode(&s, e)
    }
}

/// Who a route's requests belong to; cloned into every label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub service: Arc<str>,
    pub route: Arc<str>,
}

impl RouteLabels {
    pub fn new(direction: Direction, service: &str, route: &str) -> Self {
        Self {
            direction,
            service: service.into(),
            route: route.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
    pub classification: Classification,
    pub tls: bool,
    pub peer: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub peer: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub classification: Classification,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub direction: Direction,
    pub service: Arc<str>,
    pub endpoint: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: Direction,
    pub tls: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: Direction,
    /// `ok`, `failed` or `plaintext_refused`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub direction: Direction,
    /// `header-timeout`, `idle`, `stalled`, `shed` or `refused`.
    pub reason: &'static str,
}

/// The bytes of a listener's HTTP connections, or of one service's
/// opaque streams with one peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BytesLabels {
    pub direction: Direction,
    pub rw: &'static str,
    /// Opaque streams only: a listener's HTTP bytes belong to no one
    /// service.
    pub stream: Option<StreamLabels>,
}

/// Written by hand so that a listener's series carry no empty `service`
/// and `peer`.
impl EncodeLabelSet for BytesLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("rw", self.rw).encode(encoder.encode_label())?;
        if let Some(stream) = &self.stream {
            ("service", &*stream.service).encode(encoder.encode_label())?;
            ("peer", &*stream.peer).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// One service's opaque streams with one peer (its identity, or
/// `unmeshed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub direction: Direction,
    pub service: Arc<str>,
    pub peer: Arc<str>,
}

/// A kind of control-plane resource: `outbound`, `inbound`, `registration`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

/// How the proxy hears from the control plane.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    /// New views received (and registrations made), by resource kind.
    pub updates: Family<ResourceLabels, Counter>,
    /// 1 while the latest exchange of that kind succeeded, else 0.
    pub connected: Family<ResourceLabels, Gauge>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The HTTP request metrics of both directions.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily<DurationLabels>,
    pub retries: Family<RetryLabels, Counter>,
    pub budget_exhausted: Family<RouteLabels, Counter>,
    pub timeouts: Family<RouteLabels, Counter>,
    pub ejections: Family<EjectionLabels, Counter>,
    pub rate_limited: Family<RouteLabels, Counter>,
    pub authz_denied: Family<PeerLabels, Counter>,
}

impl HttpMetrics {
    /// Counts one answered request and its time to response headers.
    /// `peer` is the other side's identity, or `unmeshed`.
    /// `peer` is the other side's identity, or `unmeshed`; `tls` whether
    /// the request came or went over mutual TLS.
    pub fn record_request(
        &self,
        route: &RouteLabels,
        status: u16,
        peer: &Arc<str>,
        tls: bool,
        elapsed: std::time::Duration,
    ) {
        let classification = Classification::of_status(status);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status_code: status,
                classification,
                tls,
                peer: peer.clone(),
            })
            .inc();
        self.duration
            .get_or_create(&DurationLabels {
                route: route.clone(),
                classification,
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Transport metrics: connections, bytes and TLS handshakes of the two
/// traffic listeners (the admin port is not proxied traffic).
#[derive(Clone, Debug, Default)]
pub struct TransportMetrics {
    pub open: Family<ConnectionLabels, Gauge>,
    pub total: Family<ConnectionLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub closed: Family<ClosedLabels, Counter>,
}

impl TransportMetrics {
    /// The series of `direction`'s listener, resolved once for the server.
    /// Handshakes are series only where the listener takes TLS.
    pub fn listener(&self, direction: Direction, takes_tls: bool) -> ConnectionMetrics {
        let pair = |tls| {
            let labels = ConnectionLabels { direction, tls };
            (
                self.open.get_or_create_owned(&labels),
                self.total.get_or_create_owned(&labels),
            )
        };
        let bytes = |rw| {
            self.bytes.get_or_create_owned(&BytesLabels {
                direction,
                rw,
                stream: None,
            })
        };
        let handshakes = |result| match takes_tls {
            true => self
                .handshakes
                .get_or_create_owned(&HandshakeLabels { direction, result }),
            false => Counter::default(),
        };
        let closed = |reason| {
            self.closed
                .get_or_create_owned(&ClosedLabels { direction, reason })
        };
        ConnectionMetrics {
            closed: ClosedConnections {
                header_timeout: closed("header-timeout"),
                idle: closed("idle"),
                stalled: closed("stalled"),
                shed: closed("shed"),
                refused: closed("refused"),
            },
            plain: pair(false),
            tls: pair(true),
            read_bytes: bytes("read"),
            written_bytes: bytes("write"),
            handshakes_ok: handshakes("ok"),
            handshakes_failed: handshakes("failed"),
            plaintext_refused: handshakes("plaintext_refused"),
        }
    }
}

/// Opaque TCP streams, per service and peer. Their bytes are series of
/// `remora_bytes_total` beside the listeners'.
#[derive(Clone, Debug, Default)]
pub struct TcpMetrics {
    pub open: Family<StreamLabels, Gauge>,
    pub total: Family<StreamLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
}

/// The series of one stream, resolved once when it opens.
pub struct StreamMetrics {
    pub open: Gauge,
    pub total: Counter,
    pub read: Counter,
    pub written: Counter,
}

impl TcpMetrics {
    pub fn stream(&self, labels: StreamLabels) -> StreamMetrics {
        let bytes = |rw| {
            self.bytes.get_or_create_owned(&BytesLabels {
                direction: labels.direction,
                rw,
                stream: Some(labels.clone()),
            })
        };
        StreamMetrics {
            read: bytes("read"),
            written: bytes("write"),
            open: self.open.get_or_create_owned(&labels),
            total: self.total.get_or_create_owned(&labels),
        }
    }
}

/// Everything the proxy records, created once and passed down.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub http: HttpMetrics,
    pub transport: TransportMetrics,
    pub tcp: TcpMetrics,
    /// Config reloads by result (`ok`, `error`).
    pub config_reloads: Family<ResultLabels, Counter>,
    pub control: ControlMetrics,
    /// When this proxy's certificate expires, in Unix seconds.
    pub identity_expiry: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("remora");
        let http = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            timeouts: Family::default(),
            ejections: Family::default(),
            rate_limited: Family::default(),
            authz_denied: Family::default(),
        };
        r.register("requests", "Requests by outcome", http.requests.clone());
        r.register(
            "request_duration_seconds",
            "Time from the request to its response headers",
            http.duration.clone(),
        );
        r.register(
            "retries",
            "Retries sent, by the reason for retrying",
            http.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries not sent because the retry budget was spent",
            http.budget_exhausted.clone(),
        );
        r.register(
            "timeouts",
            "Requests that ran out of time",
            http.timeouts.clone(),
        );
        r.register(
            "circuit_breaker_ejections",
            "Endpoints ejected after consecutive failures",
            http.ejections.clone(),
        );
        r.register(
            "rate_limited",
            "Inbound requests refused by the service's rate limit",
            http.rate_limited.clone(),
        );
        r.register(
            "authz_denied",
            "Inbound requests refused by the service's allow list, by caller",
            http.authz_denied.clone(),
        );
        let transport = TransportMetrics::default();
        r.register(
            "connections_open",
            "Connections open now",
            transport.open.clone(),
        );
        r.register(
            "connections",
            "Connections accepted or opened",
            transport.total.clone(),
        );
        r.register(
            "bytes",
            "Bytes read and written on proxied connections",
            transport.bytes.clone(),
        );
        r.register(
            "connections_closed",
            "Connections a traffic listener closed by its limits, by reason",
            transport.closed.clone(),
        );
        r.register(
            "tls_handshakes",
            "Inbound connections by how their TLS handshake ended",
            transport.handshakes.clone(),
        );
        let tcp = TcpMetrics {
            bytes: transport.bytes.clone(),
            ..TcpMetrics::default()
        };
        r.register(
            "tcp_connections_open",
            "Opaque TCP streams open now, by service and peer",
            tcp.open.clone(),
        );
        r.register(
            "tcp_connections",
            "Opaque TCP streams opened, by service and peer",
            tcp.total.clone(),
        );
        let config_reloads = Family::default();
        r.register(
            "config_reloads",
            "Config reloads by result",
            config_reloads.clone(),
        );
        let control = ControlMetrics::default();
        r.register(
            "control_updates",
            "Views received from the control plane, and registrations made",
            control.updates.clone(),
        );
        r.register(
            "control_connected",
            "Whether the latest exchange with the control plane succeeded",
            control.connected.clone(),
        );
        let identity_expiry = Gauge::default();
        r.register(
            "identity_expiry_timestamp_seconds",
            "When this proxy's certificate expires (Unix seconds); 0 without one",
            identity_expiry.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            identity_expiry,
            registry,
            http,
            transport,
            tcp,
            config_reloads,
            control,
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        encode_openmetrics(&self.registry)
    }

    /// The registry in the classic Prometheus text format (0.0.4).
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_contract_names() {
        let m = Metrics::new();
        let route = RouteLabels::new(Direction::Outbound, "orders", "default");
        m.http
            .requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status_code: 200,
                classification: Classification::Success,
                tls: false,
                peer: "unmeshed".into(),
            })
            .inc();
        m.http.timeouts.get_or_create(&route).inc();
        let text = m.encode();
        assert!(text.contains(
            "remora_requests_total{direction=\"outbound\",service=\"orders\",route=\"default\",status_code=\"200\",classification=\"success\",tls=\"false\",peer=\"unmeshed\"} 1"
        ), "{text}");
        assert!(text.contains("remora_timeouts_total{"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.http
            .timeouts
            .get_or_create(&RouteLabels::new(Direction::Inbound, "app", "inbound"))
            .inc();
        let text = m.encode_prometheus();
        assert!(
            text.contains("# TYPE remora_timeouts_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP remora_timeouts_total "), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
