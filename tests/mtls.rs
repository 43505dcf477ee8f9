//! Mutual TLS at a sidecar's inbound, through the real binaries: a caller
//! with a certificate of the mesh is served and named to the app; a
//! plaintext caller is refused where the service is strict and served
//! where it is permissive; a caller outside the allow list gets `403`; a
//! certificate of another CA does not get through the handshake.

use std::time::Duration;

use http::StatusCode;
use remora_certs::authority;
use remora_certs::verify::TrustAnchors;
use remora_e2e::identity::{grant_tokens, token_file};
use remora_e2e::mesh_client::{self, credentials};
use remora_e2e::upstream::text;
use remora_e2e::{metric_value, Client, ControlPlane, Proxy, Upstream};

const ORDERS_TOKEN: &str = "orders-token";

const FRONTEND_TOKEN: &str = "frontend-token";

/// A control plane serving `mesh`, and a sidecar of `orders` with an
/// identity, in front of an app that answers with the caller's identity
/// as the proxy told it.
struct Meshed {
    cp: ControlPlane,
    proxy: Proxy,
    anchors: TrustAnchors,
    _app: Upstream,
    _dir: tempfile::TempDir,
}

async fn meshed(mesh: &str) -> Meshed {
    let dir = tempfile::tempdir().unwrap();
    let tokens = grant_tokens(dir.path(), &[("orders", ORDERS_TOKEN)]);
    let cp = ControlPlane::start_with(mesh, &["--tokens", &tokens]).await;
    let app = Upstream::start(|req| async move {
        let who = req
            .headers()
            .get("remora-peer-identity")
            .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
        text(who)
    })
    .await;
    let anchors_path = cp.development_anchors();
    let orders_token = token_file(dir.path(), "orders");
    let proxy = Proxy::identified(&cp, "orders", app.addr, &orders_token, &anchors_path).await;
    let anchors = TrustAnchors::from_pem(&std::fs::read_to_string(&anchors_path).unwrap()).unwrap();
    Meshed {
        cp,
        proxy,
        anchors,
        _app: app,
        _dir: dir,
    }
}

impl Meshed {
    async fn call_as(
        &self,
        identity: &str,
        headers: &[(&str, &str)],
    ) -> Result<remora_e2e::Reply, String> {
        let own = credentials(&self.cp.development_issuer(), identity);
        mesh_client::get(
            self.proxy.inbound,
            &self.anchors,
            own,
            "orders",
            "/",
            headers,
        )
        .await
    }

    async fn plaintext(&self) -> Result<remora_e2e::Reply, String> {
        Client::http1()
            .get(&format!("http://{}/", self.proxy.inbound))
            .await
    }

    async fn metric(&self, prefix: &str) -> f64 {
        metric_value(&self.proxy.metrics().await, prefix)
    }
}

const STRICT: &str = "services:\n  orders:\n    identity: orders\n";

#[tokio::test]
async fn a_mesh_caller_is_served_and_named_to_the_app() {
    let m = meshed(STRICT).await;
    // A caller's own claim to an identity is dropped.
    let r = m
        .call_as(
            "frontend",
            &[(
                "remora-peer-identity",
                "spiffe://cluster.local/ns/default/sa/admin",
            )],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "spiffe://cluster.local/ns/default/sa/frontend");
    assert_eq!(
        m.metric("remora_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}")
            .await,
        1.0
    );
    // A caller that expects another service refuses this one's certificate.
    let own = credentials(&m.cp.development_issuer(), "frontend");
    let e = mesh_client::get(m.proxy.inbound, &m.anchors, own, "billing", "/", &[])
        .await
        .unwrap_err();
    assert!(e.contains("orders") && e.contains("billing"), "{e}");
    let metrics = m.proxy.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("remora_requests_total")
                && l.contains("direction=\"inbound\"")
                && l.contains("tls=\"true\"")
                && l.contains("peer=\"spiffe://cluster.local/ns/default/sa/frontend\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn plaintext_is_refused_where_strict_and_served_where_permissive() {
    let strict = meshed(STRICT).await;
    assert!(
        strict.plaintext().await.is_err(),
        "a strict service serves no plaintext"
    );
    assert_eq!(
        strict
            .metric(
                "remora_tls_handshakes_total{direction=\"inbound\",result=\"plaintext_refused\"}"
            )
            .await,
        1.0
    );

    let permissive =
        meshed("services:\n  orders:\n    identity: orders\n    inbound: { mtls: permissive }\n")
            .await;
    let r = permissive.plaintext().await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "none"));
    // And a mesh caller still gets mutual TLS.
    let r = permissive.call_as("frontend", &[]).await.unwrap();
    assert_eq!(r.text(), "spiffe://cluster.local/ns/default/sa/frontend");
}

