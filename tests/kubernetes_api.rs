//! `remora-control --kubernetes` against the Kubernetes API, through the
//! real binaries. No cluster runs here: [`FakeKube`] stands in for the
//! API server, an HTTPS server in the test that speaks the API's real JSON
//! (TokenReview; list and watch of Services, EndpointSlices and Pods with
//! resourceVersions; a `410 Gone` after a compaction), reached through a
//! kubeconfig as a control plane outside the cluster would reach the real
//! one.
//!
//! - Identity: a projected service-account token gets a certificate for
//!   its service account's SPIFFE id; a token of another audience, of a
//!   user, or unknown, gets `401` with the reason.
//! - Endpoints: two control planes (replicas) serve the same endpoints,
//!   which follow ADDED, MODIFIED and DELETED events and, after a `410
//!   Gone`, a new list; a real sidecar calls a pod that only the API
//!   server told its control plane of, over mutual TLS.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use remora_certs::leaf;
use remora_e2e::control::ApiCaller;
use remora_e2e::fake_kube::{self, FakeKube};
use remora_e2e::identity::{grant_tokens, issuer_files, IssuerFiles};
use remora_e2e::{eventually, Client, ControlPlane, Proxy, Reply, Upstream};
use serde_json::Value;

const MESH: &str = "services: {}\n";
/// How long a change in the API server may take to reach every replica.
const CONVERGE: Duration = Duration::from_secs(10);

/// Projected tokens are JWTs; the API server alone judges them, so these
/// only have the shape.
const ORDERS_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.c2hvcDpvcmRlcnM.c2lnbmVk";
const WEB_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.c2hvcDp3ZWI.c2lnbmVk";
const VAULT_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.dmF1bHQ.c2lnbmVk";
const ALICE_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.YWxpY2U.c2lnbmVk";
const UNKNOWN_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.bm9ib2R5.c2lnbmVk";

/// The flags that point a control plane at `fake`, watching `shop`.
fn kubernetes_flags(fake: &FakeKube) -> Vec<String> {
    vec![
        "--kubernetes".into(),
        "--kubeconfig".into(),
        fake.kubeconfig().display().to_string(),
        "--kubernetes-namespace".into(),
        "shop".into(),
    ]
}

async fn start(flags: &[String]) -> ControlPlane {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ControlPlane::start_with(MESH, &flags).await
}

async fn ask_certificate(cp: &ControlPlane, token: &str, csr: &str) -> Reply {
    let req = Request::post(format!("{}/v1/certificate", cp.url()))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Bytes::from(csr.to_string()))
        .unwrap();
    // No client certificate: a proxy asking for its first one.
    cp.call(req, ApiCaller::Anonymous)
        .await
        .expect("POST /v1/certificate")
}

/// The reason an error body of the API gives.
fn error_of(r: &Reply) -> String {
    let body: Value = serde_json::from_slice(&r.body).expect("a JSON error");
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn projected_service_account_tokens_get_their_accounts_identity() {
    let fake = FakeKube::start().await;
    fake.service_account_token(ORDERS_TOKEN, "shop", "orders", &["remora-control"]);
    fake.service_account_token(VAULT_TOKEN, "shop", "orders", &["vault"]);
    fake.user_token(ALICE_TOKEN, "alice", &["remora-control"]);
    let dir = tempfile::tempdir().unwrap();
    // A VM's fixed token, granted by tokens.yaml, works beside them.
    let mut flags = vec![
        "--tokens".to_string(),
        grant_tokens(dir.path(), &[("batch.jobs", "a-vm-token")]),
        // Reviews asked from every API thread's runtime, not only from the
        // one the Kubernetes client was made on.
        "--threads".to_string(),
        "3".to_string(),
    ];
    flags.extend(kubernetes_flags(&fake));
    let cp = start(&flags).await;

    let request = leaf::new_request().unwrap();
    let r = ask_certificate(&cp, ORDERS_TOKEN, &request.csr_pem).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let credentials = request.complete(&r.text()).expect("a chain for our key");
    assert_eq!(
        credentials.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/orders"
    );
    assert_eq!(
        fake.reviewed_audiences(),
        [["remora-control"]],
        "the review asks for the audience the sidecars' tokens are projected for"
    );

    let csr = leaf::new_request().unwrap().csr_pem;
    for (token, reason) in [
        (
            VAULT_TOKEN,
            "token audiences [\"vault\"] is invalid for the target audiences [\"remora-control\"]",
        ),
        (ALICE_TOKEN, "\"alice\"'s, not a service account's"),
        (
            UNKNOWN_TOKEN,
            "Kubernetes does not accept the token: [invalid bearer token",
        ),
    ] {
        let r = ask_certificate(&cp, token, &csr).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(error_of(&r).contains(reason), "{token}: {}", r.text());
    }
    assert_eq!(fake.requests("create tokenreviews"), 4);

    // Not a JWT: refused without asking the API server.
    let r = ask_certificate(&cp, "not-a-service-account-token", &csr).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&r).contains("not in --tokens"), "{}", r.text());
    // tokens.yaml still grants what it grants, without a review.
    let request = leaf::new_request().unwrap();
    let r = ask_certificate(&cp, "a-vm-token", &request.csr_pem).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        request.complete(&r.text()).unwrap().identity.as_str(),
        "spiffe://cluster.local/ns/jobs/sa/batch"
    );
    assert_eq!(fake.requests("create tokenreviews"), 4);

    // RBAC does not let the control plane ask: not the token's fault, so
    // `503`, to be tried again, and the log says what is missing.
    fake.forbid("create tokenreviews");
    let r = ask_certificate(&cp, ORDERS_TOKEN, &csr).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        error_of(&r).contains("needs `create` on tokenreviews.authentication.k8s.io"),
        "{}",
        r.text()
    );
}

