//! Active health checks: every endpoint of a service with a `health_check`
//! is sent `GET path` each `interval`; `unhealthy_after` failures in a row
//! take it out of balancing, `healthy_after` passes bring it back. Probes
//! follow the live view: a new config starts and stops them as needed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{header, Request};
use remora_api::HealthCheck;
use tokio::task::AbortHandle;

use super::balance::Endpoint;
use super::snapshot::Snapshot;
use crate::http::client::{ClientSettings, Clients, HttpClient};
use crate::http::empty;
use crate::http::version::{ORIG_PROTO, ORIG_PROTO_HTTP1};

/// One probe loop: what it checks, for which service, on which endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ProbeKey {
    service: String,
    endpoint: SocketAddr,
    check: HealthCheck,
}

#[derive(Default)]
pub struct HealthChecks {
    probes: Mutex<HashMap<ProbeKey, AbortHandle>>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        let probes = self.probes.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, probe) in probes.drain() {
            probe.abort();
        }
    }
}

impl HealthChecks {
    /// Starts the probes `snapshot` asks for and stops the others.
    pub fn sync(&self, snapshot: &Snapshot, clients: &Clients) {
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
        probes.retain(|key, probe| {
            let keep = wanted.contains_key(key);
            if !keep {
                probe.abort();
            }
            keep
        });
        for (key, endpoint) in wanted {
            if probes.contains_key(&key) {
                continue;
            }
            let settings = |http2| ClientSettings {
                connect_timeout: key.check.timeout.get(),
                idle_timeout: key.check.interval.get() * 2,
                http2,
            };
            // A meshed endpoint is probed as it is called: over mutual TLS.
            let meshed = endpoint
                .identity
                .as_ref()
                .and_then(|id| clients.mesh(settings(true), id));
            let probe = match meshed {
                Some(client) => Prober {
                    client,
                    meshed: true,
                },
                None => Prober {
                    client: clients.get(settings(false)),
                    meshed: false,
                },
            };
            let task = tokio::spawn(probe_loop(key.clone(), endpoint, probe));
            probes.insert(key, task.abort_handle());
        }
    }
}

/// The client a probe goes through, and whether it is a mutual-TLS one.
struct Prober {
    client: HttpClient,
    meshed: bool,
}

async fn probe_loop(key: ProbeKey, endpoint: Arc<Endpoint>, client: Prober) {
    let check = &key.check;
    let uri = format!("http://{}{}", key.endpoint, check.path);
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut interval = tokio::time::interval(check.interval.get());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let outcome = probe(&client, &uri, &key.service, check).await;
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

/// One probe: a 2xx within the timeout passes.
async fn probe(
    prober: &Prober,
    uri: &str,
    service: &str,
    check: &HealthCheck,
) -> Result<(), String> {
    let mut request = Request::get(uri)
        .header(header::HOST, service)
        .header(header::USER_AGENT, "remora-health-check");
    if prober.meshed {
        // As the outbound carries an app's HTTP/1.1 request.
        request = request
            .version(http::Version::HTTP_2)
            .header(ORIG_PROTO, ORIG_PROTO_HTTP1);
    }
    let request = request.body(empty()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(check.timeout.get(), prober.client.request(request)).await {
        Err(_) => Err(format!("no response within {}", check.timeout)),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("status {}", response.status())),
    }
}
