//! The control plane's certificate authority, through the real binary:
//! `POST /v1/certificate` with bearer tokens, a given issuer or a
//! development CA, `--cert-ttl`, `--insecure`, and the flags' errors.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use remora_certs::authority;
use remora_certs::verify::TrustAnchors;
use remora_certs::{inspect, leaf, pem};
use remora_e2e::control::ApiCaller;
use remora_e2e::identity::{grant_tokens, issuer_files, token_file, IssuerFiles};
use remora_e2e::mesh_client;
use remora_e2e::process::binary;
use remora_e2e::{eventually, metric_value, Client, ControlPlane, Proxy, Reply, Upstream};

/// A bearer token; tokens.yaml holds its SHA-256.
const FRONTEND_TOKEN: &str = "frontend-token";
const MESH: &str = "services:\n  orders: {}\n";

fn tokens_file(dir: &Path) -> String {
    grant_tokens(dir, &[("frontend", FRONTEND_TOKEN)])
}

async fn ask(cp: &ControlPlane, token: Option<&str>, csr: &str) -> Reply {
    let mut req = Request::post(format!("{}/v1/certificate", cp.url()));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    // No client certificate: this is how a proxy asks for its first one.
    cp.call(
        req.body(Bytes::from(csr.to_string())).unwrap(),
        ApiCaller::Anonymous,
    )
    .await
    .expect("POST /v1/certificate")
}

#[tokio::test]
async fn a_csr_is_signed_for_the_identity_its_token_grants() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let cp = ControlPlane::start_with(MESH, &["--tokens", &tokens, "--cert-ttl", "1h"]).await;
    assert!(
        cp.logs()
            .iter()
            .any(|l| l.contains("DEVELOPMENT certificate authority")),
        "a development CA is announced"
    );

    let request = leaf::new_request().unwrap();
    let r = ask(&cp, Some(FRONTEND_TOKEN), &request.csr_pem).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/pem-certificate-chain")
    );
    let credentials = request
        .complete(&r.text())
        .expect("the chain is for our key");
    assert_eq!(
        credentials.identity.as_str(),
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    let life = credentials.leaf.lifetime();
    assert!(
        life >= Duration::from_secs(3600) && life < Duration::from_secs(3700),
        "{life:?}"
    );
    let chain = pem::certificates(&r.text(), "chain").unwrap();
    assert_eq!(chain.len(), 2);
    assert!(inspect::is_signed_by(&chain[0], &chain[1]).unwrap());

    let metrics = cp.metrics().await;
    assert!(
        metrics.contains(
            r#"remora_control_requests_total{resource="certificate",status_code="200"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_tokens_and_csrs_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let cp = ControlPlane::start_with(MESH, &["--tokens", &tokens]).await;
    let csr = leaf::new_request().unwrap().csr_pem;

    let r = ask(&cp, None, &csr).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.text().contains("no bearer token"), "{}", r.text());
    let r = ask(&cp, Some("guessed"), &csr).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("grants no identity"), "{}", r.text());
    let r = ask(&cp, Some(FRONTEND_TOKEN), "not a csr").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("not a PEM CERTIFICATE REQUEST"),
        "{}",
        r.text()
    );
    let r = ask(&cp, Some(FRONTEND_TOKEN), &"x".repeat(20_000)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("at most"), "{}", r.text());
    let r = cp.get("/v1/certificate").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
}

#[tokio::test]
async fn a_given_issuer_signs_and_its_anchor_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let IssuerFiles {
        flags, issuer_cert, ..
    } = issuer_files(dir.path());
    let tokens = tokens_file(dir.path());
    let mut args = vec!["--tokens", &tokens];
    args.extend(flags.iter().map(String::as_str));
    let cp = ControlPlane::start_with(MESH, &args).await;
    assert!(!cp.logs().iter().any(|l| l.contains("DEVELOPMENT")));
    let request = leaf::new_request().unwrap();
    let r = ask(&cp, Some(FRONTEND_TOKEN), &request.csr_pem).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let chain = pem::certificates(&r.text(), "chain").unwrap();
    let issuer = &pem::certificates(&issuer_cert, "issuer").unwrap()[0];
    assert!(inspect::is_signed_by(&chain[0], issuer).unwrap());
}

