//! The control plane's one metrics registry and its metric families
//! (docs/metrics.md). Label sets are fixed strings; the per-resource
//! handles are resolved once, so a long-poll records without a lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use remora_server::metrics::{ProcessCollector, ResultLabels};

use crate::state::Kind;

/// Push latency buckets in seconds: from a wakeup on an idle process to a
/// machine too busy to keep up.
const PUSH_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `outbound`, `inbound`, `registrations`, `services` or `other`.
    pub resource: &'static str,
    pub status_code: u16,
}

/// What a watch of the Kubernetes API saw: `kind` is `services`,
/// `endpointslices` or `pods`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubernetesEventLabels {
    pub kind: &'static str,
    /// `listed` (a whole list, the first or a relist), `applied`,
    /// `deleted`, `expired` (410 Gone: listed again), `failed` (retried
    /// with backoff).
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubernetesKindLabels {
    pub kind: &'static str,
}

/// The Kubernetes source's health, for `--kubernetes`.
#[derive(Clone, Debug, Default)]
pub struct KubernetesMetrics {
    pub events: Family<KubernetesEventLabels, Counter>,
    /// Objects of each kind known now, in every watched namespace.
    pub objects: Family<KubernetesKindLabels, Gauge>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn push_histogram() -> Histogram {
    Histogram::new(PUSH_BUCKETS)
}

/// The metrics of one kind of view, resolved once.
#[derive(Clone, Debug)]
pub struct ViewMetrics {
    /// Time from a view's publication to its delivery to a held watcher.
    pub push: Histogram,
    /// Long-polls held now.
    pub watches: Gauge,
}

/// Everything the control plane records, created once and passed down.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Config reloads by result (`ok`, `error`), counted by the file source.
    pub config_reloads: Family<ResultLabels, Counter>,
    pub push: HistogramFamily<ResourceLabels>,
    pub watches: Family<ResourceLabels, Gauge>,
    /// Registrations alive now.
    pub registrations: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub kubernetes: KubernetesMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("remora");
        let config_reloads = Family::default();
        r.register(
            "config_reloads",
            "Config reloads by result",
            config_reloads.clone(),
        );
        let push: HistogramFamily<ResourceLabels> = Family::new_with_constructor(push_histogram);
        r.register(
            "control_push_seconds",
            "Time from a view's change to its delivery to a held long-poll",
            push.clone(),
        );
        let watches = Family::default();
        r.register(
            "control_watches",
            "Long-polls held now, waiting for a change",
            watches.clone(),
        );
        let registrations = Gauge::default();
        r.register(
            "control_registrations",
            "Registered endpoints alive now",
            registrations.clone(),
        );
        let requests = Family::default();
        r.register(
            "control_requests",
            "API requests answered, by resource and status",
            requests.clone(),
        );
        let kubernetes = KubernetesMetrics::default();
        r.register(
            "control_kubernetes_events",
            "What the watches of the Kubernetes API saw, by kind and event",
            kubernetes.events.clone(),
        );
        r.register(
            "control_kubernetes_objects",
            "Objects of each kind the Kubernetes watches know now",
            kubernetes.objects.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            config_reloads,
            push,
            watches,
            registrations,
            requests,
            kubernetes,
        }
    }

    /// The handles of one kind of view; its series exist from now on.
    pub fn view(&self, kind: Kind) -> ViewMetrics {
        let labels = ResourceLabels {
            resource: kind.as_str(),
        };
        ViewMetrics {
            push: self.push.get_or_create_owned(&labels),
            watches: self.watches.get_or_create_owned(&labels),
        }
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
    use remora_server::metrics::{encode_openmetrics, to_prometheus_text};

    #[test]
    fn encodes_the_contract_names() {
        let m = Metrics::new();
        let outbound = m.view(Kind::Outbound);
        outbound.push.observe(0.002);
        outbound.watches.inc();
        m.registrations.set(3);
        m.requests
            .get_or_create(&RequestLabels {
                resource: "outbound",
                status_code: 304,
            })
            .inc();
        let text = to_prometheus_text(&encode_openmetrics(&m.registry));
        for line in [
            "# TYPE remora_control_push_seconds histogram",
            "remora_control_push_seconds_bucket{le=\"0.0025\",resource=\"outbound\"} 1",
            "remora_control_watches{resource=\"outbound\"} 1",
            "remora_control_registrations 3",
            "# TYPE remora_control_requests_total counter",
            "remora_control_requests_total{resource=\"outbound\",status_code=\"304\"} 1",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