/// The endpoints of `service` in `cp`'s outbound view, as
/// `(address, identity)`, and the whole view's services (for comparing
/// replicas, whose versions differ).
async fn endpoints(cp: &ControlPlane, service: &str) -> (Vec<(String, Option<String>)>, Value) {
    let r = cp.get(&format!("/v1/outbound/{service}")).await;
    if r.status != StatusCode::OK {
        return (Vec::new(), Value::Null);
    }
    let view: Value = serde_json::from_slice(&r.body).expect("a JSON view");
    let endpoints = view["services"][service]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_string(),
                e["identity"].as_str().map(String::from),
            )
        })
        .collect();
    (endpoints, view["services"].clone())
}

/// Waits until both replicas serve exactly `expected` for `orders`, the
/// same view but for its version.
async fn both_serve(
    a: &ControlPlane,
    b: &ControlPlane,
    expected: &[(&str, Option<&str>)],
    what: &str,
) {
    let expected: Vec<(String, Option<String>)> = expected
        .iter()
        .map(|(a, i)| (a.to_string(), i.map(String::from)))
        .collect();
    eventually(CONVERGE, what, || {
        let expected = expected.clone();
        async move {
            let (ea, va) = endpoints(a, "orders").await;
            let (eb, vb) = endpoints(b, "orders").await;
            ea == expected && eb == expected && va == vb
        }
    })
    .await;
}

const ORDERS_SA: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const WEB_SA: &str = "spiffe://cluster.local/ns/shop/sa/web";