#[tokio::test]
async fn insecure_turns_identity_off_and_says_so() {
    let cp = ControlPlane::start_with(MESH, &["--insecure"]).await;
    assert!(cp.logs().iter().any(|l| l.contains("identity is OFF")));
    let r = ask(&cp, Some(FRONTEND_TOKEN), "x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("--insecure"), "{}", r.text());
}

/// `remora-control serve` with `args` in `dir`, expected to refuse to
/// start; what it printed.
async fn refused(dir: &Path, args: &[&str]) -> String {
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, MESH).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(binary("remora-control"))
            .arg("serve")
            .arg("--config")
            .arg(&mesh)
            .args([
                "--api",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--log-format",
                "text",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("it exits")
    .unwrap();
    assert!(!out.status.success(), "it started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn bad_identity_flags_stop_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = refused(dir.path(), &["--issuer-cert", "issuer.crt"]).await;
    assert!(
        out.contains("missing: --issuer-key, --trust-anchors"),
        "{out}"
    );
    let out = refused(dir.path(), &["--insecure", "--tokens", "t.yaml"]).await;
    assert!(out.contains("--insecure turns identity off"), "{out}");

    let tokens = dir.path().join("bad-tokens.yaml");
    std::fs::write(&tokens, "frontend: not-a-hash\n").unwrap();
    let out = refused(dir.path(), &["--tokens", &tokens.display().to_string()]).await;
    assert!(
        out.contains("bad-tokens.yaml:1:1: frontend: the token's SHA-256 must be 64 hex digits"),
        "{out}"
    );

    let missing = dir.path().join("nowhere");
    let out = refused(
        dir.path(),
        &[
            "--issuer-cert",
            &missing.join("issuer.crt").display().to_string(),
            "--issuer-key",
            &missing.join("issuer.key").display().to_string(),
            "--trust-anchors",
            &missing.join("ca.crt").display().to_string(),
        ],
    )
    .await;
    assert!(
        out.contains("cannot read") && out.contains("nowhere/issuer.crt"),
        "{out}"
    );
}

async fn config_of(proxy: &Proxy) -> serde_json::Value {
    let r = Client::http1()
        .get(&proxy.admin_url("/config"))
        .await
        .expect("GET /config");
    serde_json::from_slice(&r.body).expect("/config is JSON")
}

async fn ready_status(proxy: &Proxy) -> StatusCode {
    Client::http1()
        .get(&proxy.admin_url("/ready"))
        .await
        .expect("GET /ready")
        .status
}

/// A control plane with a development CA and a token for `frontend`, and
/// the token's file.
async fn mesh_with_tokens(dir: &Path, extra: &[&str]) -> (ControlPlane, String) {
    let tokens = tokens_file(dir);
    let mut args = vec!["--tokens", tokens.as_str()];
    args.extend_from_slice(extra);
    let cp = ControlPlane::start_with(MESH, &args).await;
    (cp, token_file(dir, "frontend"))
}

/// A ready sidecar of `frontend` with an identity from `token_file`, and
/// its app.
async fn frontend_proxy(cp: &ControlPlane, token_file: &str) -> (Proxy, Upstream) {
    let app = Upstream::named("frontend").await;
    let anchors = cp.development_anchors();
    let proxy = Proxy::identified(cp, "frontend", app.addr, token_file, &anchors).await;
    (proxy, app)
}

#[tokio::test]
async fn a_proxy_holds_its_certificate_before_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, token_file) = mesh_with_tokens(dir.path(), &["--cert-ttl", "1h"]).await;
    let (proxy, _app) = frontend_proxy(&cp, &token_file).await;
    let config = config_of(&proxy).await;
    let identity = &config["identity"];
    assert_eq!(identity["state"], "ready", "{config:#}");
    assert_eq!(
        identity["id"],
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    assert_eq!(identity["trust_anchors"], 1);

    let expiry = metric_value(
        &proxy.metrics().await,
        "remora_identity_expiry_timestamp_seconds",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expiry - (now + 3600.0)).abs() < 120.0,
        "expiry {expiry}, now {now}"
    );
    // It registered once it had its certificate.
    let services = cp.services().await;
    assert_eq!(
        services["services"]["frontend"]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{services:#}"
    );
}

#[tokio::test]
async fn a_refused_token_keeps_the_proxy_unready_and_unregistered() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _) = mesh_with_tokens(dir.path(), &[]).await;
    let anchors = cp.development_anchors().display().to_string();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let app = Upstream::named("frontend").await;
    let proxy = Proxy::controlled_unready(
        &cp.url(),
        "frontend",
        app.addr,
        &[
            "--token-file",
            &wrong.display().to_string(),
            "--trust-anchors",
            &anchors,
        ],
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the refusal to be logged",
        || async {
            proxy.logs().iter().any(|l| {
                l.contains("refused a certificate: 401") && l.contains("grants no identity")
            })
        },
    )
    .await;
    assert_eq!(ready_status(&proxy).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        config_of(&proxy).await["identity"]["state"],
        "waiting for a certificate"
    );
    assert!(cp.services().await["services"].get("frontend").is_none());
}

