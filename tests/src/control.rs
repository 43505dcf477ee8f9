//! A `remora-control` process on ephemeral loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use http::Request;
use tokio::process::Command;

use crate::client::body;
use crate::process::{binary, Running};
use crate::{Client, Reply};

pub struct ControlPlane {
    process: Running,
    /// The API listener: long-poll views, registrations, listing.
    pub api: SocketAddr,
    /// The admin listener: /metrics, /ready, /live.
    pub admin: SocketAddr,
    /// The mesh config it serves (absent for `start_without_config`).
    pub config_path: PathBuf,
    dir: tempfile::TempDir,
    /// Whether identity is on: the API then speaks only TLS.
    secure: bool,
    /// The trust anchors it was given, or its development CA's.
    anchors: PathBuf,
}

/// Who calls the API of a control plane with identity on.
pub enum ApiCaller {
    /// An operator, with a certificate of the development CA.
    Operator,
    /// No client certificate, as a proxy asking for its first one.
    Anonymous,
    As(std::sync::Arc<remora_certs::leaf::CredentialStore>),
}

impl ControlPlane {
    /// Starts a control plane serving `mesh` (YAML) on ephemeral loopback
    /// ports and waits until `/ready` answers 200.
    pub async fn start(mesh: &str) -> ControlPlane {
        Self::start_with(mesh, &[]).await
    }

