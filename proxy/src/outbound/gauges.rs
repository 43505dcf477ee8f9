//! `remora_endpoints{direction, service, state}`: the endpoints of each
//! service by state (healthy, ejected, unhealthy), counted from the live
//! view at scrape time so that the gauge can never disagree with it.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::balance::Endpoint;
use super::Outbound;

/// The collector, registered once with the registry; it reads the
/// outbound's current snapshot on each scrape.
#[derive(Debug)]
pub struct EndpointGauges(pub Arc<Outbound>);

impl Collector for EndpointGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.0.snapshot();
        let mut family = encoder.encode_descriptor(
            "remora_endpoints",
            "Endpoints of each service by state",
            None,
            MetricType::Gauge,
        )?;
        let now = Instant::now();
        let mut names: Vec<&String> = snapshot.services.keys().collect();
        names.sort();
        for name in names {
            let service = &snapshot.services[name];
            let count = |f: &dyn Fn(&Endpoint) -> bool| {
                service.endpoints.iter().filter(|e| f(e)).count() as i64
            };
            let unhealthy = count(&|e| !e.is_healthy());
            let ejected = count(&|e| e.is_healthy() && e.breaker.is_ejected(now));
            let healthy = service.endpoints.len() as i64 - unhealthy - ejected;
            let states = [
                ("healthy", healthy),
                ("ejected", ejected),
                ("unhealthy", unhealthy),
            ];
            for (state, n) in states {
                let labels = [
                    ("direction", "outbound"),
                    ("service", name.as_str()),
                    ("state", state),
                ];
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use remora_api::CircuitBreaker;

    use super::*;
    use crate::http::client::Clients;
    use crate::metrics::Metrics;
    use crate::outbound::balance::EndpointRegistry;
    use crate::outbound::breaker::Fault;
    use crate::outbound::snapshot::Compiler;

    #[tokio::test]
    async fn endpoints_are_counted_by_state_at_scrape_time() {
        let mesh = remora_api::parse_mesh(
            "test",
            "services:
  web:
    endpoints:
      - { address: 127.0.0.1:1 }
      - { address: 127.0.0.1:2 }
      - { address: 127.0.0.1:3 }
      - { address: 127.0.0.1:4 }
",
        )
        .unwrap();
        let (endpoints, clients) = (EndpointRegistry::default(), Clients::default());
        let compiler = Compiler {
            endpoints: &endpoints,
            clients: &clients,
            previous: None,
        };
        let outbound = Arc::new(Outbound::new(
            Metrics::new().http,
            std::time::Duration::from_secs(300),
        ));
        outbound.update(compiler.compile(&mesh));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EndpointGauges(outbound.clone())));
        let gauge = |text: &str, state: &str| {
            let sample = format!(
                "remora_endpoints{{direction=\"outbound\",service=\"web\",state=\"{state}\"}} "
            );
            let line = text.lines().find(|l| l.starts_with(&sample));
            line.and_then(|l| l[sample.len()..].parse::<i64>().ok())
        };

        let text = remora_server::metrics::encode_openmetrics(&registry);
        assert_eq!(gauge(&text, "healthy"), Some(4), "{text}");

        let snapshot = outbound.snapshot();
        let web = &snapshot.services["web"].endpoints;
        let policy = CircuitBreaker {
            consecutive_failures: 1,
            ..CircuitBreaker::default()
        };
        web[0].set_healthy(false);
        assert!(web[1]
            .breaker
            .record_failure(Some(&policy), Fault::Failed, true, Instant::now()));
        // Unhealthy wins over ejected: an endpoint is counted once.
        web[0]
            .breaker
            .record_failure(Some(&policy), Fault::Failed, true, Instant::now());
        let text = remora_server::metrics::encode_openmetrics(&registry);
        assert_eq!(gauge(&text, "healthy"), Some(2), "{text}");
        assert_eq!(gauge(&text, "ejected"), Some(1), "{text}");
        assert_eq!(gauge(&text, "unhealthy"), Some(1), "{text}");
    }
}