#[tokio::test]
async fn certificates_are_renewed_at_seventy_percent_of_their_life_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, token_file) = mesh_with_tokens(dir.path(), &["--cert-ttl", "4s"]).await;
    let (proxy, _app) = frontend_proxy(&cp, &token_file).await;
    let first = config_of(&proxy).await["identity"].clone();
    let parse = |v: &serde_json::Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    let (after, renew) = (parse(&first["not_after"]), parse(&first["renew_at"]));
    let left = after.duration_since(renew).unwrap().as_secs_f64();
    assert!(
        (0.5..=2.0).contains(&left),
        "renewed {left}s before the end of a 4s certificate"
    );

    // Steady traffic over mutual TLS while two renewals happen: on one
    // connection kept open throughout, and on a new connection each round,
    // whose handshake meets whatever certificate is current.
    let anchors =
        TrustAnchors::from_pem(&std::fs::read_to_string(cp.development_anchors()).unwrap())
            .unwrap();
    let caller = mesh_client::credentials(&cp.development_issuer(), "checkout");
    let mut kept = mesh_client::connect(proxy.inbound, &anchors, caller.clone(), "frontend")
        .await
        .unwrap();
    let mut serials = vec![first["serial"].as_str().unwrap().to_string()];
    let (mut sent, mut failed) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while serials.len() < 3 && std::time::Instant::now() < deadline {
        let mut fresh =
            mesh_client::connect(proxy.inbound, &anchors, caller.clone(), "frontend").await;
        for i in 0..20 {
            sent += 1;
            let reply = match (&mut fresh, i % 2) {
                (Ok(sender), 0) => mesh_client::send(sender, "/", &[]).await,
                (Err(e), 0) => Err(e.clone()),
                _ => mesh_client::send(&mut kept, "/", &[]).await,
            };
            match reply {
                Ok(r) if r.status == StatusCode::OK => {}
                other => {
                    eprintln!("failed: {other:?}");
                    failed += 1
                }
            }
        }
        assert_eq!(ready_status(&proxy).await, StatusCode::OK);
        let serial = config_of(&proxy).await["identity"]["serial"]
            .as_str()
            .unwrap()
            .to_string();
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{sent} requests, {failed} failed, certificates {serials:?}");
    assert_eq!(
        serials.len(),
        3,
        "two renewals within 15s of 4s certificates"
    );
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn the_api_speaks_only_tls_and_needs_a_mesh_certificate_for_all_but_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let mesh = "services:\n  orders: { identity: orders }\n  open: {}\n";
    let cp = ControlPlane::start_with(mesh, &["--tokens", &tokens]).await;
    assert!(cp.url().starts_with("https://"));
    // Plaintext is refused at the door.
    let plain = Client::http1()
        .get(&format!("http://{}/v1/services", cp.api))
        .await;
    assert!(plain.is_err(), "{plain:?}");

    let get = |path: &str| {
        Request::get(format!("{}{path}", cp.url()))
            .body(Bytes::new())
            .unwrap()
    };
    let r = cp
        .call(get("/v1/outbound/orders?wait=0s"), ApiCaller::Anonymous)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.text()
            .contains("a client certificate of the mesh is required"),
        "{}",
        r.text()
    );
    let r = cp
        .call(get("/v1/services"), ApiCaller::Operator)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    // A certificate of another CA does not get past the handshake.
    let foreign = authority::generate(
        "cluster.local",
        Duration::from_secs(86400),
        Duration::from_secs(86400),
    )
    .unwrap();
    let foreign = authority::Issuer::from_pem(&foreign.issuer_cert, &foreign.issuer_key).unwrap();
    let outsider = remora_e2e::mesh_client::credentials(&foreign, "orders");
    assert!(cp
        .call(get("/v1/services"), ApiCaller::As(outsider))
        .await
        .is_err());
}

#[tokio::test]
async fn only_a_service_identity_registers_its_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let mesh = "services:\n  orders: { identity: orders }\n  open: {}\n";
    let cp = ControlPlane::start_with(mesh, &["--tokens", &tokens]).await;
    let issuer = cp.development_issuer();
    let put = |service: &str| {
        Request::put(format!("{}/v1/registrations/{service}/pod-1", cp.url()))
            .header("content-type", "application/json")
            .body(Bytes::from(r#"{"address": "127.0.0.1:4143"}"#))
            .unwrap()
    };
    let as_ = |name: &str| ApiCaller::As(remora_e2e::mesh_client::credentials(&issuer, name));
    let r = cp.call(put("orders"), as_("intruder")).await.unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["error"],
        "spiffe://cluster.local/ns/default/sa/intruder may not register endpoints of orders: only spiffe://cluster.local/ns/default/sa/orders may"
    );
    let delete = Request::delete(format!("{}/v1/registrations/orders/pod-1", cp.url()))
        .body(Bytes::new())
        .unwrap();
    assert_eq!(
        cp.call(delete, as_("intruder")).await.unwrap().status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        cp.call(put("orders"), as_("orders")).await.unwrap().status,
        StatusCode::OK
    );
    // A service without an identity takes registrations from any identity
    // of the mesh.
    assert_eq!(
        cp.call(put("open"), as_("anyone")).await.unwrap().status,
        StatusCode::OK
    );
    let listed = cp.services().await;
    assert_eq!(
        listed["services"]["orders"]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}