    /// As `start`, with more command-line arguments.
    pub async fn start_with(mesh: &str, extra: &[&str]) -> ControlPlane {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config_path = dir.path().join("mesh.yaml");
        std::fs::write(&config_path, mesh).expect("writing mesh.yaml");
        let config = config_path.to_string_lossy().into_owned();
        let mut args = vec!["--config", config.as_str(), "--api", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::spawn(dir, config_path.clone(), &args).await
    }

    /// Starts a control plane whose API listens on `api`: to restart one
    /// on the address its proxies know.
    pub async fn start_on(mesh: &str, api: SocketAddr, extra: &[&str]) -> ControlPlane {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config_path = dir.path().join("mesh.yaml");
        std::fs::write(&config_path, mesh).expect("writing mesh.yaml");
        let (config, api) = (config_path.to_string_lossy().into_owned(), api.to_string());
        let mut args = vec!["--config", config.as_str(), "--api", api.as_str()];
        args.extend_from_slice(extra);
        Self::spawn(dir, config_path.clone(), &args).await
    }

    /// Starts a control plane on a config the caller laid out in `dir` (a
    /// symlinked ConfigMap, say); it keeps `dir` until it ends.
    pub async fn start_from(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        extra: &[&str],
    ) -> ControlPlane {
        let config = config_path.to_string_lossy().into_owned();
        let mut args = vec!["--config", config.as_str(), "--api", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::spawn(dir, config_path.clone(), &args).await
    }

    /// Starts a control plane with no `--config`: only registrations.
    pub async fn start_without_config() -> ControlPlane {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config_path = dir.path().join("mesh.yaml");
        Self::spawn(dir, config_path, &["--api", "127.0.0.1:0"]).await
    }

    /// Identity is on when the test gives `--tokens`; otherwise the
    /// control plane runs `--insecure`, its API plaintext, as the tests
    /// of discovery want it.
    async fn spawn(dir: tempfile::TempDir, config_path: PathBuf, args: &[&str]) -> ControlPlane {
        let secure = args.contains(&"--tokens");
        let mut command = Command::new(binary("remora-control"));
        if !secure && !args.contains(&"--insecure") {
            command.arg("--insecure");
        }
        let anchors = args
            .iter()
            .position(|a| *a == "--trust-anchors")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| dir.path().join("data").join("ca.crt"), PathBuf::from);
        command
            .args(["--admin", "127.0.0.1:0"])
            // The development CA, when no issuer is given, lives here.
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--log-format", "json", "--log-level", "info"])
            .args(args);
        let process = Running::spawn(command, "remora-control").await;
        let control = ControlPlane {
            api: process.address("api"),
            admin: process.address("admin"),
            config_path,
            process,
            dir,
            secure,
            anchors,
        };
        control.wait_ready().await;
        control
    }

    /// The trust anchor of the development CA it made (when given no
    /// issuer), for proxies' `--trust-anchors`.
    pub fn development_anchors(&self) -> PathBuf {
        self.dir.path().join("data").join("ca.crt")
    }

    /// The issuer of the development CA it made, to sign certificates of
    /// callers a test plays itself.
    pub fn development_issuer(&self) -> remora_certs::authority::Issuer {
        let data = self.dir.path().join("data");
        let read = |f: &str| std::fs::read_to_string(data.join(f)).expect("the development CA");
        remora_certs::authority::Issuer::from_pem(&read("issuer.crt"), &read("issuer.key"))
            .expect("a usable issuer")
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let client = Client::http1();
        let url = self.admin_url("/ready");
        crate::eventually(
            Duration::from_secs(10),
            "the control plane to be ready",
            || {
                let (client, url) = (client.clone(), url.clone());
                async move { client.get(&url).await.is_ok_and(|r| r.status == 200) }
            },
        )
        .await;
    }

    /// `http://API`, or `https://API` with identity on: what proxies take
    /// as `--control-url`.
    pub fn url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.api)
    }

    /// One request to the API: plaintext, or with identity on over TLS as
    /// `caller`.
    pub async fn call(
        &self,
        req: http::Request<bytes::Bytes>,
        caller: ApiCaller,
    ) -> Result<Reply, String> {
        if !self.secure {
            return Client::http1().send(req.map(body)).await;
        }
        let own = match caller {
            ApiCaller::Operator => {
                crate::mesh_client::credentials(&self.development_issuer(), "operator")
            }
            ApiCaller::Anonymous => std::sync::Arc::default(),
            ApiCaller::As(own) => own,
        };
        let anchors = remora_certs::verify::TrustAnchors::from_pem(
            &std::fs::read_to_string(&self.anchors).expect("the trust anchors"),
        )
        .expect("trust anchors");
        let mut sender = crate::mesh_client::connect(
            self.api,
            &anchors,
            own,
            remora_api::identity::CONTROL_PLANE_IDENTITY,
        )
        .await?;
        crate::mesh_client::request(&mut sender, req).await
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A GET of `path` (with its query) on the API, as an operator.
    pub async fn get(&self, path: &str) -> Reply {
        let req = Request::get(format!("{}{path}", self.url()))
            .body(bytes::Bytes::new())
            .expect("a request");
        self.call(req, ApiCaller::Operator)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `PUT /v1/registrations/{service}/{instance}` with `registration`
    /// (JSON) as the body.
    pub async fn register(&self, service: &str, instance: &str, registration: &str) -> Reply {
        let req = Request::put(format!(
            "{}/v1/registrations/{service}/{instance}",
            self.url()
        ))
        .header("content-type", "application/json")
        .body(bytes::Bytes::from(registration.to_string()))
        .expect("a request");
        self.call(req, ApiCaller::Operator)
            .await
            .unwrap_or_else(|e| panic!("registering {service}/{instance}: {e}"))
    }

    /// `DELETE /v1/registrations/{service}/{instance}`.
    pub async fn deregister(&self, service: &str, instance: &str) -> Reply {
        let req = Request::delete(format!(
            "{}/v1/registrations/{service}/{instance}",
            self.url()
        ))
        .body(bytes::Bytes::new())
        .expect("a request");
        self.call(req, ApiCaller::Operator)
            .await
            .unwrap_or_else(|e| panic!("deregistering {service}/{instance}: {e}"))
    }

    /// `GET /v1/services`, parsed.
    pub async fn services(&self) -> serde_json::Value {
        let r = self.get("/v1/services").await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("a JSON listing")
    }

    /// Replaces the config the way editors and ConfigMaps do: write a new
    /// file, then rename it over the old one.
    pub fn write_config(&self, mesh: &str) {
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, mesh).expect("writing the new config");
        std::fs::rename(&tmp, &self.config_path).expect("renaming the new config into place");
    }

    pub async fn metrics(&self) -> String {
        Client::http1()
            .get(&self.admin_url("/metrics"))
            .await
            .expect("scraping /metrics")
            .text()
    }

    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal)
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process.wait_exit(limit, "the control plane").await
    }
}
