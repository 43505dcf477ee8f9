//! What the control plane takes in a registration, through the real
//! `remora-control` binary: quotas on instances per service and services
//! per identity (or, with `--insecure`, per caller address), renewals at
//! the cap, addresses no one can dial, and labels Kubernetes would refuse.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use remora_e2e::control::ApiCaller;
use remora_e2e::identity::grant_tokens;
use remora_e2e::{metric_value, ControlPlane, Reply};
use serde_json::Value;

const MESH: &str = "services:\n  orders: {}\n";
const AT_LOOPBACK: &str = r#"{"address": "127.0.0.1:4143"}"#;

fn json(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// `{"address": ADDRESS}`.
fn at(address: &str) -> String {
    format!(r#"{{"address": "{address}"}}"#)
}

/// Checks a `403` past a quota: its fields, and words naming the limit,
/// its value and the flag (and variable) that raises it.
fn assert_over_quota(r: &Reply, quota: &str, limit: u64, flag: &str, env: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let body = json(r);
    assert_eq!(body["quota"], quota, "{body}");
    assert_eq!(body["limit"], limit, "{body}");
    assert_eq!(body["flag"], flag, "{body}");
    let error = body["error"].as_str().expect("an error");
    for words in [&format!(" {limit} "), flag, env, "Renewals"] {
        assert!(error.contains(words), "{words:?} not in {error}");
    }
}

/// `PUT /v1/registrations/{service}/{instance}` over a connection from
/// `from`, another loopback address: another caller, to a control plane
/// with identity off.
async fn register_from(
    cp: &ControlPlane,
    from: Ipv4Addr,
    service: &str,
    instance: &str,
    body: &str,
) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .unwrap_or_else(|e| panic!("binding {from}: {e}"));
    let stream = socket.connect(cp.api).await.expect("connecting");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("a handshake");
    tokio::spawn(connection);
    let req = Request::put(format!("/v1/registrations/{service}/{instance}"))
        .header("host", cp.api.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request");
    let response = sender.send_request(req).await.expect("an answer");
    Reply::read(response).await.expect("a body")
}

async fn registrations(cp: &ControlPlane) -> f64 {
    metric_value(&cp.metrics().await, "remora_control_registrations ")
}

#[tokio::test]
async fn a_service_takes_instances_up_to_its_quota_and_renewals_at_it() {
    let cp = ControlPlane::start_with(MESH, &["--max-instances-per-service", "3"]).await;
    for i in 1..=3 {
        let r = cp
            .register(
                "orders",
                &format!("pod-{i}"),
                &at(&format!("127.0.0.1:{i}")),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let r = cp.register("orders", "pod-4", &at("127.0.0.1:4")).await;
    assert_over_quota(
        &r,
        "instances-per-service",
        3,
        "--max-instances-per-service",
        "REMORA_MAX_INSTANCES_PER_SERVICE",
    );
    assert!(json(&r)["error"]
        .as_str()
        .unwrap()
        .starts_with("orders already has 3 registered instances"));
    // At the cap, a renewal is taken, and so is a change of address or
    // labels of an instance already registered.
    let r = cp.register("orders", "pod-1", &at("127.0.0.1:1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let moved = r#"{"address": "127.0.0.1:11", "labels": {"version": "v2"}}"#;
    let r = cp.register("orders", "pod-2", moved).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Another service has its own quota.
    let r = cp.register("users", "pod-1", AT_LOOPBACK).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(registrations(&cp).await, 4.0);
    let endpoints = &cp.services().await["services"]["orders"]["endpoints"];
    assert_eq!(endpoints.as_array().map(Vec::len), Some(3), "{endpoints}");

    // Once one leaves, there is room for another.
    assert_eq!(
        cp.deregister("orders", "pod-3").await.status,
        StatusCode::OK
    );
    let r = cp.register("orders", "pod-4", &at("127.0.0.1:4")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn with_identity_off_each_caller_address_has_its_quota_of_services() {
    let cp = ControlPlane::start_with(MESH, &["--max-services-per-identity", "2"]).await;
    for service in ["orders", "users"] {
        let r = cp.register(service, "pod-1", AT_LOOPBACK).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let r = cp.register("billing", "pod-1", AT_LOOPBACK).await;
    assert_over_quota(
        &r,
        "services-per-identity",
        2,
        "--max-services-per-identity",
        "REMORA_MAX_SERVICES_PER_IDENTITY",
    );
    assert!(json(&r)["error"]
        .as_str()
        .unwrap()
        .starts_with("the caller at 127.0.0.1 already has instances of 2 services registered"));
    // Its services take more instances, and renewals, at the cap.
    let r = cp.register("orders", "pod-2", &at("127.0.0.1:2")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cp.register("users", "pod-1", AT_LOOPBACK).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // A caller from another address counts on its own.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let r = register_from(&cp, other, "billing", "pod-1", AT_LOOPBACK).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = register_from(&cp, other, "payments", "pod-1", AT_LOOPBACK).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = register_from(&cp, other, "search", "pod-1", AT_LOOPBACK).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("the caller at 127.0.0.2"), "{}", r.text());

    // A service leaves the first caller's count with its last instance.
    assert_eq!(cp.deregister("users", "pod-1").await.status, StatusCode::OK);
    let r = cp.register("search", "pod-1", AT_LOOPBACK).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(registrations(&cp).await, 5.0);
}

#[tokio::test]
async fn with_identity_on_each_identity_has_its_quota_of_services() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = grant_tokens(dir.path(), &[("frontend", "frontend-token")]);
    let mesh = "services:\n  a: {}\n  b: {}\n  c: {}\n";
    let cp = ControlPlane::start_with(
        mesh,
        &["--tokens", &tokens, "--max-services-per-identity", "1"],
    )
    .await;
    let issuer = cp.development_issuer();
    let put = |service: &str, instance: &str| {
        Request::put(format!(
            "{}/v1/registrations/{service}/{instance}",
            cp.url()
        ))
        .header("content-type", "application/json")
        .body(Bytes::from(AT_LOOPBACK))
        .unwrap()
    };
    let as_ = |name: &str| ApiCaller::As(remora_e2e::mesh_client::credentials(&issuer, name));
    let r = cp.call(put("a", "pod-1"), as_("frontend")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cp.call(put("b", "pod-1"), as_("frontend")).await.unwrap();
    assert_over_quota(
        &r,
        "services-per-identity",
        1,
        "--max-services-per-identity",
        "REMORA_MAX_SERVICES_PER_IDENTITY",
    );
    assert!(json(&r)["error"].as_str().unwrap().starts_with(
        "spiffe://cluster.local/ns/default/sa/frontend already has instances of 1 services registered"
    ));
    // The renewal goes on; another identity has its own quota, even from
    // the same address.
    let r = cp.call(put("a", "pod-1"), as_("frontend")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = cp.call(put("b", "pod-1"), as_("checkout")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// A single client inventing services and instances, as a runaway script
/// would, meets the default quotas: 100 services, 1,000 instances each.
#[tokio::test]
async fn the_default_quotas_stop_a_runaway_client() {
    let cp = ControlPlane::start_without_config().await;
    for i in 0..100 {
        let r = cp.register(&format!("svc-{i}"), "pod-0", AT_LOOPBACK).await;
        assert_eq!(r.status, StatusCode::OK, "svc-{i}: {}", r.text());
    }
    let r = cp.register("svc-100", "pod-0", AT_LOOPBACK).await;
    assert_over_quota(
        &r,
        "services-per-identity",
        100,
        "--max-services-per-identity",
        "REMORA_MAX_SERVICES_PER_IDENTITY",
    );
    for i in 1..1000 {
        let r = cp.register("svc-0", &format!("pod-{i}"), AT_LOOPBACK).await;
        assert_eq!(r.status, StatusCode::OK, "pod-{i}: {}", r.text());
    }
    let r = cp.register("svc-0", "pod-1000", AT_LOOPBACK).await;
    assert_over_quota(
        &r,
        "instances-per-service",
        1000,
        "--max-instances-per-service",
        "REMORA_MAX_INSTANCES_PER_SERVICE",
    );
    assert_eq!(registrations(&cp).await, 1099.0);
}

#[tokio::test]
async fn addresses_no_one_can_dial_are_refused_with_400() {
    let cp = ControlPlane::start(MESH).await;
    for (address, why) in [
        ("0.0.0.0:4143", "0.0.0.0 is the unspecified address"),
        ("[::]:4143", ":: is the unspecified address"),
        ("127.0.0.1:0", "port 0"),
        (
            "255.255.255.255:80",
            "255.255.255.255 is the broadcast address",
        ),
        ("224.0.0.1:80", "224.0.0.1 is a multicast address"),
        ("[ff02::1]:80", "ff02::1 is a multicast address"),
    ] {
        let r = cp.register("orders", "pod-1", &at(address)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{address}: {}", r.text());
        let error = json(&r)["error"].as_str().unwrap().to_string();
        assert!(
            error.starts_with(&format!("the address {address} cannot be dialled: {why}")),
            "{address}: {error}"
        );
    }
    assert_eq!(registrations(&cp).await, 0.0);
    // Loopback is an address like any other: sidecars on one host use it.
    for (instance, address) in [("v4", "127.0.0.1:4143"), ("v6", "[::1]:4143")] {
        let r = cp.register("orders", instance, &at(address)).await;
        assert_eq!(r.status, StatusCode::OK, "{address}: {}", r.text());
    }
}

#[tokio::test]
async fn labels_kubernetes_would_refuse_are_refused_with_400() {
    let cp = ControlPlane::start(MESH).await;
    let long = "v".repeat(64);
    for (labels, shown, why) in [
        (r#"{"": "v1"}"#, r#"label ""="v1""#, "name is empty"),
        (
            r#"{"ver\u0001sion": "v1"}"#,
            r#"label "ver\u{1}sion"="v1""#,
            "the key's name",
        ),
        (
            r#"{"a/b/c": "v1"}"#,
            r#"label "a/b/c"="v1""#,
            "at most one '/'",
        ),
        (
            r#"{"Example.com/tier": "web"}"#,
            r#"label "Example.com/tier"="web""#,
            "the key's prefix \"Example.com\" must be a DNS subdomain",
        ),
        (
            r#"{"-version": "v1"}"#,
            r#"label "-version"="v1""#,
            "the key's name",
        ),
        (
            r#"{"version": "v 1"}"#,
            r#"label "version"="v 1""#,
            "the value",
        ),
        (
            r#"{"version": "v1\n"}"#,
            r#"label "version"="v1\n""#,
            "the value",
        ),
        (
            &format!(r#"{{"version": "{long}"}}"#),
            "label \"version\"",
            "the value must be empty, or 1 to 63",
        ),
    ] {
        let body = format!(r#"{{"address": "127.0.0.1:4143", "labels": {labels}}}"#);
        let r = cp.register("orders", "pod-1", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{labels}: {}", r.text());
        let error = json(&r)["error"].as_str().unwrap().to_string();
        assert!(error.starts_with(shown), "{labels}: {error}");
        assert!(error.contains(why), "{labels}: {error}");
    }
    assert_eq!(registrations(&cp).await, 0.0);
    let good = r#"{"address": "127.0.0.1:4143", "labels": {"app.kubernetes.io/name": "orders", "version": "v1.2_rc-3", "canary": ""}}"#;
    let r = cp.register("orders", "pod-1", good).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let endpoints = &cp.services().await["services"]["orders"]["endpoints"];
    assert_eq!(endpoints[0]["labels"]["app.kubernetes.io/name"], "orders");
    assert_eq!(endpoints[0]["labels"]["canary"], "");
}
