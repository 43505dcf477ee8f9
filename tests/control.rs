//! The control plane, driven through the real `remora-control` binary:
//! `check`, hot reload (rename and ConfigMap symlink swap), bad edits,
//! registrations with TTLs, long-poll views over HTTP/1.1 and HTTP/2,
//! exact wakeups, metrics, shutdown, and ten thousand held watches.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_e2e::process::binary;
use remora_e2e::promtool::{have_promtool, promtool_check};
use remora_e2e::{
    eventually, metric_value, split_mesh, Client, ControlPlane, Proxy, Reply, Upstream,
};
use serde_json::Value;

const MESH: &str = "\
services:
  orders:
    identity: orders
    routes:
      - name: split
        split: [ { weight: 9 }, { service: orders-next, weight: 1 } ]
  orders-next:
    endpoints: [ { address: 127.0.0.1:9101, labels: { version: v2 } } ]
  users:
    endpoints: [ { address: 127.0.0.1:9201 } ]
    inbound: { mtls: permissive, allow: [frontend] }
";

/// `GET BASE/v1/RESOURCE?wait=WAIT[&version=V]` over `client`.
async fn poll_with(
    client: &Client,
    base: &str,
    resource: &str,
    version: Option<u64>,
    wait: &str,
) -> Reply {
    let mut url = format!("{base}/v1/{resource}?wait={wait}");
    if let Some(v) = version {
        url.push_str(&format!("&version={v}"));
    }
    client
        .get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

async fn poll(cp: &ControlPlane, resource: &str, version: Option<u64>, wait: &str) -> Reply {
    poll_with(&Client::http1(), &cp.url(), resource, version, wait).await
}

/// A long-poll running in its own task; `join` gives its reply and how
/// long it took.
struct Held(tokio::task::JoinHandle<(Reply, Duration)>);

impl Held {
    fn start(client: &Client, cp: &ControlPlane, resource: &str, version: u64, wait: &str) -> Held {
        let (client, base, resource, wait) = (
            client.clone(),
            cp.url(),
            resource.to_string(),
            wait.to_string(),
        );
        Held(tokio::spawn(async move {
            let start = Instant::now();
            let r = poll_with(&client, &base, &resource, Some(version), &wait).await;
            (r, start.elapsed())
        }))
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    async fn join(self) -> (Reply, Duration) {
        tokio::time::timeout(Duration::from_secs(40), self.0)
            .await
            .expect("a held poll ends within its wait")
            .expect("the poll task")
    }
}

/// The current version of `resource` (which must exist).
async fn version_of(cp: &ControlPlane, resource: &str) -> u64 {
    let r = poll(cp, resource, None, "0s").await;
    assert_eq!(r.status, 200, "{resource}: {}", r.text());
    version(&r)
}

fn version(r: &Reply) -> u64 {
    r.header("remora-version")
        .unwrap_or_else(|| panic!("no remora-version in {:?}", r.headers))
        .parse()
        .expect("a numeric version")
}

fn json(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// Waits until the control plane holds `n` long-polls of `resource`.
async fn wait_for_watches(cp: &ControlPlane, resource: &str, n: f64) {
    let series = format!("remora_control_watches{{resource=\"{resource}\"}}");
    eventually(
        Duration::from_secs(60),
        &format!("{n} held {resource} polls"),
        || async { metric_value(&cp.metrics().await, &series) == n },
    )
    .await;
}

/// Runs `remora-control ARGS` in `dir`; its status, stdout and stderr.
async fn run_control(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(binary("remora-control"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running remora-control");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_prints_every_problem_with_its_place_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "\
services:
  orders:
    timeout: 1s
    retry: { per_try_timeout: 2s }
    endpoints: [ { address: 127.0.0.1:9001, labels: { version: v1 } } ]
    routes:
      - split: [ { labels: { version: v3 } }, { service: nowhere } ]
      - split: [ { service: orders } ]
  Billing: {}
",
    )
    .unwrap();
    let (status, stdout, _) = run_control(dir.path(), &["check", "mesh.yaml"]).await;
    assert_eq!(status, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    // The per-try timeout longer than the service's timeout (line 4) is
    // only a note, and a refused file's output is its problems alone.
    let expected = [
        "mesh.yaml:9:3: services.Billing: \"Billing\" is not a valid service name",
        "mesh.yaml:7:20: services.orders.routes[0].split[0].labels: no static endpoint of \"orders\" has the labels version=v3; endpoints registered at run time are not considered",
        "mesh.yaml:7:49: services.orders.routes[0].split[1].service: no service named \"nowhere\" in this mesh",
        "mesh.yaml:8:20: services.orders.routes[1].split[0].service: \"orders\" is this route's own service",
    ];
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(want),
            "expected {want:?}\n     got {line:?}"
        );
    }

    // A service given twice: the second would silently replace the first.
    std::fs::write(
        dir.path().join("twice.yaml"),
        "services:\n  orders: {}\n  users: {}\n  orders:\n    timeout: 1s\n",
    )
    .unwrap();
    let (status, stdout, _) = run_control(dir.path(), &["check", "twice.yaml"]).await;
    assert_eq!(status, Some(1));
    assert!(
        stdout
            .starts_with("twice.yaml:4:3: services.orders: given twice in one map (first at 2:3)"),
        "{stdout}"
    );

    // A syntax error names its place too.
    std::fs::write(
        dir.path().join("syntax.yaml"),
        "services:\n  orders:\n    timeuot: 1s\n",
    )
    .unwrap();
    let (status, stdout, _) = run_control(dir.path(), &["check", "syntax.yaml"]).await;
    assert_eq!(status, Some(1));
    assert!(
        stdout.starts_with("syntax.yaml:3:5: services.orders: unknown field `timeuot`"),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_summarises_a_good_file_and_refuses_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let (status, stdout, stderr) = run_control(dir.path(), &["check", "mesh.yaml"]).await;
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "mesh.yaml: ok: 3 services, 1 route, 2 endpoints\n");

    let (status, stdout, stderr) = run_control(dir.path(), &["check", "absent.yaml"]).await;
    assert_eq!(status, Some(1), "{stdout}");
    assert!(
        stderr.contains("absent.yaml: cannot read the file: No such file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_and_start_refuse_a_file_that_does_not_say_what_services_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let no_mesh = "mesh.yaml: the file holds no mesh: it is empty or only comments; a mesh with no services says so: `services: {}`";
    for (text, problem) in [
        ("", no_mesh),
        ("# services:\n#   orders: {}\n", no_mesh),
        (
            "trust_domain: cluster.local\n",
            "mesh.yaml: services: not given; a mesh with no services says so: `services: {}`",
        ),
    ] {
        std::fs::write(dir.path().join("mesh.yaml"), text).unwrap();
        let (status, stdout, stderr) = run_control(dir.path(), &["check", "mesh.yaml"]).await;
        assert_eq!(
            (status, stdout.as_str()),
            (Some(1), format!("{problem}\n").as_str()),
            "{text:?}: {stderr}"
        );

        let (status, _, stderr) = run_control(
            dir.path(),
            &[
                "--config",
                "mesh.yaml",
                "--api",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ],
        )
        .await;
        assert_eq!(status, Some(1), "{text:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the mesh config mesh.yaml has problems: {problem}"
            )),
            "{text:?}: {stderr}"
        );
    }

    std::fs::write(dir.path().join("mesh.yaml"), "services: {}\n").unwrap();
    let (status, stdout, stderr) = run_control(dir.path(), &["check", "mesh.yaml"]).await;
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "mesh.yaml: ok: 0 services, 0 routes, 0 endpoints\n");
}

#[tokio::test]
async fn a_bad_config_at_start_is_refused_with_its_problems() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "services:\n  a:\n    routes: [ { split: [ { service: b } ] } ]\n",
    )
    .unwrap();
    let (status, _, stderr) = run_control(
        dir.path(),
        &[
            "--config",
            "mesh.yaml",
            "--api",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    )
    .await;
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "mesh.yaml:3:28: services.a.routes[0].split[0].service: no service named \"b\""
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_outbound_view_holds_the_service_and_its_split_targets() {
    let cp = ControlPlane::start(MESH).await;
    let r = poll(&cp, "outbound/orders", None, "0s").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let view = json(&r);
    assert_eq!(view["service"], "orders");
    assert_eq!(view["version"].as_u64(), Some(version(&r)));
    assert_eq!(view["trust_domain"], "cluster.local");
    let services: Vec<&str> = view["services"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(services, ["orders", "orders-next"]);
    // Every default filled in.
    assert_eq!(view["services"]["orders"]["load_balancer"], "p2c-ewma");
    assert_eq!(view["services"]["orders"]["connect_timeout"], "1s");
    assert_eq!(
        view["services"]["orders-next"]["endpoints"][0]["address"],
        "127.0.0.1:9101"
    );

    let r = poll(&cp, "inbound/users", None, "0s").await;
    assert_eq!(r.status, 200);
    let view = json(&r);
    assert_eq!(view["service"], "users");
    assert_eq!(view["policy"]["mtls"], "permissive");
    assert_eq!(view["policy"]["allow"], serde_json::json!(["frontend"]));
    // The inbound policy is the inbound view's, not its callers'.
    let outbound = json(&poll(&cp, "outbound/users", None, "0s").await);
    assert!(
        outbound["services"]["users"].get("inbound").is_none(),
        "{outbound}"
    );
}

#[tokio::test]
async fn long_polls_answer_at_once_hold_then_304_or_404_and_reject_bad_queries() {
    let cp = ControlPlane::start(MESH).await;
    let v = version_of(&cp, "outbound/users").await;
    // Any other version: at once.
    let r = poll(&cp, "outbound/users", Some(v - 1), "20s").await;
    assert_eq!((r.status, version(&r)), (StatusCode::OK, v));

    // The current version: held for the wait, then 304 with no body.
    let start = Instant::now();
    let r = poll(&cp, "outbound/users", Some(v), "500ms").await;
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(version(&r), v);
    assert!(r.body.is_empty());
    // The default wait is 30s: a poll without one is still held after 1s.
    let held = Held::start(&Client::http1(), &cp, "outbound/users", v, "30s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished());
    held.0.abort();

    // An unknown service: 404 after the same wait, or at once with 0s.
    let start = Instant::now();
    let r = poll(&cp, "outbound/billing", None, "500ms").await;
    assert!(start.elapsed() >= Duration::from_millis(450));
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        json(&r)["error"].as_str().unwrap().contains("billing"),
        "{}",
        r.text()
    );
    let r = poll(&cp, "inbound/billing", None, "0s").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bad queries and names.
    for path in [
        "/v1/outbound/users?version=abc",
        "/v1/outbound/users?version=-1",
        "/v1/outbound/users?wait=5",
        "/v1/outbound/users?wait=soon",
        "/v1/outbound/Users?wait=0s",
        "/v1/inbound/no_such?wait=0s",
    ] {
        let r = cp.get(path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(json(&r)["error"].is_string(), "{path}: {}", r.text());
    }
    let r = cp.get("/v1/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_change_wakes_exactly_the_watchers_of_what_it_changed() {
    let cp = ControlPlane::start(MESH).await;
    let client = Client::http1();
    let mut versions = std::collections::HashMap::new();
    for resource in [
        "outbound/orders",
        "outbound/orders-next",
        "outbound/users",
        "inbound/orders-next",
    ] {
        versions.insert(resource, version_of(&cp, resource).await);
    }
    let orders = Held::start(
        &client,
        &cp,
        "outbound/orders",
        versions["outbound/orders"],
        "25s",
    );
    let next = Held::start(
        &client,
        &cp,
        "outbound/orders-next",
        versions["outbound/orders-next"],
        "25s",
    );
    let users = Held::start(
        &client,
        &cp,
        "outbound/users",
        versions["outbound/users"],
        "3s",
    );
    let next_in = Held::start(
        &client,
        &cp,
        "inbound/orders-next",
        versions["inbound/orders-next"],
        "3s",
    );
    wait_for_watches(&cp, "outbound", 3.0).await;
    wait_for_watches(&cp, "inbound", 1.0).await;

    // A new endpoint of orders-next changes its outbound view and that of
    // orders, which splits to it; nothing else.
    let r = cp
        .register(
            "orders-next",
            "pod-1",
            r#"{"address": "127.0.0.1:4143", "labels": {"version": "v3"}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (held, resource) in [(orders, "outbound/orders"), (next, "outbound/orders-next")] {
        let (r, took) = held.join().await;
        assert_eq!(r.status, 200, "{resource}: {}", r.text());
        assert!(took < Duration::from_secs(20), "{resource} took {took:?}");
        assert!(version(&r) > versions[resource]);
        let endpoints = &json(&r)["services"]["orders-next"]["endpoints"];
        assert_eq!(
            endpoints[1]["address"], "127.0.0.1:4143",
            "{resource}: {endpoints}"
        );
    }
    for (held, resource) in [(users, "outbound/users"), (next_in, "inbound/orders-next")] {
        let (r, took) = held.join().await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{resource}: {}",
            r.text()
        );
        assert!(
            took >= Duration::from_millis(2900),
            "{resource} answered after {took:?}"
        );
        assert_eq!(version(&r), versions[resource]);
    }
}

#[tokio::test]
async fn an_unknown_service_that_appears_wakes_its_held_polls() {
    let cp = ControlPlane::start(MESH).await;
    let client = Client::http1();
    // Version 0: the caller has nothing.
    let billing = Held::start(&client, &cp, "outbound/billing", 0, "25s");
    let payments = Held::start(&client, &cp, "inbound/payments", 0, "25s");
    wait_for_watches(&cp, "outbound", 1.0).await;
    wait_for_watches(&cp, "inbound", 1.0).await;

    // By registration.
    let r = cp
        .register("billing", "b-1", r#"{"address": "127.0.0.1:7001"}"#)
        .await;
    assert_eq!(r.status, 200);
    let (r, took) = billing.join().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took < Duration::from_secs(20), "{took:?}");
    let view = json(&r);
    assert_eq!(
        view["services"]["billing"]["endpoints"][0]["address"],
        "127.0.0.1:7001"
    );
    // Every default, as if the file said `billing: {}`.
    assert_eq!(view["services"]["billing"]["protocol"], "http");

    // By a file edit.
    cp.write_config(&format!(
        "{MESH}  payments:\n    inbound: {{ mtls: strict }}\n"
    ));
    let (r, took) = payments.join().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(json(&r)["policy"]["mtls"], "strict");
}

#[tokio::test]
async fn registrations_are_put_renewed_deleted_and_expire() {
    let cp = ControlPlane::start(MESH).await;
    let v0 = version_of(&cp, "outbound/orders").await;
    let held = Held::start(&Client::http1(), &cp, "outbound/orders", v0, "25s");
    wait_for_watches(&cp, "outbound", 1.0).await;

    let body = r#"{"address": "127.0.0.1:4143", "labels": {"version": "v2"}, "app_port": 8080, "ttl_seconds": 30}"#;
    let r = cp.register("orders", "pod-1", body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json(&r),
        serde_json::json!({
            "service": "orders", "instance": "pod-1", "address": "127.0.0.1:4143",
            "labels": {"version": "v2"}, "app_port": 8080, "ttl_seconds": 30
        })
    );
    let (r, _) = held.join().await;
    assert_eq!(r.status, 200);
    let v1 = version(&r);
    assert!(v1 > v0);
    let endpoint = &json(&r)["services"]["orders"]["endpoints"][0];
    assert_eq!(endpoint["address"], "127.0.0.1:4143");
    // A registered endpoint of a service with an identity carries it.
    assert_eq!(endpoint["identity"], "orders");
    assert_eq!(endpoint["labels"]["version"], "v2");
    // Where its app is, behind the sidecar at its address.
    assert_eq!(endpoint["app_port"], 8080);

    // A renewal changes no view.
    assert_eq!(cp.register("orders", "pod-1", body).await.status, 200);
    assert_eq!(version_of(&cp, "outbound/orders").await, v1);
    // The default TTL is 30s.
    let r = cp
        .register("orders", "pod-2", r#"{"address": "127.0.0.1:4144"}"#)
        .await;
    assert_eq!(json(&r)["ttl_seconds"], 30);
    assert_eq!(json(&r)["labels"], serde_json::json!({}));

    let listing = cp.services().await;
    let orders = &listing["services"]["orders"];
    assert_eq!(orders["in_config"], true);
    assert_eq!(
        orders["version"].as_u64(),
        Some(version_of(&cp, "outbound/orders").await)
    );
    let pod1 = &orders["endpoints"][0];
    assert_eq!(pod1["source"], "registration");
    assert_eq!(pod1["instance"], "pod-1");
    assert_eq!(pod1["health"], "alive");
    assert_eq!(pod1["identity"], "orders");
    assert_eq!(pod1["app_port"], 8080);
    let expires = pod1["expires_in_seconds"].as_f64().unwrap();
    assert!(expires > 0.0 && expires <= 30.0, "{expires}");
    let file = &listing["services"]["orders-next"]["endpoints"][0];
    assert_eq!(
        (file["source"].as_str(), file["health"].as_str()),
        (Some("file"), Some("static"))
    );
    assert!(file.get("instance").is_none());
    assert_eq!(
        metric_value(&cp.metrics().await, "remora_control_registrations "),
        2.0
    );

    // A short TTL, not renewed: it leaves the views soon after it expires.
    let r = cp
        .register(
            "orders",
            "short",
            r#"{"address": "127.0.0.1:4145", "ttl_seconds": 1}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let addresses = |v: &Value| -> Vec<String> {
        v["services"]["orders"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap().to_string())
            .collect()
    };
    let view = json(&poll(&cp, "outbound/orders", None, "0s").await);
    assert!(
        addresses(&view).contains(&"127.0.0.1:4145".to_string()),
        "{view}"
    );
    let start = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the short registration to expire",
        || async {
            let view = json(&poll(&cp, "outbound/orders", None, "0s").await);
            !addresses(&view).contains(&"127.0.0.1:4145".to_string())
        },
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert!(cp
        .logs()
        .iter()
        .any(|l| l.contains("registration expired") && l.contains("short")));

    // Deregistration.
    let r = cp.deregister("orders", "pod-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        cp.deregister("orders", "pod-1").await.status,
        StatusCode::NOT_FOUND
    );
    let view = json(&poll(&cp, "outbound/orders", None, "0s").await);
    assert_eq!(addresses(&view), ["127.0.0.1:4144"]);
    assert_eq!(
        metric_value(&cp.metrics().await, "remora_control_registrations "),
        1.0
    );
}

#[tokio::test]
async fn a_service_known_only_from_registrations_lives_until_its_last_endpoint_leaves() {
    let cp = ControlPlane::start_without_config().await;
    assert_eq!(poll(&cp, "outbound/billing", None, "0s").await.status, 404);
    let r = cp
        .register(
            "billing",
            "10.0.0.7-4143",
            r#"{"address": "10.0.0.7:4143", "labels": {"zone": "a"}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = poll(&cp, "outbound/billing", None, "0s").await;
    assert_eq!(r.status, 200);
    let view = json(&r);
    assert_eq!(
        view["services"]["billing"]["endpoints"][0]["labels"]["zone"],
        "a"
    );
    assert!(view["services"]["billing"]["endpoints"][0]
        .get("identity")
        .is_none());
    // Its inbound view has the default policy.
    let inbound = json(&poll(&cp, "inbound/billing", None, "0s").await);
    assert_eq!(inbound["policy"]["mtls"], "strict");
    assert_eq!(
        cp.services().await["services"]["billing"]["in_config"],
        false
    );

    // A watcher of a service that goes away hears it at once.
    let held = Held::start(
        &Client::http1(),
        &cp,
        "outbound/billing",
        version(&r),
        "25s",
    );
    wait_for_watches(&cp, "outbound", 1.0).await;
    assert_eq!(cp.deregister("billing", "10.0.0.7-4143").await.status, 200);
    let (r, took) = held.join().await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert!(took < Duration::from_secs(20));
    assert!(cp.services().await["services"].get("billing").is_none());
}

#[tokio::test]
async fn bad_registrations_are_refused_with_400() {
    let cp = ControlPlane::start(MESH).await;
    for (service, instance, body) in [
        ("orders", "pod-1", "not json"),
        ("orders", "pod-1", "{}"),
        ("orders", "pod-1", r#"{"address": "nowhere:80"}"#),
        (
            "orders",
            "pod-1",
            r#"{"address": "127.0.0.1:1", "weight": 3}"#,
        ),
        (
            "orders",
            "pod-1",
            r#"{"address": "127.0.0.1:1", "ttl_seconds": 0}"#,
        ),
        (
            "orders",
            "pod-1",
            r#"{"address": "127.0.0.1:1", "ttl_seconds": 3601}"#,
        ),
        (
            "orders",
            "pod-1",
            r#"{"address": "127.0.0.1:1", "labels": {"a": 1}}"#,
        ),
        ("Orders", "pod-1", r#"{"address": "127.0.0.1:1"}"#),
        ("orders", "pod%201", r#"{"address": "127.0.0.1:1"}"#),
        ("orders", "pod:1", r#"{"address": "127.0.0.1:1"}"#),
    ] {
        let r = cp.register(service, instance, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{service}/{instance} {body}: {}",
            r.text()
        );
        assert!(json(&r)["error"].is_string(), "{}", r.text());
    }
    let r = cp
        .register(
            "orders",
            "pod-1",
            r#"{"address": "127.0.0.1:1", "ttl_seconds": 0}"#,
        )
        .await;
    assert!(
        json(&r)["error"].as_str().unwrap().contains("ttl_seconds"),
        "{}",
        r.text()
    );
    // Nothing was registered.
    assert_eq!(
        metric_value(&cp.metrics().await, "remora_control_registrations "),
        0.0
    );
    let r = cp.get("/v1/registrations/orders/pod-1").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn an_edit_renamed_over_the_file_is_served_to_held_polls() {
    let cp = ControlPlane::start(MESH).await;
    let v0 = version_of(&cp, "outbound/users").await;
    let orders_v0 = version_of(&cp, "outbound/orders").await;
    let held = Held::start(&Client::http1(), &cp, "outbound/users", v0, "25s");
    wait_for_watches(&cp, "outbound", 1.0).await;
    cp.write_config(&MESH.replace("  users:\n", "  users:\n    timeout: 2s\n"));
    let (r, took) = held.join().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(json(&r)["services"]["users"]["timeout"], "2s");
    assert!(version(&r) > v0);
    // What the edit did not touch keeps its version.
    assert_eq!(version_of(&cp, "outbound/orders").await, orders_v0);
    eventually(
        Duration::from_secs(5),
        "the reload to be counted",
        || async {
            metric_value(
                &cp.metrics().await,
                "remora_config_reloads_total{result=\"ok\"}",
            ) == 1.0
        },
    )
    .await;

    // The same meaning written differently is reloaded, and wakes nobody.
    let v1 = version(&r);
    let held = Held::start(&Client::http1(), &cp, "outbound/users", v1, "3s");
    wait_for_watches(&cp, "outbound", 1.0).await;
    cp.write_config(&format!(
        "# reformatted\ntrust_domain: cluster.local\n{}",
        MESH.replace("  users:\n", "  users:\n    timeout: 2000ms\n")
    ));
    eventually(
        Duration::from_secs(5),
        "the second reload to be counted",
        || async {
            metric_value(
                &cp.metrics().await,
                "remora_config_reloads_total{result=\"ok\"}",
            ) == 2.0
        },
    )
    .await;
    let (r, took) = held.join().await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", r.text());
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert_eq!(version(&r), v1);
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    // The layout of a mounted ConfigMap: mesh.yaml -> ..data/mesh.yaml,
    // ..data -> ..2026_01_01_x; an update writes a new timestamped
    // directory and swaps ..data in one rename.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_01_01_a")).unwrap();
    std::fs::write(root.join("..2026_01_01_a/mesh.yaml"), MESH).unwrap();
    std::os::unix::fs::symlink("..2026_01_01_a", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/mesh.yaml", root.join("mesh.yaml")).unwrap();
    let config_path = root.join("mesh.yaml");
    let cp = ControlPlane::start_from(dir, config_path.clone(), &[]).await;
    let root = config_path.parent().unwrap();

    let v0 = version_of(&cp, "outbound/users").await;
    let held = Held::start(&Client::http1(), &cp, "outbound/users", v0, "25s");
    wait_for_watches(&cp, "outbound", 1.0).await;
    std::fs::create_dir(root.join("..2026_01_01_b")).unwrap();
    std::fs::write(
        root.join("..2026_01_01_b/mesh.yaml"),
        MESH.replace("  users:\n", "  users:\n    timeout: 3s\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_01_01_b", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_01_01_a")).unwrap();

    let (r, took) = held.join().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(json(&r)["services"]["users"]["timeout"], "3s");
}

#[tokio::test]
async fn a_bad_edit_keeps_the_last_good_view_and_is_counted_and_shown() {
    let cp = ControlPlane::start(MESH).await;
    let v0 = version_of(&cp, "outbound/users").await;
    let ready = Client::http1().get(&cp.admin_url("/ready")).await.unwrap();
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "ready\n")
    );

    cp.write_config(&MESH.replace("  users:\n", "  users:\n    timeuot: 2s\n"));
    eventually(
        Duration::from_secs(10),
        "the bad edit to be counted",
        || async {
            metric_value(
                &cp.metrics().await,
                "remora_config_reloads_total{result=\"error\"}",
            ) == 1.0
        },
    )
    .await;
    let ready = Client::http1().get(&cp.admin_url("/ready")).await.unwrap();
    assert_eq!(ready.status, 200, "the last good config still serves");
    let body = ready.text();
    assert!(body.contains("rejected"), "{body}");
    assert!(
        body.contains("mesh.yaml:10:5: services.users: unknown field `timeuot`"),
        "{body}"
    );
    let r = poll(&cp, "outbound/users", None, "0s").await;
    assert_eq!((r.status.as_u16(), version(&r)), (200, v0));
    assert!(json(&r)["services"]["users"].get("timeout").is_none());
    assert!(cp
        .logs()
        .iter()
        .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("config rejected")));

    // A good edit clears it.
    cp.write_config(&MESH.replace("  users:\n", "  users:\n    timeout: 2s\n"));
    eventually(
        Duration::from_secs(10),
        "the good edit to be served",
        || async {
            json(&poll(&cp, "outbound/users", None, "0s").await)["services"]["users"]["timeout"]
                == "2s"
        },
    )
    .await;
    let ready = Client::http1().get(&cp.admin_url("/ready")).await.unwrap();
    assert_eq!(ready.text(), "ready\n");
}

#[tokio::test]
async fn an_emptied_or_deleted_file_keeps_the_last_good_view_and_proxies_keep_routing() {
    // The restored file moves the route rather than the endpoint: a proxy
    // keeps endpoints a view lacks through the restart grace.
    let (v1, v2) = (Upstream::named("v1").await, Upstream::named("v2").await);
    let cp = ControlPlane::start(&split_mesh(v1.addr, v2.addr, "v1")).await;
    let web = Upstream::named("web").await;
    let proxy = Proxy::controlled(&cp.url(), "web", web.addr, &[]).await;
    let call = || async {
        let r = Client::http1()
            .get_via(proxy.outbound, "orders", "/")
            .await
            .expect("a response through the proxy");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    };
    assert_eq!(call().await, "v1");
    let v0 = version_of(&cp, "outbound/orders").await;
    let path = cp.config_path.clone();
    let file = path.display().to_string();
    let say_so = "a mesh with no services says so: `services: {}`";

    let truncate = || drop(std::fs::File::create(&path).expect("truncating the file"));
    let comment_out = || cp.write_config("# services:\n#   orders: {}\n");
    let no_services = || cp.write_config("trust_domain: cluster.local\n");
    let delete = || std::fs::remove_file(&path).expect("deleting the file");
    let losses: [(&str, &dyn Fn(), String); 4] = [
        (
            "truncating it to zero bytes in place",
            &truncate,
            format!("{file}: the file holds no mesh: it is empty or only comments; {say_so}"),
        ),
        (
            "commenting everything out",
            &comment_out,
            format!("{file}: the file holds no mesh"),
        ),
        (
            "a document with no services",
            &no_services,
            format!("{file}: services: not given; {say_so}"),
        ),
        (
            "deleting it",
            &delete,
            format!("{file}: cannot read the file: No such file or directory"),
        ),
    ];
    for (i, (what, lose, problem)) in losses.iter().enumerate() {
        lose();
        let rejected = (i + 1) as f64;
        eventually(
            Duration::from_secs(10),
            &format!("{what} to be rejected"),
            || async {
                metric_value(
                    &cp.metrics().await,
                    "remora_config_reloads_total{result=\"error\"}",
                ) == rejected
            },
        )
        .await;
        let ready = Client::http1().get(&cp.admin_url("/ready")).await.unwrap();
        assert_eq!(
            ready.status, 200,
            "{what}: the last good config still serves"
        );
        let body = ready.text();
        assert!(body.contains("was rejected"), "{what}: {body}");
        assert!(body.contains(problem.as_str()), "{what}: {body}");
        assert!(
            cp.logs().iter().any(|l| l.contains("\"level\":\"ERROR\"")
                && l.contains("config rejected")
                && l.contains(problem.as_str())),
            "{what}: not logged"
        );
        let r = poll(&cp, "outbound/orders", None, "0s").await;
        assert_eq!((r.status.as_u16(), version(&r)), (200, v0), "{what}");
        for _ in 0..5 {
            assert_eq!(call().await, "v1", "{what}");
        }
    }
    assert_eq!(v2.hits(), 0);

    // A good file where the deleted one was is served, and clears the error.
    cp.write_config(&split_mesh(v1.addr, v2.addr, "v2"));
    eventually(
        Duration::from_secs(10),
        "the restored file to reach the proxy",
        || async { call().await == "v2" },
    )
    .await;
    let ready = Client::http1().get(&cp.admin_url("/ready")).await.unwrap();
    assert_eq!(ready.text(), "ready\n");
    let metrics = cp.metrics().await;
    assert_eq!(
        metric_value(&metrics, "remora_config_reloads_total{result=\"ok\"}"),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn views_are_served_over_http2_many_streams_on_one_connection() {
    let cp = ControlPlane::start(MESH).await;
    let h2 = Client::http2();
    let r = poll_with(&h2, &cp.url(), "outbound/orders", None, "0s").await;
    assert_eq!((r.status, r.version), (StatusCode::OK, Version::HTTP_2));
    let users_v = version_of(&cp, "outbound/users").await;
    let next_v = version_of(&cp, "outbound/orders-next").await;
    // Ten streams held at once on the client's one connection.
    let users: Vec<Held> = (0..9)
        .map(|_| Held::start(&h2, &cp, "outbound/users", users_v, "3s"))
        .collect();
    let next = Held::start(&h2, &cp, "outbound/orders-next", next_v, "25s");
    wait_for_watches(&cp, "outbound", 10.0).await;
    cp.register("orders-next", "n-1", r#"{"address": "127.0.0.1:5001"}"#)
        .await;
    let (r, took) = next.join().await;
    assert_eq!((r.status, r.version), (StatusCode::OK, Version::HTTP_2));
    assert!(took < Duration::from_secs(20), "{took:?}");
    for held in users {
        let (r, _) = held.join().await;
        assert_eq!(
            (r.status, r.version),
            (StatusCode::NOT_MODIFIED, Version::HTTP_2)
        );
    }
}

#[tokio::test]
async fn a_view_larger_than_one_frame_arrives_whole_over_both_protocols() {
    // Sixty endpoints make a view of several kilobytes, which is sent in
    // pieces under 1 KiB.
    let mut mesh = String::from("services:\n  big:\n    endpoints:\n");
    for i in 0..60 {
        mesh.push_str(&format!(
            "      - {{ address: 10.0.{}.{}:8080, labels: {{ version: v{i}, zone: zone-{i} }} }}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    let cp = ControlPlane::start(&mesh).await;
    for client in [Client::http1(), Client::http2()] {
        let r = poll_with(&client, &cp.url(), "outbound/big", None, "0s").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.len() > 4096, "{} bytes", r.body.len());
        assert_eq!(
            r.headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some(r.body.len().to_string().as_str()),
            "{:?}",
            r.version
        );
        let view = json(&r);
        assert_eq!(
            view["services"]["big"]["endpoints"]
                .as_array()
                .map(Vec::len),
            Some(60)
        );
    }
}

#[tokio::test]
async fn versions_grow_across_a_restart_on_the_same_port() {
    let mut cp = ControlPlane::start(MESH).await;
    let v0 = version_of(&cp, "outbound/users").await;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Versions start at the start time in Unix milliseconds (plus one for
    // each change published since).
    assert!(
        v0 < since_epoch + 1_000 && v0 > since_epoch - 60_000,
        "{v0} vs {since_epoch}"
    );
    cp.register("users", "u-1", r#"{"address": "127.0.0.1:6001"}"#)
        .await;
    let v1 = version_of(&cp, "outbound/users").await;
    assert!(v1 > v0);
    cp.register("ghost", "g-1", r#"{"address": "127.0.0.1:6002"}"#)
        .await;
    let ghost = version_of(&cp, "outbound/ghost").await;

    let api = cp.api;
    cp.signal("TERM");
    assert!(cp.wait_exit(Duration::from_secs(10)).await.success());
    let cp = ControlPlane::start_on(MESH, api, &["--restart-grace", "5s"]).await;
    assert_eq!(cp.api, api);
    // A new proxy (no version) is answered at once.
    let fresh = poll(&cp, "outbound/users", None, "20s").await;
    assert_eq!(fresh.status, 200);
    // A service that only registrations named is not called unknown to a
    // proxy from before the restart during the grace: its poll is held.
    let r = poll(&cp, "outbound/ghost", Some(ghost), "0s").await;
    assert_eq!(r.status, 304, "{}", r.text());
    // Soft state: the registration is gone until it is renewed. A proxy
    // that asks with v1 (from the previous process) gets the new view at
    // once, marked incomplete through the restart grace (it keeps the
    // endpoints it had), then the complete one.
    let r = poll(&cp, "outbound/users", Some(v1), "0s").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let warm = json(&r);
    assert_eq!(warm["incomplete"], true, "{warm}");
    assert!(version(&r) > v1, "{} <= {v1}", version(&r));
    let endpoints = |v: &serde_json::Value| {
        v["services"]["users"]["endpoints"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(endpoints(&warm), 1, "the file's only: {warm}");
    let r = poll(&cp, "outbound/users", Some(version(&r)), "20s").await;
    assert_eq!(r.status, 200);
    let complete = json(&r);
    assert!(complete.get("incomplete").is_none(), "{complete}");
    assert_eq!(endpoints(&complete), 1);
    // After the grace, a service no one registered again is unknown.
    let r = poll(&cp, "outbound/ghost", Some(ghost), "0s").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn sigterm_answers_held_polls_and_exits_0() {
    let mut cp = ControlPlane::start(MESH).await;
    let v = version_of(&cp, "outbound/users").await;
    let h1 = Held::start(&Client::http1(), &cp, "outbound/users", v, "25s");
    let h2 = Held::start(&Client::http2(), &cp, "outbound/users", v, "25s");
    let unknown = Held::start(&Client::http1(), &cp, "outbound/billing", 0, "25s");
    wait_for_watches(&cp, "outbound", 3.0).await;
    cp.signal("TERM");
    for (held, status) in [
        (h1, StatusCode::NOT_MODIFIED),
        (h2, StatusCode::NOT_MODIFIED),
        (unknown, StatusCode::NOT_FOUND),
    ] {
        let (r, took) = held.join().await;
        assert_eq!(r.status, status, "{}", r.text());
        assert!(took < Duration::from_secs(20), "{took:?}");
    }
    let status = cp.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn metrics_count_pushes_and_pass_promtool() {
    let cp = ControlPlane::start(MESH).await;
    let v = version_of(&cp, "outbound/users").await;
    let held = Held::start(&Client::http1(), &cp, "outbound/users", v, "25s");
    wait_for_watches(&cp, "outbound", 1.0).await;
    cp.register("users", "u-1", r#"{"address": "127.0.0.1:6001"}"#)
        .await;
    assert_eq!(held.join().await.0.status, 200);
    poll(&cp, "outbound/nowhere", None, "0s").await;

    let r = Client::http1()
        .get(&cp.admin_url("/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let metrics = r.text();
    for (series, at_least) in [
        (
            "remora_control_push_seconds_count{resource=\"outbound\"}",
            1.0,
        ),
        (
            "remora_control_push_seconds_bucket{le=\"+Inf\",resource=\"outbound\"}",
            1.0,
        ),
        ("remora_control_watches{resource=\"outbound\"}", 0.0),
        ("remora_control_registrations ", 1.0),
        (
            "remora_control_requests_total{resource=\"outbound\",status_code=\"200\"}",
            2.0,
        ),
        (
            "remora_control_requests_total{resource=\"outbound\",status_code=\"404\"}",
            1.0,
        ),
        (
            "remora_control_requests_total{resource=\"registrations\",status_code=\"200\"}",
            1.0,
        ),
        ("remora_config_reloads_total{result=\"error\"}", 0.0),
        ("process_resident_memory_bytes ", 1.0),
        ("process_open_fds ", 1.0),
        ("process_cpu_seconds_total ", 0.0),
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "no {series} in\n{metrics}"
        );
        assert!(
            metric_value(&metrics, series) >= at_least,
            "{series} in\n{metrics}"
        );
    }
    assert!(metrics.contains("# TYPE remora_control_push_seconds histogram"));
    if have_promtool() {
        promtool_check(&metrics).unwrap_or_else(|e| panic!("promtool: {e}\n{metrics}"));
    }

    let req = Request::get(cp.admin_url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .body(remora_e2e::client::body(""))
        .unwrap();
    let r = Client::http1().send(req).await.unwrap();
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/openmetrics-text")));
    assert!(r.text().ends_with("# EOF\n"), "{}", r.text());
    let live = Client::http1().get(&cp.admin_url("/live")).await.unwrap();
    assert_eq!(live.status, 200);
}

/// Connections and streams of the load below: 1,000 HTTP/2 connections
/// with 10 long-polls each, as a thousand proxies watching ten services.
const CONNECTIONS: usize = 1000;
const STREAMS_PER_CONNECTION: usize = 10;
const WATCHES: usize = CONNECTIONS * STREAMS_PER_CONNECTION;
const SERVICES: usize = 100;

type Answer = Result<(StatusCode, usize, Bytes), String>;

/// Holds `STREAMS_PER_CONNECTION` long-polls on each connection, stream
/// `i` watching service `s(i % SERVICES)` at `versions[i % SERVICES]`;
/// each answer arrives on the returned channel.
fn hold_watches(
    base: &str,
    connections: &[hyper::client::conn::http2::SendRequest<Empty<Bytes>>],
    versions: &[u64],
) -> tokio::sync::mpsc::UnboundedReceiver<Answer> {
    let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
    for (c, sender) in connections.iter().enumerate() {
        for s in 0..STREAMS_PER_CONNECTION {
            let service = (c * STREAMS_PER_CONNECTION + s) % SERVICES;
            let req = Request::get(format!(
                "{base}/v1/outbound/s{service}?version={}&wait=60s",
                versions[service]
            ))
            .body(Empty::<Bytes>::new())
            .unwrap();
            let mut sender = sender.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = async {
                    sender.ready().await.map_err(|e| e.to_string())?;
                    let r = sender.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = r.status();
                    let body = r
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    Ok((status, service, body))
                }
                .await;
                let _ = tx.send(result);
            });
        }
    }
    answers
}

/// Waits for every held watch to answer 200; the versions of the views
/// they got, by service.
async fn all_answered(answers: &mut tokio::sync::mpsc::UnboundedReceiver<Answer>) -> Vec<u64> {
    let mut versions = vec![0; SERVICES];
    for _ in 0..WATCHES {
        let answer = tokio::time::timeout(Duration::from_secs(60), answers.recv())
            .await
            .expect("every watch answered within a minute")
            .expect("an answer");
        let (status, service, body) = answer.unwrap_or_else(|e| panic!("a watch failed: {e}"));
        assert_eq!(status, StatusCode::OK);
        let view: Value = serde_json::from_slice(&body).unwrap();
        versions[service] = view["version"].as_u64().unwrap();
    }
    versions
}

/// The push latency histogram's count, and its count within `le`.
fn pushes(metrics: &str, le: &str) -> (f64, f64) {
    (
        metric_value(
            metrics,
            "remora_control_push_seconds_count{resource=\"outbound\"}",
        ),
        metric_value(
            metrics,
            &format!("remora_control_push_seconds_bucket{{le=\"{le}\",resource=\"outbound\"}}"),
        ),
    )
}

fn report(what: &str, before: &str, after: &str) {
    let share = |le: &str| {
        let ((n0, w0), (n1, w1)) = (pushes(before, le), pushes(after, le));
        (w1 - w0) / (n1 - n0)
    };
    eprintln!(
        "{what}: {:.1}% of pushes within 10ms, {:.1}% within 50ms, {:.1}% within 100ms, {:.1}% within 250ms",
        100.0 * share("0.01"),
        100.0 * share("0.05"),
        100.0 * share("0.1"),
        100.0 * share("0.25"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Scale as a behaviour: every one of 10,000 held watches gets exactly the
/// pushes meant for it. How fast, and in how much memory, is measured by
/// `benches/push.rs`; the figures printed here are for information.
async fn ten_thousand_held_watches_each_get_their_push() {
    // The test holds one end of every connection too.
    rlimit::increase_nofile_limit(u64::MAX).expect("raising the open files limit");
    let mesh = |trust_domain: &str| {
        let mut mesh = format!("trust_domain: {trust_domain}\nservices:\n");
        for i in 0..SERVICES {
            mesh.push_str(&format!("  s{i}: {{}}\n"));
        }
        mesh
    };
    // More API threads than the machine may have cores, so that the
    // connections land on several whatever the machine.
    let cp = ControlPlane::start_with(&mesh("cluster.local"), &["--threads", "3"]).await;
    let base = cp.url();
    let mut versions = Vec::with_capacity(SERVICES);
    for i in 0..SERVICES {
        versions.push(version_of(&cp, &format!("outbound/s{i}")).await);
    }
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let stream = tokio::net::TcpStream::connect(cp.api)
            .await
            .expect("connecting");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("an HTTP/2 handshake");
        tokio::spawn(conn);
        connections.push(sender);
    }

    let mut answers = hold_watches(&base, &connections, &versions);
    wait_for_watches(&cp, "outbound", WATCHES as f64).await;
    let before = cp.metrics().await;
    let rss = metric_value(&before, "process_resident_memory_bytes ");
    let fds = metric_value(&before, "process_open_fds ");
    eprintln!(
        "holding {WATCHES} watches on {CONNECTIONS} connections: rss {:.1} MB, {fds} open fds",
        rss / 1e6
    );
    assert!(fds >= CONNECTIONS as f64, "{fds} open fds");

    // A registration in each service in turn wakes its hundred watchers.
    let start = Instant::now();
    for i in 0..SERVICES {
        let r = cp
            .register(
                &format!("s{i}"),
                "pod-1",
                r#"{"address": "127.0.0.1:4143"}"#,
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let versions = all_answered(&mut answers).await;
    eprintln!(
        "{WATCHES} pushes after {SERVICES} registrations in {:?}",
        start.elapsed()
    );
    let after = cp.metrics().await;
    assert_eq!(pushes(&after, "+Inf").0, WATCHES as f64);
    report("one service at a time", &before, &after);

    // One edit that changes every view wakes all ten thousand at once.
    let mut answers = hold_watches(&base, &connections, &versions);
    wait_for_watches(&cp, "outbound", WATCHES as f64).await;
    let before = cp.metrics().await;
    let start = Instant::now();
    cp.write_config(&mesh("example.org"));
    all_answered(&mut answers).await;
    eprintln!("{WATCHES} pushes after one edit in {:?}", start.elapsed());
    let after = cp.metrics().await;
    assert_eq!(pushes(&after, "+Inf").0, 2.0 * WATCHES as f64);
    report("every view at once", &before, &after);
    // However busy, every push is delivered within seconds.
    let (n0, w0) = pushes(&before, "5.0");
    let (n1, w1) = pushes(&after, "5.0");
    assert_eq!(w1 - w0, n1 - n0, "{after}");
    drop(connections);
}
