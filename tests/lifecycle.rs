//! The proxy's lifecycle through the real binary: config edits (and
//! ConfigMap swaps) go live without dropping a request, bad edits are
//! rejected while the last good config keeps serving, and SIGTERM/SIGINT
//! drain in-flight requests before exiting 0.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use remora_e2e::process::binary;
use remora_e2e::upstream::{dead_address, text};
use remora_e2e::{
    eventually, metric_value, split_mesh, switch_without_failures, Client, Proxy, Upstream,
};
use tokio::net::TcpStream;

const RELOADS_OK: &str = "remora_config_reloads_total{result=\"ok\"}";
const RELOADS_ERROR: &str = "remora_config_reloads_total{result=\"error\"}";
/// Config changes are meant to be live within a second; this bound is for
/// slow machines, not a measure. It stays under the proxy's 5s rescan, so
/// passing means the file watch itself saw the change.
const RELOAD_LIMIT: Duration = Duration::from_secs(3);

/// `orders` served by `upstream` alone.
fn mesh(upstream: &Upstream) -> String {
    format!(
        "services:\n  orders:\n    endpoints: [ {{ address: {} }} ]\n",
        upstream.addr
    )
}

async fn body_of(proxy: &Proxy) -> String {
    let r = Client::http1()
        .get_via(proxy.outbound, "orders", "/")
        .await
        .expect("a response through the proxy");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

async fn config_json(proxy: &Proxy) -> serde_json::Value {
    let r = Client::http1()
        .get(&proxy.admin_url("/config"))
        .await
        .expect("GET /config");
    serde_json::from_slice(&r.body).expect("/config is JSON")
}

#[tokio::test]
async fn a_route_change_goes_live_without_failing_a_request() {
    let v1 = Upstream::named("v1").await;
    let v2 = Upstream::named("v2").await;
    let proxy = Proxy::start(&split_mesh(v1.addr, v2.addr, "v1"), dead_address().await).await;
    let client = Client::via(proxy.outbound, false);
    switch_without_failures(&client, RELOAD_LIMIT, || {
        proxy.write_config(&split_mesh(v1.addr, v2.addr, "v2"))
    })
    .await;
    assert!(v1.hits() >= 20 && v2.hits() > 50);
    let metrics = proxy.metrics().await;
    assert_eq!(metric_value(&metrics, RELOADS_OK), 1.0, "{metrics}");
    assert_eq!(metric_value(&metrics, RELOADS_ERROR), 0.0, "{metrics}");
    assert_eq!(config_json(&proxy).await["version"], 2);
}

/// Lays out `dir` as the kubelet mounts a ConfigMap:
/// `mesh.yaml -> ..data/mesh.yaml`, `..data -> ..<stamp>`.
fn configmap_publish(dir: &Path, stamp: &str, mesh: &str) {
    let data = dir.join(format!("..{stamp}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("mesh.yaml"), mesh).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp).unwrap();
    // The swap itself: one rename of a symlink over the other.
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).unwrap();
    }
    if !dir.join("mesh.yaml").exists() {
        std::os::unix::fs::symlink("..data/mesh.yaml", dir.join("mesh.yaml")).unwrap();
    }
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    configmap_publish(&root, "2024_01_01_00_00_00.1", &mesh(&a));
    assert!(std::fs::symlink_metadata(root.join("mesh.yaml"))
        .unwrap()
        .is_symlink());
    let proxy = Proxy::start_from(dir, root.join("mesh.yaml"), dead_address().await, &[]).await;
    assert_eq!(body_of(&proxy).await, "a");

    // Two swaps, to show the watch outlives the first.
    for (stamp, upstream, name) in [
        ("2024_01_01_00_01_00.2", &b, "b"),
        ("2024_01_01_00_02_00.3", &a, "a"),
    ] {
        configmap_publish(&root, stamp, &mesh(upstream));
        eventually(RELOAD_LIMIT, &format!("the swap to {name}"), || async {
            body_of(&proxy).await == name
        })
        .await;
    }
    let metrics = proxy.metrics().await;
    assert_eq!(metric_value(&metrics, RELOADS_OK), 2.0, "{metrics}");
    assert_eq!(config_json(&proxy).await["version"], 3);
}

#[tokio::test]
async fn a_bad_edit_is_rejected_and_the_last_good_config_keeps_serving() {
    let good = Upstream::named("good").await;
    let next = Upstream::named("next").await;
    let proxy = Proxy::start(&mesh(&good), dead_address().await).await;
    assert_eq!(body_of(&proxy).await, "good");
    let file = proxy.config_path.display().to_string();

    // Each bad edit would also move `orders` to `next`: none of it may
    // take effect. Each is reported where the mistake sits, naming it.
    let bad_edits = [
        (
            "an unknown key",
            format!(
                "services:\n  orders:\n    endpoints: [ {{ address: {} }} ]\n    timeuot: 5s\n",
                next.addr
            ),
            "4:5: services.orders: unknown field `timeuot`",
        ),
        (
            "a bad duration",
            format!(
                "services:\n  orders:\n    endpoints: [ {{ address: {} }} ]\n    timeout: soon\n",
                next.addr
            ),
            "4:14: services.orders.timeout: invalid duration \"soon\"",
        ),
        (
            "a YAML syntax error",
            format!(
                "services:\n  orders:\n    endpoints: [ {{ address: {} }}\n    timeout: 5s\n",
                next.addr
            ),
            "4:5: did not find expected ',' or ']'",
        ),
    ];
    for (i, (what, yaml, problem)) in bad_edits.iter().enumerate() {
        proxy.write_config(yaml);
        rejected(&proxy, what, i + 1, &format!("{file}:{problem}")).await;
    }
    assert_eq!(next.hits(), 0);
    assert_eq!(
        metric_value(&proxy.metrics().await, RELOADS_OK),
        0.0,
        "no bad edit counts as a reload"
    );

    // A good edit after them is applied and clears the error.
    proxy.write_config(&mesh(&next));
    eventually(RELOAD_LIMIT, "the good edit to go live", || async {
        body_of(&proxy).await == "next"
    })
    .await;
    let config = config_json(&proxy).await;
    assert!(config["last_error"].is_null(), "{config}");
    assert_eq!(config["version"], 2);
    assert_eq!(metric_value(&proxy.metrics().await, RELOADS_OK), 1.0);
}

/// Waits until the proxy has rejected `count` edits, the latest being
/// `what`, and checks that it says so where operators look (`/config`,
/// the log) while the last good config, version 1, serves `good`.
async fn rejected(proxy: &Proxy, what: &str, count: usize, located: &str) {
    eventually(RELOAD_LIMIT, &format!("{what} to be rejected"), || async {
        metric_value(&proxy.metrics().await, RELOADS_ERROR) == count as f64
    })
    .await;
    let config = config_json(proxy).await;
    let last_error = config["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.starts_with(located),
        "{what}: /config last_error {last_error:?} does not start with {located}"
    );
    assert_eq!(config["version"], 1, "{what}");
    let logged = proxy.logs().iter().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        v["level"] == "ERROR"
            && v["message"] == "config rejected; the last good config keeps serving"
            && v["problems"]
                .as_str()
                .is_some_and(|p| p.starts_with(located))
    });
    assert!(
        logged,
        "{what}: no error line naming {located}:\n{}",
        proxy.logs().join("\n")
    );
    for _ in 0..5 {
        assert_eq!(body_of(proxy).await, "good", "{what}");
    }
}