#[tokio::test]
async fn a_caller_outside_the_allow_list_is_refused_with_403() {
    let m =
        meshed("services:\n  orders:\n    identity: orders\n    inbound: { allow: [frontend] }\n")
            .await;
    assert_eq!(
        m.call_as("frontend", &[]).await.unwrap().status,
        StatusCode::OK
    );
    let r = m.call_as("intruder", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.headers.get("remora-error").unwrap(), "forbidden");
    assert_eq!(
        r.text().trim(),
        "spiffe://cluster.local/ns/default/sa/intruder may not call orders: inbound.allow is [frontend]"
    );
    assert_eq!(
        m.metric("remora_authz_denied_total{direction=\"inbound\",service=\"orders\",route=\"inbound\",peer=\"spiffe://cluster.local/ns/default/sa/intruder\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_certificate_of_another_ca_does_not_get_through_the_handshake() {
    let m = meshed(STRICT).await;
    let foreign = authority::generate(
        "cluster.local",
        Duration::from_secs(86400),
        Duration::from_secs(86400),
    )
    .unwrap();
    let foreign_issuer =
        authority::Issuer::from_pem(&foreign.issuer_cert, &foreign.issuer_key).unwrap();
    let own = credentials(&foreign_issuer, "frontend");
    let r = mesh_client::get(m.proxy.inbound, &m.anchors, own, "orders", "/", &[]).await;
    assert!(r.is_err(), "{r:?}");
    remora_e2e::eventually(
        Duration::from_secs(5),
        "the failed handshake to be counted",
        || async {
            m.metric("remora_tls_handshakes_total{direction=\"inbound\",result=\"failed\"}")
                .await
                == 1.0
        },
    )
    .await;
}

/// Two sidecars with identities, `frontend` and `orders`, on one control
/// plane; `orders`' app answers with who called it, in which HTTP version,
/// under which Host.
struct TwoSidecars {
    _cp: ControlPlane,
    frontend: Proxy,
    orders: Proxy,
    _apps: (Upstream, Upstream),
    _dir: tempfile::TempDir,
}

async fn two_sidecars(mesh: &str) -> TwoSidecars {
    let dir = tempfile::tempdir().unwrap();
    let grants = [("orders", ORDERS_TOKEN), ("frontend", FRONTEND_TOKEN)];
    let tokens = grant_tokens(dir.path(), &grants);
    let cp = ControlPlane::start_with(mesh, &["--tokens", &tokens]).await;
    let anchors = cp.development_anchors();
    let orders_app = Upstream::start(|req| async move {
        let who = req
            .headers()
            .get("remora-peer-identity")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        // HTTP/1.1's Host, or HTTP/2's :authority.
        let authority = req.uri().authority().map(|a| a.to_string());
        let host = authority.unwrap_or_else(|| {
            req.headers()
                .get("host")
                .map_or("", |v| v.to_str().unwrap())
                .to_string()
        });
        text(format!("{who} {:?} {host}", req.version()))
    })
    .await;
    let frontend_app = Upstream::named("frontend").await;
    let (orders_token, frontend_token) = (
        token_file(dir.path(), "orders"),
        token_file(dir.path(), "frontend"),
    );
    let orders = Proxy::identified(&cp, "orders", orders_app.addr, &orders_token, &anchors).await;
    let frontend = Proxy::identified(
        &cp,
        "frontend",
        frontend_app.addr,
        &frontend_token,
        &anchors,
    )
    .await;
    TwoSidecars {
        _cp: cp,
        frontend,
        orders,
        _apps: (orders_app, frontend_app),
        _dir: dir,
    }
}

const ORDERS_MESHED: &str =
    "services:\n  orders:\n    identity: orders\n  frontend:\n    identity: frontend\n";

#[tokio::test]
async fn sidecars_call_each_other_over_mutual_tls_in_the_apps_own_protocol() {
    // Whatever the caller speaks, the app of orders is spoken to in the
    // version its service's protocol names; it learns who called.
    let http2 = ORDERS_MESHED.replace("identity: orders", "identity: orders\n    protocol: http2");
    let mut m = None;
    for (mesh, app_version) in [(http2.as_str(), "HTTP/2.0"), (ORDERS_MESHED, "HTTP/1.1")] {
        drop(m.take());
        let sidecars = two_sidecars(mesh).await;
        for caller_http2 in [false, true] {
            let r = Client::via(sidecars.frontend.outbound, caller_http2)
                .get("http://orders/")
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(
                r.text(),
                format!("spiffe://cluster.local/ns/default/sa/frontend {app_version} orders"),
                "caller in HTTP/2: {caller_http2}"
            );
        }
        m = Some(sidecars);
    }
    let m = m.expect("the second pair of sidecars");
    let outbound = m.frontend.metrics().await;
    assert!(
        outbound
            .lines()
            .any(|l| l.starts_with("remora_requests_total")
                && l.contains("direction=\"outbound\"")
                && l.contains("tls=\"true\"")
                && l.contains("peer=\"spiffe://cluster.local/ns/default/sa/orders\"")
                && l.ends_with(" 2")),
        "{outbound}"
    );
    assert_eq!(
        metric_value(
            &m.orders.metrics().await,
            "remora_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}"
        ),
        1.0,
        "both requests shared one multiplexed connection"
    );
}

#[tokio::test]
async fn the_callee_allow_list_refuses_a_meshed_caller_it_does_not_name() {
    let m = two_sidecars(
        "services:\n  orders:\n    identity: orders\n    inbound: { allow: [checkout] }\n  frontend:\n    identity: frontend\n",
    )
    .await;
    let r = Client::via(m.frontend.outbound, false)
        .get("http://orders/")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.text()
            .contains("spiffe://cluster.local/ns/default/sa/frontend may not call orders"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn the_trust_anchor_rotates_under_load_without_a_failed_request() {
    // Two anchors, old and new, each with its issuer; every process trusts
    // both from the start (step 1 of docs/identity.md's rotation).
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86400);
    let (old, new) = (
        authority::generate("cluster.local", day, day).unwrap(),
        authority::generate("cluster.local", day, day).unwrap(),
    );
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let bundle = write("bundle.crt", &(old.anchor_cert.clone() + &new.anchor_cert));
    let (old_cert, old_key) = (
        write("old.crt", &old.issuer_cert),
        write("old.key", &old.issuer_key),
    );
    let (new_cert, new_key) = (
        write("new.crt", &new.issuer_cert),
        write("new.key", &new.issuer_key),
    );
    let tokens = grant_tokens(
        dir.path(),
        &[("orders", ORDERS_TOKEN), ("frontend", FRONTEND_TOKEN)],
    );
    let (orders_token, frontend_token) = (
        token_file(dir.path(), "orders"),
        token_file(dir.path(), "frontend"),
    );
    let issuer_flags = |cert: &str, key: &str| {
        vec![
            "--tokens".to_string(),
            tokens.clone(),
            "--cert-ttl".to_string(),
            "4s".to_string(),
            "--issuer-cert".to_string(),
            cert.to_string(),
            "--issuer-key".to_string(),
            key.to_string(),
            "--trust-anchors".to_string(),
            bundle.clone(),
            "--restart-grace".to_string(),
            "6s".to_string(),
        ]
    };
    let args = issuer_flags(&old_cert, &old_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = ControlPlane::start_with(ORDERS_MESHED, &args).await;
    let api = cp.api;
    let app = Upstream::named("orders").await;
    let web = Upstream::named("frontend").await;
    let bundle_path = std::path::PathBuf::from(&bundle);
    let orders = Proxy::identified(&cp, "orders", app.addr, &orders_token, &bundle_path).await;
    let frontend =
        Proxy::identified(&cp, "frontend", web.addr, &frontend_token, &bundle_path).await;

    // Steady traffic from frontend's app to orders through both sidecars.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (client, stop) = (Client::via(frontend.outbound, false), stop.clone());
        async move {
            let (mut sent, mut failed) = (0u32, 0u32);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                sent += 1;
                match client.get("http://orders/").await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    other => {
                        failed += 1;
                        eprintln!("failed: {other:?}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (sent, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Step 2: the control plane signs with the new issuer from now on; the
    // sidecars' next renewals bring certificates of the new anchor, one
    // sidecar before the other.
    drop(cp);
    let args = issuer_flags(&new_cert, &new_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _cp = ControlPlane::start_on(ORDERS_MESHED, api, &args).await;
    let new_issuer = pem_issuer(&new.issuer_cert);
    for proxy in [&orders, &frontend] {
        remora_e2e::eventually(
            Duration::from_secs(20),
            "a certificate of the new issuer",
            || async {
                let r = Client::http1()
                    .get(&proxy.admin_url("/config"))
                    .await
                    .unwrap();
                let config: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                config["identity"]["issuer_serial"].as_str() == Some(new_issuer.as_str())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    eprintln!("{sent} requests through the rotation, {failed} failed");
    assert!(sent > 100, "only {sent} requests");
    assert_eq!(failed, 0);
}

/// The serial of an issuer certificate.
fn pem_issuer(cert: &str) -> String {
    let der = &remora_certs::pem::certificates(cert, "issuer").unwrap()[0];
    remora_certs::inspect::inspect(der).unwrap().serial
}

#[tokio::test]
async fn expired_and_not_yet_valid_caller_certificates_are_refused() {
    let m = meshed(STRICT).await;
    let issuer = m.cp.development_issuer();
    let now = std::time::SystemTime::now();
    let hour = Duration::from_secs(3600);
    for (not_before, not_after) in [(now - 2 * hour, now - hour), (now + hour, now + 2 * hour)] {
        let id = remora_certs::SpiffeId::resolve("frontend", "cluster.local").unwrap();
        let (chain, key) = issuer
            .issue(
                &id,
                authority::Validity {
                    not_before,
                    not_after,
                },
            )
            .unwrap();
        let own = std::sync::Arc::new(remora_certs::leaf::CredentialStore::default());
        own.set(remora_certs::leaf::Credentials::from_pem(&chain, &key).unwrap());
        let r = mesh_client::get(m.proxy.inbound, &m.anchors, own, "orders", "/", &[]).await;
        assert!(r.is_err(), "{r:?}");
    }
    remora_e2e::eventually(
        Duration::from_secs(5),
        "both handshakes to be counted as failed",
        || async {
            m.metric("remora_tls_handshakes_total{direction=\"inbound\",result=\"failed\"}")
                .await
                == 2.0
        },
    )
    .await;
}
