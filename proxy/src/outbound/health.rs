//! Active health checks: every endpoint of a service with a `health_check`
//! is sent `GET path` each `interval`; `unhealthy_after` failures in a row
//! take it out of balancing, `healthy_after` passes bring it back. Probes
//! follow the live view: a new config starts and stops them as needed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::uri::Authority;
use http::{header, HeaderMap, HeaderValue, Method, Request, Uri};
use remora_api::HealthCheck;
use tokio::task::AbortHandle;

use super::balance::Endpoint;
use super::snapshot::Snapshot;
use crate::http::empty;

/// One probe loop: what it checks, for which service, on which endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ProbeKey {
    service: String,
    endpoint: SocketAddr,
    check: HealthCheck,
}

/// A running probe loop and the endpoint whose health it sets.
struct Probe {
    task: AbortHandle,
    endpoint: Arc<Endpoint>,
}

#[derive(Default)]
pub struct HealthChecks {
    probes: Mutex<HashMap<ProbeKey, Probe>>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        let probes = self.probes.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, probe) in probes.drain() {
            probe.task.abort();
        }
    }
}

impl HealthChecks {
    /// Starts the probes `snapshot` asks for and stops the others.
    pub fn sync(&self, snapshot: &Snapshot) {
        let mut wanted: HashMap<ProbeKey, Arc<Endpoint>> = HashMap::new();
        for (name, service) in &snapshot.services {
            let Some(check) = &service.health_check else {
                continue;
            };
            for endpoint in &service.endpoints {
                let key = ProbeKey {
                    service: name.clone(),
                    endpoint: endpoint.address,
                    check: check.clone(),
                };
                wanted.insert(key, endpoint.clone());
            }
        }
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        // A probe stays while its endpoint is the same one: a reload that
        // changed the endpoint's settings made a new one to probe.
        probes.retain(|key, probe| {
            let keep = wanted
                .get(key)
                .is_some_and(|e| Arc::ptr_eq(e, &probe.endpoint));
            if !keep {
                probe.task.abort();
            }
            keep
        });
        for (key, endpoint) in wanted {
            if probes.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe_loop(key.clone(), endpoint.clone()));
            let task = task.abort_handle();
            probes.insert(key, Probe { task, endpoint });
        }
    }
}

async fn probe_loop(key: ProbeKey, endpoint: Arc<Endpoint>) {
    let check = &key.check;
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut interval = tokio::time::interval(check.interval.get());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let outcome = probe(&endpoint, &key.service, check).await;
        match outcome {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if passes >= check.healthy_after && endpoint.set_healthy(true) {
                    tracing::info!(service = %key.service, endpoint = %key.endpoint, "endpoint healthy again");
                }
            }
            Err(reason) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if failures >= check.unhealthy_after && endpoint.set_healthy(false) {
                    tracing::warn!(service = %key.service, endpoint = %key.endpoint, path = %check.path, reason, "endpoint unhealthy");
                }
            }
        }
    }
}

/// One probe: a 2xx within the timeout passes. It goes as a request
/// would: through the endpoint's pool, in its protocol, over mutual TLS
/// to a meshed endpoint.
async fn probe(endpoint: &Endpoint, service: &str, check: &HealthCheck) -> Result<(), String> {
    let uri = Uri::try_from(check.path.as_str()).map_err(|e| e.to_string())?;
    let authority = Authority::try_from(service).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("remora-health-check"),
    );
    let head = endpoint.request_head(&Method::GET, &uri, &authority, headers);
    let request = Request::from_parts(head, empty());
    match tokio::time::timeout(check.timeout.get(), endpoint.client.request(request)).await {
        Err(_) => Err(format!("no response within {}", check.timeout)),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("status {}", response.status())),
    }
}
