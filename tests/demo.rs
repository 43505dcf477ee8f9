//! `remora-control demo`, the README's first command: a control plane and
//! the shop's five services, each behind its own real `remora-proxy`,
//! report the mesh's numbers each second, and nothing they started is left
//! running when the demo ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use remora_e2e::process::binary;
use tokio::process::Command;

const SERVICES: [&str; 5] = ["gateway", "orders", "users", "products", "inventory"];
/// The demo sends traffic for 8s; starting and stopping take a few more.
/// Generous for a slow machine running tests in parallel.
const EXIT_LIMIT: Duration = Duration::from_secs(90);
/// Lines from this second on are past the start of traffic.
const LATER_FROM_SECOND: u64 = 3;

/// One per-second line: `  5s  orders   40.0   97.5%   2.1ms   9.8ms   100%`.
#[derive(Debug)]
struct Report {
    second: u64,
    rps: f64,
    /// `None` when the service answered nothing that second.
    success: Option<f64>,
    /// The share of requests that came over mutual TLS.
    mutual_tls: Option<f64>,
}

fn reports(stdout: &str) -> BTreeMap<&str, Vec<Report>> {
    let mut by_service: BTreeMap<&str, Vec<Report>> = BTreeMap::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [time, service, rps, success, _p50, _p99, mutual_tls] = fields[..] else {
            continue;
        };
        let (Some(second), true) = (
            time.strip_suffix('s').and_then(|s| s.parse().ok()),
            SERVICES.contains(&service),
        ) else {
            continue;
        };
        by_service.entry(service).or_default().push(Report {
            second,
            rps: rps.parse().unwrap_or_else(|_| panic!("rps in {line:?}")),
            success: percentage(success),
            mutual_tls: percentage(mutual_tls),
        });
    }
    by_service
}

fn percentage(text: &str) -> Option<f64> {
    text.strip_suffix('%')
        .map(|s| s.parse::<f64>().expect("a percentage") / 100.0)
}

/// Every `127.0.0.1:PORT` the demo printed.
fn addresses(stdout: &str) -> Vec<SocketAddr> {
    let mut found: Vec<SocketAddr> = stdout
        .match_indices("127.0.0.1:")
        .filter_map(|(at, prefix)| {
            let port: String = stdout[at + prefix.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            format!("{prefix}{port}").parse().ok()
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

#[tokio::test]
async fn the_demo_reports_every_service_then_stops_everything_it_started() {
    // The demo runs the proxy and the shop from beside remora-control:
    // make sure those are current too.
    binary("remora-proxy");
    binary("remora-shop");
    let dir = tempfile::tempdir().expect("a temp dir");
    let child = Command::new(binary("remora-control"))
        .args(["demo", "--duration", "8s", "--rps", "40", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting remora-control demo");
    let output = tokio::time::timeout(EXIT_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the demo did not end within {EXIT_LIMIT:?}"))
        .expect("waiting for the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(output.status.success(), "{}\n{context}", output.status);
    assert!(
        stdout.contains("every process it started has stopped"),
        "{context}"
    );

    let reports = reports(&stdout);
    let mut rates = BTreeMap::new();
    for service in SERVICES {
        let later: Vec<&Report> = reports
            .get(service)
            .map(|r| r.iter().filter(|r| r.second >= LATER_FROM_SECOND).collect())
            .unwrap_or_default();
        assert!(
            later.len() >= 3,
            "{service}: fewer than 3 reports from second {LATER_FROM_SECOND}\n{context}"
        );
        // The shoppers call the gateway in plaintext; every other call is
        // between sidecars, over mutual TLS.
        let mutual_tls = if service == "gateway" { 0.0 } else { 1.0 };
        for r in &later {
            assert!(
                r.rps > 0.0 && r.success.is_some(),
                "{service}: {r:?}\n{context}"
            );
            assert_eq!(
                r.mutual_tls,
                Some(mutual_tls),
                "{service}: {r:?}\n{context}"
            );
        }
        // Over the later seconds, weighted by each second's requests.
        let requests: f64 = later.iter().map(|r| r.rps).sum();
        let successes: f64 = later.iter().map(|r| r.rps * r.success.unwrap_or(0.0)).sum();
        let success = successes / requests;
        assert!(success > 0.9, "{service}: success {success}\n{context}");
        rates.insert(service, (requests, success));
    }
    // Each visit to the shop asks products twice (the gateway, then
    // orders) and users once: the lines are the mesh's, not the traffic's.
    let (gateway, _) = rates["gateway"];
    assert!(rates["products"].0 > 1.5 * gateway, "{rates:?}\n{context}");
    assert!(rates["users"].0 > 0.5 * gateway, "{rates:?}\n{context}");
    // The injected failures of inventory calls show at orders, and the
    // gateway's sidecar retries them: its shoppers hardly see them.
    let orders_failed = reports["orders"]
        .iter()
        .any(|r| r.success.is_some_and(|s| s < 1.0));
    assert!(
        orders_failed,
        "no injected failure showed at orders\n{context}"
    );
    assert!(rates["gateway"].1 > 0.98, "{rates:?}\n{context}");

    // Every log the demo announced, and no process left: nothing accepts
    // connections at any address it printed.
    for process in [
        "control-plane",
        "gateway-proxy",
        "gateway-app",
        "inventory-app",
    ] {
        let log = dir.path().join(format!("{process}.log"));
        assert!(log.exists(), "no {}\n{context}", log.display());
    }
    let printed = addresses(&stdout);
    assert!(
        printed.len() >= 2 + 3 * SERVICES.len(),
        "{printed:?}\n{context}"
    );
    for address in printed {
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "{address} still accepts connections after the demo ended\n{context}"
        );
    }
}