/// What `mesh.yaml` says of a file that does not say which services the
/// mesh has.
const SAY_SO: &str = "a mesh with no services says so: `services: {}`";

#[tokio::test]
async fn an_emptied_or_deleted_file_is_rejected_until_a_good_one_comes_back() {
    let good = Upstream::named("good").await;
    let next = Upstream::named("next").await;
    let proxy = Proxy::start(&mesh(&good), dead_address().await).await;
    assert_eq!(body_of(&proxy).await, "good");
    let path = proxy.config_path.clone();
    let file = path.display().to_string();
    let no_mesh = format!("{file}: the file holds no mesh: it is empty or only comments; {SAY_SO}");

    // Each is a way a file loses its services by accident; none may take
    // `orders` away.
    let truncate = || drop(std::fs::File::create(&path).expect("truncating the file"));
    let comment_out = || proxy.write_config("# orders moves soon\n# services:\n#   orders: {}\n");
    let no_services = || proxy.write_config("trust_domain: cluster.local\n");
    let nothing_under = || proxy.write_config("services:\n#  orders: {}\n");
    let delete = || std::fs::remove_file(&path).expect("deleting the file");
    let losses: [(&str, &dyn Fn(), String); 5] = [
        (
            "truncating it to zero bytes in place",
            &truncate,
            no_mesh.clone(),
        ),
        ("commenting everything out", &comment_out, no_mesh),
        (
            "a document with no services",
            &no_services,
            format!("{file}: services: not given; {SAY_SO}"),
        ),
        (
            "`services:` with nothing under it",
            &nothing_under,
            format!("{file}:1:1: services: has nothing under it; {SAY_SO}"),
        ),
        (
            "deleting it",
            &delete,
            format!("{file}: cannot read the file: No such file or directory"),
        ),
    ];
    for (i, (what, lose, located)) in losses.iter().enumerate() {
        lose();
        rejected(&proxy, what, i + 1, located).await;
    }
    assert_eq!(next.hits(), 0);
    assert_eq!(metric_value(&proxy.metrics().await, RELOADS_OK), 0.0);

    // A good file where the deleted one was is loaded, and clears the error.
    proxy.write_config(&mesh(&next));
    eventually(RELOAD_LIMIT, "the restored file to go live", || async {
        body_of(&proxy).await == "next"
    })
    .await;
    let config = config_json(&proxy).await;
    assert!(config["last_error"].is_null(), "{config}");
    assert_eq!(config["version"], 2);

    // An empty mesh said explicitly is one.
    proxy.write_config("services: {}\n");
    eventually(
        RELOAD_LIMIT,
        "the explicit empty mesh to go live",
        || async { config_json(&proxy).await["version"] == 3 },
    )
    .await;
    let r = Client::http1()
        .get_via(proxy.outbound, "orders", "/")
        .await
        .expect("a response from the proxy");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("\"level\":\"WARN\"")
                && l.contains("config reloaded with no services")),
        "no warning of the emptied mesh:\n{}",
        proxy.logs().join("\n")
    );
    let metrics = proxy.metrics().await;
    assert_eq!(metric_value(&metrics, RELOADS_OK), 2.0, "{metrics}");
    assert_eq!(metric_value(&metrics, RELOADS_ERROR), 5.0, "{metrics}");
}