#[tokio::test]
async fn replicas_serve_the_same_endpoints_from_endpointslices() {
    let fake = FakeKube::start().await;
    fake.apply(fake_kube::service("shop", "orders", 80, 8080));
    fake.apply(fake_kube::pod(
        "shop",
        "orders-1",
        "orders",
        "10.1.0.1",
        Some(4143),
    ));
    fake.apply(fake_kube::pod(
        "shop", "orders-2", "legacy", "10.1.0.2", None,
    ));
    fake.apply(fake_kube::endpoint_slice(
        "shop",
        "orders-x1",
        "orders",
        8080,
        &[
            ("10.1.0.1", "orders-1", true),
            ("10.1.0.2", "orders-2", true),
        ],
    ));
    // Another namespace is not watched.
    fake.apply(fake_kube::service("staging", "orders", 80, 8080));
    fake.apply(fake_kube::pod(
        "staging",
        "orders-9",
        "orders",
        "10.9.0.9",
        Some(4143),
    ));
    fake.apply(fake_kube::endpoint_slice(
        "staging",
        "orders-s1",
        "orders",
        8080,
        &[("10.9.0.9", "orders-9", true)],
    ));
    let flags = kubernetes_flags(&fake);
    let a = start(&flags).await;
    let b = start(&flags).await;

    // The meshed pod at its sidecar with its account's identity; the
    // other at its app's port, in plaintext.
    both_serve(
        &a,
        &b,
        &[("10.1.0.1:4143", Some(ORDERS_SA)), ("10.1.0.2:8080", None)],
        "the first list's endpoints on both replicas",
    )
    .await;
    let listing = a.services().await;
    let first = &listing["services"]["orders"]["endpoints"][0];
    assert_eq!(first["source"], "kubernetes", "{listing}");
    assert_eq!(first["health"], "ready");
    assert_eq!(first["instance"], "shop/orders-1");
    assert_eq!(first["labels"]["version"], "v1");
    assert_eq!(listing["services"]["orders"]["in_config"], false);
    // The meshed pod's app is at the Service's port, behind its sidecar.
    assert_eq!(first["app_port"], 8080, "{listing}");
    assert!(listing["services"]["orders"]["endpoints"][1]
        .get("app_port")
        .is_none());
    // Its ClusterIP at its port, which transparent mode takes for the
    // whole service.
    assert_eq!(
        listing["services"]["orders"]["virtual_addresses"],
        serde_json::json!(["10.96.0.10:80"]),
        "{listing}"
    );

    // ADDED: a new pod, then the slice (MODIFIED) with its address.
    fake.apply(fake_kube::pod(
        "shop",
        "orders-3",
        "orders",
        "10.1.0.3",
        Some(4143),
    ));
    fake.apply(fake_kube::endpoint_slice(
        "shop",
        "orders-x1",
        "orders",
        8080,
        &[
            ("10.1.0.1", "orders-1", true),
            ("10.1.0.2", "orders-2", true),
            ("10.1.0.3", "orders-3", true),
        ],
    ));
    both_serve(
        &a,
        &b,
        &[
            ("10.1.0.1:4143", Some(ORDERS_SA)),
            ("10.1.0.2:8080", None),
            ("10.1.0.3:4143", Some(ORDERS_SA)),
        ],
        "the added endpoint on both replicas",
    )
    .await;

    // MODIFIED: orders-1 is no longer ready.
    fake.apply(fake_kube::endpoint_slice(
        "shop",
        "orders-x1",
        "orders",
        8080,
        &[
            ("10.1.0.1", "orders-1", false),
            ("10.1.0.2", "orders-2", true),
            ("10.1.0.3", "orders-3", true),
        ],
    ));
    both_serve(
        &a,
        &b,
        &[("10.1.0.2:8080", None), ("10.1.0.3:4143", Some(ORDERS_SA))],
        "the unready endpoint gone from both replicas",
    )
    .await;

    // DELETED: the slice goes; the Service stays, with no endpoints.
    fake.delete("EndpointSlice", "shop", "orders-x1");
    both_serve(&a, &b, &[], "no endpoints on both replicas").await;
    assert_eq!(
        endpoints(&a, "orders").await.1["orders"]["endpoints"],
        Value::Array(vec![])
    );

    // 410 Gone: changes the watches never see, then a compaction; each
    // replica's watch is answered `410`, it lists again and finds them.
    let lists = fake.requests("list endpointslices");
    assert_eq!(lists, 2, "one list per replica so far");
    fake.compact(|unseen| {
        unseen.apply(fake_kube::pod(
            "shop",
            "orders-4",
            "orders",
            "10.1.0.4",
            Some(4143),
        ));
        unseen.apply(fake_kube::endpoint_slice(
            "shop",
            "orders-x2",
            "orders",
            8080,
            &[
                ("10.1.0.4", "orders-4", true),
                ("10.1.0.2", "orders-2", true),
            ],
        ));
        unseen.delete("Pod", "shop", "orders-3");
    });
    both_serve(
        &a,
        &b,
        &[("10.1.0.2:8080", None), ("10.1.0.4:4143", Some(ORDERS_SA))],
        "the endpoints of the new list on both replicas",
    )
    .await;
    assert_eq!(
        fake.requests("list endpointslices"),
        4,
        "each replica listed again"
    );
    assert_eq!(fake.requests("list pods"), 4);
    for cp in [&a, &b] {
        assert!(
            cp.logs().iter().any(|l| l.contains("410 Gone")),
            "the relist is logged"
        );
        // And counted: two lists of slices, the 410 between them, the
        // slices and pods known now.
        let metrics = cp.metrics().await;
        let event = |kind: &str, event: &str| {
            remora_e2e::metric_value(
                &metrics,
                &format!(
                    "remora_control_kubernetes_events_total{{kind=\"{kind}\",event=\"{event}\"}}"
                ),
            )
        };
        assert_eq!(event("endpointslices", "listed"), 2.0, "{metrics}");
        assert!(event("endpointslices", "expired") >= 1.0, "{metrics}");
        assert!(event("endpointslices", "applied") >= 2.0, "{metrics}");
        assert_eq!(event("endpointslices", "deleted"), 1.0, "{metrics}");
        let objects = |kind: &str| {
            remora_e2e::metric_value(
                &metrics,
                &format!("remora_control_kubernetes_objects{{kind=\"{kind}\"}}"),
            )
        };
        // orders-x2 in shop; the staging namespace is not watched.
        assert_eq!(objects("endpointslices"), 1.0, "{metrics}");
        assert_eq!(objects("services"), 1.0, "{metrics}");
        if remora_e2e::promtool::have_promtool() {
            remora_e2e::promtool::promtool_check(&metrics).unwrap();
        }
    }

    // The Service deleted: no mesh service of that name.
    fake.delete("Service", "shop", "orders");
    eventually(CONVERGE, "orders gone from both replicas", || async {
        let (la, lb) = (a.services().await, b.services().await);
        la["services"].get("orders").is_none() && lb["services"].get("orders").is_none()
    })
    .await;
}

