//! A `remora-proxy` process on ephemeral loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Command;

use crate::process::{binary, Running};

pub struct Proxy {
    process: Running,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts a proxy serving `mesh` (YAML), with its app at `app`, and
    /// waits until `/ready` answers 200.
    pub async fn start(mesh: &str, app: SocketAddr) -> Proxy {
        Self::start_with(mesh, app, &[]).await
    }

    pub async fn start_with(mesh: &str, app: SocketAddr, extra: &[&str]) -> Proxy {
        let (dir, config_path) = mesh_file(mesh);
        Self::start_from(dir, config_path, app, extra).await
    }

    /// As `start_with`, with the proxy's open-files limit (soft and hard)
    /// set to `files` by util-linux's `prlimit`.
    pub async fn start_with_open_files(
        mesh: &str,
        app: SocketAddr,
        extra: &[&str],
        files: u64,
    ) -> Proxy {
        let (dir, config_path) = mesh_file(mesh);
        let plain = command(app);
        let prlimit =
            crate::tools::find("prlimit", "util-linux").expect("prlimit is on every Debian");
        let mut limited = Command::new(prlimit);
        limited
            .arg(format!("--nofile={files}:{files}"))
            .arg("--")
            .arg(plain.as_std().get_program())
            .args(plain.as_std().get_args());
        Self::run_on_file(limited, dir, config_path, extra).await
    }

    /// Starts a proxy on a config the caller has laid out in `dir` (a
    /// symlinked ConfigMap, say); the proxy keeps `dir` until it ends.
    pub async fn start_from(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        app: SocketAddr,
        extra: &[&str],
    ) -> Proxy {
        Self::run_on_file(command(app), dir, config_path, extra).await
    }

    /// Runs `command` on the config at `config_path` and waits until the
    /// proxy is ready.
    async fn run_on_file(
        mut command: Command,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        extra: &[&str],
    ) -> Proxy {
        command.arg("--config").arg(&config_path).args(extra);
        let proxy = Proxy::spawned(
            Running::spawn(command, "remora-proxy").await,
            config_path,
            dir,
        );
        proxy.wait_ready().await;
        proxy
    }

    /// Starts a proxy for `service` that takes the mesh from the control
    /// plane at `control_url`, with its app at `app`, and waits until it is
    /// ready: it has its inbound view and has registered.
    pub async fn controlled(
        control_url: &str,
        service: &str,
        app: SocketAddr,
        extra: &[&str],
    ) -> Proxy {
        let proxy = Self::controlled_unready(control_url, service, app, extra).await;
        proxy.wait_ready().await;
        proxy
    }

    /// As [`Proxy::controlled`], with an identity: the token in
    /// `token_file` and the trust anchors at `anchors`.
    pub async fn identified(
        control: &crate::ControlPlane,
        service: &str,
        app: SocketAddr,
        token_file: &str,
        anchors: &std::path::Path,
    ) -> Proxy {
        let anchors = anchors.display().to_string();
        let extra = [
            "--token-file",
            token_file,
            "--trust-anchors",
            anchors.as_str(),
        ];
        Self::controlled(&control.url(), service, app, &extra).await
    }

    /// As [`Proxy::controlled`], without waiting for `/ready`.
    pub async fn controlled_unready(
        control_url: &str,
        service: &str,
        app: SocketAddr,
        extra: &[&str],
    ) -> Proxy {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut command = command(app);
        command
            .args(["--control-url", control_url, "--service", service])
            .args(extra);
        Proxy::spawned(
            Running::spawn(command, "remora-proxy").await,
            PathBuf::new(),
            dir,
        )
    }

    fn spawned(running: Running, config_path: PathBuf, dir: tempfile::TempDir) -> Proxy {
        Proxy {
            outbound: running.address("outbound"),
            inbound: running.address("inbound"),
            admin: running.address("admin"),
            config_path,
            process: running,
            _dir: dir,
        }
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let client = crate::Client::http1();
        let url = self.admin_url("/ready");
        crate::eventually(Duration::from_secs(10), "the proxy to be ready", || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).await.is_ok_and(|r| r.status == 200) }
        })
        .await;
    }

    /// Where `service`'s `--tcp-listen` listener is, as `/config` says.
    pub async fn tcp_listener(&self, service: &str) -> SocketAddr {
        let config = crate::Client::http1()
            .get(&self.admin_url("/config"))
            .await
            .expect("reading /config")
            .text();
        let config: serde_json::Value = serde_json::from_str(&config).expect("/config is JSON");
        config["listeners"]["tcp"][service]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no tcp listener of {service} in {}", config["listeners"]))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Replaces the config the way editors and ConfigMaps do: write a new
    /// file, then rename it over the old one.
    pub fn write_config(&self, mesh: &str) {
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, mesh).expect("writing the new config");
        std::fs::rename(&tmp, &self.config_path).expect("renaming the new config into place");
    }

    pub async fn metrics(&self) -> String {
        crate::Client::http1()
            .get(&self.admin_url("/metrics"))
            .await
            .expect("scraping /metrics")
            .text()
    }

    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }

    /// Access-log lines (parsed) seen so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter(|l| l.contains("remora::access"))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn signal(&self, signal: &str) {
        self.process.signal(signal)
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process.wait_exit(limit, "the proxy").await
    }
}

/// The proxy's command line with every listener on an ephemeral loopback port.
/// `mesh` written to `mesh.yaml` in a new temporary directory.
fn mesh_file(mesh: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config_path = dir.path().join("mesh.yaml");
    std::fs::write(&config_path, mesh).expect("writing mesh.yaml");
    (dir, config_path)
}

fn command(app: SocketAddr) -> Command {
    let mut command = Command::new(binary("remora-proxy"));
    command
        .args([
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--app")
        .arg(app.to_string())
        .args(["--log-format", "json", "--log-level", "info"]);
    command
}