/// Runs `remora-proxy --config FILE` in `dir`, which must refuse to start:
/// its status and stderr.
async fn refused_at_start(dir: &Path, config: &str) -> (Option<i32>, String) {
    let app = dead_address().await.to_string();
    let run = tokio::process::Command::new(binary("remora-proxy"))
        .args(["--config", config, "--app", &app])
        .args(["--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the proxy to exit")
        .expect("running remora-proxy");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_empty_or_missing_file_at_start_is_refused_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), "").unwrap();
    let (status, stderr) = refused_at_start(dir.path(), "mesh.yaml").await;
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the mesh config has problems: mesh.yaml: the file holds no mesh: it is empty or only comments; {SAY_SO}"
        )),
        "{stderr}"
    );

    let (status, stderr) = refused_at_start(dir.path(), "absent.yaml").await;
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains("absent.yaml: cannot read the file: No such file"),
        "{stderr}"
    );
}

/// An upstream that answers `slow` after `delay`.
async fn slow_upstream(delay: Duration) -> Upstream {
    Upstream::start(move |_req| async move {
        tokio::time::sleep(delay).await;
        text("slow")
    })
    .await
}

async fn ready_status(proxy: &Proxy) -> Option<u16> {
    Client::http1()
        .get(&proxy.admin_url("/ready"))
        .await
        .ok()
        .map(|r| r.status.as_u16())
}

async fn refuses_connections(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// `signal` drains: not ready at once, no new connections, the request
/// in flight (over HTTP/1.1 or HTTP/2) answered in full, then exit 0.
async fn drains_on(signal: &str, http2: bool) {
    // Long enough for the checks below to run while it is in flight.
    let slow = slow_upstream(Duration::from_secs(2)).await;
    let mut proxy = Proxy::start(&mesh(&slow), dead_address().await).await;
    let in_flight = {
        let client = Client::via(proxy.outbound, http2);
        tokio::spawn(async move { client.get("http://orders/slow").await })
    };
    eventually(
        Duration::from_secs(10),
        "the slow request upstream",
        || async { slow.hits() == 1 },
    )
    .await;

    proxy.signal(signal);
    eventually(Duration::from_secs(5), "/ready to turn 503", || async {
        ready_status(&proxy).await == Some(503)
    })
    .await;
    for (listener, addr) in [("outbound", proxy.outbound), ("inbound", proxy.inbound)] {
        eventually(
            Duration::from_secs(5),
            &format!("the {listener} listener to refuse connections"),
            || refuses_connections(addr),
        )
        .await;
    }
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the drain was checked"
    );

    let r = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight request to finish")
        .unwrap()
        .expect("the in-flight request to be answered");
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "slow"));
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    let logs = proxy.logs().join("\n");
    assert!(
        logs.contains("drained; exiting"),
        "the drain finished in time:\n{logs}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    drains_on("TERM", false).await;
}

#[tokio::test]
async fn sigint_drains_like_sigterm() {
    drains_on("INT", true).await;
}

#[tokio::test]
async fn the_drain_timeout_bounds_how_long_shutdown_waits() {
    // The upstream would take far longer than the test allows.
    let stuck = slow_upstream(Duration::from_secs(300)).await;
    let mut proxy = Proxy::start_with(
        &mesh(&stuck),
        dead_address().await,
        &["--drain-timeout", "500ms"],
    )
    .await;
    let in_flight = {
        let client = Client::via(proxy.outbound, false);
        tokio::spawn(async move { client.get("http://orders/stuck").await })
    };
    eventually(
        Duration::from_secs(10),
        "the stuck request upstream",
        || async { stuck.hits() == 1 },
    )
    .await;

    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    let logs = proxy.logs().join("\n");
    assert!(logs.contains("drain timeout passed"), "{logs}");
    // The abandoned request ends (its connection is closed), not hangs.
    let r = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the abandoned request to end")
        .unwrap();
    assert!(
        r.as_ref().map_or(true, |r| r.status != 200),
        "the abandoned request was answered: {r:?}"
    );
}