#[tokio::test]
async fn a_sidecar_calls_a_pod_that_only_the_api_server_named() {
    let fake = FakeKube::start().await;
    fake.service_account_token(ORDERS_TOKEN, "shop", "orders", &["remora-control"]);
    fake.service_account_token(WEB_TOKEN, "shop", "web", &["remora-control"]);
    let dir = tempfile::tempdir().unwrap();
    let IssuerFiles {
        flags: issuer_flags,
        issuer,
        ..
    } = issuer_files(dir.path());
    let mut flags = vec![
        "--tokens".to_string(),
        grant_tokens(dir.path(), &[]),
        // Nothing waits for registrations of a previous process here.
        "--restart-grace".to_string(),
        "0s".to_string(),
    ];
    flags.extend(issuer_flags);
    flags.extend(kubernetes_flags(&fake));
    // Two replicas of one mesh: one CA, one API server.
    let a = start(&flags).await;
    let b = start(&flags).await;
    let anchors = dir.path().join("ca.crt");
    let write_token = |name: &str, token: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, token).unwrap();
        path.display().to_string()
    };

    // The callee's sidecar, on replica A: its certificate comes from its
    // service account's token.
    let app = Upstream::named("orders").await;
    let orders_token = write_token("orders.token", ORDERS_TOKEN);
    let callee = Proxy::identified(&a, "orders", app.addr, &orders_token, &anchors).await;
    // Kubernetes tells of its pod: the address, and the sidecar's port.
    let inbound = callee.inbound;
    fake.apply(fake_kube::service("shop", "orders", 80, 8080));
    fake.apply(fake_kube::pod(
        "shop",
        "orders-1",
        "orders",
        &inbound.ip().to_string(),
        Some(inbound.port()),
    ));
    fake.apply(fake_kube::endpoint_slice(
        "shop",
        "orders-x1",
        "orders",
        8080,
        &[(&inbound.ip().to_string(), "orders-1", true)],
    ));

    // The caller's sidecar, on replica B, which holds no registration of
    // orders: only the API server told it of the pod.
    let web_app = Upstream::named("web").await;
    let web_token = write_token("web.token", WEB_TOKEN);
    let caller = Proxy::identified(&b, "web", web_app.addr, &web_token, &anchors).await;
    let operator = remora_e2e::mesh_client::credentials(&issuer, "operator");
    let expected = format!("{inbound}");
    eventually(CONVERGE, "replica B to know orders' pod", || {
        let req = Request::get(format!("{}/v1/services", b.url()))
            .body(Bytes::new())
            .unwrap();
        let (b, operator, expected) = (&b, operator.clone(), expected.clone());
        async move {
            let r = b
                .call(req, ApiCaller::As(operator))
                .await
                .expect("GET /v1/services");
            let services: Value = serde_json::from_slice(&r.body).unwrap();
            let endpoints = &services["services"]["orders"]["endpoints"];
            // From Kubernetes alone: the sidecar registered with replica A.
            endpoints.as_array().is_some_and(|e| e.len() == 1)
                && endpoints[0]["source"] == "kubernetes"
                && endpoints[0]["address"] == expected.as_str()
                && endpoints[0]["identity"] == ORDERS_SA
        }
    })
    .await;

    let client = Client::via(caller.outbound, false);
    eventually(CONVERGE, "the call to orders through the mesh", || {
        let client = client.clone();
        async move {
            client
                .get("http://orders/")
                .await
                .is_ok_and(|r| r.status == 200 && r.text() == "orders")
        }
    })
    .await;
    assert_eq!(
        app.last()
            .headers
            .get("remora-peer-identity")
            .and_then(|v| v.to_str().ok()),
        Some(WEB_SA),
        "carried over mutual TLS, the caller known by its service account"
    );
    assert!(fake.requests("create tokenreviews") >= 2);

    // A service Kubernetes knows takes registrations only from its pods'
    // service accounts: web's cannot pose as an endpoint of orders.
    let register = |as_who: &str| {
        let req = Request::put(format!("{}/v1/registrations/orders/extra", b.url()))
            .body(Bytes::from_static(
                br#"{"address": "127.0.0.1:9", "ttl_seconds": 30}"#,
            ))
            .unwrap();
        let caller = ApiCaller::As(remora_e2e::mesh_client::credentials(&issuer, as_who));
        let b = &b;
        async move { b.call(req, caller).await.expect("PUT a registration") }
    };
    let refused = register(WEB_SA).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        error_of(&refused),
        format!(
            "{WEB_SA} may not register endpoints of orders: its endpoints come from Kubernetes, \
             and only its pods' service accounts may ({ORDERS_SA}); to add an instance outside \
             the cluster, give orders an identity in mesh.yaml"
        )
    );
    assert_eq!(register(ORDERS_SA).await.status, StatusCode::OK);
}
