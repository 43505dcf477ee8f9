//! A `remora-proxy` process on ephemeral loopback ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where cargo put the binary: beside this test's own executable's folder.
/// A binary older than the sources it is built from is refused, since
/// `cargo test --test NAME` builds test targets only and would leave it stale.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    let built = modified(&path);
    // Cargo lists the sources a binary was built from beside it (`NAME.d`).
    if let Ok(depinfo) = std::fs::read_to_string(dir.join(format!("{name}.d"))) {
        let sources = depinfo.split_once(": ").map_or("", |(_, deps)| deps);
        for source in sources
            .split_whitespace()
            .map(Path::new)
            .filter(|p| p.exists())
        {
            assert!(
                modified(source) <= built,
                "{} is older than {}: run `cargo build -p {name}` (or `cargo test --workspace`)",
                path.display(),
                source.display()
            );
        }
    }
    path
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("a file's modification time")
}

pub struct Proxy {
    child: Child,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts a proxy serving `mesh` (YAML), with its app at `app`, and
    /// waits until `/ready` answers 200.
    pub async fn start(mesh: &str, app: SocketAddr) -> Proxy {
        Self::start_with(mesh, app, &[]).await
    }

    pub async fn start_with(mesh: &str, app: SocketAddr, extra: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config_path = dir.path().join("mesh.yaml");
        std::fs::write(&config_path, mesh).expect("writing mesh.yaml");
        Self::start_from(dir, config_path, app, extra).await
    }

    /// Starts a proxy on a config the caller has laid out in `dir` (a
    /// symlinked ConfigMap, say); the proxy keeps `dir` until it ends.
    pub async fn start_from(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        app: SocketAddr,
        extra: &[&str],
    ) -> Proxy {
        let mut child = Command::new(binary("remora-proxy"))
            .arg("--config")
            .arg(&config_path)
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
            .args(["--log-format", "json", "--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting remora-proxy");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"listening\"") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "remora-proxy did not start; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            })
            .unwrap_or_else(|| {
                panic!(
                    "remora-proxy exited; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            });
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        let addr = |k: &str| {
            v[k].as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        };
        let proxy = Proxy {
            child,
            outbound: addr("outbound"),
            inbound: addr("inbound"),
            admin: addr("admin"),
            config_path,
            logs,
            _dir: dir,
        };
        let client = crate::Client::http1();
        let url = proxy.admin_url("/ready");
        crate::eventually(Duration::from_secs(10), "the proxy to be ready", || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).await.is_ok_and(|r| r.status == 200) }
        })
        .await;
        proxy
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
        self.logs.lock().unwrap().clone()
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
        self.child.id().expect("the proxy is running")
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the proxy did not exit within {limit:?}"))
            .expect("waiting for the proxy")
    }
}
